"""Report: figures, tables and text assembled into one self-contained HTML file."""

from tlprobe.report.html import Report, circuitsvis_js, human_size, plotly_js, read_figures, write_results
from tlprobe.report.png import export_png

__all__ = ["Report", "circuitsvis_js", "export_png", "human_size", "plotly_js", "read_figures", "write_results"]
