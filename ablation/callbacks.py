"""The end of a sweep, as a Hydra callback (registered in conf/config.yaml): once every job has returned,
in the process that launched them, whatever the launcher, rebuild the table from every job's result.json,
then draw the figures and write the report; if any job failed (the sweeper's failed_jobs.json), end the command
with status 1 after them.

The drawing is `analysis`'s, called by its dotted name (`report`): the experiment side never imports the
reading side. Switch parts off with `hydra.callbacks.end_of_sweep.report=null` (or `.table=false`), or the
whole callback with `~hydra.callbacks.end_of_sweep`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from ablation.results import FAILED_JOBS, RESULTS_CSV, rebuild_table

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
        table = sweep_dir / RESULTS_CSV
        rows = len(table.read_text().splitlines()) - 1 if table.exists() else 0
        if self.report is not None and rows == 0 and table.exists():
            log.warning(f"No report written: no job wrote a row ({table} is empty)")
        elif self.report is not None and rows > 0:
            try:
                for line in get_method(self.report)(sweep_dir):
                    log.info(line)
            except (ValueError, KeyError, FileNotFoundError) as err:  # the rows are all written; say why
                log.warning(f"No report written: {err}. Rows: {table}")
        failed = sweep_dir / FAILED_JOBS
        jobs = json.loads(failed.read_text()) if failed.exists() else []
        if jobs:
            # Hydra turns a callback's exception into a warning and exits 0; a sweep with failed jobs must not
            # look like a finished one to a script, so the command ends here with status 1.
            first = jobs[0]
            raise SystemExit(
                f"{len(jobs)} job(s) failed, listed in {failed} and the report; the first, #{first['job_num']}: "
                f"{first['error']}. Run the same command again to finish them (finished jobs are not recomputed)."
            )
