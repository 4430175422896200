"""Evaluation of the intact model and of ablation cells, sharing hidden states across cells.

The intact model's hidden states at every layer boundary are computed once. Cell (first, last)
starts from the state entering layer `first`, runs layers first..last with their adapters
removed, then the remaining layers intact. When cells with the same `first` come in increasing
`last`, the ablated chain is extended by one layer instead of recomputed, so all L(L+1)/2 cells
of an L-layer model cost sum_{n=1..L} n(n+1)/2 layer passes (364 for L=12) instead of L per cell.
The last layer runs its feed-forward at the first token only, the one the head reads.

The boundary states take (L+1) x tokens x d x 4 bytes (about 1 GB on the default task, 50 GB for
bert-base on QQP). When they exceed the memory budget, the split is evaluated shard by shard: for each
shard of examples, its intact states and every requested cell, then the states are freed. The compute
stays at the floor (no cell is evaluated twice) and the predictions are those of the unsharded path.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ablation.adapters import set_ablation
from ablation.data import Encoded, collate, eval_batches, to_device
from ablation.models import Stages
from ablation.precision import autocast

Cell = tuple[int, int] | None  # (first, last) of an ablation, or None for the intact model


def bound_resident_memory() -> None:
    """Make the resident memory follow the live tensors (glibc; elsewhere a no-op). A process-wide setting:
    the process that shards its evaluation makes it once (ablation.session.Process).

    glibc serves a freed large block's size from its heap afterwards (its mmap threshold adapts upwards),
    where freed states stay resident and fragment: a shard's peak grew ~30% past its live states. A fixed
    threshold keeps large blocks (states are MBs) in their own mappings, returned to the OS when freed.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def release_free_memory() -> None:
    """glibc's malloc_trim: return the heap's free pages to the OS between shards (elsewhere a no-op)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):  # musl and macOS have neither
            return libc
    except OSError:
        pass
    return None


class Evaluator:
    """Predictions on one tokenized split, for the intact model and any ablation cell."""

    def __init__(
        self,
        stages: Stages,
        data: Encoded,
        batch_size: int,
        precision: str,
        device: str = "cpu",
        memory_bytes: float = float("inf"),
    ) -> None:
        self.stages = stages
        self.data = data
        self.precision = precision
        self.device = device
        self.index = eval_batches(data, batch_size)
        self.batches = [to_device(collate(data, i), device) for i in self.index]
        self.shards = self._plan_shards(memory_bytes)
        self.layer_passes = 0  # counts one layer over the whole split as 1/L of a full pass
        self._active: list[int] = []  # the batches whose states are held
        self._ctx: dict[int, dict] = {}
        # [layer k][i]: the state entering layer k of batch _active[i]
        self._boundary: list[list[torch.Tensor]] | None = None
        self._chain: tuple | None = None  # (first, positions, last, [state after `last` per active batch])

    @property
    def labels(self) -> np.ndarray:
        """Gold labels in dataset order."""
        return self.data.labels

    def state_bytes(self, b: int) -> int:
        """Bytes held for batch b while its shard is evaluated, fp32: L+1 boundary states, the ablated chain
        and the next link being computed, the attention mask, and what the family keeps besides (MPNet: its
        position bias)."""
        config = self.stages.model.config
        n, width = self.batches[b]["input_ids"].shape
        states = (self.stages.num_layers + 3) * n * width * config.hidden_size + n * width * width
        return states * 4 + self.stages.family.extra_state_bytes(config, n, width)

    def _plan_shards(self, budget: float) -> list[list[int]]:
        """Consecutive (length-sorted) batches, as many per shard as the budget holds (at least one)."""
        shards, size = [[]], 0
        for b in range(len(self.batches)):
            need = self.state_bytes(b)
            if shards[-1] and size + need > budget:
                shards.append([])
                size = 0
            shards[-1].append(b)
            size += need
        return shards

    @property
    def sharded(self) -> bool:
        """True when the split's states exceed the budget, so cells are evaluated shard by shard."""
        return len(self.shards) > 1

    def _layer(self, i: int, h: torch.Tensor, b: int) -> torch.Tensor:
        """Layer i on batch b's states; the last layer only as far as the head needs."""
        return self.stages.layer(i, h, self._ctx[b], first_token_only=i == self.stages.num_layers - 1)

    def _unsort(self, preds: Sequence[torch.Tensor], batches: Sequence[int]) -> np.ndarray:
        """Predictions of these batches, in dataset order (one copy to the host)."""
        out = np.empty(len(self.data.labels), dtype=np.int64)
        out[np.concatenate([self.index[b] for b in batches])] = torch.cat(list(preds)).cpu().numpy()
        return out

    @torch.inference_mode()
    def _run_from(self, k: int, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run layers k..L-1 from the active batches' states; their predicted labels."""
        preds = []
        with autocast(self.precision, self.device):
            for b, h in zip(self._active, states, strict=True):
                for i in range(k, self.stages.num_layers):
                    h = self._layer(i, h, b)
                preds.append(self.stages.head(h).argmax(-1))
        self.layer_passes += (self.stages.num_layers - k) * len(self._active) / len(self.batches)
        return preds

    @torch.inference_mode()
    def _load(self, batches: list[int]) -> list[torch.Tensor]:
        """Hold the intact states of these batches at every layer boundary; their intact predictions."""
        self._free()
        set_ablation(self.stages.model)
        L = self.stages.num_layers
        boundary: list[list[torch.Tensor]] = [[] for _ in range(L + 1)]
        preds = []
        with autocast(self.precision, self.device):
            for b in tqdm(batches, desc="eval intact", leave=False, dynamic_ncols=True):
                h, self._ctx[b] = self.stages.embed(self.batches[b])
                boundary[0].append(h)
                for i in range(L):
                    h = self._layer(i, h, b)
                    boundary[i + 1].append(h)
                preds.append(self.stages.head(h).argmax(-1))
        self.layer_passes += L * len(batches) / len(self.batches)
        self._active, self._boundary = batches, boundary
        return preds

    @torch.inference_mode()
    def _cell(self, first: int, last: int, positions: str) -> list[torch.Tensor]:
        """Predicted labels of the active batches with the adapters of first..last removed."""
        set_ablation(self.stages.model, range(first, last + 1), positions)
        chain = self._chain
        if chain and chain[:2] == (first, positions) and first - 1 <= chain[2] <= last:
            start, states = chain[2] + 1, chain[3]
        else:
            start, states = first, self._boundary[first]
        with autocast(self.precision, self.device):
            for i in range(start, last + 1):
                states = [self._layer(i, h, b) for b, h in zip(self._active, states, strict=True)]
        self.layer_passes += (last + 1 - start) * len(self._active) / len(self.batches)
        self._chain = (first, positions, last, states)
        preds = self._run_from(last + 1, states)
        set_ablation(self.stages.model)
        return preds

    def predict(self, cells: Sequence[Cell], positions: str = "both") -> Iterator[tuple[Cell, np.ndarray]]:
        """(cell, predictions) for each cell (None: the intact model), in the order given.

        Unsharded, each cell is yielded as soon as it is computed and the states stay held for later calls.
        Sharded, every cell's predictions are complete after the last shard, so all are yielded then.
        """
        if not self.sharded:
            for cell in cells:
                yield cell, self.intact() if cell is None else self.cell(*cell, positions)
            return
        parts: dict[Cell, list[torch.Tensor]] = {cell: [] for cell in cells}
        done: list[int] = []
        for shard in tqdm(self.shards, desc="eval shards", dynamic_ncols=True):
            intact = self._load(shard)
            for cell in parts:
                parts[cell] += intact if cell is None else self._cell(*cell, positions)
            done += shard
        self._free()
        for cell, preds in parts.items():
            yield cell, self._unsort(preds, done)

    def _free(self) -> None:
        """Drop the held states; sharded, hand their memory back to the OS so the next shard reuses it."""
        self._active, self._ctx, self._chain, self._boundary = [], {}, None, None
        if self.sharded:
            release_free_memory()

    def intact(self) -> np.ndarray:
        """Predictions of the model with every adapter active (unsharded: its states stay held)."""
        if self.sharded:
            return dict(self.predict([None]))[None]
        everything = list(range(len(self.batches)))
        return self._unsort(self._load(everything), everything)

    def cell(self, first: int, last: int, positions: str = "both") -> np.ndarray:
        """Predictions with the adapters of layers first..last removed (shared computation)."""
        if self.sharded:
            return dict(self.predict([(first, last)], positions))[(first, last)]
        if self._boundary is None:
            self.intact()
        return self._unsort(self._cell(first, last, positions), self._active)

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
        return self._unsort(preds, range(len(self.batches)))
