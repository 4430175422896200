"""The sweeper's pure parts: `a..b` range expansion and the lower-triangle filter and order."""

from __future__ import annotations

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from ablation.sweeper import RangeError, drop_lower_triangle, expand_arguments, expand_range

KEY = "ablate.first"


def product(*arguments: str) -> list[list[str]]:
    """The cartesian product of sweep overrides, as Hydra's basic sweeper builds it."""
    overrides = OverridesParser.create().parse_overrides(expand_arguments(list(arguments)))
    return BasicSweeper.split_arguments(overrides, None)[0]


def upper_triangle(n: int) -> list[tuple[int, int]]:
    """Cells first <= last, first outer and last inner."""
    return [(first, last) for first in range(n) for last in range(first, n)]


def cells(jobs: list[list[str]]) -> list[tuple[int, int]]:
    out = []
    for job in jobs:
        values = dict(arg.split("=", 1) for arg in job)
        out.append((int(values["ablate.first"]), int(values["ablate.last"])))
    return out


@pytest.mark.parametrize(
    ("value", "expanded"),
    [("0..11", "range(0,12)"), ("3..3", "range(3,4)"), ("0..5", "range(0,6)"), (" 2..7 ", "range(2,8)")],
)
def test_expand_range(value, expanded):
    assert expand_range(KEY, value) == expanded
    lo, hi = (int(x) for x in value.split(".."))
    assert list(eval(expanded, {"range": range})) == list(range(lo, hi + 1))  # inclusive a..b


@pytest.mark.parametrize(
    "value",
    [
        "range(0,12)",
        "range(0,12,2)",
        "0,1,2",
        "5",
        "choice(1,2)",
        "../x",
        "..",
        "../outputs/run",
        "a/b..c",
        "'0..3'",
    ],
)
def test_other_values_pass_through(value):
    assert expand_range(KEY, value) == value


@pytest.mark.parametrize(
    ("value", "words"),
    [("5..2", ["5..2", "a <= b"]), ("a..b", ["a..b", "integers"]), ("1..", ["1..", "integers"])],
)
def test_bad_ranges_raise(value, words):
    with pytest.raises(RangeError) as info:
        expand_range(KEY, value)
    message = str(info.value)
    assert message.startswith(f"{KEY}={value}")
    for word in words:
        assert word in message


def test_expand_arguments():
    args = [
        "-m",
        "ablate.first=0..11",
        "ablate.last=3..3",
        "model=minilm_l6",
        "seed=0,1",
        "hydra.run.dir=../x",
    ]
    assert expand_arguments(args) == [
        "-m",
        "ablate.first=range(0,12)",
        "ablate.last=range(3,4)",
        "model=minilm_l6",
        "seed=0,1",
        "hydra.run.dir=../x",
    ]
    with pytest.raises(RangeError, match="ablate.last=5..2"):
        expand_arguments(["ablate.first=0..11", "ablate.last=5..2"])


def test_drop_lower_triangle_keeps_upper_triangle_in_sweep_order():
    jobs = product("ablate.first=0..11", "ablate.last=0..11")
    assert len(jobs) == 144
    kept, dropped = drop_lower_triangle(jobs)
    assert (len(kept), dropped) == (78, 66)
    assert cells(kept) == upper_triangle(12)


def test_drop_lower_triangle_reorders_a_last_outer_product():
    jobs = product("ablate.last=0..11", "ablate.first=0..11")
    assert cells(jobs)[:2] == [(0, 0), (1, 0)]  # Hydra made `last` the outer loop
    kept, dropped = drop_lower_triangle(jobs)
    assert dropped == 66
    assert cells(kept) == upper_triangle(12)


def test_drop_lower_triangle_groups_by_other_overrides():
    jobs = product("seed=0,1", "ablate.first=0..2", "ablate.last=0..2", "model=minilm_l6")
    kept, dropped = drop_lower_triangle(jobs)
    assert dropped == 2 * 3
    seeds = [dict(arg.split("=", 1) for arg in job)["seed"] for job in kept]
    assert seeds == ["0"] * 6 + ["1"] * 6
    assert cells(kept) == upper_triangle(3) * 2
    assert all("model=minilm_l6" in job for job in kept)


def test_drop_lower_triangle_keeps_jobs_without_ablate_keys():
    jobs = product("seed=0,1,2", "model=minilm_l6")
    kept, dropped = drop_lower_triangle(jobs)
    assert dropped == 0
    assert sorted(kept) == sorted(jobs)
    assert len(kept) == 3
    only_first = [["ablate.first=5"], ["ablate.first=2"]]
    kept, dropped = drop_lower_triangle(only_first)
    assert dropped == 0 and sorted(kept) == sorted(only_first)
