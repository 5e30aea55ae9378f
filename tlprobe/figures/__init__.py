"""Figures: one result in, a plotly figure or a circuitsvis view out. No statistics are computed here.

Importing this package registers the main figure of each result type, so ``result.figure()`` works.
Helpers (token escaping, tensor-to-list conversion, panel layout) stay in their modules.
"""

from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.depth import (
    block_summary_curves_figure,
    depth_histogram_figure,
    head_block_figure,
    head_heatmap_figure,
    moment_curves_figure,
)
from tlprobe.figures.dimensionality import dimensionality_depth_figure, spectrum_figure
from tlprobe.figures.geometry import (
    noise_ceiling_figure,
    rdm_figure,
    rsa_depth_figure,
    rsa_test_figure,
    selectivity_figure,
)
from tlprobe.figures.lens import (
    kl_entropy_figure,
    lens_grid_figure,
    recovery_figure,
    target_topk_view,
    target_trajectory_figure,
)
from tlprobe.figures.mi import (
    dependence_examples_figure,
    dependence_sweep_figure,
    mi_heatmap_figure,
    mi_histogram_figure,
    mi_means_figure,
)
from tlprobe.figures.punctuation import (
    cluster_depth_figure,
    cluster_makeup_depth_figure,
    cluster_position_figure,
    punctuation_scatter_figure,
)
from tlprobe.figures.similarity import block_histogram_figure, extreme_fraction_figure
from tlprobe.figures.simulation import estimator_sweep_figure, plugin_bias_figure
from tlprobe.figures.token_pairs import (
    distance_profile_figure,
    token_mi_heatmap_figure,
    tracking_maps_figure,
    tracking_scatter_figure,
)
from tlprobe.figures.views import CircuitsVisView, circuitsvis_view

__all__ = [
    "CircuitsVisView",
    "attention_heads_view",
    "block_histogram_figure",
    "block_summary_curves_figure",
    "circuitsvis_view",
    "cluster_depth_figure",
    "cluster_makeup_depth_figure",
    "cluster_position_figure",
    "dependence_examples_figure",
    "dependence_sweep_figure",
    "depth_histogram_figure",
    "dimensionality_depth_figure",
    "distance_profile_figure",
    "estimator_sweep_figure",
    "extreme_fraction_figure",
    "head_block_figure",
    "head_heatmap_figure",
    "kl_entropy_figure",
    "lens_grid_figure",
    "mi_heatmap_figure",
    "mi_histogram_figure",
    "mi_means_figure",
    "moment_curves_figure",
    "noise_ceiling_figure",
    "plugin_bias_figure",
    "punctuation_scatter_figure",
    "rdm_figure",
    "recovery_figure",
    "rsa_depth_figure",
    "rsa_test_figure",
    "selectivity_figure",
    "spectrum_figure",
    "target_topk_view",
    "target_trajectory_figure",
    "token_mi_heatmap_figure",
    "tracking_maps_figure",
    "tracking_scatter_figure",
]
