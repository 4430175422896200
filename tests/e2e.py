"""Whole sweeps of `python -m ablation.run` on a tiny model and task written to disk, in subprocesses.

A tiny BERT (3 layers, 32 hidden) and a toy CSV task are saved once per test session and added to Hydra's
search path as `model=tiny task=toy`, so sweeps run end to end in seconds: the same entry point, sweeper,
launchers and caches as a real study, and no download.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from conftest import tiny_tokenizer
from transformers import BertConfig, BertModel

REPO = Path(__file__).resolve().parents[1]
# A learnable toy: the label word decides the label, so the adapters matter and cells differ.
FILLER = ["the", "movie", "film", "plot", "is", "was", "very"]
LABEL_WORDS = (["bad", "awful"], ["good", "great"], ["not", "a"])  # the toy uses 2 labels; the matrix's 3
# Enough training that ablation changes predictions: 200 steps (the default cap), about 2 s; fp32 training
# and evaluation, so that what the tests assert holds on any machine whatever precision=auto measures there.
TRAIN = [
    "train.lr=1e-2",
    "train.epochs=20",
    "train.batch_size=8",
    "train.precision=fp32",
    "eval.precision=fp32",
]
CELLS = ["ablate.first=0..1", "ablate.last=1..2"]  # 4 jobs after the triangle filter, one training key
# Columns that describe time, process or provenance of the computation: all others must match exactly.
VOLATILE = ["trained_now", "cell_computed", "train_seconds", "fit_seconds", "eval_seconds", "job_seconds"]


def write_toy(root: Path, num_layers: int = 3) -> Path:
    """Save the tiny model, its tokenizer, the toy CSV and their Hydra entries under root; returns conf dir."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                        intermediate_size=64)  # fmt: skip
    BertModel(config).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        words = [*rng.choice(FILLER, size=4), rng.choice(LABEL_WORDS[i % 2])]
        rng.shuffle(words)
        rows.append((" ".join(words), i % 2))
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(root / "toy.csv", index=False)
    conf = root / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "task").mkdir()
    (conf / "model" / "tiny.yaml").write_text(
        f"name: tiny\nfamily: bert\nsource: hub\nhub_id: {root / 'model'}\nnum_layers: {num_layers}\n"
    )
    (conf / "task" / "toy.yaml").write_text(
        f"name: toy\nsource: csv\npath: {root / 'toy.csv'}\nnum_labels: 2\nvalidation_size: 40\n"
    )
    return conf


def command(conf: Path, out: Path, store: Path, cache: Path, *args: str) -> list[str]:
    """A sweep's arguments: the toy model and task, the training above, and where everything goes."""
    return ["-m", f"hydra.searchpath=[file://{conf}]", "model=tiny", "task=toy", *TRAIN,
            f"paths.store={store}", f"paths.cache={cache}", f"hydra.sweep.dir={out}", *args]  # fmt: skip


def run(
    arguments: list[str], patch: str = "", timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m ablation.run ARGS` in a subprocess, after `patch` (Python code) has run in it; `env` is
    added to this process's environment."""
    return subprocess.run(_driver(arguments, patch), cwd=REPO, env=_env(env), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def start(arguments: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m ablation.run ARGS` started in the background, its stdout and stderr into the file `log`
    (a pipe nobody reads would fill and block it)."""
    with open(log, "w") as out:
        return subprocess.Popen(_driver(arguments, ""), cwd=REPO, env=_env(env), stdout=out,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _driver(arguments: list[str], patch: str) -> list[str]:
    driver = textwrap.dedent(
        """
        import runpy, sys
        {patch}
        sys.argv = ["ablation.run", *sys.argv[1:]]
        runpy.run_module("ablation.run", run_name="__main__", alter_sys=True)
        """
    ).format(patch=textwrap.dedent(patch))
    return [sys.executable, "-c", driver, *arguments]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def table(sweep: Path) -> pd.DataFrame:
    """The sweep's results.csv without the columns that may differ between equal computations."""
    df = pd.read_csv(sweep / "results.csv").drop(columns=VOLATILE)
    return df.sort_values(["seed", "first", "last"]).reset_index(drop=True)


def leftovers(*roots: Path) -> list[Path]:
    """Temporary or partial files and folders under roots (Hydra's own `.hydra` and `.submitit` aside)."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            name = path.name
            if any(part in (".hydra", ".submitit") for part in path.parts):
                continue
            if ".tmp" in name or ".partial" in name or (name.startswith(".") and not name.endswith(".lock")):
                found.append(path)
    return found
