"""Statistics on the result table: every interval (one bootstrap path), seed aggregation, the first x last
matrix, and the per-cell intervals of a layer-ablation panel.

Every interval here comes from `bootstrap_replicates`, which resamples the validation examples and the seeds
together, so the report, the claims and `python -m analysis ci` give the same interval for the same cell.
No plotting here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.collect import correctness, load_predictions
from analysis.select import (
    PANEL_COLUMNS,
    RECIPE_COLUMNS,
    ablated,
    adapted_layers,
    block_size,
    blocks,
    halves,
    model_layers,
    recipe_label,
    recipe_order,
)

SELECTIONS = ("mean", "best")
LEVEL = 0.95
N_BOOT = 2000


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
            # (seeds, m): each run's accuracy in each replicate
            per_seed = (g.correct @ counts[g.examples]).astype(np.float64) / n
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


def replicates(groups: list[Group]) -> np.ndarray:
    """bootstrap_replicates with the suite's fixed settings (N_BOOT replicates, seed 0)."""
    return bootstrap_replicates(groups, n_boot=N_BOOT, seed=0)


def mean_accuracy(group: Group) -> float:
    """A group's accuracy: the mean over its seeds of each seed's accuracy."""
    return float(group.correct.mean(axis=1, dtype=np.float64).mean())


def group(
    rows: pd.DataFrame, which: str = "ablated", examples: Hashable = None, seeds: Hashable = None
) -> Group:
    """The per-example correctness of these rows' predictions (one row per seed, in seed order)."""
    rows = rows.sort_values("seed", kind="stable")
    return Group(correctness(rows, which), examples=examples or str(rows["task"].iloc[0]), seeds=seeds)


def paired_bootstrap_ci(
    labels: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """Accuracy(a) - accuracy(b) and its percentile bootstrap interval, resampling examples jointly."""
    labels, a, b = np.asarray(labels), np.asarray(a), np.asarray(b)
    if not (labels.shape == a.shape == b.shape) or labels.ndim != 1:
        raise ValueError(
            f"labels, a, b must be 1-D and equal in length, got {labels.shape}, {a.shape}, {b.shape}"
        )
    if len(labels) == 0:
        raise ValueError("paired_bootstrap_ci: no examples")
    ga, gb = (Group((x == labels)[None], examples="paired") for x in (a, b))
    reps = bootstrap_replicates([ga, gb], n_boot=n_boot, seed=seed)
    return interval(mean_accuracy(ga) - mean_accuracy(gb), reps[:, 0] - reps[:, 1], level)


def matrix_layers(df: pd.DataFrame) -> list[int]:
    """The layers a heatmap of these rows shows: 0..max(last), but only those with adapters where the rows
    name them (`adapter_layers`, one value): layers 3..5 for a training with adapters there only."""
    last = df["last"].dropna()
    if last.empty:
        return []
    top = int(last.max())
    found = df["adapter_layers"].dropna().unique() if "adapter_layers" in df.columns else []
    if len(found) != 1:
        return list(range(top + 1))
    named = {int(v) for c in ("first", "last") for v in df[c].dropna()}  # a cell outside them still shows
    return sorted({layer for layer in adapted_layers(found[0]) if layer <= top} | named)


def block_name(first: int, last: int) -> str:
    """A block's axis label: its layers, "12–14" (one layer: "12")."""
    return f"{first}–{last}" if first != last else str(first)


def layer_matrix(
    df: pd.DataFrame, value: str = "relative_decrease", n_layers: int | Sequence[int] | None = None
) -> pd.DataFrame:
    """Pivot rows with `first`, `last` and `value` to a layers x layers matrix (index first, columns last),
    averaging repeats (seeds). Covers the layers `n_layers` gives (a count L: 0..L-1; or the layers
    themselves), by default `matrix_layers`: the layers with adapters, so a training with adapters in layers
    3..5 only gives a 3 x 3 matrix indexed 3..5. The lower triangle (first > last) and spans with no row are
    NaN. Values stay in the units of `value`.
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
    if n_layers is None:
        n_layers = matrix_layers(df)
    layers = pd.Index(range(n_layers) if isinstance(n_layers, int) else list(n_layers))
    numbers = df.assign(**{value: df[value].astype(float)})
    matrix = numbers.pivot_table(index="first", columns="last", values=value, aggfunc="mean")
    starts, ends = layers, layers
    if block_size(df) > 1:  # a block heatmap: rows the blocks' first layers, columns their last
        shown = set(layers)
        kept = [(a, b) for a, b in blocks(df) if a in shown or b in shown]
        starts, ends = pd.Index([a for a, _ in kept]), pd.Index([b for _, b in kept])
    matrix = matrix.reindex(index=starts, columns=ends).astype(float)
    matrix.index.name, matrix.columns.name = "first", "last"
    # the layers (blocks) are sorted, so first <= last is the upper triangle of positions too
    return matrix.where(np.triu(np.ones((len(starts), len(ends)), dtype=bool)))


# --- layer-ablation cells ------------------------------------------------------------------------------


Select = Callable[[pd.DataFrame], pd.DataFrame]


def shared_groups(
    rows: pd.DataFrame, by: list[str], examples: str | None = None, runs: str = "runs"
) -> tuple[Group, dict[tuple, Group]] | None:
    """The intact model and one Group per value of `by` (e.g. first, last), over the seeds every value has.

    All of them share their seeds (one run's intact and ablated predictions) and their examples; `examples`
    and `runs` name what other groups they are resampled with (see Group). None without rows or a common
    seed.
    """
    if rows.empty:
        return None
    by_value = {key: g for key, g in rows.groupby(by, sort=True)}
    seeds = set.intersection(*(set(g["seed"]) for g in by_value.values()))
    if not seeds:
        return None
    key = (runs, tuple(sorted(seeds)))
    pick = {v: g[g["seed"].isin(seeds)].drop_duplicates("seed") for v, g in by_value.items()}
    task = examples or str(rows["task"].iloc[0])
    intact = group(next(iter(pick.values())), "intact", examples=task, seeds=key)
    return intact, {v: group(g, examples=task, seeds=key) for v, g in pick.items()}


def cell_groups(
    panel: pd.DataFrame, examples: str | None = None, runs: str = "runs", select: Select = ablated
) -> tuple[int, Group, dict[tuple[int, int], Group]] | None:
    """Layer count, the intact model and every ablated span of one panel, over the seeds every span has.

    The intact model and the spans share their seeds (a run's intact and ablated predictions) and their
    examples; `examples` and `runs` name what other panels they are resampled with (see Group). `select`
    picks the cells (default: the paper's removal; e.g. `analysis.select.keep_cells`).
    """
    cells = select(panel)
    found = shared_groups(cells, ["first", "last"], examples, runs)
    if found is None:
        return None
    intact, spans = found
    return (
        int(cells["last"].max()) + 1,
        intact,
        {(int(f), int(la)): g for (f, la), g in spans.items()},
    )


def relative_decrease(intact: float | np.ndarray, ablated: float | np.ndarray) -> float | np.ndarray:
    """100 (1 - ablated / intact): the relative decrease in percent."""
    return 100.0 * (1.0 - np.asarray(ablated) / np.asarray(intact))


CELL_COLUMNS = [
    "first",
    "last",
    "accuracy",
    "drop_points",
    "drop_lo",
    "drop_hi",
    "relative_decrease",
    "lo",
    "hi",
    "seeds",
    "includes_zero",
]


def cell_intervals(
    panel: pd.DataFrame,
    level: float = LEVEL,
    select: Select = ablated,
    spans: Collection[tuple[int, int]] | None = None,
) -> pd.DataFrame:
    """Per ablated span of one heatmap panel, with 95% intervals over examples and seeds (one set of
    replicates): accuracy (%), its drop from the intact model (points, drop_lo..drop_hi), the relative
    decrease (%, lo..hi); `includes_zero` marks spans whose change the data cannot tell from none.
    `select` picks the cells (default: the paper's removal); `spans` (first, last) only these, with the same
    intervals as among all (the panel's groups share their examples and seeds, so the replicates do not
    depend on how many spans are drawn)."""
    found = cell_groups(panel, select=select)
    if found is None:
        return pd.DataFrame(columns=CELL_COLUMNS)
    _, intact, cells = found
    spans = sorted(s for s in cells if spans is None or s in set(spans))
    reps = replicates([intact, *(cells[s] for s in spans)])
    base = mean_accuracy(intact)
    rows = []
    for j, (first, last) in enumerate(spans, start=1):
        acc = mean_accuracy(cells[(first, last)])
        _, d_lo, d_hi = interval(100 * (base - acc), 100 * (reps[:, 0] - reps[:, j]), level)
        value, lo, hi = interval(
            float(relative_decrease(base, acc)), relative_decrease(reps[:, 0], reps[:, j]), level
        )
        rows.append(
            [
                first,
                last,
                100 * acc,
                100 * (base - acc),
                d_lo,
                d_hi,
                value,
                lo,
                hi,
                intact.correct.shape[0],
                lo <= 0.0 <= hi,
            ]
        )
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def difference_intervals(
    a: pd.DataFrame,
    b: pd.DataFrame,
    level: float = LEVEL,
    select: tuple[Select, Select] = (ablated, ablated),
    paired: bool = False,
) -> pd.DataFrame:
    """Per span both panels have: relative decrease in A minus in B (percentage points), with its interval.

    A and B are resampled as independent training runs; their validation examples are resampled together
    when both were scored on the same examples (same labels in the same order), independently otherwise.
    `paired`: A and B are twins of the same seeds (e.g. one training in bf16, its twin in fp32), scored on
    the same examples: each replicate draws one set of seeds and examples for both, so the interval is that
    of the per-seed differences. `select` picks each side's cells (default: the paper's removal on both).
    """
    if paired:
        check_paired(select[0](a), select[1](b))
    same = (a["task"].iloc[0] == b["task"].iloc[0]) and np.array_equal(_labels(a), _labels(b))
    runs = ("paired", "paired") if paired else ("A", "B")
    found_a = cell_groups(a, examples="shared" if same else "A", runs=runs[0], select=select[0])
    found_b = cell_groups(b, examples="shared" if same else "B", runs=runs[1], select=select[1])
    if found_a is None or found_b is None:
        raise ValueError("compare: both runs need layer-ablation cells")
    (_, ia, ca), (_, ib, cb) = found_a, found_b
    spans = sorted(set(ca) & set(cb))
    if not spans:
        raise ValueError("compare: the two runs have no ablated span in common")
    reps = replicates([ia, ib, *(ca[s] for s in spans), *(cb[s] for s in spans)])
    rows, n = [], len(spans)
    for j, span in enumerate(spans):
        value = float(
            relative_decrease(mean_accuracy(ia), mean_accuracy(ca[span]))
            - relative_decrease(mean_accuracy(ib), mean_accuracy(cb[span]))
        )
        stat = relative_decrease(reps[:, 0], reps[:, 2 + j]) - relative_decrease(
            reps[:, 1], reps[:, 2 + n + j]
        )
        _, lo, hi = interval(value, stat, level)
        rows.append([*span, value, lo, hi, lo <= 0.0 <= hi])
    return pd.DataFrame(rows, columns=["first", "last", "difference", "lo", "hi", "includes_zero"])


def check_paired(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """ValueError unless A and B hold the same seeds and were scored on the same examples (a paired
    comparison's twins), naming what differs."""
    seeds = [sorted({int(s) for s in rows["seed"].dropna()}) for rows in (a, b)]
    if seeds[0] != seeds[1]:
        raise ValueError(
            f"paired: A holds seeds {seeds[0]}, B {seeds[1]}; pairing needs the same seeds in both"
        )
    if not np.array_equal(_labels(a), _labels(b)):
        raise ValueError(
            "paired: A and B were scored on different validation examples; pairing needs the same"
        )


def _labels(rows: pd.DataFrame) -> np.ndarray:
    first = rows.iloc[0]
    return load_predictions(str(first["sweep"]), str(first["job_dir"]))["labels"]


PROFILE_COLUMNS = [
    "recipe",
    *RECIPE_COLUMNS,
    "half",
    "first",
    "last",
    "relative_decrease",
    "lo",
    "hi",
    "seeds",
]


def recipe_profile(rows: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Per training recipe of one model and task (`analysis.select.recipe_cells` rows): the relative
    decrease (%) removing the adapters of the bottom half and of the top half of the layers, each with its
    95% interval over examples and seeds (`cell_intervals`: the heatmap's, the report's and `ci`'s; no
    interval for rows without their predictions, a `sweep` column); the suite's recipe first. A recipe
    without both halves' cells gives the half it has."""
    if rows.empty:
        return pd.DataFrame(columns=PROFILE_COLUMNS)
    n_layers = model_layers(rows)[str(rows["model"].iloc[0])]
    spans = halves(n_layers) or ()
    columns = [c for c in RECIPE_COLUMNS if c in rows.columns]
    recipes = sorted(
        (recipe for _, recipe in rows.groupby(columns, sort=True, dropna=False)),
        key=lambda recipe: recipe_order(recipe.iloc[0]),
    )
    out = []
    for recipe in recipes:
        first = recipe.iloc[0]
        label = [recipe_label(first, n_layers), *(first.get(c) for c in RECIPE_COLUMNS)]
        table = _span_decreases(recipe, spans, level)
        for half, span in zip(("bottom half", "top half"), spans, strict=True):
            if span in table.index:
                cell = table.loc[span]
                out.append([*label, half, *span, *cell[["relative_decrease", "lo", "hi", "seeds"]]])
    return pd.DataFrame(out, columns=PROFILE_COLUMNS).astype({"seeds": int})


def _span_decreases(rows: pd.DataFrame, spans: Collection[tuple[int, int]], level: float) -> pd.DataFrame:
    """relative_decrease, lo, hi (%) and seeds per (first, last) of `spans`: `cell_intervals` where the rows
    locate their predictions, else the relative decrease of the rows' mean accuracies and no interval."""
    if "sweep" in rows.columns:
        return cell_intervals(rows, level, spans=spans).set_index(["first", "last"])
    out = {}
    for (first, last), cell in rows.groupby(["first", "last"]):
        if (int(first), int(last)) in set(spans):
            value = relative_decrease(
                cell["intact_accuracy"].astype(float).mean(), cell["accuracy"].astype(float).mean()
            )
            out[(int(first), int(last))] = [float(value), np.nan, np.nan, cell["seed"].nunique()]
    index = pd.MultiIndex.from_tuples(list(out), names=["first", "last"]) if out else None
    return pd.DataFrame(list(out.values()), index=index, columns=["relative_decrease", "lo", "hi", "seeds"])
