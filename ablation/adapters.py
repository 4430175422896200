"""Houlsby adapters: the module, where it goes in each architecture, freezing, the ablation switch."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# Each adapter wraps the dropout that follows a sub-layer's output projection: both architectures
# compute LayerNorm(dropout(proj(x)) + residual), so the wrapped dropout's output is exactly the
# paper's position (after projection and dropout, before the residual add and LayerNorm).
POSITION_PATHS = {
    "bert": {"attention": "attention.output.dropout", "output": "output.dropout"},
    "roberta": {"attention": "attention.output.dropout", "output": "output.dropout"},
    "mpnet": {"attention": "attention.dropout", "output": "output.dropout"},
}
HEAD_PREFIX = "classifier."

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "swish": nn.SiLU}


class Adapter(nn.Module):
    """Bottleneck adapter h + up(act(down(h))) with 2md + d + m parameters."""

    def __init__(self, d: int, m: int, init_std: float = 1e-3, activation: str = "gelu") -> None:
        super().__init__()
        self.down = nn.Linear(d, m)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(m, d)
        self.reset_parameters(init_std)

    def reset_parameters(self, init_std: float) -> None:
        """Weights ~ N(0, init_std) truncated at +-2 init_std (as the official code); biases zero."""
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, mean=0.0, std=init_std, a=-2 * init_std, b=2 * init_std)
            nn.init.zeros_(linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Add the bottleneck's output to its input."""
        return h + self.up(self.act(self.down(h)))


class AdapterLayer(nn.Module):
    """Wraps a base layer (PEFT's base_layer idiom) and applies an adapter to its output when active."""

    def __init__(self, base_layer: nn.Module, adapter: Adapter, layer: int, position: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.layer = layer
        self.position = position
        self.active = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base layer, then the adapter unless this slot is ablated."""
        h = self.base_layer(x)
        return self.adapter(h) if self.active else h


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a *ForSequenceClassification model."""
    return model.base_model.encoder.layer


def inject_adapters(
    model: nn.Module,
    family: str,
    size: int,
    init_std: float = 1e-3,
    activation: str = "gelu",
    positions: Iterable[str] = ("attention", "output"),
) -> dict[tuple[int, str], AdapterLayer]:
    """Wrap each layer's post-projection dropout(s) with an adapter; returns them by (layer, position)."""
    if family not in POSITION_PATHS:
        raise ValueError(f"family={family!r}: adapters are placed for {sorted(POSITION_PATHS)}")
    d = model.config.hidden_size
    slots = {}
    for i, layer in enumerate(encoder_layers(model)):
        for position in positions:
            parent_path, _, attr = POSITION_PATHS[family][position].rpartition(".")
            parent = layer.get_submodule(parent_path)
            base = getattr(parent, attr)
            if isinstance(base, AdapterLayer):
                raise RuntimeError(f"layer {i} {position}: adapters are already injected")
            slot = AdapterLayer(base, Adapter(d, size, init_std, activation), i, position)
            setattr(parent, attr, slot)
            slots[(i, position)] = slot
    return slots


def adapter_slots(model: nn.Module) -> dict[tuple[int, str], AdapterLayer]:
    """Every injected adapter slot by (layer, position)."""
    return {(m.layer, m.position): m for m in model.modules() if isinstance(m, AdapterLayer)}


def freeze_for_adapters(model: nn.Module) -> None:
    """Train adapters, every LayerNorm (embeddings' too) and the head; freeze the rest (pooler included)."""
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(HEAD_PREFIX)
    for module in model.modules():
        if isinstance(module, (Adapter, nn.LayerNorm)):
            module.requires_grad_(True)


def set_ablation(model: nn.Module, layers: Iterable[int] = (), positions: str = "both") -> None:
    """Deactivate the adapters of the given layers (one position or both); activate all others."""
    off = set(layers)
    for (layer, position), slot in adapter_slots(model).items():
        slot.active = not (layer in off and positions in ("both", position))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts, the trainable ones split into adapters/layernorm/head."""
    kind = {id(p): "head" if n.startswith(HEAD_PREFIX) else "other" for n, p in model.named_parameters()}
    for module in model.modules():
        if isinstance(module, (Adapter, nn.LayerNorm)):
            label = "adapters" if isinstance(module, Adapter) else "layernorm"
            kind.update({id(p): label for p in module.parameters()})
    counts = {"total": 0, "trainable": 0, "adapters": 0, "layernorm": 0, "head": 0, "other": 0}
    for p in model.parameters():
        counts["total"] += p.numel()
        if p.requires_grad:
            counts["trainable"] += p.numel()
            counts[kind[id(p)]] += p.numel()
    return counts


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (requires_grad), by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
