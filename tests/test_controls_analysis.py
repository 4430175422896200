"""The controls of what the adapters do (ablation kinds mean, scale, keep; pretrained LayerNorms; the
head-only baseline; per-layer diagnostics): their selection, figures, numbers and report section, on
synthetic sweeps whose answers are known by construction (no torch).

Each synthetic job writes what a real one writes: a results.csv row, predictions.npz and, for adapter jobs,
diagnostics.csv. Predictions flip a fixed share of examples, so every accuracy is exact.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from test_report import MAJORITY, N, labels, wrong  # the report tests' synthetic labels and predictions

from ablation.results import COLUMNS
from analysis.__main__ import format_intervals, format_table, main
from analysis.claims import evaluate_claims
from analysis.collect import conform, load_diagnostics, load_runs
from analysis.controls import (
    alpha_curve,
    contribution_correlation,
    control_summary,
    findings,
    keep_spans,
    layernorm_difference,
    mean_recovery,
    removal_placement,
    spearman,
)
from analysis.plots import (
    alpha_plot,
    controls_plot,
    diagnostics_plot,
    keep_heatmap_plot,
    mean_heatmap_plot,
    study_figures,
    tradeoff_plot,
)
from analysis.report import build_report
from analysis.select import (
    ablated,
    all_methods,
    figure_plan,
    head_rows,
    keep_cells,
    mean_cells,
    pretrained_layernorm_cells,
    scale_cells,
    with_ablation,
)
from analysis.stats import layer_matrix

LAYERS = 4
INTACT = 0.9  # every adapter model: 10% of examples wrong
SEEDS = (0, 1)
CONTROL_FIGURES = ["heatmap", "heatmap_mean", "heatmap_keep", "alpha", "diagnostics", "controls"]


def contribution(layer: int, position: str) -> float:
    """Grows with the layer: the layers that contribute more are the ones whose removal costs more."""
    return (0.1 if position == "attention" else 0.05) * (layer + 1)


def single_drop(layer: int) -> float:
    """Share of examples lost removing one layer's adapters: grows with the layer (distinct per layer)."""
    return 0.02 * (layer + 1)


class Sweep:
    """A sweep dir as the multirun leaves it: <job>/predictions.npz (+ diagnostics.csv), results.csv."""

    def __init__(self, path: Path, study: str | None, diagnostics: bool = True):
        self.path, self.study, self.diagnostics, self.rows = path, study, diagnostics, []
        path.mkdir(parents=True)
        self.truth = labels()

    def job(self, intact: np.ndarray, ablated: np.ndarray | None = None, **fields):
        ablated = intact if ablated is None else ablated
        job = str(len(self.rows))
        (self.path / job).mkdir()
        np.savez(self.path / job / "predictions.npz", labels=self.truth, intact=intact, ablated=ablated)
        acc, base = (float((p == self.truth).mean()) for p in (ablated, intact))
        row = {"study": self.study, "task": "sst", "model": "tiny", "method": "adapters",
               "variant": "plain", "adapter_size": 64, "init_std": 1e-3, "seed": 0, "positions": "both",
               "accuracy": acc, "intact_accuracy": base, "relative_decrease": 1 - acc / base,
               "majority_rate": MAJORITY, "n_eval": N, "diverged": False, "trained_params": 10_000,
               "lr": 1e-3, "train_steps": 10, "job_seconds": 1.0, "job_dir": job, "code_version": "abc"}  # fmt: skip
        row = {**row, **fields}
        row.setdefault("train_key", f"{row['method']}{row['seed']}")
        self.rows.append(row)
        if self.diagnostics and row["method"] == "adapters":
            table = [
                {
                    "layer": layer,
                    "position": position,
                    "contribution_ratio": contribution(layer, position),
                    "cosine_distance": contribution(layer, position) / 10,
                    "mean_contribution_ratio": 0.01,
                    "down_norm": 1.0,
                    "up_norm": 0.5,
                    "tokens": 5000,
                }  # fmt: skip
                for layer in range(LAYERS)
                for position in ("attention", "output")
            ]
            pd.DataFrame(table).to_csv(self.path / job / "diagnostics.csv", index=False)
        pd.DataFrame(self.rows).to_csv(self.path / "results.csv", index=False)


WHOLE = {"first": 0, "last": LAYERS - 1}


def cell(
    sweep: Sweep, intact, share: float, seed: int, kind: str = "zero", layernorm: str = "trained", **span
):
    sweep.job(intact, wrong(intact, share, offset=200), seed=seed, ablate_kind=kind, ablate_layernorm=layernorm,
              **span)  # fmt: skip


def controls_sweep(
    path: Path,
    study: str | None = "controls",
    skip: tuple[str, ...] = (),
    removed: float = 0.4,
    head: float = 0.3,
    diagnostics: bool = True,
) -> Sweep:
    """Every control on a 4-layer model, two seeds: intact 90%; all removed 90 - 100 removed (50%); all
    removed with pretrained LayerNorms 45%; all replaced by their mean 80% (75% of the loss recovered);
    single layers cost 2, 4, 6, 8 points; keeping only a span ending at the top layer costs nothing; scaled
    ranges; head-only 100 (1 - head)%. `skip` leaves out: head, pretrained, mean, keep, scale."""
    sweep = Sweep(path, study, diagnostics)
    for seed in SEEDS:
        intact = wrong(sweep.truth, 1 - INTACT, offset=seed)
        for layer in range(LAYERS):
            sweep.job(
                intact, wrong(intact, single_drop(layer), offset=200), seed=seed, first=layer, last=layer
            )
        cell(sweep, intact, removed, seed, **WHOLE)
        if "pretrained" not in skip:
            cell(sweep, intact, 0.45, seed, layernorm="pretrained", **WHOLE)
        if "mean" not in skip:
            cell(sweep, intact, 0.1, seed, "mean", **WHOLE)
            for layer in range(LAYERS):
                cell(sweep, intact, 0.01, seed, "mean", first=layer, last=layer)
        if "keep" not in skip:
            for first in range(LAYERS):
                for last in range(first, LAYERS):
                    share = 0.0 if last == LAYERS - 1 else 0.3
                    cell(sweep, intact, share, seed, "keep", first=first, last=last)
        if "scale" not in skip:
            for span, full in (((0, 3), 0.4), ((0, 1), 0.1), ((2, 3), 0.3)):
                for alpha in (0.0, 0.5, 1.0):
                    share = full * (1 - alpha)
                    cell(sweep, intact, share, seed, "scale", first=span[0], last=span[1], alpha=alpha)
        if "head" not in skip:
            sweep.job(wrong(sweep.truth, head, offset=seed), seed=seed, method="head", variant=None,
                      adapter_size=None, init_std=None, trained_params=1538)  # fmt: skip
    return sweep


def runs(path: Path) -> pd.DataFrame:
    return load_runs([path]).table


def axes():
    return Figure().add_subplot()


# --- selection ---------------------------------------------------------------------------------------


def test_selectors_keep_the_kinds_apart_and_read_old_tables_as_zero(tmp_path):
    df = runs(controls_sweep(tmp_path / "s").path)
    zero = ablated(df)
    assert set(zero["ablate_kind"]) == {"zero"} and set(zero["ablate_layernorm"]) == {"trained"}
    assert len(zero) == len(SEEDS) * (LAYERS + 1)  # the diagonal and the whole model
    assert len(pretrained_layernorm_cells(df)) == len(SEEDS)
    assert len(mean_cells(df)) == len(SEEDS) * (LAYERS + 1)
    assert len(keep_cells(df)) == len(SEEDS) * LAYERS * (LAYERS + 1) // 2
    scaled = scale_cells(df)
    assert len(scaled) == len(SEEDS) * 9 and set(scaled["alpha"]) == {0.0, 0.5, 1.0}
    assert set(head_rows(df)["method"]) == {"head"} and len(head_rows(df)) == len(SEEDS)
    # An older table has no ablation columns (and a gap reads as the default): every cell is the removal.
    old = df.drop(columns=[c for c in ("ablate_kind", "ablate_layernorm", "alpha") if c in df.columns])
    assert len(ablated(old)) == len(old.dropna(subset=["first", "last"]))
    gaps = df.assign(ablate_kind=np.where(df["ablate_kind"] == "zero", None, df["ablate_kind"]))
    assert len(ablated(gaps)) == len(zero)
    filled = with_ablation(pd.DataFrame({"first": [0]}))
    assert filled[["ablate_kind", "ablate_layernorm"]].iloc[0].tolist() == ["zero", "trained"]
    assert np.isnan(filled["alpha"].iloc[0])


def test_the_tradeoff_reads_head_only_as_its_smallest_point():
    base = {c: None for c in COLUMNS}
    rows = [
        {
            **base,
            "study": "tradeoff",
            "task": "rte",
            "model": "tiny",
            "method": method,
            "seed": seed,
            "accuracy": accuracy + 0.01 * seed,
            "trained_params": params,
            "majority_rate": 0.5,
            "diverged": False,
            "variant": "plain" if method == "adapters" else None,
            "adapter_size": 64 if method == "adapters" else None,
        }  # fmt: skip
        for seed in (0, 1)
        for method, accuracy, params in (
            ("adapters", 0.8, 50_000),
            ("head", 0.6, 1538),
            ("full", 0.85, 10**8),
        )
    ]
    df = conform(pd.DataFrame(rows))
    assert set(all_methods(df)["method"]) == {"adapters", "head", "full"}
    ax = axes()
    table = tradeoff_plot(df, ax)
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    head = bars["head only (frozen encoder)"].lines[0]
    assert list(head.get_xdata()) == [1538] and head.get_ydata()[0] == pytest.approx(60.5)
    assert table.set_index("method")["trained_params"].idxmin() == "head"


def test_figure_plan_of_the_controls_study_ad_hoc_rows_and_a_plain_layer_ablation(tmp_path):
    df = runs(controls_sweep(tmp_path / "c").path)
    plan = figure_plan(df)
    assert list(plan) == CONTROL_FIGURES
    # The heatmap reads the removal only: the new kinds leave it as it was.
    heat = plan["heatmap"]
    assert set(heat["ablate_kind"]) == {"zero"} and set(heat["ablate_layernorm"]) == {"trained"}
    matrix = layer_matrix(heat)
    assert matrix.loc[0, LAYERS - 1] == pytest.approx(1 - 0.5 / 0.9)
    assert matrix.loc[1, 1] == pytest.approx(1 - (0.9 - single_drop(1)) / 0.9)
    assert set(plan["controls"]["method"]) == {"adapters", "head"}
    # Without a study, each control figure whose rows exist is inferred.
    loose = runs(controls_sweep(tmp_path / "l", study=None, skip=("keep", "scale", "head")).path)
    assert list(figure_plan(loose)) == ["heatmap", "heatmap_mean", "diagnostics", "controls"]
    # A layer-ablation study draws its heatmap only, whatever else its jobs wrote (diagnostics.csv).
    plain = runs(controls_sweep(tmp_path / "p", study="layer_ablation", skip=("head",)).path)
    plan = figure_plan(plain)
    assert list(plan) == ["heatmap"] and set(plan["heatmap"]["ablate_kind"]) == {"zero"}


def test_the_command_line_tables_read_the_removal_only(tmp_path, capsys):
    df = runs(controls_sweep(tmp_path / "s", skip=("keep", "scale", "head")).path)
    spans = format_intervals(df)[["first", "last"]].apply(tuple, axis=1).tolist()
    assert sorted(spans) == sorted([(la, la) for la in range(LAYERS)] + [(0, LAYERS - 1)])
    assert format_table(df) == format_table(ablated(df))
    # On the command line, a sweep of several kinds names them and waits for a choice.
    assert main(["table", str(tmp_path / "s")]) == 2
    assert "several ablation kinds (mean, zero); choose one with --kind" in capsys.readouterr().err
    assert main(["table", str(tmp_path / "s"), "--kind", "zero", "--layernorm", "trained"]) == 0
    assert capsys.readouterr().out.strip() == format_table(ablated(df))
    assert main(["heatmap", str(tmp_path / "s"), "--out", str(tmp_path / "h")]) == 0
    capsys.readouterr()
    head_only = tmp_path / "head"
    sweep = Sweep(head_only, None)
    sweep.job(wrong(sweep.truth, 0.3), method="head", variant=None, adapter_size=None, init_std=None)
    assert main(["table", str(head_only)]) == 2
    assert "no layer-ablation cells" in capsys.readouterr().err


def test_the_controls_load_no_plotting_library():
    code = "import analysis.controls, sys; print(sorted(m for m in ('matplotlib', 'seaborn', 'torch') if m in sys.modules))"
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --- the numbers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def every_control(tmp_path_factory) -> pd.DataFrame:
    return runs(controls_sweep(tmp_path_factory.mktemp("controls") / "s").path)


def test_share_of_the_loss_the_mean_recovers(every_control):
    found = mean_recovery(every_control)
    # intact 90%, removed 50%, mean 80%: (80 - 50) / (90 - 50) = 75% of the loss
    assert found["share"].value == pytest.approx(75.0)
    assert found["share"].lo < 75.0 < found["share"].hi
    assert [found[k].value for k in ("intact", "removed", "mean")] == pytest.approx([90.0, 50.0, 80.0])
    diff = layernorm_difference(every_control)
    assert diff["difference"].value == pytest.approx(-5.0) and diff["difference"].hi < 0


def test_mean_recovery_without_a_loss_is_undefined(tmp_path):
    df = runs(controls_sweep(tmp_path / "s", removed=0.0, skip=("keep", "scale", "head")).path)
    assert np.isnan(mean_recovery(df)["share"].value)


def test_spearman_of_contribution_and_single_layer_drop(every_control):
    found = contribution_correlation(every_control)
    assert found["layers"] == LAYERS and found["rho"].value == pytest.approx(1.0)
    assert found["rho"].lo <= 1.0 and found["rho"].hi == pytest.approx(1.0)
    # the ranks against pandas' own Spearman, with a tie and a reversal
    a, b = pd.Series([1.0, 2.0, 2.0, 5.0]), pd.Series([4.0, 3.0, 2.0, 1.0])
    assert spearman(a, b) == pytest.approx(a.corr(b, method="spearman"))
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_spearman_is_minus_one_when_the_ranks_are_reversed(tmp_path):
    sweep = Sweep(tmp_path / "s", "controls")
    for seed in SEEDS:
        intact = wrong(sweep.truth, 1 - INTACT, offset=seed)
        for layer in range(LAYERS):
            drop = single_drop(LAYERS - 1 - layer)  # the most contributing layer costs least
            sweep.job(intact, wrong(intact, drop, offset=200), seed=seed, first=layer, last=layer)
    found = contribution_correlation(runs(sweep.path))
    assert found["rho"].value == pytest.approx(-1.0) and found["layers"] == LAYERS


def test_keep_spans_and_alpha_curve(every_control):
    found = keep_spans(every_control)
    assert found["within"] and found["tested"] == LAYERS * (LAYERS + 1) // 2
    assert [(f, la) for f, la, _ in found["spans"]] == [(LAYERS - 1, LAYERS - 1)]
    assert found["spans"][0][2].value == pytest.approx(90.0)
    intact, table = alpha_curve(every_control)
    assert intact.value == pytest.approx(90.0)
    whole = table[(table["first"] == 0) & (table["last"] == 3)].set_index("alpha")["accuracy"]
    assert whole.to_dict() == pytest.approx({0.0: 50.0, 0.5: 70.0, 1.0: 90.0})
    assert (table["lo"] <= table["accuracy"]).all() and (table["accuracy"] <= table["hi"]).all()


def test_keep_spans_name_the_best_single_layer_when_none_suffices(tmp_path):
    sweep = Sweep(tmp_path / "s", "controls")
    for seed in SEEDS:
        intact = wrong(sweep.truth, 1 - INTACT, offset=seed)
        for first in range(LAYERS):
            for last in range(first, LAYERS):
                cell(
                    sweep,
                    intact,
                    0.3 - 0.01 * first - 0.05 * (last - first),
                    seed,
                    "keep",
                    first=first,
                    last=last,
                )
    found = keep_spans(runs(sweep.path))
    assert not found["within"]
    assert [(f, la) for f, la, _ in found["spans"]] == [(3, 3)]  # the single layer with the smallest loss


def test_control_summary_intervals_and_placement(every_control):
    table = control_summary(every_control).set_index("control")
    expected = {"majority": 60.0, "head": 70.0, "removed": 50.0, "removed_pretrained_ln": 45.0,
                "removed_mean": 80.0, "intact": 90.0}  # fmt: skip
    assert list(table.index) == list(expected)
    assert table["accuracy"].to_dict() == pytest.approx(expected)
    assert ((table["lo"] <= table["accuracy"]) & (table["accuracy"] <= table["hi"])).all()
    assert table.loc["majority", "seeds"] == 0 and table.loc["head", "seeds"] == len(SEEDS)
    text, diffs = removal_placement(every_control)
    assert "lies below the majority class" in text and diffs["head"].value == pytest.approx(-20.0)


def test_the_all_removed_claim_is_read_against_the_head_only_baseline(tmp_path):
    df = runs(controls_sweep(tmp_path / "s", removed=0.2, head=0.2, skip=("keep", "scale")).path)
    row = evaluate_claims(df).set_index("claim").loc["all adapters removed: majority class"]
    # all removed 70%, majority 60%, head-only 80%, intact 90%
    assert row["estimate"] == pytest.approx(10.0) and row["verdict"] == "not reproduced"
    assert "lies between the majority class and the head-only baseline" in row["measured"]
    assert "head only (frozen encoder) 80.0% [" in row["measured"]
    # without head-only rows the claim reads as before
    plain = runs(controls_sweep(tmp_path / "p", removed=0.2, skip=("keep", "scale", "head")).path)
    row = evaluate_claims(plain).set_index("claim").loc["all adapters removed: majority class"]
    assert "head" not in row["measured"] and row["estimate"] == pytest.approx(10.0)


# --- the figures ---------------------------------------------------------------------------------------


def panel(df: pd.DataFrame, name: str) -> pd.DataFrame:
    return figure_plan(df)[name]


def test_mean_and_keep_heatmaps(every_control):
    ax = axes()
    matrix = mean_heatmap_plot(panel(every_control, "heatmap_mean"), ax)
    assert matrix.loc[0, LAYERS - 1] == pytest.approx(1 - 0.8 / 0.9)
    assert matrix.loc[2, 2] == pytest.approx(1 - 0.89 / 0.9) and np.isnan(matrix.loc[0, 1])
    assert "replaced by their mean" in ax.get_title()
    ax = axes()
    matrix = keep_heatmap_plot(panel(every_control, "heatmap_keep"), ax)
    assert (matrix[LAYERS - 1].dropna() == 0).all() and matrix.loc[0, 0] == pytest.approx(1 - 0.6 / 0.9)
    assert ax.get_xlabel() == "last kept layer" and "only first..last kept" in ax.get_title()
    hatched = {(int(p.get_y()), int(p.get_x())) for p in ax.patches if p.get_hatch()}
    assert hatched == {(f, LAYERS - 1) for f in range(LAYERS)}  # no loss: the interval includes 0


def test_alpha_plot_lines_per_range_with_references(every_control):
    ax = axes()
    table = alpha_plot(panel(every_control, "alpha"), ax)
    lines = {line.get_label(): line for line in ax.lines}
    whole = lines["layers 0..3 (every layer)"]
    np.testing.assert_allclose(whole.get_xdata(), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(whole.get_ydata(), [50.0, 70.0, 90.0])
    np.testing.assert_allclose(lines["layers 0..1"].get_ydata(), [80.0, 85.0, 90.0])
    assert lines["intact model"].get_ydata()[0] == pytest.approx(90.0)
    assert lines["majority class"].get_linestyle() == "--" and lines["majority class"].get_ydata()[0] == 60.0
    assert len(table) == 9 and (table["n"] == len(SEEDS)).all()


def test_diagnostics_plot_per_layer_and_position_beside_the_drop(every_control):
    ax = axes()
    table = diagnostics_plot(panel(every_control, "diagnostics"), ax)
    assert len(table) == 2 * LAYERS and (table["seeds"] == len(SEEDS)).all()
    for row in table.itertuples():
        assert row.contribution_ratio == pytest.approx(contribution(row.layer, row.position))
        assert row.cosine_distance == pytest.approx(contribution(row.layer, row.position) / 10)
        assert row.drop == pytest.approx(100 * single_drop(row.layer) / INTACT)
    assert ax.get_yscale() == "log"
    (twin,) = [other for other in ax.figure.axes if other is not ax]
    heights = sorted(p.get_height() for p in twin.patches)
    assert heights == pytest.approx([100 * single_drop(la) / INTACT for la in range(LAYERS)])
    labels = [line.get_label() for line in ax.lines]
    assert "‖c‖/‖s‖, attention" in labels and "1 − cos(s, s+c), output" in labels
    diag = load_diagnostics(panel(every_control, "diagnostics"))
    assert diag["train_key"].nunique() == len(SEEDS) and len(diag) == len(SEEDS) * 2 * LAYERS


def test_controls_plot_and_its_missing_controls(every_control, tmp_path):
    ax = axes()
    table = controls_plot(panel(every_control, "controls"), ax)
    assert table["accuracy"].tolist() == pytest.approx([60.0, 70.0, 50.0, 45.0, 80.0, 90.0])
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks[1] == "head only (frozen encoder)" and ticks[-1] == "intact adapters"
    assert "not run" not in ax.get_title()
    some = runs(controls_sweep(tmp_path / "s", skip=("head", "mean", "keep")).path)
    ax = axes()
    table = controls_plot(panel(some, "controls"), ax)
    assert table["control"].tolist() == ["majority", "removed", "removed_pretrained_ln", "intact"]
    assert "not run: head only (frozen encoder), all replaced by their mean" in ax.get_title()


def test_controls_plot_without_predictions_shows_the_means(every_control):
    rows = panel(every_control, "controls").drop(columns="sweep")
    ax = axes()
    table = controls_plot(rows, ax)
    assert table["accuracy"].tolist() == pytest.approx([60.0, 70.0, 50.0, 45.0, 80.0, 90.0])
    assert table["lo"].isna().all() and "no interval" in ax.get_xlabel()


def test_study_figures_and_the_cli_draw_every_control_figure(tmp_path):
    sweep = controls_sweep(tmp_path / "s")
    paths = study_figures(runs(sweep.path), tmp_path / "figs")
    assert [p.name for p in paths] == [f"{n}{ext}" for n in CONTROL_FIGURES for ext in (".png", ".pdf")]
    assert all(p.read_bytes()[:4] in (b"\x89PNG", b"%PDF") for p in paths)
    best = study_figures(runs(sweep.path), tmp_path / "best", selection="best")
    assert len(best) == 2 * len(CONTROL_FIGURES)
    assert main(["figures", str(sweep.path)]) == 0
    for name in CONTROL_FIGURES:
        assert (sweep.path / f"{name}.png").stat().st_size > 0


# --- the report ----------------------------------------------------------------------------------------


def test_report_section_with_every_control(tmp_path):
    sweep = controls_sweep(tmp_path / "s")
    page = build_report([sweep.path], tmp_path / "report.html").read_text()
    assert "<h2>What the adapters do</h2>" in page
    section = page.split("<h2>What the adapters do</h2>")[1].split("<h2>")[0]
    assert "6 of 6 run" in section and "not run" not in section
    assert "75.00 % of the loss" in section  # the mean recovers 75% of the removal's loss
    assert "-5.00 points (pretrained minus trained)" in section
    assert "3..3 90.0% [" in section  # the top layer kept alone suffices
    assert "α=0: 50.0% [" in section and "α=0.5: 70.0% [" in section
    assert "Spearman ρ = 1.00" in section and "over 4 layers" in section
    assert "lies below the majority class" in section
    assert page.count("data:image/png;base64,") == len(CONTROL_FIGURES)


def controls_section(page: str) -> tuple[list[str], str]:
    """The controls in the report's controls table (one per row), and its line of those not run (as text)."""
    section = page.split("<h2>What the adapters do</h2>")[1].split("<h2>")[0]
    listed = [html.unescape(name) for name in re.findall(r"<tr><td><b>(.*?)</b>", section)]
    line = re.search(r"Not run on these rows:(.*?)</p>", section)
    return listed, html.unescape(re.sub(r"<[^>]+>", "", line.group(1))) if line else ""


def test_report_section_with_some_controls_and_without_any(tmp_path):
    some = controls_sweep(tmp_path / "some", skip=("head", "keep", "scale"), diagnostics=False)
    page = build_report([some.path], tmp_path / "some.html").read_text()
    section = page.split("<h2>What the adapters do</h2>")[1].split("<h2>")[0]
    assert "2 of 6 run (mean replacement, pretrained LayerNorms)" in section
    assert "75.00 % of the loss" in section and "not run (needs" not in section
    listed, line = controls_section(page)
    assert listed == ["mean replacement", "pretrained LayerNorms"]
    assert line.strip().startswith(
        "head-only baseline — method=head; keep one span — ablate.kind=keep; scale α — ablate.kind=scale "
        "ablate.alpha=0,0.25,0.5,0.75,1; contribution vs single-layer drop — ablate.first=0..L-1 "
        "ablate.last=0..L-1 (each a part of python -m ablation.run -m study=controls)"
    )
    frame = findings(runs(some.path)).set_index("control")
    assert not frame.loc["head-only baseline", "run"]
    assert np.isnan(frame.loc["scale α", "estimate"])
    # a plain layer-ablation sweep: no controls, no section
    plain = controls_sweep(tmp_path / "plain", study="layer_ablation", skip=("head",))
    page = build_report([plain.path], tmp_path / "plain.html").read_text()
    assert "What the adapters do" not in page
    assert findings(runs(plain.path)).empty


def test_the_main_jobs_report_tables_the_one_control_its_rows_measure(tmp_path):
    """The main job (no study, every span removed, each job's diagnostics.csv): the contribution control in
    the table, the five others in one line with their settings."""
    main_job = controls_sweep(
        tmp_path / "main", study=None, skip=("head", "pretrained", "mean", "keep", "scale")
    )
    page = build_report([main_job.path], tmp_path / "main.html").read_text()
    listed, line = controls_section(page)
    assert listed == ["contribution vs single-layer drop"]
    expected = {"head-only baseline": "method=head", "mean replacement": "ablate.kind=mean",
                "pretrained LayerNorms": "ablate.layernorm=pretrained", "keep one span": "ablate.kind=keep",
                "scale α": "ablate.kind=scale ablate.alpha=0,0.25,0.5,0.75,1"}  # fmt: skip
    assert line.split(" (each")[0].strip() == "; ".join(f"{name} — {runs}" for name, runs in expected.items())
    assert "1 of 6 run (contribution vs single-layer drop)" in page and "not run (needs" not in page
