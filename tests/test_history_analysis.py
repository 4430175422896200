"""The training histories on the reading side: found beside the table, drawn as loss curves, planned for the
init-scale and bottleneck studies only where the histories exist."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from test_plots import run, table
from test_plots import table as table_of

from ablation.results import HISTORIES
from analysis import report
from analysis.collect import has_history, load_histories
from analysis.plots import SMOOTH, loss_curves_plot, stability_plot, study_figures
from analysis.select import figure_plan
from analysis.stability import stability_table

PLATEAU = math.log(2)


def sweep_with_histories(tmp_path, factor: str = "init_std", values=(1e-4, 1.0), seeds=(0, 1), missing=()):
    """Rows of one study with one training per (value, seed), and each training's history in histories/:
    the small values leave the plateau at step 20, the largest stays."""
    study = "init_scale" if factor == "init_std" else "bottleneck"
    rows = []
    (tmp_path / HISTORIES).mkdir(parents=True, exist_ok=True)
    for value in values:
        for seed in seeds:
            key = f"key-{value:g}-{seed}"
            rows.append(run(study, seed=seed, train_key=key, plateau_loss=PLATEAU, **{factor: value}))
            if key in missing:
                continue
            stays = value == max(values)
            loss = [PLATEAU] * 20 + [PLATEAU if stays else 0.3 + 0.01 * seed] * 40
            steps = len(loss)
            pd.DataFrame(
                {"step": range(steps), "loss": loss, "grad_norm": [1.0] * steps, "lr": [1e-3] * steps}
            ).to_csv(tmp_path / HISTORIES / f"{key}.csv", index=False)
    return table(rows).assign(sweep=str(tmp_path))


def test_histories_are_found_and_loaded_per_training(tmp_path):
    rows = sweep_with_histories(tmp_path, missing=("key-1-1",))
    assert has_history(rows).tolist() == [True, True, True, False]
    hist = load_histories(rows, ("init_std",))
    assert sorted(hist["train_key"].unique()) == ["key-0.0001-0", "key-0.0001-1", "key-1-0"]
    assert (hist.groupby("train_key").size() == 60).all()
    assert set(hist.columns) >= {"task", "model", "seed", "plateau_loss", "init_std", "step", "loss"}
    assert load_histories(rows.drop(columns="sweep")).empty


def test_loss_curves_plot_draws_one_line_per_training_and_the_plateau(tmp_path):
    rows = sweep_with_histories(tmp_path)
    ax = Figure().subplots()
    hist = loss_curves_plot(rows, ax)
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) == 60]
    assert len(curves) == 4  # two settings x two seeds
    plateau = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(plateau) == 1 and plateau[0].get_ydata()[0] == pytest.approx(PLATEAU)
    one = hist[hist["train_key"] == "key-0.0001-1"].set_index("step")["smoothed"]
    assert one[19] == pytest.approx(PLATEAU) and one[20 + SMOOTH - 1] == pytest.approx(0.31)
    assert one[20] == pytest.approx(
        ((SMOOTH - 1) * PLATEAU + 0.31) / SMOOTH
    )  # a running mean of SMOOTH steps
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["σ = 0.0001", "σ = 1"] and "plateau" in legend[-1]


def test_loss_curves_are_planned_for_the_studies_that_have_histories(tmp_path):
    with_files = sweep_with_histories(tmp_path / "a")
    assert list(figure_plan(with_files)) == ["init_scale", "loss_curves", "stability"]
    sizes = sweep_with_histories(tmp_path / "b", "adapter_size", (8, 64))
    assert "loss_curves" in figure_plan(sizes)
    without = with_files.assign(sweep=str(tmp_path / "elsewhere"))
    assert list(figure_plan(without)) == ["init_scale", "stability"]  # the rows' measures, no history files
    older = with_files.assign(plateau_loss=None, sweep=str(tmp_path / "elsewhere"))
    assert list(figure_plan(older)) == ["init_scale"]  # tables of older versions: neither
    paths = study_figures(with_files, tmp_path / "figs")
    assert (tmp_path / "figs" / "loss_curves.png") in paths
    assert np.isfinite(loss_curves_plot(with_files, Figure().subplots(), "best")["smoothed"]).all()


def test_stability_table_per_setting_over_seeds():
    rows = []
    for seed in (0, 1, 2):
        rows.append(run("init_scale", seed=seed, init_std=1e-4, accuracy=0.80 + 0.01 * seed, escape_step=30 + seed,
                        loss_spread=0.1, largest_grad_norm=2.0 + seed, majority_rate=0.53))  # fmt: skip
        rows.append(run("init_scale", seed=seed, init_std=1.0, accuracy=0.53 + 0.03 * (seed == 2),
                        escape_step=None, loss_spread=0.02, largest_grad_norm=0.5, majority_rate=0.53,
                        diverged=seed == 1))  # fmt: skip
    table = stability_table(table_of(rows)).set_index("value")
    small, large = table.loc[1e-4], table.loc[1.0]
    assert small["seeds"] == 3 and small["accuracy_mean"] == pytest.approx(81.0)
    assert small["accuracy_sd"] == pytest.approx(1.0) and small["escaped"] == 3 and small["at_majority"] == 0
    assert small["escape_step_median"] == 31 and small["largest_grad_norm"] == 4.0
    assert large["escaped"] == 0 and np.isnan(large["escape_step_median"])
    assert large["at_majority"] == 2 and large["diverged"] == 1  # seed 2 is 3 points above the majority
    assert stability_table(table_of([run("layer_ablation")])).empty  # nothing varies: no table


def test_the_report_section_training_renders_the_stability_table(tmp_path):
    rows = sweep_with_histories(tmp_path / "s").assign(
        escape_step=20.0, loss_spread=0.05, largest_grad_norm=1.0
    )
    section = report._training(rows)
    assert "left the plateau" in section and "σ = 0.0001" in section and "σ = 1" in section
    assert section.count("<tr>") == 1 + 2  # the header and one row per setting
    assert report._training(table_of([run("layer_ablation")])) is None  # no setting varies: no section


def test_stability_plot_marks_escapes_and_seeds_that_never_left(tmp_path):
    rows = sweep_with_histories(tmp_path).assign(train_steps=60)
    rows["escape_step"] = [20.0, 24.0, None, None]  # the small sigma's seeds left at 20 and 24; sigma 1 never
    ax = Figure().subplots()
    table = stability_plot(rows, ax).set_index("value")
    dots, crosses = ax.collections
    assert sorted(dots.get_offsets()[:, 1].tolist()) == [20.0, 24.0]
    assert crosses.get_offsets()[:, 1].tolist() == [60.0, 60.0]  # at their last step
    assert table.loc[1e-4, "escaped"] == 2 and table.loc[1.0, "escaped"] == 0
