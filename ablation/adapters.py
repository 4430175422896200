"""Houlsby adapters and their variants: the module, its placement in a model, the ablation switch.

Knows nothing of Hydra: `inject_adapters` reads the options of an `AdapterConfig` (a plain dataclass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ablation.families import family, layer_stack, layers_prefix

if TYPE_CHECKING:
    from ablation.config import AdapterConfig

# Each adapter slot wraps the module whose output is a sub-layer's output before the residual add
# (`Family.slots`): in an encoder, LayerNorm(dropout(proj(x)) + residual), the dropout after the projection; in
# a pre-norm decoder, x + proj(...), the projection itself. Either way the wrapped module's output is the
# paper's position (after the projection, before the residual add). A parallel adapter reads the residual
# stream entering the sub-layer: the input of `Family.inputs` (an encoder's sub-layer's first module, a
# decoder's pre-norm), which a tap hands to the slot. A "normed" adapter (Pfeiffer's, AdapterHub's
# SeqBnConfig) reads the sub-layer's LayerNorm of s + that input (the residual) and adds its output to s:
# LN(s + delta(LN(s + r)) + r); only post-norm blocks have that norm.

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "swish": nn.SiLU}


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over every token of the batch (statistics per feature over batch x sequence)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a [..., d] tensor with statistics over all leading positions."""
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def _norm(kind: str, d: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(d)
    if kind == "batchnorm":
        return TokenBatchNorm(d)
    return nn.Identity()


class Adapter(nn.Module):
    """Bottleneck delta(x) = scaling * up(act(... act(down(norm(x))))), combined with the sub-layer output s.

    combine="add": s + delta(x); combine="multiply": s * (1 + delta(x)). Serial adapters have x = s
    (the Houlsby adapter s + up(act(down(s))), 2md + d + m parameters); parallel ones get the
    sub-layer's input as x. A zero up-projection makes every variant the identity on s.
    """

    def __init__(self, d: int, cfg: AdapterConfig) -> None:
        super().__init__()
        self.norm = _norm(cfg.norm, d)
        self.down = nn.Linear(d, cfg.size)
        self.hidden = nn.ModuleList(nn.Linear(cfg.size, cfg.size) for _ in range(cfg.depth - 1))
        self.act = _ACTIVATIONS[cfg.activation]()
        self.up = nn.Linear(cfg.size, d)
        self.combine = cfg.combine
        self.scaling = cfg.scaling
        self.reset_parameters(cfg.init_std)

    def reset_parameters(self, init_std: float) -> None:
        """Weights ~ N(0, init_std) truncated at +-2 init_std (as the official code); biases zero."""
        for linear in (self.down, *self.hidden, self.up):
            nn.init.trunc_normal_(linear.weight, mean=0.0, std=init_std, a=-2 * init_std, b=2 * init_std)
            nn.init.zeros_(linear.bias)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck's output for input x, times the scaling."""
        z = self.act(self.down(self.norm(x)))
        for linear in self.hidden:
            z = self.act(linear(z))
        return self.up(z) * self.scaling

    def forward(self, s: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Combine the sub-layer output s with delta(x); x defaults to s (a serial adapter)."""
        delta = self.delta(s if x is None else x)
        return s + delta if self.combine == "add" else s * (1 + delta)


SLOT_MODES = ("on", "off", "mean", "scale")


class AdapterLayer(nn.Module):
    """Wraps a base layer (PEFT's base_layer idiom) and applies an adapter to its output.

    The slot's contribution c = adapter(s) - s is added in full (mode "on"), not at all ("off"), replaced by
    its mean over the validation tokens of the intact model ("mean", `mean` set by the evaluator) or scaled
    by `alpha` ("scale"). `on_output`, when set, is handed (slot, s, the slot's output) on every "on" or "scale"
    forward.
    `position` is the sub-layer (what ablate.positions selects), `name` the slot within the layer: the
    position for a bottleneck adapter (one per sub-layer), the wrapped projection for LoRA (LoraSlot).
    """

    def __init__(
        self,
        base_layer: nn.Module,
        adapter: Adapter,
        layer: int,
        position: str,
        parallel: bool = False,
        norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.layer = layer
        self.position = position
        self.name = position
        self.parallel = parallel
        # placement "normed": the adapter reads norm(s + residual), the sub-layer's own LayerNorm (a tuple:
        # the LayerNorm belongs to the layer, not to the slot)
        self._norm = (norm,) if norm is not None else ()
        self.mode = "on"
        self.alpha = 1.0
        self.mean: torch.Tensor | None = None  # [d]: the contribution's mean under the intact model
        self.on_output: Callable[[AdapterLayer, torch.Tensor, torch.Tensor], None] | None = None
        self.source: torch.Tensor | None = None  # parallel: the sub-layer's input, set by its InputTap

    @property
    def active(self) -> bool:
        """True unless the adapter is switched off (removed)."""
        return self.mode != "off"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base layer, then the adapter's contribution as the slot's mode says."""
        h = self.base_layer(x)
        source, self.source = self.source, None  # never let one forward's input leak into the next
        if self.mode == "off":
            return h
        if self.mode == "mean":
            if self.mean is None:
                raise RuntimeError(
                    f"layer {self.layer} {self.position}: mean ablation before the means exist"
                )
            return h + self.mean.to(h.dtype)
        if self.parallel and source is None:
            raise RuntimeError(f"layer {self.layer} {self.position}: parallel adapter got no sub-layer input")
        if self._norm:
            source = self._norm[0](h + source)  # the residual sum, normalised as the layer will
        out = self.adapter(h, source) if self.parallel else self.adapter(h)
        if self.mode == "scale":
            # alpha 0 and 1 are removal and the intact slot exactly (h + 1 * (out - h) rounds otherwise)
            out = out if self.alpha == 1.0 else h if self.alpha == 0.0 else h + self.alpha * (out - h)
        if self.on_output is not None:
            self.on_output(self, h, out)
        return out

    def weight_norms(self) -> tuple[float, float]:
        """Frobenius norms of the down- and up-projection weights."""
        return _norm_of(self.adapter.down.weight), _norm_of(self.adapter.up.weight)


def _norm_of(weight: torch.Tensor) -> float:
    return float(weight.detach().float().norm())


class LoraSlot(AdapterLayer):
    """Wraps one of PEFT's LoRA layers (`peft.tuners.lora.Linear`, itself wrapping the pretrained linear
    layer) as an ablation slot: "on" is PEFT's own forward, "off" the pretrained layer alone, and the
    contribution c = W x + B A x - W x that "mean" and "scale" act on is PEFT's output minus the base's.
    """

    def __init__(self, base_layer: nn.Module, layer: int, position: str, name: str) -> None:
        nn.Module.__init__(self)
        self.base_layer = base_layer  # the PEFT LoRA layer
        self.layer, self.position, self.name = layer, position, name
        self.parallel = False
        self.mode, self.alpha = "on", 1.0
        self.mean: torch.Tensor | None = None
        self.on_output: Callable[[AdapterLayer, torch.Tensor, torch.Tensor], None] | None = None
        self.source = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """PEFT's forward, or the pretrained layer's with the LoRA contribution as the mode says."""
        if self.mode == "on" and self.on_output is None:
            return self.base_layer(x)
        h = self.base_layer.get_base_layer()(x)
        if self.mode == "off" or (self.mode == "scale" and self.alpha == 0.0):
            return h
        if self.mode == "mean":
            if self.mean is None:
                raise RuntimeError(f"layer {self.layer} {self.name}: mean ablation before the means exist")
            return h + self.mean.to(h.dtype)
        out = self.base_layer(x)
        if self.mode == "scale" and self.alpha != 1.0:
            out = h + self.alpha * (out - h)
        if self.on_output is not None:
            self.on_output(self, h, out)
        return out

    def weight_norms(self) -> tuple[float, float]:
        """Frobenius norms of LoRA's A (down) and B (up) weights."""
        peft_layer = self.base_layer
        (adapter,) = peft_layer.active_adapters
        return _norm_of(peft_layer.lora_A[adapter].weight), _norm_of(peft_layer.lora_B[adapter].weight)


class NormSwitch(nn.Module):
    """Wraps a layer's trained norm (LayerNorm or RMSNorm, with or without bias); with `pretrained` set, the
    same module's forward with its pretrained parameters."""

    def __init__(self, base_layer: nn.Module, pretrained: dict[str, torch.Tensor], layer: int, position: str):
        super().__init__()
        self.base_layer = base_layer
        self._names = tuple(pretrained)  # the norm's parameter names: weight (and bias)
        for name, value in pretrained.items():
            self.register_buffer(f"pretrained_{name}", value.detach().clone(), persistent=False)
        self.layer = layer
        self.position = position
        self.pretrained = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The trained norm, or the same normalisation with the pretrained parameters."""
        if not self.pretrained:
            return self.base_layer(x)
        weights = {name: getattr(self, f"pretrained_{name}") for name in self._names}
        return torch.func.functional_call(self.base_layer, weights, (x,))


class InputTap(nn.Module):
    """Wraps a sub-layer's first module and hands its input to that sub-layer's parallel adapter slot."""

    def __init__(self, base_layer: nn.Module, slot: AdapterLayer) -> None:
        super().__init__()
        self.base_layer = base_layer
        self._slot = (slot,)  # a tuple, so the slot is not registered twice in the module tree

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        """Record the input for the slot, then run the base layer unchanged."""
        self._slot[0].source = hidden_states
        return self.base_layer(hidden_states, *args, **kwargs)


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent_path), attr, module)


def inject_adapters(
    model: nn.Module, family_name: str, cfg: AdapterConfig
) -> dict[tuple[int, str], AdapterLayer]:
    """Wrap the sub-layer output(s) of each layer in cfg.layers (None: every layer) with an adapter (the
    family's slots); returns the slots by (layer, position)."""
    slots_of, inputs_of = family(family_name).slots, family(family_name).inputs
    refused = family(family_name).refused.get(f"adapter.placement={cfg.placement}")
    if refused:
        raise ValueError(f"adapter.placement={cfg.placement} on model.family={family_name}: {refused}")
    if adapter_slots(model):
        raise RuntimeError("adapters are already injected: remove_adapters(model) first")
    d = model.config.hidden_size
    parallel = cfg.placement in ("parallel", "normed")  # both read the sub-layer's input (the residual)
    slots = {}
    layers = layer_stack(model)
    chosen = range(len(layers)) if cfg.layers is None else cfg.layers
    if not set(chosen) <= set(range(len(layers))):
        raise ValueError(f"adapter.layers={cfg.layers}: the model has {len(layers)} layers")
    for i, layer in enumerate(layers):
        if i not in chosen:
            continue
        for position in cfg.positions:
            path = slots_of[position]
            norm = (
                layer.get_submodule(family(family_name).norms[position][0])
                if cfg.placement == "normed"
                else None
            )
            slot = AdapterLayer(layer.get_submodule(path), Adapter(d, cfg), i, position, parallel, norm)
            _replace(layer, path, slot)
            if parallel:
                path = inputs_of[position]
                _replace(layer, path, InputTap(layer.get_submodule(path), slot))
            slots[(i, position)] = slot
    return slots


def inject_lora(
    model: nn.Module, family_name: str, r: int, alpha: float, targets: Iterable[str], dropout: float
) -> dict[tuple[int, str], LoraSlot]:
    """Add PEFT's LoRA to each layer's `targets` (the family's names: query, value, ...; q_proj, ...) and wrap each LoRA
    layer in a LoraSlot; returns the slots by (layer, target). The LoRA weights are PEFT's init (A random,
    B zero: the model starts as the pretrained one)."""
    from peft import LoraConfig, inject_adapter_in_model

    if adapter_slots(model):
        raise RuntimeError("adapters are already injected: remove_adapters(model) first")
    paths = family(family_name).lora_targets
    unknown = sorted(set(targets) - set(paths))
    if unknown:
        raise ValueError(f"LoRA targets {unknown}: model.family={family_name} has {list(paths)}")
    layers = layer_stack(model)
    where = {f"{layers_prefix(model)}{i}.{paths[t][0]}": (i, t) for i in range(len(layers)) for t in targets}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=sorted(where))
    inject_adapter_in_model(config, model)
    model.train(model.training)  # PEFT's new dropout modules start in training mode whatever the model's
    slots = {}
    for path, (i, target) in where.items():
        slot = LoraSlot(model.get_submodule(path), i, paths[target][1], target)
        _replace(model, path, slot)
        slots[(i, target)] = slot
    return slots


def remove_adapters(model: nn.Module) -> None:
    """Put every wrapped module back in its place: the model as it was before inject_adapters/wrap_norms/
    inject_lora."""
    for name, module in reversed(list(model.named_modules())):  # the innermost first: wrappers nest
        if isinstance(module, LoraSlot):
            _replace(model, name, module.base_layer.get_base_layer())
        elif isinstance(module, (AdapterLayer, InputTap, NormSwitch)):
            _replace(model, name, module.base_layer)


def wrap_norms(model: nn.Module, family_name: str, pretrained: dict[str, torch.Tensor]) -> None:
    """Wrap each layer's norms (the family's, per position) in a NormSwitch holding their pretrained
    parameters (`pretrained`: a state dict of the unwrapped model, e.g. the weights as loaded), so that an
    ablation can restore them."""
    if any(isinstance(m, NormSwitch) for m in model.modules()):
        raise RuntimeError("norms are already wrapped: remove_adapters(model) first")
    prefix = layers_prefix(model)
    for i, layer in enumerate(layer_stack(model)):
        for position, paths in family(family_name).norms.items():
            for path in paths:
                # a parallel adapter's tap on a decoder's pre-norm stays outside: it reads the norm's input
                tapped = isinstance(layer.get_submodule(path), InputTap)
                where = f"{path}.base_layer" if tapped else path
                norm = layer.get_submodule(where)
                own = {n: pretrained[f"{prefix}{i}.{path}.{n}"] for n, _ in norm.named_parameters()}
                _replace(layer, where, NormSwitch(norm, own, i, position))


def adapter_slots(model: nn.Module) -> dict[tuple[int, str], AdapterLayer]:
    """Every injected adapter slot by (layer, name): the position for bottleneck adapters, the target for
    LoRA."""
    return {(m.layer, m.name): m for m in model.modules() if isinstance(m, AdapterLayer)}


def norm_switches(model: nn.Module) -> list[NormSwitch]:
    """Every wrapped norm (each knows its layer and position)."""
    return [m for m in model.modules() if isinstance(m, NormSwitch)]


def set_ablation(
    model: nn.Module,
    layers: Iterable[int] = (),
    positions: str = "both",
    mode: str = "off",
    alpha: float = 0.0,
    norms: str = "trained",
) -> None:
    """Ablate the adapter slots of the given layers (one position or both): switch them to `mode` ("off":
    removed, "mean", "scale" by `alpha`) and, with norms="pretrained", give those layers' LayerNorms of the
    same positions their pretrained weights. Every other slot and LayerNorm is set back to intact."""
    if mode not in SLOT_MODES[1:]:
        raise ValueError(f"mode={mode!r}: one of {SLOT_MODES[1:]}")
    off = set(layers)
    for slot in adapter_slots(model).values():
        ablated = slot.layer in off and slot_ablated(positions, slot.position)
        slot.mode, slot.alpha = (mode, alpha) if ablated else ("on", 1.0)
    switches = norm_switches(model)
    if norms == "pretrained" and off and not switches:
        raise RuntimeError("norms='pretrained' needs the LayerNorms wrapped first (wrap_norms)")
    for norm in switches:
        norm.pretrained = (
            norms == "pretrained" and norm.layer in off and slot_ablated(positions, norm.position)
        )


def slot_ablated(positions: str, position: str) -> bool:
    """True when ablate.positions=`positions` ablates a slot (or norm) of sub-layer `position`."""
    return positions in ("both", position)
