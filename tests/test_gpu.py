"""On CUDA: the evaluator, its sharded path and training run on the device. Skipped where torch sees no GPU
(`python -m pytest -m gpu` on a machine with one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_encoded
from test_evaluate import CELLS, make_evaluator

from ablation.config import TrainConfig
from ablation.evaluate import Evaluator
from ablation.precision import resolve_device, resolve_precision
from ablation.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _on_cuda(ev: Evaluator, precision: str, memory_bytes: float = float("inf")) -> Evaluator:
    ev.stages.model.to("cuda")
    return Evaluator(ev.stages, ev.data, 8, precision, "cuda", memory_bytes)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cells_on_cuda_equal_a_plain_forward_on_cuda(family, precision):
    ev = _on_cuda(make_evaluator(family, precision), precision)
    assert ev.batches[0]["input_ids"].is_cuda
    for first, last in CELLS:
        assert np.array_equal(ev.cell(first, last), ev.from_scratch(first, last)), (first, last)


def test_sharded_on_cuda_equals_unsharded(family):
    whole = _on_cuda(make_evaluator(family, "bf16"), "bf16")
    want = dict(whole.predict([None, *CELLS]))
    budget = 1.5 * max(whole.state_bytes(b) for b in range(len(whole.batches)))
    sharded = Evaluator(whole.stages, whole.data, 8, "bf16", "cuda", budget)
    assert sharded.sharded
    got = dict(sharded.predict([None, *CELLS]))
    assert all(np.array_equal(got[c], want[c]) for c in want)


def test_training_on_cuda_and_auto_resolution(tmp_path):
    assert resolve_device("auto") == "cuda"
    assert resolve_precision("auto", "cuda", tmp_path)[0] == "bf16"
    ev = make_evaluator("bert", "fp32")
    model = ev.stages.model.to("cuda")
    for name, p in model.named_parameters():
        p.requires_grad = "adapter" in name or "classifier" in name
    data = random_encoded("bert", n=48, seed=2)
    metrics = train(model, data, TrainConfig(lr=1e-3, batch_size=8, precision="bf16"), seed=0, device="cuda")
    assert metrics["steps"] == 6 and np.isfinite(metrics["final_loss"])
