"""Figures: results to plotly figures and circuitsvis views. No statistics are computed here."""

from tlprobe.figures.attention import (
    attention_heads_view,
)
from tlprobe.figures.depth import (
    block_summary_curves_figure,
    depth_histogram_figure,
    head_block_figure,
    head_heatmap_figure,
    moment_curves_figure,
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
    cluster_position_figure,
    punctuation_scatter_figure,
)
from tlprobe.figures.similarity import (
    block_histogram_figure,
    extreme_fraction_figure,
)
from tlprobe.figures.views import (
    CANVAS_TOKEN_COMPONENTS,
    COMPONENTS,
    HTML_TOKEN_COMPONENTS,
    TOKEN_PROPS,
    CircuitsVisView,
    circuitsvis_view,
    defuse_html,
    plotly_text,
    to_lists,
)

__all__ = [
    "attention_heads_view",
    "block_histogram_figure",
    "block_summary_curves_figure",
    "CANVAS_TOKEN_COMPONENTS",
    "circuitsvis_view",
    "CircuitsVisView",
    "cluster_position_figure",
    "COMPONENTS",
    "defuse_html",
    "dependence_examples_figure",
    "dependence_sweep_figure",
    "depth_histogram_figure",
    "extreme_fraction_figure",
    "head_block_figure",
    "head_heatmap_figure",
    "HTML_TOKEN_COMPONENTS",
    "kl_entropy_figure",
    "lens_grid_figure",
    "mi_heatmap_figure",
    "mi_histogram_figure",
    "mi_means_figure",
    "moment_curves_figure",
    "plotly_text",
    "punctuation_scatter_figure",
    "recovery_figure",
    "target_topk_view",
    "target_trajectory_figure",
    "to_lists",
    "TOKEN_PROPS",
]
