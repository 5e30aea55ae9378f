"""Figures for similarity results (L02/L03). They plot; they never compute statistics."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tlprobe.analyses.similarity import BlockStats

_COLORS = ("#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd", "#ff7f0e")


def block_histogram_figure(
    stats: dict[str, BlockStats], labels: list[str], title: str = "Similarity per Q/K/V block"
) -> go.Figure:
    """Density of similarity values per block: one row per method, one column per block.

    Args:
        stats: method name -> :class:`BlockStats` whose leading dimension indexes ``labels``
            (e.g. target, non-target, shuffled populations).
        labels: names of the leading indices (one line each).
        title: figure title.
    """
    methods = list(stats)
    blocks = stats[methods[0]].blocks
    fig = make_subplots(
        rows=len(methods),
        cols=len(blocks),
        shared_yaxes=False,
        subplot_titles=[f"{m}: {b}" for m in methods for b in blocks],
        horizontal_spacing=0.03,
        vertical_spacing=0.12,
    )
    for r, method in enumerate(methods, start=1):
        st = stats[method]
        x = st.centers.tolist()
        dens = st.density.reshape(len(labels), len(st.blocks), -1)
        for c, _ in enumerate(st.blocks, start=1):
            for i, label in enumerate(labels):
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=dens[i, c - 1].tolist(),
                        mode="lines",
                        name=label,
                        legendgroup=label,
                        showlegend=(r == 1 and c == 1),
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
        height=320 * len(methods),
        width=1500,
        template="plotly_white",
        legend=dict(orientation="h", y=-0.08),
    )
    return fig


def extreme_fraction_figure(stats: dict[str, BlockStats], labels: list[str]) -> go.Figure:
    """Bar chart of the fraction of |similarity| above the threshold, per block, population and method."""
    methods = list(stats)
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True)
    for c, method in enumerate(methods, start=1):
        st = stats[method]
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
                    text=[f"{v:.3f}" for v in ext[i].tolist()],
                    textposition="outside",
                    textfont=dict(size=9),
                ),
                row=1,
                col=c,
            )
    thr = stats[methods[0]].extreme
    fig.update_yaxes(title_text=f"fraction |s| > {thr:g}", row=1, col=1)
    fig.update_layout(
        barmode="group",
        height=380,
        width=1100,
        template="plotly_white",
        title=f"Fraction of extreme similarities (|s| > {thr:g})",
    )
    return fig
