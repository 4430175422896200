"""Typed configs: the schema Hydra composes YAML into, validated when turned into objects."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from omegaconf import MISSING

FAMILIES = ("bert", "mpnet", "roberta")
SOURCES = ("pypi", "hub")
TASK_SOURCES = ("pypi", "glue", "csv")
METRICS = ("accuracy", "matthews_corrcoef", "f1")
ACTIVATIONS = ("gelu", "relu", "tanh", "swish")
POSITIONS = ("attention", "output")
NORMS = ("none", "layernorm", "batchnorm")
PLACEMENTS = ("serial", "parallel")
COMBINES = ("add", "multiply")
METHODS = ("adapters", "top_k", "layernorm", "full")
ABLATE_POSITIONS = ("both", "attention", "output")
PRECISIONS = ("fp32", "bf16", "auto")  # auto: ablation.precision decides per machine
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(CompactHydraException, ValueError):
    """A config value outside what is allowed; the message names the field (Hydra prints no traceback)."""


class CacheError(CompactHydraException, RuntimeError):
    """A stored file that cannot be what this code wrote: truncated, corrupt or foreign. Never used; the
    message names the file and what to do (Hydra prints it as one line)."""


def _check(ok: bool, field_name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{field_name}={value!r} is not allowed: {allowed}")


@dataclass
class ModelConfig:
    """A pretrained encoder: an offline PyPI artifact or a hub id."""

    name: str = MISSING
    family: str = "bert"
    source: str = "pypi"
    artifact: str | None = None  # key in ablation.sources.ARTIFACTS when source=pypi
    hub_id: str | None = None  # when source=hub
    num_layers: int = 12  # checked against the loaded model
    max_length: int = 128

    def __post_init__(self) -> None:
        _check(self.family in FAMILIES, "model.family", self.family, f"one of {FAMILIES}")
        _check(self.source in SOURCES, "model.source", self.source, f"one of {SOURCES}")
        _check(
            self.source != "pypi" or bool(self.artifact), "model.artifact", self.artifact, "needed for pypi"
        )
        _check(self.source != "hub" or bool(self.hub_id), "model.hub_id", self.hub_id, "needed for hub")
        _check(self.num_layers > 0, "model.num_layers", self.num_layers, "a positive integer")
        _check(self.max_length > 0, "model.max_length", self.max_length, "a positive integer")


@dataclass
class TaskConfig:
    """A labelled classification task with a fixed train/validation split."""

    name: str = MISSING
    source: str = "pypi"
    artifact: str | None = None  # key in ablation.sources.ARTIFACTS when source=pypi
    glue_name: str | None = None  # when source=glue
    path: str | None = None  # when source=csv: a CSV with the text field(s) and an integer `label` column
    num_labels: int = 2
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    metric: str = "accuracy"  # the official metric, reported beside accuracy
    validation_split: str = "validation"  # glue: e.g. validation_matched for mnli
    validation_size: int = 1000  # pypi tasks: examples held out for validation
    split_seed: int = 0
    train_limit: int | None = None  # cap on training examples (None: all)

    def __post_init__(self) -> None:
        _check(self.source in TASK_SOURCES, "task.source", self.source, f"one of {TASK_SOURCES}")
        _check(
            self.source != "glue" or bool(self.glue_name), "task.glue_name", self.glue_name, "needed for glue"
        )
        _check(
            self.source != "csv" or (bool(self.path) and Path(self.path).expanduser().is_file()),
            "task.path",
            self.path,
            "an existing CSV file for task.source=csv",
        )
        _check(self.num_labels >= 2, "task.num_labels", self.num_labels, "at least 2")
        _check(len(self.text_fields) in (1, 2), "task.text_fields", self.text_fields, "one or two fields")
        _check(self.metric in METRICS, "task.metric", self.metric, f"one of {METRICS}")
        _check(
            self.metric != "f1" or self.num_labels == 2, "task.metric", self.metric, "f1 needs num_labels=2"
        )
        _check(self.validation_size > 0, "task.validation_size", self.validation_size, "a positive integer")
        _check(
            self.train_limit is None or self.train_limit > 0,
            "task.train_limit",
            self.train_limit,
            "None or a positive integer",
        )


@dataclass
class AdapterConfig:
    """Houlsby bottleneck adapter h + up(act(down(h))), two per layer, and the paper's variants of it.

    The README's "Adapter variants" section gives the exact formula of every option.
    """

    size: int = 64
    init_std: float = 1e-3  # official code's init_scale; the paper's text says 1e-2
    activation: str = "gelu"
    positions: list[str] = field(default_factory=lambda: ["attention", "output"])
    norm: str = "none"  # on the adapter's input, before the down-projection
    depth: int = 1  # hidden layers of the bottleneck (2: an extra m x m layer and activation)
    placement: str = "serial"  # serial: fed the sub-layer's output; parallel: fed its input
    combine: str = "add"  # add: s + delta; multiply: s * (1 + delta)

    def __post_init__(self) -> None:
        _check(self.size > 0, "adapter.size", self.size, "a positive integer (bottleneck size m)")
        _check(self.init_std > 0, "adapter.init_std", self.init_std, "a positive float")
        _check(self.activation in ACTIVATIONS, "adapter.activation", self.activation, f"one of {ACTIVATIONS}")
        _check(
            len(self.positions) > 0 and set(self.positions) <= set(POSITIONS),
            "adapter.positions",
            self.positions,
            f"a non-empty subset of {POSITIONS}",
        )
        _check(self.norm in NORMS, "adapter.norm", self.norm, f"one of {NORMS}")
        _check(self.depth >= 1, "adapter.depth", self.depth, "a positive integer (hidden layers)")
        _check(self.placement in PLACEMENTS, "adapter.placement", self.placement, f"one of {PLACEMENTS}")
        _check(self.combine in COMBINES, "adapter.combine", self.combine, f"one of {COMBINES}")

    def variant(self) -> str:
        """The architecture relative to the plain Houlsby adapter: 'plain' or the fields that differ."""
        plain = AdapterConfig()
        diffs = []
        for name in ("norm", "depth", "activation", "positions", "placement", "combine"):
            value = getattr(self, name)
            if value != getattr(plain, name):
                diffs.append(f"{name}={'+'.join(value) if name == 'positions' else value}")
        return ",".join(diffs) or "plain"


@dataclass
class MethodConfig:
    """What training changes: adapters (+ LayerNorms + head), the top k layers, LayerNorms only, or all."""

    name: str = "adapters"
    k: int | None = None  # top_k: train layers L-k..L-1 (checked against L in RunConfig)

    def __post_init__(self) -> None:
        _check(self.name in METHODS, "method.name", self.name, f"one of {METHODS} (e.g. method=top_k)")
        if self.name == "top_k":
            _check(
                isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 1,
                "method.k",
                self.k,
                "an integer 1..L for method=top_k (e.g. method.k=1)",
            )
        else:
            _check(self.k is None, "method.k", self.k, f"only for method=top_k, not method={self.name}")


@dataclass
class TrainConfig:
    """Optimiser and schedule; everything here is part of the training key."""

    lr: float = 1e-3
    epochs: float = 1.0
    max_steps: int | None = None  # caps the step count when set
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # fp32 by default even where bf16 is faster: with auto, the trained parameters (and every number
    # downstream) would depend on the machine that ran the job. auto is there to opt in.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        _check(self.lr > 0, "train.lr", self.lr, "a positive float")
        _check(self.epochs > 0, "train.epochs", self.epochs, "a positive number")
        _check(self.max_steps is None or self.max_steps > 0, "train.max_steps", self.max_steps, "None or > 0")
        _check(self.batch_size > 0, "train.batch_size", self.batch_size, "a positive integer")
        _check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        _check(self.max_grad_norm > 0, "train.max_grad_norm", self.max_grad_norm, "a positive float")
        _check(self.precision in PRECISIONS, "train.precision", self.precision, f"one of {PRECISIONS}")


@dataclass
class EvalConfig:
    """Evaluation settings; not part of the training key."""

    batch_size: int = 64
    precision: str = "auto"  # bf16 where this machine runs it clearly faster (ablation.precision), else fp32
    # Hidden states the evaluator may hold, in GiB; beyond it, it works shard by shard. None: a quarter of the
    # host's RAM on the CPU, 40% of the free GPU memory on CUDA.
    memory_gb: float | None = None

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "eval.batch_size", self.batch_size, "a positive integer")
        _check(
            self.memory_gb is None or self.memory_gb > 0,
            "eval.memory_gb",
            self.memory_gb,
            "None or > 0 (GiB)",
        )
        _check(self.precision in PRECISIONS, "eval.precision", self.precision, f"one of {PRECISIONS}")


@dataclass
class AblateConfig:
    """Remove the trained adapters of layers first..last (inclusive, 0-based); None: intact."""

    first: int | None = None
    last: int | None = None
    positions: str = "both"

    def __post_init__(self) -> None:
        for name in ("first", "last"):
            value = getattr(self, name)
            _check(
                value is None or isinstance(value, int),
                f"ablate.{name}",
                value,
                "an integer layer index (ranges like 0..11 need -m, a multirun)",
            )
        _check(
            (self.first is None) == (self.last is None),
            "ablate.first/last",
            (self.first, self.last),
            "set both or neither",
        )
        if self.first is not None:
            _check(self.first <= self.last, "ablate.first", self.first, f"<= ablate.last={self.last}")
        _check(
            self.positions in ABLATE_POSITIONS,
            "ablate.positions",
            self.positions,
            f"one of {ABLATE_POSITIONS}",
        )

    def check_layers(self, num_layers: int) -> None:
        """Raise if the range does not fit a model with num_layers layers."""
        for name in ("first", "last"):
            value = getattr(self, name)
            _check(
                value is None or 0 <= value < num_layers,
                f"ablate.{name}",
                value,
                f"the model has L={num_layers} layers: use 0..{num_layers - 1}",
            )


@dataclass
class PathsConfig:
    """Where downloads, trained adapters and evaluation caches live."""

    cache: str = "${oc.env:ABLATION_CACHE,${oc.env:HOME}/.cache/ablation}"
    store: str = "outputs/store"

    def __post_init__(self) -> None:
        for name in ("cache", "store"):
            check_writable(f"paths.{name}", getattr(self, name))


def check_writable(field_name: str, path: str) -> None:
    """Raise ConfigError unless `path` is a folder this process can create or write (nothing is created)."""
    target = Path(path).expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{field_name}={path!r} is not allowed: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{field_name}={path!r} is not allowed: {existing} is not writable by this user")


@dataclass
class RunConfig:
    """One job: a model, a task, a training method (adapters by default), a seed, an ablation."""

    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    method: MethodConfig = field(default_factory=MethodConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    device: str = "auto"  # auto: CUDA when torch sees it, else the CPU

    def __post_init__(self) -> None:
        _check(self.device in DEVICES, "device", self.device, f"one of {DEVICES}")
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        L = self.model.num_layers
        if self.method.name == "top_k":
            _check(self.method.k <= L, "method.k", self.method.k, f"the model has L={L} layers: use 1..{L}")
        _check(
            self.method.name == "adapters" or self.ablate.first is None,
            "ablate.first",
            self.ablate.first,
            f"layer ablation removes adapters, and method={self.method.name} has none (use method=adapters)",
        )
        self.ablate.check_layers(L)
        _check(
            self.ablate.positions == "both" or self.ablate.positions in self.adapter.positions,
            "ablate.positions",
            self.ablate.positions,
            f"a position that has adapters: {self.adapter.positions}",
        )


@dataclass
class AblationSweeperConf:
    """Hydra node for the sweeper (ablation.sweeper): the basic sweeper's knobs plus `grids`.

    Jobs are the product of `params` (and the command line) with the union of `grids`: each grid is
    its own product, so a study can sweep adapter sizes for adapters and k for top_k in one command.
    """

    # Hydra instantiates plugins only from the hydra_plugins namespace.
    _target_: str = "hydra_plugins.ablation_sweeper.AblationSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    grids: list[dict[str, Any]] | None = None
    dry_run: bool = False  # list and check the jobs, run none (hydra.sweeper.dry_run=true)


def register() -> None:
    """Register the run schema and the sweeper in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="hydra/sweeper", name="ablation", node=AblationSweeperConf, provider="ablation")


register()
