"""The analysis of LoRA rows: their own heatmap panels, their own trade-off series, and claims about
adapters that skip them and say so."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from test_controls_analysis import LAYERS, SEEDS, axes, controls_sweep, runs, single_drop, wrong

from ablation.results import COLUMNS
from analysis.claims import evaluate_claims
from analysis.collect import conform
from analysis.plots import tradeoff_plot
from analysis.select import ablated, split_panels

LORA = {"method": "lora", "variant": None, "adapter_size": None, "init_std": None, "lora_r": 8,
        "lora_target": "query+value", "lora_alpha": 8.0}  # fmt: skip


def _with_lora(path):
    """The adapters' single-layer and all-removed cells, and a LoRA heatmap whose cells cost far more (30% of
    the examples each): read with the adapters', they would set every layer-ablation claim's number."""
    sweep = controls_sweep(path, study=None, skip=("head", "pretrained", "mean", "keep", "scale"))
    for seed in SEEDS:
        intact = wrong(sweep.truth, 0.1, offset=seed)
        for layer in range(LAYERS):
            lost = wrong(intact, 0.3, offset=200)
            sweep.job(intact, lost, seed=seed, first=layer, last=layer, train_key=f"lora{seed}", **LORA)
        sweep.job(intact, lost, seed=seed, first=0, last=LAYERS - 1, train_key=f"lora{seed}", **LORA)
    pd.DataFrame(sweep.rows).to_csv(path / "results.csv", index=False)
    return runs(path)


def test_lora_cells_are_their_own_heatmap_panel(tmp_path):
    panels = split_panels(ablated(_with_lora(tmp_path / "s")))
    assert sorted(p["method"].iloc[0] for p in panels) == ["adapters", "lora"]


def test_claims_about_adapters_skip_the_lora_rows_and_say_so(tmp_path):
    df = _with_lora(tmp_path / "s")
    claims = evaluate_claims(df).set_index("claim")
    row = claims.loc["single-layer removal costs little"]
    assert "rows of method lora skipped: the claim is about adapters" in row["measured"]
    # the adapters' numbers alone: the largest single-layer drop is the top layer's, 100 x 0.08 / 0.9
    adapters_only = evaluate_claims(df[df["method"] == "adapters"]).set_index("claim")
    assert row["estimate"] == pytest.approx(
        adapters_only.loc["single-layer removal costs little", "estimate"]
    )
    assert row["estimate"] == pytest.approx(100 * single_drop(LAYERS - 1) / 0.9, abs=1.0)


def test_the_tradeoff_draws_lora_ranks_as_their_own_series():
    base = {c: None for c in COLUMNS}
    settings = [("adapters", None, 0.8, 50_000), ("lora", 1, 0.75, 9_000), ("lora", 8, 0.82, 70_000),
                ("full", None, 0.85, 10**8)]  # fmt: skip
    rows = [
        {
            **base,
            "study": "tradeoff",
            "task": "rte",
            "model": "tiny",
            "method": method,
            "seed": seed,
            "accuracy": accuracy + 0.01 * seed,
            "trained_params": params,
            "majority_rate": 0.5,
            "diverged": False,
            "variant": "plain" if method == "adapters" else None,
            "adapter_size": 64 if method == "adapters" else None,
            "lora_r": r,
        }  # fmt: skip
        for seed in (0, 1)
        for method, r, accuracy, params in settings
    ]
    ax = axes()
    tradeoff_plot(conform(pd.DataFrame(rows)), ax)
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    lora = bars["LoRA (rank r)"].lines[0]
    assert list(lora.get_xdata()) == [9_000, 70_000]
    assert list(lora.get_ydata()) == pytest.approx([75.5, 82.5])
    labels = [t.get_text() for t in ax.texts]
    assert "r=1" in labels and "8" in labels
