"""Statistics on the result table: paired bootstrap intervals, mean +- s.e.m., the layer x layer matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Rows that differ in these columns belong to different heatmaps; everything else (seeds) is averaged.
PANEL_COLUMNS = ("task", "model", "positions")


def paired_bootstrap_ci(
    labels: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Accuracy(a) - accuracy(b) and its percentile bootstrap interval, resampling examples jointly."""
    labels, a, b = np.asarray(labels), np.asarray(a), np.asarray(b)
    if not (labels.shape == a.shape == b.shape) or labels.ndim != 1:
        raise ValueError(
            f"labels, a, b must be 1-D and equal in length, got {labels.shape}, {a.shape}, {b.shape}"
        )
    n = len(labels)
    if n == 0:
        raise ValueError("paired_bootstrap_ci: no examples")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    # Per example the paired difference is +1 (only a right), -1 (only b right) or 0. Resampling n
    # examples with replacement therefore only changes how many of each kind are drawn, which is a
    # multinomial draw: exact, and no n_boot x n index matrix (QQP has 40k validation examples).
    per_example = (a == labels).astype(int) - (b == labels).astype(int)
    counts = np.array([(per_example == 1).sum(), (per_example == -1).sum(), (per_example == 0).sum()])
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=n_boot)
    boot = (draws[:, 0] - draws[:, 1]) / n
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [tail, 1.0 - tail])
    return float(per_example.mean()), float(lo), float(hi)


def mean_sem(df: pd.DataFrame, by: str | list[str], value: str) -> pd.DataFrame:
    """Mean, standard error of the mean (ddof=1; NaN for a single row) and count of `value` per group."""
    grouped = df.groupby(by, sort=True)[value]
    out = grouped.agg(mean="mean", sem="sem", n="count")
    return out.reset_index()


def split_panels(df: pd.DataFrame) -> list[pd.DataFrame]:
    """Split the table into one frame per heatmap panel (per distinct task x model x positions)."""
    keys = [c for c in PANEL_COLUMNS if c in df.columns and df[c].nunique(dropna=False) > 1]
    if not keys:
        return [df]
    return [panel for _, panel in df.groupby(keys, sort=True, dropna=False)]


def layer_matrix(df: pd.DataFrame, value: str = "relative_decrease") -> pd.DataFrame:
    """Pivot one panel to a layers x layers matrix: index = first, columns = last, seeds averaged.

    Covers layers 0..L-1 with L = max(last) + 1; the lower triangle (first > last) and spans with no
    result are NaN. Values stay in the units of `value` (fractions, not percent).
    """
    if df.empty:
        raise ValueError("layer_matrix: the result table is empty")
    if value not in df.columns:
        raise KeyError(f"layer_matrix: no column {value!r} (columns: {list(df.columns)})")
    mixed = {
        c: sorted(map(str, df[c].unique())) for c in PANEL_COLUMNS if c in df.columns and df[c].nunique() > 1
    }
    if mixed:
        raise ValueError(
            f"layer_matrix: one panel expected, but the table mixes {mixed}; use split_panels first"
        )
    n_layers = int(df["last"].max()) + 1
    layers = pd.RangeIndex(n_layers)
    matrix = df.pivot_table(index="first", columns="last", values=value, aggfunc="mean")
    matrix = matrix.reindex(index=layers, columns=layers).astype(float)
    matrix.index.name, matrix.columns.name = "first", "last"
    upper = np.triu(np.ones((n_layers, n_layers), dtype=bool))
    return matrix.where(upper)
