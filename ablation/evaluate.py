"""Evaluation of the intact model and of ablation cells, sharing hidden states across cells.

The intact model's hidden states at every layer boundary are computed once. Cell (first, last)
starts from the state entering layer `first`, runs layers first..last with their adapters
ablated, then the remaining layers intact. When cells with the same `first` come in increasing
`last`, the ablated chain is extended by one layer instead of recomputed, so all L(L+1)/2 cells
of an L-layer model cost sum_{n=1..L} n(n+1)/2 layer passes (364 for L=12) instead of L per cell.
In a cell, the last layer runs its feed-forward only at the token the head reads (the first; a decoder's
last non-pad token).

Every ablation kind (`Ablation`) is this scheme with other layer settings: `zero`, `mean` and `scale`
change the adapters of first..last and start from the intact states; `keep` is the complement (only
first..last keep their adapters) and starts from the states of the model with every adapter removed, one
extra pass. The intact pass also records, per adapter slot, the statistics of its contribution over the
validation tokens (not padding): the means that `mean` substitutes and the per-layer diagnostics.

The boundary states take (L+1) x tokens x d x 4 bytes (about 1 GB on the default task, 50 GB for
bert-base on QQP). When they exceed the memory budget, the split is evaluated shard by shard: for each
shard of examples, its intact states and every requested cell, then the states are freed. The compute
stays at the floor (no cell is evaluated twice) and the predictions are those of the unsharded path.

`Evaluator.estimate` gives the same cells estimated from the gradients of the intact model instead
(ablation.estimate: a few passes for every cell, not exact).
"""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ablation.adapters import AdapterLayer, adapter_slots, set_ablation
from ablation.data import Encoded, collate, eval_batches, to_device
from ablation.estimate import STEPS, cell_predictions, layer_effects
from ablation.models import Stages
from ablation.precision import autocast, held_weights, holding

Cell = tuple[int, int] | None  # (first, last) of an ablation, or None for the intact model


def bound_resident_memory() -> None:
    """Make the resident memory follow the live tensors (glibc; elsewhere a no-op). A process-wide setting:
    the process that shards its evaluation makes it once (ablation.session.ProcessState).

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


@dataclass(frozen=True)
class Ablation:
    """What ablating a cell's layers does (ablation.config.AblateConfig without the range)."""

    kind: str = "zero"  # zero | mean | scale | keep
    alpha: float | None = None  # kind=scale
    layernorm: str = "trained"  # the LayerNorms of the ablated layers: trained | pretrained
    positions: str = "both"  # the adapter positions ablated: both | attention | output

    @classmethod
    def of(cls, ablate: object) -> Ablation:
        """The ablation of a config with these fields (an AblateConfig)."""
        return cls(ablate.kind, ablate.alpha, ablate.layernorm, ablate.positions)

    @property
    def mode(self) -> str:
        """What the ablated adapter slots do (ablation.adapters.set_ablation)."""
        return {"zero": "off", "keep": "off", "mean": "mean", "scale": "scale"}[self.kind]

    def ablated(self, first: int, last: int, num_layers: int) -> list[int]:
        """The layers a cell ablates: first..last, or for kind=keep every other layer."""
        inside = range(first, last + 1)
        return [i for i in range(num_layers) if i not in inside] if self.kind == "keep" else list(inside)

    def base(self, num_layers: int) -> tuple[int, ...]:
        """The layers ablated in the states a cell starts from: none (intact), or all for kind=keep."""
        return tuple(range(num_layers)) if self.kind == "keep" else ()


INTACT = Ablation()
# A slot's statistics over one batch: sum of its contribution c [d], then sums of ||c||/||s||,
# 1 - cos(s, s + c) and ||s||, and the token count.
_SUMS = ("ratio", "cosine", "norm", "tokens")


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
        self._bf16_weights = held_weights(stages.model, precision, device)  # the weights do not change here
        self.batches = [to_device(collate(data, i), device) for i in self.index]
        self.shards = self._plan_shards(memory_bytes)
        self._tokens = [batch["input_ids"].numel() for batch in self.batches]  # padded: what a layer computes
        self.layer_passes = 0  # counts one layer over the whole split as 1/L of a full pass
        # a full pass's seconds, measured on the first cell (the intact pass is slower: it meets every batch
        # shape first, runs the last layer at every token and records statistics)
        self.pass_seconds: float | None = None
        self._active: list[int] = []  # the batches whose states are held
        self._ctx: dict[int, dict] = {}
        # [layer k][i]: the state entering layer k of batch _active[i], in the base model of `_held`
        self._boundary: list[list[torch.Tensor]] | None = None
        self._held: Ablation | None = None  # whose base (Ablation.base) the held states are; INTACT: intact
        self._chain: tuple | None = None  # (first, ablation, last, [state after `last` per active batch])
        self._stats: dict[int, dict[tuple[int, str], torch.Tensor]] = {}  # per batch, per slot: sums
        self._means_set = False
        # per (estimator, mode, alpha, positions): intact logit differences [N, K], per-layer effects [L, N, K]
        self._estimates: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.estimate_seconds: float | None = None  # the last gradient pass's time (ablation.estimate)

    @property
    def num_layers(self) -> int:
        """The model's layer count."""
        return self.stages.num_layers

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

    def _layer(self, i: int, h: torch.Tensor, b: int, full: bool = False) -> torch.Tensor:
        """Layer i on batch b's states; the last layer only as far as the head needs unless `full`."""
        last = i == self.stages.num_layers - 1
        return self.stages.layer(i, h, self._ctx[b], pooled_only=last and not full)

    def _unsort(self, preds: Sequence[torch.Tensor], batches: Sequence[int]) -> np.ndarray:
        """Predictions of these batches, in dataset order (one copy to the host)."""
        out = np.empty(len(self.data.labels), dtype=np.int64)
        out[np.concatenate([self.index[b] for b in batches])] = torch.cat(list(preds)).cpu().numpy()
        return out

    def _set(self, layers: Sequence[int], ablation: Ablation) -> None:
        """Ablate these layers' adapters as `ablation` says; every other slot intact."""
        set_ablation(
            self.stages.model,
            layers,
            ablation.positions,
            ablation.mode,
            ablation.alpha or 0.0,
            ablation.layernorm,
        )

    @torch.inference_mode()
    def _run_from(self, k: int, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run layers k..L-1 from the active batches' states; their predicted labels."""
        preds = []
        with autocast(self.precision, self.device, self._bf16_weights):
            for b, h in zip(self._active, states, strict=True):
                for i in range(k, self.stages.num_layers):
                    h = self._layer(i, h, b)
                preds.append(self.stages.head(h, self._ctx[b]).argmax(-1))
        self.layer_passes += (self.stages.num_layers - k) * len(self._active) / len(self.batches)
        return preds

    @torch.inference_mode()
    def _compute_states(self, batches: list[int], ablation: Ablation = INTACT) -> list[torch.Tensor]:
        """Hold these batches' states at every layer boundary in the base model of `ablation` (the model its
        cells start from: intact, whose pass also records each slot's statistics, or all adapters removed
        for kind=keep); their predictions."""
        self._free()
        layers = ablation.base(self.stages.num_layers)
        self._set(layers, ablation)
        with_stats = not layers
        L = self.stages.num_layers
        boundary: list[list[torch.Tensor]] = [[] for _ in range(L + 1)]
        preds = []
        with autocast(self.precision, self.device, self._bf16_weights):
            for b in tqdm(
                batches, desc="eval intact" if with_stats else "eval base", leave=False, dynamic_ncols=True
            ):
                h, self._ctx[b] = self.stages.embed(self.batches[b])
                boundary[0].append(h)
                if with_stats:
                    self._collect_stats(b)
                for i in range(L):
                    # with statistics, every token's contribution
                    h = self._layer(i, h, b, full=with_stats)
                    boundary[i + 1].append(h)
                preds.append(self.stages.head(h, self._ctx[b]).argmax(-1))
        self._collect_stats(None)
        self._set((), INTACT)
        self.layer_passes += L * len(batches) / len(self.batches)
        self._active, self._boundary, self._held = batches, boundary, ablation if layers else INTACT
        return preds

    def _collect_stats(self, b: int | None) -> None:
        """Send every adapter slot's contributions on batch b to its sums (None: stop recording)."""
        slots = adapter_slots(self.stages.model).values()
        if b is None:
            for slot in slots:
                slot.on_output = None
            return
        mask = self.batches[b]["attention_mask"].bool()
        sums = self._stats[b] = {}

        def add_sums(slot: AdapterLayer, s: torch.Tensor, out: torch.Tensor) -> None:
            tokens = mask[:, : s.shape[1]]
            s32 = s.float()[tokens]
            c = out.float()[tokens] - s32
            s_norm = s32.norm(dim=-1)
            ratio = c.norm(dim=-1) / s_norm.clamp_min(torch.finfo(torch.float32).tiny)
            cosine = 1 - F.cosine_similarity(s32, s32 + c, dim=-1)
            counts = torch.stack(
                [ratio.sum(), cosine.sum(), s_norm.sum(), torch.tensor(float(len(s32)), device=s.device)]
            )
            sums[(slot.layer, slot.name)] = torch.cat([c.sum(0), counts])

        for slot in slots:
            slot.on_output = add_sums

    def _statistics(self) -> dict[tuple[int, str], np.ndarray]:
        """Each slot's summed statistics over the whole split (float64), computing the intact pass of any
        batch not yet recorded (one pass at most, shard by shard; unsharded, its states stay held)."""
        for shard in self.shards:
            todo = [b for b in shard if b not in self._stats]
            if todo:
                self._compute_states(todo)
                if self.sharded:
                    self._free()
        total: dict[tuple[int, str], np.ndarray] = {}
        for sums in self._stats.values():
            for slot, row in sums.items():
                total[slot] = total.get(slot, 0) + row.double().cpu().numpy()
        return total

    def _set_means(self) -> None:
        """Give every slot the mean of its contribution over the validation tokens of the intact model."""
        if self._means_set:
            return
        total = self._statistics()
        for key, slot in adapter_slots(self.stages.model).items():
            row = total[key]
            slot.mean = torch.as_tensor(row[: -len(_SUMS)] / row[-1], dtype=torch.float32, device=self.device)
        self._means_set = True

    def diagnostics(self) -> list[dict]:
        """Per adapter slot (layer, position; for LoRA the position column names the projection): over the
        validation tokens of the intact model, the mean of ||c|| / ||s|| (c: the contribution, s: the output
        it is added to, the sub-layer's or, for LoRA, the pretrained projection's), the mean of
        1 - cos(s, s + c), ||mean c|| / mean ||s||, and the Frobenius norms of the adapter's weights."""
        total = self._statistics()
        rows = []
        for (layer, name), slot in sorted(adapter_slots(self.stages.model).items()):
            row = total[(layer, name)]
            ratio, cosine, norm, tokens = row[-len(_SUMS) :]
            mean = row[: -len(_SUMS)] / tokens
            down_norm, up_norm = slot.weight_norms()
            rows.append(
                {
                    "layer": layer,
                    "position": name,
                    "contribution_ratio": ratio / tokens,
                    "cosine_distance": cosine / tokens,
                    "mean_contribution_ratio": float(np.linalg.norm(mean)) / (norm / tokens),
                    "down_norm": down_norm,
                    "up_norm": up_norm,
                    "tokens": int(tokens),
                }
            )
        return rows

    @property
    def has_stats(self) -> bool:
        """True once the intact pass has covered the whole split (diagnostics and means need no pass)."""
        return len(self._stats) == len(self.batches)

    def _prepare(self, ablation: Ablation) -> None:
        if ablation.kind == "mean":
            self._set_means()

    @torch.inference_mode()
    def _cell(self, first: int, last: int, ablation: Ablation) -> list[torch.Tensor]:
        """Predicted labels of the active batches with the cell's layers ablated (the held states must be
        those of `ablation.base`)."""
        L = self.stages.num_layers
        tic, before = time.perf_counter(), self.layer_passes
        self._set(ablation.ablated(first, last, L), ablation)
        chain = self._chain
        if chain and chain[:2] == (first, ablation) and first - 1 <= chain[2] <= last:
            start, states = chain[2] + 1, chain[3]
        else:
            start, states = first, self._boundary[first]
        with autocast(self.precision, self.device, self._bf16_weights):
            for i in range(start, last + 1):
                states = [self._layer(i, h, b) for b, h in zip(self._active, states, strict=True)]
        self.layer_passes += (last + 1 - start) * len(self._active) / len(self.batches)
        self._chain = (first, ablation, last, states)
        preds = self._run_from(last + 1, states)
        self._set((), INTACT)
        if self.pass_seconds is None:
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()  # the kernels queued, not only launched
            # layers run on the active batches, scaled to L layers on every token: a shard's batches are
            # sorted by length, so the first shard's share of the batches is not its share of the work
            layers = (self.layer_passes - before) * len(self.batches) / len(self._active)
            share = sum(self._tokens[b] for b in self._active) / sum(self._tokens)
            self.pass_seconds = (time.perf_counter() - tic) * L / layers / share
        return preds

    def _start(self, ablation: Ablation) -> Ablation:
        """The model whose states a cell of `ablation` starts from: INTACT, or `ablation` for kind=keep."""
        return ablation if ablation.base(self.stages.num_layers) else INTACT

    def _holds(self, batches: list[int], ablation: Ablation) -> bool:
        """True when the held states are those a cell of `ablation` starts from, for these batches."""
        return self._boundary is not None and self._active == batches and self._held == self._start(ablation)

    def _hold_base(self, batches: list[int], ablation: Ablation) -> None:
        """Make the held states those a cell of `ablation` starts from, for these batches."""
        if not self._holds(batches, ablation):
            self._compute_states(batches, self._start(ablation))

    def passes_before(self, cells: Sequence[Cell], ablation: Ablation = INTACT) -> int:
        """Full passes predict(cells, ablation) makes besides its cells' own layers (ablation.cost): the
        intact pass where `cells` holds None, and the states the cells start from (the intact model's, or the
        all-removed model's for kind=keep) unless that pass or the states held now provide them."""
        intact = None in cells
        if all(cell is None for cell in cells):
            return int(intact)
        keep = bool(ablation.base(self.stages.num_layers))
        everything = list(range(len(self.batches)))
        provided = not keep if intact else not self.sharded and self._holds(everything, ablation)
        return int(intact) + int(not provided)

    def predict(
        self,
        cells: Sequence[Cell],
        ablation: Ablation = INTACT,
        timed: Callable[[float], None] | None = None,
    ) -> Iterator[tuple[Cell, np.ndarray]]:
        """(cell, predictions) for each cell (None: the intact model), in the order given; `timed` is called
        once with a full pass's seconds as soon as the first cell has measured it.

        Unsharded, each cell is yielded as soon as it is computed and the states stay held for later calls.
        Sharded, every cell's predictions are complete after the last shard, so all are yielded then.
        """

        def tell() -> None:
            nonlocal timed
            if timed is not None and self.pass_seconds is not None:
                timed(self.pass_seconds)
                timed = None

        if not self.sharded:
            for cell in cells:
                yield cell, self.intact() if cell is None else self.cell(*cell, ablation)
                tell()
            return
        self._prepare(ablation)
        parts: dict[Cell, list[torch.Tensor]] = {cell: [] for cell in cells}
        done: list[int] = []
        for shard in tqdm(self.shards, desc="eval shards", dynamic_ncols=True):
            if None in parts:
                parts[None] += self._compute_states(shard)
            if any(cell is not None for cell in parts):
                self._hold_base(shard, ablation)
            for cell in parts:
                if cell is not None:
                    parts[cell] += self._cell(*cell, ablation)
                    tell()
            done += shard
        self._free()
        for cell, preds in parts.items():
            yield cell, self._unsort(preds, done)

    def _free(self) -> None:
        """Drop the held states; sharded, hand their memory back to the OS so the next shard reuses it."""
        self._active, self._ctx, self._chain, self._boundary, self._held = [], {}, None, None, None
        if self.sharded:
            release_free_memory()

    def intact(self) -> np.ndarray:
        """Predictions of the model with every adapter active (unsharded: its states stay held)."""
        if self.sharded:
            return dict(self.predict([None]))[None]
        everything = list(range(len(self.batches)))
        return self._unsort(self._compute_states(everything), everything)

    def cell(self, first: int, last: int, ablation: Ablation = INTACT) -> np.ndarray:
        """Predictions with layers first..last ablated as `ablation` says (shared computation)."""
        if self.sharded:
            return dict(self.predict([(first, last)], ablation))[(first, last)]
        self._prepare(ablation)
        everything = list(range(len(self.batches)))
        self._hold_base(everything, ablation)
        return self._unsort(self._cell(first, last, ablation), self._active)

    def estimate(
        self, cells: Sequence[tuple[int, int]], ablation: Ablation = INTACT, estimator: str = "attribution"
    ) -> Iterator[tuple[Cell, np.ndarray]]:
        """(cell, predictions) for each cell estimated from gradients (ablation.estimate's `estimator`): one
        forward and K-1 backward passes over the split per gradient point, for all cells of an ablation."""
        logits, effects = self.attributions(ablation, estimator)
        for first, last in cells:
            yield (first, last), cell_predictions(logits, effects, first, last, keep=ablation.kind == "keep")

    def attributions(
        self, ablation: Ablation = INTACT, estimator: str = "attribution"
    ) -> tuple[np.ndarray, np.ndarray]:
        """The intact logits minus label 0's [N, K] and each layer's estimated change of them when its slots
        are ablated [L, N, K], in dataset order (computed once per estimator, mode, alpha and positions)."""
        if ablation.layernorm != "trained":
            raise ValueError("an estimate follows the adapters' outputs: only with trained LayerNorms")
        key = (estimator, ablation.mode, ablation.alpha, ablation.positions)
        if key not in self._estimates:
            self._prepare(ablation)
            tic = time.perf_counter()
            with holding(self._bf16_weights):  # layer_effects enters autocast itself
                logits, effects = layer_effects(
                    self.stages,
                    self.batches,
                    ablation.positions,
                    ablation.mode,
                    ablation.alpha or 0.0,
                    self.precision,
                    self.device,
                    STEPS[estimator],
                )
            order = np.concatenate(self.index)
            L, K = self.stages.num_layers, logits[0].shape[1]
            in_order = np.empty((len(order), K)), np.empty((L, len(order), K))
            in_order[0][order] = torch.cat(logits).cpu().numpy()
            in_order[1][:, order] = torch.cat(effects, dim=1).cpu().numpy()
            self._estimates[key] = in_order
            self.estimate_seconds = time.perf_counter() - tic
        return self._estimates[key]

    @torch.inference_mode()
    def from_scratch(
        self, first: int | None = None, last: int | None = None, ablation: Ablation = INTACT
    ) -> np.ndarray:
        """Reference: a plain forward pass of the whole model with that cell ablated."""
        layers = ablation.ablated(first, last, self.stages.num_layers) if first is not None else ()
        self._prepare(ablation)
        self._set(layers, ablation)
        preds = []
        with autocast(self.precision, self.device, self._bf16_weights):
            for batch in self.batches:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                preds.append(self.stages.model(**inputs).logits.argmax(-1))
        self._set((), INTACT)
        return self._unsort(preds, range(len(self.batches)))
