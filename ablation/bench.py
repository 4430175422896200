"""Benchmarks that print ratios measured side by side in one run (these machines are noisy).

    python -m ablation.bench                       # default model and task
    python -m ablation.bench model=minilm_l6       # any Hydra override of the run config
    python -m ablation.bench --skip-overhead       # leave out the sweep subprocesses
    python -m ablation.bench --skip-kinds          # leave out the other ablation kinds' heatmaps
    python -m ablation.bench --only-placement      # only the training steps of adapters in some layers
    python -m ablation.bench --examples 256        # evaluate on the first 256 validation examples (a deep
                                                   # model's triangle: its cost in full passes is the ratio)
    python -m ablation.bench --skip-placement      # leave out the training steps of adapters in some layers
    python -m ablation.bench --skip-profile        # leave out the profiles of a bf16 pass and training step

Trains the adapters first if the store does not have them (as the sweep would).
"""

from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from ablation.adapters import remove_adapters
from ablation.cost import floor_passes
from ablation.data import Encoded, collate, to_device, train_batches
from ablation.evaluate import Ablation, Evaluator
from ablation.methods import prepare
from ablation.precision import BF16_SPEEDUP, autocast, cpu_bf16_speedup, held_weights, machine_id
from ablation.session import load_pretrained, process_state
from ablation.train import HISTORY_COLUMNS, record_step

CONF = str(Path(__file__).resolve().parent.parent / "conf")


# Square, and the encoder's own projection shapes (tokens x 768 -> 3072 and back) at large batches.
PEAK_SHAPES = ((2048, 2048, 2048), (4096, 768, 3072), (4096, 3072, 768))


def sync(device: str) -> None:
    """Wait for queued device work, so wall times measure it (CUDA runs asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, repeats: int = 5, device: str = "cpu") -> float:
    """Best GFLOP/s of a matmul in this dtype over PEAK_SHAPES (m x k times k x n) on the device."""
    best = 0.0
    shapes = PEAK_SHAPES if device == "cpu" else tuple((8 * m, 4 * k, 4 * n) for m, k, n in PEAK_SHAPES)
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
        torch.matmul(a, b)
        for _ in range(repeats):
            sync(device)
            tic = time.perf_counter()
            torch.matmul(a, b)
            sync(device)
            best = max(best, 2 * m * k * n / (time.perf_counter() - tic) / 1e9)
    return best


def device_name(device: str) -> str:
    """The processor or GPU a run measures, for the first line of the table."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    return machine_id()


def memory_peaks(device: str) -> str:
    """Peak resident memory of this process, and of the device's allocator on CUDA."""
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    text = f"host {host:.2f} GiB"
    if device == "cuda":
        text += f", device {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return text


def cpu_support(feature: str) -> str:
    """Whether torch sees a CPU feature: without AMX, bf16 dot products are no faster than fp32 FMAs."""
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)  # private: may move between versions
    return "unknown" if probe is None else "yes" if probe() else "no"


def counted(fn) -> tuple[float, object]:
    """Matmul FLOPs that fn() runs (forward and backward, as torch counts them), and its result."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return float(counter.get_total_flops()), out


def timed(fn, repeats: int = 1) -> tuple[float, object]:  # fn returns after its device work
    """Best wall time of fn() over repeats, and its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        tic = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - tic)
    return best, out


def training_step(
    model,
    data,
    batch_size: int,
    precision: str,
    device: str = "cpu",
    steps: int = 6,
    clip: bool = False,
    history: bool = False,
    hold: bool = True,
) -> tuple[Callable[[dict], None], list[dict]]:
    """train()'s step (forward, backward, AdamW, with its dropout) on a copy of the model, and `steps` training
    batches; with `clip`, also train()'s gradient clipping, and with `history` train()'s recording of the step
    (ablation.train.record_step: the loss, the clipping's gradient norm, the learning rate); without `hold`,
    autocast casts the frozen weights at every call (as before held_weights).

    train() also clips gradients and steps the scheduler: elementwise work on the 3M trained values.
    """
    model = copy.deepcopy(model).train()  # its dropout is FastDropout, as loaded (ablation.models)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    index = train_batches(data, batch_size, np.random.default_rng(0))[:steps]
    batches = [to_device(collate(data, i), device) for i in index]
    held = held_weights(model, precision, device) if hold else None  # as train() does
    log: dict[str, list] = {name: [] for name in HISTORY_COLUMNS}

    def step(batch: dict) -> None:
        with autocast(precision, device, held):
            loss = model(**batch).loss
        loss.backward()
        if clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            if history:  # what train() adds per step to keep its history
                record_step(log, len(log["step"]), loss, grad_norm, 1e-4)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)

    return step, batches


def train_step_seconds(
    model, data, batch_size: int, precision: str, device: str = "cpu", **kw
) -> tuple[float, float]:
    """Mean seconds and matmul FLOPs of a training step (training_step's; its keywords as there)."""
    step, batches = training_step(model, data, batch_size, precision, device, **kw)
    # Untimed first round: counts the FLOPs and lets the kernels settle for every batch shape.
    flops, _ = counted(lambda: [step(batch) for batch in batches])
    seconds = [timed(lambda batch=batch: step(batch))[0] for batch in batches]
    return float(np.mean(seconds)), flops / len(batches)


# Where a matmul's own time is counted (aten::linear and aten::matmul only dispatch to these).
MATMULS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"})


def profiled(fn, top: int = 8) -> tuple[float, float, list[tuple[str, float, int]]]:
    """fn() under torch.profiler: the matmuls' share of the self CPU time, their own seconds, and the `top` ops
    by self time, each (name, share, calls)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
    total = sum(t for _, t, _ in ops)
    matmuls = sum(t for name, t, _ in ops if name in MATMULS)
    top_ops = [(name, t / total, n) for name, t, n in sorted(ops, key=lambda op: -op[1])[:top]]
    return matmuls / total, matmuls / 1e6, top_ops


def held_weights_gain(model, data, stages, cfg, report, rounds: int = 3) -> None:
    """A bf16 validation pass and training step with autocast casting the frozen weights at every call
    against the frozen weights held in bf16 (ablation.precision.held_weights): alternating rounds, each
    setup's best pass and mean step."""
    held = Evaluator(stages, data, cfg.eval.batch_size, "bf16", cfg.device)
    if not held._bf16_weights:
        return  # nothing is held here (CUDA)
    plain = Evaluator(stages, data, cfg.eval.batch_size, "bf16", cfg.device)
    plain._bf16_weights = {}  # what every pass did before
    steps = {
        h: training_step(model, data, cfg.train.batch_size, "bf16", cfg.device, hold=h) for h in (False, True)
    }
    for step, batches in steps.values():  # kernel selection for every batch shape
        step(batches[0])
    passes, step_seconds = {False: [], True: []}, {False: [], True: []}
    for _ in range(rounds):
        for h, ev in ((False, plain), (True, held)):
            passes[h].append(timed(ev.from_scratch)[0])
            step, batches = steps[h]
            step_seconds[h].extend(timed(lambda b=b, s=step: s(b))[0] for b in batches)
    for name, (before, after) in {
        "full validation pass bf16": (min(passes[False]), min(passes[True])),
        "train step bf16": (float(np.mean(step_seconds[False])), float(np.mean(step_seconds[True]))),
    }.items():
        report(
            f"{name}: weights cast / held",
            f"{before:.3f} s / {after:.3f} s: {before / after:.2f}x ({rounds} rounds, alternating)",
        )


def profiled_step(model, data, batch_size: int, device: str) -> Callable[[], None]:
    """One bf16 training step to profile, its kernels selected by a step on the same batch first."""
    step, batches = training_step(model, data, batch_size, "bf16", device, steps=1)
    step(batches[0])
    return lambda: step(batches[0])


def first_examples(data: Encoded, n: int) -> Encoded:
    """The first n examples of a tokenized split (the same padding and pad token)."""
    types = None if data.token_type_ids is None else data.token_type_ids[:n]
    return replace(data, input_ids=data.input_ids[:n], token_type_ids=types, labels=data.labels[:n])


def sweep_seconds(overrides: list[str], cells: str) -> float:
    """Wall time of a cached sweep over ablate.first/last=cells in a subprocess."""
    return multirun_seconds([*overrides, f"ablate.first={cells}", f"ablate.last={cells}"])[0]


def multirun_seconds(overrides: list[str]) -> tuple[float, pd.DataFrame]:
    """Wall time of `python -m ablation.run -m <overrides>` in a subprocess, and its results table."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ablation.run", "-m", *overrides, f"hydra.sweep.dir={tmp}/s"]
        tic = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        seconds = time.perf_counter() - tic
        return seconds, pd.read_csv(Path(tmp) / "s" / "results.csv")


def study_overhead(overrides: list[str], report) -> None:
    """Per-job cost beyond training and evaluation for jobs that each need other trained parameters.

    A study's jobs differ in method, adapter, seed or training settings: the process keeps the base model
    and the tokenized data and rebuilds only what is trained. Measured on 8 such jobs (2 methods x 4 seeds,
    2 training steps each, 200 validation examples): first run, then a re-run where training and evaluation
    are cached, so each job's time is its overhead alone (model reset, trained parameters loaded, row written).
    """
    grid = [
        *overrides,
        "method=adapters,layernorm",
        "seed=0..3",
        "train.max_steps=2",
        "task.validation_size=200",
    ]
    first, table = multirun_seconds(grid)
    outside = table["job_seconds"] - table["train_seconds"] - table["eval_seconds"]
    again, _ = multirun_seconds(grid)
    one, _ = multirun_seconds([*grid[:-3], "seed=0", *grid[-2:]])
    per_job = (again - one) / (len(table) - 1)
    report(
        f"per-job overhead, {len(table)} jobs of distinct training keys",
        f"{per_job:.3f} s from a cached re-run ({again:.1f} s vs 1 job {one:.1f} s); first run: median "
        f"{outside.median():.3f} s (max {outside.max():.3f} s) per job outside training and evaluation",
    )


ABLATIONS = (
    Ablation("zero"),
    Ablation("mean"),
    Ablation("scale", alpha=0.5),
    Ablation("keep"),
    Ablation("zero", layernorm="pretrained"),
)


def kind_costs(new_evaluator, removal_passes: float, ref: float, report) -> None:
    """Each ablation kind's whole heatmap (intact pass included) on a fresh evaluator, in full passes of
    `ref` seconds beside the removal heatmap's layer passes: the floor, plus one pass for keep's
    all-removed states (mean's means come from the intact pass). `new_evaluator()` gives a fresh one."""
    for ablation in ABLATIONS:
        ev = new_evaluator()
        L = ev.stages.num_layers
        cells = [(first, last) for first in range(L) for last in range(first, L)]
        tic = time.perf_counter()
        dict(ev.predict([None, *cells], ablation))
        seconds = time.perf_counter() - tic
        name = ablation.kind + (f" alpha={ablation.alpha:g}" if ablation.alpha is not None else "")
        name += ", pretrained LayerNorms" if ablation.layernorm == "pretrained" else ""
        report(
            f"heatmap cost: {name}",
            f"{seconds:.1f} s = {seconds / ref:.1f} full passes (layer passes {ev.layer_passes / L:.1f}, removal "
            f"{removal_passes:.1f}: +{ev.layer_passes / L - removal_passes:.1f})",
        )


def placement_costs(model, pristine: dict, cfg, data, report, rounds: int = 5) -> None:
    """Seconds per training step with adapters in the top half only against every layer (AdapterDrop's
    speed-up): with the adapted layers' LayerNorms only, no backward pass runs below the lowest adapted
    layer; with every LayerNorm training (the embeddings' too) it runs through all of them. Alternating
    rounds, each setup's mean."""
    L = cfg.model.num_layers
    top = list(range(L // 2, L))
    setups = {
        "every layer (LayerNorms: adapted)": ("adapted", None),
        f"the top half {top[0]}..{L - 1} (LayerNorms: adapted)": ("adapted", top),
        f"the top half {top[0]}..{L - 1} (LayerNorms: train, all)": ("train", top),
    }
    models = {}
    for name, (norms, layers) in setups.items():
        copy_ = copy.deepcopy(model)
        remove_adapters(copy_)
        copy_.load_state_dict(pristine)
        method = replace(cfg.method, name="adapters", layernorms=norms)
        counts = prepare(copy_, cfg.model.family, method, replace(cfg.adapter, layers=layers, load=None))
        models[name] = copy_, counts["trainable"]
    seconds: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, (m, _) in models.items():
            seconds[name].append(
                train_step_seconds(m, data, cfg.train.batch_size, cfg.train.precision, cfg.device)[0]
            )
    every = float(np.mean(seconds[next(iter(setups))]))
    for name, (_, trained) in models.items():
        mean = float(np.mean(seconds[name]))
        report(
            f"train step {cfg.train.precision}, adapters in {name}",
            f"{mean:.3f} s = {mean / every:.2f}x every layer's ({trained:,} trained; {rounds} rounds, alternating)",
        )


def main(argv: list[str] | None = None) -> None:
    """Measure and print the benchmark table."""
    parser = argparse.ArgumentParser(prog="python -m ablation.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--skip-overhead", action="store_true", help="skip the per-job overhead subprocesses")
    parser.add_argument(
        "--skip-kinds", action="store_true", help="skip the heatmaps of the other ablation kinds"
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=None,
        help="evaluate on the first N validation examples (times shrink, the ratios to a full pass stay)",
    )
    parser.add_argument(
        "--skip-placement", action="store_true", help="skip the training steps of adapters in some layers"
    )
    parser.add_argument(
        "--skip-profile", action="store_true", help="skip the profiles of a bf16 pass and training step"
    )
    parser.add_argument(
        "--only-placement",
        action="store_true",
        help="only the training steps of adapters in the top half against every layer",
    )
    args, overrides = parser.parse_known_args(argv)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = process_state().resolve(OmegaConf.to_object(compose("config", overrides=overrides)))
    device = cfg.device

    def report(name: str, value: str) -> None:
        print(f"{name:<52} {value}", flush=True)

    if args.only_placement:  # the pretrained model alone: nothing to train or evaluate first
        base = load_pretrained(cfg.model, cfg.task.num_labels, cfg.paths.cache)
        data = base.task_split(cfg.task, "train", cfg.paths.cache, cfg.model.max_length)
        print(
            f"device {device}: {device_name(device)}, threads {torch.get_num_threads()}, model {cfg.model.name}"
        )
        placement_costs(base.fresh_model(cfg.seed), base.pristine, cfg, data, report)
        return
    session = process_state().open_session(cfg)
    model, data, L = (
        session.evaluator.stages.model,
        session.evaluator.data,
        session.evaluator.stages.num_layers,
    )
    if args.examples is not None:
        if not 0 < args.examples <= len(data.labels):
            parser.error(
                f"--examples {args.examples}: use 1..{len(data.labels)} (the validation split's size)"
            )
        data = first_examples(data, args.examples)

    print(
        f"device {device}: {device_name(device)}\n"
        f"threads {torch.get_num_threads()}, model {cfg.model.name}, task {cfg.task.name}, n={len(data.labels)}"
    )
    peak = {
        p: matmul_peak(dtype, device=device)
        for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    report("matmul peak fp32 / bf16 (GFLOP/s)", f"{peak['fp32']:.0f} / {peak['bf16']:.0f}")
    report(
        "CPU bf16 units: AMX tiles / AVX512-BF16", f"{cpu_support('amx_tile')} / {cpu_support('avx512_bf16')}"
    )

    stages = session.evaluator.stages
    evals = {p: Evaluator(stages, data, cfg.eval.batch_size, p, device) for p in ("fp32", "bf16")}
    tokens = int(sum(b["attention_mask"].sum() for b in evals["fp32"].batches))
    full, preds, acc, pass_flops = {}, {}, {}, {}
    for p, ev in evals.items():
        # also the warm-up: kernel selection for every batch shape
        flops = pass_flops[p] = counted(ev.from_scratch)[0]
        full[p], preds[p] = timed(ev.from_scratch, repeats=2)  # from_scratch copies its result to the host
        acc[p] = float((preds[p] == data.labels).mean())
        report(
            f"full validation pass {p}",
            f"{full[p]:.2f} s, {tokens / full[p]:.0f} tok/s, {flops / full[p] / 1e9:.0f} GFLOP/s "
            f"= {100 * flops / full[p] / 1e9 / peak[p]:.0f}% of peak, accuracy {acc[p]:.4f}",
        )
    agree = float((preds["bf16"] == preds["fp32"]).mean())
    speedup = full["fp32"] / full["bf16"]
    report("bf16 speed-up / prediction agreement with fp32", f"{speedup:.2f}x / {100 * agree:.2f}%")
    probe = (
        "CUDA: bf16"
        if device == "cuda"
        else f"probe: bf16 matmuls {cpu_bf16_speedup(cfg.paths.cache)[0]:.2f}x fp32"
    )
    report(
        f"precision used: train / eval (eval auto: bf16 from {BF16_SPEEDUP}x)",
        f"{cfg.train.precision} / {cfg.eval.precision} ({probe})",
    )

    step = {}
    for p in ("fp32", "bf16"):
        step[p], tflops = train_step_seconds(model, data, cfg.train.batch_size, p, device)
        report(
            f"train step {p} (batch {cfg.train.batch_size}, frozen encoder)",
            f"{step[p]:.3f} s, {tflops / step[p] / 1e9:.0f} GFLOP/s = {100 * tflops / step[p] / 1e9 / peak[p]:.0f}% of peak",
        )
    report("train step bf16 speed-up", f"{step['fp32'] / step['bf16']:.2f}x")
    held_weights_gain(model, data, stages, cfg, report)
    if not args.skip_profile and device != "cpu":
        # self CPU time on a GPU is the kernels' launches, not their run: a rate from it would mislead
        report("profile", f"skipped on {device}: it reads CPU time (torch.profiler with CUDA activity there)")
    elif not args.skip_profile:
        step_fn = profiled_step(model, data, cfg.train.batch_size, device)
        runs = {  # each with its matmul FLOPs: the pass's counted above, the profiled step's here
            "validation pass bf16": (evals["bf16"].from_scratch, pass_flops["bf16"]),
            "train step bf16": (step_fn, counted(step_fn)[0]),
        }
        for name, (fn, flops) in runs.items():
            share, matmul_s, top = profiled(fn)
            # the share of the peak the whole would reach if everything but its matmuls took no time
            rate = flops / matmul_s / 1e9
            report(
                f"profile, {name}: matmuls' own rate",
                f"{rate:.0f} GFLOP/s = {100 * rate / peak['bf16']:.0f}% of peak (the ceiling were the rest free)",
            )
            report(
                f"profile, {name}: matmuls' share", f"{100 * share:.0f}% of the self CPU time; the top ops:"
            )
            for op, op_share, calls in top:
                report(f"  {op}", f"{100 * op_share:.1f}% ({calls} calls)")
    # the history's cost: the same steps with and without it, alternating, each the mean of its rounds
    tp = cfg.train.precision
    rounds = {False: [], True: []}
    for _ in range(3):
        for history in (False, True):
            rounds[history].append(
                train_step_seconds(model, data, cfg.train.batch_size, tp, device, history=history)[0]
            )
    plain, recorded = float(np.mean(rounds[False])), float(np.mean(rounds[True]))
    report(
        f"train step {tp} without / with history",
        f"{plain:.3f} s / {recorded:.3f} s: the history costs {100 * (recorded / plain - 1):+.1f}% (3 rounds each)",
    )

    p = cfg.eval.precision
    ev = Evaluator(stages, data, cfg.eval.batch_size, p, device)
    # The machine's speed drifts over minutes, so the reference full passes are timed in the middle
    # and at the end of the cell evaluation (and excluded from it), not only before.
    cells_s, reference = 0.0, []
    floor = floor_passes(L)
    tic = time.perf_counter()
    ev.intact()
    for first in range(L):
        for last in range(first, L):
            ev.cell(first, last)
        if (not reference and ev.layer_passes >= (floor + 1) * L / 2) or first == L - 1:
            cells_s += time.perf_counter() - tic
            reference.append(timed(ev.from_scratch)[0])
            tic = time.perf_counter()
    n_cells = L * (L + 1) // 2
    ref = float(np.mean(reference))
    report(
        f"{n_cells}-cell evaluation {p} (+ intact pass)",
        f"{cells_s:.1f} s = {cells_s / ref:.1f} full passes of {ref:.1f} s (layer passes {ev.layer_passes / L:.1f}; "
        f"naive {n_cells}, floor {floor:.1f} + 1 intact; the last layer's feed-forward runs at one token)",
    )
    if not args.skip_kinds:
        kind_costs(
            lambda: Evaluator(stages, data, cfg.eval.batch_size, p, device), ev.layer_passes / L, ref, report
        )
    if not args.skip_placement:
        placement_costs(model, process_state().pretrained.pristine, cfg, data, report)
    report("memory peaks", memory_peaks(device))
    if not args.skip_overhead:
        study_overhead(overrides, report)
        one = sweep_seconds(overrides, "0..0")
        all_ = sweep_seconds(overrides, f"0..{L - 1}")
        report(
            "per-job overhead of a cached job",
            f"{(all_ - one) / (n_cells - 1):.3f} s ({n_cells}-job re-run {all_:.1f} s vs 1-job {one:.1f} s)",
        )


if __name__ == "__main__":
    main()
