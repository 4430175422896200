"""Figure 6 of Houlsby et al. 2019: relative decrease after removing the adapters of layers [first, last]."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis.stats import layer_matrix, split_panels

MAX_COLUMNS = 3


def heatmap(df: pd.DataFrame, ax: Axes, value: str = "relative_decrease", annot: bool = True) -> pd.DataFrame:
    """Draw one panel (rows: first ablated layer, columns: last, in %) on `ax`; return the matrix."""
    matrix = layer_matrix(df, value)
    n_layers = len(matrix)
    # Single-layer effects are a few tenths of a percent: keep one decimal, smaller on big grids.
    fmt, fontsize = ".1f", (9 if n_layers <= 8 else 6.5)
    sns.heatmap(
        matrix * 100,
        ax=ax,
        mask=matrix.isna(),
        annot=annot,
        fmt=fmt,
        annot_kws={"fontsize": fontsize},
        cmap="rocket_r",
        square=True,
        linewidths=0.5,
        linecolor="white",
        cbar_kws={"label": f"{value.replace('_', ' ')} (%)"},
    )
    # Single-layer removal is the diagonal; outline it so it reads as its own series, as in the paper.
    for layer in range(n_layers):
        ax.add_patch(
            Rectangle((layer, layer), 1, 1, fill=False, edgecolor="black", linewidth=1.2, clip_on=False)
        )
    ax.set_xlabel("last ablated layer")
    ax.set_ylabel("first ablated layer")
    ax.tick_params(axis="both", labelrotation=0)
    ax.set_title(_title(df), fontsize=10)
    return matrix


def heatmap_figure(df: pd.DataFrame, out_stem: str | Path, value: str = "relative_decrease") -> list[Path]:
    """Save one heatmap panel per task (x model x positions where those vary) as out_stem.png and .pdf."""
    panels = split_panels(df)
    n_cols = min(len(panels), MAX_COLUMNS)
    n_rows = math.ceil(len(panels) / n_cols)
    side = 0.45 * (int(df["last"].max()) + 1) + 2.0
    # A bare Figure on an Agg canvas: no pyplot state, so importing this module never switches the
    # backend of a notebook that uses it.
    fig = Figure(figsize=(1.2 * side * n_cols, side * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        heatmap(panel, ax, value=value)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)

    stem = Path(out_stem)
    if stem.suffix in (".png", ".pdf"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths


def _title(df: pd.DataFrame) -> str:
    names = [str(df[c].iloc[0]) for c in ("task", "model") if c in df.columns]
    details = []
    if "positions" in df.columns:
        details.append(f"adapters: {df['positions'].iloc[0]}")
    if "seed" in df.columns and df["seed"].nunique() > 1:
        details.append(f"mean of {df['seed'].nunique()} seeds")
    if "intact_accuracy" in df.columns:
        details.append(f"intact accuracy {100 * df['intact_accuracy'].mean():.1f}%")
    title = " / ".join(names) or "layer ablation"
    return f"{title}\n{', '.join(details)}" if details else title
