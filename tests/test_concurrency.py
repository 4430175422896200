"""Parallel jobs that need the same trained parameters train them once (a file lock per training key)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from ablation.train import HISTORY, train_once


def _job(folder: str, log: str) -> bool:
    """One job: train (slowly, so the others arrive while it holds the lock) unless the store has the key."""
    folder_path = Path(folder)

    def fit() -> dict:
        with open(log, "a") as fh:
            fh.write("trained\n")
        time.sleep(1.0)
        folder_path.mkdir()
        (folder_path / "trained.safetensors").write_bytes(b"x")
        (folder_path / HISTORY).write_text("step,loss,grad_norm,lr\n")  # a complete entry has its history
        return {"by": "fit"}

    def load() -> dict:
        assert (folder_path / "trained.safetensors").read_bytes() == b"x"  # whole, never half-written
        return {"by": "load"}

    _, trained = train_once(folder_path, fit, load)
    return trained


def test_four_parallel_jobs_train_one_key_once(tmp_path):
    folder, log = tmp_path / "store" / "key", tmp_path / "trainings.log"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        trained = pool.starmap(_job, [(str(folder), str(log))] * 4)
    assert sorted(trained) == [False, False, False, True]
    assert log.read_text().splitlines() == ["trained"]


def _meeting_job(folder: str, log: str) -> int:
    """Train a key, waiting inside the training until the other job is training too (or 60 s pass)."""
    folder_path = Path(folder)

    def fit() -> dict:
        with open(log, "a") as fh:
            fh.write("start\n")
        deadline = time.monotonic() + 60
        while Path(log).read_text().count("start") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        folder_path.mkdir()
        (folder_path / "trained.safetensors").write_bytes(b"x")
        (folder_path / HISTORY).write_text("step,loss,grad_norm,lr\n")
        return {"met": Path(log).read_text().count("start")}

    metrics, _ = train_once(folder_path, fit, lambda: {})
    return metrics["met"]


def test_two_keys_train_in_parallel(tmp_path):
    """Different keys hold different locks: each training sees the other one running at the same time."""
    log = tmp_path / "trainings.log"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        met = pool.starmap(_meeting_job, [(str(tmp_path / "store" / k), str(log)) for k in ("a", "b")])
    assert met == [2, 2]  # had one lock serialised them, the first would have waited alone until the deadline
