"""What a process keeps between jobs: the pretrained model and tokenized data (Base), and per training key
the trained model and its evaluator (Session).

Jobs that differ only in the ablation reuse the Session. Jobs that differ in method, adapter, seed or
training settings reuse the Base: its model is reset to the pretrained weights and a freshly seeded head
(exactly what loading it anew gives), so only the trained parameters are rebuilt. Cell predictions are
kept on disk beside the trained parameters, so a re-run computes nothing new.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm.auto import tqdm

from ablation.adapters import remove_adapters
from ablation.atomic import lock, remove_stale, save_array
from ablation.config import AblateConfig, CacheError, ModelConfig, RunConfig, TaskConfig
from ablation.data import Encoded, encode, load_task
from ablation.evaluate import Evaluator
from ablation.methods import prepare
from ablation.models import Stages, load_model
from ablation.precision import resolve_device, resolve_precision
from ablation.train import (
    load_trained,
    save_trained,
    set_seed,
    store_path,
    train,
    train_once,
    training_key,
)


@dataclass
class Base:
    """A pretrained model with a new head for `num_labels`, its tokenizer, and the tokenized tasks."""

    spec: str
    model: nn.Module
    tokenizer: object
    pristine: dict[str, torch.Tensor]  # the weights as loaded
    new_modules: list[nn.Module]  # what loading initialised (the head), in the order loading did it
    encoded: dict[tuple[str, str], Encoded] = field(default_factory=dict)

    def fresh_model(self, seed: int) -> nn.Module:
        """The model as load_model gives it after set_seed(seed): pretrained weights, a seeded new head."""
        remove_adapters(self.model)
        self.model.load_state_dict(self.pristine)
        for p in self.model.parameters():
            p.grad = None
        set_seed(seed)
        with torch.no_grad():
            for module in self.new_modules:
                self.model._init_weights(module)
        return self.model

    def task_split(self, cfg: TaskConfig, split: str, cache: str, max_length: int) -> Encoded:
        """A split of the task, tokenized once per process."""
        key = (json.dumps(asdict(cfg), sort_keys=True), split)
        if key not in self.encoded:
            data = load_task(cfg, cache)
            self.encoded[key] = encode(data[split], self.tokenizer, cfg.text_fields, max_length)
        return self.encoded[key]


_BASE: Base | None = None


def open_base(model_cfg: ModelConfig, num_labels: int, cache: str) -> Base:
    """The process's Base for this model and label count, loaded if it is not the current one."""
    global _BASE
    spec = json.dumps({"model": asdict(model_cfg), "num_labels": num_labels, "cache": cache}, sort_keys=True)
    if _BASE is not None and _BASE.spec == spec:
        return _BASE
    _BASE = None  # release the previous model before loading another
    model, tokenizer, missing = load_model(model_cfg, num_labels, cache)
    new_modules = _initialised_modules(model, missing)
    pristine = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _BASE = Base(spec, model, tokenizer, pristine, new_modules)
    return _BASE


def _initialised_modules(model: nn.Module, missing: list[str]) -> list[nn.Module]:
    """Modules owning a missing (newly initialised) weight, in post-order: how loading initialises them."""
    owners = {name.rpartition(".")[0] for name in missing}

    def post_order(module: nn.Module, prefix: str):
        for name, child in module.named_children():
            yield from post_order(child, f"{prefix}{name}.")
        yield prefix[:-1], module

    return [module for name, module in post_order(model, "") if name in owners]


@dataclass
class Session:
    """A trained model ready to evaluate, with where its results are cached."""

    cfg: RunConfig
    key: str
    evaluator: Evaluator
    counts: dict
    train_metrics: dict
    trained_now: bool
    cell_dir: Path
    timings: dict = field(default_factory=dict)
    _training_reported: bool = False
    _computed: set = field(default_factory=set)  # cells this process computed (not read from the cache)

    def report_training(self) -> bool:
        """True for the first job of the session when it trained (later jobs reused the result)."""
        first, self._training_reported = not self._training_reported, True
        return first and self.trained_now

    def predictions(
        self, ablate: AblateConfig | None, group: Sequence[tuple[int, int]] = ()
    ) -> tuple[np.ndarray, bool]:
        """Predictions for the intact model (None) or an ablation; True when this process computed them.

        Cached on disk under a lock per (training key, evaluation): a cell that another process is
        computing is waited for, then read. `group` lists the cells of this job's sweep group (jobs that
        differ only in first/last); the job that computes its cell computes the group's missing cells too,
        in the order that shares work, so one heatmap's cells cost one process the floor, whichever
        launcher spreads its jobs.
        """
        positions = "both" if ablate is None else ablate.positions
        first = None if ablate is None else ablate.first
        own = None if first is None else (first, ablate.last)
        path = self._path(own, positions)
        if not path.exists():
            with lock(self.cell_dir / "cells"):
                remove_stale(self.cell_dir, ".*.tmp.npy")  # a write killed before its rename
                # the intact pass first (every cell starts from its hidden states), then the group's cells
                cells = dict.fromkeys([None, *(group if own else ()), own])
                todo = [c for c in cells if not self._path(c, positions).exists()]
                bar = tqdm(total=len(todo), desc="eval cells", disable=len(todo) < 2, dynamic_ncols=True)
                for cell, preds in self.evaluator.predict(todo, positions):
                    save_array(self._path(cell, positions), preds.astype(np.int16))
                    self._computed.add((cell, positions))
                    bar.update()
                bar.close()
        return read_predictions(path, len(self.evaluator.labels)), (own, positions) in self._computed

    def _path(self, cell: tuple[int, int] | None, positions: str) -> Path:
        name = "intact" if cell is None else f"cell-{cell[0]}-{cell[1]}-{positions}"
        return self.cell_dir / f"{name}.npy"


def read_predictions(path: Path, n: int) -> np.ndarray:
    """A cached cell's predictions; CacheError naming the file if it is unreadable or of another size."""
    try:
        preds = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CacheError(f"{path}: unreadable cell cache ({err}); delete the file to recompute it") from None
    if preds.shape != (n,) or preds.dtype.kind not in "iu":
        raise CacheError(
            f"{path}: holds {preds.dtype} {preds.shape}, expected {n} integer predictions; delete the file "
            "to recompute it"
        )
    return preds


_CURRENT: Session | None = None
_RESOLVED: dict[tuple, str] = {}  # (field, requested, device, cache) -> precision, once per process
_LOGGED: set[str] = set()  # the fields whose precision this process has logged


def resolve(cfg: RunConfig) -> RunConfig:
    """The config with `device` and the precisions resolved for this machine, before any key is formed.

    Logged once per process; the row records the resolved values, and they enter the training key and the
    evaluation cache key, so cells computed in one precision are never read as the other.
    """
    device = resolve_device(cfg.device)
    if device == "cuda":  # fp32 matmuls on TF32 tensor cores (device keys are apart from CPU keys anyway)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    chosen = {}
    for name in ("train", "eval"):
        requested = getattr(cfg, name).precision
        memo = (name, requested, device, cfg.paths.cache)
        if memo not in _RESOLVED:
            _RESOLVED[memo], why = resolve_precision(requested, device, cfg.paths.cache)
            if name not in _LOGGED:  # resolving a resolved config again says nothing new
                print(f"[precision] {name}: {_RESOLVED[memo]} on {device} ({why})", flush=True)
                _LOGGED.add(name)
        chosen[name] = _RESOLVED[memo]
    return dataclasses.replace(
        cfg,
        device=device,
        train=dataclasses.replace(cfg.train, precision=chosen["train"]),
        eval=dataclasses.replace(cfg.eval, precision=chosen["eval"]),
    )


def _session_id(cfg: RunConfig) -> str:
    spec = {
        "key": training_key(cfg),
        "eval": asdict(cfg.eval),
        "device": cfg.device,
        "paths": asdict(cfg.paths),
    }
    return json.dumps(spec, sort_keys=True)


def memory_budget(memory_gb: float | None, device: str) -> float:
    """Bytes the evaluator may hold in hidden states: eval.memory_gb, or a share of the device's memory
    (a quarter of the host's RAM on the CPU; 40% of what is free on the GPU, beside the model)."""
    if memory_gb is not None:
        return memory_gb * 2**30
    if device == "cuda":
        return 0.4 * torch.cuda.mem_get_info()[0]
    return 0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def eval_spec(cfg: RunConfig) -> dict:
    """What evaluation results depend on besides the data and the trained parameters: batch size and
    precision, and the device when it is not the CPU (so caches made before devices existed stay valid).
    The memory budget is not in it: sharded and unsharded evaluation give the same predictions."""
    spec = asdict(cfg.eval)
    spec.pop("memory_gb")
    if cfg.device != "cpu":
        spec["device"] = cfg.device
    return spec


def open_session(cfg: RunConfig) -> Session:
    """The current process's session for this config (its `cfg` resolved for this machine), built (and
    trained, once) if needed."""
    global _CURRENT
    cfg = resolve(cfg)
    if _CURRENT is not None and _session_id(_CURRENT.cfg) == _session_id(cfg):
        return _CURRENT
    _CURRENT = None  # release the previous evaluator's cached states before building another
    _CURRENT = build_session(cfg)
    return _CURRENT


def build_session(cfg: RunConfig) -> Session:
    """Reset the shared model, add what the method trains, train or reuse it, and set up evaluation."""
    tic = time.perf_counter()
    cfg = resolve(cfg)  # a no-op for a resolved config
    base = open_base(cfg.model, cfg.task.num_labels, cfg.paths.cache)
    model = base.fresh_model(cfg.seed)
    adapter = asdict(cfg.adapter) if cfg.method.name == "adapters" else None
    counts = prepare(model, cfg.model.family, cfg.method.name, cfg.method.k, adapter)
    model.to(cfg.device)  # the shared model stays there; a no-op on the CPU
    kinds = ", ".join(
        f"{kind} {n:,}" for kind, n in counts.items() if kind not in ("total", "trainable") and n
    )
    print(
        f"[params] {cfg.method.name}: trainable {counts['trainable']:,} of {counts['total']:,} "
        f"({100 * counts['trainable'] / counts['total']:.2f}%): {kinds}",
        flush=True,
    )
    key = training_key(cfg)
    folder = store_path(cfg.paths.store, key)
    load_seconds = time.perf_counter() - tic

    def fit() -> dict:
        train_data = base.task_split(cfg.task, "train", cfg.paths.cache, cfg.model.max_length)
        print(f"[train] training {key} ({len(train_data.labels)} examples)", flush=True)
        checkpoint = folder.with_name(folder.name + ".partial.pt")
        metrics = train(model, train_data, cfg.train, cfg.seed, checkpoint, cfg.device)
        metrics["counts"] = counts
        save_trained(model, folder, OmegaConf.to_container(OmegaConf.structured(cfg)), metrics)
        checkpoint.unlink(missing_ok=True)
        print(f"[train] stored in {folder} ({metrics['train_seconds']:.0f} s)", flush=True)
        return metrics

    def load() -> dict:
        metrics = load_trained(model, folder)
        print(f"[train] reusing {folder} (trained in {metrics['train_seconds']:.0f} s)", flush=True)
        return metrics

    metrics, trained_now = train_once(folder, fit, load)
    model.eval()
    val = base.task_split(cfg.task, "validation", cfg.paths.cache, cfg.model.max_length)
    stages = Stages(model, cfg.model.family)
    budget = memory_budget(cfg.eval.memory_gb, cfg.device)
    evaluator = Evaluator(stages, val, cfg.eval.batch_size, cfg.eval.precision, cfg.device, budget)
    if evaluator.sharded:
        print(f"[eval] states of {len(val.labels)} examples exceed eval.memory_gb={budget / 2**30:.2f}: "
              f"{len(evaluator.shards)} shards", flush=True)  # fmt: skip
    spec = json.dumps({"data": val.fingerprint(), **eval_spec(cfg)}, sort_keys=True)
    cell_dir = folder / "eval" / hashlib.sha256(spec.encode()).hexdigest()[:12]
    cell_dir.mkdir(parents=True, exist_ok=True)
    with lock(cell_dir / "cells"):
        save_array(cell_dir / "labels.npy", val.labels.astype(np.int16))
    return Session(
        cfg=cfg,
        key=key,
        evaluator=evaluator,
        counts=counts,
        train_metrics=metrics,
        trained_now=trained_now,
        cell_dir=cell_dir,
        timings={"load_seconds": load_seconds, "setup_seconds": time.perf_counter() - tic},
    )
