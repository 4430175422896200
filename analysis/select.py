"""Which rows each figure and claim reads: row predicates, panels, and the figure plan. No plotting here.

Every figure is one `Figure` entry: the rows it selects, the columns that make one plotted point and one
panel, and (for rows outside a study) whether the rows vary its factor at all. Drawing is
`analysis.plots`'s; judging claims is `analysis.claims`'s; both read the plan made here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from ablation.config import METHODS
from ablation.keys import REPLICATE, SETTING_COLUMNS
from analysis.collect import conform

# Rows that differ in these columns belong to different heatmaps; everything else (seeds) is averaged.
PANEL_COLUMNS = ("task", "model", "positions")
PAPER_SIZES = (8, 64, 256)  # the adapter sizes of the paper's GLUE grid (its bottleneck claim)


def intact(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of intact models (no layer range ablated)."""
    return df[df["first"].isna() & df["last"].isna()]


def ablated(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of layer-ablation cells."""
    return df.dropna(subset=["first", "last"])


def _plain(df: pd.DataFrame) -> pd.Series:
    return df["variant"].isna() | (df["variant"] == "plain")


def plain_adapters(df: pd.DataFrame) -> pd.DataFrame:
    """Intact rows of the plain Houlsby adapter (any size and init)."""
    rows = intact(df)
    return rows[(rows["method"] == "adapters") & _plain(rows)]


def all_methods(df: pd.DataFrame) -> pd.DataFrame:
    """Intact rows of every method, adapters only in their plain form."""
    rows = intact(df)
    return rows[rows["method"].isin(METHODS) & ((rows["method"] != "adapters") | _plain(rows))]


def variant_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Intact rows of adapters with a variant name (the plain one included)."""
    rows = intact(df)
    return rows[(rows["method"] == "adapters") & rows["variant"].notna()]


def method_rows(panel: pd.DataFrame, method: str) -> pd.DataFrame:
    """Intact rows of one method."""
    return panel[(panel["method"] == method) & panel["first"].isna()]


# What a preset's figures and report say of themselves, after its label ("quick preset").
PRESET_NOTE = "a small version of the study, not its result"


def preset_label(df: pd.DataFrame) -> str | None:
    """'quick preset' (the presets the rows were made with, joined by '/') for titles; None without one."""
    if "preset" not in df.columns:
        return None
    presets = sorted({str(p) for p in df["preset"].dropna() if str(p)})
    return f"{'/'.join(presets)} preset" if presets else None


def split_panels(df: pd.DataFrame, columns: tuple[str, ...] = PANEL_COLUMNS) -> list[pd.DataFrame]:
    """One frame per distinct value of the columns that vary (one heatmap per task x model x positions)."""
    keys = [c for c in columns if c in df.columns and df[c].nunique(dropna=False) > 1]
    if not keys:
        return [df]
    return [panel for _, panel in df.groupby(keys, sort=True, dropna=False)]


def mixed_settings(df: pd.DataFrame, by: list[str], settings: tuple[str, ...] = SETTING_COLUMNS) -> dict:
    """Settings (other than `by`) on which the rows of one group of `by` differ: {column: sorted values}."""
    mixed = {}
    for col in settings:
        if col in by or col not in df.columns:
            continue
        counts = df.groupby(by, dropna=False)[col].nunique(dropna=False)
        if (counts > 1).any():
            mixed[col] = sorted(map(str, df[col].unique()))
    return mixed


def best_seed_rows(df: pd.DataFrame, by: list[str], score: str = "intact_accuracy") -> pd.DataFrame:
    """All rows of the seed with the highest mean `score` in each group of `by` (ties: the lowest seed).

    For the layer ablation under the paper's protocol: keep the training run whose intact model scored
    best on validation, and show its ablations. Optimistic, as every best-of-n selection.
    """
    per_seed = df.groupby([*by, REPLICATE], dropna=False)[score].mean().reset_index()
    ranked = per_seed.sort_values([score, REPLICATE], ascending=[False, True], na_position="last")
    best = ranked.drop_duplicates(by)[[*by, REPLICATE]]
    keep = pd.MultiIndex.from_frame(df[[*by, REPLICATE]]).isin(pd.MultiIndex.from_frame(best))
    return df[keep]


@dataclass(frozen=True)
class Figure:
    """Which rows one figure reads, and how they split into points and panels."""

    select: Callable[[pd.DataFrame], pd.DataFrame]
    point: tuple[str, ...]  # with model and task, the columns that make one plotted point (or cell)
    panel: tuple[str, ...]  # one panel per distinct value of these
    sweeps: Callable[[pd.DataFrame], bool]  # for rows without a study: does the data vary this factor?


def _only_adapters(df: pd.DataFrame) -> bool:
    return set(intact(df)["method"].dropna()) == {"adapters"}


FIGURES: dict[str, Figure] = {
    "heatmap": Figure(ablated, ("first", "last"), PANEL_COLUMNS, lambda df: not ablated(df).empty),
    "init_scale": Figure(
        plain_adapters, ("init_std",), ("model",), lambda df: plain_adapters(df)["init_std"].nunique() > 1
    ),
    "bottleneck": Figure(
        plain_adapters,
        ("adapter_size",),
        ("model",),
        lambda df: _only_adapters(df) and plain_adapters(df)["adapter_size"].nunique() > 1,
    ),
    "tradeoff": Figure(
        all_methods,
        ("method", "adapter_size", "k", "trained_params"),
        ("model", "task"),
        lambda df: intact(df)["method"].nunique() > 1,
    ),
    "variants": Figure(
        variant_rows, ("variant",), ("model", "task"), lambda df: variant_rows(df)["variant"].nunique() > 1
    ),
}
# The figure each study draws (conf/study/<name>.yaml -> figure name).
STUDY_FIGURES = {"layer_ablation": "heatmap", **{name: name for name in FIGURES if name != "heatmap"}}


def figure_plan(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Which figures the rows allow, with the rows each draws: {"heatmap" | "init_scale" | ...: rows}.

    Rows of a known study go to that study's figure. Rows without one (ad-hoc runs, sweeps outside a study)
    are inferred: each figure whose factor they vary, provided every plotted point is one setting (the
    heatmap: any ablation rows). A figure a study already draws is not inferred again.
    """
    df = conform(df)
    study = df["study"].where(df["study"] != "")
    plan = {}
    for name, figure in STUDY_FIGURES.items():
        rows = FIGURES[figure].select(df[study == name])
        if not rows.empty:
            plan[figure] = rows
    loose = df[~study.isin(STUDY_FIGURES).to_numpy()]
    for name, figure in FIGURES.items():
        rows = figure.select(loose)
        one_setting = name == "heatmap" or not mixed_settings(rows, ["model", "task", *figure.point])
        if name not in plan and not rows.empty and figure.sweeps(loose) and one_setting:
            plan[name] = rows
    return {name: plan[name] for name in FIGURES if name in plan}


def panel_rows(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows one panel of figure `name` reads; ValueError if there are none or they mix settings."""
    figure = FIGURES[name]
    rows = figure.select(conform(df))
    if rows.empty:
        raise ValueError(f"{name}: no rows to plot (needs intact rows; got {len(df)} rows)")
    several = {
        c: sorted(map(str, rows[c].unique())) for c in figure.panel if rows[c].nunique(dropna=False) > 1
    }
    if several:
        raise ValueError(f"{name}: one panel expected, but the rows mix {several}; draw one panel each")
    mixed = mixed_settings(rows, ["model", "task", *figure.point])
    if mixed:
        raise ValueError(
            f"{name}: the seeds of one point differ in {mixed}; select one setting per point first"
        )
    return rows
