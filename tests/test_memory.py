"""Evaluation memory is bounded by eval.memory_gb whatever the validation size: measured peak RSS.

A synthetic validation set of 40,000 examples (QQP's size) on a tiny model, whose states would need 4x the
budget unsharded, is evaluated for every cell in a fresh process. Its peak resident memory grows, over what
the model and data took before evaluation, by at most the budget plus what evaluation holds besides the
states (the predictions of every cell for every example, runtime buffers): that part is measured by the same
run with one batch per shard, and is small; the unsharded run's growth shows what the budget saves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.sweeps
REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, "tests")
    import torch
    from conftest import random_encoded
    from transformers import BertConfig, BertForSequenceClassification
    from ablation.adapters import inject_adapters
    from ablation.config import AdapterConfig
    from ablation.evaluate import Evaluator, bound_resident_memory
    from ablation.models import Stages

    torch.set_num_threads(1)

    def status(field: str) -> int:  # VmRSS: resident bytes now; VmHWM: their peak since the last reset
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    budget = float(sys.argv[1])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    inject_adapters(model, "bert", AdapterConfig(size=8, init_std=1e-2))
    data = random_encoded("bert", n=40_000, seed=0, min_len=6, max_len=10)
    ev = Evaluator(Stages(model, "bert"), data, batch_size=256, precision="fp32", memory_bytes=budget)
    if ev.sharded:
        bound_resident_memory()  # as the process that runs a sharded evaluation does (ablation.session.ProcessState)
    need = sum(ev.state_bytes(b) for b in range(len(ev.batches)))
    with torch.inference_mode():  # one batch first: the kernels' one-time workspaces belong to the baseline
        model(**{k: v for k, v in ev.batches[-1].items() if k != "labels"})
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak: building the data had its own
        f.write("5")
    before = status("VmRSS")
    cells = [None] + [(f, l) for f in range(3) for l in range(f, 3)]
    preds = dict(ev.predict(cells))
    peak = status("VmHWM")
    largest = max(ev.state_bytes(b) for b in range(len(ev.batches)))
    print(json.dumps({"need": need, "before": before, "peak": peak, "shards": len(ev.shards),
                      "cells": len(preds), "n": len(preds[None]), "largest": largest}))
    """
)


def measure(budget: float) -> dict:
    """Evaluate the synthetic set in a fresh process under `budget` bytes; its memory figures."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(budget)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_peak_memory_stays_under_the_budget():
    unsharded = measure(float("inf"))
    budget = unsharded["need"] / 4  # the unsharded states need 4x the budget
    got = measure(budget)
    floor = measure(1.0)  # one batch per shard: evaluation's memory besides the states
    assert got["need"] == unsharded["need"] == 4 * budget and got["shards"] >= 4
    assert got["cells"] == 7 and got["n"] == 40_000 and floor["shards"] > 100
    grown, rest = (r["peak"] - r["before"] for r in (got, floor))
    besides = rest - floor["largest"]
    mib = 2**20
    print(f"\nstates {unsharded['need'] / mib:.0f} MiB unsharded, growth {(unsharded['peak'] - unsharded['before']) / mib:.0f} "
          f"MiB; budget {budget / mib:.0f} MiB: growth {grown / mib:.0f} MiB in {got['shards']} shards; besides "
          f"the states {besides / mib:.1f} MiB")  # fmt: skip
    assert grown <= budget + besides
    assert besides <= budget / 4  # small beside the states it replaces
    # the check has teeth: the unsharded path grows by far more than the budget
    assert unsharded["peak"] - unsharded["before"] > 3 * budget
