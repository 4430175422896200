"""How far an estimated heatmap (ablate.estimate) can be trusted: each estimated panel against the exact one.

Per panel (model, task, method, recipe; seeds averaged as the heatmaps average them), over the cells both
hold: the Spearman correlation of the relative decrease, the largest absolute error (points of %), how many of
the exact heatmap's 10 most damaging cells the estimate also ranks among its 10, whether each heatmap claim
keeps its verdict when judged on the estimate, and the evaluation time of each. The estimate's own k worst
cells, exactly, are "estimate, then confirm": the sweep that computes them is `confirm_command`.

Estimated rows are never averaged or judged with exact ones (`analysis.select.cells` reads exact cells only);
here they are judged on their own, as if they were exact, and the verdicts compared.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from ablation.config import ABLATE_KINDS, EXACT
from analysis.claims import CLAIMS, evaluate_claims
from analysis.select import ALPHA, ESTIMATE, KIND, PANEL_COLUMNS, CellChoice, varying, with_ablation

TOP = 10  # the most damaging cells compared
VALUE = "relative_decrease"
COLUMNS = (
    "panel",
    "estimate",
    "cells",
    "spearman",
    "largest_error",
    f"top{TOP}_overlap",
    "verdicts_kept",
    "verdicts_changed",
    "exact_seconds",
    "estimate_seconds",
    "time_ratio",
)


def estimators(df: pd.DataFrame) -> list[str]:
    """The estimates the table's cells hold besides exact ones."""
    rows = with_ablation(df.dropna(subset=["first", "last"]))
    return sorted(set(rows[ESTIMATE]) - {EXACT})


def panel_name(rows: pd.DataFrame, columns: list[str]) -> str:
    """'minilm_l6 · rotten_tomatoes · adapters' and the other varying panel columns' values."""
    first = rows.iloc[0]
    return " · ".join(str(first[c]) for c in ["model", "task", "method", *columns] if c in rows.columns)


def ablations(df: pd.DataFrame, estimate: str) -> list[CellChoice]:
    """The ablations (kind, and alpha for scale) whose cells `estimate` holds, the paper's removal first."""
    rows = with_ablation(df.dropna(subset=["first", "last"]))
    rows = rows[(rows[ESTIMATE] == estimate).to_numpy(dtype=bool)]
    out = []
    for kind in ABLATE_KINDS:
        chosen = rows[(rows[KIND] == kind).to_numpy(dtype=bool)]
        alphas = sorted(set(chosen[ALPHA].dropna().astype(float))) if kind == "scale" else [None]
        out += [CellChoice(kind, alpha=alpha) for alpha in alphas] if len(chosen) else []
    return out


def paired_cells(df: pd.DataFrame, estimate: str) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(panel name, exact cells, estimated cells) per panel and ablation holding estimated cells (its exact
    cells empty where none were computed); the name says the ablation where it is not the paper's removal."""
    out = []
    for choice in ablations(df, estimate):
        exact, guessed = choice(df), replace(choice, estimate=estimate)(df)
        both = pd.concat([exact, guessed])
        split = [c for c in varying(both, PANEL_COLUMNS) if c not in ("model", "task", "method")]
        keys = [c for c in ("model", "task", "method", *split) if c in both.columns]
        for _, rows in both.groupby(keys, sort=True, dropna=False):
            a, b = rows[rows.index.isin(exact.index)], rows[rows.index.isin(guessed.index)]
            if len(b):
                name = " · ".join(n for n in (panel_name(rows, split), choice.label()) if n)
                out.append((name, a, b))
    return out


def all_pairs(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """`paired_cells` of every estimate the table holds, in estimator order."""
    return [pair for estimate in estimators(df) for pair in paired_cells(df, estimate)]


def overrides(guessed: pd.DataFrame) -> str:
    """The ablate.* options that make these cells' ablation ('' for the paper's removal)."""
    kind = guessed[KIND].iloc[0]
    parts = [] if kind == "zero" else [f"ablate.kind={kind}"]
    if kind == "scale":
        parts.append(f"ablate.alpha={float(guessed[ALPHA].iloc[0]):g}")
    return " ".join(parts)


def _by_cell(rows: pd.DataFrame) -> pd.Series:
    return rows.groupby(["first", "last"])[VALUE].mean().astype(float)


def _top(values: pd.Series, k: int) -> set:
    """The k largest values' cells (ties: the narrower, then the lower cell first, so the set is fixed)."""
    order = sorted(values.items(), key=lambda kv: (-kv[1], kv[0][1] - kv[0][0], kv[0]))
    return {cell for cell, _ in order[:k]}


def _seconds(rows: pd.DataFrame) -> float:
    """The evaluation time of the cells these rows computed (0 when every cell was read from the cache)."""
    computed = rows[rows["cell_computed"].astype(bool)] if "cell_computed" in rows.columns else rows
    return float(computed["eval_seconds"].sum()) if "eval_seconds" in rows.columns else float("nan")


def _verdicts(df: pd.DataFrame, exact: pd.DataFrame, guessed: pd.DataFrame) -> tuple[int, int, list[str]]:
    """The heatmap claims judged on the exact cells and on the estimated ones in their place: (kept, judged,
    the claims whose verdict changed, 'claim: exact -> estimate')."""
    others = df.drop(index=exact.index.union(guessed.index))
    as_exact = guessed.assign(**{ESTIMATE: EXACT})
    names = {c.name for c in CLAIMS if c.figure == "heatmap"}
    judged = []
    for rows in (pd.concat([others, exact]), pd.concat([others, as_exact])):
        table = evaluate_claims(rows)
        table = table[table["claim"].isin(names) & (table["verdict"] != "no data")]
        panel = table["panel"].str.startswith(f"{exact['model'].iloc[0]} · {exact['task'].iloc[0]}")
        judged.append(table[panel.to_numpy(dtype=bool)].set_index(["claim", "panel"])["verdict"])
    a, b = judged
    common = a.index.intersection(b.index)
    changed = [
        f"{claim}: {a[(claim, p)]} -> {b[(claim, p)]}"
        for claim, p in common
        if a[(claim, p)] != b[(claim, p)]
    ]
    return len(common) - len(changed), len(common), changed


def comparison(df: pd.DataFrame, pairs: list[tuple[str, pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """One row per estimated panel of `pairs` (`all_pairs(df)`) against its exact cells (COLUMNS)."""
    rows = []
    for name, exact, guessed in pairs:
        estimate = guessed[ESTIMATE].iloc[0]
        if exact.empty:
            continue
        a, b = _by_cell(exact), _by_cell(guessed)
        common = a.index.intersection(b.index)
        a, b = a[common], b[common]
        # the heatmap claims are about removal: judged only on its cells
        removal = guessed[KIND].iloc[0] == "zero"
        kept, judged, changed = _verdicts(df, exact, guessed) if removal else (0, 0, [])
        exact_s, estimate_s = _seconds(exact), _seconds(guessed)
        rows.append(
            {
                "panel": name,
                "estimate": estimate,
                "cells": len(common),
                "spearman": a.corr(b, method="spearman") if len(common) > 2 else np.nan,
                "largest_error": float((a - b).abs().max() * 100),
                f"top{TOP}_overlap": len(_top(a, TOP) & _top(b, TOP)) if len(common) >= TOP else np.nan,
                "verdicts_kept": f"{kept} of {judged}"
                if judged
                else ("none judged" if removal else "not judged"),
                "verdicts_changed": "; ".join(changed),
                "exact_seconds": exact_s,
                "estimate_seconds": estimate_s,
                "time_ratio": exact_s / estimate_s if exact_s > 0 and estimate_s > 0 else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def worst_cells(guessed: pd.DataFrame, k: int) -> list[tuple[int, int]]:
    """The k cells the estimate ranks most damaging (largest relative decrease), worst first."""
    order = sorted(_by_cell(guessed).items(), key=lambda kv: (-kv[1], kv[0][1] - kv[0][0], kv[0]))
    return [cell for cell, _ in order[:k]]


def confirmation(exact: pd.DataFrame, guessed: pd.DataFrame, k: int) -> pd.DataFrame:
    """ "Estimate, then confirm": the estimate's k worst cells, worst first, with their estimated and exact
    relative decrease in % (exact NaN where the cell was not computed)."""
    measured, estimated = _by_cell(exact), _by_cell(guessed)
    cells_ = worst_cells(guessed, k)
    return pd.DataFrame(
        {
            "first": [f for f, _ in cells_],
            "last": [last for _, last in cells_],
            "estimated": [100 * estimated[c] for c in cells_],
            "exact": [100 * measured[c] if c in measured.index else np.nan for c in cells_],
        }
    )


def confirm_command(cells_: list[tuple[int, int]], options: str = "") -> str:
    """The user's command that computes these cells exactly: the first and last layers they use (a grid
    covering them; the cells of first > last are dropped by the sweep)."""
    firsts = ",".join(str(f) for f in sorted({f for f, _ in cells_}))
    lasts = ",".join(str(last) for last in sorted({last for _, last in cells_}))
    return f"python -m ablation.run -m {options + ' ' if options else ''}ablate.first={firsts} ablate.last={lasts}"
