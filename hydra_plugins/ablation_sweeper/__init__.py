"""Hydra only instantiates plugins defined under `hydra_plugins`; the logic lives in ablation.sweeper."""

from ablation.sweeper import AblationSweeper as _AblationSweeper


class AblationSweeper(_AblationSweeper):
    """The `ablation` sweeper (`a..b` ranges, lower-triangle filter, up-front checks, heatmap)."""
