"""The result row (one schema for writer and reader), result.json + predictions per job, results.csv.

Imports neither torch nor hydra: `analysis` reads tables with this schema on machines without them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import subprocess
import typing
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from ablation.atomic import lock, remove_stale, write_text


@dataclasses.dataclass
class ResultRow:
    """One job's result: what ran (study, model, task, method, adapter, seed, ablation), scores, costs.

    Adapter fields are None for methods without adapters; `k` is set for top_k only; first/last are None
    for the intact model. Accuracies are fractions in [0, 1].
    """

    study: str | None  # conf/study/<name>.yaml the job came from; None for a run outside a study
    task: str
    model: str
    method: str  # adapters | top_k | layernorm | full
    k: int | None  # top_k: how many of the top layers are trained
    variant: (
        str | None
    )  # adapter architecture relative to the plain Houlsby adapter ("plain", "norm=layernorm", ...)
    adapter_size: int | None
    init_std: float | None
    adapter_activation: str | None
    adapter_positions: str | None  # where adapters sit: "attention+output", "attention", "output"
    adapter_norm: str | None
    adapter_depth: int | None
    adapter_placement: str | None
    adapter_combine: str | None
    seed: int
    first: int | None  # first ablated layer (None: intact model)
    last: int | None
    positions: str  # which adapter positions the ablation removes
    accuracy: float
    intact_accuracy: float
    relative_decrease: float
    metric_name: str
    metric: float
    intact_metric: float
    majority_rate: float  # share of the validation set's most frequent label
    n_eval: int
    diverged: bool  # training stopped at a non-finite loss or gradient
    diverged_step: int | None  # the step (0-based) whose loss or gradient was non-finite
    train_steps: int  # optimizer steps taken
    planned_steps: int  # steps the training config asked for (more than train_steps if it diverged)
    final_loss: float | None  # mean training loss of the last 50 steps
    trained_params: int  # exact number of parameters the method trains
    total_params: int
    lr: float
    train_precision: str
    eval_precision: str
    device: str  # cpu or cuda: where the job trained and evaluated
    train_key: str
    trained_now: bool
    cell_computed: bool
    train_seconds: float
    eval_seconds: float
    job_seconds: float
    job_dir: str
    code_version: str


COLUMNS = tuple(f.name for f in dataclasses.fields(ResultRow))
# The columns that describe the adapter: None in rows of methods without adapters.
ADAPTER_COLUMNS = ("variant", "adapter_size", "init_std", "adapter_activation", "adapter_positions",
                   "adapter_norm", "adapter_depth", "adapter_placement", "adapter_combine")  # fmt: skip


def column_kinds() -> dict[str, str]:
    """Each column's kind for readers: 'text', 'int', 'float' or 'bool' (None allowed where the type says)."""
    kinds = {str: "text", int: "int", float: "float", bool: "bool"}
    hints = typing.get_type_hints(ResultRow)
    out = {}
    for name in COLUMNS:
        base = [t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None)]
        out[name] = kinds[base[0]]
    return out


PACKAGES = ("torch", "transformers", "datasets", "hydra-core", "pandas", "numpy", "scikit-learn")


@functools.cache
def versions() -> dict[str, str]:
    """Python, package versions and the code version (git commit, '+dirty' if uncommitted)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["code"] = code_version()
    return out


def code_version() -> str:
    """The git commit of this code, or 'unknown (not a git checkout)'."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=here.parent, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


def relative_decrease(accuracy: float, intact: float) -> float:
    """1 - accuracy / intact accuracy (the paper's Figure 6 quantity)."""
    return 1.0 - accuracy / intact if intact > 0 else float("nan")


def majority_rate(labels: np.ndarray) -> float:
    """Share of the most frequent label: the accuracy of always predicting the majority class."""
    return float(np.bincount(np.asarray(labels)).max() / len(labels)) if len(labels) else float("nan")


def write_job(job_dir: Path, row: ResultRow, extra: dict, preds: dict[str, np.ndarray]) -> None:
    """Write result.json (the row's fields + nested extras) and predictions.npz into the job directory."""
    job_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(job_dir, ".*.tmp*")  # left by an earlier try of this job that was killed mid-write
    tmp = job_dir / f".predictions.{os.getpid()}.tmp.npz"
    np.savez_compressed(tmp, **{k: v.astype(np.int16) for k, v in preds.items()})
    os.replace(tmp, job_dir / "predictions.npz")
    # result.json last: a job folder with a result.json has everything.
    text = json.dumps({**dataclasses.asdict(row), **extra}, indent=2, sort_keys=True, default=str)
    write_text(job_dir / "result.json", text)


def update_table(sweep_dir: Path) -> Path:
    """Rebuild results.csv from every job's result.json under sweep_dir (scalar fields only).

    Under a lock, so jobs finishing at once in parallel workers cannot overwrite each other's rows: the last
    writer reads every result.json written before it took the lock.
    """
    out = sweep_dir / "results.csv"
    with lock(out):
        remove_stale(sweep_dir, ".results.csv.*.tmp")
        df = _table(sweep_dir)
        tmp = sweep_dir / f".results.csv.{os.getpid()}.tmp"
        df.to_csv(tmp, index=False)
        os.replace(tmp, out)
    return out


def _table(sweep_dir: Path) -> pd.DataFrame:
    rows = []
    for path in sorted([*sweep_dir.glob("result.json"), *sweep_dir.glob("*/result.json")]):
        record = json.loads(path.read_text())
        rows.append({k: record.get(k) for k in COLUMNS})
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    order = [
        "study",
        "task",
        "model",
        "method",
        "k",
        "variant",
        "adapter_size",
        "init_std",
        "seed",
        "first",
        "last",
    ]
    return df.sort_values(order, na_position="first")
