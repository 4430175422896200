"""Reading side of the adapter studies: load sweep results, aggregate seeds, draw the figures.

Never imports torch, transformers or hydra, so results can be opened on a laptop without them.
Plotting lives in `analysis.plots` (not re-exported, so `import analysis` stays free of matplotlib).
"""

from analysis.collect import conform, load_predictions, load_results
from analysis.stats import layer_matrix, mean_sem, paired_bootstrap_ci, split_panels, summarize_seeds

__all__ = [
    "conform",
    "layer_matrix",
    "load_predictions",
    "load_results",
    "mean_sem",
    "paired_bootstrap_ci",
    "split_panels",
    "summarize_seeds",
]
