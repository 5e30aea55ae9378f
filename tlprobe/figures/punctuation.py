"""Figures for L13 (punctuation clusters). They plot results; they never compute statistics."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tlprobe.analyses.punctuation import PanelResult, PunctuationClusters
from tlprobe.result import register_figure

_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "star", "pentagon", "hexagon")
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def _grid(clusters: PunctuationClusters) -> tuple[list[int], list[str]]:
    """The layers (rows) and classes (columns) of the panel grid, in the order of the panels."""
    depths = list(dict.fromkeys(p.depth for p in clusters.panels))
    classes = list(dict.fromkeys(p.class_name for p in clusters.panels))
    return depths, classes


def _r(v: float, fmt: str = "+.2f") -> str:
    return "n/a" if v != v else format(v, fmt)


def _r_text(p: PanelResult) -> str:
    within = ", ".join(_r(r) for r in p.simpson.within_r.tolist())
    flag = " <b>Simpson's paradox</b>" if p.simpson.flag else ""
    return f"k={p.clustering.k}, r all={p.simpson.pooled_r:+.2f}, r within=[{within}]{flag}"


@register_figure(PunctuationClusters)
def punctuation_scatter_figure(
    clusters: PunctuationClusters,
    *,
    title: str = "Covariance vs MI between a punctuation token and its neighbours",
) -> go.Figure:
    """Covariance (x) vs MI (y), one panel per layer (rows) and class (columns).

    Points are coloured by relative position in the window (negative = before the mark); the
    marker shape is the cluster; a black cross marks each cluster's mean; the panel title gives
    the number of clusters, the pooled r and the r within each cluster, and the Simpson flag.

    Args:
        clusters: :class:`~tlprobe.analyses.punctuation.PunctuationClusters` from ``cluster_panels``.
        title: figure title.
    """
    depths, classes = _grid(clusters)
    # Diverging colours centred on the mark: red before it, blue after it.
    span = max(int(p.rel.abs().max()) for p in clusters.panels)
    by_key = {(p.depth, p.class_name): p for p in clusters.panels}
    titles = []
    for d in depths:
        for c in classes:
            p = by_key.get((d, c))
            titles.append(f"{p.name}<br><span style='font-size:11px'>{_r_text(p)}</span>" if p else "")
    fig = make_subplots(
        rows=len(depths), cols=len(classes), subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.16
    )
    shown: set[int] = set()
    for (d, c), p in by_key.items():
        row, col = depths.index(d) + 1, classes.index(c) + 1
        lab = p.clustering.labels
        for j in range(p.clustering.k):
            sel = lab == j
            name = f"cluster {j}"
            fig.add_trace(
                go.Scatter(
                    x=p.covariance[sel].tolist(),
                    y=p.mi[sel].tolist(),
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=j not in shown,
                    marker=dict(
                        size=4,
                        opacity=0.6,
                        symbol=_SYMBOLS[j % len(_SYMBOLS)],
                        color=p.rel[sel].tolist(),
                        coloraxis="coloraxis",
                    ),
                    customdata=p.rel[sel].tolist(),
                    hovertemplate=f"{name}<br>cov=%{{x:.4f}}<br>MI=%{{y:.4f}}<br>rel pos=%{{customdata}}<extra></extra>",
                ),
                row=row,
                col=col,
            )
            shown.add(j)
            fig.add_trace(
                go.Scatter(
                    x=[float(p.mean_covariance[j])],
                    y=[float(p.mean_mi[j])],
                    mode="markers+text",
                    text=[f"{j}: r={_r(float(p.simpson.within_r[j]))}"],
                    textposition="top right",
                    showlegend=False,
                    marker=dict(symbol="x", size=12, color="black", line=dict(width=1, color="white")),
                    hovertemplate=f"cluster {j} mean ({int(p.simpson.sizes[j])} points)<extra></extra>",
                ),
                row=row,
                col=col,
            )
        fig.update_xaxes(title_text="covariance", row=row, col=col)
        fig.update_yaxes(title_text="MI (nats)", row=row, col=col)
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=430 * len(depths),
        width=560 * len(classes) + 120,
        coloraxis=dict(colorscale="RdBu", cmin=-span, cmax=span, colorbar=dict(title="relative<br>position")),
        legend=dict(orientation="h", y=-0.06),
        margin=dict(t=120),
    )
    return fig


def cluster_position_figure(clusters: PunctuationClusters) -> go.Figure:
    """How many points of each cluster sit at each relative position (stacked bars per panel).

    Args:
        clusters: :class:`~tlprobe.analyses.punctuation.PunctuationClusters` from ``cluster_panels``.
    """
    depths, classes = _grid(clusters)
    titles = [f"depth {d}, {c}" for d in depths for c in classes]
    fig = make_subplots(rows=len(depths), cols=len(classes), subplot_titles=titles, vertical_spacing=0.2)
    shown: set[int] = set()
    for p in clusters.panels:
        row, col = depths.index(p.depth) + 1, classes.index(p.class_name) + 1
        for j in range(p.clustering.k):
            name = f"cluster {j}"
            fig.add_trace(
                go.Bar(
                    x=p.positions.tolist(),
                    y=p.rel_counts[j].tolist(),
                    name=name,
                    legendgroup=name,
                    showlegend=j not in shown,
                    marker_color=_COLORS[j % len(_COLORS)],
                ),
                row=row,
                col=col,
            )
            shown.add(j)
        fig.update_xaxes(title_text="relative position", row=row, col=col)
        fig.update_yaxes(title_text="points", row=row, col=col)
    fig.update_layout(
        barmode="stack",
        template="plotly_white",
        height=330 * len(depths),
        width=520 * len(classes) + 100,
        title="Cluster membership by relative position",
    )
    return fig
