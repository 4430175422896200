"""LoRA through PEFT: the suite's LoRA model is PEFT's own (merged and unmerged), trains exactly the LoRA
weights and the head, counts its parameters by the formula, and comes off without a trace."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import padded_batch, tiny_model
from test_evaluate import big_lora

from ablation.adapters import adapter_slots, inject_lora, remove_adapters, set_ablation
from ablation.config import ConfigError, MethodConfig, ModelConfig, RunConfig, TaskConfig, derive
from ablation.families import family, family_of, layers_prefix
from ablation.methods import prepare

L = 3
# an attention projection of each size and a feed-forward one, by each kind of family's names
TARGETS = {"encoder": ["query", "value", "intermediate"], "decoder": ["q_proj", "v_proj", "up_proj"]}


def targets(family_name: str) -> list[str]:
    """The LoRA targets these tests adapt on a family."""
    return TARGETS[family(family_name).kind]


def target_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) of each target, from the config: a decoder's value projection has num_key_value_heads."""
    config = model.config
    d, ff = config.hidden_size, config.intermediate_size
    if not family(config.model_type).decoder:
        return {"query": (d, d), "value": (d, d), "intermediate": (d, ff)}
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    return {"q_proj": (d, config.num_attention_heads * head_dim),
            "v_proj": (d, config.num_key_value_heads * head_dim), "up_proj": (d, ff)}  # fmt: skip


def _peft_reference(model: torch.nn.Module, family_name: str, r: int, alpha: float):
    """PEFT's own model (get_peft_model) over a copy of the pretrained model, LoRA on the same projections."""
    from peft import LoraConfig, get_peft_model

    paths = family(family_name).lora_targets
    names = [f"{layers_prefix(model)}{i}.{paths[t][0]}" for i in range(L) for t in targets(family_name)]
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=names))


def test_the_suites_lora_is_peft_s_forward_merged_and_unmerged(family):
    pretrained = tiny_model(family, num_layers=L, seed=0)
    ours = copy.deepcopy(pretrained)
    slots = inject_lora(ours, family, r=4, alpha=8, targets=targets(family), dropout=0.0)
    big_lora(slots.values())  # PEFT starts B at zero: the identity would compare nothing
    reference = _peft_reference(copy.deepcopy(pretrained), family, r=4, alpha=8)
    # PEFT's names are ours without the slot's wrapper level, under its base_model.model prefix
    ours_lora = {
        n.replace(".base_layer.lora_", ".lora_"): p for n, p in ours.named_parameters() if "lora_" in n
    }
    theirs = {n.removeprefix("base_model.model."): p for n, p in reference.named_parameters() if "lora_" in n}
    assert ours_lora.keys() == theirs.keys() and len(theirs) == 2 * L * len(targets(family))
    with torch.no_grad():
        for name, p in theirs.items():
            p.copy_(ours_lora[name])
    batch = padded_batch(family)
    ours.eval(), reference.eval()
    with torch.no_grad():
        got = ours(**batch).logits
        want = reference(**batch).logits
        assert torch.equal(got, want)  # the same modules doing the same arithmetic
        off = pretrained.eval()(**batch).logits
        assert (got - off).abs().max() > 1e-2  # LoRA matters here
        merged = reference.merge_and_unload()(**batch).logits
        assert torch.allclose(got, merged, atol=1e-5)
        set_ablation(ours, range(L))  # every layer's LoRA off: the pretrained model
        assert torch.equal(ours(**batch).logits, off)


def test_lora_trains_its_weights_and_the_head_counted_by_the_formula(family):
    model = tiny_model(family, num_layers=L, seed=0)
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    method = MethodConfig(name="lora", r=4, alpha=8, target=targets(family), dropout=0.1)
    counts = prepare(model, family, method, None)
    lora = L * sum(4 * (d_in + d_out) for d_in, d_out in target_shapes(model).values())
    head_module = "score" if family_of(model).decoder else "classifier"
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(f"{head_module}."))
    assert counts["lora"] == lora and counts["head"] == head
    assert counts["trainable"] == lora + head and counts["adapters"] == counts["layernorm"] == 0
    assert {(i, t) for i, t in adapter_slots(model)} == {(i, t) for i in range(L) for t in targets(family)}
    positions = {"q_proj": "attention", "v_proj": "attention", "up_proj": "output", "query": "attention",
                 "value": "attention", "intermediate": "output"}  # fmt: skip
    assert {slot.position for slot in adapter_slots(model).values()} == {
        positions[t] for t in targets(family)
    }
    remove_adapters(model)  # as the session does between training keys
    assert model.state_dict().keys() == pristine.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in pristine.items())


def test_lora_config_values_are_checked_naming_the_field():
    with pytest.raises(ConfigError, match="method.r=0 is not allowed"):
        MethodConfig(name="lora", r=0, alpha=8, target=["query"], dropout=0.0)
    with pytest.raises(ConfigError, match="method.target=\\['keys'\\] is not allowed"):
        MethodConfig(name="lora", r=4, alpha=8, target=["keys"], dropout=0.0)
    with pytest.raises(ConfigError, match="method.r=4 is not allowed: only for method=lora"):
        MethodConfig(name="adapters", r=4)
    # validation changes nothing; derive puts the targets in one order: one training key
    given = MethodConfig(name="lora", r=4, alpha=8, target=["value", "query"], dropout=0.0)
    assert given.target == ["value", "query"]
    base = RunConfig(task=TaskConfig(name="t", artifact="rotten-tomatoes"),
                     model=ModelConfig(name="m", artifact="all-minilm-l6-v2", num_layers=2))  # fmt: skip
    assert derive(dataclasses.replace(base, method=given)).method.target == ["query", "value"]
