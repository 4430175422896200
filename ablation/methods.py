"""What each training method trains: adapters (+ LayerNorms + head), the top k layers, LayerNorms only, all,
the classification head alone on the frozen encoder, or LoRA (+ head).

Knows nothing of Hydra: `prepare` reads the method's and the adapter's settings from plain dataclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ablation.adapters import Adapter, LoraSlot, adapter_slots, encoder_layers, inject_adapters, inject_lora

if TYPE_CHECKING:
    from ablation.config import AdapterConfig, MethodConfig

HEAD_PREFIX = "classifier."
KINDS = ("adapters", "lora", "layernorm", "head", "layers", "embeddings")


def _pooler_prefix(model: nn.Module) -> str | None:
    """BERT's pooler sits between the last layer and the classifier; MPNet/RoBERTa heads have none."""
    if getattr(model.base_model, "pooler", None) is None:
        return None
    return f"{model.base_model_prefix}.pooler."


def _layers_prefix(model: nn.Module) -> str:
    """Name prefix of the encoder layers' parameters, e.g. 'bert.encoder.layer.'."""
    layers = encoder_layers(model)
    return next(n for n, m in model.named_modules() if m is layers) + "."


def _module_params(model: nn.Module, kinds: tuple[type, ...]) -> set[str]:
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, kinds):
            names.update(f"{prefix}.{n}" for n, _ in module.named_parameters())
    return names


def trained_names(
    model: nn.Module,
    method: str,
    k: int | None = None,
    layernorms: str | None = None,
    head: str | None = None,
) -> set[str]:
    """Names of the parameters `method` trains.

    adapters: the adapters, the LayerNorms `layernorms` names (None: every one, the embeddings' too) and the
    classifier; layernorm: every LayerNorm and the classifier; top_k: layers L-k..L-1 and everything above
    them (BERT's pooler, the classifier); full: everything; head: the classifier alone (the frozen encoder's
    features); lora: the LoRA weights, the LayerNorms `layernorms` names (None: none) and the classifier.
    layernorms="adapted": the LayerNorms of the layers that have adapters (or LoRA). head="pooler": BERT's
    pooler trains with the classifier (None: frozen, as in the official code).
    """
    names = [n for n, _ in model.named_parameters()]
    trained = {n for n in names if n.startswith(HEAD_PREFIX)}
    pooler = _pooler_prefix(model)
    if head == "pooler":
        if pooler is None:
            raise ValueError("head='pooler': this model's head has no pooler")
        trained |= {n for n in names if n.startswith(pooler)}
    if method == "full":
        return set(names)
    if method == "head":
        return trained
    if method == "layernorm":
        return trained | _module_params(model, (nn.LayerNorm,))
    if method in ("adapters", "lora"):
        own = _module_params(model, (Adapter,)) if method == "adapters" else _lora_params(model)
        which = layernorms or ("train" if method == "adapters" else "freeze")
        return trained | own | _layernorms(model, which)
    if method == "top_k":
        L = len(encoder_layers(model))
        if k is None or not 1 <= k <= L:
            raise ValueError(f"method.k={k!r}: the model has L={L} layers, use 1..{L}")
        above = tuple(f"{_layers_prefix(model)}{i}." for i in range(L - k, L))
        if pooler is not None:
            above += (pooler,)
        return trained | {n for n in names if n.startswith(above)}
    raise ValueError(f"method={method!r}: one of adapters, top_k, layernorm, full, head, lora")


def _layernorms(model: nn.Module, which: str) -> set[str]:
    """The LayerNorm parameters of `which`: train (all), adapted (the layers with adapters or LoRA), freeze."""
    norms = _module_params(model, (nn.LayerNorm,)) - _module_params(model, (Adapter,))
    if which == "train":
        return norms
    if which == "freeze":
        return set()
    if which != "adapted":
        raise ValueError(f"layernorms={which!r}: one of train, adapted, freeze")
    layers = sorted({layer for layer, _ in adapter_slots(model)})
    prefixes = tuple(f"{_layers_prefix(model)}{i}." for i in layers)
    return {n for n in norms if n.startswith(prefixes)}


def _lora_params(model: nn.Module) -> set[str]:
    """The LoRA weights (A and B) of every LoraSlot, not the pretrained layer they wrap."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, LoraSlot):
            names.update(
                f"{prefix}.{n}" for n, _ in module.named_parameters() if ".lora_A." in n or ".lora_B." in n
            )
    return names


def freeze(
    model: nn.Module,
    method: str,
    k: int | None = None,
    layernorms: str | None = None,
    head: str | None = None,
) -> None:
    """Set requires_grad on exactly the parameters `method` trains (trained_names)."""
    train = trained_names(model, method, k, layernorms, head)
    for name, p in model.named_parameters():
        p.requires_grad = name in train


def prepare(
    model: nn.Module, family: str, method: MethodConfig, adapter: AdapterConfig | None
) -> dict[str, int]:
    """Add what the method trains (the adapters `adapter` describes, for a method with adapters; LoRA for
    method=lora), freeze everything else, and return count_parameters(model)."""
    if adapter is not None:
        inject_adapters(model, family, adapter)
    if method.name == "lora":
        inject_lora(model, family, method.r, method.alpha, method.target, method.dropout)
    freeze(model, method.name, method.k, method.layernorms, method.head)
    return count_parameters(model)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts, the trainable ones split by kind (KINDS)."""
    layer_prefix = _layers_prefix(model)
    pooler = _pooler_prefix(model)
    adapters, norms = _module_params(model, (Adapter,)), _module_params(model, (nn.LayerNorm,))
    lora = _lora_params(model)
    counts = {"total": 0, "trainable": 0, **dict.fromkeys(KINDS, 0)}
    for name, p in model.named_parameters():
        counts["total"] += p.numel()
        if not p.requires_grad:
            continue
        counts["trainable"] += p.numel()
        if name in adapters:
            kind = "adapters"
        elif name in lora:
            kind = "lora"
        elif name in norms:
            kind = "layernorm"
        elif name.startswith(HEAD_PREFIX) or (pooler is not None and name.startswith(pooler)):
            kind = "head"
        elif name.startswith(layer_prefix):
            kind = "layers"
        else:
            kind = "embeddings"
        counts[kind] += p.numel()
    return counts


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes, by name (views, not copies): trainable parameters, adapter buffers (BatchNorm)."""
    state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    for prefix, module in model.named_modules():
        if isinstance(module, Adapter):
            state.update({f"{prefix}.{n}": b for n, b in module.named_buffers()})
    return state
