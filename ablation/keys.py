"""Everything that identifies a run, derived from the declarations of `ablation.config` (`param`).

- the training key: the store folder of a run's trained parameters (fields declared with TRAIN);
- the data key: the cached split of a task (DATA);
- the evaluation key: the folder of one training's cached cell predictions (EVAL, and the data evaluated);
- the cell name: one cached prediction file (CELL);
- the process spec: what a process may keep loaded between jobs (TRAIN, EVAL and PROCESS);
- the row's configuration columns, their kinds, the variant name and the setting columns.

No field is named here except `seed` (the replicate axis of every study) and the `task` and `model`
sections (the axes every figure splits on). Imports neither torch nor pandas.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ablation.config import CELL, DATA, EVAL, PROCESS, TRAIN, AblateConfig, ConfigError, RunConfig
from ablation.sources import ARTIFACTS, sha256_file

# Bump when a code change alters what training produces, so stored parameters of older code are not reused.
STORE_VERSION = 3  # 3: keys derived from the config declarations
# Bump when reading or splitting a task changes: the dataset cache and every training key follow it.
DATA_VERSION = 3  # 3: repeated texts removed before the split (ablation.data.deduplicate)
VARIANT = "variant"  # the column naming an adapter variant: "plain", or the variant fields that differ
REPLICATE = "seed"  # the column whose values are replicates of one setting
AXES = ("task", "model")  # sections whose columns split figures and claims into panels


@functools.lru_cache(maxsize=64)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _digest(kind: str, value: Any) -> str:
    if kind == "folder":  # an imported checkpoint: its configs and weights (not a README beside them)
        files = sorted(
            p for p in Path(value).expanduser().iterdir() if p.suffix in (".json", ".safetensors", ".bin")
        )
        return _hash({p.name: _digest("file", p) for p in files})
    if kind == "file":
        path = Path(value).expanduser().resolve()
        stat = path.stat()
        return _file_digest(path, stat.st_size, stat.st_mtime_ns)  # hashed again only when it changed
    if value not in ARTIFACTS:
        raise ConfigError(f"artifact {value!r} is not allowed: one of {sorted(ARTIFACTS)}")
    return ARTIFACTS[value].sha256


def _text(value: Any) -> Any:
    """A field's value as a column holds it: lists joined by '+'."""
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def _spec(obj: Any, role: str, run: RunConfig | None = None) -> dict:
    """The fields of `obj` (a config dataclass) declared with `role`, nested by section, with digests."""
    run = obj if isinstance(obj, RunConfig) else run
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            applies = f.metadata.get("applies")
            if applies is None or applies(run):
                inner = _spec(value, role, run)
                if inner:
                    out[f.name] = inner
        elif role in f.metadata.get("keys", ()) and not (f.metadata.get("when_set") and value is None):
            out[f.name] = value
            if f.metadata.get("digest") and value is not None:
                out[f"{f.name}_sha256"] = _digest(f.metadata["digest"], value)
    return out


def _hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def training_spec(cfg: RunConfig) -> dict:
    """What the trained parameters depend on: every TRAIN field of the sections that apply, and versions."""
    unresolved = [
        name
        for name, value in (("device", cfg.device), ("train.precision", cfg.train.precision))
        if value == "auto"
    ]
    if unresolved:
        raise ValueError(f"{unresolved} must be resolved for this machine first (ablation.precision.resolve)")
    return {**_spec(cfg, TRAIN), "store_version": STORE_VERSION, "data_version": DATA_VERSION}


def training_key(cfg: RunConfig) -> str:
    """The store folder's name: `<model>-<task>-<hash of training_spec>`."""
    return f"{cfg.model.name}-{cfg.task.name}-{_hash(training_spec(cfg))}"


def data_spec(task: Any) -> dict:
    """What a task's cached split depends on: its DATA fields, the source's content hash, the data version."""
    return {**_spec(task, DATA), "data_version": DATA_VERSION}


def data_key(task: Any) -> str:
    """The dataset cache folder's name: `<task>-<hash of data_spec>`."""
    return f"{task.name}-{_hash(data_spec(task))}"


def eval_key(cfg: RunConfig, data_fingerprint: str) -> str:
    """The cell cache folder's name under a training key: EVAL fields and the evaluated data's fingerprint."""
    return _hash({**_spec(cfg, EVAL), "data": data_fingerprint})


def cell_name(ablate: AblateConfig) -> str:
    """The cached predictions' file stem: 'intact', or 'cell-' and the CELL fields' values that are set."""
    if ablate.cell is None:
        return "intact"
    values = [getattr(ablate, f.name) for f in dataclasses.fields(ablate) if CELL in f.metadata["keys"]]
    return "cell-" + "-".join(str(_text(v)) for v in values if v is not None)  # alpha: only with kind=scale


def process_spec(cfg: RunConfig) -> str:
    """What a process's loaded session depends on: two jobs with equal specs share it."""
    return json.dumps(
        {role: _spec(cfg, role) for role in (TRAIN, EVAL, PROCESS)}, sort_keys=True, default=str
    )


def variant(adapter: Any) -> str:
    """The adapter architecture relative to the plain one: 'plain', or 'field=value,...' of the variant
    fields that differ from their defaults, in declaration order."""
    plain = type(adapter)()
    diffs = [
        f"{f.name}={_text(getattr(adapter, f.name))}"
        for f in dataclasses.fields(adapter)
        if f.metadata.get("variant") and getattr(adapter, f.name) != getattr(plain, f.name)
    ]
    return ",".join(diffs) or "plain"


def _leaves(
    cls: type, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], type, dataclasses.Field, Any]]:
    """(section path, section class, field, type hint) of every field of a config class, depth first."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], (*path, f.name))
        else:
            yield path, cls, f, hints[f.name]


def _kind(hint: Any) -> str:
    """'int', 'float', 'text' or 'bool' for a field's type (None allowed in every column)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = typing.get_origin(hint) if typing.get_origin(hint) is list else (args[0] if args else hint)
    return {int: "int", float: "float", bool: "bool"}.get(base, "text")


def _has_variant(cls: type) -> bool:
    return any(f.metadata.get("variant") for f in dataclasses.fields(cls))


def _columns() -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    kinds: dict[str, str] = {}
    setting, training, cells = [], [], []
    seen_variant: set[tuple[str, ...]] = set()
    for path, owner, f, hint in _leaves(RunConfig):
        column = f.metadata.get("column")
        if column is None:
            continue
        if _has_variant(owner) and path not in seen_variant:  # the variant column leads its section
            seen_variant.add(path)
            kinds[VARIANT] = "text"
            setting.append(VARIANT)
            training.append(VARIANT)
        kinds[column] = _kind(hint)
        if TRAIN in f.metadata["keys"]:
            training.append(column)
            if column != REPLICATE and (not path or path[0] not in AXES):
                setting.append(column)
        if CELL in f.metadata["keys"]:
            cells.append(column)
    return kinds, tuple(setting), tuple(training), tuple(cells)


# Every configuration column and its kind, in row order.
CONFIG_COLUMNS, SETTING_COLUMNS, TRAINING_COLUMNS, CELL_COLUMNS = _columns()
SETTING_COLUMNS: tuple[str, ...]  # what makes one training setting apart from task, model and seed
TRAINING_COLUMNS: tuple[str, ...]  # the columns of fields in the training key (the table's sort order)
CELL_COLUMNS: tuple[str, ...]  # the columns of the cell key (first, last, positions)


def config_columns(cfg: RunConfig) -> dict[str, Any]:
    """The row's configuration columns for this run; None for a section that does not apply (the adapter
    columns of a method without adapters)."""
    out = dict.fromkeys(CONFIG_COLUMNS)

    def fill(obj: Any, active: bool) -> None:
        if active and _has_variant(type(obj)):
            out[VARIANT] = variant(obj)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                applies = f.metadata.get("applies")
                fill(value, active and (applies is None or applies(cfg)))
            elif f.metadata.get("column") and active:
                unset = f.metadata.get("unset")
                out[f.metadata["column"]] = _text(unset(cfg) if value is None and unset else value)

    fill(cfg, True)
    return out
