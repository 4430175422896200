"""The one-pass estimate of every cell (ablate.estimate=attribution, ablation.estimate): first order in the change
on tiny models of every family, adapters and LoRA; its cells cached apart from the exact ones; the analysis
reads exact cells only and compares an estimated panel with the exact one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DECODERS, FAMILIES, lora_names, perturb_layernorms_and_head, random_encoded, tiny_model
from test_config import run_config

from ablation.adapters import adapter_slots, inject_adapters, inject_lora, set_ablation
from ablation.config import AblateConfig, AdapterConfig
from ablation.estimate import cell_predictions, layer_effects
from ablation.evaluate import Ablation, Evaluator
from ablation.keys import cell_name
from ablation.models import Stages

L = 4


def evaluator(family: str, method: str) -> Evaluator:
    """A tiny model with large adapters (or LoRA) on every layer, its norms and head perturbed as if trained,
    in float64 (so a second-order term is not lost in rounding); 40 examples of 3..20 tokens."""
    model = tiny_model(family, num_layers=L, seed=3)
    perturb_layernorms_and_head(model)
    if method == "lora":
        slots = inject_lora(model, family, r=4, alpha=8, targets=lora_names(family, ["query", "value", "output"]),
                            dropout=0.0)  # fmt: skip
        generator = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for slot in slots.values():
                b = slot.base_layer.lora_B["default"].weight
                b.copy_(torch.randn(b.shape, generator=generator))
    else:
        inject_adapters(model, family, AdapterConfig(size=16, init_std=0.3))
    model.double()
    return Evaluator(
        Stages(model, family), random_encoded(family, n=40, seed=1), batch_size=8, precision="fp32"
    )


def logit_differences(
    ev: Evaluator, layers=(), mode: str = "off", alpha: float = 0.0, positions: str = "both"
):
    """The model's own logits minus label 0's with these layers' slots ablated, in dataset order."""
    set_ablation(ev.stages.model, layers, positions, mode, alpha)
    parts = []
    with torch.no_grad():
        for batch in ev.batches:
            z = ev.stages.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            parts.append(z - z[:, :1])
    set_ablation(ev.stages.model, ())
    out = np.empty((len(ev.labels), parts[0].shape[1]))
    out[np.concatenate(ev.index)] = torch.cat(parts).numpy()
    return out


CASES = [(family, "adapters") for family in FAMILIES] + [("bert", "lora"), ("llama", "lora")]


@pytest.mark.parametrize(("family", "method"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_the_estimate_is_the_first_order_change_of_the_logits(family, method):
    """Scaling a range's contributions by 1 - eps moves the logits by eps times the estimate's change of removing
    them, up to O(eps^2): the relative error falls with eps (a wrong gradient, sign or slot would not)."""
    ev = evaluator(family, method)
    intact = logit_differences(ev)
    errors = {}
    for eps in (1e-2, 1e-3):
        logits, effects = ev.attributions(Ablation("scale", alpha=1 - eps))
        assert np.allclose(logits, intact, atol=1e-10)  # the estimate starts from the model's own forward
        worst = 0.0
        for first, last in [(0, 0), (1, 2), (L - 1, L - 1), (0, L - 1)]:
            exact = logit_differences(ev, range(first, last + 1), "scale", 1 - eps) - intact
            estimated = effects[first : last + 1].sum(axis=0)
            assert np.abs(exact).max() > 1e-8  # far above float64 rounding: the comparison says something
            worst = max(worst, np.abs(exact - estimated).max() / np.abs(exact).max())
        errors[eps] = worst
    assert errors[1e-3] < 1e-2 and 5 < errors[1e-2] / errors[1e-3] < 20, errors  # O(eps): 10x per decade


@pytest.mark.parametrize(
    ("family", "method"), [("llama", "adapters"), ("bert", "adapters"), ("llama", "lora")]
)
def test_the_integrated_estimate_adds_up_to_the_all_layers_cell(family, method):
    """Integrated gradients along the gate of every slot from 1 to 0 (removal) or to alpha (scale): the layers'
    changes sum to the exact all-layers cell's, to the midpoint rule's error, O(1/steps^2)."""
    ev = evaluator(family, method)
    order = np.concatenate(ev.index)
    intact = logit_differences(ev)[order]
    for mode, alpha in (("off", 0.0), ("scale", 0.5)):
        exact = logit_differences(ev, range(L), mode, alpha)[order] - intact
        errors = []
        for steps in (4, 32):
            logits, effects = layer_effects(ev.stages, ev.batches, "both", mode, alpha, "fp32", "cpu", steps)
            assert np.allclose(torch.cat(logits).numpy(), intact, atol=1e-10)
            total = torch.cat(effects, dim=1).sum(0).numpy()
            errors.append(np.abs(total - exact).max() / np.abs(exact).max())
        assert errors[1] < 2e-2 and (errors[1] < errors[0] / 10 or errors[0] < 1e-4), (mode, errors)


def test_removal_mean_and_keep_use_the_same_gradients_with_their_own_change():
    """Removal's change is the scale change at alpha 0; keep's cell is removal of the other layers; mean's
    change is removal's plus the gradient times the mean (zero means: removal)."""
    ev = evaluator("llama", "adapters")
    _, removal = ev.attributions(Ablation("zero"))
    _, scaled = ev.attributions(Ablation("scale", alpha=0.0))
    assert np.allclose(removal, scaled, atol=1e-6)
    for slot in adapter_slots(ev.stages.model).values():
        slot.mean = torch.zeros(ev.stages.model.config.hidden_size)
    ev._means_set = True
    _, mean = ev.attributions(Ablation("mean"))
    assert np.allclose(mean, removal, atol=1e-6)
    logits, effects = ev.attributions(Ablation("keep"))
    keep = dict(ev.estimate([(1, 2)], Ablation("keep")))[(1, 2)]
    assert np.array_equal(keep, cell_predictions(logits, removal, 1, 2, keep=True))
    assert np.array_equal(keep, (logits + removal[[0, 3]].sum(axis=0)).argmax(-1))


def test_an_estimate_ablates_only_the_positions_asked_for():
    """positions=attention: the output slots' effects are zero; both = attention + output."""
    ev = evaluator("llama", "adapters")
    _, both = ev.attributions(Ablation("zero"))
    _, attention = ev.attributions(Ablation("zero", positions="attention"))
    _, output = ev.attributions(Ablation("zero", positions="output"))
    assert np.abs(attention).max() > 0 and np.abs(output).max() > 0
    assert np.allclose(both, attention + output, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", *DECODERS[:1]])
def test_lora_positions_ablate_the_projections_of_that_sub_layer(family):
    """ablate.positions on LoRA switches the slots of the projections in that sub-layer (their `position`),
    not those whose target name equals it (none): attention-only removal changes the logits, and the two
    positions together are the whole removal."""
    ev = evaluator(family, "lora")
    intact = logit_differences(ev)
    attention = logit_differences(ev, range(L), positions="attention")
    output = logit_differences(ev, range(L), positions="output")
    assert np.abs(attention - intact).max() > 1e-3 and np.abs(output - intact).max() > 1e-3
    set_ablation(ev.stages.model, range(L), "attention")
    modes = {(slot.position, slot.mode) for slot in adapter_slots(ev.stages.model).values()}
    set_ablation(ev.stages.model, ())
    assert modes == {("attention", "off"), ("output", "on")}


def test_estimated_cells_are_cached_apart_and_exact_ones_keep_their_names():
    exact = AblateConfig(first=0, last=2)
    estimated = AblateConfig(first=0, last=2, estimate="attribution")
    assert cell_name(exact) == "cell-0-2-both-zero-trained"  # the name cells cached before the option had
    assert cell_name(estimated) == "cell-0-2-both-zero-trained-attribution"
    cfg = run_config(["ablate.first=0", "ablate.last=2", "ablate.estimate=exact"])
    assert cfg.ablate.estimate is None and cell_name(cfg.ablate) == cell_name(exact)  # exact is written unset


@pytest.mark.sweeps
def test_an_estimated_sweep_runs_through_the_user_s_command_and_is_compared_with_the_exact_one(tmp_path):
    """The toy's triangle exact and estimated in one sweep (one training): every estimated row says so, the
    intact model stays exact, the heatmap and claims read the exact cells only, and `analysis estimate`
    writes its table and side-by-side figure, one panel per ablation (removal and keep)."""
    from e2e import command, run, write_toy

    from analysis.__main__ import main as analysis
    from analysis.claims import evaluate_claims
    from analysis.collect import load_runs
    from analysis.report import build_report
    from analysis.select import ablated

    conf = write_toy(tmp_path / "toy")
    sweep = tmp_path / "sweep"
    grid = [
        "ablate.first=0..2",
        "ablate.last=0..2",
        "ablate.kind=zero,keep",
        "ablate.estimate=null,attribution",
    ]
    done = run(command(conf, sweep, tmp_path / "store", tmp_path / "cache", *grid))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Estimated: 12 cells" in done.stderr + done.stdout
    rows = pd.read_csv(sweep / "results.csv")
    assert sorted(rows["estimate"].value_counts().items()) == [("attribution", 12), ("exact", 12)]
    assert rows["trained_now"].sum() == 1 and rows["intact_accuracy"].nunique() == 1
    table = load_runs([sweep]).table
    assert len(ablated(table)) == 6 and set(ablated(table)["estimate"]) == {"exact"}
    exact_only = table[table["estimate"] == "exact"]
    pd.testing.assert_frame_equal(evaluate_claims(table), evaluate_claims(exact_only))
    out = tmp_path / "estimate"
    assert analysis(["estimate", str(sweep), "--out", str(out), "--confirm", "3"]) == 0
    compared = pd.read_csv(out.with_suffix(".csv"))
    assert compared["panel"].str.endswith(" · ablate_kind=keep").tolist() == [False, True]
    assert compared["cells"].tolist() == [6, 6] and compared["verdicts_kept"].iloc[1] == "not judged"
    assert compared["spearman"].between(-1, 1).all() and (compared["largest_error"] >= 0).all()
    assert (compared["estimate_seconds"] > 0).all()
    assert out.with_suffix(".png").exists()
    page = build_report([sweep], tmp_path / "report.html").read_text()
    assert (
        "<h2>Estimated cells</h2>" in page
        and "the attribution estimate's 6 worst cells, estimated and exact" in page
    )
    # estimated cells alone (no exact beside them): the worst ones and the command that computes them
    alone = tmp_path / "alone"
    grid = [
        "ablate.first=0..2",
        "ablate.last=0..2",
        "ablate.kind=scale",
        "ablate.alpha=0.5",
        "ablate.estimate=integrated",
    ]
    done = run(command(conf, alone, tmp_path / "store", tmp_path / "cache", *grid))
    assert done.returncode == 0, done.stderr[-3000:]
    assert analysis(["estimate", str(alone), "--out", str(tmp_path / "alone_estimate")]) == 0
    page = (alone / "report.html").read_text()
    assert (
        "Not computed exactly yet: <code>python -m ablation.run -m ablate.kind=scale ablate.alpha=0.5 ablate.first="
        in page
    )
