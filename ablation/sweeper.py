"""A Hydra sweeper: plan the jobs (ablation.jobs), check every one of them, launch them.

Planning is a chain of functions on override lists; the checks compose each distinct config once and stop
the sweep before anything is written; the launcher is whichever Hydra launcher is configured. What happens
after the last job (the table, figures, report) is a Hydra callback (ablation.callbacks).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from ablation.atomic import write_text
from ablation.config import AblateConfig, ConfigError, RunConfig, check_writable, derive, on_block_grid
from ablation.cost import plan_line
from ablation.jobs import (
    ABLATE_KEYS,
    build_jobs,
    choose_grid,
    drop_lower_triangle,
    estimated,
    expand_layer_ranges,
    group_key,
    write_cell_plan,
)
from ablation.results import FAILED_JOBS

log = logging.getLogger(__name__)

# Launcher options we check before any job starts: name -> (test, what is allowed). Hydra checks the types;
# these are values a launcher would only reject once jobs were submitted, or never.
LAUNCHER_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_jobs": (lambda v: v != 0, "a non-zero integer (-1: one job per CPU)"),
    "timeout_min": (lambda v: v > 0, "a positive number of minutes"),
    "cpus_per_task": (lambda v: v is None or v > 0, "null or a positive integer"),
    "gpus_per_node": (lambda v: v is None or v >= 0, "null or an integer >= 0"),
    "mem_gb": (lambda v: v is None or v > 0, "null or a positive integer"),
    "array_parallelism": (lambda v: v > 0, "a positive integer"),
    "nodes": (lambda v: v > 0, "a positive integer"),
    "tasks_per_node": (lambda v: v > 0, "a positive integer"),
    "partition": (lambda v: v is None or bool(str(v).strip()), "null or a partition name"),
    "jobs_per_task": (
        lambda v: v > 0,
        "a positive integer (sweep jobs run one after another per SLURM task)",
    ),
    "max_num_timeout": (lambda v: v >= 0, "an integer >= 0 (requeues after a time limit)"),
    "signal_delay_s": (lambda v: v >= 0, "seconds >= 0 (the warning signal before the time limit)"),
}


def check_launcher(launcher: DictConfig) -> None:
    """Raise ConfigError naming the first launcher option outside what is allowed."""
    for name, (ok, allowed) in LAUNCHER_OPTIONS.items():
        if name in launcher and not ok(launcher[name]):
            raise ConfigError(f"hydra.launcher.{name}={launcher[name]!r} is not allowed: {allowed}")
    try:
        from ablation.launcher import check_slurm_available
    except ImportError:  # no `cluster` extra: no SLURM launcher to check
        return
    check_slurm_available(launcher)


class AblationSweeper(Sweeper):
    """Hydra's basic sweep plus ranges, a union of grids, the lower-triangle filter and up-front checks."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        grids: list[dict[str, Any]] | None = None,
        dry_run: bool = False,
        presets: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = params or {}
        self.grids = grids or [{}]
        self.presets = presets or {}
        self.dry_run = dry_run
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self._layers: dict[tuple[str, ...], int] = {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the context and build the configured launcher."""
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        """Plan and check every job, then launch them; nothing is written before every check passed."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        check_launcher(self.config.hydra.launcher)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        check_writable("hydra.sweep.dir", str(sweep_dir))
        tic = time.perf_counter()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        preset = self.config.hydra.runtime.choices.get("preset")
        params, grids, full = choose_grid(self.params, self.grids, self.presets, preset)
        if full:
            log.info(f"The study has no {preset} grid (hydra.sweeper.presets.{preset}): its full grid runs")
        planned = expand_layer_ranges(build_jobs(params, grids, arguments, parser), self._num_layers)
        # Before the triangle filter: a layer the model does not have is an error even when every job
        # asking for it would be dropped (first=12 on a 12-layer model only appears with first > last).
        unadapted, off_grid = self._check_jobs(planned)
        if unadapted:
            log.info(
                f"Dropped {len(unadapted)} of {len(planned)} jobs whose ablate.first..last leaves the layers "
                "with adapters (adapter.layers)"
            )
        if off_grid:
            log.info(
                f"Dropped {len(off_grid)} of {len(planned)} jobs whose ablate.first..last is not a range of "
                "whole blocks (ablate.block)"
            )
        if unadapted or off_grid:
            planned = [job for n, job in enumerate(planned) if n not in unadapted | off_grid]
        jobs, dropped = drop_lower_triangle(planned)
        if not jobs:
            reasons = [
                f"{n} {what}"
                for n, what in (
                    (dropped, "have ablate.first > ablate.last"),
                    (len(unadapted), "ablate layers without adapters (adapter.layers)"),
                    (len(off_grid), "are not ranges of whole blocks (ablate.block)"),
                )
                if n
            ]
            why = f"of its {dropped + len(unadapted) + len(off_grid)} jobs, {' and '.join(reasons)}"
            if not reasons:
                why = "its grid is empty"
            elif len(reasons) == 1 and dropped:
                why = f"each of its {dropped} jobs has ablate.first > ablate.last"
            raise ConfigError(f"the sweep has no job to run: {why}")
        if dropped:
            log.info(f"Dropped {dropped} of {len(planned)} jobs with ablate.first > ablate.last")
        log.info(f"Checked {len(planned)} jobs in {time.perf_counter() - tic:.1f} s")
        plan = self._plan([job for job in jobs if not estimated(job)])
        if plan:
            log.info(f"Evaluation plan: {plan_line(plan)}; each job's log gives the time once measured")
        guessed = sum(map(estimated, jobs))
        if guessed:
            log.info(
                f"Estimated: {guessed} cells from gradients, not run (ablate.estimate: a forward and backward "
                "pass per training and kind, 4 for integrated)"
            )
        if self.dry_run:
            for num, job in enumerate(jobs):
                log.info(f"#{num} : {' '.join(job)}")
            log.info(f"Dry run: {len(jobs)} jobs listed, none launched")
            return []

        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        write_cell_plan(sweep_dir, jobs)
        size = self.max_batch_size or len(jobs)
        returns, failed = [], []
        for start in range(0, len(jobs), size):
            results = self.launcher.launch(jobs[start : start + size], initial_job_idx=start)
            failed += [
                _failure(start + i, r) for i, r in enumerate(results) if r.status != JobStatus.COMPLETED
            ]
            returns.append(results)
        # Every job ran (or was given up on) before this: the end of the sweep reads the list and, after the
        # table and report, ends the command with an error when it is not empty.
        write_text(sweep_dir / FAILED_JOBS, json.dumps(failed, indent=1))
        for f in failed:
            log.error(
                f"Job #{f['job_num']} failed: {f['error']}"
                + (f" (SLURM {f['slurm_job_id']}: {f['stderr']})" if "slurm_job_id" in f else "")
            )
        return returns

    def _plan(self, jobs: list[list[str]]) -> list[tuple[int, list[tuple[list[tuple[int, int]], bool]]]]:
        """The sweep's cells as the evaluation meets them: per training (the jobs' overrides but ablate.*),
        its model's layer count and its groups (jobs differing only in first/last) in sweep order, each with
        its cells in the order its first job computes them and whether they keep (ablate.kind=keep)."""
        trainings: dict[tuple[str, ...], dict[str, list[tuple[int, int]]]] = defaultdict(dict)
        for job in jobs:
            values = dict(arg.split("=", 1) for arg in job)
            if all(k in values for k in ABLATE_KEYS):
                training = tuple(a for a in job if not a.startswith("ablate."))
                cell = (int(values["ablate.first"]), int(values["ablate.last"]))
                trainings[training].setdefault(group_key(job), []).append(cell)
        return [
            (
                self._num_layers(training),
                [(cells, "ablate.kind=keep" in key.split()) for key, cells in groups.items()],
            )
            for training, groups in trainings.items()
        ]

    def _num_layers(self, overrides: tuple[str, ...]) -> int:
        """The layer count of the model these overrides choose (composed once per distinct overrides)."""
        if overrides not in self._layers:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            self._layers[overrides] = int(OmegaConf.select(cfg, "model.num_layers"))
        return self._layers[overrides]

    def _check_jobs(self, jobs: list[list[str]]) -> tuple[set[int], set[int]]:
        """Validate every job's config before any output is written; the indices of the jobs whose cell
        ablates layers without adapters (adapter.layers), and of those whose cell is not a range of whole
        blocks (ablate.block), which the sweep drops like first > last.

        Jobs that differ only in ablate.first/last or the seed share one composed config (composing is
        the slow part, ~0.1 s a job); those values are then checked against it directly.
        """
        unadapted: set[int] = set()
        off_grid: set[int] = set()
        loader = self.hydra_context.config_loader
        too_high: dict[str, list[int]] = defaultdict(list)
        layers: dict[str, int] = {}
        composed: dict[tuple, tuple[RunConfig, dict]] = {}
        for n, job in enumerate(jobs):
            values = dict(arg.split("=", 1) for arg in job)
            group = tuple(arg for arg in job if arg.split("=", 1)[0] not in (*ABLATE_KEYS, "seed"))
            if group not in composed:
                cfg = loader.load_sweep_config(self.config, list(job))
                ablate = OmegaConf.to_container(cfg.ablate)  # checked per job below, with its first and last
                with open_dict(cfg):
                    del cfg["hydra"]
                    cfg.ablate = OmegaConf.structured(AblateConfig())  # intact: the run is derived first
                run = derive(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)))
                composed[group] = (run, ablate)
            run, ablate = composed[group]
            if "seed" in values and not re.fullmatch(r"\d+", values["seed"]):
                raise ConfigError(
                    f"seed={values['seed']!r} is not allowed: an integer >= 0 (seeds sweep as seed=0..2)"
                )
            first, last = (int(values[k]) if k in values else ablate[k.split(".")[1]] for k in ABLATE_KEYS)
            layers[run.model.name] = run.model.num_layers
            high = [v for v in (first, last) if v is not None and v >= run.model.num_layers]
            if high:
                too_high[run.model.name] += high
                continue
            if first is not None and last is not None and first > last:
                continue  # dropped by the triangle filter; its layers are checked above
            block = AblateConfig(block=ablate.get("block", 1)).block  # checked before it divides
            if first is not None and not on_block_grid(first, last, block, run.model.num_layers):
                off_grid.add(n)
                continue
            if (
                first is not None
                and run.ablatable
                and not set(range(first, last + 1)) <= set(run.adapted_layers())
            ):
                unadapted.add(n)
                continue
            # replace() runs RunConfig's checks again: layers in range, ablation only with adapters.
            dataclasses.replace(run, ablate=AblateConfig(**{**ablate, "first": first, "last": last}))
        if too_high:
            msgs = [
                f"model {m} has {layers[m]} layers but the sweep asks for layer {max(v)}: "
                f"use ablate.first=0..{layers[m] - 1} ablate.last=0..{layers[m] - 1}"
                for m, v in too_high.items()
            ]
            raise ConfigError("; ".join(msgs))
        return unadapted, off_grid


def _failure(job_num: int, ret: JobReturn) -> dict[str, Any]:
    """What the report lists of a job that returned no row: its number, overrides, error, SLURM task."""
    err = ret._return_value
    return {
        "job_num": job_num,
        "overrides": " ".join(ret.overrides or []),
        "error": f"{type(err).__name__}: {err}".strip().splitlines()[-1][:300]
        if err is not None
        else "no result",
        **getattr(ret, "slurm", {}),
    }
