"""Training histories: one entry per step, stored with the trained parameters; the stability measures."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import random_encoded, tiny_model

from ablation.adapters import inject_adapters
from ablation.config import AdapterConfig, TrainConfig
from ablation.data import collate
from ablation.methods import freeze
from ablation.train import (
    ESCAPE_WINDOW,
    HISTORY,
    HISTORY_COLUMNS,
    escape_step,
    load_history,
    plateau_loss,
    save_trained,
    stability,
    train,
    train_once,
    validation_metric,
)


def _model(family: str):
    model = tiny_model(family, num_layers=2, seed=0)
    inject_adapters(model, family, AdapterConfig(size=8, init_std=1e-2))
    freeze(model, "adapters")
    return model


def test_the_history_has_one_entry_per_step_taken(family):
    data = random_encoded(family, n=56, seed=2)
    cfg = TrainConfig(lr=1e-2, max_steps=7, batch_size=8, warmup_ratio=0.3, precision="fp32")
    metrics = train(_model(family), data, cfg, seed=0)
    history = metrics["history"]
    assert history["step"] == list(range(7)) and metrics["steps"] == 7
    assert all(len(values) == 7 for values in history.values())
    # the learning rate each step used: 2 warm-up steps (int(0.3 * 7)), then linear decay to zero
    want = [1e-2 * f for f in (1 / 2, 2 / 2, 5 / 5, 4 / 5, 3 / 5, 2 / 5, 1 / 5)]
    assert history["lr"] == pytest.approx(want)
    assert all(math.isfinite(x) and x > 0 for x in history["grad_norm"] + history["loss"])
    assert metrics["final_loss"] == pytest.approx(np.mean(history["loss"]))
    assert metrics["largest_grad_norm"] == max(history["grad_norm"])
    assert metrics["plateau_loss"] == pytest.approx(plateau_loss(data.labels, 3))


def test_plateau_loss_is_the_entropy_of_the_label_frequencies():
    assert plateau_loss(np.array([0, 1] * 50), 2) == pytest.approx(math.log(2))
    assert plateau_loss(np.array([0, 1, 2] * 10), 3) == pytest.approx(math.log(3))
    assert plateau_loss(np.array([0] * 3 + [1]), 2) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    )
    assert plateau_loss(np.array([1, 1]), 3) == 0.0  # one class: nothing to learn beyond the prior


def test_escape_step_of_synthetic_histories():
    plateau = math.log(2)
    rng = np.random.default_rng(0)
    for scatter in (0.03, 0.05):  # a plateau's per-step scatter (the batch's class mix) is not an escape
        assert escape_step(list(plateau + scatter * rng.standard_normal(400)), plateau) is None
    drop = [plateau] * 60 + [0.3] * 140  # leaves the plateau at step 60
    # the 20-step mean falls below 0.9 ln 2 = 0.624 once 4 of its 20 steps sit at 0.3: (16 ln 2 + 1.2)/20 = 0.614
    assert escape_step(drop, plateau) == 63
    late = [plateau] * 150 + [0.2] * 50
    assert escape_step(late, plateau) == 152  # 3 steps at 0.2: (17 ln 2 + 0.6)/20 = 0.619
    assert escape_step([0.1] * (ESCAPE_WINDOW - 1), plateau) is None  # shorter than the window
    assert escape_step([plateau] * 20 + [float("nan")] * 20, plateau) is None  # a diverged run never escapes
    measures = stability({"loss": drop, "grad_norm": [1.0, float("inf"), 3.0]}, plateau)
    assert measures["escape_step"] == 63 and measures["largest_grad_norm"] == 3.0
    assert measures["loss_spread"] == pytest.approx(0.0, abs=1e-12) and measures["plateau_loss"] == plateau


def test_the_history_is_stored_with_the_trained_parameters_and_entries_without_one_retrain(family, tmp_path):
    data = random_encoded(family, n=32, seed=2)
    model = _model(family)
    metrics = train(model, data, TrainConfig(max_steps=4, batch_size=8, precision="fp32"), seed=0)
    history = metrics.pop("history")
    folder = tmp_path / "key"
    save_trained(model, folder, {}, {}, metrics, history)
    stored = load_history(folder)
    assert list(stored.columns) == list(HISTORY_COLUMNS)
    assert stored["loss"].tolist() == pytest.approx(history["loss"]) and len(stored) == 4
    assert stored["val_metric"].isna().all()  # train.eval_every unset
    stored.drop(columns="val_metric").to_csv(folder / HISTORY, index=False)  # an older entry's history
    assert list(load_history(folder).columns) == list(HISTORY_COLUMNS)
    calls = []
    assert (
        train_once(folder, lambda: calls.append("fit") or {}, lambda: calls.append("load") or {})[1] is False
    )
    (folder / HISTORY).unlink()  # an entry of an older version: its history is missing
    assert (
        train_once(folder, lambda: calls.append("fit") or {}, lambda: calls.append("load") or {})[1] is True
    )
    assert calls == ["load", "fit"]


def test_validation_every_n_steps_is_in_the_history_and_leaves_the_training_unchanged(family):
    data, val = random_encoded(family, n=56, seed=2), random_encoded(family, n=24, seed=3)
    plain = TrainConfig(lr=1e-2, max_steps=7, batch_size=8, precision="fp32")
    models, runs, seen = [], [], []
    for cfg in (plain, dataclasses.replace(plain, eval_every=3)):
        model = _model(family)
        evaluate = lambda model=model: validation_metric(model, val, "accuracy", 5, "fp32", "cpu")  # noqa: E731
        runs.append(train(model, data, cfg, seed=0, evaluate=evaluate, on_step=seen.append))
        models.append(model)
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p, q), name  # the evaluations consumed no random numbers and changed no weight
    without, with_eval = (run["history"] for run in runs)
    assert with_eval["loss"] == without["loss"] and all(math.isnan(x) for x in without["val_metric"])
    evaluated = [
        step for step, x in zip(with_eval["step"], with_eval["val_metric"], strict=True) if not math.isnan(x)
    ]
    assert evaluated == [2, 5, 6]  # every 3rd step and the last
    # the last evaluation is the trained model's accuracy, from plain forwards one example at a time
    with torch.no_grad():
        preds = [models[1](**_one(val, i)).logits.argmax(-1).item() for i in range(len(val.labels))]
    assert with_eval["val_metric"][-1] == pytest.approx(np.mean(np.array(preds) == val.labels))
    assert runs[1]["validation_seconds"] > 0 and runs[0]["validation_seconds"] == 0
    # on_step saw each entry as it was taken: the first training's 7, then the second's
    assert [entry["step"] for entry in seen] == list(range(7)) * 2
    assert [entry["val_metric"] for entry in seen[7:]] == pytest.approx(with_eval["val_metric"], nan_ok=True)
    with pytest.raises(ValueError, match="pass `evaluate`"):
        train(_model(family), data, dataclasses.replace(plain, eval_every=3), seed=0)


def _one(data, i: int) -> dict:
    batch = collate(data, np.array([i]))
    batch.pop("labels")
    return batch
