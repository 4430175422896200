"""What each training method trains: adapters (+ LayerNorms + head), the top k layers, LayerNorms only, all,
the classification head alone on the frozen encoder, or LoRA (+ head).

Knows nothing of Hydra: `prepare` reads the method's and the adapter's settings from plain dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ablation.adapters import Adapter, LoraSlot, adapter_slots, inject_adapters, inject_lora
from ablation.families import TWO_LAYER_HEAD, family_of, is_head, is_norm, layer_stack, layers_prefix

if TYPE_CHECKING:
    from ablation.config import AdapterConfig, MethodConfig

PARAMETER_GROUPS = ("adapters", "lora", "layernorm", "head", "layers", "embeddings")


def _pooler_prefix(model: nn.Module) -> str | None:
    """BERT's pooler sits between the last layer and the classifier; MPNet/RoBERTa heads have none."""
    if getattr(model.base_model, "pooler", None) is None:
        return None
    return f"{model.base_model_prefix}.pooler."


def _module_params(model: nn.Module, which: Callable[[nn.Module], bool]) -> set[str]:
    names = set()
    for prefix, module in model.named_modules():
        if which(module):
            names.update(f"{prefix}.{n}" for n, _ in module.named_parameters())
    return names


def _is_adapter(module: nn.Module) -> bool:
    return isinstance(module, Adapter)


def _norm_params(model: nn.Module) -> set[str]:
    """The model's own norms (LayerNorm, RMSNorm), not an adapter's."""
    return _module_params(model, is_norm) - _module_params(model, _is_adapter)


def trained_names(
    model: nn.Module,
    method: str,
    k: int | None = None,
    layernorms: str | None = None,
    head: str | None = None,
) -> set[str]:
    """Names of the parameters `method` trains.

    The classifier is the head outside the base model (`classifier`, a decoder's `score`); LayerNorms are the
    model's norms (a decoder's RMSNorms). adapters: the adapters, the LayerNorms `layernorms` names (None: every
    one, the embeddings' or a decoder's final norm too) and the classifier; layernorm: every LayerNorm and the
    classifier; top_k: layers L-k..L-1 and everything above
    them (BERT's pooler, a decoder's final norm, the classifier); full: everything; head: the classifier alone (the frozen encoder's
    features); lora: the LoRA weights, the LayerNorms `layernorms` names (None: none) and the classifier.
    layernorms="adapted": the LayerNorms of the layers that have adapters (or LoRA). head="pooler": BERT's
    pooler trains with the classifier (None: frozen, as in the official code); head="lm": no head trains (a
    decoder's `score` holds its LM head's rows of the label words, ablation.models.use_label_words).
    """
    names = [n for n, _ in model.named_parameters()]
    trained = {n for n in names if is_head(model, n)} if head != "lm" else set()  # lm: the LM's own rows
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
        return trained | _norm_params(model)
    if method in ("adapters", "lora"):
        own = _module_params(model, _is_adapter) if method == "adapters" else _lora_params(model)
        which = layernorms or ("train" if method == "adapters" else "freeze")
        return trained | own | _layernorms(model, which)
    if method == "top_k":
        L = len(layer_stack(model))
        if k is None or not 1 <= k <= L:
            raise ValueError(f"method.k={k!r}: the model has L={L} layers, use 1..{L}")
        above = tuple(f"{layers_prefix(model)}{i}." for i in range(L - k, L))
        if pooler is not None:
            above += (pooler,)
        if family_of(model).final_norm is not None:  # a decoder's norm after its last layer
            above += (f"{model.base_model_prefix}.{family_of(model).final_norm}.",)
        return trained | {n for n in names if n.startswith(above)}
    raise ValueError(f"method={method!r}: one of adapters, top_k, layernorm, full, head, lora")


def _layernorms(model: nn.Module, which: str) -> set[str]:
    """The LayerNorm parameters of `which`: train (all), adapted (the layers with adapters or LoRA), freeze."""
    norms = _norm_params(model)
    if which == "train":
        return norms
    if which == "freeze":
        return set()
    if which != "adapted":
        raise ValueError(f"layernorms={which!r}: one of train, adapted, freeze")
    layers = sorted({layer for layer, _ in adapter_slots(model)})
    prefixes = tuple(f"{layers_prefix(model)}{i}." for i in layers)
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
        if adapter.load is not None and family_of(model).adapterhub_head == TWO_LAYER_HEAD:
            two_layer_head(model)
    if method.name == "lora":
        inject_lora(model, family, method.r, method.alpha, method.target, method.dropout)
    freeze(model, method.name, method.k, method.layernorms, method.head)
    return count_parameters(model)


def two_layer_head(model: nn.Module) -> None:
    """Make a decoder's head AdapterHub's classification head: dense, tanh, out (with biases) in place of the
    single `score` layer, read at the same last non-pad token (its weights come from the imported folder)."""
    name = family_of(model).head
    score = getattr(model, name)
    hidden, labels = score.in_features, score.out_features
    # a new module, not a wrapper: the folder's head replaces the untrained one whole
    setattr(model, name, nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, labels)))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts, the trainable ones split by kind (PARAMETER_GROUPS)."""
    layer_prefix = layers_prefix(model)
    pooler = _pooler_prefix(model)
    adapters, norms = _module_params(model, _is_adapter), _norm_params(model)
    lora = _lora_params(model)
    counts = {"total": 0, "trainable": 0, **dict.fromkeys(PARAMETER_GROUPS, 0)}
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
        elif is_head(model, name) or (pooler is not None and name.startswith(pooler)):
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
