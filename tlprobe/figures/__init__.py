"""Figures: results to plotly figures and circuitsvis views. No statistics are computed here."""

from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.similarity import block_histogram_figure, extreme_fraction_figure
from tlprobe.figures.views import HTML_TOKEN_COMPONENTS, CircuitsVisView, circuitsvis_view

__all__ = [
    "HTML_TOKEN_COMPONENTS",
    "CircuitsVisView",
    "attention_heads_view",
    "block_histogram_figure",
    "circuitsvis_view",
    "extreme_fraction_figure",
]
