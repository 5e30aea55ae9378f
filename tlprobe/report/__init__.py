"""Report: figures, tables and text assembled into one self-contained HTML file."""

from tlprobe.report.html import Report, read_figures
from tlprobe.report.png import export_png

__all__ = ["Report", "export_png", "read_figures"]
