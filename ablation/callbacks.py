"""The end of a sweep, as a Hydra callback (registered in conf/config.yaml): once every job has returned,
in the process that launched them, whatever the launcher, rebuild the table from every job's result.json,
then draw the figures and write the report.

The drawing is `analysis`'s, called by its dotted name (`report`): the experiment side never imports the
reading side. Switch parts off with `hydra.callbacks.end_of_sweep.report=null` (or `.table=false`), or the
whole callback with `~hydra.callbacks.end_of_sweep`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from ablation.results import RESULTS_CSV, rebuild_table

log = logging.getLogger(__name__)


class EndOfSweep(Callback):
    """Rebuild results.csv from the jobs' result.json files, then run `report(sweep_dir)` for the figures
    and report.html (it returns the lines to log)."""

    def __init__(self, table: bool, report: str | None) -> None:
        self.table = table
        self.report = report

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """After the last job: the table, then the figures and the report."""
        sweep_dir = Path(config.hydra.sweep.dir)
        if OmegaConf.select(config, "hydra.sweeper.dry_run") or not (sweep_dir / "multirun.yaml").exists():
            return  # nothing was launched
        if self.table:
            log.info(f"Table: {rebuild_table(sweep_dir)}")
        if self.report is None or not (sweep_dir / RESULTS_CSV).exists():
            return
        try:
            lines = get_method(self.report)(sweep_dir)
        except (ValueError, KeyError, FileNotFoundError) as err:  # the rows are all written; say why
            log.warning(f"No report written: {err}. Rows: {sweep_dir / RESULTS_CSV}")
            return
        for line in lines:
            log.info(line)
