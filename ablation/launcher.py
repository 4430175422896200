"""`hydra/launcher=slurm`: Hydra's submitit SLURM launcher, plus what a sweep of hundreds of short jobs needs.

- `jobs_per_task=N` packs N sweep jobs into each SLURM array task, run one after another in one process, so
  a study of many one-minute jobs does not flood the scheduler (the trainings and evaluations a pack's jobs
  share are then loaded once: the process keeps them between jobs).
- A task that fails, is cancelled or runs out of requeues does not stop the sweep: every other task's result
  is waited for, and each failed job comes back as a failed JobReturn carrying its SLURM job id, state and log
  paths (`slurm` attribute); the sweeper lists them and the end of the sweep runs as usual.
- Preemption and time limits are submitit's: SLURM's warning signal (`signal_delay_s` before the limit) makes
  submitit requeue the task (up to `max_num_timeout` times for time limits; preemptions always), which then
  runs its jobs again; a training resumes from its last checkpoint (`train.checkpoint_seconds`), and a job
  that had finished finds its row's work in the caches.

- Without SLURM's commands on PATH, `check_slurm_available` (called with the sweeper's launcher checks) says so
  in one line before any job is planned (submitit would fail only once the array is submitted, with a traceback).

Every option of `submitit_slurm` (partition, account, qos, timeout_min, cpus_per_task, mem_gb,
gpus_per_node, array_parallelism, setup, additional_parameters, ...) means the same here.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# The launchers that submit to SLURM (`_target_` -> the `hydra/launcher` choice), and the commands they run
# here: sbatch submits the array, its script runs each task under srun.
SLURM_LAUNCHERS = {
    "hydra_plugins.ablation_sweeper.SlurmLauncher": "slurm",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher": "submitit_slurm",
}
SLURM_COMMANDS = ("sbatch", "srun")


def check_slurm_available(launcher: DictConfig) -> None:
    """Raise ConfigError when `launcher` submits to SLURM and sbatch or srun is not on PATH."""
    from ablation.config import ConfigError  # here: ablation.config imports this module when it registers

    name = SLURM_LAUNCHERS.get(str(launcher.get("_target_")))
    missing = [cmd for cmd in SLURM_COMMANDS if shutil.which(cmd) is None]
    if name is not None and missing:
        raise ConfigError(
            f"no SLURM found here: {'/'.join(missing)} not on PATH (hydra/launcher={name} submits to a SLURM "
            "cluster; run on a login node, or use hydra/launcher=basic|joblib|submitit_local)"
        )


@dataclass
class SlurmLauncherConf(SlurmQueueConf):
    """submitit_slurm's options, plus `jobs_per_task` (sweep jobs run one after another per array task)."""

    _target_: str = "hydra_plugins.ablation_sweeper.SlurmLauncher"
    jobs_per_task: int = 1


class SlurmLauncher(SubmititSlurmLauncher):
    """Submit the sweep's jobs as one array of packs; wait for every task, failed ones included."""

    def __init__(self, jobs_per_task: int = 1, **params: Any) -> None:
        super().__init__(**params)
        self.jobs_per_task = jobs_per_task  # checked with the other options by the sweeper

    def __call__(self, pack: list[tuple]) -> list[JobReturn]:  # type: ignore[override]
        """Run a pack's jobs one after another (in the array task); a job's exception stays in its return."""
        return [SubmititSlurmLauncher.__call__(self, *job) for job in pack]

    def _executor(self) -> Any:
        """The submitit executor with this launcher's parameters (as submitit_slurm builds it)."""
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        """Submit the jobs in packs of `jobs_per_task` as one array; every job's return, in order."""
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            jobs.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        packs = [jobs[i : i + self.jobs_per_task] for i in range(0, len(jobs), self.jobs_per_task)]
        log.info(
            f"Submitit 'slurm': {len(jobs)} jobs in {len(packs)} array tasks "
            f"({self.jobs_per_task} per task), output in {sweep_dir}"
        )
        tasks = self._executor().map_array(self, packs)
        log.info(f"SLURM job array {tasks[0].job_id.split('_')[0]}: waiting for {len(tasks)} tasks")
        returns: list[JobReturn] = []
        for task, pack in zip(tasks, packs, strict=True):
            try:
                returns += task.results()[0]
            except Exception as err:  # failed, cancelled, timed out too often: its jobs are listed, not fatal
                returns += [_failed(task, job, err) for job in pack]
        return returns


def _failed(task: Any, job: tuple, err: Exception) -> JobReturn:
    """A failed JobReturn for one job of a task that produced no result, with where to look."""
    ret = JobReturn(overrides=job[0], status=JobStatus.FAILED, _return_value=err)
    ret.slurm = {  # type: ignore[attr-defined]
        "slurm_job_id": task.job_id,
        "state": task.state,
        "stdout": str(task.paths.stdout),
        "stderr": str(task.paths.stderr),
    }
    return ret
