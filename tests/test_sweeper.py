"""The sweeper's pure parts: ranges, grids, the lower-triangle filter and order; the jobs of every study."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ablation.config import ConfigError
from ablation.jobs import (
    RangeError,
    build_jobs,
    choose_grid,
    drop_lower_triangle,
    expand_arguments,
    expand_layer_ranges,
    expand_range,
    layer_range,
)
from ablation.jobs import product as jobs_product

KEY = "ablate.first"
LAYER_CHOICES = ("model", "preset", "study")  # what decides the model's layer count


def product(*arguments: str) -> list[list[str]]:
    """The cartesian product of sweep overrides, as Hydra's basic sweeper builds it."""
    return jobs_product(OverridesParser.create().parse_overrides(expand_arguments(list(arguments))))


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


# --- studies: the jobs each conf/study/<name>.yaml expands to (the sweeper's own functions, in-process) ---

CONF = Path(__file__).resolve().parents[1] / "conf"


def study_jobs(study: str, *arguments: str) -> list[dict[str, str]]:
    """The jobs `python -m ablation.run -m study=<study> <arguments>` launches, as {key: value} dicts."""
    cli = [f"study={study}", *arguments]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        groups = [arg for arg in cli if arg.split("=")[0] in ("study", "preset", "model")]  # no sweep values
        sweeper = compose("config", overrides=groups, return_hydra_config=True).hydra.sweeper

        @functools.cache
        def layers_of(choices: tuple[str, ...]) -> int:
            return compose("config", overrides=list(choices)).model.num_layers

        def num_layers(overrides: tuple[str, ...]) -> int:
            # the model's layer count follows from the model, preset and study alone: composed once per choice
            return layers_of(tuple(o for o in overrides if o.split("=")[0].split(".")[0] in LAYER_CHOICES))

        params, grids, _ = choose_grid(
            OmegaConf.to_container(sweeper.params) if sweeper.params else {},
            OmegaConf.to_container(sweeper.grids) if sweeper.grids else [{}],
            OmegaConf.to_container(sweeper.presets) if sweeper.presets else {},
            next((arg.split("=", 1)[1] for arg in cli if arg.startswith("preset=")), None),
        )
        jobs = build_jobs(params, grids, cli, OverridesParser.create())
        jobs, _ = drop_lower_triangle(expand_layer_ranges(jobs, num_layers))
    return [dict(arg.split("=", 1) for arg in job) for job in jobs]


def values(jobs: list[dict[str, str]], key: str) -> set[str]:
    return {job.get(key) for job in jobs}


def test_init_scale_study_jobs():
    jobs = study_jobs("init_scale")
    assert len(jobs) == 2 * 8 * 3 == len({tuple(sorted(j.items())) for j in jobs})
    assert {float(v) for v in values(jobs, "adapter.init_std")} == {10.0**e for e in range(-7, 1)}
    assert values(jobs, "task") == {"rotten_tomatoes", "tweets"} and values(jobs, "seed") == {"0", "1", "2"}
    # the command line wins over the study's values: seeds swept with the same a..b syntax
    assert values(study_jobs("init_scale", "seed=3..7"), "seed") == {str(s) for s in range(3, 8)}


def test_bottleneck_study_jobs():
    jobs = study_jobs("bottleneck")
    assert len(jobs) == 2 * 10 * 3
    assert {int(v) for v in values(jobs, "adapter.size")} == {2**n for n in range(10)} >= {8, 64, 256}


@pytest.mark.parametrize(("model", "L"), [("mpnet_base", 12), ("minilm_l6", 6)])
def test_tradeoff_study_covers_every_method_and_k_up_to_L(model, L):
    jobs = study_jobs("tradeoff", f"model={model}")
    assert len(jobs) == 2 * 3 * (10 + L + 1 + 1 + 1 + 7)
    by_method = {m: [j for j in jobs if j["method"] == m] for m in values(jobs, "method")}
    assert set(by_method) == {"adapters", "top_k", "layernorm", "full", "head", "lora"}
    assert {int(j["method.r"]) for j in by_method["lora"]} == {2**n for n in range(7)}
    assert all(j["method.alpha"] == j["method.r"] for j in by_method["lora"])  # alpha = r: scaling 1
    assert {int(j["method.k"]) for j in by_method["top_k"]} == set(range(1, L + 1))
    assert {int(j["adapter.size"]) for j in by_method["adapters"]} == {2**n for n in range(10)}
    # each grid keeps its own keys: no size on top_k jobs, no k on adapter jobs
    assert all("adapter.size" not in j for j in by_method["top_k"] + by_method["full"])
    assert all(
        "method.k" not in j for j in by_method["adapters"] + by_method["layernorm"] + by_method["head"]
    )
    # one model and task at a time: the process loads each (model, task) once
    tasks = [j["task"] for j in jobs]
    assert tasks == sorted(tasks)


def test_variants_study_has_eleven_distinct_variants():
    from ablation.config import RunConfig
    from ablation.keys import variant

    jobs = study_jobs("variants", "seed=0", "task=rotten_tomatoes")
    assert len(jobs) == 11
    labels = set()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for job in jobs:
            overrides = [f"{k}={v}" for k, v in job.items() if k != "study"]
            cfg = OmegaConf.to_object(compose("config", overrides=overrides))
            assert isinstance(cfg, RunConfig)
            labels.add(variant(cfg.adapter))
    assert labels == {
        "plain", "norm=layernorm", "norm=batchnorm", "depth=2", "activation=relu", "activation=tanh",
        "activation=swish", "positions=attention", "positions=output", "placement=parallel",
        "placement=parallel,combine=multiply",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "cells"), [((), 78), (("preset=quick",), 21), (("model=minilm_l6",), 21)]
)
def test_layer_ablation_study_fits_any_model(arguments, cells):
    jobs = study_jobs("layer_ablation", *arguments)
    assert len(jobs) == cells
    L = 12 if cells == 78 else 6
    assert [(int(j["ablate.first"]), int(j["ablate.last"])) for j in jobs] == upper_triangle(L)


def test_layer_ranges():
    assert layer_range("0..L-1", 6) == list(range(6))
    assert layer_range("1..L", 12) == list(range(1, 13))
    assert layer_range("3..L-2", 6) == [3, 4]
    assert layer_range("0..11", 12) is None
    # single layers and halves, as the controls study writes them
    assert layer_range("L-1", 12) == [11] and layer_range("L-1", 6) == [5]
    assert layer_range("L/2-1", 12) == [5] and layer_range("L/2", 6) == [3]
    assert layer_range("L/2..L-1", 12) == list(range(6, 12)) and layer_range("0..L/2-1", 6) == [0, 1, 2]
    assert layer_range("L/3+1", 12) == [5]
    assert (
        expand_range("ablate.first", "L/2") == "L/2"
        and expand_range("ablate.first", "L/2..L-1") == "L/2..L-1"
    )
    with pytest.raises(RangeError, match="L=2"):
        layer_range("4..L", 2)
    assert expand_range("method.k", "1..L") == "1..L"
    with pytest.raises(RangeError, match="a..L"):
        expand_range("method.k", "1..M")


# --- quick presets: each study's hydra.sweeper.presets.quick ---

STUDIES = sorted(p.stem for p in (CONF / "study").glob("*.yaml"))
QUICK_JOBS = {
    "init_scale": 8,
    "bottleneck": 6,
    "tradeoff": 10,
    "variants": 8,
    "layer_ablation": 21,
    "controls": 80,
    "recipe": 42,  # the suite's recipe and AdapterHub's: 2 x 21 cells
    "placement": 25,  # the all-layer training's 21 keep cells, top and bottom 1 and L/2 retrained
}


def test_every_study_has_a_quick_grid():
    assert sorted(QUICK_JOBS) == STUDIES


@pytest.mark.parametrize("study", STUDIES)
def test_a_quick_preset_runs_a_part_of_its_study(study):
    """Every quick job's setting is one the full study runs (on the quick preset's model), fewer of them;
    only the training differs (shorter, at higher rates)."""

    def settings(jobs: list[dict[str, str]]) -> set[tuple]:
        drop = ("preset", "model", "train.lr")
        default = (
            "ablate.block",
            "1",
        )  # blocks of one layer (L/6 on the 6-layer model): the full study's cells
        return {
            tuple(sorted((k, v) for k, v in j.items() if k not in drop and (k, v) != default)) for j in jobs
        }

    quick = study_jobs(study, "preset=quick")
    full = study_jobs(study, "model=minilm_l6")
    assert len(quick) == QUICK_JOBS[study] == len(settings(quick))
    assert settings(quick) <= settings(full)
    assert len(quick) < len(full) or study == "layer_ablation"  # its quick grid is the 6-layer model's


def test_choose_grid_takes_the_presets_grid_and_says_when_there_is_none():
    params, grids = {"seed": "0..2", "adapter.size": "1,2"}, [{"train.lr": "1e-3"}]
    presets = {"quick": {"params": {"seed": "0"}}}
    assert choose_grid(params, grids, presets, None) == (params, grids, False)
    assert choose_grid(params, grids, presets, "quick") == ({"seed": "0"}, [{}], False)
    assert choose_grid(params, grids, {}, "quick") == (params, grids, True)  # the full grid, said in the log
    assert choose_grid({}, [{}], {}, "quick") == ({}, [{}], False)  # no study: nothing to say
    with pytest.raises(ConfigError, match=r"presets.quick has \['steps'\]: allowed are params and grids"):
        choose_grid(params, grids, {"quick": {"steps": 5}}, "quick")
