"""Which rows each figure and claim reads: row predicates, panels, and the figure plan. No plotting here.

Every figure is one `Figure` entry: the rows it selects, the columns that make one plotted point and one
panel, and (for rows outside a study) whether the rows vary its factor at all. Drawing is
`analysis.plots`'s; judging claims is `analysis.claims`'s; the controls' numbers are `analysis.controls`'s;
all read the plan made here.

Ablation cells come in kinds (column `ablate_kind`): `zero` (the adapters removed, the paper's ablation),
`mean` (each removed adapter's contribution replaced by its mean), `scale` (contributions times `alpha`) and
`keep` (only first..last keep their adapters); `ablate_layernorm` says whether the ablated layers kept their
trained LayerNorms (`trained`) or got the pretrained ones back. Tables older than these columns hold zero
cells with trained LayerNorms: a missing value reads as the default.

A training's recipe (`RECIPE_COLUMNS`: which LayerNorms train, the head, the adapter variant and size, the
layers that have adapters) splits heatmaps and their claims where it varies (the `recipe` study); a training
with adapters in some layers only (`adapter_layers`, the `placement` study) shows only those layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablation.config import (
    ABLATE_KINDS,
    EXACT,
    HEAD_METHODS,
    METHODS,
    RECIPE_LAYERNORMS,
    AdapterConfig,
    block_spans,
)
from ablation.keys import REPLICATE, SETTING_COLUMNS, TRAINING_COLUMNS
from analysis.collect import conform, has_diagnostics, has_examples, has_history

# What a training recipe is beyond its method: the LayerNorms that train with the adapters, the head, the
# adapter variant and size, and the layers that have adapters ('+'-joined). Constant in every study but
# `recipe` and `placement`, so splitting on them leaves the other studies' panels as they were.
RECIPE_COLUMNS = ("layernorms", "head", "variant", "adapter_size", "adapter_layers")
# Rows that differ in these columns belong to different heatmaps; everything else (seeds) is averaged.
PANEL_COLUMNS = ("task", "model", "method", "positions", *RECIPE_COLUMNS)
# One placement panel: a model, a task and a recipe, whatever its adapted layers (they are the x axis).
PLACEMENT_PANEL = ("model", "task", *RECIPE_COLUMNS[:-1])
DEFAULT_SIZE = AdapterConfig().size  # the suite's adapter size: a recipe label names any other
# AdapterHub's recipe as the `recipe` study runs it (its DoubleSeqBnConfig): no LayerNorm trained, BERT's
# pooler in the head, swish; its size is its reduction factor's share of the model width (m = 24 on 384).
HUB_RECIPE = {"layernorms": "freeze", "head": "pooler", "variant": "activation=swish"}
LAYERNORM_ORDER = ("train", "adapted", "freeze")  # the suite's recipe first
PAPER_SIZES = (8, 64, 256)  # the adapter sizes of the paper's GLUE grid (its bottleneck claim)
# The ablation's columns, and what a table without them (or a row with a gap) means: the paper's removal.
KIND, ALPHA, LAYERNORM = "ablate_kind", "alpha", "ablate_layernorm"
# How a cell was had: exact, or an estimate (ablate.estimate); every figure and claim reads exact cells only
ESTIMATE = "estimate"
ABLATION_DEFAULTS = {KIND: "zero", LAYERNORM: "trained", ESTIMATE: EXACT}
HEAD_ONLY = "head"  # the method that trains only the classification head on the frozen encoder


def with_ablation(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with `ablate_kind`, `ablate_layernorm`, `estimate` and `alpha` present: a missing kind (an
    older table, or a gap) reads as `zero`, a missing LayerNorm choice as `trained`, a missing estimate as
    `exact`, a missing alpha as NaN."""
    filled = {}
    for column, default in ABLATION_DEFAULTS.items():
        if column not in df.columns:
            filled[column] = pd.Series(default, index=df.index, dtype=object)
        else:
            values = df[column]
            missing = values.isna() | (values.astype(object) == "")
            filled[column] = values.mask(missing, default) if missing.any() else values
    if ALPHA not in df.columns:
        filled[ALPHA] = pd.Series(float("nan"), index=df.index, dtype=float)
    return df.assign(**filled)


def intact(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of intact models (no layer range ablated)."""
    return df[df["first"].isna() & df["last"].isna()]


def cells(
    df: pd.DataFrame, kind: str = "zero", layernorm: str = "trained", estimate: str = EXACT
) -> pd.DataFrame:
    """Ablation cells of one kind (`zero`, `mean`, `scale`, `keep`) and LayerNorm choice (`trained`,
    `pretrained`), exact unless `estimate` names an estimator, with the ablation's columns filled in (see
    `with_ablation`). Every figure and claim reads exact cells: an estimate is never judged with them."""
    if kind not in ABLATE_KINDS:
        raise ValueError(f"cells: kind must be one of {ABLATE_KINDS}, got {kind!r}")
    rows = with_ablation(df.dropna(subset=["first", "last"]))
    chosen = (rows[KIND] == kind) & (rows[LAYERNORM] == layernorm) & (rows[ESTIMATE] == estimate)
    return rows[chosen.to_numpy(dtype=bool)]


def ablated(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of layer-ablation cells: the paper's removal (kind zero, the trained LayerNorms kept)."""
    return cells(df, "zero", "trained")


@dataclass(frozen=True)
class CellChoice:
    """One kind of ablation cell as a selector: called on rows, it keeps the cells of `kind`, `layernorm` and
    `estimate` (`cells`, as every heatmap of the report selects them), of `alpha` (kind scale) and of
    `positions` where given (None: every position, one panel each)."""

    kind: str = "zero"
    layernorm: str = "trained"
    alpha: float | None = None
    positions: str | None = None
    estimate: str = EXACT

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        rows = cells(df, self.kind, self.layernorm, self.estimate)
        keep = np.ones(len(rows), dtype=bool)
        if self.alpha is not None:
            keep &= np.isclose(rows[ALPHA].astype(float).to_numpy(), self.alpha)
        if self.positions is not None:
            keep &= (rows["positions"] == self.positions).fillna(False).to_numpy(dtype=bool)
        return rows[keep]

    def label(self) -> str:
        """What sets these cells apart from the paper's removal ('ablate_kind=scale alpha=0.5'); '' for it."""
        names = [] if self.kind == ABLATION_DEFAULTS[KIND] else [f"{KIND}={self.kind}"]
        if self.alpha is not None:
            names.append(f"{ALPHA}={self.alpha:g}")
        if self.layernorm != ABLATION_DEFAULTS[LAYERNORM]:
            names.append(f"{LAYERNORM}={self.layernorm}")
        if self.estimate != EXACT:
            names.append(f"{ESTIMATE}={self.estimate}")
        return " ".join(names)


def single_layer_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's removal of one layer's adapters: zero cells with first == last (the heatmap's diagonal)."""
    rows = ablated(df)
    return rows[(rows["first"] == rows["last"]).to_numpy(dtype=bool)]


def mean_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Cells whose removed adapters were replaced by their mean contribution (trained LayerNorms)."""
    return cells(df, "mean", "trained")


def keep_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Cells where only the adapters of layers first..last stayed (trained LayerNorms)."""
    return cells(df, "keep", "trained")


def scale_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Cells whose adapters' contributions in first..last were multiplied by `alpha` (trained LayerNorms)."""
    rows = cells(df, "scale", "trained")
    return rows[rows[ALPHA].notna().to_numpy(dtype=bool)]


def pretrained_layernorm_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Cells with the adapters removed and the ablated layers' pretrained LayerNorms put back."""
    return cells(df, "zero", "pretrained")


def head_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Intact rows of the head-only baseline (the classification head trained on the frozen encoder)."""
    rows = intact(df)
    return rows[(rows["method"] == HEAD_ONLY).to_numpy(dtype=bool)]


def n_layers(df: pd.DataFrame) -> int | None:
    """The model's layer count as the cells show it (the largest `last` + 1); None without cells."""
    last = df["last"].dropna()
    return int(last.max()) + 1 if len(last) else None


def whole_model(rows: pd.DataFrame, layers: int | None = None) -> pd.DataFrame:
    """The cells of `rows` that span every layer, 0..L-1 (L = `layers` or as `n_layers` reads the rows), of
    every adapter position."""
    layers = n_layers(rows) if layers is None else layers
    if layers is None or rows.empty:
        return rows.iloc[0:0]
    positions = rows["positions"].isna() | (rows["positions"] == "both")
    keep = (rows["first"] == 0) & (rows["last"] == layers - 1) & positions
    return rows[keep.fillna(False).to_numpy(dtype=bool)]


def control_rows(df: pd.DataFrame) -> pd.DataFrame:
    """What the controls figure compares, per model: the head-only baseline's rows, and the cells that span
    the whole model with the adapters removed (trained and pretrained LayerNorms) or mean-replaced."""
    parts = [head_rows(df)]
    for _, rows in df.groupby("model", sort=True, dropna=False):
        layers = n_layers(rows)
        for select in (ablated, pretrained_layernorm_cells, mean_cells):
            parts.append(whole_model(select(rows), layers))
    parts = [with_ablation(p) for p in parts if not p.empty]
    return pd.concat(parts).sort_index() if parts else with_ablation(df.iloc[0:0])


def _has_controls(df: pd.DataFrame) -> bool:
    """Rows of a control beyond the paper's removal: head-only, or a whole-model pretrained-LN or mean cell."""
    rows = control_rows(df)
    return not (rows.empty or ablated(rows).shape[0] == rows.shape[0])


def diagnosed(df: pd.DataFrame) -> pd.DataFrame:
    """Adapter rows whose training has a diagnostics.csv (needs `sweep`: rows from `load_runs`): the rows
    with the file, and the single-layer removal cells of the same trainings (their drop is compared)."""
    if "sweep" not in df.columns or df.empty:
        return with_ablation(df.iloc[0:0])
    rows = with_ablation(df[(df["method"] == "adapters").to_numpy(dtype=bool)])
    found = has_diagnostics(rows)
    key = (
        rows["train_key"]
        .astype(object)
        .where(rows["train_key"].notna(), rows["sweep"].astype(str) + "/" + rows["job_dir"].astype(str))
    )
    single = rows.index.isin(single_layer_cells(rows).index)
    keep = key.isin(set(key[found])) & (found | single)
    return rows[keep.to_numpy(dtype=bool)]


def example_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's removal cells whose sweep kept its examples (needs `sweep`: rows from `load_runs`)."""
    rows = ablated(df)
    return rows[has_examples(rows).to_numpy(dtype=bool)]


def _plain(df: pd.DataFrame) -> pd.Series:
    return df["variant"].isna() | (df["variant"] == "plain")


def plain_adapters(df: pd.DataFrame) -> pd.DataFrame:
    """Intact rows of the plain Houlsby adapter (any size and init)."""
    rows = intact(df)
    return rows[(rows["method"] == "adapters") & _plain(rows)]


def all_methods(df: pd.DataFrame) -> pd.DataFrame:
    """Intact rows of every method (head-only included), adapters only in their plain form."""
    rows = intact(df)
    return rows[rows["method"].isin(METHODS) & ((rows["method"] != "adapters") | _plain(rows))]


def with_history(df: pd.DataFrame) -> pd.DataFrame:
    """Intact rows of the plain adapter whose training history is in their sweep folder (histories/)."""
    rows = plain_adapters(df)
    return rows[has_history(rows).to_numpy(dtype=bool)]


def with_stability(df: pd.DataFrame) -> pd.DataFrame:
    """Intact rows of the plain adapter that carry their training's stability measures (plateau_loss set)."""
    rows = plain_adapters(df)
    return rows[rows["plateau_loss"].notna().to_numpy(dtype=bool)]


def curve_factor(rows: pd.DataFrame) -> str | None:
    """The setting the loss curves are coloured by: the init std where it varies, else the adapter size."""
    for column in ("init_std", "adapter_size"):
        if rows[column].nunique() > 1:
            return column
    return None


def variant_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Intact rows of adapters with a variant name (the plain one included)."""
    rows = intact(df)
    return rows[(rows["method"] == "adapters") & rows["variant"].notna()]


def method_rows(panel: pd.DataFrame, method: str) -> pd.DataFrame:
    """Intact rows of one method."""
    return panel[(panel["method"] == method) & panel["first"].isna()]


# --- recipes and adapted layers --------------------------------------------------------------------------


def adapted_layers(value: object) -> tuple[int, ...] | None:
    """The layers an `adapter_layers` value names ('3+4+5' -> (3, 4, 5)); None for a missing value."""
    if value is None or pd.isna(value) or str(value) == "":
        return None
    return tuple(sorted(int(v) for v in str(value).split("+")))


def layers_text(layers: Iterable[int]) -> str:
    """'3..5' for a contiguous run of layers, '0, 2' otherwise."""
    layers = sorted(layers)
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ", ".join(map(str, layers))


def model_layers(df: pd.DataFrame) -> dict[str, int]:
    """Each model's layer count as the rows show it: the largest `last` + 1 or adapted layer + 1.

    A model whose rows all have adapters in its lower layers only would read as smaller; the all-layer
    training that such studies hold beside them gives the count.
    """
    if df.empty or "model" not in df.columns:
        return {}
    top = pd.Series(np.nan, index=df.index)
    if "last" in df.columns:
        top = pd.to_numeric(df["last"]).astype(float) + 1
    if "adapter_layers" in df.columns:
        highest = df["adapter_layers"].map(lambda v: None if (x := adapted_layers(v)) is None else x[-1] + 1)
        top = np.fmax(top, highest.astype(float))
    counts = top.groupby(df["model"].astype(object)).max().dropna()
    return {str(m): int(n) for m, n in counts.items()}


def every_layer(df: pd.DataFrame, layers: dict[str, int] | None = None) -> pd.Series:
    """Per row: does its training have adapters in every layer of its model (a missing `adapter_layers` says
    so: tables older than the column, methods without it)? `layers` as `model_layers` gives it."""
    layers = model_layers(df) if layers is None else layers
    if "adapter_layers" not in df.columns:
        return pd.Series(True, index=df.index, dtype=bool)
    full = [
        (found := adapted_layers(value)) is None or found == tuple(range(layers.get(str(model), len(found))))
        for model, value in zip(df["model"], df["adapter_layers"], strict=True)
    ]
    return pd.Series(full, index=df.index, dtype=bool)


def with_recipe(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with the gaps of `layernorms`, `head` and `adapter_layers` filled with what ran (the method's
    own LayerNorms, the classifier head, adapters in every layer), so that rows of tables older than these
    columns join the rows that show them in one panel."""
    if not {"method", "layernorms", "head", "adapter_layers"} <= set(df.columns):
        return df
    method = df["method"].astype(object)
    layers = {m: "+".join(map(str, range(n))) for m, n in model_layers(df).items()}
    every = df["model"].astype(object).map(lambda m: layers.get(str(m)))
    defaults = {
        "layernorms": method.map(RECIPE_LAYERNORMS),
        "head": method.map(lambda m: "classifier" if m in HEAD_METHODS else None),
        "adapter_layers": every.where(method == "adapters"),
    }
    filled = {c: df[c].astype(object).fillna(v).astype(df[c].dtype) for c, v in defaults.items()}
    return df.assign(**filled)


def varying(rows: pd.DataFrame, columns: tuple[str, ...] = RECIPE_COLUMNS) -> list[str]:
    """The recipe columns of `columns` on which rows of one method differ (a gap counts as a value): a LoRA
    heatmap beside the adapters', or the head-only baseline, is no second recipe."""
    if rows.empty:
        return []
    method = (
        rows["method"].astype(object).fillna("") if "method" in rows.columns else pd.Series("", rows.index)
    )
    return [
        c for c in columns if c in rows.columns and (rows.groupby(method)[c].nunique(dropna=False) > 1).any()
    ]


def recipe_label(row: pd.Series, n_layers: int | None = None) -> str:
    """A training recipe in words: 'LN train · classifier', 'AdapterHub (LN freeze · pooler · swish · m=24)';
    the adapter size where it is not the suite's, and 'layers 3..5' where adapters sit in some of the
    model's `n_layers` layers only."""

    def value(column: str) -> object:
        found = row.get(column)
        return None if found is None or pd.isna(found) else found

    parts = []
    if value("layernorms") is not None:
        parts.append(f"LN {value('layernorms')}")
    if value("head") is not None:
        parts.append(str(value("head")))
    if value("variant") not in (None, "plain"):
        # 'activation=swish' reads as 'swish'; other variant fields keep their name
        fields = [f.split("=", 1) for f in str(value("variant")).split(",")]
        parts += [v if k == "activation" else f"{k} {v}" for k, v in fields]
    if value("adapter_size") is not None and int(value("adapter_size")) != DEFAULT_SIZE:
        parts.append(f"m={int(value('adapter_size'))}")
    layers = adapted_layers(value("adapter_layers"))
    if layers is not None and n_layers is not None and layers != tuple(range(n_layers)):
        parts.append(f"layers {layers_text(layers)}")
    text = " · ".join(parts) or "the method's recipe"
    hub = all(value(c) == v for c, v in HUB_RECIPE.items())
    return f"AdapterHub ({text})" if hub else text


def recipe_order(row: pd.Series) -> tuple:
    """Sort key of recipes: the suite's first (trained LayerNorms, the classifier), AdapterHub's last."""
    norms = row.get("layernorms")
    return (
        all(row.get(c) == v for c, v in HUB_RECIPE.items()),
        LAYERNORM_ORDER.index(norms) if norms in LAYERNORM_ORDER else len(LAYERNORM_ORDER),
        row.get("head") != "classifier",
        str(row.get("variant")) != "plain",
        str(row.get("adapter_size")),
        str(row.get("adapter_layers")),
    )


def panel_order(panel: pd.DataFrame) -> tuple:
    """Sort key of panels: model, task, then recipe (`recipe_order`)."""
    first = panel.iloc[0]
    return (str(first.get("model")), str(first.get("task")), recipe_order(first))


def halves(n_layers: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The bottom and the top half of the layers as spans: ((0, h-1), (L-h, L-1)) with h = L // 2 (an odd
    middle layer in neither); None below two layers."""
    h = n_layers // 2
    return None if h < 1 else ((0, h - 1), (n_layers - h, n_layers - 1))


def recipe_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The recipe figure's cells: the paper's removal of the bottom and of the top half of the layers'
    adapters (`halves`), from adapter trainings with adapters in every layer."""
    rows = with_recipe(df)
    layers = model_layers(rows)
    cells = ablated(rows)
    cells = cells[((cells["method"] == "adapters").fillna(False) & every_layer(cells, layers)).to_numpy(bool)]
    keep = [
        (int(f), int(la)) in (halves(layers.get(str(m), 0)) or ())
        for m, f, la in zip(cells["model"], cells["first"], cells["last"], strict=True)
    ]
    return cells[np.array(keep, dtype=bool)]


def _recipes_vary(df: pd.DataFrame) -> bool:
    """Do some model and task's recipe cells come from several recipes?"""
    rows = recipe_cells(df)
    columns = [c for c in RECIPE_COLUMNS if c in rows.columns]
    if rows.empty or not columns:
        return False
    recipes = (
        rows.drop_duplicates(["model", "task", *columns]).groupby(["model", "task"], dropna=False).size()
    )
    return bool((recipes > 1).any())


def _key(rows: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """One text key per row from `columns` (gaps as 'nan'), to match rows across selections."""
    return rows[list(columns)].astype(object).astype(str).agg("|".join, axis=1)


def placement_rows(df: pd.DataFrame) -> pd.DataFrame:
    """What the placement figure reads, per model, task and recipe that has a training of adapters in some
    layers only: those trainings' intact rows, and the all-layer training's intact rows and keep cells."""
    rows = with_recipe(df)
    rows = rows[(rows["method"] == "adapters").fillna(False).to_numpy(bool)]
    full = every_layer(rows, model_layers(rows)).to_numpy(bool)
    unablated = (rows["first"].isna() & rows["last"].isna()).to_numpy(bool)
    partial = rows[~full & unablated]
    if partial.empty:
        return df.iloc[0:0]
    kept = rows.index.isin(keep_cells(rows).index)
    whole = rows[full & (unablated | kept)]
    whole = whole[_key(whole, PLACEMENT_PANEL).isin(set(_key(partial, PLACEMENT_PANEL))).to_numpy(bool)]
    return with_ablation(pd.concat([partial, whole]).sort_index())


# The placement figure's series: where the k layers with adapters sit, and whether they were trained so or
# are the kept span of the all-layer training (the others' adapters removed, no retraining).
TOP_RETRAINED, BOTTOM_RETRAINED = "top k retrained", "bottom k retrained"
TOP_KEPT, BOTTOM_KEPT = "top k kept (all-layer training)", "bottom k kept (all-layer training)"
PLACEMENT_SERIES = (TOP_RETRAINED, BOTTOM_RETRAINED, TOP_KEPT, BOTTOM_KEPT)
PLACEMENT_COLUMNS = ["series", "k", "seed", "accuracy", "score", "trained_params", "fit_seconds", "train_key"]


def placement_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The placement figure's points, one per training (retrained) or keep cell (kept) and series: k (the
    layers with adapters, 1..L), seed, accuracy (%), score (the training's intact accuracy: what best-of-n
    selects on), trained_params, fit_seconds, train_key. The all-layer training is k = L of every series."""
    rows = placement_rows(rows)
    if rows.empty:
        return pd.DataFrame(columns=PLACEMENT_COLUMNS)
    layers = model_layers(rows)
    out = []

    def point(series: str, k: int, row: pd.Series, accuracy: float) -> None:
        values = [row["seed"], 100 * accuracy, 100 * row["intact_accuracy"], row["trained_params"]]
        out.append([series, k, *values, row["fit_seconds"], row["train_key"]])

    full = every_layer(rows, layers).to_numpy(bool)
    for _, row in rows[~full].iterrows():
        n, found = layers[str(row["model"])], adapted_layers(row["adapter_layers"])
        k = len(found)
        if found == tuple(range(n - k, n)):
            point(TOP_RETRAINED, k, row, row["accuracy"])
        elif found == tuple(range(k)):
            point(BOTTOM_RETRAINED, k, row, row["accuracy"])
    whole = rows[full]
    trainings = whole.assign(_key=whole["train_key"].astype(object).fillna(whole["seed"].astype(str)))
    for _, row in trainings.drop_duplicates("_key").iterrows():
        for series in (TOP_RETRAINED, BOTTOM_RETRAINED):
            point(series, layers[str(row["model"])], row, row["intact_accuracy"])
    for _, row in keep_cells(whole).iterrows():
        n, first, last = layers[str(row["model"])], int(row["first"]), int(row["last"])
        if last == n - 1:
            point(TOP_KEPT, n - first, row, row["accuracy"])
        if first == 0:
            point(BOTTOM_KEPT, last + 1, row, row["accuracy"])
    table = pd.DataFrame(out, columns=PLACEMENT_COLUMNS)
    numbers = ["seed", "accuracy", "score", "trained_params", "fit_seconds"]  # gaps (pd.NA) as NaN
    return table.assign(**{c: pd.to_numeric(table[c]).astype(float) for c in numbers})


def top_half_pair(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, int] | None:
    """AdapterDrop's comparison in one model and task: the training with adapters in the top half of the
    layers only (its intact rows) and the all-layer training (one row per seed, any of its rows: each holds
    its intact predictions), over the seeds both have, in seed order; and the layer count. None without."""
    rows = placement_rows(rows)
    if rows.empty:
        return None
    n = model_layers(rows)[str(rows["model"].iloc[0])]
    spans = halves(n)
    if spans is None:
        return None
    top_layers = tuple(range(spans[1][0], n))
    top = rows[rows["adapter_layers"].map(lambda v: adapted_layers(v) == top_layers).to_numpy(bool)]
    whole = rows[every_layer(rows).to_numpy(bool)]
    seeds = sorted(set(top["seed"].dropna()) & set(whole["seed"].dropna()))
    if not seeds:
        return None
    pick = [
        r[r["seed"].isin(seeds)].sort_values("seed", kind="stable").drop_duplicates("seed")
        for r in (top, whole)
    ]
    return pick[0], pick[1], n


# What a preset's figures and report say of themselves, after its label ("quick preset").
PRESET_NOTE = "a small version of the study, not its result"


def preset_label(df: pd.DataFrame) -> str | None:
    """'quick preset' (the presets the rows were made with, joined by '/') for titles; None without one."""
    if "preset" not in df.columns:
        return None
    presets = sorted({str(p) for p in df["preset"].dropna() if str(p)})
    return f"{'/'.join(presets)} preset" if presets else None


def split_panels(df: pd.DataFrame, columns: tuple[str, ...] = PANEL_COLUMNS) -> list[pd.DataFrame]:
    """One frame per distinct value of the columns that vary (one heatmap per task x model x method x
    positions)."""
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


PRECISION = "train_precision"  # the precision a training ran in (fp32, bf16), resolved on its machine


def one_per_training(df: pd.DataFrame) -> pd.DataFrame:
    """One row per training behind `df` (its training key; rows without keys: its training columns)."""
    rows = conform(df)
    return rows.drop_duplicates("train_key" if rows["train_key"].notna().all() else list(TRAINING_COLUMNS))


def precision_mix(df: pd.DataFrame) -> list[dict]:
    """Each study, model and task whose trainings ran in more than one training precision (two machines, or
    an explicit `train.precision`): {study, model, task, seeds: {precision: [seeds]}, points, averaged}: `points`
    counts the training settings (all but precision and device), `averaged` those whose seeds mix
    precisions, which every figure and claim averages as one."""
    trainings = one_per_training(df)
    trainings = trainings[trainings[PRECISION].notna()].assign(
        study=trainings["study"].fillna("").astype(str)
    )
    settings = [c for c in SETTING_COLUMNS if c not in (PRECISION, "device")]
    out = []
    for (study, model, task), group in trainings.groupby(["study", "model", "task"], sort=True):
        if group[PRECISION].nunique() < 2:
            continue
        points = group.groupby(settings, dropna=False)[PRECISION].nunique()
        seeds = {
            str(p): sorted(int(s) for s in group.loc[group[PRECISION] == p, REPLICATE].unique())
            for p in sorted(group[PRECISION].unique())
        }
        out.append({"study": study, "model": model, "task": task, "seeds": seeds, "points": len(points),
                    "averaged": int((points > 1).sum())})  # fmt: skip
    return out


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
    """One figure, declared once: which rows it reads and how they split into points and panels, the studies
    that draw it, the function that draws a panel, and what the report says under it. Adding a figure is its
    (df, ax, selection) function and one entry of FIGURES; nothing here imports a plotting library."""

    select: Callable[[pd.DataFrame], pd.DataFrame]
    point: tuple[str, ...]  # with model and task, the columns that make one plotted point (or cell)
    panel: tuple[str, ...]  # one panel per distinct value of these
    sweeps: Callable[[pd.DataFrame], bool]  # for rows without a study: does the data vary this factor?
    draw: str  # the function drawing one panel: a name in analysis.plots, or "module:function"
    caption: str  # what the report says under it
    studies: tuple[str, ...] = ()  # the studies that draw it; the first is the one that measures its claims
    title: str | None = None  # above all panels; None: each panel titles itself
    panel_size: Callable[[pd.DataFrame], tuple[float, float]] = lambda rows: (6.8, 4.2)
    # more panel functions (named as `draw`) drawn right of `draw` on the same rows: one row of axes a panel
    beside: tuple[str, ...] = ()
    # cells of one trained model: its seeds are averaged whatever else the rows vary (no one-setting check)
    cells: bool = False


def block_size(df: pd.DataFrame) -> int:
    """The layers per block of a heatmap's rows (ablate.block; 1: every layer range). Rows of several sizes
    are drawn on the finest grid: a larger block's cells are cells of it."""
    sizes = df["block"].dropna() if "block" in df.columns else pd.Series(dtype=float)
    return int(sizes.min()) if len(sizes) else 1


def blocks(df: pd.DataFrame) -> list[tuple[int, int]]:
    """(first, last) layer of each block of a heatmap's rows, in order: (0, k-1), (k, 2k-1), ..., the last
    block ending at the last layer the rows name (shorter where k does not divide the layer count)."""
    return block_spans(block_size(df), int(df["last"].dropna().max()) + 1)


def heatmap_size(rows: pd.DataFrame) -> tuple[float, float]:
    """A heatmap panel's size in inches: its grid's rows and columns (layers, or blocks) at 0.45 each."""
    side = 0.45 * len(blocks(rows)) + 2.0
    return 1.2 * side, side + 0.3


def _only_adapters(df: pd.DataFrame) -> bool:
    return set(intact(df)["method"].dropna()) == {"adapters"}


def _any(select: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[pd.DataFrame], bool]:
    return lambda df: not select(df).empty


FIGURES: dict[str, Figure] = {
    "heatmap": Figure(
        ablated,
        ("first", "last"),
        PANEL_COLUMNS,
        _any(ablated),
        cells=True,
        draw="heatmap_plot",
        caption=(
            "Layer ablation (Figure 6): relative decrease in validation accuracy when the adapters of layers "
            "first..last are removed from the trained model, no retraining. Red is a loss, blue a gain; hatched "
            "cells: the 95% interval (validation examples and seeds resampled together) includes zero."
        ),
        studies=("layer_ablation", "controls", "recipe"),
        panel_size=heatmap_size,
    ),
    "init_scale": Figure(
        plain_adapters,
        ("init_std",),
        ("model",),
        lambda df: plain_adapters(df)["init_std"].nunique() > 1,
        draw="init_scale_plot",
        caption=(
            "Init scale (Figure 6, right): accuracy against the adapters' init std, mean ± 1 s.e.m. over seeds; "
            "dashed: the majority-class rate; red crosses: diverged runs."
        ),
        title="Adapter init scale (Houlsby et al. 2019, Fig. 6 right)",
        studies=("init_scale",),
    ),
    "bottleneck": Figure(
        plain_adapters,
        ("adapter_size",),
        ("model",),
        lambda df: _only_adapters(df) and plain_adapters(df)["adapter_size"].nunique() > 1,
        draw="bottleneck_plot",
        caption=(
            "Bottleneck size: accuracy against the adapter size m, mean ± 1 s.e.m. over seeds; the paper's sizes "
            "8, 64, 256 shaded."
        ),
        title="Adapter bottleneck size (Houlsby et al. 2019, Sec. 3.6)",
        studies=("bottleneck",),
    ),
    "tradeoff": Figure(
        all_methods,
        ("method", "adapter_size", "k", "lora_r", "trained_params"),
        ("model", "task"),
        lambda df: intact(df)["method"].nunique() > 1,
        draw="tradeoff_plot",
        caption=(
            "Trade-off (Figures 3/4): accuracy against the number of trained parameters, ±1 s.e.m. error bars; "
            "full fine-tuning as the horizontal line; head only (the classification head on the frozen encoder), "
            "where run, is the fewest parameters any method trains."
        ),
        title="Trained parameters vs accuracy (Houlsby et al. 2019, Figs. 3/4)",
        studies=("tradeoff",),
    ),
    "variants": Figure(
        variant_rows,
        ("variant",),
        ("model", "task"),
        lambda df: variant_rows(df)["variant"].nunique() > 1,
        draw="variants_plot",
        caption=(
            "Adapter variants: each seed (grey) and the mean ± 1 s.e.m.; the plain adapter as the line."
        ),
        title="Adapter variants (Houlsby et al. 2019, Sec. 3.6)",
        studies=("variants",),
        # one slot per variant, each wide enough for a slanted name
        panel_size=lambda rows: (max(6.8, 0.6 * rows["variant"].nunique() + 3.5), 4.8),
    ),
    "loss_curves": Figure(
        with_history,
        ("init_std", "adapter_size"),
        ("model", "task"),
        lambda df: curve_factor(with_history(df)) is not None,
        draw="loss_curves_plot",
        caption=(
            "Training loss against step, a 10-step running mean per seed (thin lines), one colour per init std σ "
            "(init-scale study) or adapter size m (bottleneck study); dashed: the plateau, the loss of predicting "
            "the training labels' frequencies (ln 2 for two balanced classes): a run that stays there learnt "
            "nothing beyond the class prior. The rows' escape_step says when each left it."
        ),
        title="Training loss per step",
        studies=("init_scale", "bottleneck"),
    ),
    "stability": Figure(
        with_stability,
        ("init_std", "adapter_size"),
        ("model", "task"),
        lambda df: curve_factor(with_stability(df)) is not None,
        draw="stability_plot",
        caption=(
            "Stability per setting: the step at which each seed's training left the plateau (its 20-step mean loss "
            "10% below the loss of predicting the class frequencies; a cross at its last step when it never did), "
            "and the s.d. of the seeds' validation accuracy (right axis)."
        ),
        title="Training stability: plateau escape and seed spread",
        studies=("init_scale", "bottleneck"),
        panel_size=lambda rows: (7.5, 5.0),
    ),
    "fragility": Figure(
        example_cells,
        ("first", "last"),
        PANEL_COLUMNS,
        _any(example_cells),
        cells=True,
        draw="fragility_length_plot",
        caption=(
            "Which examples the layer ranges break: (left) each validation example's fragility, the share of the "
            "heatmap's cells × seeds whose ablation flips it (lost: intact right, ablated wrong; or gained), "
            "against its length in words, the mean per length sixth with its 95% interval over examples; (right) "
            "per label, the share of cells × seeds that lose and that gain its examples (95% intervals over "
            "examples). The examples themselves: python -m analysis examples DIR [--cell F..L]."
        ),
        title="Fragility of the validation examples",
        studies=("layer_ablation",),
        panel_size=lambda rows: (6.0, 4.4),
        beside=("fragility_label_plot",),
    ),
    "heatmap_mean": Figure(
        mean_cells,
        ("first", "last"),
        PANEL_COLUMNS,
        _any(mean_cells),
        cells=True,
        draw="mean_heatmap_plot",
        caption=(
            "Mean replacement: relative decrease in validation accuracy when each adapter of layers first..last is "
            "replaced by its mean contribution over the validation tokens (measured on the intact model), not "
            "removed. Near 0: a constant shift does what the adapters do. Hatched: the 95% interval includes zero."
        ),
        title="Adapters replaced by their mean contribution",
        studies=("controls",),
        panel_size=heatmap_size,
    ),
    "heatmap_keep": Figure(
        keep_cells,
        ("first", "last"),
        PANEL_COLUMNS,
        _any(keep_cells),
        cells=True,
        draw="keep_heatmap_plot",
        caption=(
            "Keep one span: relative decrease in validation accuracy when only the adapters of layers first..last "
            "stay and every other layer's are removed. Near 0 (hatched: the 95% interval includes zero): that span "
            "alone suffices."
        ),
        title="Only the adapters of first..last kept",
        studies=("controls", "placement"),
        panel_size=heatmap_size,
    ),
    "alpha": Figure(
        scale_cells,
        ("first", "last", ALPHA),
        PANEL_COLUMNS,
        _any(scale_cells),
        cells=True,
        draw="alpha_plot",
        caption=(
            "Scaled contributions: accuracy when the adapters of a layer range add α times their contribution (α = "
            "0 removes them, α = 1 is the intact model), mean ± 1 s.e.m. over seeds; dashed: the majority-class "
            "rate; grey line: the intact model."
        ),
        title="Accuracy against the adapters' scaled contribution",
        studies=("controls",),
    ),
    "diagnostics": Figure(
        diagnosed,
        ("first", "last"),
        ("model", "task"),
        _any(diagnosed),
        cells=True,
        draw="diagnostics_plot",
        caption=(
            "What each layer's adapters do on the validation tokens of the intact model: the contribution ratio "
            "‖c‖/‖s‖ (solid) and the cosine distance 1 − cos(s, s + c) (dashed) per adapter position, mean ± 1 "
            "s.e.m. over seeds (log scale); grey bars (right axis): the relative decrease when that layer's "
            "adapters alone are removed, mean ± 1 s.e.m."
        ),
        title="Adapter contributions per layer and the single-layer drop",
        studies=("controls",),
        panel_size=lambda rows: (8.0, 5.0),
    ),
    "controls": Figure(
        control_rows,
        ("method", "first", "last", KIND, LAYERNORM),
        ("model", "task"),
        _has_controls,
        cells=True,
        draw="controls_plot",
        caption=(
            "Controls: validation accuracy with 95% intervals (validation examples and seeds resampled together) "
            "of the majority class, the head-only baseline (the classification head trained on the frozen "
            "encoder), every adapter removed (the trained LayerNorms kept, the pretrained ones put back, or each "
            "adapter replaced by its mean contribution) and the intact adapters."
        ),
        title="Controls: what removing every adapter leaves",
        studies=("controls",),
        panel_size=lambda rows: (7.4, 3.6),
    ),
    "recipe": Figure(
        recipe_cells,
        (*RECIPE_COLUMNS, "first", "last"),
        ("model", "task"),
        _recipes_vary,
        cells=True,
        draw="recipe_plot",
        caption=(
            "Where the adaptation happens, per training recipe: the relative decrease in validation accuracy when "
            "the adapters of the bottom half or of the top half of the layers are removed from the trained model "
            "(no retraining), with 95% intervals (validation examples and seeds resampled together, the heatmap "
            "cells' intervals). LN: which LayerNorms trained with the adapters; pooler: BERT's pooler trained with "
            "the classifier (AdapterHub's head)."
        ),
        title="Removing the bottom or the top half of the adapters, per training recipe",
        studies=("recipe",),
        panel_size=lambda rows: (
            8.0,
            1.9 + 0.5 * len(rows[[c for c in RECIPE_COLUMNS if c in rows]].drop_duplicates()),
        ),
    ),
    # cells=True: the adapted layers make the point (with the keep cells' span), so no one-setting check
    "placement": Figure(
        placement_rows,
        ("adapter_layers", "first", "last"),
        PLACEMENT_PANEL,
        _any(placement_rows),
        cells=True,
        draw="placement_layers_plot",
        caption=(
            "Adapter placement (AdapterDrop): (a) accuracy against the number k of layers with adapters, the top "
            "or the bottom k, trained so (retrained, solid) or kept from the all-layer training with every other "
            "layer's adapters removed (kept, dashed), mean ± 1 s.e.m. over seeds; (b) the retrained ones against "
            "their trained parameters and (c) against their measured training time (fit_seconds), the all-layer "
            "training starred."
        ),
        title="Adapter placement: removal against retraining",
        studies=("placement",),
        panel_size=lambda rows: (5.0, 4.6),
        beside=("placement_params_plot", "placement_time_plot"),
    ),
}
# The figures of the controls (what removing, replacing, scaling or keeping adapters does); with the heatmap of
# the plain removal, the figures of the `controls` study.
CONTROL_FIGURES = ("heatmap_mean", "heatmap_keep", "alpha", "diagnostics", "controls")


def study_figures() -> dict[str, tuple[str, ...]]:
    """The figures each study draws (conf/study/<name>.yaml -> figure names, as FIGURES declares them)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, figure in FIGURES.items():
        for study in figure.studies:
            out[study] = (*out.get(study, ()), name)
    return out


def figure_plan(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Which figures the rows allow, with the rows each draws: {"heatmap" | "init_scale" | ...: rows}.

    Rows of a known study go to that study's figures (those with rows). Rows without one (ad-hoc runs,
    sweeps outside a study) are inferred: each figure whose factor they vary, provided every plotted point is
    one setting (figures of one model's cells: any such cells). A figure a study already draws is not
    inferred again; a figure two studies draw gets the rows of both.
    """
    df = with_recipe(conform(df))
    study = df["study"].where(df["study"] != "")
    plan: dict[str, list[pd.DataFrame]] = {}
    drawn = study_figures()
    for name, figures in drawn.items():
        ours = df[(study == name).to_numpy(dtype=bool)]
        if ours.empty:
            continue
        for figure in figures:
            rows = FIGURES[figure].select(ours)
            if not rows.empty:
                plan.setdefault(figure, []).append(rows)
    loose = df[~study.isin(drawn).to_numpy()]
    for name, figure in FIGURES.items():
        if name in plan or loose.empty:
            continue
        rows = figure.select(loose)
        one_setting = figure.cells or not mixed_settings(rows, ["model", "task", *figure.point])
        if not rows.empty and figure.sweeps(loose) and one_setting:
            plan[name] = [rows]
    return {name: pd.concat(plan[name]) for name in FIGURES if name in plan}


def panel_rows(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows one panel of figure `name` reads; ValueError if there are none or they mix settings."""
    figure = FIGURES[name]
    rows = figure.select(conform(df))
    if rows.empty:
        raise ValueError(f"{name}: no rows to plot (none of the {len(df)} rows is one this figure reads)")
    several = {
        c: sorted(map(str, rows[c].unique())) for c in figure.panel if rows[c].nunique(dropna=False) > 1
    }
    if several:
        raise ValueError(f"{name}: one panel expected, but the rows mix {several}; draw one panel each")
    mixed = {} if figure.cells else mixed_settings(rows, ["model", "task", *figure.point])
    if mixed:
        raise ValueError(
            f"{name}: the seeds of one point differ in {mixed}; select one setting per point first"
        )
    return rows
