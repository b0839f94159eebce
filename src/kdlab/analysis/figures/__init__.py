"""Figures of the analysis (matplotlib, Agg), per data set under ``figures/{dataset}/``
(per pair under ``figures/{dataset}/{teacher}_to_{student}/`` in a study of several pairs),
one module per kind:

``per_method``  per_method/{method}/: per-model and teacher-student metrics, one column
                per alpha
``sweeps``      sweeps/: each metric against alpha, method x alpha heatmaps, accuracy
                against alignment
``summary``     summary/: layer3 PCA scatter, UMAP, accuracy table
``cache``       figure groups, their digests, and redrawing only what changed
``common``      the grid, value lookup over seeds and drawing helpers

Gaps never crash a figure and stay visible: a missing mean is a missing marker (lines
break), an 'n/a' cell or bar label, or a 'no runs' panel; legends and titles give the
number of runs found against the number expected.
"""

from .cache import FigureOutcome, draw_group, draw_study, figure_files, group_prefix
from .common import Grid, Values
from .sweeps import sweep_metrics

__all__ = ["FigureOutcome", "Grid", "Values", "draw_group", "draw_study", "figure_files",
           "group_prefix", "sweep_metrics"]
