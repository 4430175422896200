"""The suite's Houlsby adapter is AdapterHub's DoubleSeqBnConfig, to the last bit: the fixture saved by the
`adapters` library itself (tests/fixtures/adapterhub/make_fixture.py, run in its own environment) gives,
with its weights copied by name into the suite's adapters and its head into BERT's pooler and classifier,
AdapterHub's own logits intact and for every span it saved with `skip_layers`. (An importer for such folders,
and the Pfeiffer adapter, which reads LayerNorm(s + residual), are not in the suite yet.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

from ablation.adapters import inject_adapters, set_ablation
from ablation.config import AdapterConfig

FIXTURE = Path(__file__).parent / "fixtures" / "adapterhub"


def _ours(name: str) -> str:
    """AdapterHub's parameter name -> the suite's: its adapters sit on the dropout our slot wraps."""
    for position in ("attention.output", "output"):
        name = name.replace(f"{position}.adapters.houlsby.", f"{position}.dropout.adapter.")
    return name.replace("adapter_down.0.", "down.").replace("adapter_up.", "up.")


def test_the_houlsby_adapter_is_adapterhub_s_double_seq_bn():
    expected = json.loads((FIXTURE / "expected.json").read_text())
    config = json.loads((FIXTURE / "houlsby" / "adapter_config.json").read_text())["config"]
    assert (config["reduction_factor"], config["non_linearity"], config["original_ln_before"]) == (
        4,
        "swish",
        False,
    )
    model = BertForSequenceClassification.from_pretrained(FIXTURE / "base", num_labels=3).eval()
    inject_adapters(model, "bert", AdapterConfig(size=32 // 4, activation="swish"))  # d / reduction_factor
    weights = torch.load(FIXTURE / "houlsby" / "pytorch_adapter.bin", weights_only=True)
    head = torch.load(FIXTURE / "houlsby" / "pytorch_model_head.bin", weights_only=True)
    head_names = {"heads.houlsby.1": "bert.pooler.dense", "heads.houlsby.4": "classifier"}  # dense, tanh, out
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[_ours(name)].copy_(tensor)
        for name, tensor in head.items():
            module, _, kind = name.rpartition(".")
            params[f"{head_names[module]}.{kind}"].copy_(tensor)
    ids = torch.tensor(expected["input_ids"])
    batch = {"input_ids": ids, "attention_mask": torch.tensor(expected["attention_mask"]),
             "token_type_ids": torch.zeros_like(ids)}  # fmt: skip
    spans = expected["adapters"]["houlsby"]
    assert len(spans) == 7
    for span, want in spans.items():
        layers = [] if span == "intact" else range(int(span.split("-")[0]), int(span.split("-")[1]) + 1)
        set_ablation(model, layers)
        with torch.no_grad():
            got = model(**batch).logits
        assert torch.allclose(got, torch.tensor(want), atol=1e-5), span
    assert not torch.allclose(torch.tensor(spans["intact"]), torch.tensor(spans["0-2"]), atol=1e-2)


@pytest.mark.parametrize("name", ["houlsby", "pfeiffer"])
def test_the_fixture_is_what_adapterhub_saves(name):
    files = {p.name for p in (FIXTURE / name).iterdir()}
    weights = {"houlsby": {"pytorch_adapter.bin", "pytorch_model_head.bin"},
               "pfeiffer": {"adapter.safetensors", "model_head.safetensors"}}[name]  # fmt: skip
    assert files == {"adapter_config.json", "head_config.json"} | weights
