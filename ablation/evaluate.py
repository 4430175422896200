"""Evaluation of the intact model and of ablation cells, sharing hidden states across cells.

The intact model's hidden states at every layer boundary are computed once. Cell (first, last)
starts from the state entering layer `first`, runs layers first..last with their adapters
removed, then the remaining layers intact. When cells with the same `first` come in increasing
`last`, the ablated chain is extended by one layer instead of recomputed, so all L(L+1)/2 cells
of an L-layer model cost sum_{n=1..L} n(n+1)/2 layer passes (364 for L=12) instead of L per cell.
The last layer runs its feed-forward at the first token only, the one the head reads.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ablation.adapters import set_ablation
from ablation.data import Encoded, collate, eval_batches, to_device
from ablation.models import Stages
from ablation.precision import autocast


class Evaluator:
    """Predictions on one tokenized split, for the intact model and any ablation cell."""

    def __init__(
        self, stages: Stages, data: Encoded, batch_size: int, precision: str, device: str = "cpu"
    ) -> None:
        self.stages = stages
        self.data = data
        self.precision = precision
        self.device = device
        self.index = eval_batches(data, batch_size)
        self.batches = [to_device(collate(data, i), device) for i in self.index]
        self.order = np.concatenate(self.index)
        self.layer_passes = 0  # counts one layer over the whole split as 1/L of a full pass
        self._ctx: list[dict] | None = None
        self._boundary: list[list[torch.Tensor]] | None = None  # [layer k][batch] state entering k
        self._chain: tuple | None = None  # (first, positions, last, [state after `last` per batch])

    @property
    def labels(self) -> np.ndarray:
        """Gold labels in dataset order."""
        return self.data.labels

    def _layer(self, i: int, h: torch.Tensor, b: int) -> torch.Tensor:
        """Layer i on batch b's states; the last layer only as far as the head needs."""
        return self.stages.layer(i, h, self._ctx[b], first_token_only=i == self.stages.num_layers - 1)

    def _unsort(self, preds: list[torch.Tensor]) -> np.ndarray:
        out = np.empty(len(self.order), dtype=np.int64)
        out[self.order] = torch.cat(preds).cpu().numpy()  # the one copy to the host per pass
        return out

    @torch.inference_mode()
    def _run_from(self, k: int, states: list[torch.Tensor]) -> np.ndarray:
        """Run layers k..L-1 from per-batch states and return predictions (dataset order)."""
        preds = []
        with autocast(self.precision, self.device):
            for b, h in enumerate(states):
                for i in range(k, self.stages.num_layers):
                    h = self._layer(i, h, b)
                preds.append(self.stages.head(h).argmax(-1))
        self.layer_passes += self.stages.num_layers - k
        return self._unsort(preds)

    @torch.inference_mode()
    def intact(self) -> np.ndarray:
        """Predictions of the model with every adapter active; caches all boundary states."""
        set_ablation(self.stages.model)
        L = self.stages.num_layers
        boundary = [[] for _ in range(L + 1)]
        self._ctx, preds = [], []
        with autocast(self.precision, self.device):
            for b, batch in enumerate(
                tqdm(self.batches, desc="eval intact", leave=False, dynamic_ncols=True)
            ):
                h, ctx = self.stages.embed(batch)
                self._ctx.append(ctx)
                boundary[0].append(h)
                for i in range(L):
                    h = self._layer(i, h, b)
                    boundary[i + 1].append(h)
                preds.append(self.stages.head(h).argmax(-1))
        self.layer_passes += L
        self._boundary = boundary
        return self._unsort(preds)

    @torch.inference_mode()
    def cell(self, first: int, last: int, positions: str = "both") -> np.ndarray:
        """Predictions with the adapters of layers first..last removed (shared computation)."""
        if self._boundary is None:
            self.intact()
        set_ablation(self.stages.model, range(first, last + 1), positions)
        chain = self._chain
        if chain and chain[:2] == (first, positions) and first - 1 <= chain[2] <= last:
            start, states = chain[2] + 1, chain[3]
        else:
            start, states = first, self._boundary[first]
        with autocast(self.precision, self.device):
            for i in range(start, last + 1):
                states = [self._layer(i, h, b) for b, h in enumerate(states)]
        self.layer_passes += last + 1 - start
        self._chain = (first, positions, last, states)
        preds = self._run_from(last + 1, states)
        set_ablation(self.stages.model)
        return preds

    @torch.inference_mode()
    def from_scratch(
        self, first: int | None = None, last: int | None = None, positions: str = "both"
    ) -> np.ndarray:
        """Reference: a plain forward pass of the whole model with those adapters removed."""
        layers = range(first, last + 1) if first is not None else ()
        set_ablation(self.stages.model, layers, positions)
        preds = []
        with autocast(self.precision, self.device):
            for batch in self.batches:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                preds.append(self.stages.model(**inputs).logits.argmax(-1))
        set_ablation(self.stages.model)
        return self._unsort(preds)
