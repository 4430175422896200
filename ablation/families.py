"""What the suite knows of each model family, in one entry: where its layers, adapter slots, norms, LoRA
targets and head are, and how a layer is called.

Two shapes of block are held:
- post-norm encoders (BERT, RoBERTa, MPNet): LayerNorm(dropout(proj(x)) + residual) after attention and
  after the feed-forward, a bidirectional mask, a head on the first token (BERT's through its pooler);
- pre-norm decoders (Llama, Qwen2, Qwen3, Mistral): x + proj(sub-layer(RMSNorm(x))), a causal mask, rotary
  positions, transformers' `*ForSequenceClassification` head (`score`) on the last non-pad token after the
  final norm.

Houlsby's slot is after a sub-layer's output projection, before the residual add: in an encoder the dropout
that follows the projection (its output is the projection's, dropped out), in a decoder the projection
itself (o_proj, down_proj; no dropout and no norm follow it there). Adding a family is one `Family` entry
below, one conf/model file and its tiny test model (tests/conftest.py). Nothing here imports torch, so
configs can check family names without it; the helpers that take modules only read them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ENCODER, DECODER = "encoder", "decoder"


def _embed_with_token_types(base: Any, batch: dict) -> Any:
    return base.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))


def _embed_ids(base: Any, batch: dict) -> Any:
    return base.embeddings(input_ids=batch["input_ids"])


def _attention(layer: Any, h: Any, ctx: dict) -> Any:
    return layer.attention(h, ctx["mask"])[0]


def _attention_with_bias(layer: Any, h: Any, ctx: dict) -> Any:
    return layer.attention(h, ctx["mask"], position_bias=ctx["position_bias"])[0]


def _no_extra(config: Any, n: int, width: int) -> int:
    return 0


def _position_bias_bytes(config: Any, n: int, width: int) -> int:
    return n * config.num_attention_heads * width * width * 4


def _rotary_bytes(config: Any, n: int, width: int) -> int:
    """cos and sin of the rotary embedding, one head's width per position (shared by the batch)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * width * head_dim * 4


@dataclass(frozen=True)
class Family:
    """One architecture family: its layer stack, adapter slots, norms, LoRA targets, head, and the calls
    that run it stage by stage."""

    kind: str  # ENCODER (post-norm, bidirectional) or DECODER (pre-norm, causal)
    base: str  # the base model's attribute (base_model_prefix): the first part of every parameter name
    head: str  # the classification head's module, outside the base model
    layers: str  # the layer ModuleList, from the base model
    final_norm: str | None  # the norm after the last layer, from the base model (pre-norm decoders)
    # position -> the module inside a layer whose output the adapter changes (the sub-layer's output, before
    # the residual add)
    slots: dict[str, str]
    # position -> the module whose input a parallel adapter reads: the residual stream entering the sub-layer
    inputs: dict[str, str]
    # position -> the sub-layer's norms inside a layer: after its residual add (post-norm) or before the
    # sub-layer (pre-norm); what ablate.layernorm=pretrained restores
    norms: dict[str, tuple[str, ...]]
    # LoRA target name -> (the linear layer it wraps inside a layer, the position of its sub-layer)
    lora_targets: dict[str, tuple[str, str]]
    lora_default: tuple[str, ...]  # PEFT's own default targets for this architecture
    positions: str  # absolute | relative (a bias every layer takes) | rotary
    pooling: (
        str  # first (the first token) | pooler (BERT's dense-tanh layer on it) | last (last non-pad token)
    )
    embed: Callable[[Any, dict], Any] | None = None  # encoders: (base model, batch) -> embedding output
    attention: Callable[[Any, Any, dict], Any] | None = None  # encoders: (layer, h, ctx) -> attention output
    # bytes held per batch of n x width tokens besides the hidden states and the mask (fp32)
    extra_state_bytes: Callable[[Any, int, int], int] = _no_extra
    # AdapterHub folders (None: its library has no such model): the head's two linear layers, and which of
    # AdapterHub's modules inside a layer holds the adapter of each position
    adapterhub_head: tuple[str, str] | None = None
    adapterhub_slots: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # "option=value" -> why the family cannot do it

    @property
    def pooler(self) -> bool:
        """True when the head reads a pooler (BERT's dense-tanh layer) besides the classifier."""
        return self.pooling == "pooler"

    @property
    def decoder(self) -> bool:
        """True for a pre-norm causal decoder."""
        return self.kind == DECODER

    @property
    def mask(self) -> str:
        """The attention mask: bidirectional (encoders) or causal (decoders), both with padding."""
        return "causal" if self.decoder else "bidirectional"

    @property
    def lora_positions(self) -> dict[str, str]:
        """LoRA target -> the position (sub-layer) it belongs to: what ablate.positions selects by."""
        return {target: position for target, (_, position) in self.lora_targets.items()}


_BERT_SLOTS = {"attention": "attention.output.dropout", "output": "output.dropout"}
_BERT_INPUTS = {"attention": "attention.self", "output": "intermediate"}
_BERT_NORMS = {"attention": ("attention.output.LayerNorm",), "output": ("output.LayerNorm",)}
_BERT_LORA = {
    "query": ("attention.self.query", "attention"),
    "key": ("attention.self.key", "attention"),
    "value": ("attention.self.value", "attention"),
    "attention_output": ("attention.output.dense", "attention"),
    "intermediate": ("intermediate.dense", "output"),
    "output": ("output.dense", "output"),
}
_ENCODER_LORA_DEFAULT = ("query", "value")
_BERT_HEAD = ("bert.pooler.dense", "classifier")
_TOKEN_HEAD = ("classifier.dense", "classifier.out_proj")
_BERT_HUB_SLOTS = {"attention": "attention.output", "output": "output"}  # the modules whose dropout we wrap

# Llama, Qwen2, Qwen3 and Mistral share the block: input_layernorm -> self_attn (q, k, v, o) -> + residual,
# post_attention_layernorm -> mlp (gate, up, down) -> + residual. Qwen3 adds RMSNorms on the queries and keys.
_DECODER_SLOTS = {"attention": "self_attn.o_proj", "output": "mlp.down_proj"}
_DECODER_INPUTS = {"attention": "input_layernorm", "output": "post_attention_layernorm"}
_DECODER_NORMS = {"attention": ("input_layernorm",), "output": ("post_attention_layernorm",)}
_DECODER_LORA = {
    "q_proj": ("self_attn.q_proj", "attention"),
    "k_proj": ("self_attn.k_proj", "attention"),
    "v_proj": ("self_attn.v_proj", "attention"),
    "o_proj": ("self_attn.o_proj", "attention"),
    "gate_proj": ("mlp.gate_proj", "output"),
    "up_proj": ("mlp.up_proj", "output"),
    "down_proj": ("mlp.down_proj", "output"),
}
# AdapterHub's Llama and Mistral (not Qwen): its modules after o_proj and after the MLP, before the residual
# add; its head is dense-tanh-out on the last token, which the suite builds in place of `score` (TWO_LAYER_HEAD)
_DECODER_HUB_SLOTS = {"attention": "attention_adapters", "output": "output_adapters"}
TWO_LAYER_HEAD = ("score.0", "score.2")
_PRE_NORM = {
    "adapter.placement=normed": "a normed adapter reads the norm after the sub-layer's residual add, and a "
    "pre-norm block has none there (use serial or parallel)",
}


def _decoder(norms: dict[str, tuple[str, ...]] = _DECODER_NORMS, adapterhub: bool = False) -> Family:
    return Family(
        kind=DECODER,
        base="model",
        head="score",
        layers="layers",
        final_norm="norm",
        slots=_DECODER_SLOTS,
        inputs=_DECODER_INPUTS,
        norms=norms,
        lora_targets=_DECODER_LORA,
        lora_default=("q_proj", "v_proj"),
        positions="rotary",
        pooling="last",
        extra_state_bytes=_rotary_bytes,
        adapterhub_head=TWO_LAYER_HEAD if adapterhub else None,
        adapterhub_slots=_DECODER_HUB_SLOTS if adapterhub else {},
        refused=_PRE_NORM,
    )


FAMILIES: dict[str, Family] = {
    "bert": Family(
        ENCODER, "bert", "classifier", "encoder.layer", None, _BERT_SLOTS, _BERT_INPUTS, _BERT_NORMS, _BERT_LORA, _ENCODER_LORA_DEFAULT,
        "absolute", "pooler", _embed_with_token_types, _attention, adapterhub_head=_BERT_HEAD, adapterhub_slots=_BERT_HUB_SLOTS,
    ),
    "roberta": Family(
        ENCODER, "roberta", "classifier", "encoder.layer", None, _BERT_SLOTS, _BERT_INPUTS, _BERT_NORMS, _BERT_LORA, _ENCODER_LORA_DEFAULT,
        "absolute", "first", _embed_with_token_types, _attention, adapterhub_head=_TOKEN_HEAD, adapterhub_slots=_BERT_HUB_SLOTS,
    ),
    "mpnet": Family(
        kind=ENCODER,
        base="mpnet",
        head="classifier",
        layers="encoder.layer",
        final_norm=None,
        slots={"attention": "attention.dropout", "output": "output.dropout"},
        inputs={"attention": "attention.attn", "output": "intermediate"},
        norms={"attention": ("attention.LayerNorm",), "output": ("output.LayerNorm",)},
        lora_targets={
            "query": ("attention.attn.q", "attention"),
            "key": ("attention.attn.k", "attention"),
            "value": ("attention.attn.v", "attention"),
            "attention_output": ("attention.attn.o", "attention"),
            "intermediate": ("intermediate.dense", "output"),
            "output": ("output.dense", "output"),
        },
        lora_default=_ENCODER_LORA_DEFAULT,
        positions="relative",
        pooling="first",
        embed=_embed_ids,
        attention=_attention_with_bias,
        extra_state_bytes=_position_bias_bytes,
        adapterhub_head=_TOKEN_HEAD,
        adapterhub_slots={"attention": "attention", "output": "output"},
    ),
    "llama": _decoder(adapterhub=True),
    "mistral": _decoder(adapterhub=True),
    "qwen2": _decoder(),
    "qwen3": _decoder(
        {
            "attention": ("input_layernorm", "self_attn.q_norm", "self_attn.k_norm"),
            "output": ("post_attention_layernorm",),
        }
    ),
}  # fmt: skip
# Every LoRA target name some family knows, in one order (a method's targets are written in it).
LORA_TARGETS = tuple(dict.fromkeys(t for f in FAMILIES.values() for t in f.lora_targets))


def family(name: str) -> Family:
    """The entry of a family name; ValueError listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"family={name!r}: known families are {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(model: Any) -> Family:
    """The family of a transformers model (its config's model_type)."""
    return family(model.config.model_type)


def layer_stack(model: Any) -> Any:
    """The transformer layers (a ModuleList) of a *ForSequenceClassification model of a known family."""
    return model.base_model.get_submodule(family_of(model).layers)


def layers_prefix(model: Any) -> str:
    """Name prefix of the layers' parameters, e.g. 'bert.encoder.layer.' or 'model.layers.'."""
    return f"{model.base_model_prefix}.{family_of(model).layers}."


def is_norm(module: Any) -> bool:
    """True for a LayerNorm or an RMSNorm (transformers' *RMSNorm classes, torch's nn.RMSNorm)."""
    name = type(module).__name__
    return name == "LayerNorm" or name.endswith("RMSNorm")


def is_head(model: Any, name: str) -> bool:
    """True for a parameter of the classification head: everything outside the base model (BERT's and
    RoBERTa's `classifier`, a decoder's `score`)."""
    return not name.startswith(f"{model.base_model_prefix}.")
