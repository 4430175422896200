"""The studies end to end on the real offline 6-layer model (slow: CI runs them; minutes each on 2 cores).

Each study's quick preset runs as a user would type it, writes one row per job, its figure and its report
(both titled as a quick preset), and shows the study's shape: the settings that learn in the full study leave
the majority class. The layer-ablation study's is run again: the re-run trains nothing and computes nothing.
A forced divergence is a row, not a crash.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from analysis.claims import evaluate_claims
from analysis.collect import load_runs

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# study -> (jobs of the quick preset on the 6-layer model, the figure it ends with)
QUICK = {
    "init_scale": (4 * 2, "init_scale.png"),
    "bottleneck": (3 * 2, "bottleneck.png"),
    "tradeoff": (3 + 3 + 1 + 1 + 2, "tradeoff.png"),
    "variants": (4 * 2, "variants.png"),
    "layer_ablation": (21, "heatmap.png"),
    # zero, mean and keep heatmaps, the all-removed cell with pretrained LayerNorms, 3 ranges x 5 alphas, head
    "controls": (3 * 21 + 1 + 3 * 5 + 1, "heatmap.png"),
    "recipe": (2 * 21, "recipe.png"),  # the suite's recipe and AdapterHub's, every cell of each
    "placement": (
        21 + 4,
        "placement.png",
    ),  # the all-layer training's keep cells; top/bottom 1 and 3 retrained
}
RECIPES = {"recipe": 2}  # the claims of a study that compares recipes are judged once per recipe
RERUN = "layer_ablation"  # the study whose quick preset is also re-run (the cheapest)

# study -> a claim of the paper its rows let the report judge (one verdict per task)
CLAIM = {
    "init_scale": "larger init std degrades",
    "bottleneck": "sizes 8/64/256 perform alike",
    "tradeoff": "LayerNorm-only costs a few points",
    "variants": "no variant beats the plain adapter",
    "layer_ablation": "single-layer removal costs little",
    "controls": "all adapters removed: majority class",
    "recipe": "lower layers matter less",
    "placement": "lower layers' adapters can be dropped",
}
LEARNT = 0.05  # "left the majority class": at least 5 points above the majority rate, in the mean over seeds


def stays(rows: pd.DataFrame) -> pd.Series:
    """The rows of settings that stay at the majority class in the full study (init std 1), else False."""
    return rows["init_std"].fillna(0) >= 1.0


pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m ablation.run <args>` from the repository, its output captured."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "ablation.run", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize("study", list(QUICK))
def test_quick_study_shows_its_shape_and_a_rerun_trains_nothing(study, tmp_path):
    jobs, figure = QUICK[study]
    store = f"paths.store={tmp_path / 'store'}"
    tic = time.perf_counter()
    first = run(["-m", f"study={study}", "preset=quick", store, f"hydra.sweep.dir={tmp_path / 'a'}"], REPO)
    print(f"\n{study} preset=quick: {time.perf_counter() - tic:.0f} s for {jobs} jobs (first run)")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "a" / "results.csv")
    assert len(rows) == jobs
    assert (rows["study"] == study).all() and (rows["preset"] == "quick").all()
    assert (tmp_path / "a" / figure).stat().st_size > 0 and (tmp_path / "a" / figure).with_suffix(
        ".pdf"
    ).exists()
    assert rows["trained_now"].sum() == rows["train_key"].nunique()  # each key trained once
    page = (tmp_path / "a" / "report.html").read_text()  # the sweep ends with its report
    assert page.count("data:image/png;base64,") >= 1 and "Report: " in first.stdout + first.stderr
    assert "(quick preset: a small version of the study, not its result)</h1>" in page
    claims = evaluate_claims(load_runs([tmp_path / "a"]).table).set_index("claim")
    judged = claims.loc[[CLAIM[study]], "verdict"]
    tasks = rows["task"].nunique()
    # one verdict per task (and recipe), from these rows
    assert len(judged) == tasks * RECIPES.get(study, 1) and (judged != "no data").all()

    # The study's shape: what learns in the full study leaves the majority class here too, and an init
    # std of 1 stays there (the full init-scale study's σ = 1: every rotten_tomatoes seed at the majority).
    if (
        study == "controls"
    ):  # the adapters' training leaves the majority class; every adapter job has diagnostics
        assert "What the adapters do" in page
        adapters = rows[rows["method"] == "adapters"]
        assert all((tmp_path / "a" / str(j) / "diagnostics.csv").exists() for j in adapters["job_dir"])
        assert set(adapters["ablate_kind"]) == {"zero", "mean", "keep", "scale"}
    if study in ("layer_ablation", "controls"):  # one training: its intact model
        learnt = rows[rows["method"] == "adapters"]
        means = learnt.groupby("task")[["intact_accuracy", "majority_rate"]].mean()
        means = means.rename(columns={"intact_accuracy": "accuracy"}).assign(init_std=0.0)
    else:
        setting = ["method", "k", "variant", "adapter_size", "init_std", "lora_r"]
        means = rows.groupby(setting, dropna=False)[["accuracy", "majority_rate"]].mean().reset_index()
    margin, flat = means["accuracy"] - means["majority_rate"], stays(means)
    assert (margin[~flat] >= LEARNT).all(), means[~flat].to_string()
    assert (margin[flat].abs() < LEARNT).all(), means[flat].to_string()

    if study != RERUN:
        return
    again = run(["-m", f"study={study}", "preset=quick", store, f"hydra.sweep.dir={tmp_path / 'b'}"], REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = pd.read_csv(tmp_path / "b" / "results.csv")
    assert len(rerun) == jobs
    assert not rerun["trained_now"].any() and not rerun["cell_computed"].any()
    key = ["train_key", "first", "last"]
    merged = rows.merge(rerun, on=key, suffixes=("", "_again"))
    assert len(merged) == jobs and (merged["accuracy"] == merged["accuracy_again"]).all()


def test_a_diverging_job_is_a_row_and_the_sweep_goes_on(tmp_path):
    """lr 1e30: the loss turns NaN at the second step; the other job of the sweep still runs."""
    done = run(
        ["-m", "preset=quick", "train.lr=1e30,1e-3", "train.max_steps=4", "task.validation_size=64",
         f"paths.store={tmp_path / 'store'}", f"hydra.sweep.dir={tmp_path / 's'}"],
        REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "s" / "results.csv").set_index("lr")
    assert bool(rows.loc[1e30, "diverged"]) and rows.loc[1e30, "diverged_step"] == 1
    assert rows.loc[1e30, "train_steps"] == 1
    assert not bool(rows.loc[1e-3, "diverged"]) and rows.loc[1e-3, "train_steps"] == 4
    again = run(["preset=quick", "train.lr=1e30", "train.max_steps=4", "task.validation_size=64",
                 f"paths.store={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'r'}"], REPO)  # fmt: skip
    assert again.returncode == 0 and "reusing" in again.stdout  # a diverged key is not retrained


def test_training_does_not_depend_on_what_the_process_ran_before(tmp_path):
    """The shared base model is reset between keys: a key trained after others equals one trained alone."""
    from ablation.session import ProcessState

    def config(seed: int, store: Path, method: str = "adapters"):
        overrides = [
            "preset=quick",
            "train.max_steps=3",
            f"method={method}",
            f"seed={seed}",
            f"paths.store={store}",
        ]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return OmegaConf.to_object(compose("config", overrides=overrides))

    process = ProcessState()  # one model, loaded once: reset between the three keys
    alone = process.open_session(process.resolve(config(1, tmp_path / "a")))
    process.open_session(process.resolve(config(0, tmp_path / "b", "full")))
    after = process.open_session(process.resolve(config(1, tmp_path / "b")))
    assert alone.key == after.key
    a = load_file(tmp_path / "a" / alone.key / "trained.safetensors")
    b = load_file(tmp_path / "b" / after.key / "trained.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
