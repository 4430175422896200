"""Tests for the study figures and seed aggregation, on synthetic tables with known answers (no torch)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from ablation.results import COLUMNS
from analysis.__main__ import main
from analysis.collect import conform
from analysis.plots import bottleneck_plot, init_scale_plot, study_figures, tradeoff_plot, variants_plot
from analysis.select import best_seed_rows, figure_plan
from analysis.stats import summarize_seeds

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
MAJORITY = {"rte": 0.53, "cola": 0.69}
FULL_PARAMS = 110_000_000


def run(study: str | None = None, **fields) -> dict:
    """One intact run with every schema column: plain adapters, size 64, init 1e-3, unless overridden."""
    row = {c: None for c in COLUMNS}
    row.update(study=study, task="rte", model="tiny", method="adapters", variant="plain", seed=0,
               adapter_size=64, init_std=1e-3, positions="both", accuracy=0.8, intact_accuracy=0.8,
               majority_rate=MAJORITY[fields.get("task", "rte")], diverged=False, lr=1e-3,
               trained_params=1000, total_params=FULL_PARAMS)  # fmt: skip
    row.update(fields)
    return row


def table(rows: list[dict]) -> pd.DataFrame:
    return conform(pd.DataFrame(rows, columns=list(COLUMNS)))


def seeded(value: float, seed: int) -> float:
    """Seeds 0, 1, 2 at value - 0.01, value, value + 0.02: mean value + 0.01/3, a known s.e.m."""
    return value + (-0.01, 0.0, 0.02)[seed]


SEED_MEAN_SHIFT = 0.01 / 3
SEED_SEM = np.std([-0.01, 0.0, 0.02], ddof=1) / np.sqrt(3)


def init_scale_rows(tasks=("rte", "cola"), study: str | None = "init_scale") -> list[dict]:
    rows = []
    for task in tasks:
        for seed in SEEDS:
            for e in range(-7, 1):
                accuracy = seeded(0.8 - 0.05 * max(0, e + 2), seed)
                rows.append(run(study, task=task, seed=seed, init_std=10.0**e, accuracy=accuracy))
    return rows


def sizes_rows(study: str | None = "bottleneck") -> list[dict]:
    """Plain adapters of sizes 1..512 (accuracy 0.7 + 0.01 log2 m), three seeds each."""
    rows = []
    for seed in SEEDS:
        for n in range(10):
            accuracy = seeded(0.7 + 0.01 * n, seed)
            rows.append(
                run(study, seed=seed, adapter_size=2**n, accuracy=accuracy, trained_params=100 * 2**n)
            )
    return rows


def baseline(study: str | None, seed: int, method: str, accuracy: float, params: int, **fields) -> dict:
    """A run of a method without adapters, `accuracy` spread over seeds as `seeded` does."""
    no_adapter = {"variant": None, "adapter_size": None, "init_std": None}
    accuracy = seeded(accuracy, seed)
    return run(
        study, seed=seed, method=method, accuracy=accuracy, trained_params=params, **no_adapter, **fields
    )


def methods_rows(study: str | None = "tradeoff") -> list[dict]:
    """Adapters of sizes 1..512, top k = 1..6, LayerNorm-only and full fine-tuning, three seeds each."""
    rows = sizes_rows(study)
    for seed in SEEDS:
        rows += [
            baseline(study, seed, "top_k", 0.6 + 0.02 * k, 7_000_000 * k, k=k, lr=3e-4) for k in range(1, 7)
        ]
        rows.append(baseline(study, seed, "layernorm", 0.75, 40_000))
        rows.append(baseline(study, seed, "full", 0.85, FULL_PARAMS, lr=3e-5))
    return rows


VARIANTS = {
    "plain": 0.80,
    "norm=layernorm": 0.78,
    "placement=parallel,combine=multiply": 0.76,
    "depth=2": 0.79,
}


def variant_rows(study: str | None = "variants") -> list[dict]:
    return [
        run(study, seed=seed, variant=v, accuracy=seeded(a, seed))
        for v, a in VARIANTS.items()
        for seed in SEEDS
    ]


def ablation_rows(study: str | None = "layer_ablation") -> list[dict]:
    return [
        run(study, first=first, last=last, accuracy=0.8 - 0.01 * (last - first + 1), relative_decrease=0.01)
        for first in range(3)
        for last in range(first, 3)
    ]


def axes() -> Axes:
    return Figure().add_subplot()


def lines(ax: Axes, **props):
    out = list(ax.lines)
    if "label" in props:
        out = [line for line in out if line.get_label().startswith(props["label"])]
    if "marker" in props:
        out = [line for line in out if line.get_marker() == props["marker"]]
    if "linestyle" in props:
        out = [line for line in out if line.get_linestyle() == props["linestyle"]]
    return out


def errorbars(ax: Axes) -> dict[str, ErrorbarContainer]:
    return {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}


def bar_extents(container: ErrorbarContainer) -> list[tuple[float, float, float]]:
    """(x, low, high) of each vertical error bar."""
    segments = container.lines[2][0].get_segments()
    return [(seg[0][0], seg[0][1], seg[1][1]) for seg in segments]


# --- summarize_seeds ---------------------------------------------------------------------------------


def test_summarize_seeds_mean_sem_and_counts_on_known_numbers():
    df = pd.DataFrame(
        {
            "g": ["a", "a", "a", "b", "c", "c", "c"],
            "seed": [0, 1, 2, 0, 0, 1, 2],
            "accuracy": [0.6, 0.7, 0.8, 0.5, 0.5, np.nan, 0.7],
            "diverged": [False, False, False, False, True, True, False],
        }
    )
    out = summarize_seeds(df, ["g"]).set_index("g")
    assert list(out.columns) == ["mean", "sem", "n", "n_runs", "n_diverged"]
    assert out.loc["a", "mean"] == pytest.approx(0.7) and out.loc["a", "sem"] == pytest.approx(
        0.1 / np.sqrt(3)
    )
    assert out.loc["a", ["n", "n_runs", "n_diverged"]].tolist() == [3, 3, 0]
    assert np.isnan(out.loc["b", "sem"]) and out.loc["b", "n"] == 1
    # A diverged seed with a score counts in the mean; one without a score is left out, but counted.
    assert out.loc["c", "mean"] == pytest.approx(0.6) and out.loc["c", "sem"] == pytest.approx(0.1)
    assert out.loc["c", ["n", "n_runs", "n_diverged"]].tolist() == [2, 3, 2]


def test_summarize_seeds_best_of_n_picks_the_best_validation_seed():
    df = pd.DataFrame(
        {
            "g": ["a", "a", "a", "b", "b", "c"],
            "seed": [2, 0, 1, 1, 0, 0],
            "accuracy": [0.7, 0.6, 0.9, 0.8, 0.8, np.nan],
            "metric": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        }
    )
    out = summarize_seeds(df, ["g"], selection="best").set_index("g")
    assert list(out.columns) == ["best", "best_seed", "n", "n_runs", "n_diverged"]
    assert out.loc["a", "best"] == 0.9 and out.loc["a", "best_seed"] == 1
    assert out.loc["b", "best_seed"] == 0  # a tie goes to the lowest seed
    assert np.isnan(out.loc["c", "best"]) and pd.isna(out.loc["c", "best_seed"]) and out.loc["c", "n"] == 0
    # Another value is reported for the seed chosen on accuracy, not maximised itself.
    metric = summarize_seeds(df, ["g"], value="metric", selection="best").set_index("g")
    assert metric.loc["a", "best"] == 0.3 and metric.loc["b", "best"] == 0.5
    with pytest.raises(ValueError, match="selection"):
        summarize_seeds(df, ["g"], selection="median")


# --- one panel per figure -----------------------------------------------------------------------------


def test_init_scale_plot_maps_seeds_majority_and_divergence():
    rows = init_scale_rows()
    # Two diverged seeds at init 1: one still scored (counts in the mean), one with no score at all.
    for row in rows:
        if row["task"] == "rte" and row["init_std"] == 1.0 and row["seed"] in (0, 1):
            row["diverged"] = True
            row["accuracy"] = 0.3 if row["seed"] == 0 else np.nan
    ax = axes()
    out = init_scale_plot(table(rows), ax)
    assert ax.get_xscale() == "log"
    assert "%" in ax.get_ylabel() and "s.e.m." in ax.get_ylabel()
    (rte,) = lines(ax, label="rte")
    x, y = rte.get_xdata(), rte.get_ydata()
    np.testing.assert_allclose(x, 10.0 ** np.arange(-7, 1))
    expected = [100 * (0.8 - 0.05 * max(0, e + 2) + SEED_MEAN_SHIFT) for e in range(-7, 0)]
    np.testing.assert_allclose(y[:-1], expected)
    assert y[-1] == pytest.approx(100 * np.mean([0.3, seeded(0.8 - 0.1, 2)]))
    point = out.set_index(["task", "init_std"]).loc[("rte", 1e-3)]
    assert point["yerr"] == pytest.approx(100 * SEED_SEM) and point["n"] == 3
    assert out.set_index(["task", "init_std"]).loc[("rte", 1.0), ["n", "n_runs", "n_diverged"]].tolist() == [
        2,
        3,
        2,
    ]
    # The band spans mean +- s.e.m. at each x.
    band = ax.collections[0].get_paths()[0].vertices
    at = band[np.isclose(band[:, 0], 1e-3)][:, 1]
    assert at.min() == pytest.approx(point["y"] - point["yerr"]) and at.max() == pytest.approx(
        point["y"] + point["yerr"]
    )
    # Majority class: a dashed line per task, in the task's colour.
    dashed = {round(line.get_ydata()[0], 6): line.get_color() for line in lines(ax, linestyle="--")}
    assert dashed[round(100 * MAJORITY["rte"], 6)] == rte.get_color()
    assert round(100 * MAJORITY["cola"], 6) in dashed
    # Diverged: red x at the scored run's accuracy, the unscored one on the x axis, counted in the legend.
    marked = lines(ax, marker="x")
    assert [(m.get_xdata()[0], m.get_ydata()[0]) for m in marked] == [(1.0, pytest.approx(30.0)), (1.0, 0.0)]
    assert marked[1].get_transform() == ax.get_xaxis_transform()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith(f"diverged: 2 of {len(rows)} runs") for t in legend)
    assert "mean ± 1 s.e.m. over 3 seeds" in ax.get_title() and "tiny" in ax.get_title()


def test_bottleneck_plot_keeps_plain_adapters_on_a_log2_axis():
    rows = sizes_rows() + [run("bottleneck", method="top_k", k=1, adapter_size=None, accuracy=0.1)]
    rows += [run("bottleneck", variant="depth=2", adapter_size=4096, accuracy=0.2)]
    ax = axes()
    out = bottleneck_plot(table(rows), ax)
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    sizes = [2**n for n in range(10)]
    assert list(ax.get_xticks()) == sizes and [t.get_text() for t in ax.get_xticklabels()][-1] == "512"
    assert out["adapter_size"].tolist() == sizes and (out["n"] == 3).all()
    (line,) = lines(ax, label="rte")
    np.testing.assert_allclose(
        line.get_ydata(), [100 * (0.7 + 0.01 * n + SEED_MEAN_SHIFT) for n in range(10)]
    )
    vertical = sorted(line.get_xdata()[0] for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[-1])
    assert vertical == [8, 64, 256]


def test_tradeoff_plot_methods_points_and_full_fine_tuning_line():
    ax = axes()
    out = tradeoff_plot(table(methods_rows()), ax)
    assert ax.get_xscale() == "log"
    bars = errorbars(ax)
    assert set(bars) == {"adapters (size m)", "fine-tune top k layers", "LayerNorm only"}
    top_k = bars["fine-tune top k layers"]
    np.testing.assert_allclose(top_k.lines[0].get_xdata(), [7_000_000 * k for k in range(1, 7)])
    np.testing.assert_allclose(
        top_k.lines[0].get_ydata(), [100 * (0.6 + 0.02 * k + SEED_MEAN_SHIFT) for k in range(1, 7)]
    )
    x, low, high = bar_extents(top_k)[0]
    assert x == 7_000_000 and high - low == pytest.approx(2 * 100 * SEED_SEM)
    adapters = bars["adapters (size m)"].lines[0]
    np.testing.assert_allclose(adapters.get_xdata(), [100 * 2**n for n in range(10)])
    layernorm = bars["LayerNorm only"].lines[0]
    assert list(layernorm.get_xdata()) == [40_000] and len(layernorm.get_ydata()) == 1
    # Full fine-tuning: a horizontal line across the axes at its mean, its s.e.m. as a band, not a point.
    (full,) = lines(ax, label="full fine-tuning")
    full_mean = 100 * (0.85 + SEED_MEAN_SHIFT)
    assert list(full.get_xdata()) == [0, 1] and list(full.get_ydata()) == [pytest.approx(full_mean)] * 2
    assert full.get_transform() == ax.get_yaxis_transform()
    assert all(FULL_PARAMS not in c.lines[0].get_xdata() for c in bars.values())
    (band,) = ax.patches
    assert band.get_y() == pytest.approx(full_mean - 100 * SEED_SEM) and band.get_height() == pytest.approx(
        200 * SEED_SEM
    )
    assert ax.get_ylim()[1] > full_mean + 100 * SEED_SEM  # the reference is inside the frame, not on it
    assert set(out["method"]) == {"adapters", "top_k", "layernorm", "full"}


def test_variants_plot_plain_first_and_as_reference():
    ax = axes()
    out = variants_plot(table(variant_rows()), ax)
    order = ["plain", "depth=2", "norm=layernorm", "placement=parallel,combine=multiply"]
    assert out["variant"].tolist() == order
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["plain", "depth: 2", "norm: layernorm", "placement: parallel, combine: multiply"]
    (points,) = errorbars(ax).values()
    np.testing.assert_allclose(
        points.lines[0].get_ydata(), [100 * (VARIANTS[v] + SEED_MEAN_SHIFT) for v in order]
    )
    (plain,) = lines(ax, label="plain adapter")
    assert plain.get_ydata()[0] == pytest.approx(100 * (0.8 + SEED_MEAN_SHIFT))
    assert "s.e.m. error bars" in ax.get_ylabel()
    seeds = lines(ax, label="single seeds")[0]
    assert len(seeds.get_ydata()) == len(VARIANTS) * len(SEEDS)


def test_best_of_n_draws_the_best_seed_without_error_bars():
    ax = axes()
    out = variants_plot(table(variant_rows()), ax, selection="best")
    assert out["best"].tolist() == [pytest.approx(VARIANTS[v] + 0.02) for v in out["variant"]]
    assert (out["best_seed"] == 2).all()
    assert "best of 3 seeds on validation (optimistic)" in ax.get_title() and "s.e.m." not in ax.get_ylabel()


def test_panels_refuse_mixed_settings_and_several_panels():
    rows = sizes_rows() + [run("bottleneck", adapter_size=64, init_std=1e-2, seed=9)]
    with pytest.raises(ValueError, match="init_std"):
        bottleneck_plot(table(rows), axes())
    with pytest.raises(ValueError, match="one panel"):
        tradeoff_plot(table(methods_rows() + [run("tradeoff", task="cola")]), axes())
    with pytest.raises(ValueError, match="no rows"):
        variants_plot(table(ablation_rows()), axes())


# --- which figures, files, command line ---------------------------------------------------------------


def test_study_figures_draws_each_study_and_writes_png_and_pdf(tmp_path):
    rows = ablation_rows() + init_scale_rows(tasks=("rte",)) + sizes_rows() + methods_rows() + variant_rows()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. constrained layout giving up on a panel
        paths = study_figures(table(rows), tmp_path)
    names = ["heatmap", "init_scale", "bottleneck", "tradeoff", "variants"]
    assert paths == [tmp_path / f"{n}{ext}" for n in names for ext in (".png", ".pdf")]
    for path in paths:
        magic = b"\x89PNG" if path.suffix == ".png" else b"%PDF"
        assert path.read_bytes()[:4] == magic, path


def test_study_figures_best_of_n_names_and_best_seed_ablation(tmp_path):
    two_seeds = ablation_rows() + [{**row, "seed": 1, "intact_accuracy": 0.9} for row in ablation_rows()]
    best = study_figures(table(two_seeds + variant_rows()), tmp_path, selection="best")
    assert best == [
        tmp_path / f"{n}_best_of_n{ext}" for n in ("heatmap", "variants") for ext in (".png", ".pdf")
    ]
    # The heatmap under best-of-n shows the ablations of the seed whose intact model scored best.
    chosen = best_seed_rows(table(two_seeds), ["task", "model"])
    assert len(chosen) == len(ablation_rows()) and set(chosen["seed"]) == {1}
    tie = table(ablation_rows() + [{**row, "seed": 5} for row in ablation_rows()])
    assert set(best_seed_rows(tie, ["task", "model"])["seed"]) == {0}


def test_figure_plan_by_study_and_inferred_without_one():
    def plan(rows):
        return list(figure_plan(table(rows)))

    # A study names its figure, even where the rows alone would suggest others.
    assert plan(methods_rows()) == ["tradeoff"]
    assert plan(sizes_rows()) == ["bottleneck"]
    # Without a study: inferred from what the rows vary.
    assert plan(ablation_rows(None)) == ["heatmap"]
    assert plan(init_scale_rows(study=None)) == ["init_scale"]
    assert plan(sizes_rows(None)) == ["bottleneck"]
    assert plan(methods_rows(None)) == ["tradeoff"]  # several methods: not a bottleneck study
    assert plan(variant_rows(None)) == ["variants"]
    assert plan([run(None)]) == []
    # Sizes and inits crossed: neither line would be one setting per point, so neither is drawn.
    crossed = [run(None, adapter_size=m, init_std=s, seed=0) for m in (8, 64) for s in (1e-3, 1e-2)]
    assert plan(crossed) == []
    # Ablation rows of the layer study and ad-hoc variants in one table: both figures.
    assert plan(ablation_rows() + variant_rows(None)) == ["heatmap", "variants"]


def test_cli_figures_end_to_end(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    pd.DataFrame(variant_rows(), columns=list(COLUMNS)).to_csv(sweep / "results.csv", index=False)
    out = tmp_path / "figs"
    command = [sys.executable, "-m", "analysis", "figures", str(sweep), "--best-of-n", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = [out / "variants_best_of_n.png", out / "variants_best_of_n.pdf"]
    assert done.stdout.split() == [str(p) for p in expected]
    assert all(p.stat().st_size > 0 for p in expected)


def test_cli_figures_default_out_and_one_line_errors(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    pd.DataFrame(sizes_rows(), columns=list(COLUMNS)).to_csv(sweep / "results.csv", index=False)
    assert main(["figures", str(sweep)]) == 0
    assert capsys.readouterr().out.split() == [str(sweep / "bottleneck.png"), str(sweep / "bottleneck.pdf")]
    for argv in (["figures", str(sweep), str(sweep)], ["figures", str(tmp_path / "missing")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("python -m analysis: error:"), err
    lone = tmp_path / "lone"
    lone.mkdir()
    pd.DataFrame([run(None)], columns=list(COLUMNS)).to_csv(lone / "results.csv", index=False)
    assert main(["figures", str(lone)]) == 2
    assert "nothing to draw" in capsys.readouterr().err
