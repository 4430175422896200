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

import numpy as np
import pandas as pd

from ablation.config import EXACT
from analysis.claims import CLAIMS, evaluate_claims
from analysis.select import ESTIMATE, PANEL_COLUMNS, cells, varying, with_ablation

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


def paired_cells(df: pd.DataFrame, estimate: str) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(panel name, exact cells, estimated cells) of the paper's removal, per panel holding estimated cells
    (its exact cells empty where none were computed)."""
    exact, guessed = cells(df), cells(df, estimate=estimate)
    both = pd.concat([exact, guessed])
    split = [c for c in varying(both, PANEL_COLUMNS) if c not in ("model", "task", "method")]
    keys = [c for c in ("model", "task", "method", *split) if c in both.columns]
    out = []
    for _, rows in both.groupby(keys, sort=True, dropna=False):
        a, b = rows[rows.index.isin(exact.index)], rows[rows.index.isin(guessed.index)]
        if len(b):
            out.append((panel_name(rows, split), a, b))
    return out


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


def comparison(df: pd.DataFrame) -> pd.DataFrame:
    """One row per estimated panel against its exact cells (COLUMNS)."""
    rows = []
    for estimate in estimators(df):
        for name, exact, guessed in paired_cells(df, estimate):
            if exact.empty:
                continue
            a, b = _by_cell(exact), _by_cell(guessed)
            common = a.index.intersection(b.index)
            a, b = a[common], b[common]
            kept, judged, changed = _verdicts(df, exact, guessed)
            exact_s, estimate_s = _seconds(exact), _seconds(guessed)
            rows.append(
                {
                    "panel": name,
                    "estimate": estimate,
                    "cells": len(common),
                    "spearman": a.corr(b, method="spearman") if len(common) > 2 else np.nan,
                    "largest_error": float((a - b).abs().max() * 100),
                    f"top{TOP}_overlap": len(_top(a, TOP) & _top(b, TOP)) if len(common) >= TOP else np.nan,
                    "verdicts_kept": f"{kept} of {judged}" if judged else "none judged",
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


def confirm_command(cells_: list[tuple[int, int]], overrides: str = "") -> str:
    """The user's command that computes these cells exactly: the first and last layers they use (a grid
    covering them; the cells of first > last are dropped by the sweep)."""
    firsts = ",".join(str(f) for f in sorted({f for f, _ in cells_}))
    lasts = ",".join(str(last) for last in sorted({last for _, last in cells_}))
    return f"python -m ablation.run -m {overrides + ' ' if overrides else ''}ablate.first={firsts} ablate.last={lasts}"
