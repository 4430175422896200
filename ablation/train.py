"""The training loop and the train-once store (key -> trained parameters + key spec + config + metrics)."""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ablation.atomic import clean, lock, replacing
from ablation.config import CacheError, TrainConfig
from ablation.data import Encoded, collate, compute_metrics, to_device, train_batches
from ablation.families import is_norm
from ablation.methods import trained_state
from ablation.precision import autocast, held_weights

ENTRY = "key.json"  # in every store entry: the training spec its key hashes (ablation.keys.training_spec)
# In every store entry: one row per step, the loss, the gradient norm before clipping, the learning rate and,
# every train.eval_every steps, the task's metric on the validation split (empty on the other steps).
HISTORY = "history.csv"
HISTORY_COLUMNS = ("step", "loss", "grad_norm", "lr", "val_metric")
# Escaping the plateau: the mean loss of the last ESCAPE_WINDOW steps below ESCAPE_MARGIN times the plateau
# loss. At the plateau one batch's loss scatters with the batch's class mix (s.d. ~0.03 nats at batch 32 on
# rotten_tomatoes, up to ~0.1 with a wandering head); a 20-step mean scatters sqrt(20) ~ 4.5x less, so 10%
# below the plateau (0.07 nats for ln 2) is 3 to 10 s.d. away from where a model that learnt nothing sits.
ESCAPE_WINDOW = 20
ESCAPE_MARGIN = 0.9
LAST_STEPS = 50  # final_loss and loss_spread: over the last 50 steps taken


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int):
    """AdamW with decay off for norms (LayerNorm, RMSNorm) and biases; linear warm-up then linear decay."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            skip = is_norm(module) or name == "bias"
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


def plateau_loss(labels: np.ndarray, num_labels: int) -> float:
    """The cross-entropy (nats) of predicting the training labels' frequencies for every example: the loss a
    model that has learnt nothing beyond the class prior reaches (ln K for K balanced classes). Chosen over
    the first steps' measured loss because it does not depend on the head's random init (an init that
    starts far off the prior starts above it) and is the same for every seed of a setting."""
    counts = np.bincount(np.asarray(labels), minlength=num_labels).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def escape_step(
    losses: list[float], plateau: float, window: int = ESCAPE_WINDOW, margin: float = ESCAPE_MARGIN
) -> int | None:
    """The first step (0-based) at which the mean loss of the last `window` steps falls below margin x
    plateau; None if it never does (non-finite losses never count as below)."""
    values = np.asarray(losses, dtype=float)
    if len(values) < window:
        return None
    means = np.convolve(values, np.ones(window) / window, mode="valid")  # means[i]: steps i..i+window-1
    below = np.flatnonzero(np.isfinite(means) & (means < margin * plateau))
    return int(below[0] + window - 1) if len(below) else None


def stability(history: dict[str, list], plateau: float) -> dict:
    """What a training's history says of its stability: the plateau loss, the step it escaped the plateau
    (None: never), the s.d. of the loss over its last LAST_STEPS steps, the largest gradient norm."""
    losses = [x for x in history["loss"] if math.isfinite(x)]
    norms = [x for x in history["grad_norm"] if math.isfinite(x)]
    last = losses[-LAST_STEPS:]
    return {
        "plateau_loss": plateau,
        "escape_step": escape_step(history["loss"], plateau),
        "loss_spread": float(np.std(last, ddof=1)) if len(last) > 1 else None,
        "largest_grad_norm": max(norms) if norms else None,
    }


def record_step(
    history: dict[str, list], step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float
) -> None:
    """Append one step to the history (HISTORY_COLUMNS, val_metric empty); the bench times this against the
    step itself."""
    values = (step, loss.item(), grad_norm.item(), lr, math.nan)
    for name, value in zip(HISTORY_COLUMNS, values, strict=True):
        history[name].append(value)


@torch.inference_mode()
def validation_metric(
    model: nn.Module, data: Encoded, metric: str, batch_size: int, precision: str, device: str
) -> float:
    """The task's metric of a plain forward pass over `data` (dropout off; the model is left in train mode).

    Consumes no random numbers, so a training that calls it between steps takes the same steps."""
    model.eval()
    order = np.argsort(data.lengths, kind="stable")  # similar lengths together: little padding
    preds = np.empty(len(order), dtype=np.int64)
    with autocast(precision, device):
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = to_device(collate(data, index), device)
            batch.pop("labels", None)
            preds[index] = model(**batch).logits.argmax(-1).cpu().numpy()
    model.train()
    return compute_metrics(metric, data.labels, preds)[metric]


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
    evaluate: Callable[[], float] | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Train the parameters that require grad (of a model on `device`), resuming from `checkpoint` if there.

    With cfg.eval_every, `evaluate()` (the validation metric, see validation_metric) runs after every
    eval_every-th step and after the last; `on_step` receives each step's history entry as it is taken (a
    tracker's live view).

    A non-finite loss or gradient norm stops training before that step's update: the parameters
    stay those of the last finite step, and the metrics say `diverged` and at which step.
    The metrics hold `history` (HISTORY_COLUMNS, a list each: one entry per step taken, and for a diverged
    run the step that stopped it, with its non-finite values) and the stability measures of `stability`.
    """
    steps_per_epoch = math.ceil(len(data.labels) / cfg.batch_size)
    total = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    plan = batch_plan(data, cfg.batch_size, total, seed)
    optimizer, scheduler = make_optimizer(model, cfg, total)
    params = [p for p in model.parameters() if p.requires_grad]
    held = held_weights(model, cfg.precision, device)  # what is frozen stays as it is for the whole training
    start, spent, eval_spent = 0, 0.0, 0.0
    history: dict[str, list] = {name: [] for name in HISTORY_COLUMNS}
    state = load_checkpoint(checkpoint) if checkpoint is not None and checkpoint.exists() else None
    if cfg.eval_every is not None and evaluate is None:
        raise ValueError("train.eval_every is set: pass `evaluate`, the validation metric")
    if state is not None and "history" not in state:  # its steps' history is lost: resuming would hide them
        print(f"[train] {checkpoint}: written by an older version (no history): starting again", flush=True)
    elif state is not None:
        model.load_state_dict(state["params"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start, history, spent = state["step"], state["history"], state["seconds"]
        history.setdefault("val_metric", [math.nan] * len(history["step"]))  # a checkpoint of older code
        eval_spent = state.get("eval_seconds", 0.0)
        print(f"[train] resuming from step {start} of {total} ({checkpoint})", flush=True)
    model.train()
    started = time.time()
    tic = saved = time.perf_counter()
    diverged_step, steps_done = None, total
    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
    for step in range(start, total):
        batch = to_device(collate(data, plan[step]), device)
        with autocast(cfg.precision, device, held):
            loss = model(**batch).loss
        grad_norm = torch.tensor(float("nan"))
        if torch.isfinite(loss):
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)  # the norm before clipping
        record_step(history, step, loss, grad_norm, scheduler.get_last_lr()[0])
        finite = bool(torch.isfinite(loss) and torch.isfinite(grad_norm))
        if finite:  # else stopped before this step's update
            optimizer.step()
            scheduler.step()
            if cfg.eval_every is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == total):
                eval_tic = time.perf_counter()
                history["val_metric"][-1] = evaluate()
                eval_spent += time.perf_counter() - eval_tic
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step({name: history[name][-1] for name in HISTORY_COLUMNS})
        if not finite:
            what = f"loss {loss.item()}" if not torch.isfinite(loss) else f"gradient norm {grad_norm.item()}"
            bar.write(f"[train] diverged at step {step} ({what}): stopped before its update")
            diverged_step, steps_done = step, step
            break
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(history['loss'][-20:]):.4f}")
        if (
            checkpoint is not None
            and time.perf_counter() - saved > cfg.checkpoint_seconds
            and step + 1 < total
        ):
            state = {
                "params": trained_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state()} if device == "cuda" else {}),
                "step": step + 1,
                "history": history,
                "seconds": spent + time.perf_counter() - tic,
                "eval_seconds": eval_spent,
            }
            with replacing(checkpoint) as tmp:
                torch.save(state, tmp)
            saved = time.perf_counter()
    bar.close()
    model.eval()
    seconds = spent + time.perf_counter() - tic
    if cfg.eval_every is not None:
        evaluations = sum(math.isfinite(x) for x in history["val_metric"])
        print(
            f"[train] validation every {cfg.eval_every} steps: {evaluations} evaluations took {eval_spent:.1f} s "
            f"of the training's {seconds:.1f} s ({100 * eval_spent / seconds:.1f}%)",
            flush=True,
        )
    losses = history["loss"][:steps_done]  # the steps taken (a diverged run's stopping step is not one)
    return {
        "steps": steps_done,
        "planned_steps": total,
        "epochs": steps_done / steps_per_epoch,
        "train_examples": len(data.labels),
        "final_loss": float(np.mean(losses[-LAST_STEPS:])) if losses else None,
        "diverged": diverged_step is not None,
        "diverged_step": diverged_step,
        "train_seconds": seconds,
        "validation_seconds": eval_spent,  # of train_seconds: the evaluations of train.eval_every
        "resumed_at_step": start,
        "started_at": started,  # wall clock (unix seconds) of this process's part of the training
        "finished_at": time.time(),
        "pid": os.getpid(),
        **stability(history, plateau_loss(data.labels, model.config.num_labels)),
        "history": history,
    }


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint without unpickling code: tensors, numbers, strings and containers only."""
    try:
        # weights_only=True: torch's restricted unpickler refuses any object that is not plain data, so a
        # file planted where a checkpoint is expected cannot run code on load.
        return torch.load(path, weights_only=True)
    except Exception as err:  # a truncated zip, a foreign pickle, anything: all mean "not ours"
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CacheError(
            f"{path}: not a readable training checkpoint ({reason}); delete it to restart this training "
            "from step 0"
        ) from None


def store_path(store: str | Path, key: str) -> Path:
    """Folder of a training key in the store."""
    return Path(store) / key


def checkpoint_path(folder: Path) -> Path:
    """Where a training of this store entry keeps its resume checkpoint while it runs."""
    return folder.with_name(folder.name + ".partial.pt")


def train_once(folder: Path, fit: Callable[[], dict], load: Callable[[], dict]) -> tuple[dict, bool]:
    """fit() (which stores into folder) unless the store has the key, else load(); True if fit ran.

    Under a file lock per key, so parallel jobs that need the same trained parameters (a local pool, a
    SLURM array) train them exactly once: the first takes the lock and trains, the others wait, then load.
    Temporary files of a training that was killed are removed first; its resume checkpoint is kept.
    """
    with lock(folder):
        clean(folder)  # save_trained's temporary folders
        clean(checkpoint_path(folder))  # a checkpoint being written
        if (folder / "trained.safetensors").exists():
            if (folder / HISTORY).exists():
                return load(), False
            print(
                f"[train] {folder}: no training history (an older version's entry): training again",
                flush=True,
            )
        return fit(), True


def save_trained(
    model: nn.Module, folder: Path, spec: dict, config: dict, metrics: dict, history: dict[str, list]
) -> None:
    """Write trained parameters (safetensors), the key's spec, config, metrics and the training's history
    (HISTORY); atomic via a rename.

    Replaces what the folder held: without trained parameters (or their history) it can only hold stale
    evaluation caches.
    """
    with replacing(folder, folder=True) as tmp:
        state = {k: v.contiguous() for k, v in trained_state(model).items()}
        save_file(state, str(tmp / "trained.safetensors"))
        pd.DataFrame({name: history[name] for name in HISTORY_COLUMNS}).to_csv(tmp / HISTORY, index=False)
        for name, content in ((ENTRY, spec), ("config.json", config), ("metrics.json", metrics)):
            (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True, default=str))


def older_entries(store: Path) -> int:
    """Store entries written by an older store version (no key.json): never read, they are cache misses."""
    if not store.is_dir():
        return 0
    return sum(
        1 for p in store.iterdir() if (p / "trained.safetensors").exists() and not (p / ENTRY).exists()
    )


def load_history(folder: Path) -> pd.DataFrame:
    """A store entry's training history: one row per step (HISTORY_COLUMNS; an older entry's lacks
    val_metric, read as empty)."""
    return pd.read_csv(folder / HISTORY).reindex(columns=list(HISTORY_COLUMNS))


def load_trained(model: nn.Module, folder: Path) -> dict:
    """Load stored trained parameters into the model; returns the stored training metrics."""
    file = folder / "trained.safetensors"
    try:
        state = load_file(str(file))
    except Exception as err:  # safetensors raises its own error types for a bad header
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
