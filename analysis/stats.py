"""Statistics on the result table: paired bootstrap intervals, seed aggregation, the layer x layer matrix."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Rows that differ in these columns belong to different heatmaps; everything else (seeds) is averaged.
PANEL_COLUMNS = ("task", "model", "positions")
# What defines one training setting. Rows of one plotted point must agree on all of them, or a figure
# would average different settings as if they were seeds.
SETTING_COLUMNS = (
    "method",
    "k",
    "variant",
    "adapter_size",
    "init_std",
    "adapter_activation",
    "adapter_positions",
    "adapter_norm",
    "adapter_depth",
    "adapter_placement",
    "adapter_combine",
    "lr",
    "train_precision",
)
SELECTIONS = ("mean", "best")


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


def summarize_seeds(
    df: pd.DataFrame, by: str | list[str], value: str = "accuracy", selection: str = "mean"
) -> pd.DataFrame:
    """Aggregate the seeds of each group of `by`: mean +- s.e.m., or the best seed on validation.

    Columns: `by`, then `mean` and `sem` (selection="mean"; sem with ddof=1, NaN for one seed) or `best`
    and `best_seed` (selection="best"), then `n` (rows with a finite value), `n_runs` (rows) and
    `n_diverged` (rows whose training stopped at a non-finite loss or gradient).

    A diverged run that still has a finite value counts like any other seed: it is part of what the
    setting produces. Non-finite values (a run with nothing to score) are left out, so n < n_runs.

    selection="best" is the paper's protocol: per group, the value of the seed with the highest
    `accuracy` (ties: the lowest seed). It is optimistic, because it selects on the validation set whose
    score it reports; the maximum of n noisy runs is biased upwards.
    """
    by = [by] if isinstance(by, str) else list(by)
    if selection not in SELECTIONS:
        raise ValueError(f"summarize_seeds: selection must be one of {SELECTIONS}, got {selection!r}")
    needed = [*by, value, *(["accuracy"] if selection == "best" else [])]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise KeyError(f"summarize_seeds: no column {missing} (columns: {list(df.columns)})")
    stats = ["mean", "sem"] if selection == "mean" else ["best", "best_seed"]
    columns = [*by, *stats, "n", "n_runs", "n_diverged"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    rows = [
        {**dict(zip(by, key, strict=True)), **_aggregate(group, value, selection)}
        for key, group in df.groupby(by, sort=True, dropna=False)
    ]
    out = pd.DataFrame(rows, columns=columns).astype({c: df[c].dtype for c in by})
    return out.astype({"best_seed": "Int64"}) if selection == "best" else out


def _aggregate(group: pd.DataFrame, value: str, selection: str) -> dict:
    values = _finite(group[value])
    diverged = group["diverged"].fillna(False).astype(bool) if "diverged" in group else False
    counts = {"n": int(values.notna().sum()), "n_runs": len(group), "n_diverged": int(np.sum(diverged))}
    if selection == "mean":
        return {"mean": values.mean(), "sem": values.sem(ddof=1), **counts}
    scored = group.assign(_score=_finite(group["accuracy"]), _value=values)
    scored = scored.dropna(subset=["_score", "_value"])
    if "seed" in scored:
        scored = scored.sort_values("seed", kind="stable")
    if scored.empty:
        return {"best": np.nan, "best_seed": pd.NA, **counts}
    best = scored.iloc[int(np.argmax(scored["_score"].to_numpy()))]  # first maximum: the lowest seed
    return {"best": best["_value"], "best_seed": best.get("seed", pd.NA), **counts}


def _finite(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values).astype(float)
    return numbers.where(np.isfinite(numbers))


def best_seed_rows(df: pd.DataFrame, by: list[str], score: str = "intact_accuracy") -> pd.DataFrame:
    """All rows of the seed with the highest mean `score` in each group of `by` (ties: the lowest seed).

    For the layer ablation under the paper's protocol: keep the training run whose intact model scored
    best on validation, and show its ablations. Optimistic, as every best-of-n selection.
    """
    per_seed = df.groupby([*by, "seed"], dropna=False)[score].mean().reset_index()
    ranked = per_seed.sort_values([score, "seed"], ascending=[False, True], na_position="last")
    best = ranked.drop_duplicates(by)[[*by, "seed"]]
    keep = pd.MultiIndex.from_frame(df[[*by, "seed"]]).isin(pd.MultiIndex.from_frame(best))
    return df[keep]


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


@dataclass(frozen=True)
class Group:
    """Per-example correctness of one setting: a (seeds x examples) 0/1 matrix, and what it shares.

    Groups with the same `examples` key were scored on the same validation examples (same order), so a
    bootstrap replicate resamples their examples together; groups with the same `seeds` key hold the same
    training runs in the same row order (e.g. a run's intact and ablated predictions), so a replicate
    resamples their seeds together. Anything else is resampled independently.
    """

    correct: np.ndarray
    examples: Hashable = "validation"
    seeds: Hashable = None

    def __post_init__(self) -> None:
        correct = np.atleast_2d(np.asarray(self.correct, dtype=np.float32))
        if correct.ndim != 2 or correct.shape[0] == 0 or correct.shape[1] == 0:
            raise ValueError(f"Group: correct must be seeds x examples, got shape {np.shape(self.correct)}")
        object.__setattr__(self, "correct", correct)


def bootstrap_replicates(
    groups: list[Group], n_boot: int = 2000, seed: int = 0, chunk: int = 100
) -> np.ndarray:
    """Mean accuracy of every group in each of n_boot replicates: an (n_boot, len(groups)) array.

    A replicate draws the validation examples with replacement and, independently, the seeds (training
    runs) with replacement, so the spread covers both the finite validation set and seed-to-seed variation.
    With one seed it is the plain (paired, where groups share examples) bootstrap over examples. Drawing n
    examples with replacement is a multinomial count per example, applied as weights: no n_boot x n index
    matrix is kept (QQP has 40k validation examples).
    """
    if not groups:
        raise ValueError("bootstrap_replicates: no groups")
    rng = np.random.default_rng(seed)
    sizes: dict[Hashable, int] = {}
    runs: dict[Hashable, int] = {}
    for g in groups:
        n, s = g.correct.shape[1], g.correct.shape[0]
        if sizes.setdefault(g.examples, n) != n:
            raise ValueError(
                f"groups sharing examples {g.examples!r} differ in length: {sizes[g.examples]} vs {n}"
            )
        if g.seeds is not None and runs.setdefault(g.seeds, s) != s:
            raise ValueError(f"groups sharing seeds {g.seeds!r} differ in seed count: {runs[g.seeds]} vs {s}")
    out = np.empty((n_boot, len(groups)))
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        # Counts stay integers in float32 (exact below 2^24), so a replicate's accuracy is exact too.
        counts = {
            k: rng.multinomial(n, np.full(n, 1.0 / n), size=m).T.astype(np.float32) for k, n in sizes.items()
        }
        shared = {k: rng.integers(s, size=(m, s)) for k, s in runs.items()}
        for j, g in enumerate(groups):
            n = sizes[g.examples]
            per_seed = (g.correct @ counts[g.examples]).astype(
                np.float64
            ) / n  # (seeds, m): each run's accuracy
            s = per_seed.shape[0]
            pick = shared[g.seeds] if g.seeds is not None else rng.integers(s, size=(m, s))
            out[start : start + m, j] = np.take_along_axis(per_seed.T, pick, axis=1).mean(axis=1)
    return out


def interval(estimate: float, replicates: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, lo, hi): the percentile interval of a statistic's bootstrap replicates."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    tail = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(np.asarray(replicates, dtype=float), [tail, 1.0 - tail])
    return float(estimate), float(lo), float(hi)
