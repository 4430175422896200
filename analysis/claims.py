"""The paper's claims (../shared/PAPER.md) as rules evaluated on the result table, each with its interval.

Every claim reads the rows of one figure (`analysis.select.figure_plan`), one panel per model x task, and
turns them into a statistic with a 95% bootstrap interval that resamples the validation examples and the
seeds together (`analysis.stats.bootstrap_replicates`). Its verdict follows from where the interval lies
against the claim's region: inside it, reproduced; outside it, not reproduced; across its edge,
inconclusive; no rows for it, no data. Nothing here is written by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.collect import conform
from analysis.controls import removal_placement
from analysis.select import (
    FIGURES,
    PAPER_SIZES,
    RECIPE_COLUMNS,
    every_layer,
    figure_plan,
    halves,
    head_rows,
    layers_text,
    method_rows,
    model_layers,
    panel_order,
    recipe_label,
    top_half_pair,
    varying,
)
from analysis.stats import (
    LEVEL,
    Group,
    block_size,
    blocks,
    cell_groups,
    check_paired,
    group,
    interval,
    relative_decrease,
    replicates,
)
from analysis.stats import mean_accuracy as _accuracy

INF = float("inf")
SMALL_INIT = 1e-2  # the paper: robust for init std <= 1e-2
FEW_PERCENT = 0.05  # "a few percent of the parameters": at most 5% of full fine-tuning's
NO_ROWS = "no rows for this claim"  # what a claim without data says, before why (where there is a why)


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: what it says, the rule that judges it, and the rows it reads."""

    name: str
    paper: str
    rule: str
    unit: str
    region: tuple[float, float]  # the statistic's values that agree with the claim
    figure: str  # which rows of figure_plan it reads
    # panel -> (text, [(comparison, value, bootstrap replicates of value)]), None without the rows it needs
    measure: Callable[[pd.DataFrame], tuple[str, list[tuple[str, float, np.ndarray]]] | None]
    # rows from anywhere in the table that the claim is also read against (their model and task's), e.g.
    # the head-only baseline; they join the panel, and the figure's rows are not changed by them
    baseline: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    # the training methods the claim is about (None: whichever the figure reads); rows of other methods in
    # the figure's rows (a LoRA heatmap beside the adapters') are skipped, and the measured text says so
    methods: tuple[str, ...] | None = None
    # about adapters in every layer: trainings with adapters in some layers only are skipped, and said so
    every_layer: bool = False
    # a requirement besides the interval (AdapterDrop's "trains faster"), judged on the panel: False makes
    # the verdict "not reproduced", None (the rows cannot tell) at best "inconclusive"
    condition: Callable[[pd.DataFrame], bool | None] | None = None


def verdict(lo: float, hi: float, region: tuple[float, float]) -> str:
    """Reproduced if [lo, hi] lies strictly inside the region, not reproduced if outside, else inconclusive.

    A claim judged on several comparisons (every single layer, every pair of sizes, every variant) is
    reproduced when every comparison is, and not reproduced when any one is.
    """
    a, b = region
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "inconclusive"
    # Inside means strictly inside: an interval of exactly [0, 0] shows no degradation, not one.
    if a < lo and hi < b:
        return "reproduced"
    if hi <= a or lo >= b:
        return "not reproduced"
    return "inconclusive"


def _overall(results: list[str]) -> str:
    """A claim over several comparisons holds if every one does, fails if any one fails."""
    if "not reproduced" in results:
        return "not reproduced"
    return "reproduced" if all(r == "reproduced" for r in results) else "inconclusive"


def _shown(region: tuple[float, float], values: list[float]) -> int:
    """The comparison to show: the one nearest to leaving the region (largest, smallest, or largest |x|)."""
    a, b = region
    if np.isinf(a) and not np.isinf(b):
        return int(np.argmax(values))
    if np.isinf(b) and not np.isinf(a):
        return int(np.argmin(values))
    return int(np.argmax(np.abs(values)))


def evaluate_claims(df: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and panel: claim, paper, panel, measured, estimate, lo, hi, unit, verdict, rule.

    A panel is a model and task, and a training recipe where the claim's figure splits on it and the rows
    hold several (the `recipe` study: each recipe judged on its own, never over mixed rows).
    `df` comes from `analysis.collect.load_runs` (its `sweep` column locates the per-example predictions).
    """
    plan, table = figure_plan(df), conform(df)
    layers = model_layers(table)
    rows = []
    for claim in CLAIMS:
        panels, skipped = _claim_panels(claim, plan, table, layers)
        found = False
        for name, panel in panels:
            measured = claim.measure(panel)
            if measured is None:
                continue
            found = True
            text, comparisons = measured
            text += skipped
            if not comparisons:  # the rows exist but cannot test the claim (e.g. every model collapsed)
                rows.append(_row(claim, name, text, np.nan, np.nan, np.nan, "inconclusive"))
                continue
            judged = [(label, *interval(value, reps, LEVEL)) for label, value, reps in comparisons]
            results = [verdict(lo, hi, claim.region) for _, _, lo, hi in judged]
            shown, value, lo, hi = judged[_shown(claim.region, [v for _, v, _, _ in judged])]
            if len(judged) > 1:
                inside = results.count("reproduced")
                text += f"; shown: {shown}, the most extreme of {len(judged)} comparisons ({inside} inside the region)"
            result = _overall(results)
            if claim.condition is not None:
                result = _with_condition(result, claim.condition(panel))
            rows.append(_row(claim, name, text, value, lo, hi, result))
        if not found:
            # rows of its figure that measure nothing (e.g. no adapter within 5% of full's parameters)
            why = skipped or (f" (the {claim.figure} rows hold nothing it compares)" if panels else "")
            rows.append(_row(claim, "", NO_ROWS + why, np.nan, np.nan, np.nan, "no data"))
    return pd.DataFrame(rows)


def _claim_panels(
    claim: Claim, plan: dict[str, pd.DataFrame], table: pd.DataFrame, layers: dict[str, int]
) -> tuple[list[tuple[str, pd.DataFrame]], str]:
    """The panels a claim is judged on, (name, rows with its baseline's), per model and task and recipe (the
    suite's recipe first, as the figures), and what of its figure's rows was skipped, in words."""
    source = plan.get(claim.figure)
    if source is None and claim.figure == "bottleneck":
        source = plan.get("tradeoff")  # the trade-off grid has adapters of the paper's sizes too
    source, skipped = _claim_rows(claim, source, layers)
    if source is None:
        return [], skipped
    split = varying(source, _recipe_split(claim))
    groups = source.groupby(["model", "task", *split], sort=True, dropna=False)
    extra = None if claim.baseline is None else claim.baseline(table)
    out = []
    for (model, task, *_), panel in sorted(groups, key=lambda kv: panel_order(kv[1])):
        name = f"{model} · {task}"
        if split:
            name += f" · {recipe_label(panel.iloc[0], layers.get(str(model)))}"
        if extra is not None:
            same = extra[((extra["model"] == model) & (extra["task"] == task)).to_numpy(dtype=bool)]
            panel = pd.concat([panel, same.loc[same.index.difference(panel.index)]]) if len(same) else panel
        out.append((name, panel))
    return out, skipped


PAIRED_COLUMNS = ("claim", "panel", "comparison", "unit", "a", "b", "difference", "lo", "hi", "seeds")


def paired_claims(a: pd.DataFrame, b: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Each claim's statistic in A minus in B, per panel and comparison both measure, with the 95% interval
    of the paired difference: A and B are twins of the same seeds on the same examples (e.g. each training
    in bf16 and its fp32 twin), and the two sides' bootstraps draw the same seeds and examples in every
    replicate (common random numbers: `replicates` is seeded, and twins give it groups of one structure),
    so the interval is that of the per-seed differences. ValueError where a panel's seeds or examples
    differ between the sides."""
    sides = []
    for df in (a, b):
        plan, table = figure_plan(df), conform(df)
        layers = model_layers(table)
        sides.append({claim.name: dict(_claim_panels(claim, plan, table, layers)[0]) for claim in CLAIMS})
    rows = []
    for claim in CLAIMS:
        on_a, on_b = sides[0][claim.name], sides[1][claim.name]
        for name in (n for n in on_a if n in on_b):
            check_paired(on_a[name], on_b[name])
            measured = [claim.measure(side[name]) for side in (on_a, on_b)]
            if any(m is None or not m[1] for m in measured):
                continue
            (_, comps_a), (_, comps_b) = measured
            if [c[0] for c in comps_a] != [c[0] for c in comps_b]:
                raise ValueError(
                    f"paired: {claim.name} on {name} compares different things in A and B "
                    f"({[c[0] for c in comps_a]} against {[c[0] for c in comps_b]})"
                )
            seeds = int(on_a[name]["seed"].nunique())
            for (label, va, ra), (_, vb, rb) in zip(comps_a, comps_b, strict=True):
                value, lo, hi = interval(va - vb, ra - rb, level)
                rows.append([claim.name, name, label, claim.unit, va, vb, value, lo, hi, seeds])
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


def _claim_rows(
    claim: Claim, source: pd.DataFrame | None, layers: dict[str, int]
) -> tuple[pd.DataFrame | None, str]:
    """The figure's rows the claim is about (its methods; adapters in every layer where it says so), and
    what was skipped, in words ('' for nothing)."""
    if source is None:
        return None, ""
    skipped = ""
    if claim.methods is not None:
        other = sorted(set(source["method"].dropna()) - set(claim.methods))
        if other:
            skipped = (
                f" (rows of method {', '.join(other)} skipped: the claim is about {', '.join(claim.methods)})"
            )
        source = source[source["method"].isin(claim.methods)]
    if claim.every_layer:
        full = every_layer(source, layers).to_numpy(dtype=bool)
        if not full.all():
            skipped += (
                " (trainings with adapters in some layers only skipped: the claim is about adapters in "
                "every layer)"
            )
        source = source[full]
    return source, skipped


def _recipe_split(claim: Claim) -> tuple[str, ...]:
    """The recipe columns the claim's figure splits panels on: its rows are judged per recipe where these
    vary (a heatmap per recipe; the placement figure per recipe whatever its adapted layers)."""
    return tuple(c for c in FIGURES[claim.figure].panel if c in RECIPE_COLUMNS)


def _with_condition(result: str, holds: bool | None) -> str:
    """The verdict with the claim's second requirement: failed, not reproduced; unknown, at best
    inconclusive."""
    if holds is False:
        return "not reproduced"
    if holds is None and result == "reproduced":
        return "inconclusive"
    return result


def claim_study(claim: Claim) -> str:
    """The study whose rows measure the claim: the first that draws its figure."""
    return FIGURES[claim.figure].studies[0]


def _row(claim: Claim, panel: str, measured: str, value: float, lo: float, hi: float, result: str) -> dict:
    return {
        "claim": claim.name,
        "paper": claim.paper,
        "panel": panel,
        "measured": measured,
        "estimate": value,
        "lo": lo,
        "hi": hi,
        "unit": claim.unit,
        "verdict": result,
        "rule": claim.rule,
    }


COLLAPSED = (
    "every model compared scores at most 1 point above the majority-class rate: the comparison "
    "cannot test the claim"
)


def _collapsed(panel: pd.DataFrame, groups: list[Group]) -> bool:
    """True when every group is at the majority-class rate (+1 point): untrained or collapsed models."""
    majority = float(panel["majority_rate"].mean())
    return np.isfinite(majority) and all(_accuracy(g) <= majority + 0.01 for g in groups)


# --- layer ablation ---------------------------------------------------------------------------------


def _single_layer(panel: pd.DataFrame):
    found = cell_groups(panel)
    if found is None:
        return None
    _, intact, cells = found
    # on a block heatmap (ablate.block=k), the single blocks: the diagonal the heatmap has
    k, units = block_size(panel), blocks(panel)
    spans = [span for span in units if span in cells]
    if not spans:
        return None
    groups = [intact, *(cells[span] for span in spans)]
    if _collapsed(panel, [intact]):
        return f"intact model {100 * _accuracy(intact):.1f}%; {COLLAPSED}", []
    reps = replicates(groups)
    values = relative_decrease(_accuracy(intact), np.array([_accuracy(g) for g in groups[1:]]))
    stats = relative_decrease(reps[:, :1], reps[:, 1:])
    what, unit = ("single-layer", "layers") if k == 1 else (f"single-block ({k} layers)", "blocks")
    text = (
        f"{what} relative decrease {values.min():.2f}% to {values.max():.2f}% over "
        f"{len(spans)} of {len(units)} {unit}, {intact.correct.shape[0]} seed(s)"
    )
    return text, [
        (f"layer {a}" if a == b else f"layers {a}..{b}", float(v), stats[:, i])
        for i, ((a, b), v) in enumerate(zip(spans, values, strict=True))
    ]


def _all_removed(panel: pd.DataFrame):
    found = cell_groups(panel)
    if found is None:
        return None
    n_layers, intact, cells = found
    whole = cells.get((0, n_layers - 1))
    if whole is None:
        return None
    majority = 100.0 * float(panel["majority_rate"].mean())
    if not np.isfinite(majority):
        return None
    reps = 100.0 * replicates([whole])[:, 0] - majority
    acc = 100.0 * _accuracy(whole)
    text = (
        f"all {n_layers} layers removed: {acc:.1f}% vs majority class {majority:.1f}% "
        f"(intact {100 * _accuracy(intact):.1f}%)"
    )
    if not head_rows(panel).empty:  # judged against the head-only baseline too: where it lies, with intervals
        placed = removal_placement(panel)
        if placed is not None:
            text += f"; {placed[0]}"
    return text, [("all removed", acc - majority, reps)]


def lower_block(n_layers: int) -> int:
    """Layers in the paper's 'lower' block: 0-4 of 12, the same share of other depths (at least 1)."""
    return max(1, (5 * n_layers) // 12)


def _lower_vs_upper(panel: pd.DataFrame):
    found = cell_groups(panel)
    if found is None:
        return None
    n_layers, intact, cells = found
    # the paper's share of the layers at each end; on a block heatmap, as many whole blocks (at least one)
    units = blocks(panel)
    n = max(1, lower_block(n_layers) // block_size(panel))
    (_, low_end), (high_start, _) = units[n - 1], units[-n]
    low, high = cells.get((0, low_end)), cells.get((high_start, n_layers - 1))
    if low is None or high is None or high_start <= low_end:
        return None
    if _collapsed(panel, [intact]):
        return f"intact model {100 * _accuracy(intact):.1f}%; {COLLAPSED}", []
    reps = replicates([intact, low, high])
    i, lo_acc, hi_acc = (_accuracy(g) for g in (intact, low, high))
    d_low, d_high = relative_decrease(i, lo_acc), relative_decrease(i, hi_acc)
    text = (
        f"layers {high_start}..{n_layers - 1} removed: {d_high:.2f}%, layers 0..{low_end} removed: "
        f"{d_low:.2f}% (relative decrease)"
    )
    stat = relative_decrease(reps[:, 0], reps[:, 2]) - relative_decrease(reps[:, 0], reps[:, 1])
    return text, [("top block minus bottom block", float(d_high - d_low), stat)]


# --- studies over settings ----------------------------------------------------------------------------


def _settings(rows: pd.DataFrame, column: str) -> dict:
    """{value of column: Group of its seeds' correctness} for the intact rows of one panel."""
    rows = rows[rows["first"].isna()].dropna(subset=[column])
    task = str(rows["task"].iloc[0]) if len(rows) else ""
    return {v: group(g, examples=task) for v, g in rows.groupby(column)}


def _pairs(groups: dict, label: Callable[[object], str]):
    """Every pairwise difference of mean accuracy (points), for claims that settings perform alike.

    Judging each pair's interval rather than the spread (max - min) of the means: the bootstrap of a
    maximum is biased upwards, the interval of a difference is not.
    """
    keys = list(groups)
    reps = 100.0 * replicates([groups[k] for k in keys])
    means = np.array([100.0 * _accuracy(groups[k]) for k in keys])
    parts = ", ".join(f"{label(k)}: {m:.1f}" for k, m in zip(keys, means, strict=True))
    pairs = [
        (f"{label(keys[i])} minus {label(keys[j])}", float(means[i] - means[j]), reps[:, i] - reps[:, j])
        for i in range(len(keys))
        for j in range(i + 1, len(keys))
    ]
    return parts, pairs


def _init_robust(panel: pd.DataFrame):
    groups = {s: g for s, g in _settings(panel, "init_std").items() if s <= SMALL_INIT * (1 + 1e-9)}
    if len(groups) < 2:
        return None
    if _collapsed(panel, list(groups.values())):
        return COLLAPSED, []
    parts, pairs = _pairs(groups, lambda s: f"σ={s:g}")
    return f"σ ≤ 1e-2: {parts}%", pairs


def _init_degrades(panel: pd.DataFrame):
    groups = _settings(panel, "init_std")
    small = [s for s in groups if s <= SMALL_INIT * (1 + 1e-9)]
    large = [s for s in groups if s > SMALL_INIT * (1 + 1e-9)]
    if not small or not large:
        return None
    top = max(large)
    keys = [*small, top]
    if _collapsed(panel, [groups[k] for k in keys]):
        return COLLAPSED, []
    reps = 100.0 * replicates([groups[k] for k in keys])
    base = np.mean([100.0 * _accuracy(groups[s]) for s in small])
    at_top = 100.0 * _accuracy(groups[top])
    text = f"mean over σ ≤ 1e-2: {base:.1f}%, σ={top:g}: {at_top:.1f}%"
    return text, [
        (f"σ ≤ 1e-2 minus σ={top:g}", float(base - at_top), reps[:, :-1].mean(axis=1) - reps[:, -1])
    ]


def _sizes_alike(panel: pd.DataFrame):
    rows = panel[(panel["method"] == "adapters") & (panel["variant"].isna() | (panel["variant"] == "plain"))]
    groups = {s: g for s, g in _settings(rows, "adapter_size").items() if int(s) in PAPER_SIZES}
    if len(groups) < 2:
        return None
    if _collapsed(panel, list(groups.values())):
        return COLLAPSED, []
    parts, pairs = _pairs(groups, lambda s: f"m={int(s)}")
    return f"{parts}%", pairs


def _near_full(panel: pd.DataFrame):
    full = method_rows(panel, "full")
    adapters = method_rows(panel, "adapters")
    if full.empty or adapters.empty:
        return None
    budget = FEW_PERCENT * float(full["trained_params"].iloc[0])
    within = adapters[adapters["trained_params"] <= budget]
    if within.empty:
        return None
    size = within.loc[within["trained_params"].idxmax(), "adapter_size"]
    chosen = adapters[adapters["adapter_size"] == size]
    task = str(panel["task"].iloc[0])
    f, a = (group(r, examples=task) for r in (full, chosen))
    if _collapsed(panel, [f, a]):
        return f"adapters m={int(size)} and full fine-tuning: {COLLAPSED}", []
    reps = 100.0 * replicates([f, a])
    share = 100.0 * float(chosen["trained_params"].iloc[0]) / float(full["trained_params"].iloc[0])
    text = (
        f"adapters m={int(size)} ({share:.1f}% of full's trained parameters): {100 * _accuracy(a):.1f}%, "
        f"full fine-tuning {100 * _accuracy(f):.1f}%"
    )
    return text, [("full minus adapters", 100.0 * (_accuracy(f) - _accuracy(a)), reps[:, 0] - reps[:, 1])]


def _layernorm_cost(panel: pd.DataFrame):
    full, norm = method_rows(panel, "full"), method_rows(panel, "layernorm")
    if full.empty or norm.empty:
        return None
    task = str(panel["task"].iloc[0])
    f, n = (group(r, examples=task) for r in (full, norm))
    if _collapsed(panel, [f, n]):
        return f"LayerNorm-only and full fine-tuning: {COLLAPSED}", []
    reps = 100.0 * replicates([f, n])
    text = f"LayerNorm only {100 * _accuracy(n):.1f}%, full fine-tuning {100 * _accuracy(f):.1f}%"
    return text, [
        ("full minus LayerNorm-only", 100.0 * (_accuracy(f) - _accuracy(n)), reps[:, 0] - reps[:, 1])
    ]


def _no_variant_better(panel: pd.DataFrame):
    groups = _settings(panel[panel["method"] == "adapters"], "variant")
    if "plain" not in groups or len(groups) < 2:
        return None
    names = ["plain", *sorted(v for v in groups if v != "plain")]
    if _collapsed(panel, [groups[v] for v in names]):
        return COLLAPSED, []
    reps = 100.0 * replicates([groups[v] for v in names])
    gains = np.array([100.0 * (_accuracy(groups[v]) - _accuracy(groups["plain"])) for v in names[1:]])
    text = f"plain {100 * _accuracy(groups['plain']):.1f}%; {len(names) - 1} variants, gains {gains.min():+.2f} to {gains.max():+.2f}"
    stats = reps[:, 1:] - reps[:, :1]
    return text, [
        (f"{v} minus plain", float(g), stats[:, i])
        for i, (v, g) in enumerate(zip(names[1:], gains, strict=True))
    ]


# --- adapter placement (AdapterDrop) -------------------------------------------------------------------


def time_ratio(top: pd.DataFrame, whole: pd.DataFrame) -> tuple[float, float, float] | None:
    """fit_seconds of the top-half training over the all-layer one's, per seed (rows in the same seed
    order): (mean, smallest, largest) over seeds; None where a training's time is not recorded."""
    ratio = top["fit_seconds"].to_numpy(dtype=float) / whole["fit_seconds"].to_numpy(dtype=float)
    if len(ratio) == 0 or not np.isfinite(ratio).all():
        return None
    return float(ratio.mean()), float(ratio.min()), float(ratio.max())


def _trains_faster(panel: pd.DataFrame) -> bool | None:
    """Does the top-half training take less time than the all-layer one (mean ratio over seeds below 1)?"""
    pair = top_half_pair(panel)
    ratio = None if pair is None else time_ratio(pair[0], pair[1])
    return None if ratio is None else ratio[0] < 1.0


def _top_half_only(panel: pd.DataFrame):
    pair = top_half_pair(panel)
    if pair is None:
        return None
    top, whole, n_layers = pair
    task = str(panel["task"].iloc[0])
    # two trainings: their seeds resampled independently, their examples together (as the other claims)
    a, t = group(whole, "intact", examples=task), group(top, "intact", examples=task)
    first, last = halves(n_layers)[1]
    span = layers_text(range(first, last + 1))
    if _collapsed(panel, [a, t]):
        return f"adapters in layers {span} only and in every layer: {COLLAPSED}", []
    reps = 100.0 * replicates([a, t])
    ratio = time_ratio(top, whole)
    if ratio is None:
        timing = "training time not recorded (fit_seconds): whether it trains faster is not measured"
    else:
        timing = f"training time {ratio[0]:.2f}× the all-layer training's"
        timing += f" (seeds {ratio[1]:.2f}–{ratio[2]:.2f})" if len(top) > 1 else ""
    text = (
        f"adapters in layers {span} only: {100 * _accuracy(t):.1f}%, in all {n_layers} layers: "
        f"{100 * _accuracy(a):.1f}% ({len(top)} seed{'s' if len(top) != 1 else ''}); {timing}"
    )
    diff = 100.0 * (_accuracy(t) - _accuracy(a))
    return text, [(f"layers {span} only minus every layer", diff, reps[:, 1] - reps[:, 0])]


CLAIMS = (
    Claim(
        name="single-layer removal costs little",
        paper="removing any single layer's adapters costs at most ~2%",
        rule="relative decrease removing one layer's adapters; reproduced if every layer's interval lies "
        "below 2%, not reproduced if any lies above",
        unit="%",
        region=(-INF, 2.0),
        figure="heatmap",
        methods=("adapters",),
        every_layer=True,
        measure=_single_layer,
    ),
    Claim(
        name="all adapters removed: majority class",
        paper="removing all adapters falls to the majority class (MNLI 37%, CoLA 69%)",
        rule="accuracy with every layer's adapters removed minus the majority-class rate; reproduced if its "
        "interval lies below +2 points, not reproduced if above; where head-only rows exist, where it lies "
        "between the majority class, the head-only baseline and the intact model (intervals of the "
        "differences)",
        unit="points",
        region=(-INF, 2.0),
        figure="heatmap",
        methods=("adapters",),
        every_layer=True,
        measure=_all_removed,
        baseline=head_rows,
    ),
    Claim(
        name="lower layers matter less",
        paper="adapters in lower layers (0-4) matter less than those in higher layers",
        rule="relative decrease removing the top block minus removing the bottom block, blocks of 5 of 12 "
        "layers (⌊5L/12⌋ of L); reproduced if its interval lies above 0, not reproduced if below",
        unit="%",
        region=(0.0, INF),
        figure="heatmap",
        methods=("adapters",),
        every_layer=True,
        measure=_lower_vs_upper,
    ),
    Claim(
        name="init std ≤ 1e-2 is robust",
        paper="robust for init std below 1e-2 (Figure 6, right)",
        rule="difference in mean accuracy between every pair of σ ≤ 1e-2 in the grid; reproduced if every "
        "pair's interval lies within ±1 point, not reproduced if any lies outside",
        unit="points",
        region=(-1.0, 1.0),
        figure="init_scale",
        measure=_init_robust,
    ),
    Claim(
        name="larger init std degrades",
        paper="larger inits degrade performance (Figure 6, right)",
        rule="mean accuracy over σ ≤ 1e-2 minus accuracy at the largest σ of the grid; reproduced if its "
        "interval lies above 0, not reproduced if below",
        unit="points",
        region=(0.0, INF),
        figure="init_scale",
        measure=_init_degrades,
    ),
    Claim(
        name="sizes 8/64/256 perform alike",
        paper="adapter sizes 8, 64, 256: 86.2 / 85.8 / 85.7 mean GLUE accuracy",
        rule="difference in mean accuracy between every pair of sizes 8, 64, 256; reproduced if every pair's "
        "interval lies within ±0.5 point, not reproduced if any lies outside",
        unit="points",
        region=(-0.5, 0.5),
        figure="bottleneck",
        measure=_sizes_alike,
    ),
    Claim(
        name="adapters close to full fine-tuning",
        paper="adapters come within ~0.4 point of full fine-tuning with 3.6% of its parameters",
        rule="full fine-tuning minus the largest adapter with ≤ 5% of full's trained parameters; reproduced "
        "if its interval lies below 1 point, not reproduced if above",
        unit="points",
        region=(-INF, 1.0),
        figure="tradeoff",
        measure=_near_full,
    ),
    Claim(
        name="LayerNorm-only costs a few points",
        paper="LayerNorm-only tuning costs ~4% on MNLI, ~3.5% on CoLA",
        rule="full fine-tuning minus LayerNorm-only; reproduced if its interval lies within [1, 8] points",
        unit="points",
        region=(1.0, 8.0),
        figure="tradeoff",
        measure=_layernorm_cost,
    ),
    Claim(
        name="no variant beats the plain adapter",
        paper="none of the extensions tried beat the plain adapter",
        rule="each variant's accuracy minus the plain adapter's; reproduced if every variant's interval lies "
        "below +0.5 point, not reproduced if any lies above",
        unit="points",
        region=(-INF, 0.5),
        figure="variants",
        measure=_no_variant_better,
    ),
    Claim(
        name="lower layers' adapters can be dropped",
        paper="AdapterDrop (Rücklé et al. 2021): dropping the adapters of the lower layers keeps accuracy "
        "within 1 point and trains faster",
        rule="accuracy of the training with adapters in the top half of the layers only minus the all-layer "
        "training's (same task and seeds); reproduced if its interval lies above −1 point and the top half "
        "trains faster (fit_seconds, mean ratio over seeds below 1), not reproduced if the interval lies "
        "below −1 point or it trains no faster",
        unit="points",
        region=(-1.0, INF),
        figure="placement",
        methods=("adapters",),
        measure=_top_half_only,
        condition=_trains_faster,
    ),
)
