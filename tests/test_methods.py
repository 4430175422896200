"""Training methods: which parameters each trains, their exact counts against the analytic formulas."""

from __future__ import annotations

import pytest
from conftest import HIDDEN, NUM_LABELS, padded_batch, tiny_model

from ablation.adapters import encoder_layers
from ablation.config import AdapterConfig, MethodConfig
from ablation.methods import count_parameters, freeze, prepare, trained_names, trained_state

L = 3
D, FF, C = HIDDEN, 64, NUM_LABELS  # tiny_model: hidden 32, intermediate 64, 3 labels
PLAIN = {"size": 8, "init_std": 1e-2, "activation": "gelu", "positions": ["attention", "output"],
         "norm": "none", "depth": 1, "placement": "serial", "combine": "add"}  # fmt: skip


def layer_params(d: int = D, i: int = FF) -> int:
    """One transformer layer: q, k, v, o projections, two LayerNorms, the two feed-forward projections."""
    return 4 * (d * d + d) + 2 * d + (d * i + i) + (i * d + d) + 2 * d


def head_params(family: str, d: int = D, c: int = C) -> int:
    """The classifier: BERT's is one linear layer; MPNet's and RoBERTa's add a dense d x d layer."""
    return d * c + c if family == "bert" else d * d + d + d * c + c


def pooler_params(family: str, d: int = D) -> int:
    """BERT's pooler (trained only by top_k and full); the other families' classifiers have none."""
    return d * d + d if family == "bert" else 0


def layernorm_params(d: int = D, layers: int = L) -> int:
    """2d per LayerNorm: the embeddings' one and two per layer."""
    return 2 * d * (1 + 2 * layers)


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
    assert counts["layernorm"] == layernorm_params()
    assert counts["head"] == head_params(family)
    assert counts["trainable"] == n_adapters * adapter_params(adapter) + layernorm_params() + head_params(
        family
    )
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("k", range(1, L + 1))
def test_top_k_counts_equal_the_formula(family, k):
    model = tiny_model(family, num_layers=L)
    counts = prepare(model, family, MethodConfig("top_k", k), None)
    expected = k * layer_params() + pooler_params(family) + head_params(family)
    assert counts["trainable"] == expected
    assert counts["layers"] + counts["layernorm"] == k * layer_params()
    trained = trained_names(model, "top_k", k)
    prefix = f"{model.base_model_prefix}.encoder.layer."
    layers = {int(n[len(prefix) :].split(".")[0]) for n in trained if n.startswith(prefix)}
    assert layers == set(range(L - k, L))  # the top k, not the bottom k
    assert not any(".embeddings." in n for n in trained)


def test_layernorm_and_full_counts(family):
    model = tiny_model(family, num_layers=L)
    counts = prepare(model, family, MethodConfig("layernorm"), None)
    assert counts["trainable"] == layernorm_params() + head_params(family)
    assert counts["trainable"] == counts["layernorm"] + counts["head"]
    model = tiny_model(family, num_layers=L)
    counts = prepare(model, family, MethodConfig("full"), None)
    assert counts["trainable"] == counts["total"] == sum(p.numel() for p in model.parameters())
    embeddings = counts["total"] - L * layer_params() - head_params(family) - pooler_params(family)
    assert counts["embeddings"] + 2 * D == embeddings  # the embeddings' LayerNorm counts as layernorm


def test_head_method_trains_the_classifier_alone(family):
    model = tiny_model(family, num_layers=L)
    counts = prepare(model, family, MethodConfig("head"), None)
    assert counts["trainable"] == counts["head"] == head_params(family)  # BERT's pooler stays frozen
    assert trained_names(model, "head") == {
        n for n, _ in model.named_parameters() if n.startswith("classifier.")
    }


def test_adapters_method_trains_adapters_layernorms_and_head_only(family):
    model = tiny_model(family, num_layers=L)
    prepare(model, family, MethodConfig(), AdapterConfig(**PLAIN))
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
    assert sum(".adapter." in n for n in trainable) == 2 * L * 4  # 2 slots x (2 weights + 2 biases)
    assert f"{prefix}.embeddings.word_embeddings.weight" not in trainable
    assert not any(".intermediate." in n for n in trainable)
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
    norms_expected = {"train": layernorm_params(), "adapted": 2 * 2 * D * adapted, "freeze": 0}[norms]
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
        for layer in encoder_layers(model)
    ]
    model.train()
    model(**padded_batch(family)).logits.sum().backward()
    for hook in hooks:
        hook.remove()
    assert recorded == [i >= graph_from for i in range(L)]
