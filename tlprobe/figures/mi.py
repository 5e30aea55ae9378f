"""Figures for mutual-information results (L09/L10). They plot; they never compute statistics.

Histograms come from :func:`tlprobe.analyses.mi.mi_histograms`, dependence measures from
:func:`tlprobe.analyses.mi.dependence`.
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from tlprobe.analyses.mi import Dependence, MIHistograms
from tlprobe.errors import TlprobeError

_COLORS = ("#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd", "#ff7f0e")


def _series_colors(n: int, highlight: int | None) -> list[str]:
    if highlight is None:
        return [_COLORS[i % len(_COLORS)] for i in range(n)]
    others = [i for i in range(n) if i != highlight]
    scale = sample_colorscale("Viridis", [j / max(1, len(others) - 1) for j in range(len(others))])
    colors = [""] * n
    for c, i in zip(scale, others):
        colors[i] = c
    colors[highlight] = "#d62728"
    return colors


def mi_histogram_figure(
    hist: MIHistograms,
    title: str = "Distribution of pairwise MI",
    highlight: int | None = None,
    density: bool = True,
) -> go.Figure:
    """Overlaid histograms (as lines), one per series of ``hist``.

    Args:
        hist: from :func:`tlprobe.analyses.mi.mi_histograms`.
        title: figure title.
        highlight: index of a series drawn thick in red (e.g. 0 for the embedding layer), the
            others on a Viridis scale in order (layers); ``None``: categorical colours (e.g. raw,
            shuffle null, corrected).
        density: plot probability density (default) or the fraction of pairs per bin.

    Example:
        >>> from tlprobe.analyses.mi import mi_histograms
        >>> m = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
        >>> len(mi_histogram_figure(mi_histograms(m, bins=4), highlight=0).data)
        3
    """
    n = len(hist.names)
    if highlight is not None and not 0 <= highlight < n:
        raise TlprobeError(f"highlight {highlight} is out of range for {n} series")
    colors = _series_colors(n, highlight)
    y = hist.density if density else hist.prob
    x = hist.centers.tolist()
    fig = go.Figure()
    for i, name in enumerate(hist.names):
        thick = highlight is not None and i == highlight
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y[i].tolist(),
                mode="lines",
                name=name,
                line=dict(color=colors[i], width=3.5 if thick else 1.6),
                hovertemplate=f"{name}<br>{hist.quantity}=%{{x:.3f}}<br>%{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=420,
        width=900,
        xaxis_title=hist.quantity,
        yaxis_title="density" if density else "fraction of pairs",
    )
    return fig


def mi_means_figure(
    hists: dict[str, MIHistograms], title: str = "Mean pairwise MI per layer", statistic: str = "mean"
) -> go.Figure:
    """One line per entry of ``hists`` (e.g. raw, shuffle null, corrected) across its series (layers).

    Args:
        hists: label -> :class:`~tlprobe.analyses.mi.MIHistograms` with the same series names.
        title: figure title.
        statistic: ``"mean"`` (error bars: the standard deviation of the pairs' values, their
            spread, not the uncertainty of the mean) or ``"median"``.

    Example:
        >>> from tlprobe.analyses.mi import mi_histograms
        >>> m = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
        >>> len(mi_means_figure({"raw": mi_histograms(m), "null": mi_histograms(m / 2)}).data)
        2
    """
    if statistic not in ("mean", "median"):
        raise TlprobeError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    fig = go.Figure()
    for i, (label, h) in enumerate(hists.items()):
        err = dict(type="data", array=h.std.tolist(), visible=True, thickness=1) if statistic == "mean" else None
        fig.add_trace(
            go.Scatter(
                x=list(h.names),
                y=getattr(h, statistic).tolist(),
                mode="lines+markers",
                name=label,
                error_y=err,
                line=dict(color=_COLORS[i % len(_COLORS)]),
            )
        )
    q = next(iter(hists.values())).quantity if hists else "MI (nats)"
    fig.update_layout(
        title=title, template="plotly_white", height=400, width=900, yaxis_title=f"{statistic} {q} over pairs"
    )
    return fig


def mi_heatmap_figure(mat: torch.Tensor, title: str = "Pairwise MI", max_size: int = 400) -> go.Figure:
    """Heatmap of one ``[V, V]`` matrix (the top-left ``max_size`` block if larger).

    Example:
        >>> len(mi_heatmap_figure(torch.eye(3)).data)
        1
    """
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise TlprobeError(f"mi_heatmap_figure takes one [V, V] matrix, got shape {tuple(mat.shape)}")
    m = mat[:max_size, :max_size].double().cpu()
    fig = go.Figure(go.Heatmap(z=m.tolist(), colorscale="Viridis", colorbar=dict(title="nats")))
    shown = "" if mat.shape[0] <= max_size else f" (first {max_size} of {mat.shape[0]})"
    fig.update_layout(
        title=title + shown,
        template="plotly_white",
        height=560,
        width=620,
        yaxis=dict(autorange="reversed", scaleanchor="x"),
    )
    return fig


def dependence_sweep_figure(
    dep: Dependence,
    x: torch.Tensor,
    x_label: str = "true correlation",
    title: str = "Covariance vs mutual information",
) -> go.Figure:
    """L10: covariance (a line), MI (a U) and squared covariance (a U) against a sweep parameter.

    Args:
        dep: :class:`~tlprobe.analyses.mi.Dependence` with one value per sweep point.
        x: ``[points]`` the sweep values (e.g. the simulated correlations).
        x_label: axis label of ``x``.
        title: figure title.

    Example:
        >>> from tlprobe.analyses.mi import dependence
        >>> g = torch.Generator().manual_seed(0)
        >>> a = torch.randn(3, 200, generator=g, dtype=torch.float64)
        >>> d = dependence(a, a * torch.tensor([[-1.0], [0.0], [1.0]]) + torch.randn(3, 200, generator=g, dtype=torch.float64), n_shuffles=5)
        >>> len(dependence_sweep_figure(d, torch.tensor([-1.0, 0.0, 1.0])).data)
        6
    """
    xs = torch.as_tensor(x).flatten().tolist()
    if len(xs) != dep.covariance.numel():
        raise TlprobeError(f"{len(xs)} sweep values for {dep.covariance.numel()} pairs")
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("covariance (signed, linear)", "mutual information (unsigned)", "squared covariance"),
    )
    line = lambda name, y, color, dash=None, col=1, show=True: fig.add_trace(  # noqa: E731
        go.Scatter(
            x=xs,
            y=y.flatten().tolist(),
            name=name,
            mode="lines+markers",
            showlegend=show,
            line=dict(color=color, dash=dash),
        ),
        row=1,
        col=col,
    )
    line("covariance", dep.covariance, _COLORS[0], col=1)
    line("MI raw", dep.mi_raw, _COLORS[1], col=2)
    line("MI - shuffle null", dep.mi_corrected, _COLORS[3], col=2)
    line("shuffle null mean", dep.mi_null_mean, _COLORS[2], dash="dot", col=2)
    line("GCMI", dep.gcmi, _COLORS[4], dash="dash", col=2)
    line("covariance squared", dep.covariance**2, _COLORS[5], col=3)
    for c in (1, 2, 3):
        fig.update_xaxes(title_text=x_label, row=1, col=c)
    fig.update_yaxes(title_text="nats", row=1, col=2)
    fig.update_layout(
        title=f"{title} ({dep.n_samples} samples, {dep.bins} bins, {dep.n_shuffles} shuffles)",
        template="plotly_white",
        height=420,
        width=1350,
    )
    return fig


def dependence_examples_figure(
    x: torch.Tensor,
    y: torch.Tensor,
    dep: Dependence,
    names: list[str],
    title: str = "Non-linear dependence: covariance near 0, MI clearly positive",
) -> go.Figure:
    """Scatter of each simulated pair ``(x[i], y[i])`` with its covariance and MI in the title.

    Args:
        x, y: ``[examples, samples]`` the simulated data.
        dep: :class:`~tlprobe.analyses.mi.Dependence` of the same pairs (``[examples]``).
        names: one per example, e.g. ``["y = x^2", "y = cos(x) + noise"]``.
        title: figure title.

    Example:
        >>> from tlprobe.analyses.mi import dependence
        >>> a = torch.linspace(-1, 1, 50, dtype=torch.float64)[None]
        >>> len(dependence_examples_figure(a, a**2, dependence(a, a**2, n_shuffles=2), ["x^2"]).data)
        1
    """
    if x.shape != y.shape or x.ndim != 2 or len(names) != x.shape[0]:
        raise TlprobeError(
            f"x, y must be [examples, samples] with one name per example; got {tuple(x.shape)}, "
            f"{tuple(y.shape)}, {len(names)} names"
        )
    cov, mi_c, null95, mi_r = (
        t.flatten().tolist() for t in (dep.covariance, dep.mi_corrected, dep.mi_null_q95, dep.mi_raw)
    )
    titles = [
        f"{nm}<br>cov={cov[i]:.3f}, MI raw={mi_r[i]:.3f}, MI-null={mi_c[i]:.3f} (null 95%: {null95[i]:.3f})"
        for i, nm in enumerate(names)
    ]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles)
    for i in range(len(names)):
        fig.add_trace(
            go.Scattergl(
                x=x[i].tolist(),
                y=y[i].tolist(),
                mode="markers",
                name=names[i],
                marker=dict(size=4, opacity=0.6, color=_COLORS[i % len(_COLORS)]),
                showlegend=False,
            ),
            row=1,
            col=i + 1,
        )
        fig.update_xaxes(title_text="x", row=1, col=i + 1)
        fig.update_yaxes(title_text="y", row=1, col=i + 1)
    fig.update_layout(title=title, template="plotly_white", height=430, width=520 * len(names))
    fig.update_annotations(font_size=12)
    return fig
