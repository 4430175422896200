"""Shared helpers: tiny in-memory models per family, random tokenized data, a tiny offline tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from ablation.data import Encoded

# Tiny models run far faster on one thread; with two, OpenMP threads contending with other
# processes on a 2-core machine made each forward ~50x slower.
torch.set_num_threads(1)

FAMILIES = ("bert", "mpnet", "roberta")
VOCAB_SIZE = 100
HIDDEN = 32
NUM_LABELS = 3

_CLASSES = {
    "bert": (BertConfig, BertForSequenceClassification),
    "mpnet": (MPNetConfig, MPNetForSequenceClassification),
    "roberta": (RobertaConfig, RobertaForSequenceClassification),
}


def tiny_model(family: str, num_layers: int = 3, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised sequence classifier of the family, in eval mode (no download)."""
    config_cls, model_cls = _CLASSES[family]
    config = config_cls(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=NUM_LABELS,
    )
    torch.manual_seed(seed)
    return model_cls(config).eval()


def perturb_layernorms_and_head(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every LayerNorm and the head non-default values (as if trained)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.startswith("classifier."):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def pad_id(family: str) -> int:
    """The pad token id of the family's default config."""
    return 0 if family == "bert" else 1


def random_encoded(
    family: str, n: int = 40, seed: int = 0, min_len: int = 3, max_len: int = 20, num_labels: int = NUM_LABELS
) -> Encoded:
    """n random examples of varying length; BERT gets sentence-pair token types, MPNet none."""
    rng = np.random.default_rng(seed)
    special = pad_id(family)
    input_ids, token_type_ids = [], []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        ids = rng.integers(3, VOCAB_SIZE, size=length)
        ids[ids == special] = special + 5
        input_ids.append([int(x) for x in ids])
        cut = int(rng.integers(1, length + 1))
        token_type_ids.append([0] * cut + [1] * (length - cut))
    return Encoded(
        input_ids=input_ids,
        token_type_ids=token_type_ids if family == "bert" else None,
        labels=rng.integers(0, num_labels, size=n).astype(np.int64),
        pad_id=special,
    )


def padded_batch(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of 4 with different amounts of padding (no labels)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB_SIZE, (4, 12), generator=gen)
    ids[ids == pad_id(family)] = 7
    mask = torch.ones_like(ids)
    for row, n in enumerate((12, 9, 5, 2)):
        mask[row, n:] = 0
    ids[mask == 0] = pad_id(family)
    batch = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        types = torch.zeros_like(ids)
        types[:, 6:] = 1
        batch["token_type_ids"] = types * mask
    return batch


WORDS = ["the", "a", "movie", "film", "good", "bad", "great", "awful", "plot", "is", "was", "not", "very"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over WORDS with [CLS] A [SEP] (B [SEP]) templates; built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    """Each test using it runs once per model family."""
    return request.param


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """The tiny model and toy task on disk (tests/e2e.py), their dataset cache, and an uninterrupted
    sequential sweep of its 4 cells: (conf dir, cache, sweep dir). Built once per test session."""
    from e2e import CELLS, command, run, write_toy

    root = tmp_path_factory.mktemp("toy")
    conf = write_toy(root)
    done = run(command(conf, root / "sequential", root / "store", root / "cache", *CELLS))
    assert done.returncode == 0, done.stderr[-3000:]
    return conf, root / "cache", root / "sequential"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running one-node SLURM cluster: the one `.ci/run` started (SLURM_CONF set and answering), else one
    started here for the session (tests/slurm_cluster.py). Its client environment (SLURM_CONF, PATH with the
    sacct stand-in first). Where none can run: skipped with the reason, but a failure under CI=true."""
    import os
    import subprocess

    import slurm_cluster

    if os.environ.get("SLURM_CONF") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
        yield {"SLURM_CONF": os.environ["SLURM_CONF"], "PATH": os.environ["PATH"]}
        return
    root = tmp_path_factory.mktemp("slurm")
    try:
        env = slurm_cluster.up(root)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
        why = f"no SLURM cluster could be started here: {err}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    yield env
    slurm_cluster.down(root)
