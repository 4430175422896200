"""Adapters trained elsewhere: a PEFT LoRA folder (`adapter_config.json` + `adapter_model.safetensors`, the
classification head in `modules_to_save`), read into the suite's own LoRA model so every ablation path applies.

Config-time reading (`peft_lora_spec`) needs no torch: the safetensors header is JSON. Anything the suite cannot
reproduce exactly is a ConfigError naming it, raised before any job runs.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablation.config import ConfigError
from ablation.families import FAMILIES, family

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# adapter_config.json keys the suite reads, or that do not change the forward of a trained LoRA layer
_READ = {
    "peft_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "modules_to_save",
    "layers_pattern",
}
_NEUTRAL = {"task_type", "inference_mode", "base_model_name_or_path", "revision", "peft_version",
            "init_lora_weights", "auto_mapping", "megatron_core", "qalora_group_size", "exclude_modules"}  # fmt: skip
# keys whose default (any falsy value, or these) is what the suite does
_DEFAULTS = {"bias": "none"}


@dataclass(frozen=True)
class LoraSpec:
    """What a PEFT LoRA folder holds, in the suite's terms."""

    r: int
    alpha: float
    dropout: float
    targets: list[str]  # the family's LoRA target names, in its order
    files: list[Path]  # what the training key hashes


def safetensors_header(path: Path) -> dict[str, Any]:
    """Tensor names -> {dtype, shape, data_offsets} of a safetensors file, read without loading it."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ConfigError(f"{path}: not a safetensors file (shorter than its header)")
        (size,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(size))
        except (ValueError, UnicodeDecodeError, MemoryError):
            raise ConfigError(f"{path}: not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: not a safetensors file (unreadable header)")
    header.pop("__metadata__", None)
    try:
        end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise ConfigError(f"{path}: not a safetensors file (a tensor without data_offsets)") from None
    have = path.stat().st_size
    if have != 8 + size + end:  # what safetensors would only find when loading, inside a job
        raise ConfigError(
            f"{path}: truncated or damaged: {have} bytes, its header describes {8 + size + end} "
            "(copy or save the folder again)"
        )
    return header


def check_weights_file(path: Path) -> None:
    """ConfigError naming `path` unless it is a complete safetensors file or torch zip (read without loading)."""
    if path.suffix == ".safetensors":
        safetensors_header(path)
        return
    with path.open("rb") as f:
        if f.read(2) != b"PK":
            return  # torch's legacy (pre-1.6) pickle format: only torch.load can tell
    try:
        # torch.save's zip: a truncated one has no central directory
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ConfigError(
            f"{path}: truncated or damaged: not a complete torch zip file ({err}); copy or save the folder again"
        ) from None


def _where(family_name: str, prefix: str) -> dict[str, tuple[int, str]]:
    """PEFT's module path pattern -> (layer, target): regex over 'prefix.<i>.<path>'."""
    return {
        rf"{re.escape(prefix)}\.(\d+)\.{re.escape(path)}": target
        for target, (path, _) in family(family_name).lora_targets.items()
    }


def peft_lora_spec(folder: str | Path, family_name: str, num_layers: int) -> LoraSpec:
    """Read and check a PEFT LoRA folder for a model of `family_name` with `num_layers` layers (named, as in
    <base>.<layers>.<i>, e.g. bert.encoder.layer.3 or model.layers.3); ConfigError naming what does not fit."""
    root = Path(folder).expanduser()
    where = f"method.load={str(folder)!r}"
    if not root.is_dir():
        raise ConfigError(f"{where} is not allowed: not a folder")
    config_file, weights = root / PEFT_CONFIG, root / PEFT_WEIGHTS
    if not config_file.exists():
        raise ConfigError(f"{where} is not allowed: no {PEFT_CONFIG} (not a PEFT adapter folder)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError:
        raise ConfigError(f"{where} is not allowed: {PEFT_CONFIG} is not JSON") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise ConfigError(f"{where} is not allowed: peft_type={kind!r}, the suite imports LORA")
    for key, value in config.items():
        if key in _READ or key in _NEUTRAL:
            continue
        if value and value != _DEFAULTS.get(key):
            raise ConfigError(
                f"{where}: unsupported LoRA option {key}={value!r} (the suite reproduces plain LoRA)"
            )
    if not weights.exists():
        raise ConfigError(
            f"{where} is not allowed: no {PEFT_WEIGHTS} (the .bin format is not read: it unpickles)"
        )
    fam = family(family_name)
    patterns = _where(family_name, f"{fam.base}.{fam.layers}")
    found: dict[int, dict[str, int]] = {}
    head = False
    for name, info in safetensors_header(weights).items():
        key = name.removeprefix(PEFT_PREFIX)
        if key.startswith(f"{fam.head}."):
            head = True
            continue
        module, dot, kind = key.rpartition(".lora_")
        match = next(((m, t) for p, t in patterns.items() if (m := re.fullmatch(p, module))), None)
        if not dot or match is None or kind not in ("A.weight", "B.weight"):
            raise ConfigError(
                f"{where}: tensor {name!r} is not LoRA on a {family_name} projection the suite knows"
            )
        layer = int(match[0].group(1))
        if kind == "A.weight":
            found.setdefault(layer, {})[match[1]] = info["shape"][0]
    if not found:
        raise ConfigError(f"{where} is not allowed: {PEFT_WEIGHTS} holds no LoRA weights")
    if max(found) >= num_layers or len(found) != num_layers:
        raise ConfigError(
            f"{where}: LoRA in layers {sorted(found)}, the model has L={num_layers} layers: "
            "the checkpoint was trained on another base model (or on some layers only, which is not supported)"
        )
    targets = {frozenset(t) for t in found.values()}
    ranks = {r for t in found.values() for r in t.values()}
    if len(targets) > 1 or len(ranks) > 1:
        raise ConfigError(f"{where}: LoRA differs between layers (targets or ranks), which is not supported")
    r, present = ranks.pop(), targets.pop()
    if r != config.get("r"):
        raise ConfigError(f"{where}: the weights have rank {r}, {PEFT_CONFIG} says r={config.get('r')}")
    if not head:
        raise ConfigError(
            f"{where}: no classification head in {PEFT_WEIGHTS} (train with task_type=SEQ_CLS, which saves it "
            "through modules_to_save)"
        )
    return LoraSpec(
        r=r,
        alpha=float(config.get("lora_alpha", 8)),
        dropout=float(config.get("lora_dropout", 0.0)),
        targets=[t for t in fam.lora_targets if t in present],
        files=[config_file, weights],
    )


def load_peft_lora(model: Any, folder: str | Path) -> None:
    """Copy a PEFT LoRA folder's weights and head into the model's LoraSlots and classifier (after inject_lora
    with the folder's spec); ConfigError naming the first tensor that has no place or another shape."""
    from safetensors.torch import load_file

    state = load_file(str(Path(folder).expanduser() / PEFT_WEIGHTS))
    head = f"{family(model.config.model_type).head}."
    places = {}
    for name, tensor in state.items():
        key = name.removeprefix(PEFT_PREFIX)
        if not key.startswith(head):
            module, _, kind = key.rpartition(".lora_")
            key = f"{module}.base_layer.lora_{kind.replace('.weight', '')}.default.weight"
        places[name] = (key, tensor)
    _copy_into(model, places, "method.load", "the checkpoint")


def _copy_into(model: Any, places: dict[str, tuple[str, Any]], field: str, what: str) -> None:
    """Copy each checkpoint tensor (name -> (the model's parameter name, tensor)) into the model;
    ConfigError naming the first that has no place or another shape."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (ours, tensor) in places.items():
            if ours not in params:
                raise ConfigError(f"{field}: {name!r} has no place in this model (looked for {ours!r})")
            if params[ours].shape != tensor.shape:
                raise ConfigError(
                    f"{field}: {name!r} is {tuple(tensor.shape)}, this model's {ours!r} is "
                    f"{tuple(params[ours].shape)}: {what} was trained on another base model"
                )
            params[ours].copy_(tensor)


# --- AdapterHub (`adapters`): what `model.save_adapter(dir, name, with_head=True)` writes ---

AH_CONFIG = "adapter_config.json"
AH_HEAD_CONFIG = "head_config.json"
AH_WEIGHTS = ("adapter.safetensors", "pytorch_adapter.bin")  # safetensors, or torch's zip (weights_only)
AH_HEAD_WEIGHTS = ("model_head.safetensors", "pytorch_model_head.bin")
_AH_ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu", "tanh": "tanh"}
# bottleneck options and the value under which the suite's adapter is AdapterHub's forward exactly (its
# Houlsby adapter, DoubleSeqBnConfig, is placement=serial; original_ln_before=true, its Pfeiffer adapter
# SeqBnConfig, placement=normed); any other value is refused, naming the option
_AH_REQUIRED = {"original_ln_after": True, "residual_before_ln": True,
                "ln_before": False, "ln_after": False, "is_parallel": False, "use_gating": False,
                "phm_layer": False, "inv_adapter": None, "cross_adapter": False,
                "stochastic_depth": 0.0}  # fmt: skip
_AH_WHY = {"residual_before_ln": "the adapter's residual taken after the LayerNorm"}


@dataclass(frozen=True)
class BottleneckSpec:
    """What an AdapterHub bottleneck adapter folder holds, in the suite's AdapterConfig terms."""

    size: int
    activation: str
    positions: list[str]
    scaling: float
    placement: str  # serial (Houlsby) or normed (Pfeiffer: fed LayerNorm(s + residual))
    layers: list[int] | None  # the layers with adapters (AdapterHub's leave_out is the complement); None: all
    weights: Path
    head: Path
    files: list[Path]  # what the training key hashes


def _first(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).exists()), None)


def adapterhub_spec(folder: str | Path, family_name: str, num_labels: int, num_layers: int) -> BottleneckSpec:
    """Read and check an AdapterHub adapter folder for a model of `family_name` with `num_layers` layers and a
    task of `num_labels` labels; ConfigError naming what does not fit or what the suite cannot reproduce."""
    root = Path(folder).expanduser()
    where = f"adapter.load={str(folder)!r}"
    if not root.is_dir():
        raise ConfigError(f"{where} is not allowed: not a folder")
    if not (root / AH_CONFIG).exists():
        raise ConfigError(f"{where} is not allowed: no {AH_CONFIG} (not an AdapterHub adapter folder)")
    try:
        saved = json.loads((root / AH_CONFIG).read_text())
        config = saved["config"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{where} is not allowed: {AH_CONFIG} is not AdapterHub's (no 'config')") from None
    if "peft_type" in saved:
        raise ConfigError(f"{where} is not allowed: a PEFT folder (use method=lora method.load=...)")
    if config.get("architecture", "bottleneck") != "bottleneck" or "reduction_factor" not in config:
        raise ConfigError(f"{where}: not a bottleneck adapter ({config.get('architecture')!r})")
    if family(family_name).adapterhub_head is None:
        readable = sorted(n for n, f in FAMILIES.items() if f.adapterhub_head is not None)
        raise ConfigError(
            f"{where}: AdapterHub folders are read for model.family in {readable}, not {family_name}"
        )
    if saved.get("model_type") != family_name:
        raise ConfigError(
            f"{where}: trained on a {saved.get('model_type')!r} model, this is a {family_name!r} one"
        )
    for option, value in _AH_REQUIRED.items():
        if config.get(option, value) != value and (value is not None or config.get(option) is not None):
            why = f" ({_AH_WHY[option]})" if option in _AH_WHY else ""
            raise ConfigError(f"{where}: unsupported option {option}={config.get(option)!r}{why}")
    if family(family_name).decoder and config.get("original_ln_before"):
        raise ConfigError(
            f"{where}: unsupported option original_ln_before=True on a {family_name!r} model (AdapterHub feeds "
            "this adapter the residual sum; a pre-norm block has no norm there, and the suite no such placement)"
        )
    factor, hidden = config["reduction_factor"], saved.get("hidden_size")
    if not isinstance(factor, (int, float)) or not hidden or hidden % factor:
        raise ConfigError(f"{where}: unsupported reduction_factor={factor!r} (one number dividing {hidden})")
    if config.get("non_linearity") not in _AH_ACTIVATIONS:
        raise ConfigError(f"{where}: unsupported non_linearity={config.get('non_linearity')!r}")
    if not isinstance(config.get("scaling", 1.0), (int, float)):
        raise ConfigError(f"{where}: unsupported scaling={config.get('scaling')!r} (learned scalings)")
    positions = [
        p for p, key in (("attention", "mh_adapter"), ("output", "output_adapter")) if config.get(key)
    ]
    leave_out = config.get("leave_out") or []
    if not isinstance(leave_out, list) or not set(leave_out) <= set(range(num_layers)):
        raise ConfigError(
            f"{where}: leave_out={leave_out!r} is not a list of this model's layers 0..{num_layers - 1}"
        )
    layers = [i for i in range(num_layers) if i not in leave_out]
    if not layers:
        raise ConfigError(f"{where}: leave_out={leave_out!r} leaves no layer with adapters")
    weights, head = _first(root, AH_WEIGHTS), _first(root, AH_HEAD_WEIGHTS)
    if weights is None:
        raise ConfigError(f"{where} is not allowed: no weights ({' or '.join(AH_WEIGHTS)})")
    if head is None or not (root / AH_HEAD_CONFIG).exists():
        raise ConfigError(f"{where}: no prediction head (save it with save_adapter(..., with_head=True))")
    for path in (weights, head):
        check_weights_file(path)
    head_config = json.loads((root / AH_HEAD_CONFIG).read_text()).get("config", {})
    wanted = {"head_type": "classification", "layers": 2, "activation_function": "tanh", "use_pooler": False}
    for option, value in wanted.items():
        if head_config.get(option) != value:
            raise ConfigError(f"{where}: unsupported head {option}={head_config.get(option)!r}")
    if head_config.get("num_labels") != num_labels:
        raise ConfigError(
            f"{where}: its head has {head_config.get('num_labels')} labels, the task {num_labels}"
        )
    return BottleneckSpec(
        size=int(hidden // factor),
        activation=_AH_ACTIVATIONS[config["non_linearity"]],
        positions=positions,
        scaling=float(config.get("scaling", 1.0)),
        placement="normed" if config.get("original_ln_before") else "serial",
        layers=None if not leave_out else layers,
        weights=weights,
        head=head,
        files=[root / AH_CONFIG, root / AH_HEAD_CONFIG, weights, head],
    )


def _read_weights(path: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, weights_only=True)  # torch's restricted unpickler: tensors and containers only


def load_adapterhub(
    model: Any, folder: str | Path, family_name: str, num_labels: int, num_layers: int
) -> None:
    """Copy an AdapterHub folder's adapters into the model's (inject_adapters with its spec first) and its
    head into the family's head modules; ConfigError naming the first tensor without a place or of another
    shape."""
    spec = adapterhub_spec(folder, family_name, num_labels, num_layers)
    places = {}
    entry = family(family_name)
    # AdapterHub's module of each position inside a layer -> the suite's slot there
    ours = {hub: entry.slots[position] for position, hub in entry.adapterhub_slots.items()}
    for name, tensor in _read_weights(spec.weights).items():
        module, _, rest = name.partition(".adapters.")
        _, _, part = rest.partition(".")  # drop the adapter's name
        part = part.replace("adapter_down.0.", "down.").replace("adapter_up.", "up.")
        layer = re.match(rf"^({re.escape(entry.base)}\.{re.escape(entry.layers)}\.\d+)\.(.+)$", module)
        slot = ours.get(layer.group(2)) if layer else None
        places[name] = (f"{layer.group(1)}.{slot}.adapter.{part}" if slot else name, tensor)
    dense, out = entry.adapterhub_head  # the head's (dropout, dense, tanh, dropout, out)
    head_modules = {"1": dense, "4": out}  # heads.<name>.<index in the head's Sequential>.<weight|bias>
    for name, tensor in _read_weights(spec.head).items():
        layer, kind = name.split(".")[-2:]
        places[name] = (f"{head_modules.get(layer, name)}.{kind}", tensor)
    _copy_into(model, places, "adapter.load", "the adapter")
