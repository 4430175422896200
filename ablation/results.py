"""One result row per job (JSON + predictions) and the sweep-level results.csv."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

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


def write_job(job_dir: Path, row: dict, extra: dict, preds: dict[str, np.ndarray]) -> None:
    """Write result.json (flat row + nested extras) and predictions.npz into the job directory."""
    job_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(job_dir / "predictions.npz", **{k: v.astype(np.int16) for k, v in preds.items()})
    tmp = job_dir / "result.json.tmp"
    tmp.write_text(json.dumps({**row, **extra}, indent=2, sort_keys=True, default=str))
    os.replace(tmp, job_dir / "result.json")


def update_table(sweep_dir: Path) -> Path:
    """Rebuild results.csv from every job's result.json under sweep_dir (scalar fields only)."""
    rows = []
    for path in sorted([*sweep_dir.glob("result.json"), *sweep_dir.glob("*/result.json")]):
        record = json.loads(path.read_text())
        rows.append({k: v for k, v in record.items() if not isinstance(v, (dict, list))})
    df = pd.DataFrame(rows)
    if "first" in df and "last" in df:
        df = df.sort_values(["task", "model", "seed", "first", "last"], na_position="first")
    out = sweep_dir / "results.csv"
    df.to_csv(out.with_suffix(".csv.tmp"), index=False)
    os.replace(out.with_suffix(".csv.tmp"), out)
    return out
