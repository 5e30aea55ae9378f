"""Figures of Q/K/V block statistics (L02). They plot; they never compute statistics.

Each figure takes one :class:`~tlprobe.analyses.similarity.BlockStats` or a mapping of panel
name -> result (e.g. ``{"cosine": ..., "correlation": ...}`` for side-by-side panels) and reads
every label from the results' axes. An undefined item (NaN, see ``undefined`` of
:func:`~tlprobe.analyses.similarity.qkv_block_similarity`) is drawn as nothing: plotly writes NaN
as null, a gap in a line, a missing bar, a blank heatmap cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tlprobe.analyses.similarity import BlockStats
from tlprobe.figures.views import index_labels, panels
from tlprobe.result import register_figure

_COLORS = ("#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd", "#ff7f0e")


@register_figure(BlockStats)
def block_histogram_figure(
    stats: BlockStats | Mapping[str, BlockStats], *, title: str = "Similarity per Q/K/V block"
) -> go.Figure:
    """Density of similarity values per block: one row per result, one column per block.

    Args:
        stats: a :class:`BlockStats`, or method -> :class:`BlockStats` (one row each); one line per
            leading index (e.g. target, non-target, shuffled populations), named by its labels.
        title: figure title.
    """
    rows = panels(stats, name=stats.method if isinstance(stats, BlockStats) else "")
    blocks = next(iter(rows.values())).blocks
    fig = make_subplots(
        rows=len(rows),
        cols=len(blocks),
        shared_yaxes=False,
        subplot_titles=[f"{m}: {b}" for m in rows for b in blocks],
        horizontal_spacing=0.03,
        vertical_spacing=0.12,
    )
    for r, st in enumerate(rows.values(), start=1):
        x = st.centers.tolist()
        labels = index_labels(st, tuple(st.prob.shape[:-2]))
        dens = st.density.reshape(len(labels), len(st.blocks), -1)
        for c in range(1, len(st.blocks) + 1):
            for i, label in enumerate(labels):
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=dens[i, c - 1].tolist(),
                        mode="lines",
                        name=label,
                        legendgroup=label,
                        showlegend=(r == 1 and c == 1 and len(labels) > 1),  # one curve: nothing to tell apart
                        line=dict(color=_COLORS[i % len(_COLORS)], width=1.5),
                        hovertemplate=f"{label}<br>s=%{{x:.2f}}<br>density=%{{y:.3f}}<extra></extra>",
                    ),
                    row=r,
                    col=c,
                )
        fig.update_yaxes(title_text="density", row=r, col=1)
    fig.update_xaxes(range=[-1, 1])
    fig.update_layout(
        title=title,
        height=320 * len(rows),
        width=1500,
        template="plotly_white",
        legend=dict(orientation="h", y=-0.08),
    )
    return fig


def extreme_fraction_figure(stats: BlockStats | Mapping[str, BlockStats]) -> go.Figure:
    """Bars of the fraction of |similarity| above the threshold, per block and leading index; one panel per result."""
    cols = panels(stats, name=stats.method if isinstance(stats, BlockStats) else "")
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=list(cols), shared_yaxes=True)
    for c, st in enumerate(cols.values(), start=1):
        labels = index_labels(st, tuple(st.frac_extreme.shape[:-1]))
        ext = st.frac_extreme.reshape(len(labels), len(st.blocks))
        for i, label in enumerate(labels):
            fig.add_trace(
                go.Bar(
                    x=list(st.blocks),
                    y=ext[i].tolist(),
                    name=label,
                    legendgroup=label,
                    showlegend=c == 1,
                    marker_color=_COLORS[i % len(_COLORS)],
                    text=["" if math.isnan(v) else f"{v:.3f}" for v in ext[i].tolist()],  # NaN: undefined item
                    textposition="outside",
                    textfont=dict(size=9),
                ),
                row=1,
                col=c,
            )
    thr = next(iter(cols.values())).extreme
    fig.update_yaxes(title_text=f"fraction |s| > {thr:g}", row=1, col=1)
    fig.update_layout(
        barmode="group",
        height=380,
        width=1100,
        template="plotly_white",
        title=f"Fraction of extreme similarities (|s| > {thr:g})",
    )
    return fig
