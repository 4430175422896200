"""What each training method trains: adapters (+ LayerNorms + head), the top k layers, LayerNorms only, all,
the classification head alone on the frozen encoder, or LoRA (+ head).

Knows nothing of Hydra: `prepare` reads the method's and the adapter's settings from plain dataclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ablation.adapters import Adapter, LoraSlot, encoder_layers, inject_adapters, inject_lora

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


def trained_names(model: nn.Module, method: str, k: int | None = None) -> set[str]:
    """Names of the parameters `method` trains.

    adapters: every adapter, every LayerNorm (the embeddings' too) and the classifier (pooler frozen, as
    in the official code); layernorm: the same without adapters; top_k: layers L-k..L-1 and everything
    above them (BERT's pooler, the classifier); full: everything; head: the classifier alone (the frozen
    encoder's features, pretrained LayerNorms included; BERT's pooler frozen as for adapters); lora: the
    LoRA weights and the classifier.
    """
    names = [n for n, _ in model.named_parameters()]
    head = {n for n in names if n.startswith(HEAD_PREFIX)}
    if method == "full":
        return set(names)
    if method == "head":
        return head
    if method == "lora":
        return head | _lora_params(model)
    if method in ("adapters", "layernorm"):
        kinds = (Adapter, nn.LayerNorm) if method == "adapters" else (nn.LayerNorm,)
        return head | _module_params(model, kinds)
    if method == "top_k":
        L = len(encoder_layers(model))
        if k is None or not 1 <= k <= L:
            raise ValueError(f"method.k={k!r}: the model has L={L} layers, use 1..{L}")
        above = tuple(f"{_layers_prefix(model)}{i}." for i in range(L - k, L))
        if _pooler_prefix(model) is not None:
            above += (_pooler_prefix(model),)
        return head | {n for n in names if n.startswith(above)}
    raise ValueError(f"method={method!r}: one of adapters, top_k, layernorm, full, head, lora")


def _lora_params(model: nn.Module) -> set[str]:
    """The LoRA weights (A and B) of every LoraSlot, not the pretrained layer they wrap."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, LoraSlot):
            names.update(
                f"{prefix}.{n}" for n, _ in module.named_parameters() if ".lora_A." in n or ".lora_B." in n
            )
    return names


def freeze(model: nn.Module, method: str, k: int | None = None) -> None:
    """Set requires_grad on exactly the parameters `method` trains."""
    train = trained_names(model, method, k)
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
    freeze(model, method.name, method.k)
    pooler = _pooler_prefix(model)
    if adapter is not None and adapter.load is not None and pooler is not None:
        # an imported AdapterHub head is dense-tanh-out: on BERT its first layer is the pooler, so the pooler
        # belongs to what is stored for the key
        for name, p in model.named_parameters():
            p.requires_grad = p.requires_grad or name.startswith(pooler)
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
