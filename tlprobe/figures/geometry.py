"""Figures of representational geometry (L04-L05): RDMs, RSA across depth, category selectivity.

They plot; they never compute statistics (a null's 95th percentile is a display summary of the
null the result holds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from tlprobe.analyses.geometry import NoiseCeiling, RDMs, RSATest, Selectivity
from tlprobe.errors import TlprobeError
from tlprobe.figures.depth import head_heatmap_figure
from tlprobe.figures.views import index_labels, panels, plotly_text
from tlprobe.result import register_figure

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f")
#: Percentile of a null drawn as its dotted line.
NULL_QUANTILE = 0.95


@register_figure(RDMs)
def rdm_figure(rdms: RDMs, *, title: str | None = None) -> go.Figure:
    """RDM heatmaps, one panel per leading index, conditions ordered by category with its boundaries.

    Args:
        rdms: an :class:`RDMs` with at most one leading axis (e.g. Q, K, the category model).
        title: figure title.

    Raises:
        TlprobeError: more than one leading axis (select one first, ``rdms["L3"]``).
    """
    d = rdms.dissimilarities
    if d.ndim > 3:
        raise TlprobeError(f"rdm_figure draws RDMs with one leading axis at most, got {tuple(d.shape)}; select one")
    d = d.reshape(-1, *d.shape[-2:])
    names = index_labels(rdms, (d.shape[0],)) if d.shape[0] > 1 or rdms.axes else ["RDM"]
    order = sorted(range(len(rdms.conditions)), key=lambda i: (rdms.categories.index(rdms.categories[i]), i))
    words = plotly_text([rdms.conditions[i] for i in order])
    cats = [rdms.categories[i] for i in order]
    idx = torch.tensor(order)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.06)
    bounds = [i - 0.5 for i in range(1, len(cats)) if cats[i] != cats[i - 1]]
    hover = [[f"{a} ({ca}) / {b} ({cb})" for b, cb in zip(words, cats)] for a, ca in zip(words, cats)]
    for c, name in enumerate(names, start=1):
        z = d[c - 1][idx][:, idx]
        fig.add_trace(
            go.Heatmap(
                z=z.tolist(),
                x=list(range(len(order))),
                y=list(range(len(order))),
                text=hover,
                coloraxis="coloraxis",
                hovertemplate="%{text}<br>dissimilarity=%{z:.3f}<extra>" + name + "</extra>",
            ),
            row=1,
            col=c,
        )
        axis = "" if c == 1 else str(c)
        for b in bounds:  # category boundaries: white lines across the panel
            white = {"color": "white", "width": 1}
            fig.add_shape(type="line", x0=b, x1=b, y0=0, y1=1, xref=f"x{axis}", yref=f"y{axis} domain", line=white)
            fig.add_shape(type="line", y0=b, y1=b, x0=0, x1=1, yref=f"y{axis}", xref=f"x{axis} domain", line=white)
        ticks: dict[str, Any] = dict(tickmode="array", tickvals=list(range(len(order))), ticktext=words)
        fig.update_xaxes(ticks, tickfont=dict(size=8), row=1, col=c)
        fig.update_yaxes(ticks, tickfont=dict(size=8), autorange="reversed", row=1, col=c)
    fig.update_layout(
        title=title or "Representational dissimilarity matrices (ordered by category)",
        coloraxis=dict(colorscale="Viridis", colorbar=dict(title=f"dissimilarity<br>({rdms.method})")),
        template="plotly_white",
        height=560,
        width=max(600, 480 * len(names) + 120),
    )
    return fig


def _curve(fig: go.Figure, result: RSATest | Selectivity, name: str, color: str, row: int = 1) -> None:
    value = result.observed if isinstance(result, RSATest) else result.fraction
    null = result.null if isinstance(result, RSATest) else result.null_fraction
    if value.ndim != 1:
        raise TlprobeError(f"{name}: expected one leading axis (depth or layer), got {tuple(value.shape)}; select one")
    x = index_labels(result, (value.shape[0],))
    q = torch.quantile(null.double(), NULL_QUANTILE, dim=-1)
    fig.add_trace(
        go.Scatter(x=x, y=value.tolist(), name=name, mode="lines+markers", line=dict(color=color)), row=row, col=1
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=q.tolist(),
            name=f"{name}: null {NULL_QUANTILE:.0%}",
            mode="lines",
            line=dict(color=color, dash="dot"),
        ),
        row=row,
        col=1,
    )


def rsa_depth_figure(
    tests: RSATest | Mapping[str, RSATest], ceiling: NoiseCeiling | None = None, *, title: str | None = None
) -> go.Figure:
    """RSA across depth: one line per test (with its null's 95th percentile), and a noise-ceiling band.

    Residual-stream tests (axis ``depth``: embeddings, then every block) and per-layer tests (Q, K,
    V: axis ``layer``) share the x axis by block: depth ``L3`` and layer ``L3`` are block 3's output
    and block 3's attention input.

    Args:
        tests: name -> :class:`RSATest` with one leading axis.
        ceiling: a :class:`NoiseCeiling` over the same depth axis, drawn as a band.
        title: figure title.
    """
    fig = make_subplots(rows=1, cols=1)
    if ceiling is not None:
        x = index_labels(ceiling, (ceiling.lower.shape[0],))
        fig.add_trace(go.Scatter(x=x, y=ceiling.upper.tolist(), mode="lines", line=dict(width=0), showlegend=False))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=ceiling.lower.tolist(),
                mode="lines",
                line=dict(width=0),
                fill="tonexty",
                fillcolor="rgba(120,120,120,0.25)",
                name="noise ceiling (resid)",
            )
        )
    method = ""
    for i, (name, t) in enumerate(panels(tests, name="RSA").items()):
        _curve(fig, t, name, _COLORS[i % len(_COLORS)])
        method = t.method
    fig.update_xaxes(title_text="depth / layer", type="category")
    fig.update_yaxes(title_text=f"RSA ({method})")
    fig.update_layout(title=title or "RSA across depth", template="plotly_white", height=480, width=1000)
    return fig


@register_figure(RSATest)
def rsa_test_figure(test: RSATest, **options) -> go.Figure:
    """The main figure of an :class:`RSATest`: its values over its axis against the null (or a head map)."""
    if test.observed.ndim == 2:
        return head_heatmap_figure(
            test, "observed", cols=1, title=options.get("title", f"RSA ({test.method}) per head")
        )
    return rsa_depth_figure(test, **options)


@register_figure(NoiseCeiling)
def noise_ceiling_figure(ceiling: NoiseCeiling, *, title: str | None = None) -> go.Figure:
    """The noise ceiling's lower and upper bounds over its axis."""
    if ceiling.lower.ndim != 1:
        raise TlprobeError(f"expected one leading axis, got {tuple(ceiling.lower.shape)}; select one")
    x = index_labels(ceiling, (ceiling.lower.shape[0],))
    fig = go.Figure()
    for name, v, dash in (("upper bound", ceiling.upper, "dash"), ("lower bound", ceiling.lower, "solid")):
        fig.add_trace(go.Scatter(x=x, y=v.tolist(), name=name, mode="lines+markers", line=dict(dash=dash)))
    fig.update_layout(
        title=title or f"Noise ceiling ({ceiling.method}, {ceiling.n_repetitions} repetitions)",
        template="plotly_white",
        xaxis=dict(type="category"),
        height=420,
        width=900,
    )
    return fig


@register_figure(Selectivity)
def selectivity_figure(results: Selectivity | Mapping[str, Selectivity], *, title: str | None = None) -> go.Figure:
    """Fraction of category-selective features per depth or layer, one line per result, with its null.

    Residual-stream results (axis ``depth``) and per-layer ones (Q, K, V: axis ``layer``) share
    the x axis by block, as in :func:`rsa_depth_figure`.

    Args:
        results: a :class:`Selectivity` with one leading axis, or name -> such results.
        title: figure title.
    """
    fig = make_subplots(rows=1, cols=1)
    alpha = 0.05
    for i, (name, s) in enumerate(panels(results, name="selectivity").items()):
        _curve(fig, s, name, _COLORS[i % len(_COLORS)])
        alpha = s.alpha
    fig.update_xaxes(title_text="depth / layer", type="category")
    fig.update_yaxes(title_text="selective fraction", rangemode="tozero")
    fig.update_layout(
        title=title or f"Category-selective features (corrected p < {alpha:g})",
        template="plotly_white",
        height=460,
        width=1000,
    )
    return fig
