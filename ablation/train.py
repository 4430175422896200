"""The training loop and the train-once store (key -> trained parameters + config + metrics)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ablation.atomic import lock, remove_stale
from ablation.config import AdapterConfig, CacheError, RunConfig, TrainConfig
from ablation.data import Encoded, collate, to_device, train_batches
from ablation.dropout import use_fast_dropout
from ablation.methods import trained_state
from ablation.precision import autocast, resolve_device
from ablation.sources import sha256_file

# Bump when a code change alters what training produces, so old stored adapters are not reused.
STORE_VERSION = 2  # 2: FastDropout
# An interrupted training run resumes from its last checkpoint, written at most this often.
CHECKPOINT_SECONDS = 60.0


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Adapter fields that joined the key after store version 2: they enter it only when they differ from
# their defaults, so the plain adapters trained before they existed keep their keys.
_LATER_ADAPTER_FIELDS = ("norm", "depth", "placement", "combine")


def training_key(cfg: RunConfig) -> str:
    """Hash of everything that affects training: model, task, method (adapter), training config, seed."""
    spec = {
        "model": asdict(cfg.model),
        "task": asdict(cfg.task),
        "train": asdict(cfg.train),
        "seed": cfg.seed,
        "store_version": STORE_VERSION,
    }
    spec["model"].pop("num_layers")  # derived from the weights, not a choice
    if cfg.task.path is None:  # joined the task after store version 2: only in keys of csv tasks
        spec["task"].pop("path")
    else:  # a local file: its content, not only its name, decides what is trained
        spec["task"]["sha256"] = sha256_file(Path(cfg.task.path).expanduser())
    if cfg.train.precision == "auto":
        raise ValueError(
            "train.precision=auto must be resolved for this machine first (ablation.session.resolve)"
        )
    device = resolve_device(cfg.device)
    if device != "cpu":  # other kernels, another RNG: other trained parameters (CPU keys stay as they were)
        spec["device"] = device
    if cfg.method.name == "adapters":
        plain = AdapterConfig()
        spec["adapter"] = {
            name: value
            for name, value in asdict(cfg.adapter).items()
            if name not in _LATER_ADAPTER_FIELDS or value != getattr(plain, name)
        }
    else:  # no adapters: their settings cannot change what is trained
        spec["method"] = asdict(cfg.method)
    text = json.dumps(spec, sort_keys=True)
    return f"{cfg.model.name}-{cfg.task.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def make_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int):
    """AdamW with decay off for LayerNorm and biases; linear warm-up then linear decay."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            skip = isinstance(module, nn.LayerNorm) or name == "bias"
            (no_decay if skip else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    warmup = int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_plan(data: Encoded, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """Every training batch in order, fixed by the seed, so a resumed run sees the same batches."""
    rng = np.random.default_rng(seed)
    plan: list[np.ndarray] = []
    while len(plan) < steps:
        plan += train_batches(data, batch_size, rng)
    return plan[:steps]


def train(
    model: nn.Module,
    data: Encoded,
    cfg: TrainConfig,
    seed: int,
    checkpoint: Path | None = None,
    device: str = "cpu",
) -> dict:
    """Train the parameters that require grad (of a model on `device`), resuming from `checkpoint` if there.

    A non-finite loss or gradient norm stops training before that step's update: the parameters
    stay those of the last finite step, and the metrics say `diverged` and at which step.
    """
    use_fast_dropout(model)  # torch's CPU dropout mask was ~12% of a step; same distribution
    steps_per_epoch = math.ceil(len(data.labels) / cfg.batch_size)
    total = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    plan = batch_plan(data, cfg.batch_size, total, seed)
    optimizer, scheduler = make_optimizer(model, cfg, total)
    params = [p for p in model.parameters() if p.requires_grad]
    start, losses, spent = 0, [], 0.0
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["params"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start, losses, spent = state["step"], state["losses"], state["seconds"]
        print(f"[train] resuming from step {start} of {total} ({checkpoint})", flush=True)
    model.train()
    started = time.time()
    tic = saved = time.perf_counter()
    diverged_step, steps_done = None, total
    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
    for step in range(start, total):
        batch = to_device(collate(data, plan[step]), device)
        with autocast(cfg.precision, device):
            loss = model(**batch).loss
        if torch.isfinite(loss):
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            what = f"loss {loss.item()}" if not torch.isfinite(loss) else f"gradient norm {grad_norm.item()}"
            bar.write(f"[train] diverged at step {step} ({what}): stopped before its update")
            optimizer.zero_grad(set_to_none=True)
            diverged_step, steps_done = step, step
            break
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if checkpoint is not None and time.perf_counter() - saved > CHECKPOINT_SECONDS and step + 1 < total:
            state = {
                "params": trained_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state()} if device == "cuda" else {}),
                "step": step + 1,
                "losses": losses,
                "seconds": spent + time.perf_counter() - tic,
            }
            torch.save(state, checkpoint.with_suffix(".tmp"))
            os.replace(checkpoint.with_suffix(".tmp"), checkpoint)
            saved = time.perf_counter()
    bar.close()
    model.eval()
    return {
        "steps": steps_done,
        "planned_steps": total,
        "epochs": steps_done / steps_per_epoch,
        "train_examples": len(data.labels),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "diverged": diverged_step is not None,
        "diverged_step": diverged_step,
        "train_seconds": spent + time.perf_counter() - tic,
        "resumed_at_step": start,
        "started_at": started,  # wall clock (unix seconds) of this process's part of the training
        "finished_at": time.time(),
        "pid": os.getpid(),
    }


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint without unpickling code: tensors, numbers, strings and containers only."""
    try:
        # weights_only=True: torch's restricted unpickler refuses any object that is not plain data, so a
        # file planted where a checkpoint is expected cannot run code on load.
        return torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 (truncated zip, foreign pickle, anything: all mean "not ours")
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CacheError(
            f"{path}: not a readable training checkpoint ({reason}); delete it to restart this training "
            "from step 0"
        ) from None


def store_path(store: str | Path, key: str) -> Path:
    """Folder of a training key in the store."""
    return Path(store) / key


def train_once(folder: Path, fit: Callable[[], dict], load: Callable[[], dict]) -> tuple[dict, bool]:
    """fit() (which stores into folder) unless the store has the key, else load(); True if fit ran.

    Under a file lock per key, so parallel jobs that need the same trained parameters (a local pool, a
    SLURM array) train them exactly once: the first takes the lock and trains, the others wait, then load.
    Temporary files of a training that was killed are removed first; its resume checkpoint is kept.
    """
    with lock(folder):
        remove_stale(folder.parent, f".{folder.name}-*")  # save_trained's temporary folders
        remove_stale(folder.parent, f"{folder.name}.partial.tmp")  # a checkpoint being written
        if (folder / "trained.safetensors").exists():
            return load(), False
        return fit(), True


def save_trained(model: nn.Module, folder: Path, config: dict, metrics: dict) -> None:
    """Write trained parameters (safetensors), config and metrics; atomic via a rename."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        state = {k: v.contiguous() for k, v in trained_state(model).items()}
        save_file(state, str(tmp / "trained.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        # A folder without trained parameters holds only stale evaluation caches of an older run.
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_trained(model: nn.Module, folder: Path) -> dict:
    """Load stored trained parameters into the model; returns the stored training metrics."""
    file = folder / "trained.safetensors"
    try:
        state = load_file(str(file))
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types for a bad header)
        raise CacheError(f"{file}: unreadable ({err}); delete {folder} to retrain this key") from None
    expected = trained_state(model)
    if set(state) != set(expected):
        raise CacheError(
            f"{file}: stored parameters do not match the model's trainable ones "
            f"({len(set(state) ^ set(expected))} names differ); delete {folder} to retrain"
        )
    shapes = [k for k, v in state.items() if v.shape != expected[k].shape]
    if shapes:
        k = shapes[0]
        raise CacheError(
            f"{file}: {len(shapes)} stored parameters differ in shape from the model's, e.g. {k} "
            f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)}; delete {folder} to retrain"
        )
    model.load_state_dict(state, strict=False)
    return json.loads((folder / "metrics.json").read_text())
