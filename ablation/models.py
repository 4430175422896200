"""Pretrained model + tokenizer + classification head per model entry, and the model split into stages."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_causal_mask,
    create_sliding_window_causal_mask,
)
from transformers.utils import logging as transformers_logging

from ablation.config import ConfigError, ModelConfig
from ablation.dropout import use_fast_dropout
from ablation.families import family, layer_stack
from ablation.sources import model_folder


def model_location(cfg: ModelConfig, cache: str | Path) -> tuple[str, bool]:
    """Where the weights are (a hub id, or a local folder of an offline artifact) and whether to use only
    local files: an artifact's missing file must never turn into a hub request."""
    if cfg.source == "hub":
        return cfg.hub_id, False
    return str(model_folder(cfg.artifact, cache)), True


def load_model(cfg: ModelConfig, num_labels: int, cache: str | Path) -> tuple[nn.Module, object, list[str]]:
    """Pretrained model with a new classification head (fp32), its tokenizer, and the newly initialised weights.

    A decoder's tokenizer without a pad token pads with its end-of-sequence token, and the model's config is
    given the same id: its head reads the last token that is not padding. Its dropout modules are FastDropout
    (ablation.dropout): the same distribution, a cheaper draw.
    """
    where, local = model_location(cfg, cache)
    tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local)
    # The load report lists the new head as "missing"; expected here, so only errors are shown.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            where,
            num_labels=num_labels,
            output_loading_info=True,
            local_files_only=local,
            dtype=torch.float32,
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    if model.config.model_type != cfg.family:
        raise ConfigError(
            f"model.family={cfg.family} but {where} is a {model.config.model_type!r} model "
            f"(model.family={model.config.model_type} if the suite knows it)"
        )
    if model.config.num_hidden_layers != cfg.num_layers:
        raise ConfigError(
            f"model.num_layers={cfg.num_layers} but {where} has {model.config.num_hidden_layers} layers"
        )
    if family(cfg.family).decoder:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    use_fast_dropout(model)
    return model, tokenizer, sorted(info["missing_keys"])


def label_word_ids(tokenizer: object, words: list[str]) -> list[int]:
    """The first token of each label word (what its LM logit scores); ConfigError when a word has no token or
    two words begin with the same one."""
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    if not all(ids) or len({i[0] for i in ids}) < len(words):
        tokens = [tokenizer.convert_ids_to_tokens(i[:1]) for i in ids]
        raise ConfigError(
            f"task.label_words={words!r} is not allowed: each needs its own first token, this tokenizer gives "
            f"{tokens}"
        )
    return [i[0] for i in ids]


def lm_head_rows(model: nn.Module, cfg: ModelConfig, cache: str | Path, ids: list[int]) -> torch.Tensor:
    """The pretrained LM head's rows of these token ids: the input embeddings' where the model ties them (its
    sequence classifier has no LM head), else `lm_head.weight` read from the checkpoint."""
    if model.config.tie_word_embeddings:
        return model.get_input_embeddings().weight[ids].detach().clone()
    from safetensors import safe_open
    from transformers.utils import cached_file

    where, local = model_location(cfg, cache)
    index = cached_file(where, "model.safetensors.index.json", local_files_only=local,
                        _raise_exceptions_for_missing_entries=False)  # fmt: skip
    name = (
        json.loads(Path(index).read_text())["weight_map"]["lm_head.weight"] if index else "model.safetensors"
    )
    with safe_open(cached_file(where, name, local_files_only=local), "pt") as f:
        if "lm_head.weight" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
            raise ConfigError(
                f"method.head=lm: {where} has no lm_head.weight and does not tie its embeddings"
            )
        return f.get_tensor("lm_head.weight")[ids].float()


def use_label_words(model: nn.Module, rows: torch.Tensor) -> None:
    """Make the decoder's `score` head the LM head's rows of the label words (method.head=lm): its logits are
    then the LM's next-token logits of the label words at the last non-pad token."""
    with torch.no_grad():
        model.score.weight.copy_(rows.to(model.score.weight.dtype))


class Stages:
    """A sequence classifier as embed -> layer 0..L-1 -> head, each callable on its own, for an encoder or a
    decoder alike.

    Evaluating ablation cells starts from cached hidden states at a layer boundary; these calls
    reproduce the model's own forward exactly (a test checks logits are equal).
    """

    def __init__(self, model: nn.Module, family_name: str) -> None:
        self.model = model
        self.family = family(family_name)
        self.base = model.base_model
        self.layers = layer_stack(model)

    @property
    def num_layers(self) -> int:
        """Number of transformer layers."""
        return len(self.layers)

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Embedding output and what every layer needs besides the hidden states (the mask; MPNet's
        position bias; a decoder's rotary embedding and the position its head reads in each row)."""
        if self.family.decoder:
            return self._embed_decoder(batch)
        h = self.family.embed(self.base, batch)
        mask = create_bidirectional_mask(
            config=self.base.config, inputs_embeds=h, attention_mask=batch["attention_mask"]
        )
        ctx = {"mask": mask}
        if self.family.positions == "relative":
            ctx["position_bias"] = self.base.encoder.compute_position_bias(h)
        return h, ctx

    def _embed_decoder(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """As the decoder's own forward: positions 0..width-1 whatever the padding side, one causal mask per
        attention type (full; sliding window where the config has one)."""
        config = self.base.config
        ids = batch["input_ids"]
        h = self.base.embed_tokens(ids)
        position_ids = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        kwargs = {"config": config, "inputs_embeds": h, "attention_mask": batch["attention_mask"],
                  "cache": None, "position_ids": position_ids}  # fmt: skip
        masks = {"full_attention": create_causal_mask(**kwargs)}
        if getattr(config, "sliding_window", None) is not None:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        # the rightmost token that is not the pad token: what transformers' head reads, either padding side
        non_pad = (ids != config.pad_token_id).to(torch.int32)
        last = (torch.arange(ids.shape[1], device=ids.device, dtype=torch.int32) * non_pad).argmax(-1)
        ctx = {
            "masks": masks,
            "position_ids": position_ids,
            "position_embeddings": self.base.rotary_emb(h, position_ids),
            "pooled": last,
        }
        return h, ctx

    def _mask(self, i: int, ctx: dict) -> torch.Tensor | None:
        """The causal mask layer i attends with (its config's layer type, or Mistral's sliding window)."""
        config = self.base.config
        types = getattr(config, "layer_types", None)
        if types:
            return ctx["masks"][types[i]]
        return ctx["masks"]["sliding_attention" if "sliding_attention" in ctx["masks"] else "full_attention"]

    def pooled_positions(self, h: torch.Tensor, ctx: dict) -> torch.Tensor:
        """Per row, the position the head reads: the first token, or a decoder's last non-pad token (0 once
        the states are that token alone)."""
        if not self.family.decoder or h.shape[1] == 1:
            return torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        return ctx["pooled"].long()

    def layer(self, i: int, h: torch.Tensor, ctx: dict, pooled_only: bool = False) -> torch.Tensor:
        """Run transformer layer i; with pooled_only, its feed-forward only at the position the head reads.

        Every head here reads one position of the last layer (the first token, a decoder's last non-pad
        token), so the last layer's feed-forward (2/3 of a layer's matmuls) is needed there only. Its
        output then has sequence length 1 and matches the full layer's at that position up to rounding.
        Without it, this is the layer's own forward (a test checks equality).
        """
        layer = self.layers[i]
        if self.family.decoder:
            return self._decoder_layer(i, layer, h, ctx, pooled_only)
        a = self.family.attention(layer, h, ctx)
        if pooled_only:
            a = a[:, :1]
        return layer.output(layer.intermediate(a), a)

    def _decoder_layer(self, i: int, layer: nn.Module, h: torch.Tensor, ctx: dict, pooled_only: bool):
        kwargs = {"attention_mask": self._mask(i, ctx), "position_ids": ctx["position_ids"],
                  "position_embeddings": ctx["position_embeddings"]}  # fmt: skip
        if not pooled_only:
            return layer(h, **kwargs)
        a, _ = layer.self_attn(hidden_states=layer.input_layernorm(h), **kwargs)
        rows = torch.arange(h.shape[0], device=h.device)
        h = (h + a)[rows, self.pooled_positions(h, ctx)].unsqueeze(1)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def head(self, h: torch.Tensor, ctx: dict) -> torch.Tensor:
        """Classification logits from the last hidden states."""
        model = self.model
        if self.family.decoder:
            rows = torch.arange(h.shape[0], device=h.device)
            return model.score(self.base.norm(h))[rows, self.pooled_positions(h, ctx)]
        if self.family.pooler:
            return model.classifier(model.dropout(self.base.pooler(h)))
        return model.classifier(h)  # RobertaClassificationHead and MPNet's read the first token themselves

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """All stages in order: the same logits as model(**batch)."""
        h, ctx = self.embed(batch)
        for i in range(self.num_layers):
            h = self.layer(i, h, ctx)
        return self.head(h, ctx)
