"""LoRA and imported adapters end to end: the heatmap sweep trains LoRA once on the tiny model (cells,
diagnostics, the row's LoRA settings); a PEFT folder and an AdapterHub folder are analysed with no training;
bad folders stop the sweep before anything is written."""

from __future__ import annotations

from pathlib import Path

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


def test_an_adapterhub_folder_is_analysed_without_training(tmp_path):
    """The issue's command on the AdapterHub fixture: its base (with a tokenizer) as the model, a 3-label CSV."""
    import shutil

    import numpy as np
    from conftest import tiny_tokenizer

    fixture = Path(__file__).parent / "fixtures" / "adapterhub"
    shutil.copytree(fixture / "base", tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    rng = np.random.default_rng(0)
    words = ["the", "movie", "film", "plot", "good", "bad", "great", "awful", "is", "was"]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(120)]
    pd.DataFrame({"text": texts, "label": [i % 3 for i in range(120)]}).to_csv(
        tmp_path / "three.csv", index=False
    )
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "task").mkdir()
    (conf / "model" / "hub_base.yaml").write_text(
        f"name: hub_base\nfamily: bert\nsource: hub\nhub_id: {tmp_path / 'base'}\nnum_layers: 3\n"
    )
    (conf / "task" / "three.yaml").write_text(
        f"name: three\nsource: csv\npath: {tmp_path / 'three.csv'}\nnum_labels: 3\nvalidation_size: 40\n"
    )
    args = ["-m", f"hydra.searchpath=[file://{conf}]", "model=hub_base", "task=three", "eval.precision=fp32",
            f"adapter.load={fixture / 'houlsby'}", "ablate.first=0..2", "ablate.last=0..2",
            f"paths.store={tmp_path / 'store'}", f"paths.cache={tmp_path / 'cache'}",
            f"hydra.sweep.dir={tmp_path / 'a'}"]  # fmt: skip
    done = run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "a" / "results.csv")
    assert len(rows) == 6 and (rows["train_steps"] == 0).all() and rows["trained_now"].sum() == 1
    assert (rows["adapter_size"] == 8).all() and (rows["adapter_activation"] == "swish").all()
    assert (rows["adapter_loaded_from"] == str(fixture / "houlsby")).all()
    assert rows["accuracy"].notna().all() and (tmp_path / "a" / "heatmap.png").exists()
