"""Turn a sweep directory (results.csv, or per-job result.json files) into one tidy DataFrame.

Every table this module returns has all columns of the result schema (`ablation.results.COLUMNS`, in that
order, then any extra columns), whatever the age of the sweep, with one dtype per column kind:

- text: pandas' string dtype `str` (missing values stay missing as NaN, never the string "nan");
  object dtype holding str or NaN on pandas older than 2.3;
- int: nullable `Int64` (missing as <NA>) for every int column, so a column's dtype does not depend on
  whether one of its rows happens to be missing (`first`/`last` of intact rows, `k` of adapter rows);
- float: `float64` (missing as NaN);
- bool: nullable `boolean` (missing as <NA>, e.g. `diverged` in a table older than that column).

Schema columns an older table lacks are added with every value missing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablation.results import (
    COLUMN_TYPES,
    COLUMNS,
    DIAGNOSTIC_COLUMNS,
    DIAGNOSTICS,
    EXAMPLES,
    FAILED_JOBS,
    HISTORIES,
    PREDICTIONS,
    RESULT_JSON,
    RESULTS_CSV,
    TEXT_DTYPE,
    typed,
)

PREDICTION_KEYS = ("labels", "intact", "ablated")
# job_dir looks numeric ("0", "17") but is a path: text columns are read as text so "007" or "a/3" survive.
TEXT_COLUMNS = tuple(c for c in COLUMNS if COLUMN_TYPES[c] == "text")
__all__ = [
    "TEXT_DTYPE",
    "cached_predictions",
    "conform",
    "correctness",
    "has_diagnostics",
    "has_examples",
    "load_diagnostics",
    "load_predictions",
    "load_results",
    "load_runs",
]

PathLike = str | Path


def load_results(path: PathLike | Sequence[PathLike]) -> pd.DataFrame:
    """Load the result table of a sweep dir, a results CSV file, or several sweep dirs (adds `sweep`)."""
    if isinstance(path, (str, Path)):
        return _load_one(Path(path))
    paths = [Path(p) for p in path]
    if not paths:
        raise ValueError("load_results: got an empty list of sweep directories")
    frames = [_load_one(p).assign(sweep=str(p)) for p in paths]
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class Runs:
    """Rows from several run and sweep directories, the jobs that left no row, and where each came from."""

    table: pd.DataFrame  # every schema column, plus `sweep`: the directory its job_dir is relative to
    failed: pd.DataFrame  # FAILED_COLUMNS: jobs without a result (failed, cancelled or interrupted)
    sources: tuple[Path, ...]


def load_runs(paths: Sequence[PathLike]) -> Runs:
    """Load any number of run and sweep directories (or results.csv files) into one table.

    Every row keeps its directory in `sweep`, so its per-example predictions can be found. A job folder
    that Hydra created (it has `.hydra/`) but that holds no result.json is listed in `failed`: the job
    raised or was interrupted. Diverged rows stay in the table with `diverged` set.
    """
    sources = tuple(Path(p) for p in paths)
    if not sources:
        raise ValueError("load_runs: no run or sweep directory given")
    frames, failed = [], []
    for path in sources:
        base = path if path.is_dir() else path.parent
        frames.append(_load_one(path).assign(sweep=str(base)))
        listed = _listed_failures(base) if path.is_dir() else {}
        for job in sorted(p for p in base.iterdir() if p.is_dir()) if path.is_dir() else []:
            if (job / ".hydra").is_dir() and not (job / RESULT_JSON).is_file() and job.name not in listed:
                failed.append({"sweep": str(base), "job_dir": job.name, "reason": _failure(job)})
        failed += listed.values()
    table = pd.concat(frames, ignore_index=True)
    return Runs(table, pd.DataFrame(failed, columns=FAILED_COLUMNS).fillna(""), sources)


FAILED_COLUMNS = ["sweep", "job_dir", "reason", "slurm_job_id", "state", "log"]


def _listed_failures(sweep: Path) -> dict[str, dict]:
    """The jobs the sweeper recorded as failed (failed_jobs.json), by job folder name: a job a launcher gave
    up on may have no folder at all (a SLURM task cancelled before it started)."""
    listed = sweep / FAILED_JOBS
    if not listed.is_file():
        return {}
    out = {}
    for f in json.loads(listed.read_text()):
        out[str(f["job_num"])] = {
            "sweep": str(sweep),
            "job_dir": str(f["job_num"]),
            "reason": f["error"],
            "slurm_job_id": f.get("slurm_job_id", ""),
            "state": f.get("state", ""),
            "log": f.get("stderr", ""),
        }
    return out


def _failure(job: Path) -> str:
    """The last error line of the job's log, or why none can be given."""
    for log in sorted(job.glob("*.log")):
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "Error" in ln]
        if lines:
            return lines[-1].strip()[:200]
    return "no result.json (the job failed or was interrupted)"


def correctness(rows: pd.DataFrame, which: str = "ablated") -> np.ndarray:
    """(rows x examples) 0/1 matrix: which validation examples each row's `which` predictions got right.

    `which` is "ablated" (the row's own model: the ablated one for a cell, the intact one otherwise) or
    "intact". Needs the `sweep` column of `load_runs`.
    """
    if which not in ("ablated", "intact"):
        raise ValueError(f"correctness: which must be 'ablated' or 'intact', got {which!r}")
    if "sweep" not in rows.columns:
        raise KeyError("correctness: rows need a `sweep` column (load them with load_runs)")
    out = []
    for sweep, job in zip(rows["sweep"], rows["job_dir"], strict=True):
        pred = cached_predictions(sweep, job)
        out.append(pred[which] == pred["labels"])
    lengths = {len(c) for c in out}
    if len(lengths) > 1:
        raise ValueError(
            f"correctness: rows were scored on validation sets of different sizes {sorted(lengths)}"
        )
    return np.array(out, dtype=np.float32)


def cached_predictions(sweep_dir: PathLike, job_dir: PathLike) -> dict[str, np.ndarray]:
    """`load_predictions`, read once per process while the file is unchanged (the arrays are shared: do not
    modify them)."""
    file = Path(str(sweep_dir)) / str(job_dir) / PREDICTIONS
    # Keyed by modification time too: a job re-run in place must not be read from the cache.
    return _cached_predictions(str(sweep_dir), str(job_dir), file.stat().st_mtime_ns if file.exists() else 0)


@functools.lru_cache(maxsize=4096)
def _cached_predictions(sweep: str, job: str, mtime_ns: int) -> dict[str, np.ndarray]:
    return load_predictions(sweep, job)


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with every schema column present and typed as the module docstring says."""
    return typed(df)


def load_predictions(sweep_dir: PathLike, job_dir: PathLike) -> dict[str, np.ndarray]:
    """Read `<sweep_dir>/<job_dir>/predictions.npz` as {"labels", "intact", "ablated"} int arrays."""
    file = Path(sweep_dir) / str(job_dir) / PREDICTIONS
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (expected the job's per-example predictions)")
    with np.load(file) as npz:
        missing = [k for k in PREDICTION_KEYS if k not in npz.files]
        if missing:
            raise KeyError(f"{file}: missing arrays {missing} (has {sorted(npz.files)})")
        arrays = {k: np.asarray(npz[k]) for k in PREDICTION_KEYS}
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{file}: arrays differ in length {lengths}")
    return arrays


def has_history(rows: pd.DataFrame) -> pd.Series:
    """Per row (a boolean Series on its index): is its training's history in its sweep folder
    (<sweep>/histories/<train_key>.csv)? Needs the `sweep` column of `load_runs`; all False without it."""
    if "sweep" not in rows.columns:
        return pd.Series(False, index=rows.index, dtype=bool)
    found = [
        (Path(str(sweep)) / HISTORIES / f"{key}.csv").is_file()
        for sweep, key in zip(rows["sweep"], rows["train_key"], strict=True)
    ]
    return pd.Series(found, index=rows.index, dtype=bool)


def load_histories(rows: pd.DataFrame, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """The training histories behind `rows` (needs `sweep`): <sweep>/histories/<train_key>.csv, one per
    training key, with the row's task, model, seed, train_key, plateau_loss and `columns` in front of the
    history's step, loss, grad_norm and lr. Empty (with those columns) where no history file exists."""
    ids = ["task", "model", "seed", "train_key", "plateau_loss", *columns]
    out = ids + ["step", "loss", "grad_norm", "lr"]
    if "sweep" not in rows.columns or rows.empty:
        return pd.DataFrame(columns=out)
    frames = []
    for _, row in rows.drop_duplicates(["sweep", "train_key"]).iterrows():
        file = Path(str(row["sweep"])) / HISTORIES / f"{row['train_key']}.csv"
        if file.is_file():
            frames.append(pd.read_csv(file).assign(**{c: row[c] for c in ids}))
    return pd.concat(frames, ignore_index=True)[out] if frames else pd.DataFrame(columns=out)


def has_examples(rows: pd.DataFrame) -> pd.Series:
    """Per row (a boolean Series on its index): is the examples file it names in its sweep folder
    (<sweep>/examples/<examples>.csv)? Needs the `sweep` column of `load_runs`; all False without it."""
    if "sweep" not in rows.columns:
        return pd.Series(False, index=rows.index, dtype=bool)
    found = [
        isinstance(name, str) and (Path(str(sweep)) / EXAMPLES / f"{name}.csv").is_file()
        for sweep, name in zip(rows["sweep"], rows["examples"], strict=True)
    ]
    return pd.Series(found, index=rows.index, dtype=bool)


def has_diagnostics(rows: pd.DataFrame) -> pd.Series:
    """Per row (a boolean Series on its index): does its job folder hold diagnostics.csv? Needs the `sweep`
    column of `load_runs`; all False without it."""
    if "sweep" not in rows.columns:
        return pd.Series(False, index=rows.index, dtype=bool)
    found = [
        (Path(str(sweep)) / str(job) / DIAGNOSTICS).is_file()
        for sweep, job in zip(rows["sweep"], rows["job_dir"], strict=True)
    ]
    return pd.Series(found, index=rows.index, dtype=bool)


def load_diagnostics(rows: pd.DataFrame) -> pd.DataFrame:
    """The diagnostics of the trainings behind `rows`: one diagnostics.csv per training key (the first row
    of each key whose job folder has one), with that row's task, model, seed and train_key in front.

    Columns: task, model, seed, train_key, then DIAGNOSTIC_COLUMNS (layer and tokens as int, position as text).
    Empty (with those columns) when no row's job has the file.
    """
    found = rows[has_diagnostics(rows).to_numpy(dtype=bool)]
    if found.empty:
        return pd.DataFrame(columns=["task", "model", "seed", "train_key", *DIAGNOSTIC_COLUMNS])
    key = (
        found["train_key"]
        .astype(object)
        .where(found["train_key"].notna(), found["sweep"].astype(str) + "/" + found["job_dir"].astype(str))
    )
    frames = []
    for _, row in found.assign(_key=key).drop_duplicates("_key").iterrows():
        file = Path(str(row["sweep"])) / str(row["job_dir"]) / DIAGNOSTICS
        table = pd.read_csv(file, dtype={"position": str})
        missing = [c for c in DIAGNOSTIC_COLUMNS if c not in table.columns]
        if missing:
            raise KeyError(f"{file}: missing columns {missing} (has {list(table.columns)})")
        ids = {"task": row["task"], "model": row["model"], "seed": row["seed"], "train_key": row["_key"]}
        frames.append(table[list(DIAGNOSTIC_COLUMNS)].assign(**ids))
    out = pd.concat(frames, ignore_index=True)
    out = out.astype({"layer": "int64", "tokens": "Int64"})
    return out[["task", "model", "seed", "train_key", *DIAGNOSTIC_COLUMNS]]


def _load_one(path: Path) -> pd.DataFrame:
    if path.is_file():
        return _read_csv(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not found (expected a sweep directory or a {RESULTS_CSV} file)")
    csv = path / RESULTS_CSV
    if csv.is_file():
        return _read_csv(csv)
    # A sweep that was interrupted before the table was written still has one JSON per finished job.
    rows = [_json_row(file, path) for file in sorted(path.glob(f"*/{RESULT_JSON}"))]
    if not rows:
        raise FileNotFoundError(
            f"{path}: neither {RESULTS_CSV} nor any */{RESULT_JSON} found in this sweep dir"
        )
    return _tidy(pd.DataFrame(rows), origin=path)


def _read_csv(file: Path) -> pd.DataFrame:
    return _tidy(pd.read_csv(file, dtype={c: str for c in TEXT_COLUMNS}), origin=file)


def _json_row(file: Path, sweep_dir: Path) -> dict:
    try:
        record = json.loads(file.read_text())
    except ValueError as err:  # an edited or foreign file: writes are atomic
        raise ValueError(f"{file}: malformed JSON ({err}); re-run that job or delete its folder") from None
    if not isinstance(record, dict):
        raise ValueError(f"{file}: expected one JSON object per job, got {type(record).__name__}")
    row = _flatten(record)
    row.setdefault("job_dir", file.parent.relative_to(sweep_dir).as_posix())
    return row


def _flatten(record: dict) -> dict:
    """Flatten nested dicts to dotted names, giving a nested table column back its CSV name.

    results.csv holds the top-level scalars, so those keep their names. A nested field such as
    {"ablation": {"first": 0}} becomes "first" when that is a table column the record lacks and the
    leaf is unambiguous; anything else (versions, config) keeps its dotted path.
    """
    dotted = pd.json_normalize(record, sep=".").iloc[0].to_dict()
    leaves = [key.rsplit(".", 1)[-1] for key in dotted]
    row = {}
    for key, leaf in zip(dotted, leaves, strict=True):
        promote = leaf in COLUMN_TYPES and leaf not in dotted and leaves.count(leaf) == 1
        row[leaf if promote else key] = dotted[key]
    return row


def _tidy(df: pd.DataFrame, origin: Path) -> pd.DataFrame:
    try:
        return conform(df)
    except ValueError as err:
        raise ValueError(f"{origin}: {err}") from None
