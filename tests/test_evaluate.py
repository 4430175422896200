"""The cell evaluator: shared hidden states and chain reuse give exactly the from-scratch predictions."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import (
    DECODERS,
    lora_names,
    perturb_layernorms_and_head,
    random_encoded,
    skip_refused,
    tiny_model,
)

from ablation.adapters import inject_adapters, inject_lora, wrap_norms
from ablation.config import AdapterConfig
from ablation.evaluate import Ablation, Evaluator
from ablation.models import Stages

L = 4
POSITIONS = ("both", "attention", "output")
CELLS = [(first, last) for first in range(L) for last in range(first, L)]  # sweep order

# Every family's cells are checked against from-scratch forwards (the sweep-order tests here and in
# test_controls.py). The variants that test the evaluator's own machinery (cell order, shuffling, sharding
# under a budget, the count of layer passes) do not depend on the family, so they run on one: MPNet, the
# family whose per-batch context holds more than the mask (its position bias, also in its state bytes).
MACHINERY_FAMILY = "mpnet"
one_family = pytest.mark.parametrize("family", [MACHINERY_FAMILY])


def make_evaluator(
    family: str, precision: str, placement: str = "serial", memory_bytes: float = float("inf")
) -> Evaluator:
    model = tiny_model(family, num_layers=L, seed=3)
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    perturb_layernorms_and_head(model)
    if placement == "lora":  # PEFT's LoRA on the query, value and feed-forward output projections
        targets = lora_names(family, ["query", "value", "output"])
        slots = inject_lora(model, family, r=4, alpha=8, targets=targets, dropout=0.1)
        big_lora(slots.values())
    else:  # big: removing adapters flips predictions
        inject_adapters(
            model,
            family,
            AdapterConfig(
                size=16,
                init_std=0.3 if placement == "parallel" and family in DECODERS else 2.0,
                placement=placement.removesuffix("-some-layers"),
                # multiply on the encoders; on a pre-norm decoder a sub-layer's output is small beside the
                # residual stream, and s * (1 + delta) hardly moved a prediction there
                combine="multiply"
                if placement in ("parallel", "normed") and family not in DECODERS
                else "add",
                # adapter.layers: adapters in layers 1 and 3 only, the others' cells pass through
                layers=[1, 3] if placement.endswith("-some-layers") else None,
            ),
        )
    wrap_norms(model, family, pretrained)  # as the session does: layernorm=pretrained can restore them
    data = random_encoded(family, n=40, seed=1)
    assert len(set(data.lengths.tolist())) > 5  # varying lengths, so batches are padded
    return Evaluator(
        Stages(model, family), data, batch_size=8, precision=precision, memory_bytes=memory_bytes
    )


def big_lora(slots, seed: int = 4) -> None:
    """Random LoRA B weights (PEFT starts them at zero) large enough that removing LoRA flips predictions."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for slot in slots:
            b = slot.base_layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=generator) * 10.0)


@pytest.fixture(
    params=[
        ("fp32", "serial"),
        ("bf16", "serial"),
        ("fp32", "parallel"),
        ("fp32", "normed"),
        ("fp32", "lora"),
        ("fp32", "serial-some-layers"),
    ],
    ids=lambda p: "-".join(p),
)
def evaluator(request, family) -> Evaluator:
    skip_refused(family, request.param[1])
    return make_evaluator(family, *request.param)


def test_intact_equals_from_scratch(evaluator):
    intact = evaluator.intact()
    assert intact.shape == (40,)
    assert np.array_equal(intact, evaluator.from_scratch())
    assert np.array_equal(evaluator.labels, evaluator.data.labels)


def test_removing_adapters_changes_predictions(evaluator):
    """Guards the equality tests below against a model whose adapters do nothing."""
    intact = evaluator.intact()
    removed = evaluator.from_scratch(0, L - 1)
    assert (intact != removed).sum() >= 5
    changed = [(evaluator.from_scratch(first, last) != intact).any() for first, last in CELLS]
    assert sum(changed) >= len(CELLS) // 2


def test_cells_in_sweep_order_equal_from_scratch(evaluator):
    for positions in POSITIONS:
        for first, last in CELLS:
            got = evaluator.cell(first, last, Ablation(positions=positions))
            want = evaluator.from_scratch(first, last, Ablation(positions=positions))
            assert np.array_equal(got, want), (first, last, positions)
    # the model is left intact after cells
    assert np.array_equal(evaluator.from_scratch(), evaluator.intact())


@one_family
def test_cells_in_shuffled_order_equal_from_scratch(evaluator):
    jobs = [(first, last, positions) for first, last in CELLS for positions in POSITIONS]
    for seed in range(2):
        random.Random(seed).shuffle(jobs)
        for first, last, positions in jobs:
            got = evaluator.cell(first, last, Ablation(positions=positions))
            want = evaluator.from_scratch(first, last, Ablation(positions=positions))
            assert np.array_equal(got, want), (seed, first, last, positions)


@one_family
def test_cells_interleaved_with_shorter_chains(evaluator):
    """Going back to a smaller `last` (or another `first`) after extending a chain must recompute."""
    jobs = [(1, 3), (1, 1), (1, 2), (0, 2), (1, 2), (1, 3), (2, 3), (2, 2), (0, 0), (0, 3)]
    for first, last in jobs:
        assert np.array_equal(evaluator.cell(first, last), evaluator.from_scratch(first, last))


@one_family
def test_layer_passes_in_sweep_order(evaluator):
    assert evaluator.layer_passes == 0
    for first, last in CELLS:
        evaluator.cell(first, last)
    assert len(CELLS) == L * (L + 1) // 2
    assert evaluator.layer_passes == L + sum(n * (n + 1) // 2 for n in range(1, L + 1))


# --- sharded: the states of the whole split exceed the budget ---


@one_family
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sharded_evaluation_equals_the_unsharded_path(family, precision):
    """A budget of about one batch's states: every shard holds one or two batches; same predictions, and
    the same layer passes as the unsharded sweep (no cell evaluated twice)."""
    whole = make_evaluator(family, precision)
    want = dict(whole.predict([None, *CELLS]))
    budget = 1.5 * max(whole.state_bytes(b) for b in range(len(whole.batches)))
    sharded = make_evaluator(family, precision, memory_bytes=budget)
    assert sharded.sharded and len(sharded.shards) >= 3
    assert sorted(b for shard in sharded.shards for b in shard) == list(range(len(sharded.batches)))
    assert all(sum(map(sharded.state_bytes, s)) <= budget for s in sharded.shards)
    got = dict(sharded.predict([None, *CELLS]))
    assert list(got) == [None, *CELLS]
    for cell in want:
        assert np.array_equal(got[cell], want[cell]), cell
    assert np.array_equal(got[(0, L - 1)], whole.from_scratch(0, L - 1))
    assert sharded.layer_passes == pytest.approx(whole.layer_passes)
    assert sharded._boundary is None  # the last shard's states are freed
    # single calls work sharded too (each pays its own intact pass)
    assert np.array_equal(
        sharded.cell(1, 2, Ablation(positions="attention")), whole.cell(1, 2, Ablation(positions="attention"))
    )
    assert np.array_equal(sharded.intact(), want[None])


def test_a_budget_below_one_batch_still_evaluates_one_batch_at_a_time():
    whole = make_evaluator("bert", "fp32")
    tiny = make_evaluator("bert", "fp32", memory_bytes=1.0)
    assert [len(s) for s in tiny.shards] == [1] * len(tiny.batches)
    assert np.array_equal(dict(tiny.predict([(0, 1)]))[(0, 1)], whole.cell(0, 1))
