"""Hydra only instantiates plugins defined under `hydra_plugins`; the logic lives in ablation.sweeper."""

from ablation.sweeper import AblationSweeper as _AblationSweeper


class AblationSweeper(_AblationSweeper):
    """The `ablation` sweeper: plan (`a..b` ranges, grids, the lower-triangle filter), check, launch."""
