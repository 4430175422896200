"""How stable training was, per setting of the init-scale and bottleneck studies: from each row's training
measures (ablation.train.stability: escape_step, loss_spread, largest_grad_norm) and its accuracy, across the
seeds of one setting. No plotting here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.select import curve_factor, plain_adapters

COLUMNS = (
    "model",
    "task",
    "factor",
    "value",
    "seeds",
    "accuracy_mean",
    "accuracy_sd",
    "at_majority",
    "diverged",
    "escaped",
    "escape_step_median",
    "loss_spread_mean",
    "largest_grad_norm",
)
AT_MAJORITY = 0.01  # a seed "at the majority class": accuracy at most 1 point above its rate (as the claims)


def stability_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, task and setting (the init std where it varies, else the adapter size) of the plain
    adapter's intact rows: the seeds, the mean and s.d. of their accuracy (%), how many stayed at the majority
    class, diverged, and left the plateau, the median step they left it at, the mean loss spread over the last
    steps and the largest gradient norm. Empty (with COLUMNS) when the rows vary neither factor."""
    rows = plain_adapters(df)
    factor = curve_factor(rows) if not rows.empty else None
    if factor is None:
        return pd.DataFrame(columns=list(COLUMNS))
    out = []
    for (model, task, value), group in rows.groupby(["model", "task", factor], sort=True):
        accuracy = 100.0 * group["accuracy"].astype(float)
        escaped = group["escape_step"].dropna().astype(float)
        out.append(
            [
                model,
                task,
                factor,
                float(value),
                len(group),
                accuracy.mean(),
                accuracy.std(ddof=1) if len(group) > 1 else np.nan,
                int((group["accuracy"] <= group["majority_rate"] + AT_MAJORITY).sum()),
                int(group["diverged"].fillna(False).astype(bool).sum()),
                len(escaped),
                escaped.median() if len(escaped) else np.nan,
                group["loss_spread"].astype(float).mean(),
                group["largest_grad_norm"].astype(float).max(),
            ]
        )
    return pd.DataFrame(out, columns=list(COLUMNS))
