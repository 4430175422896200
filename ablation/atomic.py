"""Cache writes that a kill cannot half-finish: a lock per cached item, temporary names, then a rename.

A writer holds the item's lock while it writes, so a temporary file found under the lock belongs to a
writer that died (SIGKILL, power loss): it is removed before the item is written again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from filelock import FileLock


def lock(path: Path) -> FileLock:
    """The inter-process lock of a cached item (`.<name>.lock` beside it; the file stays, empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(f".{path.name}.lock"))


def remove_stale(folder: Path, pattern: str) -> list[Path]:
    """Delete leftovers of killed writers matching `pattern` in folder; call with the item's lock held."""
    stale = sorted(folder.glob(pattern)) if folder.is_dir() else []
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary name, then rename: a reader sees the whole file or none."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write a text file under a temporary name, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
