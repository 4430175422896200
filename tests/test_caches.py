"""Stored files are never trusted blindly: no code runs on load, and a bad file is named, not used."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from conftest import tiny_model

from ablation.adapters import inject_adapters
from ablation.config import AdapterConfig
from ablation.methods import freeze
from ablation.train import HISTORY_COLUMNS, CacheError, load_checkpoint, load_trained, save_trained

NO_HISTORY = {name: [] for name in HISTORY_COLUMNS}  # a store entry's history, empty: not what is tested here


class _Payload:
    """Unpickling this runs os.system: what a planted checkpoint would do under a plain torch.load."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _model(size: int = 8) -> torch.nn.Module:
    model = tiny_model("bert", num_layers=2, seed=0)
    inject_adapters(model, "bert", AdapterConfig(size=size, init_std=1e-2))
    freeze(model, "adapters")
    return model


def test_a_pickle_payload_where_a_checkpoint_belongs_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "executed"
    planted = tmp_path / "key.partial.pt"
    torch.save({"step": 3, "params": _Payload(str(marker))}, planted)  # torch.save pickles the payload
    with pytest.raises(CacheError, match=f"{planted}: not a readable training checkpoint.*delete it"):
        load_checkpoint(planted)
    assert not marker.exists()
    # the same file through an unrestricted unpickler would have run it: the test's payload is real
    with open(planted, "rb") as fh:
        head = fh.read()
    assert b"system" in head
    pickle.loads(pickle.dumps(_Payload(str(marker))))
    assert marker.exists()


def test_a_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "key.partial.pt"
    torch.save({"step": 3, "params": {"w": torch.zeros(64, 64)}}, path)
    assert load_checkpoint(path)["step"] == 3  # what train() writes loads under weights_only
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CacheError, match="key.partial.pt: not a readable training checkpoint"):
        load_checkpoint(path)


def test_a_truncated_or_foreign_store_entry_is_named(tmp_path):
    model = _model()
    folder = tmp_path / "store" / "key"
    save_trained(model, folder, {}, {"k": 1}, {"train_seconds": 1.0}, NO_HISTORY)
    assert load_trained(_model(), folder) == {"train_seconds": 1.0}

    other = _model(size=4)  # same names, other shapes: trained for another adapter size
    with pytest.raises(CacheError, match="differ in shape from the model's.*delete .*key to retrain"):
        load_trained(other, folder)

    file = folder / "trained.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CacheError, match=r"trained\.safetensors: unreadable .*delete .*key to retrain"):
        load_trained(_model(), folder)
    assert json.loads((folder / "metrics.json").read_text())  # nothing else touched


def test_a_malformed_cell_cache_is_named(tmp_path):
    import numpy as np

    from ablation.atomic import save_array
    from ablation.session import read_predictions

    path = tmp_path / "cell-0-1-both.npy"
    save_array(path, np.arange(5, dtype=np.int16))
    assert read_predictions(path, 5).tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary name is gone
    with pytest.raises(CacheError, match="cell-0-1-both.npy: holds int16 \\(5,\\), expected 7"):
        read_predictions(path, 7)  # a cache of another validation set
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CacheError, match="cell-0-1-both.npy: unreadable cell cache"):
        read_predictions(path, 5)


def test_a_malformed_result_json_is_named(tmp_path):
    from analysis.collect import load_results

    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "result.json").write_text('{"seed": 0, "accuracy": 0.')
    with pytest.raises(ValueError, match="0/result.json: malformed JSON"):
        load_results(tmp_path)


def test_the_dataset_cache_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write that dies half-way leaves neither the final folder nor a temporary one."""
    import pandas as pd
    from datasets import DatasetDict

    from ablation import data
    from ablation.config import TaskConfig

    frame = pd.DataFrame({"text": [f"s{i}" for i in range(40)], "label": [i % 2 for i in range(40)]})
    monkeypatch.setitem(data.READERS, "rotten-tomatoes", lambda path: frame)
    monkeypatch.setattr(data, "artifact_path", lambda name, cache: tmp_path)
    cfg = TaskConfig(name="rotten_tomatoes", artifact="rotten-tomatoes", validation_size=10)

    def dying(self, path, *args, **kwargs):
        (tmp_path / "half").write_text("")  # something was written
        raise OSError("disk full")

    real = DatasetDict.save_to_disk
    monkeypatch.setattr(DatasetDict, "save_to_disk", dying)
    with pytest.raises(OSError, match="disk full"):
        data.load_task(cfg, tmp_path / "cache")
    assert [p.suffix for p in (tmp_path / "cache" / "datasets").iterdir()] == [".lock"]  # only its lock
    monkeypatch.setattr(DatasetDict, "save_to_disk", real)
    first = data.load_task(cfg, tmp_path / "cache")
    [folder] = [p for p in (tmp_path / "cache" / "datasets").iterdir() if p.suffix != ".lock"]
    again = data.load_task(cfg, tmp_path / "cache")  # read back from the cache
    assert folder.name.startswith("rotten_tomatoes-") and again["train"]["text"] == first["train"]["text"]


def test_a_dataset_cache_of_another_split_is_named(tmp_path, monkeypatch):
    """A cache folder whose recorded spec is not this task's (copied in, or left by other code) is refused."""
    import pandas as pd

    from ablation import data
    from ablation.config import CacheError, TaskConfig

    frame = pd.DataFrame({"text": [f"s{i}" for i in range(40)], "label": [i % 2 for i in range(40)]})
    monkeypatch.setitem(data.READERS, "rotten-tomatoes", lambda path: frame)
    monkeypatch.setattr(data, "artifact_path", lambda name, cache: tmp_path)
    cfg = TaskConfig(name="rotten_tomatoes", artifact="rotten-tomatoes", validation_size=10)
    data.load_task(cfg, tmp_path / "cache")
    [folder] = [p for p in (tmp_path / "cache" / "datasets").iterdir() if p.suffix != ".lock"]
    spec = json.loads((folder / "spec.json").read_text())
    (folder / "spec.json").write_text(json.dumps({**spec, "validation_size": 20}, sort_keys=True))
    with pytest.raises(CacheError, match=f"{folder}: dataset cache of another split.*delete {folder}"):
        data.load_task(cfg, tmp_path / "cache")
    (folder / "spec.json").unlink()  # a cache written without a spec cannot be vouched for either
    with pytest.raises(CacheError, match="another split"):
        data.load_task(cfg, tmp_path / "cache")
