"""Adapters: placement, identity at zero, ablation switch, freezing, counts, init, and the staged forward."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import HIDDEN, padded_batch, perturb_layernorms_and_head, tiny_model
from omegaconf import OmegaConf
from torch import nn

from ablation.adapters import (
    POSITION_PATHS,
    Adapter,
    AdapterLayer,
    adapter_slots,
    count_parameters,
    encoder_layers,
    freeze_for_adapters,
    inject_adapters,
    set_ablation,
)
from ablation.config import ModelConfig
from ablation.models import Stages, load_model

L = 3
SIZE = 8


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def adapter_model(family: str, init_std: float = 0.5, size: int = SIZE) -> nn.Module:
    model = tiny_model(family, num_layers=L)
    perturb_layernorms_and_head(model)
    inject_adapters(model, family, size, init_std=init_std)
    return model


def test_zero_up_projection_is_identity(family):
    model = tiny_model(family, num_layers=L)
    batch = padded_batch(family)
    before = logits(model, batch)
    slots = inject_adapters(model, family, SIZE, init_std=1.0)
    assert not torch.equal(logits(model, batch), before)  # big adapters do change the output
    with torch.no_grad():
        for slot in slots.values():
            slot.adapter.up.weight.zero_()
            slot.adapter.up.bias.zero_()
    assert torch.equal(logits(model, batch), before)


def test_ablating_every_layer_gives_the_base_model(family):
    model = tiny_model(family, num_layers=L)
    perturb_layernorms_and_head(model)  # "same trained LayerNorms and head" must mean something
    base = copy.deepcopy(model)
    batch = padded_batch(family)
    inject_adapters(model, family, SIZE, init_std=0.5)
    assert not torch.equal(logits(model, batch), logits(base, batch))
    set_ablation(model, range(L))
    assert all(not slot.active for slot in adapter_slots(model).values())
    assert torch.equal(logits(model, batch), logits(base, batch))
    set_ablation(model)  # back to intact
    assert all(slot.active for slot in adapter_slots(model).values())
    assert not torch.equal(logits(model, batch), logits(base, batch))


@pytest.mark.parametrize("position", ["attention", "output"])
def test_ablating_one_position_switches_only_that_slot(family, position):
    model = adapter_model(family)
    set_ablation(model, [1], position)
    inactive = {key for key, slot in adapter_slots(model).items() if not slot.active}
    assert inactive == {(1, position)}
    set_ablation(model, [0, 2], "both")
    inactive = {key for key, slot in adapter_slots(model).items() if not slot.active}
    assert inactive == {(0, "attention"), (0, "output"), (2, "attention"), (2, "output")}


def test_freeze_for_adapters_trains_adapters_layernorms_and_head(family):
    model = adapter_model(family)
    freeze_for_adapters(model)
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        n
        for n in names
        if ".adapter." in n or n.rsplit(".", 2)[-2] == "LayerNorm" or n.startswith("classifier.")
    }
    assert trainable == expected
    prefix = model.base_model_prefix
    assert f"{prefix}.embeddings.LayerNorm.weight" in trainable
    assert f"{prefix}.embeddings.LayerNorm.bias" in trainable
    assert any(n.startswith("classifier.") for n in trainable)
    assert sum(".adapter." in n for n in trainable) == 2 * L * 4  # 2 slots x (2 weights + 2 biases)
    assert f"{prefix}.embeddings.word_embeddings.weight" not in trainable
    assert not any(".attention.self." in n or ".attention.attn." in n for n in trainable)
    assert not any(".intermediate." in n for n in trainable)
    if family == "bert":
        assert {"bert.pooler.dense.weight", "bert.pooler.dense.bias"} <= set(names)
        assert not any(n.startswith("bert.pooler.") for n in trainable)


def test_adapter_parameter_count():
    for d, m in [(32, 8), (768, 64), (5, 1)]:
        adapter = Adapter(d, m)
        assert sum(p.numel() for p in adapter.parameters()) == 2 * m * d + d + m


def test_count_parameters(family):
    model = adapter_model(family)
    freeze_for_adapters(model)
    counts = count_parameters(model)
    named = dict(model.named_parameters())
    assert counts["total"] == sum(p.numel() for p in named.values())
    assert counts["trainable"] == sum(p.numel() for p in named.values() if p.requires_grad)
    assert counts["adapters"] == 2 * L * (2 * SIZE * HIDDEN + HIDDEN + SIZE)
    assert counts["adapters"] == sum(p.numel() for n, p in named.items() if ".adapter." in n)
    assert counts["layernorm"] == sum(p.numel() for n, p in named.items() if "LayerNorm" in n)
    assert counts["head"] == sum(p.numel() for n, p in named.items() if n.startswith("classifier."))
    assert counts["other"] == 0
    assert counts["trainable"] == counts["adapters"] + counts["layernorm"] + counts["head"]


def test_two_adapters_per_layer_at_documented_paths(family):
    assert POSITION_PATHS["bert"] == {"attention": "attention.output.dropout", "output": "output.dropout"}
    assert POSITION_PATHS["mpnet"] == {"attention": "attention.dropout", "output": "output.dropout"}
    model = tiny_model(family, num_layers=L)
    paths = POSITION_PATHS[family]
    originals = {
        (i, pos): layer.get_submodule(path)
        for i, layer in enumerate(encoder_layers(model))
        for pos, path in paths.items()
    }
    assert all(type(m) is nn.Dropout for m in originals.values())
    slots = inject_adapters(model, family, SIZE)
    assert set(slots) == {(i, pos) for i in range(L) for pos in ("attention", "output")}
    assert sum(isinstance(m, AdapterLayer) for m in model.modules()) == 2 * L
    prefix = model.base_model_prefix
    for (i, pos), original in originals.items():
        module = model.get_submodule(f"{prefix}.encoder.layer.{i}.{paths[pos]}")
        assert isinstance(module, AdapterLayer)
        assert module is slots[(i, pos)]
        assert module.base_layer is original
        assert (module.layer, module.position) == (i, pos)
        assert isinstance(module.adapter, Adapter)
    assert adapter_slots(model) == slots
    with pytest.raises(RuntimeError, match="already injected"):
        inject_adapters(model, family, SIZE)


def test_init_is_truncated_normal_with_zero_biases():
    std = 1e-2
    torch.manual_seed(0)
    adapter = Adapter(256, 256, init_std=std)
    # std of N(0, 1) truncated at +-2: sqrt(1 - 2 a phi(a) / (Phi(a) - Phi(-a))) with a = 2
    phi = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    truncated = math.sqrt(1 - 4 * phi / mass)
    assert truncated == pytest.approx(0.8796, abs=1e-4)
    for linear in (adapter.down, adapter.up):
        w = linear.weight.detach().double()
        assert w.numel() == 256 * 256
        assert abs(w.mean().item()) < 3e-4
        assert w.abs().max().item() <= 2 * std
        assert w.std().item() == pytest.approx(std * truncated, rel=0.03)
        assert torch.count_nonzero(linear.bias) == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stages_forward_equals_model_forward(family, precision):
    model = adapter_model(family, init_std=0.1)
    set_ablation(model, [1], "attention")  # a mixed state: some slots on, one off
    batch = padded_batch(family)
    stages = Stages(model, family)
    assert stages.num_layers == L
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.no_grad()
    with torch.no_grad(), autocast:
        staged = stages.forward(batch)
        direct = model(**batch).logits
    assert staged.shape == (4, model.config.num_labels)
    assert staged.dtype == direct.dtype
    assert torch.equal(staged, direct)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm_l6", "mpnet_base"])
def test_real_model_with_adapters_stage_forward(name):
    """The offline pretrained encoders load, take adapters at the documented paths and stage exactly."""
    conf = Path(__file__).resolve().parents[1] / "conf" / "model" / f"{name}.yaml"
    cfg = ModelConfig(**OmegaConf.to_container(OmegaConf.load(conf)))
    cache = os.environ.get("ABLATION_CACHE", str(Path.home() / ".cache" / "ablation"))
    model, tokenizer = load_model(cfg, num_labels=2, cache=cache)
    model.eval()
    assert len(encoder_layers(model)) == cfg.num_layers
    slots = inject_adapters(model, cfg.family, 64, init_std=1e-2)
    assert len(slots) == 2 * cfg.num_layers
    assert all(type(slot.base_layer) is nn.Dropout for slot in slots.values())
    freeze_for_adapters(model)
    counts = count_parameters(model)
    d = model.config.hidden_size
    assert counts["adapters"] == 2 * cfg.num_layers * (2 * 64 * d + d + 64)
    enc = tokenizer(["a gripping, well acted film", "dull"], padding=True, return_tensors="pt")
    batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        assert torch.equal(Stages(model, cfg.family).forward(batch), model(**batch).logits)


def test_first_token_only_last_layer_matches_the_full_layer(family):
    """The evaluator's last layer: feed-forward at position 0 only, the position every head reads."""
    model = adapter_model(family, init_std=0.1)
    batch = padded_batch(family)
    stages = Stages(model, family)
    with torch.no_grad():
        h, ctx = stages.embed(batch)
        for i in range(L - 1):
            h = stages.layer(i, h, ctx)
        full = stages.layer(L - 1, h, ctx)
        first = stages.layer(L - 1, h, ctx, first_token_only=True)
        assert first.shape == (4, 1, model.config.hidden_size)
        assert torch.allclose(first, full[:, :1], atol=1e-6, rtol=1e-5)
        assert torch.allclose(stages.head(first), model(**batch).logits, atol=1e-6, rtol=1e-5)
