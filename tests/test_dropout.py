"""FastDropout: nn.Dropout's distribution and gradient, and its replacement in a model."""

from __future__ import annotations

import pytest
import torch
from conftest import padded_batch, tiny_model
from torch import nn

from ablation.adapters import AdapterLayer, inject_adapters
from ablation.config import AdapterConfig
from ablation.dropout import FastDropout, use_fast_dropout


def test_eval_mode_and_zero_p_are_identity():
    x = torch.randn(4, 5, 6)
    assert FastDropout(0.3).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_and_unbiased_mean(p):
    torch.manual_seed(0)
    x = torch.ones(1_000_003)  # not a multiple of 4: the last random integer is only partly used
    y = FastDropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    # binomial standard error is at most 5e-4 here; 2^-16 is the quantisation of p
    assert dropped == pytest.approx(p, abs=2.5e-3)
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)
    zero, kept = torch.unique(y).tolist()
    assert zero == 0.0
    assert kept == pytest.approx(1 / (1 - p), rel=1e-4)


def test_masks_differ_between_calls_and_follow_the_torch_seed():
    x = torch.ones(64, 32)
    drop = FastDropout(0.5).train()
    torch.manual_seed(1)
    a, b = drop(x), drop(x)
    torch.manual_seed(1)
    assert torch.equal(drop(x), a)
    assert not torch.equal(a, b)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(0)
    x = torch.randn(8, 16, requires_grad=True)
    y = FastDropout(0.25).train()(x)
    y.sum().backward()
    kept = y != 0
    assert torch.equal(x.grad == 0, ~kept)
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.75))
    assert torch.allclose(y[kept], x[kept] / 0.75)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_p_names_the_value(p):
    with pytest.raises(ValueError, match=rf"p={p}"):
        FastDropout(p)


@pytest.mark.parametrize("family", ["bert", "mpnet", "roberta"])  # the decoders here have no dropout modules
def test_use_fast_dropout_replaces_every_dropout_wrapped_ones_included(family):
    model = tiny_model(family)
    inject_adapters(model, family, AdapterConfig(size=4))
    before = sum(type(m) is nn.Dropout for m in model.modules())
    assert before > 0
    assert use_fast_dropout(model) == before
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert all(isinstance(m.base_layer, FastDropout) for m in model.modules() if isinstance(m, AdapterLayer))
    assert use_fast_dropout(model) == 0
    batch = padded_batch(family)
    with torch.no_grad():
        model.eval()
        eval_out = model(**batch).logits
        model.train()
        torch.manual_seed(0)
        a = model(**batch).logits
        b = model(**batch).logits
    assert not torch.equal(a, b)  # dropout is active in training
    assert not torch.equal(a, eval_out)
