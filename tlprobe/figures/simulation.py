"""Figures of the L08 simulation: MI estimators against the known Gaussian truth.

No statistics are computed here beyond the means and percentiles of :class:`EstimatorSweep`.
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from tlprobe.analyses.simulation import ESTIMATORS, EstimatorSweep
from tlprobe.checks import check_index
from tlprobe.result import register_figure

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
_FILLS = ("rgba(31,119,180,0.15)", "rgba(255,127,14,0.15)", "rgba(44,160,44,0.15)", "rgba(148,103,189,0.15)")


def _rho_index(sweep: EstimatorSweep, rho_index: int | None, *, largest: bool) -> int:
    if rho_index is not None:
        return check_index(rho_index, len(sweep.rho), "rho index")
    r = torch.tensor(sweep.rho, dtype=torch.float64).abs()
    return int(r.argmax() if largest else r.argmin())


@register_figure(EstimatorSweep)
def estimator_sweep_figure(
    sweep: EstimatorSweep,
    *,
    rho_index: int | None = None,
    title: str = "MI estimators vs the Gaussian truth",
) -> go.Figure:
    """Mean estimate vs sample size (log x), one panel per bins, one trace per estimator.

    Each trace's band is the 2.5-97.5 % percentile interval over seeds; the truth
    ``-0.5 log(1 - rho**2)`` is a dashed line.

    Args:
        sweep: :class:`~tlprobe.analyses.simulation.EstimatorSweep`.
        rho_index: which correlation (default: the largest ``|rho|``).
        title: figure title.

    Example:
        >>> from tlprobe.analyses.simulation import estimator_sweep
        >>> s = estimator_sweep([0.0, 0.6], bins=[4, 8], samples=[100, 300], seeds=2, n_shuffles=2)
        >>> fig = estimator_sweep_figure(s)
        >>> len(fig.data), fig.layout.annotations[0].text
        (18, '4 bins')
    """
    ri = _rho_index(sweep, rho_index, largest=True)
    mean = sweep.mean()[:, ri]
    low, high = (t[:, ri] for t in sweep.interval())
    ns = list(sweep.samples)
    fig = make_subplots(rows=1, cols=len(sweep.bins), subplot_titles=[f"{b} bins" for b in sweep.bins])
    truth = float(sweep.truth[ri])
    for bi in range(len(sweep.bins)):
        col = bi + 1
        for e, name in enumerate(ESTIMATORS):
            band = go.Scatter(
                x=ns + ns[::-1],
                y=high[e, bi].tolist() + low[e, bi].tolist()[::-1],
                mode="lines",
                fill="toself",
                fillcolor=_FILLS[e],
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
            )
            fig.add_trace(band, row=1, col=col)
            line = go.Scatter(
                x=ns,
                y=mean[e, bi].tolist(),
                name=name,
                mode="lines+markers",
                line=dict(color=_COLORS[e]),
                legendgroup=name,
                showlegend=bi == 0,
            )
            fig.add_trace(line, row=1, col=col)
        dash = go.Scatter(
            x=[min(ns), max(ns)],
            y=[truth, truth],
            name="truth",
            mode="lines",
            line=dict(color="black", dash="dash"),
            showlegend=bi == 0,
            legendgroup="truth",
        )
        fig.add_trace(dash, row=1, col=col)
        fig.update_xaxes(type="log", title_text="samples n", row=1, col=col)
    fig.update_yaxes(title_text="MI (nats)", row=1, col=1)
    fig.update_layout(
        title=f"{title} (rho = {sweep.rho[ri]:g}, truth {truth:.3f} nats; {sweep.n_seeds} seeds, "
        f"{sweep.n_shuffles} shuffles)",
        template="plotly_white",
        height=430,
        width=max(700, 330 * len(sweep.bins)),
    )
    return fig


def plugin_bias_figure(
    sweep: EstimatorSweep,
    *,
    title: str = "Plug-in bias at independence vs the first-order theory (bins-1)^2/(2n)",
) -> go.Figure:
    """Measured plug-in bias (mean - truth) at the smallest ``|rho|`` vs n, per bins, with the theory dashed.

    Log-log axes when every measured bias is positive (else a linear y axis).

    Example:
        >>> from tlprobe.analyses.simulation import estimator_sweep
        >>> s = estimator_sweep([0.0], bins=[4, 8], samples=[100, 300], seeds=2, n_shuffles=2)
        >>> fig = plugin_bias_figure(s)
        >>> len(fig.data), fig.data[1].line.dash
        (4, 'dash')
    """
    ri = _rho_index(sweep, None, largest=False)
    bias = sweep.mean()[0, ri] - sweep.truth[ri]
    ns = list(sweep.samples)
    fig = go.Figure()
    for bi, b in enumerate(sweep.bins):
        color = _COLORS[bi % len(_COLORS)]
        fig.add_trace(
            go.Scatter(
                x=ns, y=bias[bi].tolist(), name=f"{b} bins: plug-in", mode="markers+lines", line=dict(color=color)
            )
        )
        fig.add_trace(
            go.Scatter(
                x=ns,
                y=sweep.plugin_bias[bi].tolist(),
                name=f"{b} bins: theory",
                mode="lines",
                line=dict(color=color, dash="dash"),
            )
        )
    fig.update_xaxes(type="log", title_text="samples n")
    fig.update_yaxes(type="log" if bool((bias > 0).all()) else "linear", title_text="bias (nats)")
    fig.update_layout(title=f"{title} (rho = {sweep.rho[ri]:g})", template="plotly_white", height=480, width=800)
    return fig
