"""Experiment trackers: what each writes is what its own library reads back; a missing package is one line."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path

import pandas as pd
import pytest

from ablation.config import ConfigError, LoggerConfig
from ablation.trackers import Tracker, flatten, open_tracker

CONFIG = {"model": {"name": "tiny"}, "adapter": {"init_std": 0.001, "positions": ["attention", "output"]}}
# three history entries: the validation metric only at the last (train.eval_every)
STEPS = [
    {"step": 0, "loss": 0.7, "grad_norm": 1.5, "lr": 1e-3, "val_metric": math.nan},
    {"step": 1, "loss": 0.6, "grad_norm": 1.2, "lr": 9e-4, "val_metric": math.nan},
    {"step": 2, "loss": 0.5, "grad_norm": 0.9, "lr": 8e-4, "val_metric": 0.75},
]
ROW = {"accuracy": 0.8, "relative_decrease": 0.05, "diverged": False, "task": "toy", "escape_step": None}


def _log(tracker: Tracker) -> None:
    with tracker:
        tracker.log_config(CONFIG)
        tracker.log_history(pd.DataFrame(STEPS))
        tracker.log_metrics(ROW)


def test_flatten_gives_dotted_keys():
    assert flatten(CONFIG) == {
        "model.name": "tiny",
        "adapter.init_std": 0.001,
        "adapter.positions": ["attention", "output"],
    }


def test_logger_none_is_the_default_and_does_nothing(tmp_path):
    tracker = open_tracker(LoggerConfig(), tmp_path, "0", "job")
    assert type(tracker) is Tracker
    _log(tracker)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_a_missing_package_is_one_line_naming_the_extra(monkeypatch, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda pkg, *a: None if pkg == name else real(pkg, *a))
    with pytest.raises(ConfigError, match=rf"logger={name} needs the {name} package") as err:
        LoggerConfig(name=name)
    assert "[loggers]" in str(err.value) and "\n" not in str(err.value)


def test_bad_logger_values_name_the_field():
    with pytest.raises(ConfigError, match="logger='comet' is not allowed"):
        LoggerConfig(name="comet")
    with pytest.raises(ConfigError, match="logger.mode='cloud' is not allowed"):
        LoggerConfig(name="none", mode="cloud")


def test_tensorboard_writes_what_its_event_reader_reads(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log(open_tracker(LoggerConfig(name="tensorboard"), tmp_path, "7", "ablate.first=0"))
    events = EventAccumulator(str(tmp_path / "tensorboard" / "7"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars["train/loss"] == [(s["step"], pytest.approx(s["loss"])) for s in STEPS]
    assert scalars["train/lr"] == [(s["step"], pytest.approx(s["lr"])) for s in STEPS]
    assert scalars["train/val_metric"] == [(2, pytest.approx(0.75))]  # only where it was evaluated
    assert scalars["result/accuracy"] == [(0, pytest.approx(0.8))]
    assert scalars["result/diverged"] == [(0, 0.0)]
    assert "result/task" not in scalars and "result/escape_step" not in scalars  # not numbers
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "adapter.init_std: 0.001" in text and "job: ablate.first=0" in text


def _mlflow(tmp_path: Path, failed: bool = False):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    tracker = open_tracker(LoggerConfig(name="mlflow", project="study"), tmp_path, "3", "seed=1")
    if failed:
        with pytest.raises(RuntimeError), tracker:
            raise RuntimeError("the job failed")
    else:
        _log(tracker)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study")
    return client, client.search_runs([experiment.experiment_id])


def test_mlflow_writes_what_its_client_reads_from_the_local_store(tmp_path):
    client, runs = _mlflow(tmp_path)
    (run,) = runs
    assert run.info.run_name == "seed=1" and run.info.status == "FINISHED"
    assert run.data.params["adapter.init_std"] == "0.001" and run.data.params["model.name"] == "tiny"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s["step"], s["loss"]) for s in STEPS]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/val_metric")] == [
        (2, 0.75)
    ]
    assert run.data.metrics["result/accuracy"] == 0.8 and "result/task" not in run.data.metrics
    # a second job of the sweep joins the same experiment
    open_tracker(LoggerConfig(name="mlflow", project="study"), tmp_path, "4", "seed=2").close()
    assert len(client.search_runs([run.info.experiment_id])) == 2


def test_mlflow_marks_a_job_that_raised_failed(tmp_path):
    _, (run,) = _mlflow(tmp_path, failed=True)
    assert run.info.status == "FAILED"


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (`run-<id>.wandb`): W&B's LevelDB-style log of its own protobuf
    `Record`s (7-byte file header ':W&B', 0xBEE1, version; 32 KiB blocks; 7-byte chunk headers)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    records, pos, pending, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # the block's zero padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_writes_a_run_file_with_config_history_and_summary(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # no account: offline
    _log(open_tracker(LoggerConfig(name="wandb", project="study"), tmp_path, "5", "seed=0"))
    # run.finish() only asks W&B's service to close the run file (wandb 0.31 publishes the request without
    # waiting), so the file may still be unwritten here; teardown waits for the service, as exit does
    wandb.teardown()
    (file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(file)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "exit" in kinds
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "study" and run.display_name == "seed=0"
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update({_key(i): json.loads(i.value_json) for i in r.config.update})
    assert config["adapter"]["init_std"] == 0.001
    rows = [
        {_key(i): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [(row["_step"], row["train/loss"]) for row in rows] == [(s["step"], s["loss"]) for s in STEPS]
    assert [row.get("train/val_metric") for row in rows] == [None, None, 0.75]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    assert summary["result/accuracy"] == 0.8 and summary["result/diverged"] == 0
