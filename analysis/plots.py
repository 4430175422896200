"""Figures of Houlsby et al. 2019: the layer-ablation heatmap (Figure 6), init scale, bottleneck size,
parameter/accuracy trade-off (Figures 3/4) and adapter variants; and the controls of what the adapters do:
the heatmaps of mean replacement and of keeping one span, accuracy against a scaled contribution (alpha),
the adapters' diagnostics beside the single-layer drop, and the controls' summary.

And the recipe and placement studies: per training recipe, the cost of removing the bottom or the top half
of the layers' adapters; accuracy against where and how many layers have adapters (retrained, or kept from
the all-layer training), against trained parameters and against training time.

Every `*_plot(df, ax, selection)` draws one panel on a given Axes and returns the table it plotted; each
figure is declared once in `analysis.select.FIGURES` (its rows, studies, panel function by name, caption, title
and panel size); `study_figures` draws every figure a result table allows, as PNG and PDF.
"""

from __future__ import annotations

import importlib
import math
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
from matplotlib.transforms import offset_copy

from analysis.collect import load_histories
from analysis.controls import (
    CONTROL_LABELS,
    CONTROLS,
    control_summary,
    diagnostic_summary,
    single_layer_drops,
)
from analysis.examples import examples_of, fragility
from analysis.select import (
    ALPHA,
    BOTTOM_KEPT,
    BOTTOM_RETRAINED,
    FIGURES,
    KIND,
    PANEL_COLUMNS,
    PAPER_SIZES,
    PLACEMENT_SERIES,
    PRESET_NOTE,
    RECIPE_COLUMNS,
    TOP_KEPT,
    TOP_RETRAINED,
    adapted_layers,
    best_seed_rows,
    curve_factor,
    figure_plan,
    head_rows,
    heatmap_size,
    keep_cells,
    layers_text,
    mean_cells,
    model_layers,
    n_layers,
    panel_rows,
    placement_table,
    preset_label,
    recipe_label,
    recipe_order,
    split_panels,
    varying,
)
from analysis.stability import stability_table
from analysis.stats import (
    block_name,
    block_size,
    blocks,
    cell_intervals,
    layer_matrix,
    matrix_layers,
    recipe_profile,
    summarize_seeds,
)

__all__ = [
    "alpha_plot",
    "controls_plot",
    "diagnostics_plot",
    "figure_plan",
    "heatmap",
    "heatmap_figure",
    "keep_heatmap_plot",
    "loss_curves_plot",
    "mean_heatmap_plot",
    "placement_layers_plot",
    "placement_params_plot",
    "placement_time_plot",
    "recipe_plot",
    "stability_plot",
    "study_figures",
]  # figure_plan: re-exported from select
MAX_COLUMNS = 3
# A heatmap panel's rows -> its cells' intervals (analysis.stats.cell_intervals).
CellTable = Callable[[pd.DataFrame], pd.DataFrame]
METHOD_ORDER = ("adapters", "lora", "top_k", "layernorm", "head")
METHOD_LABELS = {
    "adapters": "adapters (size m)",
    "lora": "LoRA (rank r)",
    "top_k": "fine-tune top k layers",
    "layernorm": "LayerNorm only",
    "head": "head only (frozen encoder)",
    "full": "full fine-tuning",
}
DIVERGED_COLOR = "crimson"
BAND_ALPHA = 0.2
LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "fontsize": 8, "frameon": False}
POINT_LABEL = {"ha": "center", "va": "bottom", "fontsize": 6.5, "color": "0.25"}


def heatmap(
    df: pd.DataFrame,
    ax: Axes,
    value: str = "relative_decrease",
    annot: bool = True,
    note: str | None = None,
    cells: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Draw one panel (rows: first ablated layer, columns: last, in %) on `ax`; return the matrix (in the
    units of `value`).

    The colours diverge around zero (a gain and a loss of the same size get opposite hues of the same
    strength). `cells`, the panel's `analysis.stats.cell_intervals`, hatches the cells whose interval includes
    zero and gives the relative decrease drawn, so the figure prints each cell's number as the report's
    tables and clickable heatmap print it (rounded once, from one value).
    """
    uncertain = None
    if cells is not None:
        cells = cells.assign(block=block_size(df))  # the panel's grid: blocks where it has them
        uncertain = layer_matrix(cells, "includes_zero", matrix_layers(df)).fillna(0.0) > 0.5
    if cells is not None and value == "relative_decrease":
        percent = layer_matrix(cells, value, matrix_layers(df))
    else:
        percent = layer_matrix(df, value) * 100
    note = _draw_matrix(percent, ax, f"{value.replace('_', ' ')} (%)", annot, uncertain, note)
    ax.set_title(_title(df) + (f"\n{note}" if note else ""), fontsize=10)
    return percent / 100


def difference_figure(table: pd.DataFrame, out_stem: str | Path, title: str) -> list[Path]:
    """Save a first x last heatmap of `difference` (%), hatching cells whose interval includes zero.

    `table` has columns first, last, difference, includes_zero (see `analysis.claims.difference_intervals`).
    """
    matrix = layer_matrix(table, "difference")
    uncertain = layer_matrix(table, "includes_zero").fillna(0.0) > 0.5
    side = 0.45 * len(matrix) + 2.0
    fig, axes = _figure(1, 1, (1.2 * side, side + 0.6))
    note = _draw_matrix(
        matrix, axes[0], "difference in relative decrease (points of %)", True, uncertain, None
    )
    axes[0].set_title(f"{title}\n{note}", fontsize=10)
    return _save(fig, out_stem)


def _draw_matrix(
    percent: pd.DataFrame,
    ax: Axes,
    label: str,
    annot: bool,
    uncertain: pd.DataFrame | None,
    note: str | None,
    limit: float | None = None,
) -> str | None:
    """The heatmap itself: values in percent, annotated as they are (rounded once, to one decimal), diverging
    colours centred on 0 (up to +-`limit` %, by default the largest value's), diagonal outlined, hatching."""
    matrix = percent
    n_layers = len(matrix)
    # Single-layer effects are a few tenths of a percent: keep one decimal, smaller on big grids.
    fmt, fontsize = ".1f", (9 if n_layers <= 8 else 6.5)
    # Symmetric limits: a gain and a loss of the same size get equally strong colours, 0 is white.
    if limit is None:
        limit = _largest(matrix)
    limit = limit if limit > 0 else 1.0
    sns.heatmap(
        matrix,
        ax=ax,
        mask=matrix.isna(),
        vmin=-limit,
        vmax=limit,
        annot=annot,
        fmt=fmt,
        annot_kws={"fontsize": fontsize},
        cmap="RdBu_r",
        square=True,
        linewidths=0.5,
        linecolor="white",
        cbar_kws={"label": label},
    )
    # Single-layer removal is the diagonal; outline it so it reads as its own series, as in the paper.
    for layer in range(n_layers):
        ax.add_patch(
            Rectangle((layer, layer), 1, 1, fill=False, edgecolor="black", linewidth=1.2, clip_on=False)
        )
    if uncertain is not None:
        hatch = uncertain.reindex(index=matrix.index, columns=matrix.columns).fillna(False).to_numpy(bool)
        for first, last in zip(*np.nonzero(hatch & matrix.notna().to_numpy()), strict=True):
            ax.add_patch(
                Rectangle(
                    (last, first), 1, 1, fill=False, hatch="////", edgecolor="0.55", linewidth=0, zorder=2
                )
            )
        note = "\n".join(filter(None, [note, "hatched: 95% interval (examples × seeds) includes 0"]))
    ax.set_xlabel("last ablated layer")
    ax.set_ylabel("first ablated layer")
    if list(matrix.index) != list(matrix.columns):  # a block heatmap: block i is layers index[i]..columns[i]
        names = [block_name(a, b) for a, b in zip(matrix.index, matrix.columns, strict=True)]
        ax.set_xticklabels(names)
        ax.set_yticklabels(names)
        ax.set_xlabel("last ablated block (layers)")
        ax.set_ylabel("first ablated block (layers)")
    ax.tick_params(axis="both", labelrotation=0)
    return note


def _largest(matrix: pd.DataFrame) -> float:
    """The largest absolute value of a matrix (0 when it holds none)."""
    return float(np.nanmax(np.abs(matrix.to_numpy(dtype=float)))) if matrix.notna().any().any() else 0.0


def estimate_figure(pairs: list[tuple[str, pd.DataFrame, pd.DataFrame]], out_stem: str | Path) -> list[Path]:
    """Save each panel's exact heatmap beside its estimated one, on one colour scale (analysis.estimates's
    (panel, exact cells, estimated cells); a panel without exact cells says so on the left)."""
    side = 0.45 * max(len(blocks(guessed)) for _, _, guessed in pairs) + 2.0
    fig, axes = _figure(2 * len(pairs), 2, (1.2 * side, side + 0.5))
    for n, (name, exact, guessed) in enumerate(pairs):
        b = layer_matrix(guessed, "relative_decrease") * 100
        a = None if exact.empty else layer_matrix(exact, "relative_decrease") * 100
        limit = max(_largest(b), 0.0 if a is None else _largest(a))
        estimate = guessed["estimate"].iloc[0]
        if a is None:
            _nothing(
                axes[2 * n],
                f"{name}\nno exact cells: computed by the command\n`python -m analysis estimate` gives",
            )
        for ax, matrix, what in ((axes[2 * n], a, "exact"), (axes[2 * n + 1], b, f"estimated ({estimate})")):
            if matrix is not None:
                _draw_matrix(matrix, ax, "relative decrease (%)", True, None, None, limit)
                ax.set_title("\n".join([*textwrap.wrap(name, 50), what]), fontsize=10)  # long names wrap
                if guessed[KIND].iloc[0] == "keep":  # its cells name the layers kept
                    ax.set_xlabel(ax.get_xlabel().replace("ablated", "kept"))
                    ax.set_ylabel(ax.get_ylabel().replace("ablated", "kept"))
    return _save(fig, out_stem)


def heatmap_figure(
    df: pd.DataFrame,
    out_stem: str | Path,
    value: str = "relative_decrease",
    note: str | None = None,
    cells: CellTable | None = None,
) -> list[Path]:
    """Save one heatmap panel per task (x model x positions where those vary) as out_stem.png and .pdf.

    `cells(panel)` gives each panel's cell intervals (e.g. `analysis.stats.cell_intervals`): its numbers and
    the cells to hatch.
    """
    panels, columns = _panel_grid(split_panels(df), df, PANEL_COLUMNS)
    fig, axes = _figure(len(panels), columns, heatmap_size(df))
    for ax, panel in zip(axes, panels, strict=False):
        heatmap(panel, ax, value=value, note=note, cells=None if cells is None else cells(panel))
        _name_recipe(ax, panel, df, PANEL_COLUMNS)
    return _save(fig, out_stem)


def _panel_grid(
    panels: list[pd.DataFrame], rows: pd.DataFrame, columns: tuple[str, ...]
) -> tuple[list[pd.DataFrame], int]:
    """The panels in drawing order and the grid's column count: as split, at most MAX_COLUMNS a row; where
    the rows hold several recipes (`columns` split them), one row of panels per recipe (the suite's first),
    one column per model and task."""
    if not varying(rows, tuple(c for c in columns if c in RECIPE_COLUMNS)):
        return panels, min(len(panels), MAX_COLUMNS)
    ordered = sorted(
        panels, key=lambda p: (recipe_order(p.iloc[0]), str(p["model"].iloc[0]), str(p["task"].iloc[0]))
    )
    places = len({(str(p["model"].iloc[0]), str(p["task"].iloc[0])) for p in panels})
    return ordered, min(places, MAX_COLUMNS)


def _name_recipe(ax: Axes, panel: pd.DataFrame, rows: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Put the panel's training recipe on top of its title where the figure's rows hold several (one panel
    per recipe: `columns` split them)."""
    if not varying(rows, tuple(c for c in columns if c in RECIPE_COLUMNS)):
        return
    label = recipe_label(panel.iloc[0], model_layers(rows).get(str(panel["model"].iloc[0])))
    title = ax.get_title()
    ax.set_title(f"{label}\n{title}" if title else label, fontsize=ax.title.get_fontsize())


def init_scale_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Accuracy against the adapters' init std (log x), one line per task (Figure 6, right)."""
    rows, table, colors = _task_lines(df, ax, "init_scale", "init_std", selection)
    majority = _majority_lines(ax, rows, colors)
    _mark_diverged(ax, rows, rows["init_std"])
    ax.set_xscale("log")
    ax.set_xlabel("adapter init std σ (log scale)")
    proxy = Line2D([], [], color="0.4", linestyle="--", linewidth=1, label="majority class (task colour)")
    _finish(ax, rows, selection, extra_handles=(proxy,) if majority else ())
    return table


def bottleneck_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Accuracy against the adapter size m (log2 x), one line per task, the paper's sizes marked."""
    rows, table, colors = _task_lines(df, ax, "bottleneck", "adapter_size", selection)
    sizes = sorted(int(s) for s in table["adapter_size"].dropna().unique())
    paper = [s for s in PAPER_SIZES if sizes and sizes[0] <= s <= sizes[-1]]
    for size in paper:
        ax.axvline(size, color="0.6", linewidth=4, alpha=0.25, zorder=0)
    _mark_diverged(ax, rows, rows["adapter_size"])
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("adapter size m (log2 scale)")
    proxy = Line2D([], [], color="0.6", linewidth=4, alpha=0.25, label="paper's sizes (8, 64, 256)")
    _finish(ax, rows, selection, extra_handles=(proxy,) if paper else ())
    return table


def tradeoff_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Accuracy against trained parameters (log x) per method, full fine-tuning as a line (Figures 3/4)."""
    rows = panel_rows(df, "tradeoff")
    table = _summarize(rows, ["method", "adapter_size", "k", "lora_r", "trained_params"], selection)
    colors = dict(zip(METHOD_ORDER, sns.color_palette("colorblind", len(METHOD_ORDER)), strict=True))
    known = [m for m in METHOD_ORDER if m in set(table["method"])]
    for method in known:
        points = table[table["method"] == method].sort_values(
            ["adapter_size", "k", "lora_r", "trained_params"]
        )
        x = points["trained_params"].to_numpy(dtype=float)
        y = points["y"].to_numpy(dtype=float)
        style = {"color": colors[method], "marker": "o", "markersize": 4, "capsize": 3, "linewidth": 1.2}
        ax.errorbar(x, y, yerr=_err(points), label=METHOD_LABELS[method], **style)
        _label_points(ax, x, points, method)
    full = table[table["method"] == "full"]
    if not full.empty:
        _reference(ax, full, "black", f"full fine-tuning{_count(full['trained_params'].iloc[0])}")
    _mark_diverged(ax, rows, rows["trained_params"].astype(float))
    ax.set_xscale("log")
    ax.set_xlabel("trained parameters (log scale)")
    _finish(ax, rows, selection, err_kind="error bars")
    return table


def variants_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """One point per adapter variant with its interval, the plain adapter as a reference line."""
    rows = panel_rows(df, "variants")
    table = _summarize(rows, ["variant"], selection)
    order = sorted(table["variant"], key=lambda v: (v != "plain", str(v)))
    table = table.set_index("variant").loc[order].reset_index()
    x = pd.Series(np.arange(len(order), dtype=float), index=order)
    color = sns.color_palette("colorblind")[0]
    # Single seeds, jittered: with three seeds the spread says more than an interval.
    rank = rows["seed"].rank(method="dense").astype(float)
    jitter = 0.08 * (rank - (rank.max() + 1) / 2)
    seed_x = rows["variant"].map(x).astype(float) + jitter
    seed_y = 100 * rows["accuracy"].to_numpy(dtype=float)
    ax.plot(seed_x.to_numpy(), seed_y, ".", color="0.55", markersize=4, label="single seeds")
    label = "best seed" if selection == "best" else "mean ± 1 s.e.m."
    y = table["y"].to_numpy(dtype=float)
    ax.errorbar(x.to_numpy(), y, yerr=_err(table), fmt="o", color=color, capsize=4, markersize=6, label=label)
    plain = table[table["variant"] == "plain"]
    if not plain.empty:
        _reference(ax, plain, "0.3", "plain adapter")
    _mark_diverged(ax, rows, seed_x)
    # Labels such as "placement: parallel, combine: multiply" are wider than a slot: slant them.
    labels = [_variant_label(v) for v in order]
    ax.set_xticks(x.to_numpy(), labels, fontsize=8, rotation=25, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_xlabel("adapter variant")
    _finish(ax, rows, selection, err_kind="error bars")
    return table


def heatmap_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """One heatmap panel of a sweep's cells: the seeds' mean, or (selection="best") the seed whose intact
    model scored best (the paper's protocol); cells hatched whose interval includes zero when the rows
    carry where their predictions are (the `sweep` column of `analysis.collect.load_runs`)."""
    note = None
    if selection == "best":
        note = _aggregation(int(df["seed"].nunique()), "best")
        df = best_seed_rows(df, ["task", "model"])
    return heatmap(df, ax, note=note, cells=cell_intervals(df) if "sweep" in df.columns else None)


def _cells_heatmap(
    df: pd.DataFrame, ax: Axes, selection: str, select: Callable, note: str, kept: bool = False
) -> pd.DataFrame:
    """The heatmap of one kind of cell, drawn as the layer-ablation heatmap is (seeds averaged, or the best
    seed's cells; hatched where the interval includes zero when the rows carry their predictions)."""
    rows = select(df)
    if rows.empty:
        raise ValueError(f"no cells of this kind to plot (got {len(df)} rows)")
    if selection == "best":
        note = f"{note}\n{_aggregation(int(rows['seed'].nunique()), 'best')}"
        rows = best_seed_rows(rows, ["task", "model"])
    cells = cell_intervals(rows, select=select) if "sweep" in rows.columns else None
    matrix = heatmap(rows, ax, note=note, cells=cells)
    if kept:
        ax.set_xlabel("last kept layer")
        ax.set_ylabel("first kept layer")
    return matrix


def mean_heatmap_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """The relative decrease when the adapters of first..last are replaced by their mean contribution (a
    constant per layer and position, measured on the intact model); returns the first x last matrix."""
    return _cells_heatmap(df, ax, selection, mean_cells, "adapters of first..last replaced by their mean")


def keep_heatmap_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """The relative decrease when only the adapters of first..last stay (every other layer's removed): near
    0, the span suffices; returns the first x last matrix."""
    return _cells_heatmap(
        df, ax, selection, keep_cells, "only first..last kept, all other adapters removed", True
    )


def alpha_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Accuracy against α (each contribution of the range's adapters times α), one line per scaled range,
    mean ± 1 s.e.m. over seeds; the majority class dashed, the intact model as a reference line."""
    rows = panel_rows(df, "alpha")
    shown = best_seed_rows(rows, ["task", "model"]) if selection == "best" else rows
    table = _summarize(shown, ["first", "last", ALPHA], "mean")
    layers = n_layers(rows)
    spans = sorted({(int(f), int(la)) for f, la in zip(table["first"], table["last"], strict=True)})
    spans.sort(key=lambda span: (span[0] - span[1], span[0]))  # the widest first: the whole model
    colors = dict(zip(spans, sns.color_palette("colorblind", len(spans)), strict=True))
    for first, last in spans:
        line = table[(table["first"] == first) & (table["last"] == last)].sort_values(ALPHA)
        whole = " (every layer)" if (first, last) == (0, (layers or 0) - 1) else ""
        _line(ax, line[ALPHA], line, colors[(first, last)], label=f"layers {first}..{last}{whole}")
    per_seed = 100 * shown.groupby("seed")["intact_accuracy"].mean().astype(float)
    intact = pd.DataFrame({"y": [per_seed.mean()], "yerr": [per_seed.sem() if len(per_seed) > 1 else np.nan]})
    _reference(ax, intact, "0.25", "intact model")
    majority = float(rows["majority_rate"].astype(float).mean())
    if np.isfinite(majority):
        ax.axhline(100 * majority, color="0.4", linestyle="--", linewidth=1, label="majority class")
    ax.set_xlabel("α: the adapters' contribution scaled by α (0 = removed, 1 = intact)")
    _finish(ax, rows, selection)
    return table


def diagnostics_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Per layer: each adapter position's contribution ratio ‖c‖/‖s‖ (solid) and cosine distance
    1 - cos(s, s + c) (dashed), mean ± 1 s.e.m. over seeds (bands, log scale), and on a twin axis the
    relative decrease of removing that layer's adapters alone (bars). Returns one row per layer and
    position: the diagnostics' means and s.e.m.s, seeds, and the layer's drop (%) and its s.e.m."""
    rows = panel_rows(df, "diagnostics")
    used = best_seed_rows(rows, ["task", "model"]) if selection == "best" else rows
    diag = diagnostic_summary(used)
    if diag.empty:
        raise ValueError("diagnostics: no diagnostics.csv behind these rows")
    drops = single_layer_drops(used)
    table = diag.merge(drops.drop(columns="seeds"), on="layer", how="left")
    positions = sorted(diag["position"].unique())
    colors = dict(zip(positions, sns.color_palette("colorblind", len(positions)), strict=True))
    twin = ax.twinx()
    if not drops.empty:
        err = drops["drop_sem"].to_numpy(dtype=float)
        twin.bar(
            drops["layer"].to_numpy(dtype=float),
            drops["drop"].to_numpy(dtype=float),
            width=0.6,
            color="0.6",
            alpha=0.45,
            yerr=None if np.isnan(err).all() else np.nan_to_num(err),
            ecolor="0.45",
            capsize=2,
            label="single-layer drop (right axis)",
        )
        twin.axhline(0.0, color="0.6", linewidth=0.8)
        twin.set_ylabel("single-layer drop: relative decrease (%)", color="0.35")
    else:  # nothing on the right axis: no scale to show there
        twin.set_axis_off()
    for position in positions:
        part = diag[diag["position"] == position].sort_values("layer")
        x = part["layer"].to_numpy(dtype=float)
        for value, style, marker in (("contribution_ratio", "-", "o"), ("cosine_distance", "--", "s")):
            y = part[value].to_numpy(dtype=float)
            err = part[f"{value}_sem"].to_numpy(dtype=float)
            name = "‖c‖/‖s‖" if value == "contribution_ratio" else "1 − cos(s, s+c)"
            ax.plot(
                x,
                y,
                linestyle=style,
                marker=marker,
                markersize=3.5,
                color=colors[position],
                label=f"{name}, {position}",
            )
            ax.fill_between(
                x,
                y - err,
                y + err,
                where=np.isfinite(err),
                color=colors[position],
                alpha=BAND_ALPHA,
                linewidth=0,
            )
    values = diag[["contribution_ratio", "cosine_distance"]].to_numpy(dtype=float)
    if (values > 0).all():
        ax.set_yscale("log")
    # the lines above the bars: the twin axes is drawn after its host unless told otherwise
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    layers = sorted(diag["layer"].unique())
    ax.xaxis.set_major_locator(FixedLocator(layers))
    ax.set_xlabel("layer")
    ax.set_ylabel("adapter diagnostics (log scale)" if ax.get_yscale() == "log" else "adapter diagnostics")
    ax.grid(alpha=0.3, linewidth=0.5)
    handles = [*ax.get_legend_handles_labels()[0], *twin.get_legend_handles_labels()[0]]
    # below the axes: to the right sits the twin axis's scale
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.13), "ncol": 3, "handlelength": 3.0}
    ax.legend(handles=handles, fontsize=8, frameon=False, **below)
    seeds = int(rows["seed"].nunique()) if selection == "best" else int(diag["seeds"].max())
    names = f"{', '.join(sorted(map(str, rows['model'].unique())))} · {', '.join(sorted(map(str, rows['task'].unique())))}"
    missing = "\nno single-layer removal cells: no drop to compare" if drops.empty else ""
    ax.set_title(f"{names}\n{_aggregation(seeds, selection)}{missing}", fontsize=9)
    return table


CONTROL_COLORS = dict(zip(CONTROLS, ["0.45", *sns.color_palette("colorblind", 6)[2:6], "0.15"], strict=True))


def controls_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Accuracy with its 95% interval (validation examples and seeds resampled together) of each control: the
    majority class, the head-only baseline, every adapter removed (trained LayerNorms, pretrained ones, mean
    replacement) and the intact adapters; returns `analysis.controls.control_summary`'s table."""
    rows = panel_rows(df, "controls")
    seeds = int(rows["seed"].nunique())
    if selection == "best":
        heads = head_rows(rows)
        cells = rows.drop(index=heads.index)
        parts = [
            best_seed_rows(cells, ["task", "model"]),
            best_seed_rows(heads, ["task", "model"], "accuracy"),
        ]
        rows = pd.concat([p for p in parts if not p.empty])
    table = control_summary(rows)
    y = np.arange(len(table), dtype=float)
    x = table["accuracy"].to_numpy(dtype=float)
    lo, hi = table["lo"].to_numpy(dtype=float), table["hi"].to_numpy(dtype=float)
    for i, name in enumerate(table["control"]):
        err = None if not np.isfinite(lo[i]) else [[x[i] - lo[i]], [hi[i] - x[i]]]
        ax.errorbar([x[i]], [y[i]], xerr=err, fmt="o", color=CONTROL_COLORS[name], capsize=4, markersize=6)
        ax.annotate(f"{x[i]:.1f}", (hi[i] if np.isfinite(hi[i]) else x[i], y[i]), textcoords="offset points",
                    xytext=(5, 0), ha="left", va="center", fontsize=7.5, color="0.25")  # fmt: skip
    for name, style in (("majority", "--"), ("intact", "-")):
        at = table.index[table["control"] == name]
        if len(at):
            ax.axvline(
                x[at[0]], color=CONTROL_COLORS[name], linestyle=style, linewidth=0.9, alpha=0.7, zorder=0
            )
    ax.set_yticks(y, [CONTROL_LABELS[c] for c in table["control"]], fontsize=8)
    ax.set_ylim(-0.6, len(table) - 0.4)
    left, right = ax.get_xlim()
    ax.set_xlim(left, right + 0.08 * (right - left))  # room for the values
    spread = "95% interval (examples × seeds)" if np.isfinite(lo).any() else "no interval: no predictions"
    ax.set_xlabel(f"validation accuracy (%), {spread}")
    ax.grid(axis="x", alpha=0.3, linewidth=0.5)
    missing = [CONTROL_LABELS[c] for c in CONTROLS if c not in set(table["control"])]
    names = f"{', '.join(sorted(map(str, rows['model'].unique())))} · {', '.join(sorted(map(str, rows['task'].unique())))}"
    title = f"{names}\n{_aggregation(seeds, selection).replace(' ± 1 s.e.m.', '')}"
    if missing:
        title += f"\nnot run: {', '.join(missing)}"
    ax.set_title(title, fontsize=9)
    return table


def recipe_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Per training recipe (one line each, the suite's first): the relative decrease removing the adapters
    of the bottom half and of the top half of the layers, each with its 95% interval over examples and seeds
    where the rows carry their predictions; returns `analysis.stats.recipe_profile`'s table."""
    rows = panel_rows(df, "recipe")
    shown = rows
    if selection == "best":
        shown = best_seed_rows(rows, ["task", "model", *(c for c in RECIPE_COLUMNS if c in rows.columns)])
    table = recipe_profile(shown)
    if table.empty:
        raise ValueError("recipe: no cell removes the bottom or the top half of the layers' adapters")
    recipes = list(dict.fromkeys(table["recipe"]))
    removed = [f"{h} removed (layers {f}..{la})" for h, f, la in table[["half", "first", "last"]].to_numpy()]
    order = list(dict.fromkeys(removed))
    # the two halves of one recipe side by side on its line
    offsets = dict(zip(order, np.linspace(-0.14, 0.14, len(order)) if len(order) > 1 else [0.0], strict=True))
    y = [recipes.index(r) + offsets[h] for r, h in zip(table["recipe"], removed, strict=True)]
    points = table.assign(removed=removed, y=y)
    colors = dict(zip(order, sns.color_palette("colorblind", len(order)), strict=True))
    sns.scatterplot(
        data=points, x="relative_decrease", y="y", hue="removed", hue_order=order, palette=colors, s=40, ax=ax
    )
    intervals = bool(np.isfinite(table["lo"].astype(float)).any())
    for name, part in points.groupby("removed", sort=False):
        x, lo, hi = (part[c].to_numpy(dtype=float) for c in ("relative_decrease", "lo", "hi"))
        if intervals:
            err = np.nan_to_num(np.vstack([x - lo, hi - x]))
            ax.errorbar(x, part["y"], xerr=err, fmt="none", ecolor=colors[name], capsize=3, linewidth=1.2)
    ax.axvline(0.0, color="0.5", linewidth=0.8, zorder=0)
    ax.set_yticks(range(len(recipes)), recipes, fontsize=8)
    ax.set_ylim(len(recipes) - 0.5, -0.5)  # the first recipe on top
    ax.set_ylabel("")
    spread = "95% interval (examples × seeds)" if intervals else "no interval: no predictions"
    ax.set_xlabel(f"relative decrease in accuracy (%), {spread}")
    ax.grid(axis="x", alpha=0.3, linewidth=0.5)
    _legend_below(ax)
    _seeds_title(ax, rows, "best of {n} seed{s} (optimistic)" if selection == "best" else "{n} seed{s}")
    return table


PLACEMENT_COLORS = dict(
    zip(PLACEMENT_SERIES, [sns.color_palette("Paired")[i] for i in (1, 7, 0, 6)], strict=True)
)
PLACEMENT_DASHES = {TOP_RETRAINED: "", BOTTOM_RETRAINED: "", TOP_KEPT: (4, 2), BOTTOM_KEPT: (4, 2)}
PLACEMENT_MARKERS = {TOP_RETRAINED: "^", BOTTOM_RETRAINED: "v", TOP_KEPT: "^", BOTTOM_KEPT: "v"}
RETRAINED = (TOP_RETRAINED, BOTTOM_RETRAINED)


def _legend_below(ax: Axes) -> None:
    """The legend under the x axis's label, a fixed distance below the axes whatever their height."""
    below = offset_copy(ax.transAxes, ax.get_figure(), y=-36, units="points")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, ncol=2, fontsize=7.5,
              frameon=False)  # fmt: skip


def _placement(df: pd.DataFrame, selection: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One placement panel's rows and points (`analysis.select.placement_table`); best-of-n: per series and
    k, the training whose intact model scored best (ties: the lowest seed)."""
    rows = panel_rows(df, "placement")
    table = placement_table(rows)
    if selection == "best":
        ranked = table.sort_values(["score", "seed"], ascending=[False, True], kind="stable")
        table = ranked.drop_duplicates(["series", "k"]).sort_index()
    return rows, table


def _series_lines(table: pd.DataFrame, ax: Axes, x: str, selection: str) -> None:
    """Accuracy against `x`, one seaborn line per series in its colour, dashes and marker: the seeds' mean
    with ±1 s.e.m. bands (none for one seed or best-of-n)."""
    present = [s for s in PLACEMENT_SERIES if s in set(table["series"])]
    sns.lineplot(
        data=table, x=x, y="accuracy", hue="series", style="series", hue_order=present, style_order=present,
        palette=PLACEMENT_COLORS, dashes=PLACEMENT_DASHES, markers=PLACEMENT_MARKERS, markersize=7,
        errorbar=("se", 1) if selection == "mean" else None, err_kws={"alpha": BAND_ALPHA}, ax=ax,
    )  # fmt: skip


def _placement_title(ax: Axes, rows: pd.DataFrame, what: str, selection: str, bands: bool = True) -> None:
    """model · task, then what the panel shows and how its seeds are aggregated."""
    n = int(rows["seed"].nunique())
    if selection == "best":
        spread = "best of {n} seed{s} (optimistic)"
    elif n == 1:
        spread = "1 seed"
    else:
        spread = "mean ± 1 s.e.m. over {n} seeds" if bands else "means over {n} seeds"
    _seeds_title(ax, rows, f"{what}; {spread}")


def _nothing(ax: Axes, text: str) -> None:
    """A panel with nothing to draw says why, where its data would be."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8.5, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def placement_layers_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Accuracy against k, the number of layers with adapters: the top or bottom k layers retrained (adapters
    trained there only) and kept (the all-layer training, every other layer's adapters removed); mean ± 1
    s.e.m. over seeds as bands. Returns the mean, s.e.m. and count per series and k."""
    rows, table = _placement(df, selection)
    if table.empty:
        _nothing(ax, "no training with adapters in the top or bottom k layers only")
        return summarize_seeds(table, ["series", "k"], "accuracy")
    _series_lines(table, ax, "k", selection)
    majority = float(rows["majority_rate"].astype(float).mean())
    if np.isfinite(majority):
        ax.axhline(100 * majority, color="0.4", linestyle="--", linewidth=1, label="majority class")
    ax.xaxis.set_major_locator(FixedLocator(sorted(table["k"].unique())))
    ax.set_xlabel("k: layers with adapters")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3, linewidth=0.5)
    _legend_below(ax)
    _placement_title(ax, rows, "(a) top or bottom k layers", selection)
    return summarize_seeds(table, ["series", "k"], "accuracy")


def placement_params_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Accuracy against trained parameters (log x) of the trainings with adapters in the top or bottom k
    layers only, each line ending at the all-layer training (k = L, starred); returns the points drawn."""
    rows, table = _placement(df, selection)
    table = table[table["series"].isin(RETRAINED)]
    if table.empty or not table["trained_params"].notna().any():
        _nothing(ax, "no retrained placement with its trained parameters")
        return table
    _series_lines(table, ax, "trained_params", selection)
    _mark_all_layers(ax, table, "trained_params")
    ax.set_xscale("log")
    # which k each count is, on the top edge (the data would hide labels inside the axes)
    ks = table.groupby("trained_params")["k"].first()
    top = ax.secondary_xaxis("top")
    top.xaxis.set_major_locator(FixedLocator(ks.index.to_numpy(dtype=float)))
    top.xaxis.set_minor_locator(NullLocator())
    top.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"k={ks.get(x, '')}"))
    top.tick_params(labelsize=7, colors="0.35")
    ax.set_xlabel("trained parameters (log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3, linewidth=0.5)
    _legend_below(ax)
    _placement_title(ax, rows, "(b) against trained parameters", selection)
    return table


def placement_time_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Accuracy against the measured training time (`fit_seconds`, one value per training) of the same
    trainings: each training a faint point, a line through each k's means; returns the means per series
    and k (accuracy and fit_seconds)."""
    rows, table = _placement(df, selection)
    table = table[table["series"].isin(RETRAINED) & table["fit_seconds"].notna()]
    if table.empty:
        _nothing(ax, "training time not recorded (fit_seconds) for these trainings")
        return table
    means = table.groupby(["series", "k"], sort=True)[["accuracy", "fit_seconds"]].mean().reset_index()
    present = [s for s in RETRAINED if s in set(table["series"])]
    style = {"hue": "series", "style": "series", "hue_order": present, "palette": PLACEMENT_COLORS}
    style["markers"] = PLACEMENT_MARKERS
    if len(table) > len(means):  # several seeds: each training's own time and accuracy
        sns.scatterplot(
            data=table, x="fit_seconds", y="accuracy", alpha=0.35, s=22, legend=False, ax=ax, **style
        )
    sns.lineplot(data=means, x="fit_seconds", y="accuracy", style_order=present, dashes=PLACEMENT_DASHES,
                 markersize=7, sort=False, estimator=None, ax=ax, **style)  # fmt: skip
    _mark_all_layers(ax, means, "fit_seconds")
    ax.set_xlabel("training time (s, fit_seconds)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3, linewidth=0.5)
    _legend_below(ax)
    what = "(c) against training time" + ("; faint: each training" if len(table) > len(means) else "")
    _placement_title(ax, rows, what, selection, bands=False)
    return means


def _fragility_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = panel_rows(df, "fragility")
    table = fragility(rows, examples_of(rows))
    if "label_name" not in table.columns:
        table["label_name"] = table["label"].astype(str)
    return table


def _fragility_title(ax: Axes, df: pd.DataFrame, what: str) -> None:
    first = df.iloc[0]
    cells, seeds = len(df[["first", "last"]].drop_duplicates()), df["seed"].nunique()
    ax.set_title(
        f"{first['model']} · {first['task']} · {first['method']}\n{what} ({cells} cells × {seeds} "
        f"seed{'s' if seeds != 1 else ''})",
        fontsize=9,
    )


def fragility_length_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Each example's fragility (the share of cells x seeds that flip it) against its length in words: the
    examples as faint points, the mean per length sixth with its 95% interval over examples; returns the
    per-example table (`analysis.examples.fragility`)."""
    table = _fragility_table(df)
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(table))
    ax.scatter(table["words"] + jitter, 100 * table["fragility"], s=5, color="0.6", alpha=0.35, linewidth=0)
    bins = pd.qcut(table["words"], 6, duplicates="drop")
    centre = table.groupby(bins, observed=True)["words"].transform("median")
    sns.lineplot(x=centre, y=100 * table["fragility"], errorbar=("ci", 95), marker="o", color="C0",
                 seed=0, ax=ax, label="mean per length sixth (95% interval)")  # fmt: skip
    ax.set_xlabel("length (words)")
    ax.set_ylabel("fragility (% of cells × seeds that flip it)")
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    _fragility_title(ax, df, "fragility against length")
    return table


def fragility_label_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Per label, the mean share of cells x seeds that lose and that gain its examples, with 95% intervals
    over examples; returns that long table (label_name, change, share in %)."""
    table = _fragility_table(df)
    runs = table["runs"].astype(float)
    long = pd.concat(
        [
            pd.DataFrame(
                {"label": table["label_name"], "change": change, "share": 100 * table[change] / runs}
            )
            for change in ("lost", "gained")
        ],
        ignore_index=True,
    )
    order = list(dict.fromkeys(table.sort_values("label")["label_name"]))
    sns.barplot(data=long, x="label", y="share", hue="change", order=order, hue_order=["lost", "gained"],
                errorbar=("ci", 95), seed=0, palette={"lost": "#b2182b", "gained": "#2166ac"}, ax=ax)  # fmt: skip
    counts = table["label_name"].value_counts()
    ax.set_xticks(range(len(order)), [f"{name}\n({counts[name]} examples)" for name in order])
    ax.set_xlabel("label")
    ax.set_ylabel("% of cells × seeds that lose / gain an example")
    ax.grid(alpha=0.3, linewidth=0.5, axis="y")
    ax.legend(fontsize=8, frameon=False)
    _fragility_title(ax, df, "lost and gained per label")
    return long


def _mark_all_layers(ax: Axes, table: pd.DataFrame, x: str) -> None:
    """Star the all-layer training (k = L, the largest k) where both retrained series end."""
    k = table["k"].max()
    whole = table[(table["k"] == k) & (table["series"] == TOP_RETRAINED)]
    if whole.empty:
        return
    ax.plot(whole[x].astype(float).mean(), whole["accuracy"].mean(), marker="*", markersize=14, color="black",
            linestyle="none", label=f"every layer (k = {k})", zorder=4)  # fmt: skip


SMOOTH = 10  # steps in the running mean of the loss curves (one batch's loss scatters by ~0.1 nats)
FACTOR_LABELS = {"init_std": "σ", "adapter_size": "m"}


def loss_curves_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Training loss against step: one colour per setting (init std, or adapter size), one thin line per seed
    (a running mean over SMOOTH steps), the plateau (the loss of the class prior) dashed. Returns the
    histories drawn, with the running mean as `smoothed`."""
    rows = panel_rows(df, "loss_curves")
    factor = curve_factor(rows) or "init_std"
    if selection == "best":
        rows = best_seed_rows(rows, ["task", "model", factor])
    hist = load_histories(rows, (factor,))
    loss = (
        hist["loss"].astype(float).where(np.isfinite(hist["loss"].astype(float)))
    )  # a diverged run's last step
    hist = hist.assign(
        smoothed=loss.groupby(hist["train_key"]).transform(lambda x: x.rolling(SMOOTH, 1).mean())
    )
    values = sorted(hist[factor].unique())
    palette = dict(zip(values, sns.color_palette("viridis", len(values)), strict=True))
    for (value, _), run in hist.groupby([factor, "train_key"], sort=True):
        ax.plot(run["step"], run["smoothed"], color=palette[value], linewidth=0.9, alpha=0.85)
    for plateau in sorted(hist["plateau_loss"].dropna().unique()):
        ax.axhline(plateau, color="0.3", linestyle="--", linewidth=1)
    handles = [Line2D([], [], color=palette[v], label=f"{FACTOR_LABELS[factor]} = {v:g}") for v in values]
    handles.append(Line2D([], [], color="0.3", linestyle="--", label="plateau: the class prior's loss"))
    ax.legend(handles=handles, **LEGEND)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training loss ({SMOOTH}-step running mean)")
    ax.grid(alpha=0.3, linewidth=0.5)
    best = ", the best of n" if selection == "best" else ""
    _seeds_title(ax, rows, "one line per seed ({n} seed{s}" + best + ")")
    return hist


def _seeds_title(ax: Axes, rows: pd.DataFrame, second: str) -> None:
    """The panel title: model · task, then `second` with {n} and {s} filled from the rows' seed count."""
    n = int(rows["seed"].nunique())
    model, task = (", ".join(sorted(map(str, rows[c].unique()))) for c in ("model", "task"))
    ax.set_title(f"{model} · {task}\n" + second.format(n=n, s="s" if n != 1 else ""), fontsize=9)


def stability_plot(df: pd.DataFrame, ax: Axes, selection: str = "mean") -> pd.DataFrame:
    """Per setting: each seed's plateau-escape step (dots; a cross at its last step for a seed that never
    left the plateau) and, on the right axis, the s.d. of the seeds' accuracy. Returns the stability table."""
    rows = panel_rows(df, "stability")
    factor = curve_factor(rows) or "init_std"
    table = stability_table(rows)
    x = rows[factor].astype(float)
    escaped = rows["escape_step"].notna().to_numpy()
    steps = rows["train_steps"].astype(float)
    ax.scatter(
        x[escaped], rows["escape_step"].astype(float)[escaped], color="C0", s=22, label="left the plateau at"
    )
    if (~escaped).any():
        ax.scatter(
            x[~escaped],
            steps[~escaped],
            color="C3",
            marker="x",
            s=36,
            label="never left it (at its last step)",
        )
    ax.set_ylabel("training step")
    ax.set_ylim(bottom=0)
    ax.set_xscale("log", base=2 if factor == "adapter_size" else 10)
    ax.set_xlabel(
        {"init_std": "adapter init std σ (log scale)", "adapter_size": "adapter size m (log2 scale)"}[factor]
    )
    ax.grid(alpha=0.3, linewidth=0.5)
    twin = ax.twinx()
    twin.plot(
        table["value"],
        table["accuracy_sd"],
        color="0.35",
        marker="s",
        linestyle="-",
        linewidth=1,
        markersize=4,
    )
    twin.set_ylabel("s.d. of the seeds' accuracy (points)", color="0.35")
    twin.set_ylim(bottom=0)
    proxy = Line2D(
        [], [], color="0.35", marker="s", markersize=4, label="s.d. of the seeds' accuracy (right)"
    )
    # below the axes: the right one's ticks and label take the space where the other figures' legends go
    ax.legend(
        handles=[*ax.get_legend_handles_labels()[0], proxy],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    _seeds_title(ax, rows, "{n} seed{s} per setting")
    return table


def _drawing(name: str) -> Callable[[pd.DataFrame, Axes, str], pd.DataFrame]:
    """A figure's panel function from its declared name (`analysis.select.Figure.draw`): a function of this
    module, or "module:function"."""
    module, _, function = name.rpartition(":")
    return getattr(importlib.import_module(module) if module else sys.modules[__name__], function)


def study_figures(df: pd.DataFrame, out_dir: str | Path, selection: str = "mean") -> list[Path]:
    """Draw every figure the rows allow (see `analysis.select.figure_plan`) into out_dir as
    <name>[_best_of_n].png/.pdf, one panel per `FIGURES[name].panel` value."""
    out_dir = Path(out_dir)
    suffix = "" if selection == "mean" else "_best_of_n"
    paths = []
    for name, rows in figure_plan(df).items():
        figure = FIGURES[name]
        panels, columns = _panel_grid(split_panels(rows, figure.panel), rows, figure.panel)
        draws = [_drawing(d) for d in (figure.draw, *figure.beside)]
        columns = len(draws) if figure.beside else columns
        fig, axes = _figure(len(panels) * len(draws), columns, figure.panel_size(rows))
        for i, panel in enumerate(panels):
            row = axes[i * len(draws) : (i + 1) * len(draws)]
            for ax, draw in zip(row, draws, strict=True):
                draw(panel, ax, selection)
            _name_recipe(row[0], panel, rows, figure.panel)
        title = figure_title(name, rows)
        if title:
            fig.suptitle(title, fontsize=11)
        paths += _save(fig, out_dir / f"{name}{suffix}")
    return paths


def figure_title(name: str, rows: pd.DataFrame) -> str:
    """The title above a figure's panels: its drawing's, and a preset's label where the rows have one (so
    that nobody reads a quick run as the study's result)."""
    preset = preset_label(rows)
    label = f"{preset.capitalize()}: {PRESET_NOTE}" if preset else None
    return "\n".join(t for t in (FIGURES[name].title, label) if t)


def _figure(n_panels: int, n_cols: int, panel_size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    n_rows = math.ceil(n_panels / n_cols)
    # A bare Figure on an Agg canvas: no pyplot state, so importing this module never switches the
    # backend of a notebook that uses it.
    fig = Figure(figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _save(fig: Figure, out_stem: str | Path) -> list[Path]:
    stem = Path(out_stem)
    if stem.suffix in (".png", ".pdf"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight", pad_inches=0.1)  # long titles on small panels
    return paths


def _summarize(rows: pd.DataFrame, by: list[str], selection: str) -> pd.DataFrame:
    """summarize_seeds plus what is drawn: `y` and `yerr` in percent (yerr NaN for best-of-n)."""
    table = summarize_seeds(rows, by, "accuracy", selection)
    if selection == "mean":
        return table.assign(y=100 * table["mean"], yerr=100 * table["sem"])
    return table.assign(y=100 * table["best"], yerr=np.nan)


def _err(table: pd.DataFrame) -> np.ndarray | None:
    err = table["yerr"].to_numpy(dtype=float)
    return None if np.isnan(err).all() else np.nan_to_num(err)


def _task_lines(df: pd.DataFrame, ax: Axes, name: str, x: str, selection: str) -> tuple:
    """One line per task of accuracy against column x: the rows, the plotted table, the task colours."""
    rows = panel_rows(df, name)
    table = _summarize(rows, ["task", x], selection)
    colors = _task_colors(rows)
    for task, line in table.groupby("task", sort=True):
        _line(ax, line[x], line, colors[task], label=str(task))
    return rows, table, colors


def _line(ax: Axes, x: pd.Series, table: pd.DataFrame, color, label: str) -> None:
    x = x.astype(float).to_numpy()
    y, err = table["y"].to_numpy(dtype=float), table["yerr"].to_numpy(dtype=float)
    ax.plot(x, y, marker="o", markersize=4, color=color, linewidth=1.5, label=label)
    ax.fill_between(x, y - err, y + err, where=np.isfinite(err), color=color, alpha=BAND_ALPHA, linewidth=0)


def _reference(ax: Axes, table: pd.DataFrame, color, label: str) -> None:
    """A group drawn as a horizontal line at its value, with its ±1 s.e.m. as a band when there is one."""
    y, err = float(table["y"].iloc[0]), float(table["yerr"].iloc[0])
    ax.axhline(y, color=color, linestyle="-", linewidth=1.2, label=label, zorder=1)
    if np.isfinite(err):
        ax.axhspan(y - err, y + err, color=color, alpha=0.12, linewidth=0, zorder=0)


def _majority_lines(ax: Axes, rows: pd.DataFrame, colors: dict) -> bool:
    """Each task's majority-class rate as a dashed line in its colour; False if no rate is known."""
    rates = rows.groupby("task", sort=True)["majority_rate"].mean().dropna()
    for task, rate in rates.items():
        ax.axhline(100 * rate, color=colors[task], linestyle="--", linewidth=1, alpha=0.8)
    return not rates.empty


def _mark_diverged(ax: Axes, rows: pd.DataFrame, x: pd.Series) -> int:
    """Mark diverged runs with a red x at their accuracy, or on the bottom axis when they have none."""
    diverged = rows["diverged"].fillna(False).astype(bool).to_numpy()
    if not diverged.any():
        return 0
    x = x.astype(float).to_numpy()[diverged]
    y = 100 * rows["accuracy"].astype(float).to_numpy()[diverged]
    scored = np.isfinite(y)
    label = f"diverged: {diverged.sum()} of {len(rows)} runs"
    if not scored.all():
        label += f"\n({(~scored).sum()} with no score: on the x axis)"
    style = {"linestyle": "none", "marker": "x", "color": DIVERGED_COLOR, "markersize": 7, "zorder": 5}
    if scored.any():
        ax.plot(x[scored], y[scored], label=label, **style)
        label = "_nolegend_"
    if not scored.all():
        # Nothing to score: pin them to the x axis in axes coordinates, so they never set the y range.
        on_axis = ax.get_xaxis_transform()
        ax.plot(x[~scored], np.zeros((~scored).sum()), transform=on_axis, clip_on=False, label=label, **style)
    return int(diverged.sum())


def _label_points(ax: Axes, x: np.ndarray, points: pd.DataFrame, method: str) -> None:
    """Write each point's size m or k just above its error bar, so a reader can tell the settings apart."""
    column = {"adapters": "adapter_size", "top_k": "k", "lora": "lora_r"}.get(method)
    if column is None:
        return
    prefix = {"adapters": "m=", "top_k": "k=", "lora": "r="}[method]
    top = points["y"] + points["yerr"].fillna(0.0)
    for i, (xi, yi, setting) in enumerate(zip(x, top, points[column], strict=True)):
        if pd.isna(setting) or not np.isfinite(yi):
            continue
        text = f"{prefix}{int(setting)}" if i == 0 else f"{int(setting)}"
        ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(0, 3), **POINT_LABEL)


def _finish(
    ax: Axes, rows: pd.DataFrame, selection: str, err_kind: str = "band", extra_handles: tuple = ()
) -> None:
    """Axis label, grid, a legend outside the data, and a title naming model, task(s), seeds, aggregation."""
    # Reference lines drawn after the limits were first computed can end up on the frame: rescale.
    ax.autoscale_view()
    spread = "" if selection == "best" else f" (±1 s.e.m. {err_kind})"
    ax.set_ylabel(f"validation accuracy (%){spread}")
    ax.grid(alpha=0.3, linewidth=0.5)
    handles = [*ax.get_legend_handles_labels()[0], *extra_handles]
    ax.legend(handles=handles, **LEGEND)
    tasks = ", ".join(sorted(map(str, rows["task"].unique())))
    model = ", ".join(sorted(map(str, rows["model"].unique())))
    ax.set_title(f"{model} · {tasks}\n{_aggregation(int(rows['seed'].nunique()), selection)}", fontsize=9)


def _aggregation(n_seeds: int, selection: str) -> str:
    seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    if selection == "best":
        return f"best of {seeds} on validation (optimistic)"
    return f"mean ± 1 s.e.m. over {seeds}"


def _task_colors(rows: pd.DataFrame) -> dict:
    tasks = sorted(rows["task"].unique())
    return dict(zip(tasks, sns.color_palette("colorblind", len(tasks)), strict=True))


def _variant_label(variant: str) -> str:
    """'placement=parallel,combine=multiply' -> 'placement: parallel, combine: multiply'."""
    return ", ".join(part.replace("=", ": ") for part in str(variant).split(","))


def _count(n: float) -> str:
    """' (110M params)' for a legend; empty when the count is unknown."""
    if pd.isna(n):
        return ""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f" ({n / size:.3g}{unit} params)"
    return f" ({n:.0f} params)"


def _title(df: pd.DataFrame) -> str:
    names = [str(df[c].iloc[0]) for c in ("task", "model") if c in df.columns]
    details = []
    if "method" in df.columns and df["method"].iloc[0] == "lora":
        details.append(f"LoRA r={df['lora_r'].iloc[0]} on {df['lora_target'].iloc[0]}")
    elif "positions" in df.columns:
        details.append(f"adapters: {df['positions'].iloc[0]}")
    layers = adapted_layers(df["adapter_layers"].iloc[0]) if "adapter_layers" in df.columns else None
    if layers is not None and layers != tuple(range(layers[-1] + 1)):
        details.append(f"adapters in layers {layers_text(layers)} only")
    if "head" in df.columns and df["head"].iloc[0] == "lm":
        details.append("head: the LM's label words")
    if block_size(df) > 1:
        details.append(f"blocks of {block_size(df)} layers")
    if "seed" in df.columns and df["seed"].nunique() > 1:
        details.append(f"mean of {df['seed'].nunique()} seeds")
    if "intact_accuracy" in df.columns:
        details.append(f"intact accuracy {100 * df['intact_accuracy'].mean():.1f}%")
    title = " / ".join(names) or "layer ablation"
    return f"{title}\n{', '.join(details)}" if details else title
