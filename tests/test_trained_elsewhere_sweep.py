"""LoRA and imported adapters end to end: the heatmap sweep trains LoRA once on the tiny model (cells,
diagnostics, the row's LoRA settings); a PEFT folder is analysed with no training; bad folders stop the sweep
before anything is written. AdapterHub folders in a sweep: tests/test_matrix.py."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from e2e import CELLS, command, run

pytestmark = pytest.mark.sweeps


def test_a_lora_heatmap_on_the_tiny_model(toy, tmp_path):
    conf, cache, sequential = toy
    args = command(conf, tmp_path / "a", tmp_path / "store", cache, *CELLS, "method=lora", "method.r=4",
                   "method.alpha=16")  # fmt: skip
    done = run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "a" / "results.csv")
    assert len(rows) == 4 and rows["trained_now"].sum() == 1 and (rows["method"] == "lora").all()
    assert (rows["lora_r"] == 4).all() and (rows["lora_target"] == "query+value").all()
    assert rows["adapter_size"].isna().all()  # the adapter group does not apply to LoRA
    d, L = 32, 3  # the toy model: hidden 32, 3 layers; LoRA on query and value, r = 4
    # BERT's pooler is frozen (as for adapters): the classifier's weight and bias train with LoRA
    assert (rows["trained_params"] == L * 2 * 4 * (d + d) + 2 * d + 2).all()
    assert rows["accuracy"].nunique() > 1  # the toy's LoRA matters: cells differ
    # the plain adapters' sweep of the same cells (the toy fixture) is another training key
    assert set(rows["train_key"]).isdisjoint(pd.read_csv(sequential / "results.csv")["train_key"])
    diagnostics = pd.read_csv(tmp_path / "a" / str(rows["job_dir"].iloc[0]) / "diagnostics.csv")
    assert set(diagnostics["position"]) == {"query", "value"} and len(diagnostics) == 2 * L


def test_a_peft_folder_is_analysed_without_training_and_bad_folders_write_nothing(toy, tmp_path):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import BertForSequenceClassification

    conf, cache, _ = toy
    base = BertForSequenceClassification.from_pretrained(conf.parent / "model", num_labels=2)
    peft_model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, lora_alpha=4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # large, so that removing a layer's LoRA changes predictions
                p.copy_(torch.randn(p.shape, generator=generator) * 10)
            elif "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=generator))
    peft_model.save_pretrained(tmp_path / "lora")
    args = command(conf, tmp_path / "a", tmp_path / "store", cache, *CELLS, "method=lora",
                   f"method.load={tmp_path / 'lora'}")  # fmt: skip
    done = run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported" in done.stdout
    rows = pd.read_csv(tmp_path / "a" / "results.csv")
    assert len(rows) == 4 and (rows["train_steps"] == 0).all() and (rows["lora_r"] == 2).all()
    assert (rows["lora_loaded_from"] == str(tmp_path / "lora")).all() and rows["train_key"].nunique() == 1
    assert rows["accuracy"].nunique() > 1  # the imported LoRA matters in some cells
    for bad, message in [(tmp_path / "missing", "not a folder"), (cache, "no adapter_config.json")]:
        args = command(conf, tmp_path / "b", tmp_path / "store", cache, *CELLS, "method=lora",
                       f"method.load={bad}")  # fmt: skip
        done = run(args)
        assert done.returncode != 0 and message in done.stderr
        assert len([line for line in done.stderr.splitlines() if "method.load" in line]) == 1
        assert not (tmp_path / "b").exists()
