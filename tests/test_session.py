"""The per-process state: the shared base model reset between keys; per-key sessions with cells cached on disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model

from ablation.adapters import AdapterLayer, InputTap
from ablation.config import AblateConfig, AdapterConfig, MethodConfig
from ablation.families import is_head
from ablation.methods import freeze, prepare
from ablation.session import Pretrained, Session, _initialised_modules


class CountingEvaluator:
    """Stands in for Evaluator: counts what it is asked to compute."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.labels = np.array([0, 1, 0])  # three validation examples: cached cells must hold three

    def intact(self) -> np.ndarray:
        self.calls.append(("intact",))
        return np.array([0, 1, 1])

    has_stats = False  # no intact statistics: the session writes no diagnostics

    def cell(self, first: int, last: int, ablation) -> np.ndarray:
        self.calls.append((first, last, ablation.positions))
        return np.array([first, last, 0])

    num_layers = 4

    def passes_before(self, cells, ablation) -> int:
        return int(None in cells)

    def predict(self, cells, ablation, timed=None):
        for cell in cells:
            yield cell, self.intact() if cell is None else self.cell(*cell, ablation)


def _session(tmp_path, trained_now: bool) -> Session:
    return Session(cfg=None, key="k", evaluator=CountingEvaluator(), counts={}, train_metrics={},
                   trained_now=trained_now, cell_dir=tmp_path, examples=None)  # fmt: skip


def test_training_is_reported_once(tmp_path):
    session = _session(tmp_path, trained_now=True)
    assert [session.report_training() for _ in range(3)] == [True, False, False]
    assert not _session(tmp_path, trained_now=False).report_training()


def test_predictions_are_computed_once_and_reused_from_disk(tmp_path):
    first = _session(tmp_path, trained_now=False)
    preds, computed = first.predictions(AblateConfig(2, 4))
    assert computed and preds.tolist() == [2, 4, 0]
    assert first.evaluator.calls == [("intact",), (2, 4, "both")]  # the intact pass comes first, once
    assert (
        first.predictions(AblateConfig())[1] and (tmp_path / "intact.npy").exists()
    )  # computed by this process
    again = _session(tmp_path, trained_now=False)  # a re-run in a new process
    preds, computed = again.predictions(AblateConfig(2, 4))
    assert not computed and preds.tolist() == [2, 4, 0]
    assert again.predictions(AblateConfig(2, 4, "attention"))[1]  # another position is another cell
    assert again.evaluator.calls == [(2, 4, "attention")]
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == [
        "cell-2-4-attention-zero-trained.npy", "cell-2-4-both-zero-trained.npy", "intact.npy"]  # fmt: skip


def test_the_first_job_of_a_group_computes_every_cell_of_it_in_sweep_order(tmp_path):
    """Whichever job of a sweep group gets there first computes the group's cells; the others read them."""
    group = [(0, 0), (0, 1), (1, 1)]
    (tmp_path / ".cell-0-0-both.4242.tmp.npy").write_bytes(b"half")  # a write killed before its rename
    late = _session(tmp_path, trained_now=False)
    preds, computed = late.predictions(AblateConfig(1, 1), group)
    assert computed and preds.tolist() == [1, 1, 0]
    assert late.evaluator.calls == [("intact",), (0, 0, "both"), (0, 1, "both"), (1, 1, "both")]
    assert [late.predictions(AblateConfig(*c), group)[1] for c in group] == [True] * 3  # by this process
    other = _session(tmp_path, trained_now=False)  # another worker, another job of the group
    assert [other.predictions(AblateConfig(*c), group)[1] for c in group] == [False] * 3
    assert other.evaluator.calls == []
    assert not list(tmp_path.glob(".*tmp*"))  # the killed writer's leftover is gone


# --- Pretrained: one pretrained model per process, reset between training keys ---


def _base(family: str) -> Pretrained:
    model = tiny_model(family, num_layers=2)
    missing = [n for n, _ in model.named_parameters() if is_head(model, n)]
    pristine = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Pretrained("spec", model, None, pristine, _initialised_modules(model, missing))


def test_fresh_model_is_the_pretrained_model_with_a_seeded_head(family):
    base = _base(family)
    heads = {}
    for seed in (5, 6, 5):
        model = base.fresh_model(seed)
        rng = torch.get_rng_state()
        assert not any(isinstance(m, (AdapterLayer, InputTap)) for m in model.modules())
        for name, value in model.state_dict().items():
            if not is_head(model, name):
                assert torch.equal(value, base.pristine[name]), name
        head = {n: p.detach().clone() for n, p in model.named_parameters() if is_head(model, n)}
        if seed in heads:  # the same seed gives the same head and leaves the RNG where it did
            assert all(torch.equal(head[n], heads[seed][0][n]) for n in head)
            assert torch.equal(rng, heads[seed][1])
        heads[seed] = head, rng
        # what a job leaves behind: adapters injected, every parameter trained
        prepare(model, family, MethodConfig(), AdapterConfig(size=4, placement="parallel"))
        freeze(model, "full")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    assert not all(torch.equal(heads[5][0][n], heads[6][0][n]) for n in heads[5][0])


def test_initialised_modules_are_in_post_order(family):
    model = tiny_model(family, num_layers=2)
    missing = sorted(n for n, _ in model.named_parameters() if is_head(model, n))
    modules = _initialised_modules(model, missing)
    names = {id(m): n for n, m in model.named_modules()}
    order = [names[id(m)] for m in modules]
    heads = {"bert": ["classifier"], "llama": ["score"]}
    assert order == heads.get(family, ["classifier.dense", "classifier.out_proj"])


@pytest.mark.slow
def test_fresh_model_equals_loading_anew():
    """The real 6-layer model: reset + seeded head equals from_pretrained after set_seed, RNG included."""
    from ablation.config import ModelConfig
    from ablation.models import load_model
    from ablation.session import load_pretrained
    from ablation.train import set_seed

    cfg = ModelConfig(name="minilm_l6", family="bert", artifact="all-minilm-l6-v2", num_layers=6)
    cache = os.environ.get("ABLATION_CACHE", str(Path.home() / ".cache" / "ablation"))
    set_seed(3)
    reference, _, _ = load_model(cfg, 3, cache)
    rng = torch.get_rng_state()
    base = load_pretrained(cfg, 3, cache)
    prepare(base.fresh_model(7), "bert", MethodConfig("full"), None)
    model = base.fresh_model(3)
    assert torch.equal(torch.get_rng_state(), rng)
    ref = dict(reference.named_parameters())
    assert all(torch.equal(p, ref[n]) for n, p in model.named_parameters())
