"""Report: figures, tables and text assembled into one self-contained HTML file."""

from tlprobe.report.html import Report, circuitsvis_js, plotly_js, write_results

__all__ = ["Report", "circuitsvis_js", "plotly_js", "write_results"]
