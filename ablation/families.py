"""What the suite knows of each model family, in one entry: where adapters go, how a layer is called.

A family here is a transformers *ForSequenceClassification architecture whose layers compute
LayerNorm(dropout(proj(x)) + residual) after attention and after the feed-forward. Supporting another one
is one `Family` entry below plus its tiny test model (tests/conftest.py). Nothing here imports torch when the
module is imported, so configs can check family names without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _embed_with_token_types(base: Any, batch: dict) -> Any:
    return base.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))


def _embed_ids(base: Any, batch: dict) -> Any:
    return base.embeddings(input_ids=batch["input_ids"])


def _attention(layer: Any, h: Any, ctx: dict) -> Any:
    return layer.attention(h, ctx["mask"])[0]


def _attention_with_bias(layer: Any, h: Any, ctx: dict) -> Any:
    return layer.attention(h, ctx["mask"], position_bias=ctx["position_bias"])[0]


def _pooled_head(model: Any, h: Any) -> Any:
    return model.classifier(model.dropout(model.base_model.pooler(h)))


def _token_head(model: Any, h: Any) -> Any:
    return model.classifier(h)  # RobertaClassificationHead and MPNet's read the first token themselves


def _no_extra(config: Any, n: int, width: int) -> int:
    return 0


def _position_bias_bytes(config: Any, n: int, width: int) -> int:
    return n * config.num_attention_heads * width * width * 4


@dataclass(frozen=True)
class Family:
    """One architecture family: adapter slots, the calls that run it stage by stage, what those keep."""

    # position -> the dropout after the sub-layer's output projection (inside a layer): the adapter's slot
    slots: dict[str, str]
    # position -> the sub-layer's first module, whose input a parallel adapter reads
    inputs: dict[str, str]
    # position -> the LayerNorm that follows the sub-layer's residual add (what an ablation can restore)
    norms: dict[str, str]
    # LoRA target -> the linear layer it wraps (inside a layer); its sub-layer is LORA_POSITIONS[target]
    lora_targets: dict[str, str]
    embed: Callable[[Any, dict], Any]  # (base model, batch) -> embedding output
    attention: Callable[[Any, Any, dict], Any]  # (layer, hidden states, context) -> attention output
    head: Callable[[Any, Any], Any]  # (model, last hidden states) -> logits
    position_bias: bool = False  # the encoder computes a relative position bias every layer takes
    # bytes held per batch of n x width tokens besides the hidden states and the mask (fp32)
    extra_state_bytes: Callable[[Any, int, int], int] = _no_extra

    @property
    def pooler(self) -> bool:
        """True when the head reads a pooler (BERT's dense-tanh layer) besides the classifier."""
        return self.head is _pooled_head


_BERT_SLOTS = {"attention": "attention.output.dropout", "output": "output.dropout"}
_BERT_INPUTS = {"attention": "attention.self", "output": "intermediate"}
_BERT_NORMS = {"attention": "attention.output.LayerNorm", "output": "output.LayerNorm"}
_BERT_LORA = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
# The sub-layer (adapter position) each LoRA target belongs to: ablate.positions selects by it.
LORA_POSITIONS = {
    "query": "attention",
    "key": "attention",
    "value": "attention",
    "attention_output": "attention",
    "intermediate": "output",
    "output": "output",
}

FAMILIES: dict[str, Family] = {
    "bert": Family(
        _BERT_SLOTS, _BERT_INPUTS, _BERT_NORMS, _BERT_LORA, _embed_with_token_types, _attention, _pooled_head
    ),
    "roberta": Family(
        _BERT_SLOTS, _BERT_INPUTS, _BERT_NORMS, _BERT_LORA, _embed_with_token_types, _attention, _token_head
    ),
    "mpnet": Family(
        slots={"attention": "attention.dropout", "output": "output.dropout"},
        inputs={"attention": "attention.attn", "output": "intermediate"},
        norms={"attention": "attention.LayerNorm", "output": "output.LayerNorm"},
        lora_targets={
            "query": "attention.attn.q",
            "key": "attention.attn.k",
            "value": "attention.attn.v",
            "attention_output": "attention.attn.o",
            "intermediate": "intermediate.dense",
            "output": "output.dense",
        },
        embed=_embed_ids,
        attention=_attention_with_bias,
        head=_token_head,
        position_bias=True,
        extra_state_bytes=_position_bias_bytes,
    ),
}


def family(name: str) -> Family:
    """The entry of a family name; ValueError listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"family={name!r}: known families are {sorted(FAMILIES)}")
    return FAMILIES[name]
