"""Hydra's joblib and submitit launchers run our sweeps: one training per key, the sequential table.

Each test runs whole sweeps of the tiny model in subprocesses (a few seconds of imports per process).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from e2e import CELLS, command, leftovers, run, table
from pandas.testing import assert_frame_equal

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

pytestmark = pytest.mark.sweeps


def _store_keys(store) -> list[str]:
    return sorted(p.name for p in store.iterdir() if (p / "trained.safetensors").exists())


@pytest.mark.parametrize(
    "launcher",
    [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["hydra/launcher=submitit_local"]],
    ids=["joblib-2", "submitit_local-4"],
)
def test_parallel_jobs_train_once_and_match_the_sequential_table(toy, tmp_path, launcher):
    conf, cache, sequential = toy
    reference = table(sequential)
    assert len(reference) == 4 and reference["accuracy"].nunique() > 1  # cells differ: the check has teeth
    done = run(command(conf, tmp_path / "sweep", tmp_path / "store", cache, *CELLS, *launcher))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert rows["trained_now"].sum() == 1  # four jobs in parallel workers, one training
    assert len(_store_keys(tmp_path / "store")) == 1
    assert rows["cell_computed"].sum() >= 1  # the group's cells, computed by whichever job came first
    assert_frame_equal(table(tmp_path / "sweep"), reference, check_exact=True)
    assert (tmp_path / "sweep" / "report.html").exists() and (tmp_path / "sweep" / "heatmap.png").exists()
    assert leftovers(tmp_path) == []


def test_two_seeds_under_joblib_train_side_by_side(toy, tmp_path):
    """Two keys, two workers: the trainings overlap in time, each in its own process."""
    conf, cache, _ = toy
    args = command(conf, tmp_path / "sweep", tmp_path / "store", cache, "seed=0,1", "train.epochs=40",
                   "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")  # fmt: skip
    done = run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = _store_keys(tmp_path / "store")
    assert len(keys) == 2
    metrics = [json.loads((tmp_path / "store" / k / "metrics.json").read_text()) for k in keys]
    assert metrics[0]["pid"] != metrics[1]["pid"]
    (a0, a1), (b0, b1) = ((m["started_at"], m["finished_at"]) for m in metrics)
    assert max(a0, b0) < min(a1, b1), metrics  # the two training intervals overlap
    assert pd.read_csv(tmp_path / "sweep" / "results.csv")["trained_now"].sum() == 2


def test_the_end_of_sweep_is_a_callback_that_can_be_switched_off(toy, tmp_path):
    """The table is rebuilt and the report written by the callback; without its report part, only the table."""
    conf, cache, sequential = toy
    args = command(
        conf,
        tmp_path / "sweep",
        tmp_path / "store",
        cache,
        *CELLS,
        "hydra.callbacks.end_of_sweep.report=null",
    )
    done = run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Table: " in done.stdout + done.stderr and "Report: " not in done.stdout + done.stderr
    assert_frame_equal(table(tmp_path / "sweep"), table(sequential), check_exact=True)
    assert (
        not (tmp_path / "sweep" / "report.html").exists()
        and not (tmp_path / "sweep" / "heatmap.png").exists()
    )


def test_a_failed_job_is_listed_and_the_sweep_still_ends_with_its_table_and_report(toy, tmp_path):
    """One seed's training raises: the other seed's jobs finish, the end of the sweep writes the table and the
    report listing the failed jobs with their error, and the command exits 1; the same command without the
    fault then finishes the sweep, recomputing nothing that finished."""
    conf, cache, _ = toy
    args = command(conf, tmp_path / "sweep", tmp_path / "store", cache, *CELLS, "seed=0,1")
    fault = """
        import ablation.session as s
        real = s.train
        def train(model, data, cfg, seed, *a, **k):
            if seed == 1:
                raise RuntimeError("planted fault in the training of seed 1")
            return real(model, data, cfg, seed, *a, **k)
        s.train = train
    """
    done = run(args, fault)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "4 job(s) failed" in done.stderr and "planted fault in the training of seed 1" in done.stderr
    failed = json.loads((tmp_path / "sweep" / "failed_jobs.json").read_text())
    assert [f["job_num"] for f in failed] == [4, 5, 6, 7]
    assert all(f["error"] == "RuntimeError: planted fault in the training of seed 1" for f in failed)
    rows = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert len(rows) == 4 and (rows["seed"] == 0).all()
    page = (tmp_path / "sweep" / "report.html").read_text()
    assert "Failed jobs (4)" in page and "planted fault in the training of seed 1" in page
    again = run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "sweep" / "failed_jobs.json").read_text()) == []
    rows = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert len(rows) == 8 and rows.groupby("seed")["trained_now"].sum().tolist() == [0, 1]
