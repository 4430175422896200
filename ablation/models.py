"""Encoder + tokenizer + classification head per model entry, and the model split into stages."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as transformers_logging

from ablation.config import ConfigError, ModelConfig
from ablation.dropout import use_fast_dropout
from ablation.families import family
from ablation.sources import artifact_path


def model_location(cfg: ModelConfig, cache: str | Path) -> tuple[str, bool]:
    """Where the weights are (a hub id, or a local folder of an offline artifact) and whether to use only
    local files: an artifact's missing file must never turn into a hub request."""
    if cfg.source == "hub":
        return cfg.hub_id, False
    return str(artifact_path(cfg.artifact, cache).parent), True


def load_model(cfg: ModelConfig, num_labels: int, cache: str | Path) -> tuple[nn.Module, object, list[str]]:
    """Pretrained encoder with a new classification head, its tokenizer, and the newly initialised weights.

    Its dropout modules are FastDropout (ablation.dropout): the same distribution, a cheaper draw.
    """
    where, local = model_location(cfg, cache)
    tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local)
    # The load report lists the new head as "missing"; expected here, so only errors are shown.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            where, num_labels=num_labels, output_loading_info=True, local_files_only=local
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    if model.config.num_hidden_layers != cfg.num_layers:
        raise ConfigError(
            f"model.num_layers={cfg.num_layers} but {where} has {model.config.num_hidden_layers} layers"
        )
    use_fast_dropout(model)
    return model, tokenizer, sorted(info["missing_keys"])


class Stages:
    """A sequence classifier as embed -> layer 0..L-1 -> head, each callable on its own.

    Evaluating ablation cells starts from cached hidden states at a layer boundary; these calls
    reproduce the model's own forward exactly (a test checks logits are equal).
    """

    def __init__(self, model: nn.Module, family_name: str) -> None:
        self.model = model
        self.family = family(family_name)
        self.base = model.base_model
        self.layers = self.base.encoder.layer

    @property
    def num_layers(self) -> int:
        """Number of transformer layers."""
        return len(self.layers)

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Embedding output and what every layer needs besides the hidden states."""
        h = self.family.embed(self.base, batch)
        mask = create_bidirectional_mask(
            config=self.base.config, inputs_embeds=h, attention_mask=batch["attention_mask"]
        )
        ctx = {"mask": mask}
        if self.family.position_bias:
            ctx["position_bias"] = self.base.encoder.compute_position_bias(h)
        return h, ctx

    def layer(self, i: int, h: torch.Tensor, ctx: dict, first_token_only: bool = False) -> torch.Tensor:
        """Run transformer layer i; with first_token_only, its feed-forward only at position 0.

        Every head here reads only the first token of the last layer, so the last layer's
        feed-forward (2/3 of a layer's matmuls) is needed at one position. Its output then has
        sequence length 1 and matches the full layer's first position up to rounding. Without it,
        this is the layer's own forward: attention, then feed-forward (a test checks equality).
        """
        layer = self.layers[i]
        a = self.family.attention(layer, h, ctx)
        if first_token_only:
            a = a[:, :1]
        return layer.output(layer.intermediate(a), a)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Classification logits from the last hidden states."""
        return self.family.head(self.model, h)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """All stages in order: the same logits as model(**batch)."""
        h, ctx = self.embed(batch)
        for i in range(self.num_layers):
            h = self.layer(i, h, ctx)
        return self.head(h)
