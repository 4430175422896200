"""precision=auto: bf16 where this machine's probe finds it clearly faster, fp32 otherwise; once per machine;
explicit values win; the resolved precision is in the row and in the evaluation cache key."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from e2e import CELLS, command, run

from ablation import precision
from ablation.config import ConfigError, EvalConfig, ModelConfig, RunConfig, TaskConfig, TrainConfig
from ablation.keys import eval_key, training_key
from ablation.precision import BF16_SPEEDUP, resolve_device, resolve_precision
from ablation.precision import resolve as resolve_with


def resolve(cfg: RunConfig) -> RunConfig:
    return resolve_with(cfg)[0]


class Probe:
    """An injected timing source: returns a fixed bf16 speed-up and counts how often it is asked."""

    def __init__(self, speedup: float) -> None:
        self.speedup, self.calls = speedup, 0

    def __call__(self) -> float:
        self.calls += 1
        return self.speedup


@pytest.mark.parametrize(
    ("speedup", "chosen"), [(1.83, "bf16"), (BF16_SPEEDUP, "bf16"), (1.29, "fp32"), (0.55, "fp32")]
)
def test_auto_takes_bf16_only_where_it_is_clearly_faster(tmp_path, speedup, chosen):
    probe = Probe(speedup)
    got, why = resolve_precision("auto", "cpu", tmp_path, measure=probe)
    assert got == chosen and f"{speedup:.2f}x" in why and "measured now" in why
    assert resolve_precision("auto", "cpu", tmp_path, measure=probe)[0] == chosen
    assert probe.calls == 1  # the second resolution read the machine's cached result
    record = json.loads((tmp_path / precision.PROBE_FILE).read_text())
    [(key, entry)] = record.items()
    assert entry["speedup"] == speedup and entry["machine"] == precision.machine_id()


def test_explicit_values_win_and_cuda_is_bf16(tmp_path):
    probe = Probe(5.0)
    assert resolve_precision("fp32", "cpu", tmp_path, measure=probe) == ("fp32", "as configured")
    assert resolve_precision("bf16", "cpu", tmp_path, measure=Probe(0.5))[0] == "bf16"
    assert resolve_precision("auto", "cuda", tmp_path, measure=probe)[0] == "bf16"
    assert probe.calls == 0 and not (tmp_path / precision.PROBE_FILE).exists()


def test_another_machine_measures_again(tmp_path, monkeypatch):
    resolve_precision("auto", "cpu", tmp_path, measure=Probe(2.0))
    monkeypatch.setattr(precision, "machine_id", lambda: "Intel Xeon [avx512_bf16] torch x threads 2")
    probe = Probe(0.6)
    assert resolve_precision("auto", "cpu", tmp_path, measure=probe)[0] == "fp32" and probe.calls == 1
    assert len(json.loads((tmp_path / precision.PROBE_FILE).read_text())) == 2


def test_the_real_probe_measures_a_ratio():
    assert 0.05 < precision.probe_speedup(repeats=1) < 20


def test_device_auto_is_the_cpu_here_and_cuda_without_one_is_named():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="device='cuda' is not allowed: torch sees no CUDA"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device='tpu' is not allowed"):
        _cfg(device="tpu")


def _cfg(tmp_path=None, **changes) -> RunConfig:
    cfg = RunConfig(model=ModelConfig(name="tiny", artifact="all-minilm-l6-v2"),
                    task=TaskConfig(name="demo", artifact="rotten-tomatoes"))  # fmt: skip
    if tmp_path is not None:
        cfg.paths.cache = str(tmp_path)
    return dataclasses.replace(cfg, **changes)


def test_resolution_enters_the_keys(tmp_path, monkeypatch):
    """Cells computed in one precision are never read as the other: the eval cache key differs."""
    monkeypatch.setattr(precision, "probe_speedup", Probe(3.0))
    auto = resolve(_cfg(tmp_path, eval=EvalConfig(precision="auto")))
    assert auto.eval.precision == "bf16" and auto.device == "cpu"
    fp32 = resolve(_cfg(tmp_path, eval=EvalConfig(precision="fp32")))
    bf16 = resolve(_cfg(tmp_path, eval=EvalConfig(precision="bf16")))
    assert eval_key(auto, "data") == eval_key(bf16, "data") != eval_key(fp32, "data")
    assert eval_key(fp32, "data") != eval_key(fp32, "other data")  # the evaluated data is in the key too
    # training: fp32 by default whatever the machine; auto opts in and keys as what it resolves to
    default = resolve(_cfg(tmp_path))
    assert default.train.precision == "fp32"
    trained = resolve(_cfg(tmp_path, train=TrainConfig(precision="auto")))
    assert trained.train.precision == "bf16"
    assert training_key(trained) == training_key(
        _cfg(tmp_path, train=TrainConfig(precision="bf16"), device="cpu")
    )
    assert training_key(default) != training_key(trained)
    monkeypatch.setattr(precision, "probe_speedup", Probe(1.1))  # another machine: bf16 not clearly faster
    slow = resolve(_cfg(tmp_path / "other", train=TrainConfig(precision="auto")))
    assert slow.train.precision == "fp32" and training_key(slow) != training_key(trained)
    with pytest.raises(ValueError, match="must be resolved"):
        training_key(_cfg(tmp_path, train=TrainConfig(precision="auto")))


@pytest.mark.sweeps
def test_the_row_records_what_auto_resolved_to(toy, tmp_path):
    """A sweep under precision=auto on a machine whose probe said 5x: it trains and evaluates in bf16, each
    logged once, and the rows say so."""
    conf, cache, sequential = toy
    own_cache = tmp_path / "cache"
    own_cache.mkdir()
    (own_cache / precision.PROBE_FILE).write_text(
        json.dumps({"any": {"machine": "x", "speedup": 1.0}})  # another machine's entry: not used
    )
    patch = "import ablation.precision as p; p.probe_speedup = lambda: 5.0"
    auto = ("train.precision=auto", "eval.precision=auto")  # the toy's TRAIN pins fp32
    args = command(conf, tmp_path / "sweep", tmp_path / "store", own_cache, *CELLS, *auto)
    done = run(args, patch)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("train", "eval"):
        assert f"[precision] {stage}: bf16 on cpu (auto: bf16 matmuls 5.00x" in done.stdout + done.stderr, (
            done.stdout[-2000:]
        )
    rows = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert set(rows["eval_precision"]) == {"bf16"} and set(rows["train_precision"]) == {"bf16"}
    assert set(rows["device"]) == {"cpu"}
    assert set(pd.read_csv(sequential / "results.csv")["eval_precision"]) == {"fp32"}
