"""Figures of L11-L12: MI between tokens against distance and against attention. They plot only.

* :func:`distance_profile_figure` (main figure of :class:`DistanceProfile`): MI per distance bin,
  one line per depth, with the shuffle null's mean and 95th percentile, and the corrected profile;
* :func:`tracking_maps_figure` (main figure of :class:`AttentionTracking`): ``[layer, head]``
  maps of a correlation ("L3H7" hover), through :func:`tlprobe.figures.depth.head_heatmap_figure`;
* :func:`tracking_scatter_figure`: one head's attention against the MI of its (query, key) pairs;
* :func:`token_mi_heatmap_figure`: a token x token MI matrix with the token strings on its axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tlprobe.access.labels import parse_head
from tlprobe.analyses.mi import MIResult
from tlprobe.analyses.token_pairs import AttentionTracking, DistanceProfile
from tlprobe.errors import TlprobeError
from tlprobe.figures.depth import head_heatmap_figure
from tlprobe.figures.views import index_labels
from tlprobe.result import register_figure

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f", "#e377c2", "#17becf")


@register_figure(DistanceProfile)
def distance_profile_figure(
    profile: DistanceProfile, *, title: str = "MI between tokens against their distance"
) -> go.Figure:
    """Mean pair MI per distance bin (log distance axis), one colour per leading index (depth).

    Left: the observed means (solid), the shuffle null's mean (dashed) and its 95th percentile
    (dotted). Right: the corrected profile (observed - null mean) with the null's 95th-percentile
    margin over its mean (dotted). Without a null, only the left panel's solid lines.

    Example:
        >>> import torch
        >>> from tlprobe.analyses.token_pairs import distance_profile
        >>> mi = torch.rand(2, 9, 9, generator=torch.Generator().manual_seed(0))
        >>> p = distance_profile(mi, null=mi.flip(-1).unsqueeze(0).repeat(3, 1, 1, 1), axes={"depth": ("embed", "L0")})
        >>> len(distance_profile_figure(p).data)
        10
    """
    lead = tuple(profile.slope.shape)
    names = index_labels(profile, lead) if lead else [""]
    x = profile.centres.tolist()
    mean = profile.mean.reshape(len(names), -1)
    has_null = profile.null_mean is not None and profile.null_q95 is not None and profile.corrected is not None
    fig = make_subplots(
        rows=1,
        cols=2 if has_null else 1,
        subplot_titles=["observed (solid), null mean (dashed), null 95th pct (dotted)", "observed - null mean"][
            : 2 if has_null else 1
        ],
        horizontal_spacing=0.1,
    )
    for k, name in enumerate(names):
        color = _COLORS[k % len(_COLORS)]
        line = {"color": color}
        fig.add_trace(
            go.Scatter(x=x, y=mean[k].tolist(), mode="lines+markers", name=name, line=line, legendgroup=name), 1, 1
        )
        if has_null:
            assert profile.null_mean is not None and profile.null_q95 is not None and profile.corrected is not None
            nm, q95 = profile.null_mean.reshape(len(names), -1)[k], profile.null_q95.reshape(len(names), -1)[k]
            cor = profile.corrected.reshape(len(names), -1)[k]
            for y, dash in ((nm, "dash"), (q95, "dot")):
                style = {"color": color, "dash": dash}
                fig.add_trace(
                    go.Scatter(x=x, y=y.tolist(), mode="lines", line=style, legendgroup=name, showlegend=False), 1, 1
                )
            fig.add_trace(
                go.Scatter(x=x, y=cor.tolist(), mode="lines+markers", line=line, legendgroup=name, showlegend=False),
                1,
                2,
            )
            margin = {"color": color, "dash": "dot"}
            fig.add_trace(
                go.Scatter(x=x, y=(q95 - nm).tolist(), mode="lines", line=margin, legendgroup=name, showlegend=False),
                1,
                2,
            )
    for c in range(1, 3 if has_null else 2):
        fig.update_xaxes(type="log", title_text="token distance |i - j| (bin mean)", row=1, col=c)
    fig.update_yaxes(title_text="mean MI (nats)", row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", height=460, width=1050 if has_null else 600)
    return fig


@register_figure(AttentionTracking)
def tracking_maps_figure(
    tracking: AttentionTracking,
    *,
    field: Literal["rho_mi", "rho_distance", "partial", "q_value", "rho_mi_distance"] = "rho_mi",
    title: str | None = None,
) -> go.Figure:
    """``[layer, head]`` map of one field of an :class:`AttentionTracking` (hover "L3H7: value").

    Example:
        >>> import torch
        >>> from tlprobe.analyses.token_pairs import attention_tracking
        >>> g = torch.Generator().manual_seed(0)
        >>> t = attention_tracking(torch.rand(2, 3, 30, generator=g), torch.rand(2, 30, generator=g),
        ...                        torch.arange(30.0), n_permutations=9,
        ...                        axes={"layer": ("L0", "L1"), "head": ("H0", "H1", "H2")})
        >>> tracking_maps_figure(t, field="partial").data[0].type
        'heatmap'
    """
    what = {
        "rho_mi": "Spearman of attention with MI",
        "rho_distance": "Spearman of attention with distance",
        "partial": "partial Spearman of attention and MI given distance",
        "q_value": "BH q of attention tracking MI",
        "rho_mi_distance": "Spearman of MI with distance",
    }
    if field not in what:
        raise TlprobeError(f"unknown field {field!r}; choose one of: {', '.join(what)}")
    return head_heatmap_figure(tracking, field, cols=1, title=title or f"{what[field]}, per head")


def tracking_scatter_figure(
    tracking: AttentionTracking,
    head: str | tuple[int, int],
    *,
    title: str | None = None,
    labels: Sequence[str] | None = None,
) -> go.Figure:
    """One head's attention (x) against the MI (y) of every (query, key) pair, coloured by distance.

    Args:
        tracking: a ``[layer, head]`` :class:`AttentionTracking`.
        head: ``"L3H7"`` or ``(3, 7)``.
        title: figure title (default: the head and its correlations).
        labels: one hover label per pair (e.g. ``"coffee@1 -> roasted@6"``).

    Example:
        >>> import torch
        >>> from tlprobe.analyses.token_pairs import attention_tracking
        >>> g = torch.Generator().manual_seed(0)
        >>> t = attention_tracking(torch.rand(2, 3, 30, generator=g), torch.rand(2, 30, generator=g),
        ...                        torch.arange(30.0), n_permutations=9,
        ...                        axes={"layer": ("L0", "L1"), "head": ("H0", "H1", "H2")})
        >>> len(tracking_scatter_figure(t, "L1H2").data[0].x)
        30
    """
    if tracking.rho_mi.ndim != 2:
        raise TlprobeError(f"expected a [layer, head] result, got rho_mi {tuple(tracking.rho_mi.shape)}")
    layer, h = parse_head(head)
    if layer is None:
        raise TlprobeError(f"name the layer of the head: 'L3H7' or (3, 7), got {head!r}")
    one = tracking.head((layer, h))
    name = f"L{layer}H{h}"
    if labels is not None and len(labels) != tracking.n_pairs:
        raise TlprobeError(f"{len(labels)} labels for {tracking.n_pairs} pairs; give one per pair")
    fig = go.Figure(
        go.Scatter(
            x=one.attention.flatten().tolist(),
            y=one.mi.flatten().tolist(),
            mode="markers",
            text=list(labels) if labels is not None else None,
            marker={
                "color": tracking.distance.tolist(),
                "colorscale": "Viridis",
                "size": 6,
                "opacity": 0.7,
                "colorbar": {"title": "distance"},
            },
            hovertemplate="%{text}<br>attention %{x:.3g}<br>MI %{y:.3g} nats<extra></extra>"
            if labels is not None
            else "attention %{x:.3g}<br>MI %{y:.3g} nats<extra></extra>",
        )
    )
    rho, part = float(one.rho_mi.flatten()[0]), float(one.partial.flatten()[0])
    fig.update_layout(
        title=title or f"{name}: attention against MI (Spearman {rho:.2f}, partial given distance {part:.2f})",
        xaxis={"title": "attention from the query to the key", "type": "log"},
        yaxis={"title": "MI between query and key (nats)"},
        template="plotly_white",
        height=480,
        width=720,
    )
    return fig


def token_mi_heatmap_figure(
    result: MIResult,
    tokens: Sequence[str],
    *,
    which: Literal["raw", "corrected", "null_mean"] = "raw",
    title: str = "MI between tokens",
) -> go.Figure:
    """A ``[T, T]`` token-by-token MI matrix with ``"position:token"`` tick labels; diagonal blank.

    Token strings are passed to plotly as data (plotly escapes them in the page).

    Example:
        >>> import torch
        >>> from tlprobe.analyses.mi import miller_madow
        >>> r = miller_madow(torch.rand(50, 3, generator=torch.Generator().manual_seed(0)))
        >>> token_mi_heatmap_figure(r, ["<b>", "a", "b"]).data[0].x[0]
        '0:<b>'
    """
    mat = getattr(result, which, None)
    if mat is None or mat.ndim != 2:
        raise TlprobeError(f"expected one [T, T] {which} matrix: select one depth first, e.g. result['L2']")
    if len(tokens) != mat.shape[-1]:
        raise TlprobeError(f"{len(tokens)} tokens for a {tuple(mat.shape)} matrix; give one per row")
    ticks = [f"{i}:{t}" for i, t in enumerate(tokens)]
    values = mat.double().tolist()
    z = [[None if i == j else v for j, v in enumerate(row)] for i, row in enumerate(values)]  # diagonal blank
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=ticks,
            y=ticks,
            colorscale="Viridis",
            colorbar={"title": "nats"},
            hovertemplate="%{y} / %{x}: %{z:.3g}<extra></extra>",
        )
    )
    fig.update_layout(title=title, template="plotly_white", height=720, width=760, yaxis={"autorange": "reversed"})
    return fig
