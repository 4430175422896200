"""Hydra entry point: compose config -> model + adapters -> train once -> ablate -> evaluate -> one row.

python -m ablation.run                                   # intact model, default config
python -m ablation.run ablate.first=0 ablate.last=5      # one ablation cell
python -m ablation.run -m ablate.first=0..11 ablate.last=0..11   # the Figure 6 sweep
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ablation.config import AblateConfig, CacheError, ConfigError, RunConfig
from ablation.data import compute_metrics
from ablation.jobs import RangeError, expand_arguments, planned_cells
from ablation.keys import config_columns
from ablation.results import (
    DIAGNOSTICS,
    RESULTS_CSV,
    Outcome,
    majority_rate,
    make_row,
    record_examples,
    record_history,
    record_row,
    relative_decrease,
    versions,
    write_job,
)
from ablation.session import ProcessState, process_state
from ablation.trackers import Tracker, open_tracker
from ablation.train import HISTORY, load_history

log = logging.getLogger("ablation")


def to_run_config(dcfg: DictConfig, job_dir: Path) -> RunConfig:
    """Validate the composed config (and the cached files it names); a rejected single run leaves no output
    directory behind."""
    try:
        return OmegaConf.to_object(dcfg)
    except (ConfigError, CacheError):
        if HydraConfig.get().mode == RunMode.RUN:
            shutil.rmtree(job_dir, ignore_errors=True)
        raise


def job_paths() -> tuple[Path, bool, Path]:
    """This job's folder, whether it is part of a sweep, and the folder of its table (the sweep's or its own)."""
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    return job_dir, multirun, Path(hc.sweep.dir) if multirun else job_dir


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dcfg: DictConfig) -> float:
    """Run one job and write its result row (and log it to the chosen tracker)."""
    tic = time.perf_counter()
    hc = HydraConfig.get()
    job_dir, multirun, root = job_paths()
    process = process_state()  # what this process keeps between the jobs Hydra runs in it
    cfg = process.resolve(to_run_config(dcfg, job_dir))  # device and precisions for this machine
    job = hc.sweep.subdir if multirun else "."
    with open_tracker(cfg.logger, root, job, hc.job.override_dirname or "defaults") as tracker:
        tracker.log_config(OmegaConf.to_container(dcfg, resolve=True))
        return run_job(cfg, dcfg, process, tracker, tic)


def run_job(cfg: RunConfig, dcfg: DictConfig, process: ProcessState, tracker: Tracker, tic: float) -> float:
    """Train once (each step shown to the tracker), evaluate the cell, write the row; its accuracy."""
    hc = HydraConfig.get()
    job_dir, multirun, root = job_paths()
    session = process.open_session(cfg, on_step=tracker.log_step)  # shared by the jobs of one training key
    trained_now = session.report_training()
    eval_tic = time.perf_counter()
    group = planned_cells(Path(hc.sweep.dir), list(hc.overrides.task)) if multirun else []
    intact, _ = session.predictions(AblateConfig())
    ablated, computed = session.predictions(cfg.ablate, group)  # the intact predictions again when no range
    eval_seconds = time.perf_counter() - eval_tic

    labels = session.evaluator.labels
    got, base = (
        compute_metrics(cfg.task.metric, labels, ablated),
        compute_metrics(cfg.task.metric, labels, intact),
    )
    trained = session.train_metrics
    outcome = Outcome(
        accuracy=got["accuracy"],
        intact_accuracy=base["accuracy"],
        relative_decrease=relative_decrease(got["accuracy"], base["accuracy"]),
        metric=got[cfg.task.metric],
        intact_metric=base[cfg.task.metric],
        majority_rate=majority_rate(labels),
        n_eval=len(labels),
        examples=record_examples(root, cfg.task.name, session.examples),  # once per sweep and split
        diverged=trained.get("diverged", False),
        diverged_step=trained.get("diverged_step"),
        train_steps=trained["steps"],
        planned_steps=trained.get("planned_steps", trained["steps"]),
        final_loss=trained.get("final_loss"),
        plateau_loss=trained.get("plateau_loss"),
        escape_step=trained.get("escape_step"),
        loss_spread=trained.get("loss_spread"),
        largest_grad_norm=trained.get("largest_grad_norm"),
        trained_params=session.counts["trainable"],
        total_params=session.counts["total"],
        train_key=session.key,
        trained_now=trained_now,
        cell_computed=computed,
        train_seconds=trained["train_seconds"] if trained_now else 0.0,
        fit_seconds=trained["train_seconds"],
        eval_seconds=eval_seconds,
        job_seconds=time.perf_counter() - tic,
        job_dir=hc.sweep.subdir if multirun else ".",
        code_version=versions()["code"],
    )
    row = make_row(hc.runtime.choices, config_columns(cfg), outcome)
    extra = {
        "config": OmegaConf.to_container(dcfg, resolve=True),
        "train_metrics": session.train_metrics,
        "versions": versions(),
        "session_timings": session.timings,
    }
    # per adapter slot, from the intact pass (cached per training and evaluation, so a re-run computes nothing)
    texts = {DIAGNOSTICS: session.diagnostics_file().read_text()} if cfg.ablatable else {}
    write_job(job_dir, row, extra, {"labels": labels, "intact": intact, "ablated": ablated}, texts)
    if record_history(session.store_entry / HISTORY, root, session.key) and not trained_now:
        tracker.log_history(load_history(session.store_entry))  # once per sweep: a stored training's steps
    tracker.log_metrics(row)
    record_row(root / RESULTS_CSV, row)
    where = (
        "intact"
        if cfg.ablate.cell is None
        else f"layers {cfg.ablate.first}..{cfg.ablate.last} {ablated_as(cfg.ablate)}"
    )
    diverged = f", diverged at step {outcome.diverged_step}" if outcome.diverged else ""
    log.info(
        f"{cfg.task.name}/{cfg.model.name} {cfg.method.name} {where}: accuracy {got['accuracy']:.4f} "
        f"(intact {base['accuracy']:.4f}, relative decrease {100 * outcome.relative_decrease:.2f}%{diverged}) "
        f"-> {job_dir / 'result.json'}"
    )
    return got["accuracy"]


def ablated_as(ablate: AblateConfig) -> str:
    """How a cell's layers were ablated, for the log line."""
    if ablate.kind == "scale":
        what = f"scaled by {ablate.alpha:g}"
    else:
        what = {"zero": "removed", "mean": "replaced by their mean", "keep": "kept, all others removed"}[
            ablate.kind
        ]
    return what + (", pretrained LayerNorms" if ablate.layernorm == "pretrained" else "")


def cli() -> None:
    """Rewrite `a..b` ranges into Hydra's range(a,b+1) before Hydra parses the command line."""
    try:
        sys.argv[1:] = expand_arguments(sys.argv[1:])
    except RangeError as err:
        sys.exit(f"error: {err}")
    main()


if __name__ == "__main__":
    cli()
