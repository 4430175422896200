"""SIGKILL at every stage of a sweep, then a re-run: the final table is that of an uninterrupted run, the
killed training resumes from its checkpoint, and no temporary or partial file remains.

One sweep is killed again and again, each time one stage further (the re-run after each kill goes on
until the next one), and finally completes. The kill is `os.kill(getpid(), SIGKILL)` placed by a patch
inside the real process: no handler runs, no file is closed, as when a node dies.
"""

from __future__ import annotations

import pandas as pd
import pytest
from e2e import CELLS, command, leftovers, run, table
from pandas.testing import assert_frame_equal

pytestmark = pytest.mark.sweeps

KILL = """
import os, signal
def die():
    os.kill(os.getpid(), signal.SIGKILL)
"""


def kill_at_replace(condition: str) -> str:
    """A patch that kills the process at the os.replace whose (src, dst) paths meet `condition`: the file
    is written under its temporary name, not yet renamed into place. (`os.replace` is one function for the
    whole process, so the condition picks the write by its file names.)"""
    return (
        KILL
        + f"""
from pathlib import Path
real = os.replace
def replace(src, dst):
    src, dst = Path(src), Path(dst)
    if {condition}:
        die()
    return real(src, dst)
os.replace = replace
"""
    )


def kill_at_call(owner: str, method: str, call: int) -> str:
    """A patch that kills the process at the `call`-th call of owner.method (e.g. a training step)."""
    module, _, cls = owner.rpartition(".")
    return (
        KILL
        + f"""
import {module} as m
real, calls = m.{cls}.{method}, [0]
def wrapped(self, *a, **k):
    calls[0] += 1
    if calls[0] == {call}:
        die()
    return real(self, *a, **k)
m.{cls}.{method} = wrapped
"""
    )


# name -> (patch that kills at that point, what the killed run must have left behind: a glob under root)
STAGES = {
    # the tokenized dataset's folder is written, not yet renamed into place
    "dataset cache write": (kill_at_replace('dst.parent.name == "datasets"'), "cache/datasets/.toy-*"),
    # training, at step 120 of 200, with a checkpoint after every step
    "training": (
        kill_at_call("torch.optim.AdamW", "step", 121),
        "store/*.partial.pt",
    ),
    # the trained parameters are written to a temporary folder, not yet renamed to the key's folder
    "trained-parameters write": (kill_at_replace('src.name.startswith(".tiny-toy-")'), "store/.tiny-toy-*"),
    # evaluation: the intact pass and one cell are on disk, the second cell is being computed
    "evaluation": (
        kill_at_call("ablation.evaluate.Evaluator", "cell", 2),
        "store/*/eval/*/cell-0-1-both-zero-trained.npy",
    ),
    # a cell's predictions are written under a temporary name, not yet renamed
    "cell cache write": (kill_at_replace('dst.name.startswith("cell-")'), "store/*/eval/*/.cell-*.tmp.npy"),
    # the sweep table is written under a temporary name, not yet renamed
    "results table write": (kill_at_replace('dst.name == "results.csv"'), "sweep/.results.csv.*.tmp*"),
}


def test_kill_at_every_stage_then_rerun(toy, tmp_path):
    conf, _, uninterrupted = toy  # the kill chain uses a cache and store of its own
    want = table(uninterrupted)
    # a checkpoint after every step (not part of the training key: the table still equals the sequential one)
    args = command(
        conf, tmp_path / "sweep", tmp_path / "store", tmp_path / "cache", *CELLS, "train.checkpoint_seconds=0"
    )
    outputs = {}
    for stage, (patch, left) in STAGES.items():
        done = run(args, patch)
        assert done.returncode == -9, (stage, done.returncode, done.stderr[-3000:])  # killed, where planned
        assert list(tmp_path.glob(left)), (stage, left, sorted(str(p) for p in tmp_path.rglob("*")))
        outputs[stage] = done.stdout + done.stderr
    # the run after the kill in training resumed from its checkpoint rather than starting again
    assert "resuming from step 120 of 200" in outputs["trained-parameters write"]
    done = run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_frame_equal(table(tmp_path / "sweep"), want, check_exact=True)
    assert leftovers(tmp_path) == []
    # and a re-run of the finished sweep trains and computes nothing
    again = run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert rows["trained_now"].sum() == 0 and rows["cell_computed"].sum() == 0
