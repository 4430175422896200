"""Experiment trackers (the `logger` config group): each job's config, training history and metrics, logged
where researchers already look (TensorBoard, MLflow, Weights & Biases). The sweep folder stays the record;
a tracker is a view of it. Each library is imported only when chosen (the `loggers` extra).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ablation.atomic import lock
from ablation.config import LoggerConfig

STEP_PREFIX = "train/"  # history entries: train/loss, train/grad_norm, train/lr, train/val_metric
RESULT_PREFIX = "result/"  # the row's numeric columns


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (`adapter.init_std`), as trackers store parameters."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric values of a mapping (booleans as 0/1), as floats."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


class Tracker:
    """No tracker (logger=none): every call does nothing. Subclasses log each kind of record."""

    def log_config(self, config: dict) -> None:
        """The job's resolved config (nested)."""

    def log_step(self, entry: dict) -> None:
        """One history entry (ablation.train.HISTORY_COLUMNS), as the training takes the step."""

    def log_history(self, history: pd.DataFrame) -> None:
        """A stored training's whole history, one entry per row."""
        for entry in history.to_dict("records"):
            self.log_step(entry)

    def log_metrics(self, metrics: dict) -> None:
        """The job's result row (its numeric columns are logged)."""

    def close(self, failed: bool = False) -> None:
        """Flush and end the run; `failed` marks a job that raised."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)


class TensorBoard(Tracker):
    """Event files in <save_dir>/tensorboard/<job>: scalars per step and the config as text."""

    def __init__(self, folder: Path, job: str, name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard" / job))
        self.name = name

    def log_config(self, config: dict) -> None:
        text = "\n".join(f"    {k}: {v}" for k, v in flatten(config).items())  # indented: a code block
        self.writer.add_text("config", f"    job: {self.name}\n{text}")

    def log_step(self, entry: dict) -> None:
        step = int(entry["step"])
        for key, value in numbers(entry).items():
            if key != "step":
                self.writer.add_scalar(STEP_PREFIX + key, value, step)

    def log_metrics(self, metrics: dict) -> None:
        for key, value in numbers(metrics).items():
            self.writer.add_scalar(RESULT_PREFIX + key, value, 0)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MLflow(Tracker):
    """One MLflow run per job in the experiment `project`: params = the config, metrics = history + row."""

    BATCH = 200  # history entries buffered before a write (MLflow takes at most 1000 metrics per call)

    def __init__(self, folder: Path, name: str, project: str, tracking_uri: str | None) -> None:
        from mlflow.tracking import MlflowClient

        folder.mkdir(parents=True, exist_ok=True)
        uri = tracking_uri or f"sqlite:///{(folder / 'mlflow.db').absolute()}"
        self.client = MlflowClient(tracking_uri=uri)
        with lock(folder / "mlflow-setup"):  # jobs starting at once would all create the store and experiment
            experiment = self.client.get_experiment_by_name(project)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        self.pending: list = []

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]  # MLflow's value limit
        for i in range(0, len(params), 100):  # its limit per call
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _metric(self, key: str, value: float, step: int):
        from mlflow.entities import Metric

        return Metric(key, value, int(pd.Timestamp.now().timestamp() * 1000), step)

    def log_step(self, entry: dict) -> None:
        step = int(entry["step"])
        self.pending += [
            self._metric(STEP_PREFIX + k, v, step) for k, v in numbers(entry).items() if k != "step"
        ]
        if len(self.pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
        self.pending = []

    def log_metrics(self, metrics: dict) -> None:
        self.pending += [self._metric(RESULT_PREFIX + k, v, 0) for k, v in numbers(metrics).items()]
        self._flush()

    def close(self, failed: bool = False) -> None:
        self._flush()
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class WandB(Tracker):
    """One W&B run per job in <save_dir>/wandb: config, history (step = training step) and summary."""

    def __init__(self, folder: Path, name: str, project: str, mode: str | None) -> None:
        import wandb

        mode = mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        folder.mkdir(parents=True, exist_ok=True)
        # create_new: several jobs run one after another in one process (the joblib and local launchers)
        self.run = wandb.init(
            project=project,
            name=name,
            dir=str(folder),
            mode=mode,
            reinit="create_new",
            settings={"silent": True},
        )

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_step(self, entry: dict) -> None:
        values = {STEP_PREFIX + k: v for k, v in numbers(entry).items() if k != "step"}
        self.run.log(values, step=int(entry["step"]))

    def log_metrics(self, metrics: dict) -> None:
        self.run.summary.update({RESULT_PREFIX + k: v for k, v in numbers(metrics).items()})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def open_tracker(cfg: LoggerConfig, folder: Path, job: str, name: str) -> Tracker:
    """The tracker `cfg` names, writing under cfg.save_dir or `folder`; `job`: a path-safe id of the job
    within the sweep (its subfolder), `name`: what the tracker shows (the job's overrides)."""
    root = Path(cfg.save_dir) if cfg.save_dir else folder
    if cfg.name == "tensorboard":
        return TensorBoard(root, job, name)
    if cfg.name == "mlflow":
        return MLflow(root, name, cfg.project, cfg.tracking_uri)
    if cfg.name == "wandb":
        return WandB(root, name, cfg.project, cfg.mode)
    return Tracker()
