"""A new figure is its (df, ax, selection) function and one declaration (analysis.select.FIGURES): which rows
it reads, which studies draw it, its caption. Here a toy figure declared from a test module is drawn by the
study that names it, captioned in the report, and inferred for rows without a study."""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from test_report import ablation_sweep

from analysis import select
from analysis.collect import load_runs
from analysis.plots import study_figures
from analysis.report import build_report

DRAWN: list[int] = []


def toy_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Accuracy per last layer, the toy figure's one panel."""
    DRAWN.append(len(df))
    means = df.groupby("last")["accuracy"].mean()
    ax.plot(means.index, means.to_numpy())
    return df


TOY = select.Figure(
    select.ablated,
    ("first", "last"),
    select.PANEL_COLUMNS,
    lambda df: not select.ablated(df).empty,
    draw="test_figure_registry:toy_plot",
    caption="A toy figure: accuracy against the last ablated layer.",
    studies=("layer_ablation",),
    cells=True,
)


def test_one_declaration_adds_a_figure_to_a_study_its_files_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setitem(select.FIGURES, "toy", TOY)
    assert select.study_figures()["layer_ablation"] == ("heatmap", "fragility", "toy")
    sweep = ablation_sweep(tmp_path / "sweep", lambda f, la: 0.01 * (la - f + 1), n_layers=3).path
    df = load_runs([sweep]).table
    assert "toy" in select.figure_plan(df)
    paths = study_figures(df, tmp_path / "figures")
    assert {p.name for p in paths} >= {"toy.png", "toy.pdf"} and DRAWN
    page = build_report([sweep], tmp_path / "report.html").read_text()
    assert "A toy figure: accuracy against the last ablated layer." in page
    # rows of no study: inferred like every other figure, from what they vary
    loose = df.assign(study="")
    assert "toy" in select.figure_plan(loose)


def test_every_declared_figure_names_a_drawing_function_and_a_study():
    from analysis.plots import _drawing

    for name, figure in select.FIGURES.items():
        assert callable(_drawing(figure.draw)) and all(callable(_drawing(b)) for b in figure.beside), name
        assert figure.studies and figure.caption, name
