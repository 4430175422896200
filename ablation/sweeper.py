"""A Hydra sweeper: `a..b` ranges (also `a..L`, `a..L-1` up to the model's layer count L), a union of
grids, the lower-triangle filter, up-front checks of every job, and the study's figure at the end."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from ablation.atomic import write_text
from ablation.config import ConfigError, check_writable
from ablation.results import update_table

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
# `a..L` and `a..L-1`: up to the model's number of layers, resolved per job once the model is known.
_LAYER_RANGE = re.compile(r"^(-?\d+)\.\.L(?:-(\d+))?$")
ABLATE_KEYS = ("ablate.first", "ablate.last")
# Jobs sharing these run back to back: switching the model or task reloads the model.
GROUPING_KEYS = ("preset", "model", "task")


class RangeError(ConfigError):
    """A sweep value written with `..` that is not an integer range a..b with a <= b."""


def expand_range(key: str, value: str) -> str:
    """Rewrite an inclusive `a..b` value as Hydra's `range(a,b+1)`; other values pass through."""
    text = value.strip()
    if ".." not in text or set(text) == {"."} or "/" in text or "\\" in text or text.startswith(("'", '"')):
        return value
    if _LAYER_RANGE.match(text):
        return text  # expanded per job by the sweeper, once the model's L is known
    match = _RANGE.match(text)
    if match is None:
        raise RangeError(
            f"{key}={value}: a range is written a..b with integers, or a..L / a..L-1 up to the model's "
            f"layer count L, e.g. {key}=0..11 or {key}=0..L-1"
        )
    lo, hi = int(match.group(1)), int(match.group(2))
    if lo > hi:
        raise RangeError(f"{key}={value}: empty range, a..b needs a <= b (e.g. {key}={hi}..{lo})")
    return f"range({lo},{hi + 1})"


def expand_arguments(arguments: list[str]) -> list[str]:
    """Apply expand_range to every `key=value` override."""
    out = []
    for arg in arguments:
        key, sep, value = arg.partition("=")
        out.append(f"{key}={expand_range(key, value)}" if sep else arg)
    return out


def _job_dict(job: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in job)


def layer_range(value: str, num_layers: int) -> list[int] | None:
    """The integers of an `a..L` / `a..L-c` value for a model with num_layers layers; None for other values."""
    match = _LAYER_RANGE.match(value.strip())
    if match is None:
        return None
    lo, hi = int(match.group(1)), num_layers - int(match.group(2) or 0)
    if lo > hi:
        raise RangeError(f"{value}: empty for a model with L={num_layers} layers")
    return list(range(lo, hi + 1))


def _value_order(value: str) -> tuple:
    """Numbers in numeric order (seed 2 before 10, size 8 before 64), other values as text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def drop_lower_triangle(jobs: list[list[str]]) -> tuple[list[list[str]], int]:
    """Drop jobs whose ablate.first > ablate.last; order the rest by (other overrides, first, last)."""
    kept = []
    for job in jobs:
        values = _job_dict(job)
        first, last = (values.get(k) for k in ABLATE_KEYS)
        if first is not None and last is not None and int(first) > int(last):
            continue
        kept.append(job)

    # Jobs of one model and task run together (no reloads); cells that share `first` run back to back,
    # in increasing `last`, so the evaluator can extend one ablated chain instead of recomputing it.
    def order(job: list[str]) -> tuple:
        values = _job_dict(job)
        grouping = tuple(_value_order(values.get(k, "")) for k in GROUPING_KEYS)
        rest = tuple(
            (k, _value_order(v)) for k, v in sorted(values.items()) if k not in (*ABLATE_KEYS, *GROUPING_KEYS)
        )
        return grouping, rest, *(int(values.get(k, -1)) for k in ABLATE_KEYS)

    kept.sort(key=order)
    return kept, len(jobs) - len(kept)


def build_jobs(
    params: dict[str, Any], grids: list[dict[str, Any]], arguments: list[str], parser: OverridesParser
) -> list[list[str]]:
    """The product of params and the command line with each grid, grids in order, duplicates dropped."""
    common = [f"{k}={v}" for k, v in params.items()] + list(arguments)
    jobs: list[list[str]] = []
    for grid in grids or [{}]:
        # The command line comes last, so it wins over a grid's value for the same key.
        overrides = expand_arguments([f"{k}={v}" for k, v in grid.items()] + common)
        for job in BasicSweeper.split_arguments(parser.parse_overrides(overrides), None)[0]:
            if job not in jobs:
                jobs.append(job)
    return jobs


def expand_layer_ranges(
    jobs: list[list[str]], num_layers: Callable[[tuple[str, ...]], int]
) -> list[list[str]]:
    """Replace `a..L(-c)` values by one job per integer; num_layers(the job's other overrides) gives L."""
    out = []
    for job in jobs:
        ranged = [arg for arg in job if _LAYER_RANGE.match(arg.split("=", 1)[1].strip())]
        if not ranged:
            out.append(job)
            continue
        rest = [arg for arg in job if arg not in ranged]
        L = num_layers(tuple(rest))
        choices = [
            [f"{k}={v}" for v in layer_range(value, L)] for k, value in (a.split("=", 1) for a in ranged)
        ]
        out += [rest + list(combo) for combo in itertools.product(*choices)]
    return out


PLAN = "cell_plan.json"


def _group_key(job: list[str]) -> str:
    """What identifies a job's group: its overrides other than ablate.first/last, in a fixed order."""
    return " ".join(sorted(arg for arg in job if arg.split("=", 1)[0] not in ABLATE_KEYS))


def write_cell_plan(sweep_dir: Path, jobs: list[list[str]]) -> None:
    """Record each group's cells in sweep order, so whichever job of a group runs first computes them all."""
    plan: dict[str, list[list[int]]] = defaultdict(list)
    for job in jobs:
        values = _job_dict(job)
        if all(k in values for k in ABLATE_KEYS):
            plan[_group_key(job)].append([int(values[k]) for k in ABLATE_KEYS])
    write_text(sweep_dir / PLAN, json.dumps(plan, indent=1, sort_keys=True))


def planned_cells(sweep_dir: Path, overrides: list[str]) -> list[tuple[int, int]]:
    """The cells (first, last) of the group of the job with these overrides; [] outside a planned sweep."""
    path = sweep_dir / PLAN
    if not path.exists():
        return []
    try:
        plan = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path}: malformed sweep plan; delete it and run the sweep again") from None
    return [tuple(cell) for cell in plan.get(_group_key(list(overrides)), [])]


# Launcher options we check before any job starts: name -> (test, what is allowed). Hydra checks the types.
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
}


def check_launcher(launcher: DictConfig) -> None:
    """Raise ConfigError naming the first launcher option outside what is allowed."""
    for name, (ok, allowed) in LAUNCHER_OPTIONS.items():
        if name in launcher and not ok(launcher[name]):
            raise ConfigError(f"hydra.launcher.{name}={launcher[name]!r} is not allowed: {allowed}")


class AblationSweeper(Sweeper):
    """Hydra's basic sweep plus ranges, a union of grids, the lower-triangle filter, up-front checks, figures."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        grids: list[dict[str, Any]] | None = None,
        dry_run: bool = False,
    ) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = params or {}
        self.grids = grids or [{}]
        self.dry_run = dry_run
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the context and build the configured launcher."""
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        """Expand, filter and check every job, then launch them and draw the sweep's heatmap."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        check_launcher(self.config.hydra.launcher)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        check_writable("hydra.sweep.dir", str(sweep_dir))
        loader = self.hydra_context.config_loader
        jobs = build_jobs(self.params, self.grids, arguments, OverridesParser.create(config_loader=loader))
        jobs = expand_layer_ranges(jobs, self._num_layers)
        tic = time.perf_counter()
        # Before the triangle filter: a layer the model does not have is an error even when every job
        # asking for it would be dropped (first=12 on a 12-layer model only appears with first > last).
        self._check_jobs(jobs)
        checked = len(jobs)
        jobs, dropped = drop_lower_triangle(jobs)
        if dropped:
            log.info(f"Dropped {dropped} of {dropped + len(jobs)} jobs with ablate.first > ablate.last")
        log.info(f"Checked {checked} jobs in {time.perf_counter() - tic:.1f} s")
        if self.dry_run:
            for num, job in enumerate(jobs):
                log.info(f"#{num} : {' '.join(job)}")
            log.info(f"Dry run: {len(jobs)} jobs listed, none launched")
            return []

        size = self.max_batch_size or max(len(jobs), 1)
        batches = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        write_cell_plan(sweep_dir, jobs)

        returns, start = [], 0
        for batch in batches:
            results = self.launcher.launch(batch, initial_job_idx=start)
            for r in results:
                _ = r.return_value  # re-raises a failed job's exception
            start += len(batch)
            returns.append(results)
        update_table(sweep_dir)  # every row, whichever launcher (process, node) wrote it
        self._draw(sweep_dir)
        return returns

    @functools.cache  # noqa: B019 (one sweeper per process; keyed by the job's other overrides)
    def _num_layers(self, overrides: tuple[str, ...]) -> int:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        return int(OmegaConf.select(cfg, "model.num_layers"))

    def _check_jobs(self, jobs: list[list[str]]) -> None:
        """Validate every job's config before any output is written.

        Jobs that differ only in ablate.first/last or the seed share one composed config (composing is
        the slow part, ~0.1 s a job); those values are then checked against it directly.
        """
        from ablation.config import AblateConfig, RunConfig

        loader = self.hydra_context.config_loader
        too_high: dict[str, list[int]] = defaultdict(list)
        layers: dict[str, int] = {}
        composed: dict[tuple, tuple[RunConfig, dict]] = {}
        for job in jobs:
            values = _job_dict(job)
            group = tuple(arg for arg in job if arg.split("=", 1)[0] not in (*ABLATE_KEYS, "seed"))
            if group not in composed:
                cfg = loader.load_sweep_config(self.config, list(job))
                base = {k: OmegaConf.select(cfg, k) for k in ABLATE_KEYS}
                with open_dict(cfg):
                    del cfg["hydra"]
                    for key in ABLATE_KEYS:  # checked per job below
                        OmegaConf.update(cfg, key, None)
                run = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), cfg))
                composed[group] = (run, base)
            run, base = composed[group]
            if "seed" in values and not re.fullmatch(r"\d+", values["seed"]):
                raise ConfigError(
                    f"seed={values['seed']!r} is not allowed: an integer >= 0 (seeds sweep as seed=0..2)"
                )
            first, last = (int(values[k]) if k in values else base[k] for k in ABLATE_KEYS)
            layers[run.model.name] = run.model.num_layers
            high = [v for v in (first, last) if v is not None and v >= run.model.num_layers]
            if high:
                too_high[run.model.name] += high
                continue
            if first is not None and last is not None and first > last:
                continue  # dropped by the triangle filter; its layers are checked above
            # replace() runs RunConfig's checks again: layers in range, ablation only with adapters.
            dataclasses.replace(run, ablate=AblateConfig(first, last, run.ablate.positions))
        if too_high:
            msgs = [
                f"model {m} has {layers[m]} layers but the sweep asks for layer {max(v)}: "
                f"use ablate.first=0..{layers[m] - 1} ablate.last=0..{layers[m] - 1}"
                for m, v in too_high.items()
            ]
            raise ConfigError("; ".join(msgs))

    def _draw(self, sweep_dir: Path) -> None:
        """Draw the figures the sweep's rows allow and write report.html beside results.csv."""
        from analysis.collect import load_results
        from analysis.plots import figure_plan
        from analysis.report import build_report

        if not (sweep_dir / "results.csv").exists():
            return
        try:
            report = build_report([sweep_dir], sweep_dir / "report.html", figures_dir=sweep_dir)
        except (ValueError, KeyError, FileNotFoundError) as err:  # the rows are all written; say why
            log.warning(f"No report written: {err}. Rows: {sweep_dir / 'results.csv'}")
            return
        for name in figure_plan(load_results(sweep_dir)):
            log.info(f"Figure: {sweep_dir / name}.png")
        log.info(f"Report: {report}")
