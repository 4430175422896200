"""An interrupted training run resumes from its checkpoint and ends exactly where an uninterrupted one does."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from conftest import random_encoded, tiny_model

from ablation import train as train_mod
from ablation.adapters import inject_adapters
from ablation.config import AdapterConfig, TrainConfig
from ablation.methods import freeze, trained_state


def _model(family: str) -> torch.nn.Module:
    model = tiny_model(family, num_layers=2, seed=0)
    inject_adapters(model, family, AdapterConfig(size=8, init_std=1e-2))
    freeze(model, "adapters")
    return model


def test_resume_matches_uninterrupted(family, tmp_path, monkeypatch):
    data = random_encoded(family, n=48, seed=2, num_labels=3)
    cfg = TrainConfig(lr=1e-2, epochs=1.0, batch_size=8, precision="fp32")  # 6 steps, dropout on

    torch.manual_seed(0)
    reference = _model(family)
    torch.manual_seed(1)
    uninterrupted = train_mod.train(reference, data, cfg, seed=0)

    cfg = dataclasses.replace(cfg, checkpoint_seconds=0.0)  # checkpoint after every step
    checkpoint = tmp_path / "run.partial.pt"
    torch.manual_seed(0)
    interrupted = _model(family)
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(interrupted, data, cfg, seed=0, checkpoint=checkpoint)
    assert torch.load(checkpoint, weights_only=False)["step"] == 3
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)

    torch.manual_seed(0)
    resumed = _model(family)  # a fresh process: only the checkpoint carries state
    metrics = train_mod.train(resumed, data, cfg, seed=0, checkpoint=checkpoint)
    assert metrics["resumed_at_step"] == 3 and metrics["steps"] == 6
    want, got = trained_state(reference), trained_state(resumed)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    # the resumed history continues the killed one's: the same six steps, the same values
    resumed_history, whole = (pd.DataFrame(m["history"]) for m in (metrics, uninterrupted))
    assert len(resumed_history) == 6
    pd.testing.assert_frame_equal(resumed_history, whole)  # NaN (no validation) equals NaN here
