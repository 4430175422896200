"""Turn a sweep directory (results.csv, or per-job result.json files) into one tidy DataFrame."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS_CSV = "results.csv"
RESULT_JSON = "result.json"
PREDICTIONS = "predictions.npz"
PREDICTION_KEYS = ("labels", "intact", "ablated")

# job_dir looks numeric ("0", "17") but is a path: read it as text so "007" or "a/3" survive.
TEXT_COLUMNS = ("task", "model", "positions", "metric_name", "train_key", "job_dir")
INT_COLUMNS = ("seed", "first", "last", "n_eval")
FLOAT_COLUMNS = ("accuracy", "intact_accuracy", "relative_decrease", "metric", "intact_metric")
TABLE_COLUMNS = (*TEXT_COLUMNS, *INT_COLUMNS, *FLOAT_COLUMNS)

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
    return _tidy(pd.DataFrame(rows))


def _read_csv(file: Path) -> pd.DataFrame:
    return _tidy(pd.read_csv(file, dtype={c: str for c in TEXT_COLUMNS}))


def _json_row(file: Path, sweep_dir: Path) -> dict:
    with open(file) as fh:
        record = json.load(fh)
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
        promote = leaf in TABLE_COLUMNS and leaf not in dotted and leaves.count(leaf) == 1
        row[leaf if promote else key] = dotted[key]
    return row


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    for col in INT_COLUMNS:
        if col in df.columns and df[col].notna().all():
            df[col] = df[col].astype(int)
    for col in TEXT_COLUMNS:
        if col in df.columns:
            df[col] = df[col].astype(str)
    if "relative_decrease" not in df.columns and {"accuracy", "intact_accuracy"} <= set(df.columns):
        df["relative_decrease"] = 1.0 - df["accuracy"] / df["intact_accuracy"]
    return df
