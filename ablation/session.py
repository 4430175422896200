"""Everything a job needs, built once per process and shared by every job of a sweep.

A session holds the model with its trained adapters, the tokenized validation set and the
evaluator with its cached hidden states. Jobs that differ only in the ablation reuse it; cell
predictions are also kept on disk beside the trained adapters, so a re-run computes nothing new.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ablation.adapters import count_parameters, freeze_for_adapters, inject_adapters
from ablation.config import AblateConfig, RunConfig
from ablation.data import encode, load_task
from ablation.evaluate import Evaluator
from ablation.models import Stages, load_model
from ablation.train import load_trained, save_trained, set_seed, store_path, train, training_key


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

    def report_training(self) -> bool:
        """True for the first job of the session when it trained (later jobs reused the result)."""
        first, self._training_reported = not self._training_reported, True
        return first and self.trained_now

    def predictions(self, ablate: AblateConfig | None) -> tuple[np.ndarray, bool]:
        """Predictions for the intact model (None) or an ablation; True when computed now."""
        if ablate is None or ablate.first is None:
            name, compute = "intact", self.evaluator.intact
        else:
            name = f"cell-{ablate.first}-{ablate.last}-{ablate.positions}"

            def compute() -> np.ndarray:
                return self.evaluator.cell(ablate.first, ablate.last, ablate.positions)

        path = self.cell_dir / f"{name}.npy"
        if path.exists():
            return np.load(path), False
        preds = compute()
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, preds.astype(np.int16))
        os.replace(tmp, path)
        return preds, True


_CURRENT: Session | None = None


def _session_id(cfg: RunConfig) -> str:
    spec = {"key": training_key(cfg), "eval": asdict(cfg.eval), "paths": asdict(cfg.paths)}
    return json.dumps(spec, sort_keys=True)


def open_session(cfg: RunConfig) -> Session:
    """The current process's session for this config, built (and trained, once) if needed."""
    global _CURRENT
    if _CURRENT is not None and _session_id(_CURRENT.cfg) == _session_id(cfg):
        return _CURRENT
    _CURRENT = None  # release the previous model before building another
    _CURRENT = build_session(cfg)
    return _CURRENT


def build_session(cfg: RunConfig) -> Session:
    """Load data and model, inject adapters, train or reuse them, and set up evaluation."""
    tic = time.perf_counter()
    set_seed(cfg.seed)
    data = load_task(cfg.task, cfg.paths.cache)
    model, tokenizer = load_model(cfg.model, cfg.task.num_labels, cfg.paths.cache)
    inject_adapters(model, cfg.model.family, cfg.adapter.size, cfg.adapter.init_std,
                    cfg.adapter.activation, cfg.adapter.positions)  # fmt: skip
    freeze_for_adapters(model)
    counts = count_parameters(model)
    print(
        f"[params] trainable {counts['trainable']:,} of {counts['total']:,} "
        f"({100 * counts['trainable'] / counts['total']:.2f}%): adapters {counts['adapters']:,}, "
        f"layernorm {counts['layernorm']:,}, head {counts['head']:,}",
        flush=True,
    )
    key = training_key(cfg)
    folder = store_path(cfg.paths.store, key)
    load_seconds = time.perf_counter() - tic
    trained_now = not (folder / "trained.safetensors").exists()
    if trained_now:
        print(f"[train] training {key} ({len(data['train'])} examples)", flush=True)
        train_data = encode(data["train"], tokenizer, cfg.task.text_fields, cfg.model.max_length)
        checkpoint = folder.with_name(folder.name + ".partial.pt")
        folder.parent.mkdir(parents=True, exist_ok=True)
        metrics = train(model, train_data, cfg.train, cfg.seed, checkpoint)
        metrics["counts"] = counts
        save_trained(model, folder, OmegaConf.to_container(OmegaConf.structured(cfg)), metrics)
        checkpoint.unlink(missing_ok=True)
        print(f"[train] stored in {folder} ({metrics['train_seconds']:.0f} s)", flush=True)
    else:
        metrics = load_trained(model, folder)
        print(f"[train] reusing {folder} (trained in {metrics['train_seconds']:.0f} s)", flush=True)
    model.eval()
    val = encode(data["validation"], tokenizer, cfg.task.text_fields, cfg.model.max_length)
    evaluator = Evaluator(Stages(model, cfg.model.family), val, cfg.eval.batch_size, cfg.eval.precision)
    eval_spec = json.dumps({"data": val.fingerprint(), **asdict(cfg.eval)}, sort_keys=True)
    cell_dir = folder / "eval" / hashlib.sha256(eval_spec.encode()).hexdigest()[:12]
    cell_dir.mkdir(parents=True, exist_ok=True)
    np.save(cell_dir / "labels.npy", val.labels.astype(np.int16))
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
