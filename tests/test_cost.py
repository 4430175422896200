"""The cost said before a sweep runs (ablation.cost) is what the cached evaluation then runs: counted from the
cells alone (and the passes before them), it equals the evaluator's own count of layer passes for any plan,
kind, order, held states and sharding; the floor is L(L+1)(L+2)/6; a block plan costs a fraction of it."""

from __future__ import annotations

import random

import pytest
from test_evaluate import L, make_evaluator

from ablation.config import block_ends
from ablation.cost import cost_line, floor_passes, layer_passes, plan_line, plan_passes
from ablation.evaluate import Ablation

TRIANGLE = [(first, last) for first in range(L) for last in range(first, L)]
BLOCKS = [(a, b) for a in range(0, L, 2) for b in block_ends(2, L) if a <= b]


def counted(ev, cells, ablation: Ablation, timed=None) -> float:
    """Layer passes the evaluator says it ran for predict(cells), and what ablation.cost says before it."""
    said = L * ev.passes_before(cells, ablation) + layer_passes([c for c in cells if c is not None], L)
    before = ev.layer_passes
    assert len(dict(ev.predict(cells, ablation, timed))) == len(cells)
    return ev.layer_passes - before, said


@pytest.mark.parametrize(
    ("name", "cells"),
    [
        ("triangle", TRIANGLE),
        ("blocks of 2", BLOCKS),
        ("shuffled", random.Random(0).sample(TRIANGLE, len(TRIANGLE))),
        ("one cell", [(1, 2)]),
    ],
)
@pytest.mark.parametrize("kind", ["zero", "keep"])
def test_the_plan_s_layer_passes_are_the_evaluator_s(name, cells, kind):
    ev = make_evaluator("mpnet", "fp32")
    seconds = []
    ran, said = counted(ev, [None, *cells], Ablation(kind), seconds.append)
    assert ran == pytest.approx(said) == L * (1 + (kind == "keep")) + layer_passes(cells, L)
    assert len(seconds) == 1 and seconds[0] == ev.pass_seconds > 0  # told once, after the first cell


def test_held_states_cost_nothing_and_a_change_of_base_one_pass():
    """The groups of one training in one process: the intact pass once; keep's base and the way back each a
    pass; mean's means from the intact pass."""
    ev = make_evaluator("mpnet", "fp32")
    steps = [([None, *TRIANGLE], Ablation("zero"), 1), (BLOCKS, Ablation("scale", alpha=0.5), 0),
             (TRIANGLE, Ablation("mean"), 0), (BLOCKS, Ablation("keep"), 1), (BLOCKS, Ablation("zero"), 1)]  # fmt: skip
    for cells, ablation, passes in steps:
        assert ev.passes_before(cells, ablation) == passes, ablation
        ran, said = counted(ev, cells, ablation)
        assert ran == pytest.approx(said), ablation


@pytest.mark.parametrize("kind", ["zero", "keep"])
def test_the_sharded_path_tells_the_speed_and_costs_what_was_said(kind):
    whole = make_evaluator("mpnet", "fp32")
    budget = 1.5 * max(whole.state_bytes(b) for b in range(len(whole.batches)))
    sharded = make_evaluator("mpnet", "fp32", memory_bytes=budget)
    assert sharded.sharded
    seconds = []
    ran, said = counted(sharded, [None, *TRIANGLE], Ablation(kind), seconds.append)
    assert ran == pytest.approx(said) and len(seconds) == 1 and seconds[0] > 0
    ran, said = counted(sharded, BLOCKS, Ablation(kind))  # no states are held between calls when sharded
    assert ran == pytest.approx(said) == L + layer_passes(BLOCKS, L)


def test_the_floor_and_the_lines():
    triangle = [(a, b) for a in range(30) for b in range(a, 30)]
    assert layer_passes(triangle, 30) / 30 == pytest.approx(floor_passes(30)) == 4960 / 30
    blocks = [(a, b) for a in range(0, 30, 3) for b in block_ends(3, 30) if a <= b]
    assert len(blocks) == 55 and layer_passes(blocks, 30) / 30 == pytest.approx((10 * 11 * 12 / 6) * 3 / 30)
    assert cost_line(465, 166.3, 30, 8.0) == (
        "465 cells = 166.3 full passes (the full triangle of 30 layers: 165.3 + 1 for the intact states, at "
        "its floor): about 22 min here (8.00 s a full pass, measured on the first cell)"
    )
    assert plan_line([(30, [(triangle, False)])]).startswith("465 cells = 166.3 full passes")
    # one training, its removal and keep groups: one intact pass, keep's base, both groups' cells
    assert plan_passes([(30, [(blocks, False), (blocks, True)])]) == pytest.approx(1 + 22 + 1 + 22)
    two = plan_line([(30, [(blocks, False)]), (12, [(blocks[:3], False)])])
    assert (
        two.startswith("58 cells of 2 trainings = ")
        and "30.3 + 1 on 12 layers, 165.3 + 1 on 30 layers" in two
    )
