"""Trackers in whole sweeps on the tiny model: one run per job with its config and row; the training's steps
streamed by the job that trains, replayed once per sweep from the store when no job trains; the validation
metric every train.eval_every steps."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from e2e import CELLS, command, run
from test_trackers import _key, wandb_records

pytestmark = pytest.mark.sweeps

STEPS = 200  # the toy's training (e2e.TRAIN): the default cap
EVERY = 50


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_streams_the_training_then_replays_it_once_per_sweep(toy, tmp_path):
    pytest.importorskip("tensorboard")
    conf, cache, _ = toy
    for sweep in ("a", "b"):  # b: the training is stored, no job trains
        args = command(conf, tmp_path / sweep, tmp_path / "store", cache, *CELLS, "logger=tensorboard",
                       f"train.eval_every={EVERY}")  # fmt: skip
        done = run(args)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = pd.read_csv(tmp_path / sweep / "results.csv")
        assert rows["trained_now"].sum() == (sweep == "a")
        runs = {str(job): _scalars(tmp_path / sweep / "tensorboard" / str(job)) for job in rows["job_dir"]}
        assert len(runs) == len(rows) == 4
        with_history = [job for job, scalars in runs.items() if "train/loss" in scalars]
        assert len(with_history) == 1, with_history  # once per sweep, whichever job came first
        scalars = runs[with_history[0]]
        history = pd.read_csv(tmp_path / sweep / "histories" / f"{rows['train_key'].iloc[0]}.csv")
        assert [step for step, _ in scalars["train/loss"]] == list(range(STEPS))
        assert [v for _, v in scalars["train/loss"]] == pytest.approx(history["loss"].tolist(), rel=1e-6)
        evaluated = history.dropna(subset=["val_metric"])
        assert evaluated["step"].tolist() == [EVERY - 1, 2 * EVERY - 1, 3 * EVERY - 1, STEPS - 1]
        assert [v for _, v in scalars["train/val_metric"]] == pytest.approx(evaluated["val_metric"].tolist())
        # the last evaluation is the trained model's validation accuracy, which every row reports intact
        assert evaluated["val_metric"].iloc[-1] == pytest.approx(rows["intact_accuracy"].iloc[0])
        for job, scalars in runs.items():
            row = rows[rows["job_dir"].astype(str) == job].iloc[0]
            assert scalars["result/accuracy"] == [(0, pytest.approx(row["accuracy"]))]


def test_mlflow_and_wandb_hold_one_run_per_job(toy, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    conf, cache, _ = toy
    for logger in ("mlflow", "wandb"):
        args = command(conf, tmp_path / logger, tmp_path / "store", cache, *CELLS, f"logger={logger}",
                       "logger.project=toy")  # fmt: skip
        done = run(args)
        assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "mlflow" / "results.csv")

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
    assert len(runs) == len(rows) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    accuracy = {(r.data.params["ablate.first"], r.data.params["ablate.last"]): r.data.metrics["result/accuracy"]
                for r in runs}  # fmt: skip
    assert accuracy == {
        (str(int(f)), str(int(la))): pytest.approx(a)
        for f, la, a in rows[["first", "last", "accuracy"]].values
    }
    histories = [len(client.get_metric_history(r.info.run_id, "train/loss")) for r in runs]
    assert sorted(histories) == [0, 0, 0, STEPS]  # the stored training, replayed by one job

    files = sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 4
    steps = []
    for file in files:
        records = wandb_records(file)
        steps.append(sum(r.WhichOneof("record_type") == "history" for r in records))
        summary = {}
        for r in records:
            if r.WhichOneof("record_type") == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        assert math.isfinite(summary["result/accuracy"])
    assert sorted(steps) == [0, 0, 0, STEPS]
