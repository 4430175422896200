"""The recipe and placement studies' analysis on synthetic sweeps whose answers are known by construction:
heatmaps per recipe and of the adapted layers only, the recipe figure's numbers, the placement figure's
points, "lower layers matter less" per recipe and AdapterDrop's claim (no torch).

Each synthetic job writes what a real one writes (a results.csv row and predictions.npz); predictions flip a
fixed share of examples (`test_report.wrong`), so every accuracy is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from test_report import Sweep, wrong  # the report tests' synthetic sweeps and predictions

from analysis import plots
from analysis.__main__ import main
from analysis.claims import evaluate_claims, lower_block
from analysis.collect import load_runs
from analysis.plots import (
    PLACEMENT_COLORS,
    heatmap,
    placement_layers_plot,
    placement_params_plot,
    placement_time_plot,
    recipe_plot,
    study_figures,
)
from analysis.report import build_report
from analysis.select import (
    BOTTOM_KEPT,
    BOTTOM_RETRAINED,
    TOP_KEPT,
    TOP_RETRAINED,
    figure_plan,
    placement_rows,
    recipe_cells,
    split_panels,
    varying,
)
from analysis.stats import cell_intervals, layer_matrix, recipe_profile

LAYERS = 6
ALL = "+".join(map(str, range(LAYERS)))
INTACT = 0.9  # every training: 10% of examples wrong
SUITE = {"layernorms": "train", "head": "classifier", "variant": "plain", "adapter_size": 64}
POOLER = {"layernorms": "freeze", "head": "pooler", "variant": "plain", "adapter_size": 64}
HUB = {"layernorms": "freeze", "head": "pooler", "variant": "activation=swish", "adapter_size": 24}
ADAPTERDROP = "lower layers' adapters can be dropped"


def Jobs(path: Path, study: str | None, model: str = "minilm") -> Sweep:
    """A recipe or placement sweep: the suite's recipe on every layer unless a job says otherwise, results.csv
    written once by `save()`."""
    defaults = {"adapter_layers": ALL, **SUITE, "trained_params": 100_000, "fit_seconds": 100.0}
    return Sweep(path, study, task="rotten_tomatoes", model=model, defaults=defaults, deferred=True)


def spans():
    return [(f, la) for f in range(LAYERS) for la in range(f, LAYERS)]


# Share of examples each recipe's removal of first..last loses: the suite's recipe loses where the top layers
# go, the pooler recipe where the bottom ones go, AdapterHub's a little everywhere (per layer removed).
DROPS = {
    "suite": lambda f, la: 0.15 if la >= LAYERS // 2 else 0.01,
    "pooler": lambda f, la: 0.15 if f < LAYERS // 2 else 0.0,
    "hub": lambda f, la: 0.01 * (la - f + 1),
}
RECIPES = {"suite": SUITE, "pooler": POOLER, "hub": HUB}


def recipe_sweep(
    path: Path, seeds=(0, 1), tasks=("rotten_tomatoes", "tweets"), recipes=tuple(RECIPES)
) -> Path:
    """The recipe study: every span of every recipe, task and seed; tweets loses half as much."""
    jobs = Jobs(path, "recipe")
    for task in tasks:
        scale = 1.0 if task == "rotten_tomatoes" else 0.5
        for name in recipes:
            for seed in seeds:
                intact = wrong(jobs.truth, 0.1, offset=seed)
                key = f"{task}-{name}-{seed}"
                for first, last in spans():
                    share = scale * DROPS[name](first, last) + 0.01 * seed  # the seeds differ a little
                    ablated = wrong(intact, share, offset=200)
                    jobs.job(intact, ablated, task=task, seed=seed, first=first, last=last, train_key=key,
                             ablate_kind="zero", **RECIPES[name])  # fmt: skip
    return jobs.save()


def runs(path: Path) -> pd.DataFrame:
    return load_runs([path]).table


# --- heatmaps per recipe, and of the adapted layers only --------------------------------------------------


def test_a_partial_layer_training_is_a_matrix_of_its_adapted_layers(tmp_path):
    jobs = Jobs(tmp_path / "s", None)
    intact = wrong(jobs.truth, 0.1)
    for first, last in [(f, la) for f in (3, 4, 5) for la in range(f, 6)]:
        jobs.job(intact, wrong(intact, 0.01 * (last - first + 1) + 0.001 * first, offset=200), first=first,
                 last=last, adapter_layers="3+4+5", layernorms="adapted")  # fmt: skip
    rows = runs(jobs.save())
    matrix = layer_matrix(rows)
    assert list(matrix.index) == [3, 4, 5] and list(matrix.columns) == [3, 4, 5]
    assert matrix.loc[3, 5] == pytest.approx(1 - (INTACT - 0.033) / INTACT)
    assert matrix.loc[5, 3] != matrix.loc[5, 3]  # the lower triangle stays empty
    ax = Figure().subplots()
    heatmap(rows, ax)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3", "4", "5"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["3", "4", "5"]
    assert "adapters in layers 3..5 only" in ax.get_title()
    # an all-layer training keeps the whole 0..L-1 grid, as before the column existed
    full = rows.assign(adapter_layers=ALL)
    assert list(layer_matrix(full).index) == list(range(LAYERS))


def test_heatmaps_split_by_recipe_and_name_it(tmp_path, monkeypatch):
    rows = runs(recipe_sweep(tmp_path / "r", seeds=(0,), tasks=("rotten_tomatoes",)))
    plan = figure_plan(rows)
    assert list(plan) == ["heatmap", "recipe"]
    panels = split_panels(plan["heatmap"])
    assert len(panels) == 3 and all(p["train_key"].nunique() == 1 for p in panels)
    figures = {}

    def keep(fig: Figure, stem: Path) -> list[Path]:
        figures[Path(stem).name] = fig
        return []

    monkeypatch.setattr(plots, "_save", keep)
    study_figures(rows, tmp_path / "out")
    titles = [ax.get_title() for ax in figures["heatmap"].axes if ax.get_title()]
    firsts = sorted(t.split("\n")[0] for t in titles)
    assert firsts == [
        "AdapterHub (LN freeze · pooler · swish · m=24)",
        "LN freeze · pooler",
        "LN train · classifier",
    ]
    # a study whose recipe is constant names none (the layer-ablation heatmap as it was)
    one = runs(recipe_sweep(tmp_path / "one", seeds=(0,), tasks=("rotten_tomatoes",), recipes=("suite",)))
    figures.clear()
    study_figures(one.assign(study="layer_ablation"), tmp_path / "out1")
    (title,) = [ax.get_title() for ax in figures["heatmap"].axes if ax.get_title()]
    assert title.startswith("rotten_tomatoes / minilm") and "LN" not in title


def test_table_and_ci_read_a_recipe_sweep_one_matrix_per_recipe(tmp_path, capsys):
    path = recipe_sweep(tmp_path / "r", seeds=(0,), tasks=("rotten_tomatoes",))
    assert main(["table", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("relative_decrease (%): rows = first ablated layer") == 3
    assert "layernorms=train head=classifier variant=plain adapter_size=64" in out
    assert "layernorms=freeze head=pooler variant=activation=swish adapter_size=24" in out
    assert main(["ci", str(path)]) == 0
    table = capsys.readouterr().out
    assert "layernorms" in table.splitlines()[0] and len(table.splitlines()) == 1 + 3 * len(spans())
    # `compare` needs one heatmap a side: one line naming what varies
    assert main(["compare", str(path), str(path), "--out", str(tmp_path / "c")]) == 2
    assert (
        "holds several heatmaps (varying ['layernorms', 'head', 'variant', 'adapter_size'])"
        in capsys.readouterr().err
    )
    # one recipe: the table's header as before (no recipe column named)
    single = recipe_sweep(tmp_path / "one", seeds=(0,), tasks=("rotten_tomatoes",), recipes=("suite",))
    assert main(["table", str(single)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "task=rotten_tomatoes model=minilm method=adapters positions=both seeds=1"


# --- the recipe figure and the claim per recipe -----------------------------------------------------------


def test_recipe_profile_is_the_rows_relative_decrease_with_the_cells_intervals(tmp_path):
    rows = runs(recipe_sweep(tmp_path / "r"))
    cells = recipe_cells(rows)
    assert set(zip(cells["first"], cells["last"], strict=True)) == {(0, 2), (3, 5)}
    for task, panel in cells.groupby("task"):
        profile = recipe_profile(panel)
        assert profile["recipe"].tolist() == [
            "LN train · classifier", "LN train · classifier", "LN freeze · pooler", "LN freeze · pooler",
            "AdapterHub (LN freeze · pooler · swish · m=24)", "AdapterHub (LN freeze · pooler · swish · m=24)",
        ]  # fmt: skip
        for _, row in profile.iterrows():
            same = {c: row[c] for c in ("layernorms", "head", "variant")}
            mine = rows[(rows["task"] == task) & (rows[list(same)] == pd.Series(same)).all(axis=1)]
            cell = mine[(mine["first"] == row["first"]) & (mine["last"] == row["last"])]
            direct = 100 * (1 - cell["accuracy"].mean() / cell["intact_accuracy"].mean())
            assert row["relative_decrease"] == pytest.approx(direct)
            # the interval is the heatmap's cell interval (one bootstrap path)
            heat = cell_intervals(mine).set_index(["first", "last"]).loc[(row["first"], row["last"])]
            assert (row["lo"], row["hi"]) == pytest.approx((heat["lo"], heat["hi"]))
            assert row["lo"] <= row["relative_decrease"] <= row["hi"] and row["seeds"] == 2
        # rows without their predictions (no `sweep`): the same numbers, no interval
        bare = recipe_profile(panel.drop(columns="sweep"))
        assert bare["relative_decrease"].tolist() == pytest.approx(profile["relative_decrease"].tolist())
        assert bare["lo"].isna().all()
    # drawn: one row of points per recipe, at the profile's values
    ax = Figure().subplots()
    table = recipe_plot(cells[cells["task"] == "tweets"], ax)
    drawn = np.vstack([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    assert sorted(drawn[:, 0]) == pytest.approx(sorted(table["relative_decrease"]))
    assert [t.get_text() for t in ax.get_yticklabels()] == list(dict.fromkeys(table["recipe"]))


def test_lower_layers_matter_less_is_judged_once_per_recipe(tmp_path):
    table = evaluate_claims(runs(recipe_sweep(tmp_path / "r")))
    claim = table[table["claim"] == "lower layers matter less"].set_index("panel")
    assert lower_block(LAYERS) < LAYERS // 2  # the claim's blocks lie within the halves DROPS sets apart
    expected = {
        "LN train · classifier": "reproduced",  # the top layers' removal costs 15%, the bottom's 1%
        "LN freeze · pooler": "not reproduced",  # the reverse
    }
    for task in ("rotten_tomatoes", "tweets"):
        for recipe, verdict in expected.items():
            assert claim.loc[f"minilm · {task} · {recipe}", "verdict"] == verdict
    assert len(claim) == 6  # 3 recipes x 2 tasks, none over mixed rows
    hub = claim.loc["minilm · tweets · AdapterHub (LN freeze · pooler · swish · m=24)"]
    assert hub["estimate"] == pytest.approx(0.0)  # two layers removed at either end: the same loss


# --- placement -------------------------------------------------------------------------------------------

TOP_FIT, ALL_FIT = (lambda k: 20.0 + 10 * k), 100.0


def retrained_loss(where: str, k: int) -> float:
    """Share of examples a training with adapters in k layers loses against the all-layer one."""
    return (0.01 if where == "top" else 0.04) * (LAYERS - k)


def kept_loss(first: int, last: int) -> float:
    """Keeping only first..last: 5% per removed layer, 5% more when the top layers lose theirs."""
    return 0.05 * (LAYERS - (last - first + 1)) + (0.05 if last < LAYERS - 1 else 0.0)


def placement_sweep(
    path: Path,
    seeds=(0, 1, 2),
    top_half_loss: float | None = None,
    top_half_fit: float | None = None,
    spread: float = 0.01,
) -> Path:
    """The placement study: the all-layer training's keep cells, and top-k / bottom-k trainings' intact rows
    (the top half's loss and training time can be set, for the claim); each seed loses `spread` x seed more
    than the one before, but the all-layer training's intact model, at 90% whatever the seed."""
    jobs = Jobs(path, "placement")
    for seed in seeds:
        base = {"seed": seed, "layernorms": "adapted", "fit_seconds": ALL_FIT + seed}
        intact = wrong(jobs.truth, 0.1, offset=seed)
        for first, last in spans():
            jobs.job(intact, wrong(intact, kept_loss(first, last) + spread * seed, offset=200), first=first,
                     last=last, ablate_kind="keep", train_key=f"all-{seed}", **base)  # fmt: skip
        for k in range(1, LAYERS):
            for where, layers in (("top", range(LAYERS - k, LAYERS)), ("bottom", range(k))):
                loss, fit = retrained_loss(where, k), (TOP_FIT(k) if where == "top" else ALL_FIT - k)
                if where == "top" and k == LAYERS // 2:
                    loss = loss if top_half_loss is None else top_half_loss
                    fit = fit if top_half_fit is None else top_half_fit
                predictions = wrong(jobs.truth, 0.1 + loss + spread * seed, offset=seed)
                jobs.job(predictions, **{**base, "fit_seconds": fit + seed}, ablate_kind="zero",
                         adapter_layers="+".join(map(str, layers)), train_key=f"{where}{k}-{seed}",
                         trained_params=15_000 * k)  # fmt: skip
    return jobs.save()


def line_points(ax) -> dict[str, tuple[list[float], list[float]]]:
    """The seaborn lines of a placement panel by series (told apart by colour)."""
    by_color = {to_hex(c): s for s, c in PLACEMENT_COLORS.items()}
    out = {}
    for line in ax.lines:
        series = by_color.get(to_hex(line.get_color()))
        if series is not None and len(line.get_xdata()) > 1:
            out[series] = (list(line.get_xdata()), list(line.get_ydata()))
    return out


def kept(keep: pd.DataFrame, first: int, last: int) -> float:
    """The mean accuracy of the keep cells of first..last."""
    return keep.loc[(keep["first"] == first) & (keep["last"] == last), "accuracy"].mean()


def test_placement_series_are_the_rows_means(tmp_path):
    rows = runs(placement_sweep(tmp_path / "p"))
    ax = Figure().subplots()
    placement_layers_plot(rows, ax)
    drawn = line_points(ax)
    assert set(drawn) == {TOP_RETRAINED, BOTTOM_RETRAINED, TOP_KEPT, BOTTOM_KEPT}
    intact = rows[rows["first"].isna()]
    keep = rows[rows["ablate_kind"] == "keep"]
    whole = 100 * keep.drop_duplicates("train_key")["intact_accuracy"].mean()  # the all-layer training
    for k in range(1, LAYERS + 1):
        top = "+".join(map(str, range(LAYERS - k, LAYERS)))
        bottom = "+".join(map(str, range(k)))
        expect = {
            TOP_RETRAINED: 100 * intact.loc[intact["adapter_layers"] == top, "accuracy"].mean(),
            BOTTOM_RETRAINED: 100 * intact.loc[intact["adapter_layers"] == bottom, "accuracy"].mean(),
            TOP_KEPT: 100 * kept(keep, LAYERS - k, LAYERS - 1),
            BOTTOM_KEPT: 100 * kept(keep, 0, k - 1),
        }  # fmt: skip
        if k == LAYERS:
            expect[TOP_RETRAINED] = expect[BOTTOM_RETRAINED] = whole
        for series, value in expect.items():
            xs, ys = drawn[series]
            assert ys[xs.index(k)] == pytest.approx(value), (series, k)
    # the seeds as bands: one filled band per series
    assert len([c for c in ax.collections if c.get_paths()]) == 4
    # (b) trained parameters: the same means at each training's count; (c) one time per training
    ax = Figure().subplots()
    params = placement_params_plot(rows, ax)
    xs, ys = line_points(ax)[TOP_RETRAINED]
    assert xs == sorted(params.loc[params["series"] == TOP_RETRAINED, "trained_params"].unique())
    ax = Figure().subplots()
    means = placement_time_plot(rows, ax).set_index(["series", "k"])
    three = intact[intact["adapter_layers"] == "3+4+5"]
    assert means.loc[(TOP_RETRAINED, 3), "fit_seconds"] == pytest.approx(three["fit_seconds"].mean())
    assert means.loc[(TOP_RETRAINED, 3), "accuracy"] == pytest.approx(100 * three["accuracy"].mean())


def test_placement_with_one_seed_draws_points_without_bands(tmp_path):
    rows = runs(placement_sweep(tmp_path / "p", seeds=(0,)))
    ax = Figure().subplots()
    table = placement_layers_plot(rows, ax)
    assert table["sem"].isna().all() and (table["n"] == 1).all()
    assert not [c for c in ax.collections if c.get_paths()]  # no band
    assert set(line_points(ax)) == {TOP_RETRAINED, BOTTOM_RETRAINED, TOP_KEPT, BOTTOM_KEPT}
    # without training times the time panel says so and draws nothing
    ax = Figure().subplots()
    assert placement_time_plot(rows.assign(fit_seconds=np.nan), ax).empty
    assert "not recorded" in ax.texts[0].get_text()


def test_placement_rows_need_a_partial_training(tmp_path):
    rows = runs(placement_sweep(tmp_path / "p", seeds=(0,)))
    assert placement_rows(rows[rows["ablate_kind"] == "keep"]).empty  # the keep cells alone: no placement
    plan = figure_plan(rows)
    assert list(plan) == ["heatmap_keep", "placement"]
    assert len(plan["placement"]) == len(rows)


def adapterdrop(path: Path) -> pd.Series:
    table = evaluate_claims(runs(path))
    (row,) = table[table["claim"] == ADAPTERDROP].to_dict("records")
    return pd.Series(row)


def test_adapterdrop_claim_flips_across_the_one_point_line(tmp_path):
    held = adapterdrop(placement_sweep(tmp_path / "held", top_half_loss=0.005, spread=0))
    assert held["verdict"] == "reproduced" and held["panel"] == "minilm · rotten_tomatoes"
    assert held["estimate"] == pytest.approx(-0.5) and held["lo"] > -1.0
    # the ratio of the top half's training time to the all-layer one's, per seed: (50 + s) / (100 + s)
    ratios = [(TOP_FIT(3) + s) / (ALL_FIT + s) for s in (0, 1, 2)]
    assert f"training time {np.mean(ratios):.2f}× the all-layer training's" in held["measured"]
    assert f"(seeds {min(ratios):.2f}–{max(ratios):.2f})" in held["measured"]
    lost = adapterdrop(placement_sweep(tmp_path / "lost", top_half_loss=0.03, spread=0))
    assert lost["verdict"] == "not reproduced" and lost["estimate"] == pytest.approx(-3.0) and lost["hi"] < -1
    slow = adapterdrop(placement_sweep(tmp_path / "slow", top_half_loss=0.005, top_half_fit=150.0, spread=0))
    assert slow["verdict"] == "not reproduced" and slow["estimate"] == pytest.approx(-0.5)


def test_adapterdrop_without_training_times_or_rows(tmp_path):
    path = placement_sweep(tmp_path / "p", seeds=(0,), top_half_loss=0.005, spread=0)
    table = pd.read_csv(path / "results.csv").assign(fit_seconds=np.nan)
    table.to_csv(path / "results.csv", index=False)
    row = adapterdrop(path)
    assert row["verdict"] == "inconclusive" and "training time not recorded" in row["measured"]
    # rows of other studies: not measured, listed with the study that measures it
    other = adapterdrop(recipe_sweep(tmp_path / "r", seeds=(0,), tasks=("tweets",), recipes=("suite",)))
    assert other["verdict"] == "no data"


# --- the report ------------------------------------------------------------------------------------------


def test_the_report_draws_both_figures_and_judges_their_claims(tmp_path):
    recipe = recipe_sweep(tmp_path / "r", seeds=(0,), tasks=("rotten_tomatoes",), recipes=("suite", "hub"))
    placement = placement_sweep(tmp_path / "p", seeds=(0,), top_half_loss=0.005)
    page = build_report([recipe, placement], tmp_path / "report.html").read_text()
    for name in ("heatmap", "recipe", "heatmap_keep", "placement"):
        assert f"<img alt='{name}'" in page
    assert "minilm · rotten_tomatoes · AdapterHub (LN freeze · pooler · swish · m=24)" in page
    assert "minilm · rotten_tomatoes · LN train · classifier" in page
    section = page.split("What the paper claimed")[1].split("<h2>")[0]
    assert section.count("<b>lower layers matter less</b>") == 2
    assert section.count("<b>lower layers&#x27; adapters can be dropped</b>") == 1
    assert "No figures" not in page


def test_rows_without_a_study_infer_the_figures_and_other_methods_are_no_recipe(tmp_path):
    rows = runs(recipe_sweep(tmp_path / "r", seeds=(0,), tasks=("tweets",)))
    assert list(figure_plan(rows.assign(study=None))) == ["heatmap", "recipe"]
    one = rows[rows["layernorms"] == "train"].assign(study=None)
    assert list(figure_plan(one)) == ["heatmap"]  # one recipe: nothing to compare
    placement = runs(placement_sweep(tmp_path / "p", seeds=(0,)))
    assert list(figure_plan(placement.assign(study=None))) == ["heatmap_keep", "placement"]
    # a head-only baseline (no variant, size or LayerNorm choice) beside one recipe is no second recipe
    head = one.iloc[:2].assign(
        method="head", variant=None, adapter_size=None, layernorms=None, first=None, last=None
    )
    assert varying(pd.concat([one, head])) == []
    assert varying(rows) == ["layernorms", "head", "variant", "adapter_size"]


def test_best_of_n_draws_the_new_figures(tmp_path):
    rows = pd.concat(
        [runs(recipe_sweep(tmp_path / "r", tasks=("tweets",))), runs(placement_sweep(tmp_path / "p"))]
    )
    paths = study_figures(rows, tmp_path / "out", selection="best")
    names = {p.name for p in paths}
    assert {"recipe_best_of_n.png", "placement_best_of_n.png", "heatmap_best_of_n.png"} <= names
    ax = Figure().subplots()
    table = placement_layers_plot(rows[rows["study"] == "placement"], ax, "best")
    assert (table["n"] == 1).all()  # one training (or keep cell) per series and k
