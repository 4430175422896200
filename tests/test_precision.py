"""precision=auto: bf16 where this machine's probe finds it clearly faster, fp32 otherwise; once per machine;
explicit values win; the resolved precision is in the row and in the evaluation cache key."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DECODERS, FAMILIES, NUM_LABELS, lora_names, padded_batch, tiny_model
from e2e import CELLS, command, run

from ablation import precision
from ablation.config import (
    AdapterConfig,
    ConfigError,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
)
from ablation.evaluate import Evaluator
from ablation.keys import eval_key, training_key
from ablation.methods import prepare
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


# --- frozen weights held in bf16 (ablation.precision.held_weights) ---------------------------------------


def _prepared(family: str, method: str = "adapters", seed: int = 0) -> torch.nn.Module:
    """A tiny model of the family with the method's parameters added (adapters big enough to matter)."""
    model = tiny_model(family, num_layers=2, seed=seed)
    adapter = AdapterConfig(size=8, init_std=0.5) if method == "adapters" else None
    lora = {"r": 4, "alpha": 8.0, "dropout": 0.1, "target": lora_names(family, ["query", "value", "output"])}
    prepare(model, family, MethodConfig(name=method, **(lora if method == "lora" else {})), adapter)
    return model


@pytest.mark.parametrize("family", FAMILIES + DECODERS[1:])
@pytest.mark.parametrize("method", ["adapters", "lora"])
def test_held_weights_give_bitwise_the_same_training_step(family, method):
    """Autocast rounds a frozen weight to bf16 at each call; holding it in bf16 rounds it once, the same way:
    the logits, the loss and every trained parameter's gradient are equal to the last bit, and the model's
    own tensors are back in place, in fp32, afterwards."""
    batch = padded_batch(family)
    batch["labels"] = torch.arange(batch["input_ids"].shape[0]) % NUM_LABELS
    results = []
    for hold in (False, True):
        model = _prepared(family, method).train()
        before = {n: (p.data_ptr(), p.dtype) for n, p in model.named_parameters()}
        held = precision.held_weights(model, "bf16", "cpu") if hold else None
        assert not hold or held  # something frozen was held
        torch.manual_seed(1)  # the same dropout masks
        with precision.autocast("bf16", "cpu", held):
            out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert {n: (p.data_ptr(), p.dtype) for n, p in model.named_parameters()} == before
        results.append((out.logits.detach(), out.loss.detach(), grads))
    (logits, loss, grads), (held_logits, held_loss, held_grads) = results
    assert (
        logits.dtype == torch.bfloat16 and torch.equal(logits, held_logits) and torch.equal(loss, held_loss)
    )
    assert grads.keys() == held_grads.keys() and all(torch.equal(grads[n], held_grads[n]) for n in grads)


def test_only_frozen_linear_weights_are_held_and_only_for_bf16_on_the_cpu():
    """Trained parameters, norms, embeddings and an LM head tied to the embeddings stay as they are (the
    embeddings are looked up in fp32); fp32 or CUDA hold nothing."""
    model = tiny_model("llama", num_layers=2)
    model.score.weight = model.model.embed_tokens.weight  # as tie_word_embeddings does with lm_head
    prepare(model, "llama", MethodConfig(name="adapters"), AdapterConfig(size=8))
    held = precision.held_weights(model, "bf16", "cpu")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    held_names = sorted(names[id(p)] for p in held)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    frozen_linear = sorted(
        f"{n}.{k}"
        for n in linear
        for k, p in model.get_submodule(n).named_parameters()
        if not p.requires_grad
    )
    assert held_names == [n for n in frozen_linear if n != "score.weight"] and held_names
    assert all(
        copy.dtype == torch.bfloat16 and torch.equal(copy, p.to(torch.bfloat16)) for p, copy in held.items()
    )
    assert (
        precision.held_weights(model, "fp32", "cpu") == {}
        and precision.held_weights(model, "bf16", "cuda") == {}
    )


def test_the_held_weights_are_given_back_when_the_step_fails():
    """An exception inside (a diverged or interrupted step) leaves the model's fp32 tensors in place."""
    model = _prepared("bert")
    held = precision.held_weights(model, "bf16", "cpu")
    with pytest.raises(RuntimeError, match="stop"), precision.autocast("bf16", "cpu", held):
        assert all(p.dtype == torch.bfloat16 for p in held)
        raise RuntimeError("stop")
    assert all(p.dtype == torch.float32 for p in held)


@pytest.mark.parametrize("family", ["mpnet", "llama"])
@pytest.mark.parametrize("placement", ["serial", "lora"])
def test_the_evaluator_holds_the_frozen_weights_and_gives_the_same_cells_and_estimates(family, placement):
    """The evaluator in bf16 runs its passes (intact states, cells, from-scratch forwards, gradient estimates)
    with the frozen weights held in bf16: every prediction and estimate equals the unheld evaluator's. With
    PEFT's LoRA frozen too (an imported folder), its A and B are held as well."""
    from test_evaluate import make_evaluator

    from ablation.adapters import Adapter

    results = []
    for hold in (True, False):
        ev = make_evaluator(family, "bf16", placement)
        for p in ev.stages.model.parameters():  # frozen as methods.prepare leaves the pretrained model
            p.requires_grad = False
        for module in ev.stages.model.modules():
            if isinstance(module, Adapter):
                module.requires_grad_(True)
        ev = Evaluator(ev.stages, ev.data, batch_size=8, precision="bf16")
        assert ev._bf16_weights  # the pretrained weights are held
        if not hold:
            ev._bf16_weights = {}
        cells = [ev.intact(), ev.cell(0, 1), ev.cell(1, 3), ev.from_scratch(2, 2)]
        logits, effects = ev.attributions()
        results.append((cells, logits, effects))
    (cells, logits, effects), (plain_cells, plain_logits, plain_effects) = results
    assert all(np.array_equal(a, b) for a, b in zip(cells, plain_cells, strict=True))
    assert np.array_equal(logits, plain_logits) and np.array_equal(effects, plain_effects)
    assert not np.array_equal(cells[0], cells[2])  # the cells differ: the check sees something
