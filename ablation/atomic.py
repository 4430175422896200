"""Cache writes that a kill cannot half-finish: a lock per cached item, temporary names, then a rename.

Every item is written under a temporary name beside it (`.<name>.<pid>.tmp<suffix>` for a file,
`.<name>.<random>.tmp` for a folder) and renamed into place. A writer holds the item's lock while it
writes, so a temporary found under the lock belongs to a writer that died (SIGKILL, power loss): `clean`
removes it before the item is written again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock


def lock(path: Path) -> FileLock:
    """The inter-process lock of a cached item (`.<name>.lock` beside it; the file stays, empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(f".{path.name}.lock"))


def clean(path: Path) -> list[Path]:
    """Remove the temporaries that killed writers of `path` left beside it; call with its lock held."""
    folder = path.parent
    stale = sorted(folder.glob(f".{path.name}.*.tmp*")) if folder.is_dir() else []
    for item in stale:
        shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
    return stale


def clean_folder(folder: Path) -> list[Path]:
    """Remove every temporary in a folder whose items are all written under one lock (held by the caller)."""
    stale = sorted(folder.glob(".*.tmp*")) if folder.is_dir() else []
    for item in stale:
        shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def replacing(path: Path, folder: bool = False) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to (a file, or a folder); renamed onto `path` when the
    block ends, replacing what was there, and removed if the block raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        if folder and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary name, then rename: a reader sees the whole file or none."""
    with replacing(path) as tmp:
        np.save(tmp, array)


def write_text(path: Path, text: str) -> None:
    """Write a text file under a temporary name, then rename."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
