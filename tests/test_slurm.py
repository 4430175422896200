"""Sweeps through a real SLURM cluster (tests/slurm_cluster.py): array jobs, time limits, cancellation.

The user's command shape on a 4-layer tiny model (10 cells, 2 seeds) goes through `submitit_slurm` and the
suite's own `slurm` launcher (packed jobs); a training that hits its time limit is requeued and resumes; a
cancelled task is listed in the report and the same command finishes the sweep. Each test compares with the
sequential run's table.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from e2e import command, leftovers, run, start, table, write_toy
from pandas.testing import assert_frame_equal

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

pytestmark = pytest.mark.slurm

# 10 cells x 2 seeds = 20 jobs, 2 training keys; the 4-layer toy needs 600 steps to learn (at e2e.TRAIN's 200 it
# stays at the majority class and every cell is equal)
GRID = ["ablate.first=0..3", "ablate.last=0..3", "seed=0,1", "train.epochs=60", "train.max_steps=600"]


@pytest.fixture(scope="module")
def toy4(tmp_path_factory):
    """The 4-layer toy on disk and its sequential sweep of GRID: (conf, cache, sequential sweep dir)."""
    root = tmp_path_factory.mktemp("toy4")
    conf = write_toy(root, num_layers=4)
    done = run(command(conf, root / "sequential", root / "store", root / "cache", *GRID))
    assert done.returncode == 0, done.stderr[-3000:]
    return conf, root / "cache", root / "sequential"


def _keys(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if (p / "trained.safetensors").exists())


@pytest.mark.parametrize(
    "launcher",
    [["hydra/launcher=submitit_slurm"], ["hydra/launcher=slurm", "hydra.launcher.jobs_per_task=4"]],
    ids=["submitit_slurm", "slurm-packed-4"],
)
def test_the_users_sweep_on_slurm_trains_each_key_once_and_matches_the_sequential_table(
    slurm, toy4, tmp_path, launcher
):
    conf, cache, sequential = toy4
    reference = table(sequential)
    assert len(reference) == 20 and reference["accuracy"].nunique() > 1  # cells differ: the check has teeth
    done = run(command(conf, tmp_path / "sweep", tmp_path / "store", cache, *GRID, *launcher), env=slurm)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "sweep" / "results.csv")
    cells = {(r.seed, r.first, r.last) for r in rows.itertuples()}
    assert cells == {(s, f, la) for s in (0, 1) for f in range(4) for la in range(f, 4)}  # every cell
    assert rows["trained_now"].sum() == len(_keys(tmp_path / "store")) == 2  # each key trained exactly once
    assert_frame_equal(table(tmp_path / "sweep"), reference, check_exact=True)
    assert json.loads((tmp_path / "sweep" / "failed_jobs.json").read_text()) == []
    assert (tmp_path / "sweep" / "report.html").exists()
    # the jobs ran as SLURM array tasks: one per job, or one per pack of 4
    tasks = [p for p in (tmp_path / "sweep" / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)]
    assert len(tasks) == (5 if "hydra.launcher.jobs_per_task=4" in launcher else 20)
    assert leftovers(tmp_path) == []


def _submitit_logs(sweep: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((sweep / ".submitit").glob("*/*_log.*")))


# GATE, a sitecustomize module the task's Python loads (PYTHONPATH, set by a `setup` line of the sbatch
# script), holds the training once, when its optimizer has taken HOLD steps of 400 (a checkpoint is written
# after every step, so that of step HOLD is on disk), until SLURM's time-limit warning ends the run. Whatever
# the machine's speed, that run cannot finish, and the next one resumes from step HOLD exactly.
HOLD = 200
LONG = ["train.epochs=1000", "train.max_steps=400", "train.checkpoint_seconds=0"]
GATE = f"""
import time
from pathlib import Path
import torch.optim

held, step = Path(__file__).with_name("held"), torch.optim.AdamW.step

def gated(self, *args, **kwargs):
    # the optimizer's own count: restored with its state when a run resumes
    taken = max((int(s["step"]) for s in self.state.values() if "step" in s), default=0)
    if taken == {HOLD} and not held.exists():
        held.touch()
        print("[gate] holding the training at step {HOLD} until the time limit", flush=True)
        while True:
            time.sleep(1)  # SLURM's USR2 runs submitit's handler here, which requeues the task and exits
    return step(self, *args, **kwargs)

torch.optim.AdamW.step = gated
"""
MAX_TIMEOUTS = 20


def test_a_training_past_its_time_limit_is_requeued_and_resumes_where_it_stopped(slurm, toy4, tmp_path):
    """timeout_min=2 with the warning 30 s before it: SLURM sends USR2 60-90 s into a run (its time checks are
    30 s apart) to the training held at step HOLD. submitit takes it for a time limit, not a preemption (it
    does once a run has lasted min(0.8 x limit, limit - 10 min): from its start under a 2-minute limit), uses
    up one of max_num_timeout requeues, and the training goes on from its checkpoint."""
    conf, cache, _ = toy4
    cell = ["ablate.first=1", "ablate.last=2", *LONG]
    # the uninterrupted run, on the other core meanwhile
    reference = start(
        command(conf, tmp_path / "sequential", tmp_path / "store-ref", cache, *cell), tmp_path / "ref.log"
    )
    (tmp_path / "gate").mkdir()
    (tmp_path / "gate" / "sitecustomize.py").write_text(GATE)
    limits = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30",
              f"hydra.launcher.max_num_timeout={MAX_TIMEOUTS}",
              f"hydra.launcher.setup=['export PYTHONPATH={tmp_path / 'gate'}']"]  # fmt: skip
    # the bound is for a hang only: one held run (at most 2 min) and a few short ones
    done = run(
        command(conf, tmp_path / "sweep", tmp_path / "store", cache, *cell, *limits), env=slurm, timeout=900
    )
    assert reference.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    log = _submitit_logs(tmp_path / "sweep")
    assert log.count("[gate] holding") == 1, log[-3000:]
    # the warning was taken for a time limit: one of the requeues after a timeout was used up
    assert "this job is timed-out" in log and f"({MAX_TIMEOUTS - 1} remaining timeouts)" in log, log[-3000:]
    resumed = [int(s) for s in re.findall(r"resuming from step (\d+) of 400", log)]
    assert HOLD in resumed and all(0 < s < 400 for s in resumed), log[-3000:]
    rows = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert rows["train_steps"].tolist() == [400]
    # The run that finished the training resumed it (the store entry's metrics say from where); under load a
    # requeued run may be warned too, after the training or during it, so the last resume is the one.
    (key,) = _keys(tmp_path / "store")
    finished = json.loads((tmp_path / "store" / key / "metrics.json").read_text())
    assert finished["resumed_at_step"] == max(resumed) and finished["steps"] == 400
    assert_frame_equal(table(tmp_path / "sweep"), table(tmp_path / "sequential"), check_exact=True)
    assert leftovers(tmp_path) == [] and not list((tmp_path / "store").glob("*.partial.pt"))


def _running_trainer(sweep: Path, deadline: float) -> str:
    """The SLURM id of the array task that is training (its log says so), once it has a checkpoint."""
    while time.monotonic() < deadline:
        for log in (sweep / ".submitit").glob("*/*_log.out"):
            if "[train] training" in log.read_text(errors="replace"):
                task = log.parent.name
                state = subprocess.run(
                    ["squeue", "-h", "-o", "%T", "-j", task], capture_output=True, text=True
                )
                if state.stdout.strip() == "RUNNING" and list((sweep.parent / "store").glob("*.partial.pt")):
                    return task
        time.sleep(0.5)
    raise AssertionError(f"no task was seen training under {sweep}")


def test_a_cancelled_task_is_listed_and_the_same_command_finishes_the_sweep(
    slurm, toy4, tmp_path, monkeypatch
):
    conf, cache, _ = toy4
    for name, value in slurm.items():  # squeue and scancel from this process
        monkeypatch.setenv(name, value)
    grid = [*GRID, "train.epochs=1000", "train.max_steps=1500", "train.checkpoint_seconds=1"]
    reference = start(
        command(conf, tmp_path / "sequential", tmp_path / "store-ref", cache, *grid), tmp_path / "ref.log"
    )
    args = command(conf, tmp_path / "sweep", tmp_path / "store", cache, *grid, "hydra/launcher=slurm",
                   "hydra.launcher.jobs_per_task=5")  # fmt: skip
    first = start(args, tmp_path / "first.log", env=slurm)
    task = _running_trainer(tmp_path / "sweep", time.monotonic() + 300)
    subprocess.run(["scancel", task], check=True)
    first.wait(timeout=600)
    err = (tmp_path / "first.log").read_text()
    assert first.returncode == 1, err[-3000:]  # the sweep ran to its end, then said it was not complete
    assert "job(s) failed" in err and "Run the same command again" in err
    failed = json.loads((tmp_path / "sweep" / "failed_jobs.json").read_text())
    assert len(failed) == 5  # the cancelled task's pack of 5 jobs
    assert {f["slurm_job_id"] for f in failed} == {task} and {f["state"] for f in failed} == {"CANCELLED"}
    assert all(Path(f["stderr"]).exists() for f in failed)
    page = (tmp_path / "sweep" / "report.html").read_text()
    assert task in page and failed[0]["stderr"] in page  # listed with its SLURM id and log
    (tmp_path / "first-report.html").write_text(page)  # to look at: the second command rewrites it
    before = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert len(before) == 15

    again = run(args, env=slurm, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert reference.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    after = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert len(after) == 20 and json.loads((tmp_path / "sweep" / "failed_jobs.json").read_text()) == []
    # Each key trained once in all: the cancelled training resumed from its checkpoint, either in this sweep's
    # other task of that key (which was waiting for it) or in the second command.
    assert before["trained_now"].sum() + after["trained_now"].sum() == 2
    assert "resuming from step" in _submitit_logs(tmp_path / "sweep")
    done_before = after[after["job_dir"].isin(before["job_dir"])]
    assert (
        not done_before["trained_now"].any() and not done_before["cell_computed"].any()
    )  # nothing recomputed
    assert_frame_equal(table(tmp_path / "sweep"), table(tmp_path / "sequential"), check_exact=True)
    assert leftovers(tmp_path) == [] and not list((tmp_path / "store").glob("*.partial.pt"))


def test_the_quick_layer_ablation_study_on_the_real_6_layer_model_through_slurm(slurm, tmp_path):
    """`study=layer_ablation preset=quick` on the offline minilm_l6 (cached by the slow suite where it ran
    first), 21 jobs packed 7 per task: every cell, one training, the heatmap and the report."""
    done = run(["-m", "study=layer_ablation", "preset=quick", f"paths.store={tmp_path / 'store'}",
                f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra/launcher=slurm", "hydra.launcher.jobs_per_task=7"],
               env=slurm, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert len(rows) == 21 and rows["trained_now"].sum() == 1 and (rows["model"] == "minilm_l6").all()
    assert rows["accuracy"].nunique() > 1  # the cells differ
    page = (tmp_path / "sweep" / "report.html").read_text()
    assert "No failed jobs." in page and (tmp_path / "sweep" / "heatmap.png").exists()
    assert (
        len([p for p in (tmp_path / "sweep" / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)])
        == 3
    )
