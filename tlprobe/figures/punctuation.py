"""Figures for L13 (punctuation clusters). They plot results; they never compute statistics."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tlprobe.analyses.punctuation import ClusterDepth, PanelResult, PunctuationClusters
from tlprobe.result import register_figure

_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "star", "pentagon", "hexagon")
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")
#: Relative position: red before the mark, blue after it, and dark grey (not white: the plot is
#: white) for the mark's next neighbours, so that every point stays visible.
POSITION_COLORSCALE = (
    (0.0, "rgb(178,24,43)"),
    (0.25, "rgb(214,96,77)"),
    (0.5, "rgb(64,64,64)"),
    (0.75, "rgb(67,147,195)"),
    (1.0, "rgb(33,102,172)"),
)
#: Colour of the legend's cluster symbols (the points themselves are coloured by position).
_LEGEND_COLOR = "rgb(90,90,90)"


def _layout(clusters: PunctuationClusters) -> tuple[int, int, list[tuple[int, int]]]:
    """``(rows, cols, cells)``: one cell per panel, no empty one.

    A full grid (every depth with every class) has the depths as rows and the classes as columns;
    otherwise the panels fill rows of at most two, in order.
    """
    depths = list(dict.fromkeys(p.depth for p in clusters.panels))
    classes = list(dict.fromkeys(p.class_name for p in clusters.panels))
    if len(clusters.panels) == len(depths) * len(classes):
        cells = [(depths.index(p.depth) + 1, classes.index(p.class_name) + 1) for p in clusters.panels]
        return len(depths), len(classes), cells
    cols = min(2, len(clusters.panels))
    cells = [(i // cols + 1, i % cols + 1) for i in range(len(clusters.panels))]
    return math.ceil(len(clusters.panels) / cols), cols, cells


def _subplots(clusters: PunctuationClusters, titles: list[str], **kwargs) -> tuple[go.Figure, list[tuple[int, int]]]:
    """A subplot per panel (cells without a panel get no axes) and the cell of each panel."""
    rows, cols, cells = _layout(clusters)
    specs: list[list[dict | None]] = [[None] * cols for _ in range(rows)]
    by_cell = [""] * (rows * cols)
    for (row, col), title in zip(cells, titles):
        specs[row - 1][col - 1] = {}
        by_cell[(row - 1) * cols + col - 1] = title
    # make_subplots takes one title per cell that has axes, in row-major order.
    kept = [by_cell[i] for i in range(rows * cols) if specs[i // cols][i % cols] is not None]
    spacing = kwargs.get("vertical_spacing")
    if spacing is not None and rows > 1 and spacing > 1 / (rows - 1):
        # plotly refuses a spacing over 1 / (rows - 1) (e.g. 0.16 with 7 depths): half of that
        # then; every grid plotly accepted keeps its spacing, so its figures are unchanged.
        kwargs["vertical_spacing"] = 0.5 / (rows - 1)
    return make_subplots(rows=rows, cols=cols, specs=specs, subplot_titles=kept, **kwargs), cells


def _r(v: float, fmt: str = "+.2f") -> str:
    return "n/a" if v != v else format(v, fmt)


def _r_text(p: PanelResult) -> str:
    within = ", ".join(_r(r) for r in p.simpson.within_r.tolist())
    flag = " · <b>Simpson's paradox</b>" if p.simpson.flag else ""
    k = p.clustering.k
    return f"{k} cluster{'s' if k > 1 else ''} · pooled r {_r(p.simpson.pooled_r)} · within {within}{flag}"


@register_figure(PunctuationClusters)
def punctuation_scatter_figure(
    clusters: PunctuationClusters,
    *,
    title: str = "Covariance vs MI between a punctuation token and its neighbours",
) -> go.Figure:
    """Covariance (x) vs MI (y), one panel per layer (rows) and class (columns).

    Points are coloured by relative position in the window (:data:`POSITION_COLORSCALE`: red
    before the mark, blue after, dark grey next to it, so no point is white on the white plot);
    the marker shape is the cluster (the legend shows the shapes); a black cross marks each
    cluster's mean, with a boxed label giving its r; the panel title gives the number of clusters, the pooled r and the r within
    each cluster, and the Simpson flag. Only panels that exist get axes (no empty panel).

    Args:
        clusters: :class:`~tlprobe.analyses.punctuation.PunctuationClusters` from ``cluster_panels``.
        title: figure title.
    """
    span = max(max(int(p.rel.abs().max()) for p in clusters.panels), 1)
    titles = [f"<b>{p.name}</b><br><span style='font-size:12px'>{_r_text(p)}</span>" for p in clusters.panels]
    fig, cells = _subplots(clusters, titles, horizontal_spacing=0.09, vertical_spacing=0.16)
    k_max = max(p.clustering.k for p in clusters.panels)
    for p, (row, col) in zip(clusters.panels, cells):
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
                    # Numeric colours draw no legend symbol (plotly.js warns): the legend has its own.
                    showlegend=False,
                    marker=dict(
                        size=5,
                        opacity=0.7,
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
            mean = (float(p.mean_covariance[j]), float(p.mean_mi[j]))
            fig.add_trace(
                go.Scatter(
                    x=[mean[0]],
                    y=[mean[1]],
                    mode="markers",
                    showlegend=False,
                    marker=dict(symbol="x", size=12, color="black", line=dict(width=1, color="white")),
                    hovertemplate=f"cluster {j} mean ({int(p.simpson.sizes[j])} points)<extra></extra>",
                ),
                row=row,
                col=col,
            )
            # A boxed label off the mean: on the dense points plain text is unreadable.
            fig.add_annotation(
                x=mean[0],
                y=mean[1],
                text=f"cluster {j}: r = {_r(float(p.simpson.within_r[j]))}",
                showarrow=True,
                arrowhead=0,
                arrowcolor="black",
                ax=40,
                ay=-30 - 26 * j,  # stacked: the means of neighbouring clusters can be close
                bgcolor="rgba(255,255,255,0.9)",
                bordercolor="black",
                borderwidth=1,
                font=dict(size=12, color="black"),
                row=row,
                col=col,
            )
        fig.update_xaxes(title_text="covariance", row=row, col=col)
        fig.update_yaxes(title_text="MI (nats)", row=row, col=col)
    for j in range(k_max):  # the legend: one symbol per cluster, in one plain colour
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=f"cluster {j}",
                legendgroup=f"cluster {j}",
                marker=dict(size=10, symbol=_SYMBOLS[j % len(_SYMBOLS)], color=_LEGEND_COLOR),
                hoverinfo="skip",
            ),
            row=cells[0][0],
            col=cells[0][1],
        )
    rows, cols, _ = _layout(clusters)
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=450 * rows + 60,
        width=560 * cols + 140,
        coloraxis=dict(
            colorscale=[list(c) for c in POSITION_COLORSCALE],
            cmin=-span,
            cmax=span,
            colorbar=dict(title=dict(text="relative<br>position"), len=0.8),
        ),
        legend=dict(orientation="h", y=-0.08, x=0, font=dict(size=13), title=dict(text="shape:")),
        font=dict(size=13),
        margin=dict(t=130, b=90),
    )
    return fig


def cluster_position_figure(clusters: PunctuationClusters) -> go.Figure:
    """How many points of each cluster sit at each relative position (stacked bars per panel).

    Args:
        clusters: :class:`~tlprobe.analyses.punctuation.PunctuationClusters` from ``cluster_panels``.
    """
    fig, cells = _subplots(clusters, [p.name for p in clusters.panels], vertical_spacing=0.2)
    shown: set[int] = set()
    for p, (row, col) in zip(clusters.panels, cells):
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
    rows, cols, _ = _layout(clusters)
    fig.update_layout(
        barmode="stack",
        template="plotly_white",
        height=330 * rows + 40,
        width=520 * cols + 100,
        title="Cluster membership by relative position",
    )
    return fig


# --------------------------------------------------------------------------- clusters across depth (L14)
def _class_color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


@register_figure(ClusterDepth)
def cluster_depth_figure(
    summary: ClusterDepth, *, title: str = "Clusters of (covariance, MI) points at every depth"
) -> go.Figure:
    """Number of clusters (left) and best silhouette (right) per depth, one line per class.

    The silhouette panel marks the silhouette a split needs (``summary.min_silhouette``, dashed).

    Args:
        summary: :class:`~tlprobe.analyses.punctuation.ClusterDepth` (``cluster_depth``).
        title: figure title.
    """
    x = list(summary.depth_labels)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["clusters (k)", "best silhouette (k >= 2)"])
    for i, name in enumerate(summary.classes):
        style = dict(color=_class_color(i))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=summary.k[i].tolist(),
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line=style,
                hovertemplate=f"{name}<br>%{{x}}: k = %{{y}}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        sil = [None if v != v else v for v in summary.silhouette[i].tolist()]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=sil,
                mode="lines+markers",
                name=name,
                legendgroup=name,
                showlegend=False,
                line=style,
                hovertemplate=f"{name}<br>%{{x}}: silhouette %{{y:.3f}}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    # A line across the silhouette panel only (x2/y2): add_hline's row/col are typed as strings.
    level = summary.min_silhouette
    fig.add_shape(
        type="line", xref="x2 domain", x0=0, x1=1, yref="y2", y0=level, y1=level, line=dict(dash="dash", color="grey")
    )
    fig.add_annotation(
        xref="x2 domain", x=1, yref="y2", y=level, text=f"split needs {level:g}", showarrow=False, yanchor="bottom"
    )
    fig.update_xaxes(title_text="depth (residual stream)", type="category")
    fig.update_yaxes(title_text="clusters", dtick=1, rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="silhouette", row=1, col=2)
    fig.update_layout(title=title, template="plotly_white", height=420, width=1040, font=dict(size=13))
    return fig


def cluster_makeup_depth_figure(
    summary: ClusterDepth, *, title: str = "What separates the clusters, per depth: main vs minor clusters"
) -> go.Figure:
    """Per class (columns): the fraction of punctuation and of the mark's own token (top) and the
    median distance from the mark (bottom) in the main cluster (dashed) and the pooled minor
    clusters (solid), per depth; gaps where a panel has one cluster.

    Args:
        summary: :class:`~tlprobe.analyses.punctuation.ClusterDepth` (``cluster_depth``).
        title: figure title.
    """
    x = list(summary.depth_labels)
    classes = summary.classes
    titles = [f"{c}: fractions" for c in classes] + [f"{c}: median |distance|" for c in classes]
    fig = make_subplots(rows=2, cols=len(classes), subplot_titles=titles, vertical_spacing=0.16)
    series = (
        ("punctuation", "frac_punctuation", 1, _COLORS[0]),
        ("own token", "frac_same_token", 1, _COLORS[1]),
        ("median |distance|", "median_distance", 2, _COLORS[2]),
    )
    for ci, name in enumerate(classes):
        for label, field, row, color in series:
            for part, dash in (("minor", "solid"), ("main", "dash")):
                values = getattr(summary, f"{part}_{field}")[ci].tolist()
                trace = f"{part}: {label}"
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=[None if v != v else v for v in values],
                        mode="lines+markers",
                        name=trace,
                        legendgroup=trace,
                        showlegend=ci == 0,
                        line=dict(color=color, dash=dash),
                        hovertemplate=f"{name}, {trace}<br>%{{x}}: %{{y:.3g}}<extra></extra>",
                    ),
                    row=row,
                    col=ci + 1,
                )
        fig.update_yaxes(title_text="fraction of points", range=[0, 1.05], row=1, col=ci + 1)
        fig.update_yaxes(title_text="tokens from the mark", rangemode="tozero", row=2, col=ci + 1)
    fig.update_xaxes(title_text="depth (residual stream)", type="category")
    fig.update_layout(
        title=title, template="plotly_white", height=760, width=520 * len(classes) + 200, font=dict(size=13)
    )
    return fig
