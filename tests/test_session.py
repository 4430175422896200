"""The per-process session: training is reported by the first job only; cell predictions are cached on disk."""

from __future__ import annotations

import numpy as np

from ablation.config import AblateConfig
from ablation.session import Session


class CountingEvaluator:
    """Stands in for Evaluator: counts what it is asked to compute."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def intact(self) -> np.ndarray:
        self.calls.append(("intact",))
        return np.array([0, 1, 1])

    def cell(self, first: int, last: int, positions: str) -> np.ndarray:
        self.calls.append((first, last, positions))
        return np.array([first, last, 0])


def _session(tmp_path, trained_now: bool) -> Session:
    return Session(cfg=None, key="k", evaluator=CountingEvaluator(), counts={}, train_metrics={},
                   trained_now=trained_now, cell_dir=tmp_path)  # fmt: skip


def test_training_is_reported_once(tmp_path):
    session = _session(tmp_path, trained_now=True)
    assert [session.report_training() for _ in range(3)] == [True, False, False]
    assert not _session(tmp_path, trained_now=False).report_training()


def test_predictions_are_computed_once_and_reused_from_disk(tmp_path):
    first = _session(tmp_path, trained_now=False)
    preds, computed = first.predictions(AblateConfig(2, 4))
    assert computed and preds.tolist() == [2, 4, 0]
    assert first.predictions(None)[1] and (tmp_path / "intact.npy").exists()
    again = _session(tmp_path, trained_now=False)  # a re-run in a new process
    preds, computed = again.predictions(AblateConfig(2, 4))
    assert not computed and preds.tolist() == [2, 4, 0]
    assert again.predictions(AblateConfig(2, 4, "attention"))[1]  # another position is another cell
    assert again.evaluator.calls == [(2, 4, "attention")]
