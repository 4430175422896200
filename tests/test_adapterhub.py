"""AdapterHub folders: the fixture saved by the `adapters` library itself (tests/fixtures/adapterhub/
make_fixture.py, run in its own environment) imports into the suite's Houlsby adapter with AdapterHub's own
logits, Houlsby's and Pfeiffer's (placement=normed: fed LayerNorm(s + residual)), intact and for every span it
saved with `skip_layers`; anything the suite cannot reproduce is refused in one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from ablation.adapters import set_ablation
from ablation.config import AdapterConfig, ConfigError, MethodConfig
from ablation.methods import prepare
from ablation.trained_elsewhere import adapterhub_spec, load_adapterhub

FIXTURE = Path(__file__).parent / "fixtures" / "adapterhub"


def _batch(expected: dict) -> dict:
    ids = torch.tensor(expected["input_ids"])
    return {"input_ids": ids, "attention_mask": torch.tensor(expected["attention_mask"]),
            "token_type_ids": torch.zeros_like(ids)}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("houlsby", (8, "swish", ["attention", "output"], "serial")),
        ("pfeiffer", (8, "relu", ["output"], "normed")),  # fed LayerNorm(s + residual)
    ],
)
def test_an_adapterhub_folder_gives_adapterhub_s_logits_intact_and_for_every_skipped_span(name, want):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    spec = adapterhub_spec(FIXTURE / name, "bert", num_labels=3, num_layers=3)
    assert (spec.size, spec.activation, spec.positions, spec.placement) == want and spec.scaling == 1.0
    model = BertForSequenceClassification.from_pretrained(FIXTURE / "base", num_labels=3).eval()
    adapter = AdapterConfig(size=spec.size, activation=spec.activation, positions=spec.positions,
                            placement=spec.placement, load=str(FIXTURE / name))  # fmt: skip
    counts = prepare(
        model, "bert", MethodConfig(layernorms="freeze", head="pooler"), adapter
    )  # as derive sets
    assert counts["head"] == 32 * 32 + 32 + 3 * 32 + 3  # the pooler joins what is stored: AdapterHub's head
    assert counts["layernorm"] == 0  # AdapterHub trains none: they stay pretrained
    load_adapterhub(model, FIXTURE / name, "bert", 3, 3)
    spans = expected["adapters"][name]
    assert len(spans) == 7
    for span, logits in spans.items():
        layers = [] if span == "intact" else range(int(span.split("-")[0]), int(span.split("-")[1]) + 1)
        set_ablation(model, layers)  # the suite's removal = AdapterHub's skip_layers
        with torch.no_grad():
            got = model(**_batch(expected)).logits
        assert torch.allclose(got, torch.tensor(logits), atol=1e-5), span
    assert not torch.allclose(torch.tensor(spans["intact"]), torch.tensor(spans["0-2"]), atol=1e-2)


def test_an_adapterhub_llama_folder_gives_adapterhub_s_logits_for_every_span_through_the_suite_s_stages():
    """AdapterHub's Llama adapters sit after o_proj and after the MLP, before the residual add (the suite's
    slots); its head is dense-tanh-out on the last non-pad token, built in place of `score`. Both the model's
    own forward and the suite's cached stages give AdapterHub's logits, intact and for every skipped span."""
    from transformers import LlamaForSequenceClassification

    from ablation.models import Stages

    folder = FIXTURE / "llama"
    expected = json.loads((folder / "expected.json").read_text())
    spec = adapterhub_spec(folder / "houlsby", "llama", num_labels=3, num_layers=3)
    assert (spec.size, spec.activation, spec.positions, spec.placement) == (
        8,
        "swish",
        ["attention", "output"],
        "serial",
    )
    model = LlamaForSequenceClassification.from_pretrained(folder / "base", num_labels=3).eval()
    adapter = AdapterConfig(size=spec.size, activation=spec.activation, positions=spec.positions,
                            load=str(folder / "houlsby"))  # fmt: skip
    counts = prepare(model, "llama", MethodConfig(layernorms="freeze"), adapter)  # as derive sets
    assert counts["head"] == 32 * 32 + 32 + 3 * 32 + 3  # AdapterHub's two-layer head, in place of `score`
    assert counts["adapters"] == 3 * 2 * (32 * 8 + 8 + 8 * 32 + 32) and counts["layernorm"] == 0
    load_adapterhub(model, folder / "houlsby", "llama", 3, 3)
    batch = {k: torch.tensor(expected[k]) for k in ("input_ids", "attention_mask")}
    stages = Stages(model, "llama")
    spans = expected["adapters"]["houlsby"]
    assert len(spans) == 7
    for span, logits in spans.items():
        layers = [] if span == "intact" else range(int(span.split("-")[0]), int(span.split("-")[1]) + 1)
        set_ablation(model, layers)
        with torch.no_grad():
            for got in (model(**batch).logits, stages.forward(batch)):
                assert torch.allclose(got, torch.tensor(logits), atol=1e-5), span
    assert not torch.allclose(torch.tensor(spans["intact"]), torch.tensor(spans["0-2"]), atol=1e-2)


def test_adapterhub_s_pfeiffer_adapter_on_a_decoder_and_a_family_it_lacks_are_refused_in_one_line():
    cases = [
        (FIXTURE / "llama" / "pfeiffer", "llama", "unsupported option original_ln_before=True on a 'llama' model"),
        (FIXTURE / "llama" / "houlsby", "qwen2", "AdapterHub folders are read for model.family in"),
        (FIXTURE / "llama" / "houlsby", "mistral", "trained on a 'llama' model, this is a 'mistral' one"),
    ]  # fmt: skip
    for folder, family, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)) as err:
            adapterhub_spec(folder, family, 3, 3)
        assert "\n" not in str(err.value)


def test_what_the_suite_cannot_reproduce_or_does_not_fit_is_one_line(tmp_path):
    cases = [
        (FIXTURE / "houlsby", "mpnet", 3, "trained on a 'bert' model, this is a 'mpnet' one"),
        (FIXTURE / "houlsby", "bert", 2, "its head has 3 labels, the task 2"),
        (tmp_path / "missing", "bert", 3, "not a folder"),
        (FIXTURE, "bert", 3, "no adapter_config.json (not an AdapterHub adapter folder)"),
    ]
    for folder, family, labels, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)) as err:
            adapterhub_spec(folder, family, labels, 3)
        assert "\n" not in str(err.value)
    wider = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=3,
                                                     num_attention_heads=4, intermediate_size=64, num_labels=3))  # fmt: skip
    prepare(
        wider,
        "bert",
        MethodConfig(),
        AdapterConfig(size=8, activation="swish", load=str(FIXTURE / "houlsby")),
    )
    with pytest.raises(ConfigError, match="is \\(8, 32\\), this model's .* is \\(8, 48\\)"):
        load_adapterhub(wider, FIXTURE / "houlsby", "bert", 3, 3)


@pytest.mark.parametrize("name", ["houlsby", "pfeiffer"])
def test_the_fixture_is_what_adapterhub_saves(name):
    files = {p.name for p in (FIXTURE / name).iterdir()}
    weights = {"houlsby": {"pytorch_adapter.bin", "pytorch_model_head.bin"},
               "pfeiffer": {"adapter.safetensors", "model_head.safetensors"}}[name]  # fmt: skip
    assert files == {"adapter_config.json", "head_config.json"} | weights


def test_adapter_load_sets_the_adapter_from_the_folder_and_keys_its_files(tmp_path):
    from test_config import run_config

    from ablation.keys import config_columns, training_spec

    cfg = run_config(
        ["model=bert_base_uncased", "task=tweets", f"adapter.load={FIXTURE / 'houlsby'}", "device=cpu"]
    )
    assert (cfg.adapter.size, cfg.adapter.activation, cfg.adapter.positions) == (
        8,
        "swish",
        ["attention", "output"],
    )
    assert config_columns(cfg)["adapter_loaded_from"] == str(FIXTURE / "houlsby")
    digest = training_spec(cfg)["adapter"]["load_sha256"]  # the folder's contents, not its name
    shutil.copytree(FIXTURE / "houlsby", tmp_path / "copy")
    copy = ["model=bert_base_uncased", "task=tweets", f"adapter.load={tmp_path / 'copy'}", "device=cpu"]
    assert training_spec(run_config(copy))["adapter"]["load_sha256"] == digest
    head = tmp_path / "copy" / "pytorch_model_head.bin"
    tensors = torch.load(head, weights_only=True)
    tensors["heads.houlsby.4.bias"] += 1
    torch.save(tensors, head)
    assert training_spec(run_config(copy))["adapter"]["load_sha256"] != digest
    houlsby = f"adapter.load={FIXTURE / 'houlsby'}"
    for given, message in [
        ("adapter.placement=parallel", "adapter.placement='parallel' is not allowed: the folder adapter.load says 'serial'"),
        ("adapter.size=16", "adapter.size=16 is not allowed: the folder adapter.load says 8 (leave adapter.size out)"),
        ("adapter.combine=multiply", "adapter.combine='multiply' is not allowed: 'add' with adapter.load"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(message)):
            run_config(["model=bert_base_uncased", "task=tweets", houlsby, given])
    # the folder's own values, given or derived, are accepted unchanged
    same = run_config(
        [
            "model=bert_base_uncased",
            "task=tweets",
            houlsby,
            "adapter.size=8",
            "adapter.activation=swish",
            "device=cpu",
        ]
    )
    assert same == cfg
    pfeiffer = run_config(["model=bert_base_uncased", "task=tweets", f"adapter.load={FIXTURE / 'pfeiffer'}"])
    assert (pfeiffer.adapter.placement, pfeiffer.adapter.positions) == ("normed", ["output"])
    config = json.loads((FIXTURE / "pfeiffer" / "adapter_config.json").read_text())
    config["config"]["use_gating"] = True
    shutil.copytree(FIXTURE / "pfeiffer", tmp_path / "gated")
    (tmp_path / "gated" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=re.escape("unsupported option use_gating=True")):
        adapterhub_spec(tmp_path / "gated", "bert", 3, 3)


def leave_out_folder(folder: Path) -> Path:
    """The Houlsby fixture as AdapterHub saves one trained with leave_out=[0]: without layer 0's adapters."""
    shutil.copytree(FIXTURE / "houlsby", folder)
    saved = json.loads((folder / "adapter_config.json").read_text())
    saved["config"]["leave_out"] = [0]
    (folder / "adapter_config.json").write_text(json.dumps(saved))
    weights = torch.load(folder / "pytorch_adapter.bin", weights_only=True)
    torch.save({k: v for k, v in weights.items() if ".layer.0." not in k}, folder / "pytorch_adapter.bin")
    return folder


def test_a_folder_with_leave_out_imports_into_adapter_layers_and_equals_the_span_removed(tmp_path):
    """AdapterHub's leave_out (layers trained without adapters) is adapter.layers' complement: a folder with
    leave_out=[0] is the full folder without layer 0's adapters, so its logits are the full folder's with
    layer 0 removed, and its spec and derived config name layers 1 and 2."""
    from test_config import run_config

    folder = leave_out_folder(tmp_path / "houlsby-leave-out")
    saved = json.loads((folder / "adapter_config.json").read_text())

    spec = adapterhub_spec(folder, "bert", num_labels=3, num_layers=3)
    assert spec.layers == [1, 2]
    expected = json.loads((FIXTURE / "expected.json").read_text())
    logits = {}
    for name, layers in (("houlsby", None), (folder, [1, 2])):
        model = BertForSequenceClassification.from_pretrained(FIXTURE / "base", num_labels=3).eval()
        adapter = AdapterConfig(size=8, activation="swish", layers=layers, load=str(FIXTURE / name))
        counts = prepare(model, "bert", MethodConfig(layernorms="freeze", head="pooler"), adapter)
        load_adapterhub(model, FIXTURE / name, "bert", 3, 3)
        set_ablation(model, [0] if layers is None else [])  # the full folder with layer 0 removed
        with torch.no_grad():
            logits[str(layers)] = model(**_batch(expected)).logits
        assert counts["adapters"] == 2 * (3 if layers is None else 2) * (2 * 8 * 32 + 32 + 8)
    assert torch.equal(logits["None"], logits["[1, 2]"])
    bert3 = ["model=bert_base_uncased", "model.num_layers=3", "task=tweets", f"adapter.load={folder}"]
    cfg = run_config(bert3)
    assert cfg.adapter.layers == [1, 2] and cfg.method.layernorms == "freeze" and cfg.method.head == "pooler"
    with pytest.raises(ConfigError, match="layers \\[0\\] have no adapters"):
        run_config([*bert3, "ablate.first=0", "ablate.last=1"])
    saved["config"]["leave_out"] = [0, 1, 2]
    (folder / "adapter_config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="leaves no layer with adapters"):
        adapterhub_spec(folder, "bert", num_labels=3, num_layers=3)
