"""Training methods: which parameters each trains, their exact counts against the analytic formulas."""

from __future__ import annotations

import pytest
from conftest import DECODERS, HIDDEN, NUM_LABELS, padded_batch, tiny_model

from ablation.config import AdapterConfig, MethodConfig
from ablation.families import is_head, layer_stack, layers_prefix
from ablation.methods import count_parameters, freeze, prepare, trained_names, trained_state

L = 3
D, FF, C = HIDDEN, 64, NUM_LABELS  # tiny_model: hidden 32, intermediate 64, 3 labels
PLAIN = {"size": 8, "init_std": 1e-2, "activation": "gelu", "positions": ["attention", "output"],
         "norm": "none", "depth": 1, "placement": "serial", "combine": "add"}  # fmt: skip


def layer_params(family: str = "bert", d: int = D, i: int = FF) -> int:
    """One transformer layer. Encoders: q, k, v, o projections with biases, two LayerNorms (weight, bias),
    the two feed-forward projections. Decoders (tiny_model: 4 heads of d/4, 2 key-value heads): q and o
    d x d, k and v d x d/2, no biases but Qwen2's on q, k, v; gate, up and down projections; two RMSNorms
    (weight only), and Qwen3's RMSNorms on the queries' and keys' heads."""
    if family not in DECODERS:
        return 4 * (d * d + d) + 2 * d + (d * i + i) + (i * d + d) + 2 * d
    kv = d // 2
    biases = d + 2 * kv if family == "qwen2" else 0
    qk_norms = 2 * (d // 4) if family == "qwen3" else 0
    return 2 * d * d + 2 * d * kv + biases + 3 * d * i + 2 * d + qk_norms


def head_params(family: str, d: int = D, c: int = C) -> int:
    """The classifier: BERT's is one linear layer; MPNet's and RoBERTa's add a dense d x d layer; a decoder's
    `score` is one linear layer without bias."""
    if family in DECODERS:
        return d * c
    return d * c + c if family == "bert" else d * d + d + d * c + c


def norm_width(family: str) -> int:
    """Parameters per hidden unit of a norm: LayerNorm's weight and bias, RMSNorm's weight."""
    return 1 if family in DECODERS else 2


def layer_norm_params(family: str, d: int = D) -> int:
    """One layer's norms: two per layer (Qwen3's query and key norms besides)."""
    return 2 * norm_width(family) * d + (2 * (d // 4) if family == "qwen3" else 0)


def pooler_params(family: str, d: int = D) -> int:
    """BERT's pooler (trained only by top_k and full); the other families' classifiers have none."""
    return d * d + d if family == "bert" else 0


def layernorm_params(family: str = "bert", d: int = D, layers: int = L) -> int:
    """The model's norms: the embeddings' LayerNorm (a decoder's final norm) and each layer's."""
    return norm_width(family) * d + layers * layer_norm_params(family, d)


def adapter_params(adapter: dict, d: int = D) -> int:
    """One adapter: 2md + d + m, plus m^2 + m per extra hidden layer, plus 2d for a norm on its input."""
    m = adapter["size"]
    extra = (adapter["depth"] - 1) * (m * m + m)
    norm = 2 * d if adapter["norm"] != "none" else 0
    return 2 * m * d + d + m + extra + norm


VARIANTS = [
    {},
    {"size": 1},
    {"size": 64},
    {"norm": "layernorm"},
    {"norm": "batchnorm"},
    {"depth": 2},
    {"depth": 3, "size": 4},
    {"activation": "tanh"},
    {"positions": ["attention"]},
    {"positions": ["output"]},
    {"placement": "parallel"},
    {"placement": "parallel", "combine": "multiply"},
]


@pytest.mark.parametrize(
    "changes", VARIANTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain"
)
def test_adapter_counts_equal_the_formula(family, changes):
    adapter = {**PLAIN, **changes}
    model = tiny_model(family, num_layers=L)
    counts = prepare(model, family, MethodConfig(), AdapterConfig(**adapter))
    n_adapters = L * len(adapter["positions"])
    assert counts["adapters"] == n_adapters * adapter_params(adapter)
    assert counts["layernorm"] == layernorm_params(family)
    assert counts["head"] == head_params(family)
    expected = n_adapters * adapter_params(adapter) + layernorm_params(family) + head_params(family)
    assert counts["trainable"] == expected
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("k", range(1, L + 1))
def test_top_k_counts_equal_the_formula(family, k):
    model = tiny_model(family, num_layers=L)
    counts = prepare(model, family, MethodConfig("top_k", k), None)
    final_norm = D if family in DECODERS else 0  # a decoder's norm after the last layer sits above them too
    expected = k * layer_params(family) + final_norm + pooler_params(family) + head_params(family)
    assert counts["trainable"] == expected
    assert counts["layers"] + counts["layernorm"] == k * layer_params(family) + final_norm
    trained = trained_names(model, "top_k", k)
    prefix = layers_prefix(model)
    layers = {int(n[len(prefix) :].split(".")[0]) for n in trained if n.startswith(prefix)}
    assert layers == set(range(L - k, L))  # the top k, not the bottom k
    assert not any(".embeddings." in n for n in trained)


def test_layernorm_and_full_counts(family):
    model = tiny_model(family, num_layers=L)
    counts = prepare(model, family, MethodConfig("layernorm"), None)
    assert counts["trainable"] == layernorm_params(family) + head_params(family)
    assert counts["trainable"] == counts["layernorm"] + counts["head"]
    model = tiny_model(family, num_layers=L)
    counts = prepare(model, family, MethodConfig("full"), None)
    assert counts["trainable"] == counts["total"] == sum(p.numel() for p in model.parameters())
    embeddings = counts["total"] - L * layer_params(family) - head_params(family) - pooler_params(family)
    # the embeddings' LayerNorm (a decoder's final norm) counts as layernorm
    assert counts["embeddings"] + norm_width(family) * D == embeddings
    if family in DECODERS:  # the token embeddings alone: no position or token-type tables (rotary)
        assert counts["embeddings"] == model.config.vocab_size * D


def test_head_method_trains_the_classifier_alone(family):
    model = tiny_model(family, num_layers=L)
    counts = prepare(model, family, MethodConfig("head"), None)
    assert counts["trainable"] == counts["head"] == head_params(family)  # BERT's pooler stays frozen
    head = "score." if family in DECODERS else "classifier."
    assert trained_names(model, "head") == {n for n, _ in model.named_parameters() if n.startswith(head)}


def test_adapters_method_trains_adapters_layernorms_and_head_only(family):
    model = tiny_model(family, num_layers=L)
    prepare(model, family, MethodConfig(), AdapterConfig(**PLAIN))
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    norms = ("LayerNorm", "input_layernorm", "post_attention_layernorm", "norm", "q_norm", "k_norm")
    expected = {n for n in names if ".adapter." in n or n.rsplit(".", 2)[-2] in norms or is_head(model, n)}
    assert trainable == expected
    prefix = model.base_model_prefix
    outside = "norm" if family in DECODERS else "embeddings.LayerNorm"  # the norm outside the layers
    assert f"{prefix}.{outside}.weight" in trainable
    assert sum(".adapter." in n for n in trainable) == 2 * L * 4  # 2 slots x (2 weights + 2 biases)
    assert f"{prefix}.embeddings.word_embeddings.weight" not in trainable
    assert not any(".adapter." not in n and (".intermediate." in n or ".mlp." in n) for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    if family == "bert":  # the official code freezes BERT's pooler
        assert not any(n.startswith("bert.pooler.") for n in trainable)


def test_bad_k_is_rejected(family):
    model = tiny_model(family, num_layers=L)
    for k in (0, L + 1, None):
        with pytest.raises(ValueError, match=f"L={L}"):
            freeze(model, "top_k", k)
    with pytest.raises(ValueError, match="one of"):
        freeze(model, "bitfit")


def test_trained_state_holds_batchnorm_statistics(family):
    model = tiny_model(family, num_layers=L)
    prepare(model, family, MethodConfig(), AdapterConfig(**{**PLAIN, "norm": "batchnorm"}))
    state = trained_state(model)
    buffers = [n for n in state if n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(buffers) == 3 * 2 * L
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(state) - set(buffers)
    assert count_parameters(model)["adapters"] == 2 * L * adapter_params({**PLAIN, "norm": "batchnorm"})


RECIPES = [
    (layers, norms, head)
    for layers in (None, [1], [0, 2])
    for norms in ("train", "adapted", "freeze")
    for head in ("classifier", "pooler")
]


@pytest.mark.parametrize(("layers", "norms", "head"), RECIPES, ids=lambda v: str(v))
def test_recipe_counts_equal_the_formula(family, layers, norms, head):
    """adapter.layers x method.layernorms x method.head: adapters only in the chosen layers, the LayerNorms
    of all (train: the embeddings' too), of the adapted layers or none, the classifier with BERT's pooler."""
    model = tiny_model(family, num_layers=L)
    method = MethodConfig(layernorms=norms, head=head)
    if head == "pooler" and family != "bert":  # the config refuses it first (test_config); the model too
        with pytest.raises(ValueError, match="no pooler"):
            prepare(model, family, method, AdapterConfig(**PLAIN, layers=layers))
        return
    counts = prepare(model, family, method, AdapterConfig(**PLAIN, layers=layers))
    adapted = L if layers is None else len(layers)
    per_layer = layer_norm_params(family)
    norms_expected = {"train": layernorm_params(family), "adapted": per_layer * adapted, "freeze": 0}[norms]
    head_expected = head_params(family) + (pooler_params(family) if head == "pooler" else 0)
    assert counts["adapters"] == 2 * adapted * adapter_params(PLAIN)
    assert counts["layernorm"] == norms_expected
    assert counts["head"] == head_expected
    assert counts["trainable"] == counts["adapters"] + norms_expected + head_expected
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("norms", ["train", "adapted", "freeze"])
def test_lora_layernorm_recipes_count_the_formula(norms):
    model = tiny_model("bert", num_layers=L)
    method = MethodConfig("lora", r=2, alpha=2, target=["query", "value"], dropout=0.0, layernorms=norms)
    counts = prepare(model, "bert", method, None)
    assert counts["lora"] == L * 2 * (2 * D + 2 * D)  # A: r x d, B: d x r, on two projections per layer
    assert counts["layernorm"] == {"train": layernorm_params(), "adapted": 4 * D * L, "freeze": 0}[norms]


@pytest.mark.parametrize(
    ("layers", "norms", "graph_from"),
    [([2], "adapted", 2), ([1, 2], "freeze", 1), ([2], "train", 0), (None, "adapted", 0)],
)
def test_no_backward_pass_below_the_lowest_layer_that_trains(family, layers, norms, graph_from):
    """Where nothing below the lowest adapted layer trains, autograd records no graph there: the backward
    pass stops at that layer (what makes top-layer adapters train faster, ablation.bench)."""
    model = tiny_model(family, num_layers=L)
    prepare(model, family, MethodConfig(layernorms=norms), AdapterConfig(**PLAIN, layers=layers))
    recorded = []
    hooks = [
        layer.register_forward_hook(lambda m, i, out: recorded.append(out[0].requires_grad))
        for layer in layer_stack(model)
    ]
    model.train()
    model(**padded_batch(family)).logits.sum().backward()
    for hook in hooks:
        hook.remove()
    assert recorded == [i >= graph_from for i in range(L)]
