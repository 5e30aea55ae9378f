"""Figures: results to plotly figures and circuitsvis views. No statistics are computed here."""

from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.lens import (
    kl_entropy_figure,
    lens_grid_figure,
    recovery_figure,
    target_topk_view,
    target_trajectory_figure,
)
from tlprobe.figures.similarity import block_histogram_figure, extreme_fraction_figure
from tlprobe.figures.views import (
    HTML_TOKEN_COMPONENTS,
    CircuitsVisView,
    circuitsvis_view,
    defuse_html,
    plotly_text,
)

__all__ = [
    "HTML_TOKEN_COMPONENTS",
    "CircuitsVisView",
    "attention_heads_view",
    "block_histogram_figure",
    "circuitsvis_view",
    "defuse_html",
    "extreme_fraction_figure",
    "kl_entropy_figure",
    "lens_grid_figure",
    "plotly_text",
    "recovery_figure",
    "target_topk_view",
    "target_trajectory_figure",
]
