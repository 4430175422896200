"""Adapters trained elsewhere: a PEFT LoRA folder (`adapter_config.json` + `adapter_model.safetensors`, the
classification head in `modules_to_save`), read into the suite's own LoRA model so every ablation path applies.

Config-time reading (`peft_lora_spec`) needs no torch: the safetensors header is JSON. Anything the suite cannot
reproduce exactly is a ConfigError naming it, raised before any job runs.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablation.config import ConfigError
from ablation.families import LORA_POSITIONS, family

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
HEAD = "classifier."
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
    targets: list[str]  # LORA_POSITIONS names, in their order
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
    header.pop("__metadata__", None)
    return header


def _where(family_name: str, prefix: str) -> dict[str, tuple[int, str]]:
    """PEFT's module path pattern -> (layer, target): regex over 'prefix.<i>.<path>'."""
    return {
        rf"{re.escape(prefix)}\.(\d+)\.{re.escape(path)}": target
        for target, path in family(family_name).lora_targets.items()
    }


def peft_lora_spec(folder: str | Path, family_name: str, num_layers: int) -> LoraSpec:
    """Read and check a PEFT LoRA folder for a model of `family_name` with `num_layers` layers (named, as in
    every family here, <family>.encoder.layer.<i>); ConfigError naming what does not fit."""
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
    patterns = _where(family_name, f"{family_name}.encoder.layer")
    found: dict[int, dict[str, int]] = {}
    head = False
    for name, info in safetensors_header(weights).items():
        key = name.removeprefix(PEFT_PREFIX)
        if key.startswith(HEAD):
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
        targets=[t for t in LORA_POSITIONS if t in present],
        files=[config_file, weights],
    )


def load_peft_lora(model: Any, folder: str | Path) -> None:
    """Copy a PEFT LoRA folder's weights and head into the model's LoraSlots and classifier (after inject_lora
    with the folder's spec); ConfigError naming the first tensor that has no place or another shape."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(Path(folder).expanduser() / PEFT_WEIGHTS))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            key = name.removeprefix(PEFT_PREFIX)
            if key.startswith(HEAD):
                ours = key
            else:
                module, _, kind = key.rpartition(".lora_")
                ours = f"{module}.base_layer.lora_{kind.replace('.weight', '')}.default.weight"
            if ours not in params:
                raise ConfigError(f"method.load: {name!r} has no place in this model (looked for {ours!r})")
            if params[ours].shape != tensor.shape:
                raise ConfigError(
                    f"method.load: {name!r} is {tuple(tensor.shape)}, this model's {ours!r} is "
                    f"{tuple(params[ours].shape)}: the checkpoint was trained on another base model"
                )
            params[ours].copy_(tensor)
