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


def fraction_label(value: float) -> str:
    """A short bar label for a fraction: ``0.47`` -> ``'47%'``, ``0.0032`` -> ``'0.32%'``,
    ``2.1e-05`` -> ``'2.1e-5'``, 0 -> ``'0'``, NaN (undefined) -> ``''``.

    Example:
        >>> [fraction_label(v) for v in (0.4712, 0.0032, 2.07e-05, 0.0, float("nan"))]
        ['47%', '0.32%', '2.1e-5', '0', '']
    """
    if math.isnan(value):
        return ""
    if value == 0:
        return "0"
    if abs(value) >= 0.1:
        return f"{100 * value:.0f}%"
    if abs(value) >= 1e-3:
        return f"{100 * value:.2g}%"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def extreme_fraction_figure(stats: BlockStats | Mapping[str, BlockStats]) -> go.Figure:
    """Bars of the fraction of |similarity| above the threshold, per block and leading index; one panel per result.

    Each panel has its own y scale (correlation's fractions can be thousands of times smaller than
    cosine's); labels are short and vertical, so neighbouring bars' labels never overlap; a panel
    whose values are all 0 (or undefined) says so in its middle instead of showing empty axes.
    """
    cols = panels(stats, name=stats.method if isinstance(stats, BlockStats) else "")
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=list(cols), horizontal_spacing=0.08)
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
                    text=[fraction_label(v) for v in ext[i].tolist()],  # NaN: undefined item, no label
                    textposition="outside",
                    textangle=-90,
                    cliponaxis=False,
                    textfont=dict(size=10),
                    hovertemplate=f"{label}<br>%{{x}}: %{{y:.3g}}<extra></extra>",
                ),
                row=1,
                col=c,
            )
        values = [v for v in ext.flatten().tolist() if not math.isnan(v)]
        if not values or max(values) == 0:
            suffix = "" if c == 1 else str(c)
            fig.add_annotation(
                text="all values undefined" if not values else "all values 0",
                xref=f"x{suffix} domain",
                yref=f"y{suffix} domain",
                x=0.5,
                y=0.5,
                showarrow=False,
                font=dict(size=14, color="#555555"),
            )
            fig.update_yaxes(range=[0, 1], row=1, col=c)
        else:  # room above the tallest bar for its vertical label
            fig.update_yaxes(range=[0, 1.3 * max(values)], row=1, col=c)
    thr = next(iter(cols.values())).extreme
    fig.update_yaxes(title_text=f"fraction |s| > {thr:g}", row=1, col=1)
    fig.update_yaxes(tickformat=".2~g")  # 0.00004, not plotly's SI "40μ"
    fig.update_layout(
        uniformtext=dict(minsize=9, mode="show"),  # every label legible, none shrunk to fit its bar
        barmode="group",
        height=420,
        width=1100,
        template="plotly_white",
        title=f"Fraction of extreme similarities (|s| > {thr:g})",
        legend=dict(orientation="h", y=-0.15),
    )
    return fig
