"""A LoRA folder saved by PEFT itself loads into the suite's LoRA model with PEFT's logits; what cannot be
reproduced, or does not fit the base model, is one line naming it."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from conftest import padded_batch, tiny_model

from ablation.config import ConfigError, MethodConfig
from ablation.methods import prepare
from ablation.trained_elsewhere import load_peft_lora, peft_lora_spec

L = 3
# the projections each family's PEFT model adapts (MPNet has no PEFT default: named, as a user would)
PEFT_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "mpnet": ["q", "v", "o"],
                "llama": ["q_proj", "v_proj", "down_proj"]}  # fmt: skip
SUITE_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"],
                 "mpnet": ["query", "value", "attention_output"], "llama": ["q_proj", "v_proj", "down_proj"]}  # fmt: skip


def save_peft(pretrained: torch.nn.Module, family: str, folder, seed: int = 5, **options):
    """Train nothing: PEFT's SEQ_CLS LoRA model with random B and head weights, saved by PEFT."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=16, target_modules=PEFT_TARGETS[family],
                        **options)  # fmt: skip
    model = get_peft_model(copy.deepcopy(pretrained), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=generator))
    model.save_pretrained(folder)
    return model.eval()


def test_a_peft_folder_gives_peft_s_logits(family, tmp_path):
    pretrained = tiny_model(family, num_layers=L, seed=0)
    reference = save_peft(pretrained, family, tmp_path / "lora")
    spec = peft_lora_spec(tmp_path / "lora", family, L)
    assert (spec.r, spec.alpha, spec.dropout, spec.targets) == (4, 16.0, 0.0, SUITE_TARGETS[family])
    ours = copy.deepcopy(pretrained)
    method = MethodConfig(name="lora", r=spec.r, alpha=spec.alpha, target=spec.targets, dropout=spec.dropout)
    prepare(ours, family, method, None)
    load_peft_lora(ours, tmp_path / "lora")
    batch = padded_batch(family)
    with torch.no_grad():
        want = reference(**batch).logits
        assert (want - pretrained(**batch).logits).abs().max() > 1e-2  # the checkpoint changes the model
        assert torch.allclose(ours.eval()(**batch).logits, want, atol=1e-6)


@pytest.fixture
def folder(tmp_path):
    save_peft(tiny_model("bert", num_layers=L), "bert", tmp_path / "lora")
    return tmp_path / "lora"


def _edit_config(folder, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_bad_folders_are_one_line_each(folder, tmp_path):
    cases = [
        (tmp_path / "missing", "not a folder"),
        (tmp_path, "no adapter_config.json (not a PEFT adapter folder)"),
    ]
    for path, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)) as err:
            peft_lora_spec(path, "bert", L)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="LoRA in layers \\[0, 1, 2\\], the model has L=12 layers"):
        peft_lora_spec(folder, "bert", 12)
    with pytest.raises(ConfigError, match="tensor .* is not LoRA on a mpnet projection"):
        peft_lora_spec(folder, "mpnet", L)  # BERT's module names in an MPNet model


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peft_type": "IA3"}, "peft_type='IA3', the suite imports LORA"),
        ({"use_dora": True}, "unsupported LoRA option use_dora=True"),
        ({"use_rslora": True}, "unsupported LoRA option use_rslora=True"),
        ({"bias": "all"}, "unsupported LoRA option bias='all'"),
        ({"rank_pattern": {"query": 8}}, "unsupported LoRA option rank_pattern"),
        ({"r": 8}, "the weights have rank 4, adapter_config.json says r=8"),
    ],
)
def test_options_the_suite_cannot_reproduce_are_named(folder, changes, message):
    _edit_config(folder, **changes)
    with pytest.raises(ConfigError, match=re.escape(message)):
        peft_lora_spec(folder, "bert", L)


def test_a_base_model_of_other_shapes_is_named(folder):
    other = tiny_model("bert", num_layers=L)
    # as wide as the checkpoint's base but with a wider feed-forward: LoRA fits, the head does too;
    # a narrower model does not
    from transformers import BertConfig, BertForSequenceClassification

    narrow = BertForSequenceClassification(
        BertConfig(
            vocab_size=other.config.vocab_size,
            hidden_size=16,
            num_hidden_layers=L,
            num_attention_heads=4,
            intermediate_size=32,
            num_labels=other.config.num_labels,
        )  # fmt: skip
    )
    prepare(
        narrow, "bert", MethodConfig(name="lora", r=4, alpha=16, target=["query", "value"], dropout=0.0), None
    )
    with pytest.raises(
        ConfigError, match="is \\(4, 32\\), this model's .* is \\(4, 16\\): the checkpoint was"
    ):
        load_peft_lora(narrow, folder)
