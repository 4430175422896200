"""Adapters and their variants: placement, identity at zero, ablation switch, removal, init, staged forward."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import padded_batch, perturb_layernorms_and_head, skip_refused, tiny_model
from omegaconf import OmegaConf
from torch import nn

from ablation.adapters import (
    Adapter,
    AdapterLayer,
    InputTap,
    adapter_slots,
    inject_adapters,
    remove_adapters,
    set_ablation,
)
from ablation.config import AdapterConfig, ModelConfig
from ablation.dropout import FastDropout
from ablation.families import FAMILIES, layer_stack
from ablation.methods import count_parameters, freeze
from ablation.models import Stages, load_model

# Tests of the encoders' module paths and sub-layer calls; the decoders' are in test_decoders.py.
encoders = pytest.mark.parametrize("family", [f for f in FAMILIES if not FAMILIES[f].decoder])
L = 3
SIZE = 8


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def adapter_model(family: str, init_std: float = 0.5, size: int = SIZE) -> nn.Module:
    model = tiny_model(family, num_layers=L)
    perturb_layernorms_and_head(model)
    inject_adapters(model, family, AdapterConfig(size=size, init_std=init_std))
    return model


VARIANTS = [
    {},
    {"norm": "layernorm"},
    {"norm": "batchnorm"},
    {"depth": 2},
    {"activation": "relu"},
    {"activation": "tanh"},
    {"activation": "swish"},
    {"positions": ["attention"]},
    {"positions": ["output"]},
    {"placement": "parallel"},
    {"placement": "parallel", "combine": "multiply"},
    {"combine": "multiply"},
    {"scaling": 0.5},
]
VARIANT_IDS = [",".join(f"{k}={v}" for k, v in c.items()) or "plain" for c in VARIANTS]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_zero_up_projection_is_identity(family, variant):
    model = tiny_model(family, num_layers=L)
    batch = padded_batch(family)
    before = logits(model, batch)
    slots = inject_adapters(model, family, AdapterConfig(size=SIZE, init_std=1.0, **variant))
    assert not torch.equal(logits(model, batch), before)  # big adapters do change the output
    with torch.no_grad():
        for slot in slots.values():
            slot.adapter.up.weight.zero_()
            slot.adapter.up.bias.zero_()
    assert torch.equal(logits(model, batch), before)


@encoders
@pytest.mark.parametrize("position", ["attention", "output"])
def test_parallel_adapter_reads_the_sub_layer_input(family, position):
    """Serial: fed the sub-layer's output; parallel: fed its input (the layer's input for attention,
    the attention block's output for the feed-forward)."""
    model = adapter_model(family, init_std=0.1)
    remove_adapters(model)
    slots = inject_adapters(
        model, family, AdapterConfig(size=SIZE, init_std=0.1, positions=[position], placement="parallel")
    )
    batch = padded_batch(family)
    stages = Stages(model, family)
    seen = []
    slot = slots[(1, position)]
    delta = slot.adapter.delta
    slot.adapter.delta = lambda x: seen.append(x) or delta(x)
    with torch.no_grad():
        h, ctx = stages.embed(batch)
        h = stages.layer(0, h, ctx)
        layer = layer_stack(model)[1]
        if family == "mpnet":
            attention_out = layer.attention(h, ctx["mask"], position_bias=ctx["position_bias"])[0]
        else:
            attention_out = layer.attention(h, ctx["mask"])[0]
        seen.clear()
        out = stages.layer(1, h, ctx)
    assert len(seen) == 1
    assert torch.equal(seen[0], h if position == "attention" else attention_out)
    if position == "output":  # LayerNorm(s + delta(x) + x), s the feed-forward's output, x its input
        s = layer.output.dropout.base_layer(layer.output.dense(layer.intermediate(attention_out)))
        want = layer.output.LayerNorm(s + delta(attention_out) + attention_out)
        assert torch.allclose(out, want, atol=1e-6)


@encoders
def test_a_normed_adapter_reads_the_layernorm_of_the_residual_sum(family):
    """Pfeiffer's adapter (AdapterHub's SeqBnConfig): LN(s + delta(LN(s + x)) + x), x the sub-layer's input."""
    model = tiny_model(family, num_layers=L)
    perturb_layernorms_and_head(model)
    slots = inject_adapters(model, family, AdapterConfig(size=SIZE, init_std=0.1, positions=["output"],
                                                         placement="normed"))  # fmt: skip
    batch = padded_batch(family)
    stages = Stages(model, family)
    with torch.no_grad():
        h, ctx = stages.embed(batch)
        layer = layer_stack(model)[0]
        a = stages.family.attention(layer, h, ctx)
        out = stages.layer(0, h, ctx)
        s = layer.output.dropout.base_layer(layer.output.dense(layer.intermediate(a)))
        norm = layer.output.LayerNorm
        want = norm(s + slots[(0, "output")].adapter.delta(norm(s + a)) + a)
    assert torch.allclose(out, want, atol=1e-6)


def test_parallel_taps_sit_at_the_sub_layer_inputs(family):
    model = tiny_model(family, num_layers=L)
    slots = inject_adapters(model, family, AdapterConfig(size=SIZE, placement="parallel"))
    for (i, position), slot in slots.items():
        tap = layer_stack(model)[i].get_submodule(FAMILIES[family].inputs[position])
        assert isinstance(tap, InputTap) and tap._slot[0] is slot and slot.parallel
    assert sum(isinstance(m, InputTap) for m in model.modules()) == 2 * L
    # the slot is registered once: its adapter's parameters are not duplicated under the tap
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert len(names) == len(set(names)) == len(dict(model.named_parameters()))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_remove_adapters_restores_the_model(family, variant):
    model = tiny_model(family, num_layers=L)
    batch = padded_batch(family)
    before = logits(model, batch)
    modules = [type(m) for m in model.modules()]
    names = [n for n, _ in model.named_parameters()]
    inject_adapters(model, family, AdapterConfig(size=SIZE, init_std=1.0, **variant))
    remove_adapters(model)
    assert [type(m) for m in model.modules()] == modules
    assert [n for n, _ in model.named_parameters()] == names
    assert torch.equal(logits(model, batch), before)
    inject_adapters(model, family, AdapterConfig(size=SIZE, **variant))  # and adapters can go in again


def test_ablating_every_layer_gives_the_base_model(family):
    model = tiny_model(family, num_layers=L)
    perturb_layernorms_and_head(model)  # "same trained LayerNorms and head" must mean something
    base = copy.deepcopy(model)
    batch = padded_batch(family)
    inject_adapters(model, family, AdapterConfig(size=SIZE, init_std=0.5))
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


def test_adapter_parameter_count():
    for d, m in [(32, 8), (768, 64), (5, 1)]:
        adapter = Adapter(d, AdapterConfig(size=m))
        assert sum(p.numel() for p in adapter.parameters()) == 2 * m * d + d + m


def test_adapter_formulas():
    """s + delta(s); s * (1 + delta(x)); delta = up(act(hidden(act(down(norm(x))))))."""
    torch.manual_seed(0)
    s, x = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    plain = Adapter(16, AdapterConfig(size=4, init_std=0.5))
    assert torch.allclose(plain(s), s + plain.up(nn.functional.gelu(plain.down(s))))
    deep = Adapter(
        16,
        AdapterConfig(size=4, init_std=0.5, activation="tanh", norm="layernorm", depth=2, combine="multiply"),
    )
    z = torch.tanh(deep.hidden[0](torch.tanh(deep.down(nn.functional.layer_norm(x, (16,))))))
    assert torch.allclose(deep(s, x), s * (1 + deep.up(z)), atol=1e-6)
    bn = Adapter(16, AdapterConfig(size=4, init_std=0.5, norm="batchnorm")).train()
    flat = x.reshape(-1, 16)
    normed = (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(bn.delta(x), bn.up(nn.functional.gelu(bn.down(normed.reshape(x.shape)))), atol=1e-5)


@encoders
def test_two_adapters_per_layer_at_documented_paths(family):
    assert FAMILIES["bert"].slots == {"attention": "attention.output.dropout", "output": "output.dropout"}
    assert FAMILIES["mpnet"].slots == {"attention": "attention.dropout", "output": "output.dropout"}
    model = tiny_model(family, num_layers=L)
    paths = FAMILIES[family].slots
    originals = {
        (i, pos): layer.get_submodule(path)
        for i, layer in enumerate(layer_stack(model))
        for pos, path in paths.items()
    }
    assert all(type(m) is nn.Dropout for m in originals.values())
    slots = inject_adapters(model, family, AdapterConfig(size=SIZE))
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
        inject_adapters(model, family, AdapterConfig(size=SIZE))


def test_init_is_truncated_normal_with_zero_biases():
    std = 1e-2
    torch.manual_seed(0)
    adapter = Adapter(256, AdapterConfig(size=256, init_std=std))
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


@pytest.mark.parametrize("placement", ["serial", "parallel", "normed"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stages_forward_equals_model_forward(family, precision, placement):
    skip_refused(family, placement)
    model = tiny_model(family, num_layers=L)
    perturb_layernorms_and_head(model)
    inject_adapters(model, family, AdapterConfig(size=SIZE, init_std=0.1, placement=placement))
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
    model, tokenizer, _ = load_model(cfg, num_labels=2, cache=cache)
    model.eval()
    assert len(layer_stack(model)) == cfg.num_layers
    slots = inject_adapters(model, cfg.family, AdapterConfig(size=64, init_std=1e-2))
    assert len(slots) == 2 * cfg.num_layers
    assert all(type(slot.base_layer) is FastDropout for slot in slots.values())  # installed at load
    freeze(model, "adapters")
    counts = count_parameters(model)
    d = model.config.hidden_size
    assert counts["adapters"] == 2 * cfg.num_layers * (2 * 64 * d + d + 64)
    enc = tokenizer(["a gripping, well acted film", "dull"], padding=True, return_tensors="pt")
    batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        assert torch.equal(Stages(model, cfg.family).forward(batch), model(**batch).logits)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("placement", ["serial", "parallel", "normed"])
def test_pooled_only_last_layer_matches_the_full_layer(family, placement, padding_side):
    """The evaluator's last layer: feed-forward only at the position the head reads (an encoder's first
    token, a decoder's last non-pad token, which moves with the padding side)."""
    skip_refused(family, placement)
    if padding_side == "left" and not FAMILIES[family].decoder:
        pytest.skip("encoders here are padded on the right (absolute positions)")
    model = tiny_model(family, num_layers=L)
    perturb_layernorms_and_head(model)
    inject_adapters(model, family, AdapterConfig(size=SIZE, init_std=0.1, placement=placement))
    batch = padded_batch(family, padding_side=padding_side)
    stages = Stages(model, family)
    with torch.no_grad():
        h, ctx = stages.embed(batch)
        for i in range(L - 1):
            h = stages.layer(i, h, ctx)
        full = stages.layer(L - 1, h, ctx)
        pooled = stages.layer(L - 1, h, ctx, pooled_only=True)
        assert pooled.shape == (4, 1, model.config.hidden_size)
        at = stages.pooled_positions(full, ctx)
        if FAMILIES[family].decoder:  # the last real token: 11, 8, 4, 1 on the right; 11 on the left
            assert at.tolist() == ([11] * 4 if padding_side == "left" else [11, 8, 4, 1])
        assert torch.allclose(pooled[:, 0], full[torch.arange(4), at], atol=1e-6, rtol=1e-5)
        assert torch.allclose(stages.head(pooled, ctx), model(**batch).logits, atol=1e-6, rtol=1e-5)


def test_scaling_multiplies_the_bottleneck_output_and_names_a_variant():
    from ablation.keys import CONFIG_COLUMNS, variant

    torch.manual_seed(0)
    plain = Adapter(16, AdapterConfig(size=4, init_std=0.5))
    scaled = Adapter(16, AdapterConfig(size=4, init_std=0.5, scaling=0.25))
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 16)
    assert torch.allclose(scaled.delta(x), 0.25 * plain.delta(x)) and torch.equal(
        scaled(x), x + scaled.delta(x)
    )
    assert variant(AdapterConfig(scaling=0.25)) == "scaling=0.25" and variant(AdapterConfig()) == "plain"
    with pytest.raises(ValueError, match="adapter.scaling=0"):
        AdapterConfig(scaling=0)
    assert CONFIG_COLUMNS["adapter_scaling"] == "float"  # a result column, from the declaration alone
