"""A Hydra sweeper that reads `a..b` ranges, drops lower-triangle jobs and checks every job first."""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from ablation.config import ConfigError

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
ABLATE_KEYS = ("ablate.first", "ablate.last")


class RangeError(ConfigError):
    """A sweep value written with `..` that is not an integer range a..b with a <= b."""


def expand_range(key: str, value: str) -> str:
    """Rewrite an inclusive `a..b` value as Hydra's `range(a,b+1)`; other values pass through."""
    text = value.strip()
    if ".." not in text or set(text) == {"."} or "/" in text or "\\" in text or text.startswith(("'", '"')):
        return value
    match = _RANGE.match(text)
    if match is None:
        raise RangeError(f"{key}={value}: a range is written a..b with integers, e.g. {key}=0..11")
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


def drop_lower_triangle(jobs: list[list[str]]) -> tuple[list[list[str]], int]:
    """Drop jobs whose ablate.first > ablate.last; order the rest by (other overrides, first, last)."""
    kept = []
    for job in jobs:
        values = _job_dict(job)
        first, last = (values.get(k) for k in ABLATE_KEYS)
        if first is not None and last is not None and int(first) > int(last):
            continue
        kept.append(job)

    # Cells that share `first` run back to back, in increasing `last`, so the evaluator can
    # extend one ablated chain instead of recomputing it.
    def order(job: list[str]) -> tuple:
        values = _job_dict(job)
        rest = tuple(sorted((k, v) for k, v in values.items() if k not in ABLATE_KEYS))
        return rest, *(int(values.get(k, -1)) for k in ABLATE_KEYS)

    kept.sort(key=order)
    return kept, len(jobs) - len(kept)


class AblationSweeper(Sweeper):
    """Hydra's basic sweep plus `a..b` ranges, the lower-triangle filter, up-front checks, the heatmap."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = params or {}
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
        params = expand_arguments([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs, dropped = drop_lower_triangle(
            BasicSweeper.split_arguments(parser.parse_overrides(params), None)[0]
        )
        if dropped:
            log.info(f"Dropped {dropped} of {dropped + len(jobs)} jobs with ablate.first > ablate.last")
        tic = time.perf_counter()
        self._check_jobs(jobs)
        log.info(f"Checked {len(jobs)} jobs in {time.perf_counter() - tic:.1f} s")

        size = self.max_batch_size or max(len(jobs), 1)
        batches = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns, start = [], 0
        for batch in batches:
            results = self.launcher.launch(batch, initial_job_idx=start)
            for r in results:
                _ = r.return_value  # re-raises a failed job's exception
            start += len(batch)
            returns.append(results)
        self._draw(sweep_dir)
        return returns

    def _check_jobs(self, jobs: list[list[str]]) -> None:
        """Validate every job's config before any output is written.

        Jobs that differ only in ablate.first/last share one composed config (composing is the slow
        part, ~0.1 s a job); their layer indices are then checked against it directly.
        """
        from ablation.config import AblateConfig, RunConfig

        loader = self.hydra_context.config_loader
        too_high: dict[str, list[int]] = defaultdict(list)
        layers: dict[str, int] = {}
        composed: dict[tuple, tuple[RunConfig, dict]] = {}
        for job in jobs:
            values = _job_dict(job)
            group = tuple(arg for arg in job if arg.split("=", 1)[0] not in ABLATE_KEYS)
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
            first, last = (int(values[k]) if k in values else base[k] for k in ABLATE_KEYS)
            layers[run.model.name] = run.model.num_layers
            high = [v for v in (first, last) if v is not None and v >= run.model.num_layers]
            if high:
                too_high[run.model.name] += high
                continue
            AblateConfig(first, last, run.ablate.positions).check_layers(run.model.num_layers)
        if too_high:
            msgs = [
                f"model {m} has {layers[m]} layers but the sweep asks for layer {max(v)}: "
                f"use ablate.first=0..{layers[m] - 1} ablate.last=0..{layers[m] - 1}"
                for m, v in too_high.items()
            ]
            raise ConfigError("; ".join(msgs))

    def _draw(self, sweep_dir: Path) -> None:
        """Draw the layer-ablation heatmap when the sweep produced ablation rows."""
        from analysis.collect import load_results
        from analysis.plots import heatmap_figure

        if not (sweep_dir / "results.csv").exists():
            return
        df = load_results(sweep_dir).dropna(subset=["first", "last"])
        if df.empty:
            return
        for path in heatmap_figure(df, sweep_dir / "heatmap"):
            log.info(f"Heatmap: {path}")
