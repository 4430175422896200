"""SIGKILL at every stage of a sweep, then a re-run: the final table is that of an uninterrupted run, the
killed training resumes from its checkpoint, and no temporary or partial file remains.

One sweep is killed again and again, each time one stage further (the re-run after each kill goes on
until the next one), and finally completes. The kill is `os.kill(getpid(), SIGKILL)` placed by a patch
inside the real process: no handler runs, no file is closed, as when a node dies. (`m.os.replace` is the
one `os.replace` of the process: each patch picks its write by the file's name.)
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

# name -> (patch that kills at that point, what the killed run must have left behind: a glob under root)
STAGES = {
    # the tokenized dataset's folder is written, not yet renamed into place
    "dataset cache write": (
        KILL
        + """
import ablation.data as m
real = m.os.replace
def replace(src, dst):
    if m.Path(dst).parent.name == "datasets":
        die()
    return real(src, dst)
m.os.replace = replace
""",
        "cache/datasets/.toy-*",
    ),
    # training, at step 120 of 200, with a checkpoint after every step
    "training": (
        KILL
        + """
import torch, ablation.train as t
t.CHECKPOINT_SECONDS = 0.0
real, calls = torch.optim.AdamW.step, [0]
def step(self, *a, **k):
    calls[0] += 1
    if calls[0] == 121:
        die()
    return real(self, *a, **k)
torch.optim.AdamW.step = step
""",
        "store/*.partial.pt",
    ),
    # the trained parameters are written to a temporary folder, not yet renamed to the key's folder
    "trained-parameters write": (
        KILL
        + """
import ablation.train as t
real = t.os.replace
def replace(src, dst):
    if t.Path(src).name.startswith(".tiny-toy-"):
        die()
    return real(src, dst)
t.os.replace = replace
""",
        "store/.tiny-toy-*",
    ),
    # evaluation: the intact pass and one cell are on disk, the second cell is being computed
    "evaluation": (
        KILL
        + """
import ablation.evaluate as e
real, calls = e.Evaluator.cell, [0]
def cell(self, *a, **k):
    calls[0] += 1
    if calls[0] == 2:
        die()
    return real(self, *a, **k)
e.Evaluator.cell = cell
""",
        "store/*/eval/*/cell-0-1-both.npy",
    ),
    # a cell's predictions are written under a temporary name, not yet renamed
    "cell cache write": (
        KILL
        + """
import ablation.atomic as a
real = a.os.replace
def replace(src, dst):
    if a.Path(dst).name.startswith("cell-"):
        die()
    return real(src, dst)
a.os.replace = replace
""",
        "store/*/eval/*/.cell-*.tmp.npy",
    ),
    # the sweep table is written under a temporary name, not yet renamed
    "results table write": (
        KILL
        + """
import ablation.results as r
real = r.os.replace
def replace(src, dst):
    if r.Path(dst).name == "results.csv":
        die()
    return real(src, dst)
r.os.replace = replace
""",
        "sweep/.results.csv.*.tmp",
    ),
}


def test_kill_at_every_stage_then_rerun(toy, tmp_path):
    conf, _, uninterrupted = toy  # the kill chain uses a cache and store of its own
    want = table(uninterrupted)
    args = command(conf, tmp_path / "sweep", tmp_path / "store", tmp_path / "cache", *CELLS)
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
