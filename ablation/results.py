"""The result row (one schema for writer and reader), result.json + predictions per job, results.csv.

A row is its labels (study, preset), the run's configuration columns (declared with the config fields,
`ablation.keys`) and what the job measured (`Outcome`). Imports no torch: `analysis` reads tables with this
schema on machines without it.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import platform
import subprocess
import typing
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablation.atomic import clean, lock, replacing, write_text
from ablation.keys import CELL_COLUMNS, CONFIG_COLUMNS, TRAINING_COLUMNS

RESULTS_CSV = "results.csv"
RESULT_JSON = "result.json"
# a sweep's jobs that returned no row: their error, and the SLURM task where there was one
FAILED_JOBS = "failed_jobs.json"
PREDICTIONS = "predictions.npz"
# Per adapter slot, what its contribution does in the intact model (ablation.evaluate.Evaluator.diagnostics);
# the jobs of one training and evaluation write the same file.
DIAGNOSTICS = "diagnostics.csv"
# Each training's history (ablation.train.HISTORY: step, loss, grad_norm, lr), copied from the store into
# <sweep or run dir>/histories/<train_key>.csv by the first job that uses it, so the sweep folder alone holds it.
HISTORIES = "histories"
# The validation examples a sweep scored, once per task and split: <sweep or run dir>/examples/<name>.csv
# (id, text fields, label[, label_name]) in the order of every job's predictions; a row names its file in
# the `examples` column, and the name is a hash of the file's ids and labels, so a join can be checked.
EXAMPLES = "examples"
DIAGNOSTIC_COLUMNS = (
    "layer",
    "position",
    "contribution_ratio",
    "cosine_distance",
    "mean_contribution_ratio",
    "down_norm",
    "up_norm",
    "tokens",
)


@dataclasses.dataclass
class Outcome:
    """What one job measured, and how: scores, training, costs, provenance. Accuracies are fractions."""

    accuracy: float
    intact_accuracy: float
    relative_decrease: float  # 1 - accuracy / intact_accuracy (the paper's Figure 6 quantity)
    metric: float  # the task's official metric (metric_name)
    intact_metric: float
    majority_rate: float  # share of the validation set's most frequent label
    n_eval: int
    examples: str  # the examples file of the evaluated split: <sweep dir>/examples/<examples>.csv
    diverged: bool  # training stopped at a non-finite loss or gradient
    diverged_step: int | None  # the step (0-based) whose loss or gradient was non-finite
    train_steps: int  # optimizer steps taken
    planned_steps: int  # steps the training config asked for (more than train_steps if it diverged)
    final_loss: float | None  # mean training loss of the last 50 steps
    # from the training's history (ablation.train.stability): the loss of predicting the label frequencies,
    # the step its 20-step mean loss first fell 10% below that (None: never), the loss's s.d. over the last 50
    # steps, the largest gradient norm before clipping
    plateau_loss: float | None
    escape_step: int | None
    loss_spread: float | None
    largest_grad_norm: float | None
    trained_params: int  # exact number of parameters the method trains
    total_params: int
    train_key: str
    trained_now: bool
    cell_computed: bool
    train_seconds: float  # spent training in this job (0 when the training was stored already)
    # the training's own duration, whichever job trained it (its stored metrics): what a training costs
    fit_seconds: float | None
    eval_seconds: float
    job_seconds: float
    job_dir: str
    code_version: str


def _outcome_types() -> dict[str, str]:
    names = {str: "text", int: "int", float: "float", bool: "bool"}
    kinds = {}
    for name, hint in typing.get_type_hints(Outcome).items():
        base = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
        kinds[name] = names[base[0]]
    return kinds


# The Hydra choices a row records: the study file and the preset that made its job (labels; the values they
# set are in the configuration columns and the keys).
LABELS = ("study", "preset")
# Every column and its kind ('text', 'int', 'float', 'bool'; None allowed everywhere), in row order.
COLUMN_TYPES: dict[str, str] = {**dict.fromkeys(LABELS, "text"), **CONFIG_COLUMNS, **_outcome_types()}
COLUMNS = tuple(COLUMN_TYPES)
# results.csv lists rows in this order: labels, then what was trained, then the cell.
SORT_COLUMNS = (*LABELS, *TRAINING_COLUMNS, *CELL_COLUMNS)


def column_types() -> dict[str, str]:
    """Each column's kind for readers: 'text', 'int', 'float' or 'bool'."""
    return dict(COLUMN_TYPES)


def make_row(choices: Mapping[str, Any], config: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """One row: the labels from Hydra's choices (study, preset), the configuration columns
    (ablation.keys.config_columns) and the outcome."""
    row = {**{k: choices.get(k) for k in LABELS}, **config, **dataclasses.asdict(outcome)}
    if tuple(row) != COLUMNS:
        raise ValueError(f"row columns {sorted(set(row) ^ set(COLUMNS))} differ from the schema")
    return row


def _text_dtype() -> pd.StringDtype | str:
    try:
        return pd.StringDtype(na_value=np.nan)  # pandas >= 2.3: the `str` dtype of pandas 3
    except TypeError:
        return "object"


TEXT_DTYPE = _text_dtype()
DTYPES = {"text": TEXT_DTYPE, "int": "Int64", "float": "float64", "bool": "boolean"}


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with every schema column present (missing values where a table lacks one) and of its kind's
    dtype: text as pandas' string dtype, ints as nullable Int64, floats as float64, bools as nullable
    boolean; other columns follow unchanged. ValueError naming a column whose values do not fit."""
    out = df.copy()
    for col, kind in COLUMN_TYPES.items():
        values = out[col] if col in out.columns else pd.Series(None, index=out.index, dtype=object)
        out[col] = _as_kind(values, kind, col)
    return out[[*COLUMNS, *(c for c in out.columns if c not in COLUMN_TYPES)]]


def _as_kind(values: pd.Series, kind: str, name: str) -> pd.Series:
    try:
        if kind == "text":
            if TEXT_DTYPE != "object":
                return values.astype(TEXT_DTYPE)
            return values.map(lambda v: v if pd.isna(v) else str(v)).astype(
                object
            )  # astype(str) writes "nan"
        if kind == "bool":
            return values.map(_as_bool).astype("boolean")
        return pd.to_numeric(values).astype(DTYPES[kind])
    except (TypeError, ValueError) as err:
        raise ValueError(f"column {name!r}: expected {kind} values ({err})") from None


def _as_bool(value: object) -> object:
    # read_csv leaves a bool column with gaps as object (True/False/NaN); JSON gives real bools.
    if pd.isna(value):
        return pd.NA
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"not True/False: {value!r}")


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
        # what decides results: the code, the configs, the package metadata (not the README or docs)
        paths = ["ablation", "analysis", "conf", "hydra_plugins", "pyproject.toml"]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths], cwd=here.parent, capture_output=True, text=True
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


def write_job(
    job_dir: Path,
    row: dict,
    extra: dict,
    preds: dict[str, np.ndarray],
    texts: Mapping[str, str] | None = None,
) -> None:
    """Write result.json (the row's fields + nested extras), predictions.npz and any text files (by name,
    e.g. diagnostics.csv) into the job directory."""
    job_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (texts or {}).items():
        write_text(job_dir / name, text)
    with replacing(job_dir / PREDICTIONS) as tmp:
        np.savez_compressed(tmp, **{k: v.astype(np.int16) for k, v in preds.items()})
    # result.json last: a job folder with a result.json has everything.
    write_text(job_dir / RESULT_JSON, json.dumps({**row, **extra}, indent=2, sort_keys=True, default=str))


def examples_name(task: str, table: pd.DataFrame) -> str:
    """The examples file's name: the task and a hash of the ordered ids and labels (the join's check)."""
    digest = hashlib.sha256()
    for example_id, label in zip(table["id"], table["label"], strict=True):
        digest.update(f"{example_id}\t{int(label)}\n".encode())
    return f"{task}-{digest.hexdigest()[:12]}"


def record_examples(root: Path, task: str, table: pd.DataFrame) -> str:
    """Write root/examples/<name>.csv unless it is there (the first job of a sweep to score this split);
    returns the name."""
    name = examples_name(task, table)
    target = root / EXAMPLES / f"{name}.csv"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # every text quoted: a tweet's bare carriage return would otherwise end its row for a reader
        write_text(target, table.to_csv(index=False, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC))
    return name


def record_history(history: Path, root: Path, train_key: str) -> bool:
    """Copy a training's history file to root/histories/<train_key>.csv, unless it is there already; True
    if this call copied it (the first job of the sweep to use that training)."""
    target = root / HISTORIES / f"{train_key}.csv"
    if history.exists() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, history.read_text())
        return True
    return False


def _csv_lines(rows: pd.DataFrame, header: bool) -> str:
    return typed(rows).to_csv(index=False, header=header, lineterminator="\n")


def record_row(table: Path, row: dict) -> None:
    """Put the job's row into the table (results.csv): appended, or replacing the row of the same job_dir
    (a job run again). Under the table's lock, so jobs finishing at once in parallel workers keep every row;
    the other rows' lines are kept as they are."""
    with lock(table):
        clean(table)
        line = _csv_lines(pd.DataFrame([row], columns=list(COLUMNS)), header=False)
        lines = table.read_text().splitlines(keepends=True) if table.exists() else []
        if not lines or lines[0].rstrip("\n").split(",") != list(COLUMNS):
            lines = [",".join(COLUMNS) + "\n"]  # a new table, or one of another schema: started anew
        at = COLUMNS.index("job_dir")
        kept = [ln for ln in lines[1:] if ln.endswith("\n") and _field(ln, at) != str(row["job_dir"])]
        with replacing(table) as tmp:
            tmp.write_text("".join([lines[0], *kept, line]))


def _field(line: str, index: int) -> str | None:
    fields = next(csv.reader(io.StringIO(line)), [])
    return fields[index] if index < len(fields) else None


def _record(path: Path, sweep_dir: Path) -> dict:
    """One job's result.json; ValueError naming the file when it is not one."""
    fix = f"delete it and run the sweep's command again with hydra.sweep.dir={sweep_dir} to recompute it"
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a result file ({err}); {fix}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a result file (a JSON {type(record).__name__}, not an object); {fix}")
    return record


def rebuild_table(sweep_dir: Path) -> Path:
    """Rebuild results.csv from every job's result.json under sweep_dir, in SORT_COLUMNS order.

    Once at the end of a sweep (ablation.callbacks) and on demand: whichever process or node wrote a job's
    result, the table then holds exactly one row per job folder with a result.json.
    """
    out = sweep_dir / RESULTS_CSV
    with lock(out):
        clean(out)
        rows = [
            _record(p, sweep_dir)
            for p in sorted([*sweep_dir.glob(RESULT_JSON), *sweep_dir.glob(f"*/{RESULT_JSON}")])
        ]
        df = typed(pd.DataFrame([{k: r.get(k) for k in COLUMNS} for r in rows], columns=list(COLUMNS)))
        df = df.sort_values(list(SORT_COLUMNS), na_position="first", kind="stable")
        with replacing(out) as tmp:
            tmp.write_text(_csv_lines(df, header=True))
    return out
