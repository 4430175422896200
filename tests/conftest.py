"""Shared helpers: tiny in-memory models per family, random tokenized data, a tiny offline tokenizer."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import transformers
from transformers import PreTrainedTokenizerFast

from ablation.data import Encoded
from ablation.families import FAMILIES as FAMILY_ENTRIES
from ablation.families import is_head

# Tiny models run far faster on one thread; with two, OpenMP threads contending with other
# processes on a 2-core machine made each forward ~50x slower.
torch.set_num_threads(1)

MAX_WORKERS = 4  # each worker holds torch and transformers (~0.6 GB): enough for the suite, kind to big hosts


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """Workers for pyproject's `-n auto`: one per core (up to MAX_WORKERS) for the default suite, whose tests
    each run on one thread; none (this process) under any other -m: the sweeps, slow, slurm and browser
    tests run subprocesses, a shared cluster or a browser, size memory and print progress with -s."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    addopts = config.getini("addopts")
    default = addopts[addopts.index("-m") + 1] if "-m" in addopts else ""  # -o addopts=... may drop it
    if config.option.markexpr != default:
        return 0
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )  # Linux / macOS
    return min(MAX_WORKERS, cores or 1)


# The `family` fixture's families: the three encoders and Llama, the decoder family every other decoder here
# shares its block with. DECODERS are checked cell by cell against from-scratch forwards (test_decoders.py).
FAMILIES = ("bert", "mpnet", "roberta", "llama")
DECODERS = ("llama", "qwen2", "qwen3", "mistral")
VOCAB_SIZE = 100
HIDDEN = 32
NUM_LABELS = 3

# Looked up when a test builds one: a process that builds BERT alone imports no decoder's modules (the memory
# test measures a process's allocations, and importing the decoders' modules changed them by a few MiB).
_CLASSES = {
    "bert": ("BertConfig", "BertForSequenceClassification"),
    "mpnet": ("MPNetConfig", "MPNetForSequenceClassification"),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification"),
    "llama": ("LlamaConfig", "LlamaForSequenceClassification"),
    "qwen2": ("Qwen2Config", "Qwen2ForSequenceClassification"),
    "qwen3": ("Qwen3Config", "Qwen3ForSequenceClassification"),
    "mistral": ("MistralConfig", "MistralForSequenceClassification"),
}
# Decoders: grouped-query attention (4 heads, 2 key-value heads), the pad token id 1, and sliding windows of 6
# tokens where the family has them (Mistral's every layer, Qwen2's layers above the first), shorter than the
# longest examples, so the sliding masks are exercised.
DECODER_OPTIONS = {
    "llama": {},
    "qwen2": {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
    "qwen3": {"head_dim": 8},
    "mistral": {"sliding_window": 6, "head_dim": 8},
}


def tiny_model(family: str, num_layers: int = 3, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised sequence classifier of the family, in eval mode (no download)."""
    config_cls, model_cls = (getattr(transformers, name) for name in _CLASSES[family])
    decoder = {"num_key_value_heads": 2, "pad_token_id": pad_id(family), **DECODER_OPTIONS.get(family, {})}
    config = config_cls(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=NUM_LABELS,
        **(decoder if family in DECODERS else {}),
    )
    torch.manual_seed(seed)
    return model_cls(config).eval()


# The decoder families' name of each encoder LoRA target (PEFT's names for Llama-like blocks)
_DECODER_LORA = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "attention_output": "o_proj",
                 "intermediate": "up_proj", "output": "down_proj"}  # fmt: skip


def lora_names(family: str, targets: list[str]) -> list[str]:
    """Encoder LoRA target names as the family names the same projections."""
    return [_DECODER_LORA[t] for t in targets] if family in DECODERS else list(targets)


def skip_refused(family: str, placement: str) -> None:
    """Skip a placement the family refuses (normed on a pre-norm decoder; test_decoders checks the refusal)."""
    if f"adapter.placement={placement}" in FAMILY_ENTRIES[family].refused:
        pytest.skip(f"adapter.placement={placement} is refused on {family}")


def perturb_layernorms_and_head(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every norm (LayerNorm, RMSNorm) and the head non-default values (as if trained)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layernorm" in name or "norm." in name or is_head(model, name):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def pad_id(family: str) -> int:
    """The pad token id of the family's default config."""
    return 0 if family == "bert" else 1


def random_encoded(
    family: str,
    n: int = 40,
    seed: int = 0,
    min_len: int = 3,
    max_len: int = 20,
    num_labels: int = NUM_LABELS,
    padding_side: str = "right",
) -> Encoded:
    """n random examples of varying length; BERT gets sentence-pair token types, the others none."""
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
        padding_side=padding_side,
    )


def padded_batch(family: str, seed: int = 0, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """A batch of 4 with different amounts of padding (no labels)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB_SIZE, (4, 12), generator=gen)
    ids[ids == pad_id(family)] = 7
    mask = torch.ones_like(ids)
    for row, n in enumerate((12, 9, 5, 2)):
        if padding_side == "left":
            mask[row, : 12 - n] = 0
        else:
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
