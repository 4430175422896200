"""Every ablation cell estimated from one forward and one backward pass per label: attribution patching.

Ablating an adapter slot changes its output by delta: removed (`zero`, and `keep` outside its range), minus
its contribution c; `scale` by alpha, (alpha - 1) c; `mean`, its mean contribution minus c. To first order
the logits move by the gradient of each logit at the slot's output times delta, summed over the tokens (Nanda
2023, "attribution patching"; Kramar et al. 2024). The sum over a cell's slots is its estimated change, so
the gradients of the intact model give every cell at once: per example and label, one number per layer, and
a cell is a difference of their running sums.

What it misses is what a first-order estimate misses: removing the adapters of one layer changes the input
of every later one (interactions between layers), and a logit that saturates. The estimate is exact where
the logits are linear in the slots' outputs; how far that holds for a trained model is measured against the
exact triangle (docs/deep.md), never assumed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ablation.adapters import AdapterLayer, adapter_slots, set_ablation, slot_ablated
from ablation.models import Stages
from ablation.precision import autocast

# Rows x padded width of one backward's chunk of a batch: the graph of a 30-layer decoder at 1,024 tokens
# holds about 2 GB (the exact path holds no graph, so its batches can be larger).
CHUNK_TOKENS = 1024
# ablate.estimate -> the gradient points: None, the intact model's (attribution patching); k, integrated
# gradients over k steps of the gate (k forward and backward passes)
STEPS = {"attribution": None, "integrated": 4}


def slot_change(
    slot: AdapterLayer, s: torch.Tensor, out: torch.Tensor, mode: str, alpha: float
) -> torch.Tensor:
    """What ablating the slot in `mode` changes its output by (the ablated output minus `out`)."""
    c = out - s
    if mode == "off":
        return -c
    if mode == "scale":
        return (alpha - 1.0) * c
    if mode == "mean":
        return slot.mean.to(c.dtype) - c
    raise ValueError(f"mode={mode!r}: one of off, scale, mean")


def gates(mode: str, alpha: float, steps: int) -> list[float]:
    """The gate values the integrated estimate takes its gradients at: the midpoints of `steps` equal steps
    from 1 (intact) to the ablation's (0 removed, alpha scaled)."""
    if mode == "mean":
        raise ValueError(
            "the integrated estimate follows a gate from 1 to 0 or alpha: not for ablate.kind=mean"
        )
    end = alpha if mode == "scale" else 0.0
    return [1.0 - (1.0 - end) * (j + 0.5) / steps for j in range(steps)]


def layer_effects(
    stages: Stages,
    batches: Sequence[dict[str, torch.Tensor]],
    positions: str,
    mode: str,
    alpha: float,
    precision: str,
    device: str,
    steps: int | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per batch: the intact logits minus label 0's [n, K], and each layer's estimated change of them when its
    slots of `positions` are ablated in `mode` [L, n, K] (label 0's column is 0: only differences decide).

    steps None: attribution patching, the gradients of the intact model times each slot's change. steps k:
    integrated gradients, every slot of `positions` in every layer gated together from 1 to the ablation's
    value, the gradient times the slot's contribution averaged over k midpoints: the slots' changes then add
    up to the all-layers cell's (to the accuracy of k steps), where the intact gradients overshoot it.
    """
    model, L = stages.model, stages.num_layers
    slots = adapter_slots(model).values()
    seen: list[tuple[AdapterLayer, torch.Tensor, torch.Tensor]] = []
    points = [1.0] if steps is None else gates(mode, alpha, steps)
    span = 1.0 - (alpha if mode == "scale" else 0.0)  # the gate's path length, 1 to its end

    def keep_output(slot: AdapterLayer, s: torch.Tensor, out: torch.Tensor) -> None:
        if slot_ablated(positions, slot.position):
            seen.append((slot, s, out))

    logits_out, effects_out = [], []
    for slot in slots:
        slot.on_output = keep_output
    try:
        for batch in batches:
            rows, width = batch["input_ids"].shape
            step = max(1, CHUNK_TOKENS // width)
            logits_parts, effect_parts = [], []
            for start in range(0, rows, step):
                chunk = {k: v[start : start + step] for k, v in batch.items()}
                effect = 0.0
                for gate in points:
                    set_ablation(model, range(L) if gate != 1.0 else (), positions, "scale", gate)
                    logits, change = _gradient_pass(stages, chunk, seen, precision, device)
                    if steps is None:  # at the intact model
                        effect = change(lambda slot, s, out: slot_change(slot, s, out, mode, alpha))
                    else:  # the gradient times the contribution c = (out - s) / gate, along the gate's path
                        effect += change(lambda slot, s, out, g=gate: -(span / steps) * (out - s) / g)
                if steps is not None:  # the intact logits, not the first gate's
                    set_ablation(model, ())
                    with torch.no_grad(), autocast(precision, device):
                        logits = _logit_differences(stages, chunk)
                logits_parts.append(logits.detach())
                effect_parts.append(effect)
            logits_out.append(torch.cat(logits_parts))
            effects_out.append(torch.cat(effect_parts, dim=1))
    finally:
        set_ablation(model, ())
        for slot in slots:
            slot.on_output = None
        seen.clear()
    return logits_out, effects_out


def _gradient_pass(stages: Stages, chunk: dict, seen: list, precision: str, device: str):
    """One forward of a chunk with a graph, the slots' (slot, s, output) collected in `seen`; returns the logit
    differences [n, K] and a function that, given each slot's change of output, sums gradient x change per
    layer [L, n, K] (one backward per label difference)."""
    L = stages.num_layers
    seen.clear()
    with torch.enable_grad(), autocast(precision, device):
        differences = _logit_differences(stages, chunk)
    collected = list(seen)

    def change(delta) -> torch.Tensor:
        n, K = differences.shape
        effect = torch.zeros(L, n, K, device=differences.device)
        outs = [out for _, _, out in collected]
        for k in range(1, K):
            grads = torch.autograd.grad(differences[:, k].sum(), outs, retain_graph=k < K - 1)
            for (slot, s, out), g in zip(collected, grads, strict=True):
                d = delta(slot, s.detach().float(), out.detach().float())
                effect[slot.layer, :, k] += (g.float() * d).sum(dim=(1, 2))
        return effect

    return differences, change


def _logit_differences(stages: Stages, chunk: dict) -> torch.Tensor:
    """The model's forward on a chunk, as the cached evaluation runs it: its logits minus label 0's [n, K]; with
    gradients enabled, a graph through every layer whatever trains."""
    h, ctx = stages.embed(chunk)
    if torch.is_grad_enabled():
        h = h.detach().requires_grad_(True)
    for i in range(stages.num_layers):
        h = stages.layer(i, h, ctx, pooled_only=i == stages.num_layers - 1)
    logits = stages.head(h, ctx).float()
    return logits - logits[:, :1]


def cell_predictions(
    logits: np.ndarray, effects: np.ndarray, first: int, last: int, keep: bool = False
) -> np.ndarray:
    """Predicted labels with layers first..last ablated (keep: every other layer), from the intact logits
    [N, K] and the per-layer effects [L, N, K]."""
    span = effects[first : last + 1].sum(axis=0)
    change = effects.sum(axis=0) - span if keep else span
    return (logits + change).argmax(axis=-1)
