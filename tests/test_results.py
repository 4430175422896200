"""Result rows: one JSON + predictions per job, and the sweep table rebuilt from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ablation.results import (
    ADAPTER_COLUMNS,
    COLUMNS,
    ResultRow,
    column_kinds,
    majority_rate,
    relative_decrease,
    update_table,
    versions,
    write_job,
)


def _row(first: int | None, last: int | None, accuracy: float, **changes) -> ResultRow:
    """A row with every field set; the ones a test does not care about get plausible values."""
    values = {name: None for name in COLUMNS}
    values.update(study="layer_ablation", task="t", model="m", method="adapters", variant="plain", seed=0,
                  positions="both", metric_name="accuracy", n_eval=4, diverged=False, train_steps=2,
                  planned_steps=2, trained_params=10, total_params=100, lr=1e-3, train_precision="fp32",
                  eval_precision="fp32", train_key="k", trained_now=False, cell_computed=True, train_seconds=0.0,
                  eval_seconds=0.1, job_seconds=0.2, job_dir=".", code_version="c", majority_rate=0.5)  # fmt: skip
    values.update(first=first, last=last, accuracy=accuracy, intact_accuracy=0.8, metric=accuracy,
                  intact_metric=0.8, relative_decrease=relative_decrease(accuracy, 0.8))  # fmt: skip
    values.update(changes)
    return ResultRow(**values)


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
    assert tuple(df.columns) == COLUMNS  # the schema, in its order; nested extras stay in result.json
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


def test_schema_kinds_and_adapter_columns():
    kinds = column_kinds()
    assert tuple(kinds) == COLUMNS
    assert kinds["accuracy"] == "float" and kinds["k"] == "int" and kinds["diverged"] == "bool"
    assert kinds["task"] == kinds["variant"] == "text"
    assert set(ADAPTER_COLUMNS) <= set(COLUMNS)


def test_rows_sort_numerically_within_a_study(tmp_path):
    for job, size in enumerate([64, 8, 512, 1]):
        write_job(tmp_path / str(job), _row(None, None, 0.7, study="bottleneck", adapter_size=size), {}, {})
    assert pd.read_csv(update_table(tmp_path))["adapter_size"].tolist() == [1, 8, 64, 512]


def test_majority_rate():
    assert majority_rate(np.array([0, 1, 1, 2])) == 0.5
    assert majority_rate(np.array([2, 2, 2])) == 1.0


def test_adapter_columns_are_empty_without_adapters():
    from ablation.config import AdapterConfig
    from ablation.run import adapter_columns

    assert adapter_columns(None) == dict.fromkeys(ADAPTER_COLUMNS)
    cols = adapter_columns(AdapterConfig(size=8, positions=["output"], placement="parallel"))
    assert cols["variant"] == "positions=output,placement=parallel"
    assert (cols["adapter_size"], cols["adapter_positions"], cols["adapter_placement"]) == (
        8,
        "output",
        "parallel",
    )
