"""Result rows: one JSON + predictions per job, the table each job adds its row to, and the table rebuilt."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ablation.config import AdapterConfig, MethodConfig, ModelConfig, RunConfig, TaskConfig
from ablation.keys import CONFIG_COLUMNS, config_columns
from ablation.results import (
    COLUMNS,
    column_types,
    majority_rate,
    rebuild_table,
    record_row,
    relative_decrease,
    versions,
    write_job,
)

ADAPTER_COLUMNS = [c for c in CONFIG_COLUMNS if c.startswith("adapter_")] + [
    "variant",
    "adapter_size",
    "init_std",
]


def _row(first: int | None, last: int | None, accuracy: float, **changes) -> dict:
    """A row with every field set; the ones a test does not care about get plausible values."""
    values = {name: None for name in COLUMNS}
    values.update(study="layer_ablation", task="t", model="m", method="adapters", variant="plain", seed=0,
                  positions="both", metric_name="accuracy", n_eval=4, diverged=False, train_steps=2,
                  planned_steps=2, trained_params=10, total_params=100, lr=1e-3, train_precision="fp32",
                  eval_precision="fp32", train_key="k", trained_now=False, cell_computed=True, train_seconds=0.0,
                  fit_seconds=0.0, eval_seconds=0.1, job_seconds=0.2, job_dir=".", code_version="c", majority_rate=0.5,
                  examples="toy-0123456789ab")  # fmt: skip
    values.update(first=first, last=last, accuracy=accuracy, intact_accuracy=0.8, metric=accuracy,
                  intact_metric=0.8, relative_decrease=relative_decrease(accuracy, 0.8))  # fmt: skip
    values.update(changes)
    return values


def test_relative_decrease():
    assert relative_decrease(0.6, 0.8) == pytest.approx(0.25)
    assert relative_decrease(0.8, 0.8) == 0.0
    assert np.isnan(relative_decrease(0.5, 0.0))


def test_sweep_table_grows_per_job_and_is_rebuilt_in_layer_order(tmp_path):
    labels = np.array([0, 1, 1, 0])
    for job, (first, last, acc) in enumerate([(1, 2, 0.5), (0, 0, 0.75), (0, 2, 0.25)]):
        preds = {"labels": labels, "intact": labels, "ablated": 1 - labels}
        row = _row(first, last, acc, job_dir=str(job))
        write_job(tmp_path / str(job), row, {"config": {"seed": 0}}, preds)
        record_row(tmp_path / "results.csv", row)
        assert len(pd.read_csv(tmp_path / "results.csv")) == job + 1  # a row as each job finishes
    rebuilt = pd.read_csv(rebuild_table(tmp_path))
    assert list(zip(rebuilt["first"], rebuilt["last"], strict=True)) == [(0, 0), (0, 2), (1, 2)]
    assert tuple(rebuilt.columns) == COLUMNS  # the schema, in its order; nested extras stay in result.json
    assert rebuilt["relative_decrease"].tolist() == pytest.approx([0.0625, 0.6875, 0.375])
    saved = np.load(tmp_path / "1" / "predictions.npz")
    assert np.array_equal(saved["ablated"], 1 - labels) and saved["ablated"].dtype == np.int16


def test_a_job_run_again_replaces_its_row(tmp_path):
    table = tmp_path / "results.csv"
    record_row(table, _row(0, 0, 0.5, job_dir="0"))
    record_row(table, _row(0, 1, 0.5, job_dir="1", variant="norm=layernorm,depth=2"))  # a comma in a field
    lines = table.read_text().splitlines()
    record_row(table, _row(0, 0, 0.75, job_dir="0"))
    df = pd.read_csv(table)
    assert sorted(df["job_dir"].astype(str)) == ["0", "1"]
    assert df.set_index("job_dir").loc[0, "accuracy"] == 0.75
    assert lines[2] in table.read_text().splitlines()  # the other job's line is kept as it was


def test_appended_rows_read_as_the_rebuilt_table(tmp_path):
    rows = [_row(None, None, 0.7, job_dir="0", method="top_k", k=3, variant=None),
            _row(1, 2, 0.5, job_dir="1", diverged=True, diverged_step=4)]  # fmt: skip
    for row in rows:
        write_job(tmp_path / row["job_dir"], row, {}, {})
        record_row(tmp_path / "results.csv", row)
    grown = (tmp_path / "results.csv").read_text().splitlines()
    rebuilt = rebuild_table(tmp_path).read_text().splitlines()
    assert sorted(grown) == sorted(rebuilt)  # the same text: k as 3 (not 3.0), empty cells for missing values


def test_single_run_table(tmp_path):
    row = _row(3, 3, 0.7)
    write_job(tmp_path, row, {}, {"labels": np.zeros(2, int)})
    assert len(pd.read_csv(rebuild_table(tmp_path))) == 1


def test_versions_name_code_and_packages():
    v = versions()
    assert {"python", "torch", "transformers", "code"} <= v.keys()
    assert v["code"]  # a commit hash (+dirty) in a checkout, or says why not


def test_schema_kinds_and_adapter_columns():
    kinds = column_types()
    assert tuple(kinds) == COLUMNS
    assert kinds["accuracy"] == "float" and kinds["k"] == "int" and kinds["diverged"] == "bool"
    assert kinds["task"] == kinds["variant"] == "text"
    assert set(ADAPTER_COLUMNS) <= set(COLUMNS)


def test_rows_sort_numerically_within_a_study(tmp_path):
    for job, size in enumerate([64, 8, 512, 1]):
        row = _row(None, None, 0.7, study="bottleneck", adapter_size=size, job_dir=str(job))
        write_job(tmp_path / str(job), row, {}, {})
    assert pd.read_csv(rebuild_table(tmp_path))["adapter_size"].tolist() == [1, 8, 64, 512]


def test_majority_rate():
    assert majority_rate(np.array([0, 1, 1, 2])) == 0.5
    assert majority_rate(np.array([2, 2, 2])) == 1.0


def _run(**changes) -> RunConfig:
    return RunConfig(task=TaskConfig(name="t", artifact="rotten-tomatoes"),
                     model=ModelConfig(name="m", artifact="all-minilm-l6-v2"), **changes)  # fmt: skip


def test_adapter_columns_are_empty_without_adapters():
    cols = config_columns(_run(method=MethodConfig("top_k", 2)))
    assert all(cols[c] is None for c in ADAPTER_COLUMNS) and cols["k"] == 2
    cols = config_columns(_run(adapter=AdapterConfig(size=8, positions=["output"], placement="parallel")))
    assert cols["variant"] == "positions=output,placement=parallel"
    assert (cols["adapter_size"], cols["adapter_positions"], cols["adapter_placement"]) == (
        8,
        "output",
        "parallel",
    )
    assert list(cols) == list(CONFIG_COLUMNS)
