"""Result rows: one JSON + predictions per job, and the sweep table rebuilt from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ablation.results import relative_decrease, update_table, versions, write_job


def _row(first: int, last: int, accuracy: float) -> dict:
    return {"task": "t", "model": "m", "seed": 0, "first": first, "last": last, "accuracy": accuracy,
            "intact_accuracy": 0.8, "relative_decrease": relative_decrease(accuracy, 0.8)}  # fmt: skip


def test_relative_decrease():
    assert relative_decrease(0.6, 0.8) == pytest.approx(0.25)
    assert relative_decrease(0.8, 0.8) == 0.0
    assert np.isnan(relative_decrease(0.5, 0.0))


def test_sweep_table_has_one_row_per_job_in_layer_order(tmp_path):
    labels = np.array([0, 1, 1, 0])
    for job, (first, last, acc) in enumerate([(1, 2, 0.5), (0, 0, 0.75), (0, 2, 0.25)]):
        preds = {"labels": labels, "intact": labels, "ablated": 1 - labels}
        write_job(tmp_path / str(job), _row(first, last, acc), {"config": {"seed": 0}}, preds)
        table = update_table(tmp_path)
        assert len(pd.read_csv(table)) == job + 1  # rewritten as each job finishes
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(zip(df["first"], df["last"], strict=True)) == [(0, 0), (0, 2), (1, 2)]
    assert "config" not in df.columns  # nested extras stay in result.json
    assert df["relative_decrease"].tolist() == pytest.approx([0.0625, 0.6875, 0.375])
    saved = np.load(tmp_path / "1" / "predictions.npz")
    assert np.array_equal(saved["ablated"], 1 - labels) and saved["ablated"].dtype == np.int16


def test_single_run_table(tmp_path):
    write_job(tmp_path, _row(3, 3, 0.7), {}, {"labels": np.zeros(2, int)})
    assert len(pd.read_csv(update_table(tmp_path))) == 1


def test_versions_name_code_and_packages():
    v = versions()
    assert {"python", "torch", "transformers", "code"} <= v.keys()
    assert v["code"]  # a commit hash (+dirty) in a checkout, or says why not
