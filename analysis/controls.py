"""What the adapters do: the controls' numbers, each with its 95% interval. No plotting here.

The paper removes adapters and reads the drop. The controls ask what the drop means: is the removed model
at the majority class, or at what the frozen encoder gives with a trained head (`method=head`)? Does a
constant (each adapter's mean contribution, `ablate_kind=mean`) recover the loss? Do the trained
LayerNorms (`ablate_layernorm`) carry part of it? Which spans suffice on their own (`keep`)? How does
accuracy follow a scaled contribution (`scale`, `alpha`)? And do the layers whose adapters contribute most
(diagnostics.csv) matter most when removed?

Every accuracy interval comes from `analysis.stats.bootstrap_replicates` (validation examples and seeds
resampled together), as the claims' and the heatmap's do; one training's intact and ablated predictions are
resampled as the same runs, the head-only baseline's runs independently. `findings` gives the report's
section from the rows `analysis.select.figure_plan` hands the control figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.collect import load_diagnostics, load_predictions
from analysis.select import (
    ALPHA,
    CONTROL_FIGURES,
    ablated,
    figure_plan,
    head_rows,
    keep_cells,
    mean_cells,
    model_layers,
    n_layers,
    pretrained_layernorm_cells,
    recipe_label,
    scale_cells,
    single_layer_cells,
    varying,
    whole_model,
)
from analysis.stats import (
    LEVEL,
    Group,
    cell_groups,
    group,
    interval,
    mean_accuracy,
    relative_decrease,
    replicates,
    shared_groups,
)

# The controls figure's rows, bottom to top: the references, then what removing every adapter gives.
CONTROLS = ("majority", "head", "removed", "removed_pretrained_ln", "removed_mean", "intact")
CONTROL_LABELS = {
    "majority": "majority class",
    "head": "head only (frozen encoder)",
    "removed": "all adapters removed",
    "removed_pretrained_ln": "all removed, pretrained LayerNorms",
    "removed_mean": "all replaced by their mean",
    "intact": "intact adapters",
}
# The whole-model cells of each removal control.
WHOLE = {
    "removed": ablated,
    "removed_pretrained_ln": pretrained_layernorm_cells,
    "removed_mean": mean_cells,
}
SUMMARY_COLUMNS = ["control", "label", "accuracy", "lo", "hi", "seeds"]
FINDING_COLUMNS = ["control", "question", "panel", "run", "measured", "estimate", "lo", "hi", "unit"]


@dataclass(frozen=True)
class Estimate:
    """A statistic and its 95% interval."""

    value: float
    lo: float
    hi: float

    def text(self, unit: str = "%", digits: int = 1) -> str:
        """'55.0% [52.1, 57.9]' (no interval where there is none)."""
        value = f"{self.value:.{digits}f}{unit}"
        if not (np.isfinite(self.lo) and np.isfinite(self.hi)):
            return value
        return f"{value} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def _estimate(value: float, reps: np.ndarray) -> Estimate:
    reps = np.asarray(reps, dtype=float)
    reps = np.where(np.isfinite(reps), reps, np.nan)
    if np.isnan(reps).all():
        return Estimate(float(value), np.nan, np.nan)
    return Estimate(*interval(value, reps, LEVEL))


def _key(value: object) -> object:
    """A groupby key of one column: pandas gives 1-tuples for a list of one column."""
    return value[0] if isinstance(value, tuple) and len(value) == 1 else value


def _predictions(rows: pd.DataFrame) -> bool:
    return "sweep" in rows.columns and not rows.empty


# --- groups of correctness ----------------------------------------------------------------------------


def majority_group(rows: pd.DataFrame) -> Group | None:
    """Always predicting the most frequent label of the validation set, as a Group over its examples (shared
    with every other group of the task); None without predictions."""
    if not _predictions(rows):
        return None
    first = rows.iloc[0]
    labels = load_predictions(str(first["sweep"]), str(first["job_dir"]))["labels"]
    majority = np.bincount(np.asarray(labels, dtype=np.int64)).argmax()
    return Group((labels == majority)[None], examples=str(first["task"]))


def removal_groups(
    panel: pd.DataFrame, kinds: tuple[str, ...] = tuple(WHOLE)
) -> tuple[Group, dict[str, Group]] | None:
    """The intact model and each removal control of `kinds` present (cells of the whole model), over the
    seeds all of them have: one set of runs resampled together."""
    layers = n_layers(panel)
    parts = [whole_model(WHOLE[k](panel), layers).assign(_control=k) for k in kinds]
    parts = [p for p in parts if not p.empty]
    if not parts or not _predictions(panel):
        return None
    found = shared_groups(pd.concat(parts), ["_control"])
    if found is None:
        return None
    intact, groups = found
    return intact, {_key(k): g for k, g in groups.items()}


def control_groups(panel: pd.DataFrame) -> dict[str, Group]:
    """{control: Group} for every control of CONTROLS the panel (one model and task) has, in that order."""
    out = {}
    majority = majority_group(panel)
    if majority is not None:
        out["majority"] = majority
    heads = head_rows(panel)
    if _predictions(heads):
        out["head"] = group(heads.drop_duplicates("seed"))
    found = removal_groups(panel)
    if found is not None:
        intact, groups = found
        out.update(groups)
        out["intact"] = intact
    return {name: out[name] for name in CONTROLS if name in out}


def control_summary(panel: pd.DataFrame) -> pd.DataFrame:
    """One row per control of CONTROLS (in that order) that the panel has: accuracy (%) with its 95%
    interval, and the seeds it averages. Without predictions (no `sweep` column): the rows' mean accuracy,
    no interval."""
    if not _predictions(panel):
        return _summary_without_predictions(panel)
    groups = control_groups(panel)
    if not groups:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    reps = 100.0 * replicates(list(groups.values()))
    rows = []
    for j, (name, g) in enumerate(groups.items()):
        est = _estimate(100.0 * mean_accuracy(g), reps[:, j])
        seeds = 0 if name == "majority" else g.correct.shape[0]
        rows.append([name, CONTROL_LABELS[name], est.value, est.lo, est.hi, seeds])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _summary_without_predictions(panel: pd.DataFrame) -> pd.DataFrame:
    values: dict[str, tuple[float, int]] = {}
    majority = panel["majority_rate"].astype(float).mean()
    if np.isfinite(majority):
        values["majority"] = (100 * majority, 0)
    heads = head_rows(panel)
    if not heads.empty:
        values["head"] = (100 * heads["accuracy"].astype(float).mean(), heads["seed"].nunique())
    layers = n_layers(panel)
    intact = []
    for name, select in WHOLE.items():
        rows = whole_model(select(panel), layers)
        if not rows.empty:
            values[name] = (100 * rows["accuracy"].astype(float).mean(), rows["seed"].nunique())
            intact.append(rows)
    if intact:
        rows = pd.concat(intact).drop_duplicates("seed")
        values["intact"] = (100 * rows["intact_accuracy"].astype(float).mean(), len(rows))
    out = [
        [name, CONTROL_LABELS[name], *values[name][:1], np.nan, np.nan, values[name][1]]
        for name in CONTROLS
        if name in values
    ]
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


# --- the removal controls ------------------------------------------------------------------------------


def _against_removal(panel: pd.DataFrame, other: str) -> tuple[list[float], np.ndarray] | None:
    """The intact, all-removed and `other` whole-model accuracies (fractions) and their joint replicates."""
    found = removal_groups(panel, ("removed", other))
    if found is None or set(found[1]) != {"removed", other}:
        return None
    intact, groups = found
    trio = [intact, groups["removed"], groups[other]]
    return [mean_accuracy(g) for g in trio], replicates(trio)


def mean_recovery(panel: pd.DataFrame) -> dict[str, Estimate] | None:
    """How much of the accuracy lost by removing every adapter the mean replacement recovers:
    {"share": 100 (mean - removed) / (intact - removed) in %, "intact", "removed", "mean": accuracies in %}.

    100%: a constant per adapter does everything the adapters do; 0%: nothing. The share is NaN when removal
    loses nothing (no loss to recover), and a replicate without a loss is left out of its interval.
    """
    found = _against_removal(panel, "removed_mean")
    if found is None:
        return None
    (i, z, m), reps = found
    share = 100.0 * (m - z) / (i - z) if i > z else np.nan
    loss = reps[:, 0] - reps[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = 100.0 * (reps[:, 2] - reps[:, 1]) / np.where(loss > 0, loss, np.nan)
    return {
        "share": _estimate(share, stat),
        **_accuracies({"intact": 0, "removed": 1, "mean": 2}, [i, z, m], reps),
    }


def layernorm_difference(panel: pd.DataFrame) -> dict[str, Estimate] | None:
    """Every adapter removed, the pretrained LayerNorms put back minus the trained ones kept (points):
    {"difference", "trained", "pretrained", "intact"}."""
    found = _against_removal(panel, "removed_pretrained_ln")
    if found is None:
        return None
    (i, z, p), reps = found
    return {
        "difference": _estimate(100.0 * (p - z), 100.0 * (reps[:, 2] - reps[:, 1])),
        **_accuracies({"intact": 0, "trained": 1, "pretrained": 2}, [i, z, p], reps),
    }


def _accuracies(names: dict[str, int], values: list[float], reps: np.ndarray) -> dict[str, Estimate]:
    return {name: _estimate(100.0 * values[j], 100.0 * reps[:, j]) for name, j in names.items()}


def removal_placement(panel: pd.DataFrame) -> tuple[str, dict[str, Estimate]] | None:
    """Where the model with every adapter removed lies among the majority class, the head-only baseline and
    the intact model: a sentence, and {reference: removed minus reference (points)} with intervals.

    Against each reference the difference's interval says above, below or indistinguishable; the
    references are ordered by their accuracy. None without the all-removed cell or its predictions.
    """
    found = removal_groups(panel, ("removed",))
    if found is None or "removed" not in found[1]:
        return None
    intact, groups = found
    refs = {"majority": majority_group(panel)}
    heads = head_rows(panel)
    if not heads.empty:
        refs["head"] = group(heads.drop_duplicates("seed"))
    refs["intact"] = intact
    refs = {k: g for k, g in refs.items() if g is not None}
    names = list(refs)
    reps = 100.0 * replicates([groups["removed"], *refs.values()])
    removed = 100.0 * mean_accuracy(groups["removed"])
    accuracy = {
        k: _estimate(100.0 * mean_accuracy(g), reps[:, j + 1]) for j, (k, g) in enumerate(refs.items())
    }
    diffs = {
        k: _estimate(removed - accuracy[k].value, reps[:, 0] - reps[:, j + 1]) for j, k in enumerate(names)
    }
    order = sorted(names, key=lambda k: accuracy[k].value)
    label = {"majority": "the majority class", "head": "the head-only baseline", "intact": "the intact model"}
    at = [k for k in order if diffs[k].lo <= 0.0 <= diffs[k].hi]
    above = [k for k in order if diffs[k].lo > 0.0]
    below = [k for k in order if diffs[k].hi < 0.0]
    if at:
        where = "indistinguishable from " + " and ".join(label[k] for k in at)
    elif not above:
        where = f"below {label[order[0]]}"
    elif not below:
        where = f"above {label[order[-1]]}"
    else:
        where = f"between {label[above[-1]]} and {label[below[0]]}"
    removed_est = _estimate(removed, reps[:, 0])
    refs_text = "; ".join(f"{CONTROL_LABELS[k]} {accuracy[k].text()}" for k in order)
    text = f"all adapters removed {removed_est.text()} lies {where} ({refs_text})"
    return text, diffs


# --- keep, scale, diagnostics ----------------------------------------------------------------------------


def keep_spans(panel: pd.DataFrame, most: int = 4) -> dict | None:
    """The smallest spans whose adapters alone (every other layer's removed) the data cannot tell from the
    intact model: the paired 95% interval of (intact minus kept) accuracy reaches zero or below (the same
    examples and seeds resampled for both, as the keep heatmap's hatching). Where no span does, the best
    single layer kept: {"intact": Estimate, "within": bool, "spans": [(first, last, Estimate), ...] (at most
    `most`, best first), "more": how many more of that size, "tested": spans with keep cells}."""
    found = cell_groups(panel, select=keep_cells)
    if found is None:
        return None
    _, intact, spans = found
    keys = sorted(spans)
    reps = 100.0 * replicates([intact, *(spans[k] for k in keys)])
    base = _estimate(100.0 * mean_accuracy(intact), reps[:, 0])
    kept = {k: _estimate(100.0 * mean_accuracy(spans[k]), reps[:, j + 1]) for j, k in enumerate(keys)}
    drops = {
        k: _estimate(base.value - kept[k].value, reps[:, 0] - reps[:, j + 1]) for j, k in enumerate(keys)
    }
    within = [k for k in keys if drops[k].lo <= 0.0]
    if within:
        size = min(la - f + 1 for f, la in within)
        chosen = [k for k in within if k[1] - k[0] + 1 == size]
    else:
        singles = [k for k in keys if k[0] == k[1]] or keys
        chosen = [max(singles, key=lambda k: kept[k].value)]
    chosen = sorted(chosen, key=lambda k: -kept[k].value)
    return {
        "intact": base,
        "within": bool(within),
        "spans": [(f, la, kept[(f, la)]) for f, la in chosen[:most]],
        "more": max(0, len(chosen) - most),
        "tested": len(keys),
    }


def alpha_curve(panel: pd.DataFrame) -> tuple[Estimate, pd.DataFrame] | None:
    """Accuracy (%) against alpha per scaled range, each with its 95% interval, and the intact model's:
    (intact, table of first, last, alpha, accuracy, lo, hi, seeds)."""
    rows = scale_cells(panel)
    if not _predictions(rows):
        return None
    found = shared_groups(rows, ["first", "last", ALPHA])
    if found is None:
        return None
    intact, groups = found
    keys = sorted(groups)
    reps = 100.0 * replicates([intact, *(groups[k] for k in keys)])
    out = []
    for j, (first, last, alpha) in enumerate(keys, start=1):
        est = _estimate(100.0 * mean_accuracy(groups[(first, last, alpha)]), reps[:, j])
        out.append([int(first), int(last), float(alpha), est.value, est.lo, est.hi, intact.correct.shape[0]])
    table = pd.DataFrame(out, columns=["first", "last", ALPHA, "accuracy", "lo", "hi", "seeds"])
    return _estimate(100.0 * mean_accuracy(intact), reps[:, 0]), table


def diagnostic_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per layer and adapter position: contribution_ratio and cosine_distance, mean and s.e.m. over the
    trainings (seeds) behind the rows (their diagnostics.csv), and how many trainings."""
    diag = load_diagnostics(rows)
    columns = ["layer", "position", "contribution_ratio", "contribution_ratio_sem", "cosine_distance"]
    columns += ["cosine_distance_sem", "seeds"]
    if diag.empty:
        return pd.DataFrame(columns=columns)
    grouped = diag.groupby(["layer", "position"], sort=True)
    out = grouped.agg(
        contribution_ratio=("contribution_ratio", "mean"),
        contribution_ratio_sem=("contribution_ratio", "sem"),
        cosine_distance=("cosine_distance", "mean"),
        cosine_distance_sem=("cosine_distance", "sem"),
        seeds=("train_key", "nunique"),
    )
    return out.reset_index()[columns]


def single_layer_drops(rows: pd.DataFrame) -> pd.DataFrame:
    """Per layer: the relative decrease (%) of removing that layer's adapters alone, mean and s.e.m. over
    seeds, from the rows' `relative_decrease` (layer, drop, drop_sem, seeds)."""
    cells = single_layer_cells(rows)
    if cells.empty:
        return pd.DataFrame(columns=["layer", "drop", "drop_sem", "seeds"])
    per_seed = cells.assign(_drop=100.0 * cells["relative_decrease"].astype(float))
    per_seed = per_seed.groupby(["first", "seed"], sort=True)["_drop"].mean().reset_index()
    out = per_seed.groupby("first", sort=True)["_drop"].agg(drop="mean", drop_sem="sem", seeds="count")
    out = out.reset_index().rename(columns={"first": "layer"})
    return out.astype({"layer": "int64"})


def layer_contributions(rows: pd.DataFrame) -> pd.Series:
    """Per layer, its adapters' contribution ratio: the mean over its positions in each training, then over
    the trainings."""
    diag = load_diagnostics(rows)
    if diag.empty:
        return pd.Series(dtype=float, name="contribution_ratio")
    per_training = diag.groupby(["train_key", "layer"])["contribution_ratio"].mean()
    return per_training.groupby("layer").mean().rename("contribution_ratio")


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN where either side is constant."""
    return float(a.rank().corr(b.rank()))


def contribution_correlation(rows: pd.DataFrame) -> dict | None:
    """Spearman's rank correlation between each layer's contribution ratio (`layer_contributions`) and the
    relative decrease when that layer's adapters alone are removed, over the layers with both:
    {"rho": Estimate, "layers": n}. The interval resamples the drops' validation examples and seeds (the
    contribution ratios, means over every validation token, are held fixed); None under 3 layers."""
    contributions = layer_contributions(rows)
    found = cell_groups(rows, select=single_layer_cells)
    if contributions.empty or found is None:
        return None
    _, intact, cells = found
    layers = [la for la in sorted(f for f, _ in cells) if la in contributions.index]
    if len(layers) < 3:
        return None
    reps = replicates([intact, *(cells[(la, la)] for la in layers)])
    drops = relative_decrease(
        mean_accuracy(intact), np.array([mean_accuracy(cells[(la, la)]) for la in layers])
    )
    ratio = contributions.loc[layers].reset_index(drop=True)
    rho = spearman(ratio, pd.Series(drops))
    stat = relative_decrease(reps[:, :1], reps[:, 1:])
    ranked = pd.DataFrame(stat).rank(axis=1).to_numpy(dtype=float, copy=True)
    ranked -= ranked.mean(axis=1, keepdims=True)
    fixed = ratio.rank().to_numpy() - ratio.rank().mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        per_rep = ranked @ fixed / (np.linalg.norm(ranked, axis=1) * np.linalg.norm(fixed))
    return {"rho": _estimate(rho, per_rep), "layers": len(layers)}


# --- the report's section ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Control:
    """One control: what it asks, the figure whose rows it reads, what its rows must hold, its measure
    (panel rows -> [(what the rows say, estimate or None, unit)], None when the panel lacks its rows), and
    the settings of `study=controls` that add its rows."""

    name: str
    question: str
    figure: str
    needs: str
    measure: Callable[[pd.DataFrame], list[tuple[str, Estimate | None, str]] | None]
    runs: str


def _head(panel: pd.DataFrame):
    heads = head_rows(panel)
    if heads.empty:
        return None
    placed = removal_placement(panel)
    if placed is not None:
        text, diffs = placed
        return [(text, diffs["head"], "points (all removed minus head only)")] if "head" in diffs else None
    accuracy = control_summary(heads).set_index("control")
    if "head" not in accuracy.index:
        return None
    est = Estimate(*accuracy.loc["head", ["accuracy", "lo", "hi"]].astype(float))
    return [(f"head only {est.text()} (no cell with every adapter removed to compare)", est, "%")]


def _mean(panel: pd.DataFrame):
    found = mean_recovery(panel)
    if found is None:
        return None
    share = found["share"]
    if not np.isfinite(share.value):
        text = f"removing every adapter loses nothing here (intact {found['intact'].text()}, removed {found['removed'].text()}): no loss to recover"
        return [(text, None, "")]
    text = (
        f"intact {found['intact'].text()}, all removed {found['removed'].text()}, all replaced by their mean "
        f"{found['mean'].text()}: the mean recovers {share.text()} of the loss"
    )
    return [(text, share, "% of the loss")]


def _layernorm(panel: pd.DataFrame):
    found = layernorm_difference(panel)
    if found is None:
        return None
    text = (
        f"all removed with the trained LayerNorms {found['trained'].text()}, with the pretrained ones "
        f"{found['pretrained'].text()} (intact {found['intact'].text()})"
    )
    return [(text, found["difference"], "points (pretrained minus trained)")]


def _keep(panel: pd.DataFrame):
    found = keep_spans(panel)
    if found is None:
        return None
    names = ", ".join(f"{f}..{la} {est.text()}" for f, la, est in found["spans"])
    more = f" and {found['more']} more of that size" if found["more"] else ""
    f, la, best = found["spans"][0]
    size = la - f + 1
    if found["within"]:
        text = (
            f"smallest spans kept alone that the data cannot tell from the intact model {found['intact'].text()} "
            f"(paired 95% interval of the difference reaches zero): "
            f"{size} layer{'s' if size != 1 else ''}, {names}{more} ({found['tested']} spans tested)"
        )
    else:
        text = (
            f"every span kept alone is below the intact model {found['intact'].text()} (paired 95% intervals); best "
            f"{'single layer' if size == 1 else 'span'} kept: {names} ({found['tested']} spans tested)"
        )
    return [(text, best, f"% (layers {f}..{la} kept)")]


def _alpha(panel: pd.DataFrame):
    found = alpha_curve(panel)
    if found is None:
        return None
    intact, table = found
    layers = n_layers(panel)
    out = []
    spans = sorted({(f, la) for f, la in zip(table["first"], table["last"], strict=True)})
    for first, last in sorted(spans, key=lambda span: (span[0] - span[1], span[0])):  # the widest first
        curve = table[(table["first"] == first) & (table["last"] == last)]
        points = "; ".join(
            f"α={a:g}: {Estimate(v, lo, hi).text()}"
            for a, v, lo, hi in curve[[ALPHA, "accuracy", "lo", "hi"]].itertuples(index=False)
        )
        whole = " (every layer)" if (first, last) == (0, (layers or 0) - 1) else ""
        text = f"layers {first}..{last}{whole} scaled: {points} (intact {intact.text()})"
        half = curve.iloc[(curve[ALPHA] - 0.5).abs().argsort().iloc[0]]
        est = Estimate(float(half["accuracy"]), float(half["lo"]), float(half["hi"]))
        out.append((text, est, f"% at α={half[ALPHA]:g}"))
    return out


def _correlation(panel: pd.DataFrame):
    found = contribution_correlation(panel)
    if found is None:
        return None
    rho = found["rho"]
    text = (
        f"Spearman ρ = {rho.text('', 2)} over {found['layers']} layers between a layer's contribution ratio "
        "(mean of its positions) and its single-layer relative decrease"
    )
    return [(text, rho, f"ρ ({found['layers']} layers)")]


CONTROL_LIST = (
    Control(
        "head-only baseline",
        "with every adapter removed, is the model at the majority class, at what the frozen encoder gives "
        "with a trained head, or in between?",
        "controls",
        "method=head rows",
        _head,
        "method=head",
    ),
    Control(
        "mean replacement",
        "share of the accuracy lost by removing every adapter that replacing each one's contribution by its "
        "mean recovers",
        "controls",
        "whole-model cells of kind mean and kind zero",
        _mean,
        "ablate.kind=mean",
    ),
    Control(
        "pretrained LayerNorms",
        "every adapter removed: the pretrained LayerNorms put back minus the trained ones kept",
        "controls",
        "whole-model cells with ablate_layernorm=pretrained and trained",
        _layernorm,
        "ablate.layernorm=pretrained",
    ),
    Control(
        "keep one span",
        "the smallest spans whose adapters alone the data cannot tell from the intact model (paired 95% interval)",
        "heatmap_keep",
        "cells of kind keep",
        _keep,
        "ablate.kind=keep",
    ),
    Control(
        "scale α",
        "accuracy with the adapters' contributions multiplied by α (0: removed, 1: intact)",
        "alpha",
        "cells of kind scale",
        _alpha,
        "ablate.kind=scale ablate.alpha=0,0.25,0.5,0.75,1",
    ),
    Control(
        "contribution vs single-layer drop",
        "do the layers whose adapters change the hidden states most matter most when removed?",
        "diagnostics",
        "diagnostics.csv and single-layer removal cells of at least 3 layers",
        _correlation,
        "ablate.first=0..L-1 ablate.last=0..L-1",
    ),
)


def _recipe_panels(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(name, rows) per model and task, and per adapter recipe where the adapter rows hold several (each
    with the other methods' rows of its model and task: the head-only baseline)."""
    recipe = varying(rows)
    if not recipe:
        return [(f"{m} · {t}", panel) for (m, t), panel in rows.groupby(["model", "task"], sort=True)]
    layers = model_layers(rows)
    adapters = (rows["method"] == "adapters").fillna(False).to_numpy(dtype=bool)
    out = []
    for (model, task, *_), panel in rows[adapters].groupby(
        ["model", "task", *recipe], sort=True, dropna=False
    ):
        others = rows[
            ~adapters & (rows["model"] == model).to_numpy(bool) & (rows["task"] == task).to_numpy(bool)
        ]
        name = f"{model} · {task} · {recipe_label(panel.iloc[0], layers.get(str(model)))}"
        out.append((name, pd.concat([panel, others]).sort_index()))
    return out


def findings(df: pd.DataFrame) -> pd.DataFrame:
    """One row per control and model · task: control, question, panel, run (bool), measured (what the rows
    say, with their numbers and intervals), estimate, lo, hi, unit. A control without its rows in a panel is
    listed as not run. Empty when the rows allow no control figure (e.g. a plain layer-ablation sweep).

    Reads the rows `figure_plan` gives the control figures and the heatmap, so the section agrees with the
    figures drawn (`df` from `analysis.collect.load_runs`: the intervals need the predictions).
    """
    plan = figure_plan(df)
    if not any(name in plan for name in CONTROL_FIGURES):
        return pd.DataFrame(columns=FINDING_COLUMNS)
    parts = [plan[name] for name in ("heatmap", *CONTROL_FIGURES) if name in plan]
    rows = pd.concat(parts)
    rows = rows[~rows.index.duplicated()]
    out = []
    for name, panel in _recipe_panels(rows):
        for control in CONTROL_LIST:
            measured = control.measure(panel) if control.figure in plan else None
            if not measured:
                out.append([control.name, control.question, name, False, f"not run (needs {control.needs})"])
                out[-1] += [np.nan, np.nan, np.nan, ""]
                continue
            for text, est, unit in measured:
                value = (np.nan, np.nan, np.nan) if est is None else (est.value, est.lo, est.hi)
                out.append([control.name, control.question, name, True, text, *value, unit])
    return pd.DataFrame(out, columns=FINDING_COLUMNS)
