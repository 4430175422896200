"""Hydra only instantiates plugins defined under `hydra_plugins`; the logic lives in ablation.sweeper and
ablation.launcher."""

from ablation.sweeper import AblationSweeper as _AblationSweeper


class AblationSweeper(_AblationSweeper):
    """The `ablation` sweeper: plan (`a..b` ranges, grids, the lower-triangle filter), check, launch."""


try:  # the `cluster` extra (hydra-submitit-launcher) is optional
    from ablation.launcher import SlurmLauncher as _SlurmLauncher
except ImportError:  # pragma: no cover - without the extra there is no `hydra/launcher=slurm`
    pass
else:

    class SlurmLauncher(_SlurmLauncher):
        """The `slurm` launcher: submitit_slurm with packed jobs, and failed tasks listed instead of fatal."""
