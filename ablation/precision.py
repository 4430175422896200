"""Where a run computes and in which precision: `device=auto` is CUDA when present, else the CPU;
`precision=auto` is bf16 where this machine runs it clearly faster than fp32, fp32 otherwise.

Whether bf16 pays on a CPU is a property of the processor (AMX tiles, AVX512-BF16, how its vector units are
fed), not of the CPU family name, so it is measured: a matmul of the encoder's shapes in both precisions, a
second or two, once per machine, the result kept in the cache directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ablation.atomic import lock, write_text
from ablation.config import ConfigError, RunConfig, derive

# bf16 must be at least this much faster than fp32 to be chosen: a smaller gain is within what a busy
# machine's timings drift, and bf16 rounds (predictions agree with fp32 on >= 99.9% of examples here).
BF16_SPEEDUP = 1.3
# The encoder's projection shapes (tokens x 768 -> 3072, and back): what evaluation and training spend on.
PROBE_SHAPES = ((2048, 768, 3072), (2048, 3072, 768))
PROBE_FILE = "precision-probe.json"


def resolve_device(requested: str) -> str:
    """'cuda' or 'cpu' for device=auto|cpu|cuda; asking for CUDA where there is none is an error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device='cuda' is not allowed: torch sees no CUDA device here (use device=auto or cpu)"
        )
    return requested


def autocast(
    precision: str, device: str = "cpu", held: dict[torch.nn.Parameter, torch.Tensor] | None = None
) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device, or nothing for fp32; `auto` must be resolved for the machine first.

    `held` (from held_weights) puts those bf16 copies in their parameters' place while inside."""
    if precision not in ("fp32", "bf16"):
        # an unresolved `auto` reaching here would silently compute in fp32 while the key could say otherwise
        raise ValueError(
            f"precision {precision!r}: expected fp32 or bf16 (resolve auto first: resolve_precision)"
        )
    if precision == "fp32":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device, dtype=torch.bfloat16))
    if held:
        stack.enter_context(holding(held))
    return stack


def held_weights(
    model: torch.nn.Module, precision: str, device: str
) -> dict[torch.nn.Parameter, torch.Tensor]:
    """bf16 copies of the frozen weights and biases that only nn.Linear modules use, for bf16 on the CPU
    (else none), to pass to autocast.

    Autocast casts a linear's fp32 weight to bf16 at every call, and caches the cast only for parameters that
    require grad: a frozen encoder's weights were cast again for every batch, ~10% of a bf16 pass on the CPU
    (ablation.bench). The copies round as autocast does, so the results are bitwise the same
    (tests/test_precision.py). A parameter that another module also uses (an LM head tied to the embeddings)
    is left alone: there it is not cast. Not on CUDA, where the casts are cheap and memory is not; the copies
    take half the fp32 weights' size and are valid while the weights do not change.
    """
    if precision != "bf16" or device != "cpu":
        return {}
    linear = torch.nn.Linear
    elsewhere = {
        id(p) for m in model.modules() if not isinstance(m, linear) for p in m.parameters(recurse=False)
    }
    held: dict[torch.nn.Parameter, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, linear):
            for p in module.parameters(recurse=False):
                if not p.requires_grad and p.dtype == torch.float32 and id(p) not in elsewhere:
                    held[p] = p.detach().to(torch.bfloat16)
    return held


@contextlib.contextmanager
def holding(held: dict[torch.nn.Parameter, torch.Tensor]) -> Iterator[None]:
    """Each parameter's data replaced by its held copy while inside, and given back on the way out (an
    exception included); for code that enters autocast itself."""
    originals = [(p, p.data) for p in held]
    try:
        for p, copy in held.items():
            p.data = copy
        yield
    finally:
        for p, data in originals:
            p.data = data


def machine_id() -> str:
    """What the probe's result depends on: the processor, its bf16 features, torch and its thread count."""
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    flags = set()
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    bf16 = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    return f"{model} [{' '.join(bf16) or 'no bf16 flags'}] torch {torch.__version__} threads {torch.get_num_threads()}"


def probe_speedup(repeats: int = 5) -> float:
    """fp32 time over bf16 time for PROBE_SHAPES on this CPU (best of `repeats` each): > 1 is bf16 faster."""
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        total = 0.0
        for m, k, n in PROBE_SHAPES:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            torch.matmul(a, b)  # warm-up: the first call picks and compiles kernels
            best = float("inf")
            for _ in range(repeats):
                tic = time.perf_counter()
                torch.matmul(a, b)
                best = min(best, time.perf_counter() - tic)
            total += best
        seconds[dtype] = total
    return seconds[torch.float32] / seconds[torch.bfloat16]


def cpu_bf16_speedup(cache: str | Path, measure: Callable[[], float] | None = None) -> tuple[float, bool]:
    """This machine's bf16 speed-up over fp32 (probe_speedup unless `measure` is given), measured once and
    kept in `cache`; True if measured now."""
    path = Path(cache).expanduser() / PROBE_FILE
    key = hashlib.sha256(machine_id().encode()).hexdigest()[:16]
    with lock(path):
        try:
            known = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            known = {}  # a damaged probe file only costs a new measurement
        if key in known:
            return float(known[key]["speedup"]), False
        speedup = (measure or probe_speedup)()
        known[key] = {"machine": machine_id(), "speedup": speedup, "measured_at": time.time()}
        write_text(path, json.dumps(known, indent=1, sort_keys=True))
    return speedup, True


def resolve_precision(
    requested: str, device: str, cache: str | Path, measure: Callable[[], float] | None = None
) -> tuple[str, str]:
    """The precision to use for `requested` (fp32, bf16 or auto) on `device`, and why (for the log)."""
    if requested != "auto":
        return requested, "as configured"
    if device == "cuda":
        return "bf16", "auto: CUDA"
    speedup, now = cpu_bf16_speedup(cache, measure)
    choice = "bf16" if speedup >= BF16_SPEEDUP else "fp32"
    how = "measured now" if now else f"measured before, {Path(cache) / PROBE_FILE}"
    return (
        choice,
        f"auto: bf16 matmuls {speedup:.2f}x the fp32 speed on this CPU ({how}; bf16 from {BF16_SPEEDUP}x)",
    )


Choose = Callable[[str, str, str], tuple[str, str]]  # (requested, device, cache) -> (precision, why)


def resolve(cfg: RunConfig, choose: Choose = resolve_precision) -> tuple[RunConfig, dict[str, str]]:
    """A validated config made complete for this machine, in one place, before any key is formed: what it
    derives (`ablation.config.derive`: an imported folder's settings, canonical orders), then `device` and the
    precisions resolved here; and why each precision was chosen (for the log). A new config, and a resolved
    config resolves to itself; `choose` may remember what it measured (the entry point's ProcessState does).

    The row records the resolved values, and they enter the training and evaluation keys, so cells computed
    in one precision are never read as the other.
    """
    cfg = derive(cfg)
    device = resolve_device(cfg.device)
    chosen, why = {}, {}
    for name in ("train", "eval"):
        chosen[name], why[name] = choose(getattr(cfg, name).precision, device, cfg.paths.cache)
    resolved = dataclasses.replace(
        cfg,
        device=device,
        train=dataclasses.replace(cfg.train, precision=chosen["train"]),
        eval=dataclasses.replace(cfg.eval, precision=chosen["eval"]),
    )
    return resolved, {name: f"{chosen[name]} on {device} ({why[name]})" for name in chosen}
