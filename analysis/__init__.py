"""Reading side of the adapter studies, in three layers: selection (`analysis.select`: which rows a figure or
claim reads), statistics (`analysis.stats`: every interval, one bootstrap path) and drawing
(`analysis.plots`); `analysis.claims` judges the paper's claims from the first two, `analysis.controls`
computes what the controls say (mean, scale and keep cells, pretrained LayerNorms, the head-only baseline,
the adapters' diagnostics), `analysis.report` puts everything on one page.

Never imports torch or transformers, so results can be opened where the models cannot run. Plotting is not
re-exported, so `import analysis` (and `import analysis.claims`) stays free of matplotlib.
"""

from analysis.collect import conform, load_predictions, load_results
from analysis.select import split_panels
from analysis.stats import layer_matrix, mean_sem, paired_bootstrap_ci, summarize_seeds

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
