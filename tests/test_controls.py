"""Ablation kinds (zero, mean, scale, keep) and pretrained LayerNorms: every cell equals a from-scratch
forward of the model so ablated, the shared-prefix cost stays at the floor, the diagnostics are what they say."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from test_evaluate import CELLS, L, make_evaluator, one_family

from ablation.adapters import NormSwitch, adapter_slots, set_ablation
from ablation.evaluate import Ablation, Evaluator

ABLATIONS = [
    Ablation("zero"),
    Ablation("mean"),
    Ablation("scale", alpha=0.5),
    Ablation("keep"),
    Ablation("zero", layernorm="pretrained"),
    Ablation("mean", layernorm="pretrained", positions="attention"),
    Ablation("keep", layernorm="pretrained", positions="output"),
]
FLOOR = L + sum(n * (n + 1) // 2 for n in range(1, L + 1))  # the intact pass and every chain
# Every cell of every kind is checked against from-scratch forwards on every family and placement; the
# order, shard and pass-count variants test the evaluator's machinery, not the family: `one_family`
# (test_evaluate.py says why it is MPNet).


@pytest.fixture(
    params=[("fp32", "serial"), ("fp32", "parallel"), ("fp32", "lora")], ids=lambda p: "-".join(p)
)
def evaluator(request, family) -> Evaluator:
    return make_evaluator(family, *request.param)


@pytest.mark.parametrize("ablation", ABLATIONS, ids=str)
def test_every_cell_of_every_kind_equals_a_from_scratch_forward(evaluator, ablation):
    intact = evaluator.intact()
    for first, last in CELLS:
        got = evaluator.cell(first, last, ablation)
        assert np.array_equal(got, evaluator.from_scratch(first, last, ablation)), (first, last)
    assert np.array_equal(evaluator.from_scratch(), intact)  # the model is left intact


@one_family
def test_kinds_in_shuffled_order(evaluator):
    jobs = [(cell, ablation) for cell in CELLS for ablation in ABLATIONS]
    random.Random(0).shuffle(jobs)
    for (first, last), ablation in jobs[:40]:
        got = evaluator.cell(first, last, ablation)
        assert np.array_equal(got, evaluator.from_scratch(first, last, ablation)), (first, last, ablation)


def test_kinds_change_predictions(evaluator):
    """Guards the equalities against kinds that do nothing: each differs from intact and from the others."""
    intact, whole = evaluator.intact(), (0, L - 1)
    preds = {a: evaluator.cell(*whole, a) for a in ABLATIONS[:3]}
    preds[Ablation("zero", layernorm="pretrained")] = evaluator.cell(*whole, ABLATIONS[4])
    for a, p in preds.items():
        assert (p != intact).sum() >= 1, a
    assert (preds[ABLATIONS[0]] != preds[ABLATIONS[1]]).sum() >= 1  # mean is not removal
    assert (preds[ABLATIONS[0]] != preds[ABLATIONS[4]]).sum() >= 1  # pretrained LayerNorms change the outcome


def test_scale_one_is_intact_and_scale_zero_is_removal(evaluator):
    intact = evaluator.intact()
    for first, last in CELLS:
        assert np.array_equal(evaluator.cell(first, last, Ablation("scale", alpha=1.0)), intact)
        removed = evaluator.cell(first, last, Ablation("zero"))
        assert np.array_equal(evaluator.cell(first, last, Ablation("scale", alpha=0.0)), removed)


def test_keep_everything_is_intact(evaluator):
    intact = evaluator.intact()
    assert np.array_equal(evaluator.cell(0, L - 1, Ablation("keep")), intact)
    # keeping nothing is not a cell, but keeping layer 0 of an L-layer model ablates layers 1..L-1
    assert np.array_equal(evaluator.cell(0, 0, Ablation("keep")), evaluator.cell(1, L - 1, Ablation("zero")))


def _contributions(ev: Evaluator) -> dict[tuple[int, str], torch.Tensor]:
    """Each slot's mean contribution over the non-padding tokens, from plain forwards with forward hooks:
    the reference the `mean` kind must substitute (computed without the evaluator's recording)."""
    sums: dict = {}
    slots = adapter_slots(ev.stages.model)
    mask = {}

    def hook(slot, args, out):
        h = slot.base_layer(args[0]) if not slot.parallel else None
        if h is None:
            return
        c = (out - h).double()[mask["m"]]
        total, n = sums.get((slot.layer, slot.position), (0, 0))
        sums[(slot.layer, slot.position)] = (total + c.sum(0), n + len(c))

    handles = [s.register_forward_hook(hook) for s in slots.values()]
    set_ablation(ev.stages.model)
    try:
        with torch.no_grad():
            for batch in ev.batches:
                mask["m"] = batch["attention_mask"].bool()
                ev.stages.model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()
    return {k: total / n for k, (total, n) in sums.items()}


def test_mean_substitutes_the_mean_contribution_over_real_tokens(family):
    ev = make_evaluator(family, "fp32")  # serial: the hook above recomputes the sub-layer output
    ev.cell(0, 1, Ablation("mean"))
    want = _contributions(ev)
    for key, slot in adapter_slots(ev.stages.model).items():
        assert torch.allclose(slot.mean.double(), want[key], atol=1e-5), key
        assert slot.mean.abs().sum() > 0
    # a slot in mean mode adds exactly its mean to the sub-layer output
    slot = adapter_slots(ev.stages.model)[(1, "output")]
    x = torch.randn(
        2, 3, getattr(slot.base_layer, "in_features", slot.mean.shape[0])
    )  # a decoder's: down_proj
    slot.mode = "mean"
    assert torch.equal(slot(x), slot.base_layer(x) + slot.mean)
    slot.mode = "on"


def test_pretrained_layernorms_equal_a_model_built_with_them(family):
    """Independent of NormSwitch's forward: copy the pretrained weights into a copy's ablated LayerNorms."""
    ev = make_evaluator(family, "fp32")
    for positions in ("both", "attention"):
        ablation = Ablation("zero", layernorm="pretrained", positions=positions)
        for first, last in [(0, L - 1), (1, 2), (3, 3)]:
            reference = copy.deepcopy(ev.stages.model)
            with torch.no_grad():
                for norm in reference.modules():
                    ablated = isinstance(norm, NormSwitch) and first <= norm.layer <= last
                    if ablated and positions in ("both", norm.position):
                        for name, p in norm.base_layer.named_parameters():  # RMSNorm: weight only
                            p.copy_(getattr(norm, f"pretrained_{name}"))
            set_ablation(reference, range(first, last + 1), positions)
            preds = []
            with torch.no_grad():
                for batch in ev.batches:
                    preds.append(
                        reference(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
                    )
            want = ev._unsort(preds, range(len(ev.batches)))
            assert np.array_equal(ev.cell(first, last, ablation), want), (positions, first, last)


@one_family
@pytest.mark.parametrize(
    "ablation, extra",
    [(Ablation("zero"), 0), (Ablation("mean"), 0), (Ablation("scale", alpha=0.5), 0), (Ablation("keep"), L)],
    ids=str,
)
def test_layer_passes_of_each_kind(family, ablation, extra):
    """Each kind's sweep costs the removal heatmap's floor (the intact pass and every chain), plus one pass
    (L layers) for keep's all-removed states; mean's means come from the intact pass."""
    ev = make_evaluator(family, "fp32")
    computed = dict(ev.predict([None, *CELLS], ablation))
    assert len(computed) == len(CELLS) + 1
    assert ev.layer_passes == pytest.approx(FLOOR + extra)


@one_family
@pytest.mark.parametrize("ablation", ABLATIONS, ids=str)
def test_sharded_kinds_equal_the_unsharded_path(family, ablation):
    whole = make_evaluator(family, "fp32")
    want = dict(whole.predict([None, *CELLS], ablation))
    budget = 1.5 * max(whole.state_bytes(b) for b in range(len(whole.batches)))
    sharded = make_evaluator(family, "fp32", memory_bytes=budget)
    assert sharded.sharded
    got = dict(sharded.predict([None, *CELLS], ablation))
    for cell in want:
        assert np.array_equal(got[cell], want[cell]), cell
    # without the intact cell, mean still gets its means (one extra pass) and keep its all-removed states
    fresh = make_evaluator(family, "fp32", memory_bytes=budget)
    got = dict(fresh.predict(CELLS[:3], ablation))
    for cell in CELLS[:3]:
        assert np.array_equal(got[cell], want[cell]), cell


def test_diagnostics_measure_the_contribution(family):
    ev = make_evaluator(family, "fp32")
    ev.intact()
    assert ev.has_stats
    rows = ev.diagnostics()
    assert [(r["layer"], r["position"]) for r in rows] == [
        (i, p) for i in range(L) for p in ("attention", "output")
    ]
    tokens = int(sum(b["attention_mask"].sum() for b in ev.batches))
    assert all(r["tokens"] == tokens for r in rows)
    slot = adapter_slots(ev.stages.model)[(2, "output")]
    row = next(r for r in rows if (r["layer"], r["position"]) == (2, "output"))
    assert row["up_norm"] == pytest.approx(float(slot.adapter.up.weight.detach().norm()), rel=1e-6)
    assert row["down_norm"] == pytest.approx(float(slot.adapter.down.weight.detach().norm()), rel=1e-6)
    assert all(r["contribution_ratio"] > 0 and 0 < r["cosine_distance"] <= 2 for r in rows)
    # a zero up-projection contributes nothing: ratio, cosine distance and mean are zero
    with torch.no_grad():
        slot.adapter.up.weight.zero_()
        slot.adapter.up.bias.zero_()
    fresh = Evaluator(ev.stages, ev.data, 8, "fp32")
    row = next(r for r in fresh.diagnostics() if (r["layer"], r["position"]) == (2, "output"))
    assert row["contribution_ratio"] == 0 and row["mean_contribution_ratio"] == 0
    assert row["cosine_distance"] == pytest.approx(0, abs=1e-6)
