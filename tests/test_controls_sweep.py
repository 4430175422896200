"""The controls study end to end on the tiny model: every kind's jobs, the head baseline, the diagnostics,
the report's section; the kinds' identities hold in the table; a re-run trains and computes nothing."""

from __future__ import annotations

import pandas as pd
import pytest
from e2e import command, leftovers, run

pytestmark = pytest.mark.sweeps

L = 3  # the tiny model's layers
JOBS = 3 * L * (L + 1) // 2 + 1 + 3 * 5 + 1  # zero/mean/keep heatmaps, pretrained cell, alpha curves, head


def test_the_controls_study_on_the_tiny_model(toy, tmp_path):
    conf, cache, _ = toy
    args = command(conf, tmp_path / "a", tmp_path / "store", cache, "study=controls", "task=toy")
    done = run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "a" / "results.csv")
    assert len(rows) == JOBS and (rows["study"] == "controls").all()
    assert rows["trained_now"].sum() == rows["train_key"].nunique() == 2  # adapters and the head, once each
    adapters = rows[rows["method"] == "adapters"]
    assert set(adapters["ablate_kind"]) == {"zero", "mean", "keep", "scale"}
    assert all((tmp_path / "a" / str(job) / "diagnostics.csv").exists() for job in adapters["job_dir"])
    head = rows[rows["method"] == "head"]
    assert len(head) == 1 and head["first"].isna().all()
    assert head["trained_params"].iloc[0] < adapters["trained_params"].iloc[0]

    # the kinds' identities, read from the table: alpha 1 is intact, alpha 0 is removal, keeping all is intact
    def accuracy(kind: str, first: int, last: int, **more) -> float:
        match = (adapters["ablate_kind"] == kind) & (adapters["first"] == first) & (adapters["last"] == last)
        for column, value in {"ablate_layernorm": "trained", **more}.items():
            match &= adapters[column] == value
        assert match.sum() == 1, (kind, first, last, more)
        return float(adapters.loc[match, "accuracy"].iloc[0])

    intact = float(adapters["intact_accuracy"].iloc[0])
    for first, last in [(0, L - 1), (0, L // 2 - 1), (L // 2, L - 1)]:
        assert accuracy("scale", first, last, alpha=1.0) == intact
        assert accuracy("scale", first, last, alpha=0.0) == accuracy("zero", first, last)
    assert accuracy("keep", 0, L - 1) == intact
    assert accuracy("zero", 0, L - 1) != intact  # the toy's adapters matter: the identities have teeth

    # each training's history beside the table: one row per step, and the row's stability measures from it
    for key, steps in rows.groupby("train_key")["train_steps"].first().items():
        history = pd.read_csv(tmp_path / "a" / "histories" / f"{key}.csv")
        assert history["step"].tolist() == list(range(steps))
    assert rows["plateau_loss"].notna().all() and rows["largest_grad_norm"].notna().all()

    page = (tmp_path / "a" / "report.html").read_text()
    assert "What the adapters do" in page
    for figure in ("heatmap", "heatmap_mean", "heatmap_keep", "alpha", "diagnostics", "controls"):
        assert (tmp_path / "a" / f"{figure}.png").stat().st_size > 0, figure
    assert leftovers(tmp_path) == []

    again = run(command(conf, tmp_path / "b", tmp_path / "store", cache, "study=controls", "task=toy"))
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = pd.read_csv(tmp_path / "b" / "results.csv")
    assert len(rerun) == JOBS and not rerun["trained_now"].any() and not rerun["cell_computed"].any()
