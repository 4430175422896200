"""Training: only trainable parameters move, the store round-trips, the key, the optimiser and schedule."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import padded_batch, random_encoded, tiny_model
from torch import nn

from ablation.adapters import Adapter, inject_adapters
from ablation.config import (
    TRAIN,
    AblateConfig,
    AdapterConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
)
from ablation.families import is_norm
from ablation.keys import training_key, training_spec
from ablation.methods import freeze
from ablation.train import (
    ENTRY,
    HISTORY,
    HISTORY_COLUMNS,
    load_trained,
    make_optimizer,
    older_entries,
    save_trained,
    store_path,
    train,
)

NO_HISTORY = {name: [] for name in HISTORY_COLUMNS}  # a store entry's history, empty: not what is tested here

L = 3
METHOD_CONFIGS = [
    MethodConfig("top_k", 1),
    MethodConfig("top_k", 2),
    MethodConfig("layernorm"),
    MethodConfig("full"),
]


def adapter_model(family: str, adapter_seed: int = 0) -> nn.Module:
    model = tiny_model(family, num_layers=L, seed=0)
    torch.manual_seed(adapter_seed)
    inject_adapters(model, family, AdapterConfig(size=8, init_std=1e-2))
    freeze(model, "adapters")
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_changes_only_trainable_parameters(family, precision):
    model = adapter_model(family)
    before = snapshot(model)
    data = random_encoded(family, n=48, seed=4)
    cfg = TrainConfig(lr=1e-2, epochs=1.0, max_steps=4, batch_size=8, precision=precision)
    metrics = train(model, data, cfg, seed=0)
    assert metrics["steps"] == 4
    assert metrics["train_examples"] == 48
    assert metrics["epochs"] == pytest.approx(4 / 6)
    assert np.isfinite(metrics["final_loss"])
    assert not model.training  # left in eval mode
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"{name} did not train"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


@pytest.mark.parametrize("method", ["top_k", "layernorm", "full"])
def test_baseline_methods_train_exactly_their_parameters(family, method):
    model = tiny_model(family, num_layers=L, seed=0)
    freeze(model, method, k=1 if method == "top_k" else None)
    before = snapshot(model)
    train(
        model, random_encoded(family, n=24, seed=4), TrainConfig(lr=1e-2, max_steps=2, batch_size=8), seed=0
    )
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != p.requires_grad, name


def test_divergence_stops_training_and_is_recorded(family):
    """std 1 adapters and lr 1e8: the loss or its gradient turns non-finite within a few steps."""
    torch.manual_seed(0)
    model = tiny_model(family, num_layers=L, seed=0)
    inject_adapters(model, family, AdapterConfig(size=8, init_std=1.0))
    freeze(model, "adapters")
    data = random_encoded(family, n=80, seed=4)
    metrics = train(model, data, TrainConfig(lr=1e8, max_steps=10, batch_size=8, max_grad_norm=1e30), seed=0)
    assert metrics["diverged"] is True
    step = metrics["diverged_step"]
    assert 0 < step < 10 and metrics["steps"] == step and metrics["planned_steps"] == 10
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the last finite parameters are kept
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    # the history: every step taken, then the stopping step with its non-finite loss or gradient norm
    history = metrics["history"]
    assert history["step"] == list(range(step + 1))
    assert np.isfinite(history["loss"][:step]).all() and np.isfinite(history["grad_norm"][:step]).all()
    assert not (np.isfinite(history["loss"][step]) and np.isfinite(history["grad_norm"][step]))


def test_a_finite_run_is_not_diverged(family):
    metrics = train(
        adapter_model(family), random_encoded(family, n=16), TrainConfig(max_steps=2, batch_size=8), 0
    )
    assert metrics["diverged"] is False and metrics["diverged_step"] is None and metrics["steps"] == 2


def test_train_without_max_steps_runs_the_epochs(family):
    model = adapter_model(family)
    data = random_encoded(family, n=20, seed=5)
    metrics = train(model, data, TrainConfig(epochs=1.5, batch_size=8, precision="fp32"), seed=0)
    assert metrics["steps"] == 5  # ceil(1.5 * ceil(20 / 8))


def test_save_and_load_trained_round_trip(family, tmp_path):
    model = adapter_model(family, adapter_seed=0)
    train(
        model, random_encoded(family, n=24, seed=6), TrainConfig(lr=1e-2, max_steps=3, batch_size=8), seed=0
    )
    batch = padded_batch(family)
    trained = logits(model, batch)
    folder = store_path(tmp_path / "store", "key-abc")
    save_trained(
        model, folder, {"store_version": 0}, {"seed": 0}, {"steps": 3, "train_seconds": 1.5}, NO_HISTORY
    )
    assert folder == tmp_path / "store" / "key-abc"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        HISTORY,
        ENTRY,
        "metrics.json",
        "trained.safetensors",
    ]
    assert json.loads((folder / "config.json").read_text()) == {"seed": 0}
    assert [p.name for p in folder.parent.iterdir()] == ["key-abc"]  # no temp folder left

    fresh = adapter_model(family, adapter_seed=1)  # same base weights, other adapter init
    assert not torch.equal(logits(fresh, batch), trained)
    metrics = load_trained(fresh, folder)
    assert metrics == {"steps": 3, "train_seconds": 1.5}
    assert torch.equal(logits(fresh, batch), trained)
    for (name, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_load_trained_rejects_another_layout(family, tmp_path):
    model = adapter_model(family)
    folder = tmp_path / "k"
    save_trained(model, folder, {}, {}, {}, NO_HISTORY)
    other = tiny_model(family, num_layers=L)
    inject_adapters(other, family, AdapterConfig(size=8, positions=("output",)))
    freeze(other, "adapters")
    with pytest.raises(RuntimeError, match="do not match"):
        load_trained(other, folder)


def run_config(**changes) -> RunConfig:
    base = RunConfig(
        model=ModelConfig(name="tiny", family="bert", artifact="all-minilm-l6-v2", num_layers=12),
        task=TaskConfig(name="demo", artifact="rotten-tomatoes"),
        device="cpu",  # as resolved: keys are formed from resolved configs only
    )
    return dataclasses.replace(base, **changes)


def test_training_key_tracks_what_training_depends_on():
    base = run_config()
    key = training_key(base)
    # train.eval_every enters the key only when set: keys made before it existed are unchanged
    assert "eval_every" not in training_spec(base)["train"]
    assert key.startswith("tiny-demo-")
    assert training_key(run_config()) == key  # deterministic
    changed = [
        run_config(seed=1),
        run_config(adapter=AdapterConfig(size=32)),
        run_config(adapter=AdapterConfig(init_std=1e-2)),
        run_config(adapter=AdapterConfig(positions=["output"])),
        run_config(train=TrainConfig(lr=3e-4)),
        run_config(train=TrainConfig(epochs=2.0)),
        run_config(train=TrainConfig(eval_every=50)),  # its entry's history holds the validation metric
        run_config(train=TrainConfig(precision="bf16")),
        run_config(task=TaskConfig(name="demo", artifact="tweets")),
        run_config(task=TaskConfig(name="demo", artifact="rotten-tomatoes", split_seed=1)),
        run_config(task=TaskConfig(name="other", artifact="rotten-tomatoes")),
        run_config(
            model=ModelConfig(name="tiny", family="bert", artifact="all-mpnet-base-v2", num_layers=12)
        ),
        run_config(device="cuda"),
    ]
    keys = [training_key(cfg) for cfg in changed]
    assert key not in keys
    assert len(set(keys)) == len(keys)
    assert (
        len({training_key(run_config(method=m)) for m in METHOD_CONFIGS} | {key}) == len(METHOD_CONFIGS) + 1
    )
    variants = [AdapterConfig(norm="layernorm"), AdapterConfig(depth=2), AdapterConfig(placement="parallel"),
                AdapterConfig(placement="parallel", combine="multiply"), AdapterConfig(combine="multiply")]  # fmt: skip
    assert len({training_key(run_config(adapter=a)) for a in variants} | {key}) == len(variants) + 1
    same = [
        run_config(ablate=AblateConfig(first=0, last=5)),
        run_config(ablate=AblateConfig(first=3, last=3, positions="attention")),
        run_config(eval=EvalConfig(batch_size=8, precision="fp32")),
    ]
    assert all(training_key(cfg) == key for cfg in same)


def test_every_declared_training_field_enters_the_key():
    """The key is derived from the declarations alone: each TRAIN field, the task's metric not."""
    key = training_key(run_config())
    assert (
        training_key(run_config(task=TaskConfig(name="demo", artifact="rotten-tomatoes", metric="f1"))) == key
    )
    assert training_key(run_config(model=ModelConfig(name="tiny", family="bert", artifact="all-minilm-l6-v2",
                                                     num_layers=6))) == key  # fmt: skip
    for section, cfg_type in (("train", TrainConfig), ("adapter", AdapterConfig)):
        for f in dataclasses.fields(cfg_type):
            value = getattr(cfg_type(), f.name)
            other = {int: value + 1 if isinstance(value, int) else value, float: 2 * (value or 0.5)}.get(
                type(value), value
            )
            if other != value:
                changed = dataclasses.replace(getattr(run_config(), section), **{f.name: other})
                # declared in no key (train.checkpoint_seconds: how often a resume point is written): no change
                keyed = TRAIN in f.metadata["keys"]
                assert (training_key(run_config(**{section: changed})) != key) == keyed, f"{section}.{f.name}"


def test_older_store_entries_are_counted_as_misses(family, tmp_path):
    store = tmp_path / "store"
    save_trained(adapter_model(family), store / "new", {"store_version": 3}, {}, {}, NO_HISTORY)
    (store / "old").mkdir()
    (store / "old" / "trained.safetensors").write_bytes(b"")  # an entry of an older version: no key.json
    assert older_entries(store) == 1 and older_entries(tmp_path / "none") == 0


def test_adapter_settings_do_not_key_methods_without_adapters():
    method = MethodConfig(name="top_k", k=2)
    keys = {training_key(run_config(method=method, adapter=AdapterConfig(size=s))) for s in (8, 64)}
    assert len(keys) == 1


def test_schedule_warms_up_over_ten_percent_then_decays_to_zero(family):
    model = adapter_model(family)
    lr, total = 1e-3, 100
    optimizer, scheduler = make_optimizer(model, TrainConfig(lr=lr, warmup_ratio=0.1), total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs = np.array(lrs)
    warmup = 10
    assert all(
        g["lr"] == pytest.approx(0.0, abs=1e-15) for g in optimizer.param_groups
    )  # after `total` steps
    assert lrs.max() == pytest.approx(lr)
    assert 0 <= lrs[0] <= lr / warmup + 1e-12
    # linear warm-up: equal increments, peak reached by the end of the first 10% of steps
    rise = np.diff(lrs[:warmup])
    assert np.allclose(rise, lr / warmup)
    assert lrs[warmup - 1] == pytest.approx(lr) or lrs[warmup] == pytest.approx(lr)
    assert np.all(lrs[:warmup] <= lr * (1 + 1e-9))
    # linear decay from the peak to 0 at step `total`: equal decrements
    fall = np.diff(np.append(lrs[warmup:], 0.0))
    assert np.allclose(fall, -lr / (total - warmup))
    # both parameter groups follow the same schedule
    assert len({g["lr"] for g in optimizer.param_groups}) == 1


def test_weight_decay_groups(family):
    model = adapter_model(family)
    optimizer, _ = make_optimizer(model, TrainConfig(weight_decay=0.01), 10)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert set(decay_of) == {id(named[n]) for n in trainable}  # frozen parameters are not optimised
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            full = f"{module_name}.{name}"
            if is_norm(module) or name == "bias":
                assert decay_of[id(p)] == 0.0, full
            else:
                assert decay_of[id(p)] == 0.01, full
    adapters = [m for m in model.modules() if isinstance(m, Adapter)]
    assert len(adapters) == 2 * L
    for adapter in adapters:
        assert decay_of[id(adapter.down.weight)] == decay_of[id(adapter.up.weight)] == 0.01
        assert decay_of[id(adapter.down.bias)] == decay_of[id(adapter.up.bias)] == 0.0
    layernorms = [p for n, p in named.items() if "LayerNorm" in n or "layernorm" in n or ".norm." in n]
    assert layernorms and all(decay_of[id(p)] == 0.0 for p in layernorms)


def test_save_trained_replaces_a_folder_without_trained_parameters(family, tmp_path):
    """A folder left with only stale evaluation caches is replaced, not an error."""
    model = adapter_model(family, adapter_seed=0)
    folder = store_path(tmp_path / "store", "key-stale")
    (folder / "eval" / "old").mkdir(parents=True)
    (folder / "eval" / "old" / "cell-0-0-both.npy").write_bytes(b"stale")
    save_trained(model, folder, {}, {"seed": 0}, {"steps": 0, "train_seconds": 0.0}, NO_HISTORY)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        HISTORY,
        ENTRY,
        "metrics.json",
        "trained.safetensors",
    ]


def test_the_same_seed_twice_gives_identical_parameters_metrics_and_predictions(family):
    """Training is deterministic on the CPU: same seed, same data, same config -> bit-identical results."""
    data = random_encoded(family, n=48, seed=3, num_labels=2)
    cfg = TrainConfig(lr=1e-2, epochs=1.0, batch_size=8, precision="fp32")  # dropout on: RNG matters
    runs = []
    for _ in range(2):
        model = adapter_model(family)
        torch.manual_seed(11)
        metrics = train(model, data, cfg, seed=0)
        runs.append((snapshot(model), metrics, logits(model, padded_batch(family)).argmax(-1)))
    (params_a, metrics_a, preds_a), (params_b, metrics_b, preds_b) = runs
    assert all(torch.equal(params_a[n], params_b[n]) for n in params_a)
    drop = ("train_seconds", "started_at", "finished_at")  # wall-clock times are all that may differ
    assert {k: v for k, v in metrics_a.items() if k not in drop} == {
        k: v for k, v in metrics_b.items() if k not in drop
    }
    assert torch.equal(preds_a, preds_b)
