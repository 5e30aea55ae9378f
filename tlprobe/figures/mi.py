"""Figures for mutual-information results (L09/L10). They plot; they never compute statistics.

Each figure takes one result and reads its labels from it: histograms come from
:func:`tlprobe.analyses.mi.mi_histograms` (:class:`~tlprobe.analyses.mi.MIHistograms`),
matrices from :func:`tlprobe.analyses.mi.mi_null` (:class:`~tlprobe.analyses.mi.MIResult`),
dependence measures from :func:`tlprobe.analyses.mi.dependence`
(:class:`~tlprobe.analyses.mi.Dependence`). ``result.figure()`` draws the main one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from tlprobe.analyses.mi import Dependence, MIHistograms, MIResult
from tlprobe.errors import TlprobeError
from tlprobe.result import register_figure

_COLORS = ("#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd", "#ff7f0e")
#: Percentiles of the off-diagonal values that bound a heatmap's colour axis (a display choice:
#: a few extreme pairs, or the diagonal, would otherwise wash out every other pair's colour).
HEATMAP_PERCENTILES = (1.0, 99.0)
#: Fraction of the pairs a histogram figure may leave outside its x range at each end (long tails).
HISTOGRAM_TAIL = 0.005


def _constant_note(fig: go.Figure, values, *, what: str = "all values", axis: int = 1) -> bool:
    """Write "all values V" on a panel whose values are all equal (a flat line or a single colour
    says nothing by itself); True when it did. ``axis``: the subplot's axis number (1, 2, ...)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0 or float(v.max()) != float(v.min()):
        return False
    suffix = "" if axis == 1 else str(axis)
    fig.add_annotation(
        text=f"{what} {float(v[0]):.3g}",
        x=0.5,
        y=0.5,
        xref=f"x{suffix} domain",
        yref=f"y{suffix} domain",
        showarrow=False,
        font=dict(size=14, color="#444444"),
        bgcolor="rgba(255, 255, 255, 0.8)",
    )
    return True


def _core_range(prob: np.ndarray, edges: np.ndarray, tail: float) -> tuple[float, float] | None:
    """The x range holding all but ``tail`` of every histogram's mass at each end, or None when
    that is (nearly) the full range."""
    if tail <= 0:
        return None
    cum = np.cumsum(prob, axis=-1)
    lo = int(min(np.argmax(cum > tail, axis=-1).min(), prob.shape[-1] - 1))
    hi = int(max(np.argmax(cum >= 1 - tail, axis=-1).max(), lo))
    low, high = float(edges[lo]), float(edges[hi + 1])
    if high - low >= 0.9 * float(edges[-1] - edges[0]):
        return None
    return low, high


def _series_colors(n: int, highlight: int | None) -> list[str]:
    if highlight is None:
        return [_COLORS[i % len(_COLORS)] for i in range(n)]
    others = [i for i in range(n) if i != highlight]
    # Viridis up to 0.85: its last, pale yellow is hard to see as a thin line on white
    scale = sample_colorscale("Viridis", [0.85 * j / max(1, len(others) - 1) for j in range(len(others))])
    colors = [""] * n
    for c, i in zip(scale, others):
        colors[i] = str(c)
    colors[highlight] = "#d62728"
    return colors


@register_figure(MIHistograms)
def mi_histogram_figure(
    hist: MIHistograms,
    *,
    title: str = "Distribution of pairwise MI",
    highlight: int | None = None,
    density: bool = True,
    tail: float = HISTOGRAM_TAIL,
) -> go.Figure:
    """Overlaid histograms (as lines), one per histogram of ``hist`` (named by its axes' labels).

    The x axis shows the bins that hold all but ``tail`` of every histogram's pairs at each end
    (a long tail of a few pairs would otherwise squeeze every peak against one edge); the title
    says when it cuts, and hovering or zooming out still reaches every bin.

    Args:
        hist: from :func:`tlprobe.analyses.mi.mi_histograms`.
        title: figure title.
        highlight: index of a histogram drawn thick in red (e.g. 0 for the embedding layer), the
            others on a Viridis scale in order (layers); ``None``: categorical colours (e.g. raw,
            shuffle null, corrected).
        density: plot the probability density (default) or the fraction of pairs per bin.
        tail: fraction of each histogram's pairs allowed outside the x range at each end
            (0: the full range).

    Raises:
        TlprobeError: ``highlight`` is not the index of a histogram, or ``tail`` is not in [0, 0.5).

    Example:
        >>> from tlprobe.analyses.mi import mi_histograms
        >>> m = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
        >>> fig = mi_histogram_figure(mi_histograms(m, bins=4, axes={"layer": ["L0", "L1", "L2"]}), highlight=0)
        >>> [trace.name for trace in fig.data]
        ['L0', 'L1', 'L2']
    """
    names = hist.series
    n = len(names)
    if highlight is not None and not 0 <= highlight < n:
        raise TlprobeError(f"highlight {highlight} is out of range for {n} histograms")
    if not 0 <= tail < 0.5:
        raise TlprobeError(f"tail must be in [0, 0.5), got {tail}")
    colors = _series_colors(n, highlight)
    y = (hist.density if density else hist.prob).reshape(n, -1)
    x_range = _core_range(hist.prob.reshape(n, -1).double().numpy(), hist.edges.double().numpy(), tail)
    x = hist.centers.tolist()
    fig = go.Figure()
    for i, name in enumerate(names):
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
    cut = x_range is not None
    fig.update_layout(
        title=title + (f" (x axis: all but {tail:.1%} of the pairs at each end)" if cut else ""),
        template="plotly_white",
        height=420,
        width=900,
        xaxis=dict(title=dict(text=hist.quantity), range=list(x_range) if cut else None),
        yaxis_title="density" if density else "fraction of pairs",
        legend_title_text=next(iter(hist.axes), ""),
    )
    if float(hist.edges[-1] - hist.edges[0]) <= 1e-9:  # mi_histograms' range when every value is equal
        _constant_note(fig, [float(hist.edges[0])])
    return fig


def mi_means_figure(
    hists: MIHistograms | Mapping[str, MIHistograms],
    *,
    title: str = "Mean pairwise MI per layer",
    statistic: Literal["mean", "median"] = "mean",
) -> go.Figure:
    """The mean (or median) over pairs of each histogram, as one line across its labels (layers).

    Args:
        hists: one :class:`~tlprobe.analyses.mi.MIHistograms` (one line, named by its quantity),
            or line name -> histograms over the same labels (e.g. raw, shuffle null, corrected).
        title: figure title.
        statistic: ``"mean"`` (error bars: the standard deviation of the pairs' values, their
            spread, not the uncertainty of the mean) or ``"median"``.

    Raises:
        TlprobeError: an unknown ``statistic``.

    Example:
        >>> from tlprobe.analyses.mi import mi_histograms
        >>> m = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
        >>> layers = {"layer": ["L0", "L1", "L2"]}
        >>> fig = mi_means_figure({"raw": mi_histograms(m, axes=layers), "half": mi_histograms(m / 2, axes=layers)})
        >>> len(fig.data), fig.data[0].x
        (2, ('L0', 'L1', 'L2'))
    """
    if statistic not in ("mean", "median"):
        raise TlprobeError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    lines = {hists.quantity: hists} if isinstance(hists, MIHistograms) else dict(hists)
    fig = go.Figure()
    for i, (label, h) in enumerate(lines.items()):
        err = (
            dict(type="data", array=h.std.flatten().tolist(), visible=True, thickness=1)
            if statistic == "mean"
            else None
        )
        fig.add_trace(
            go.Scatter(
                x=list(h.series),
                y=getattr(h, statistic).flatten().tolist(),
                mode="lines+markers",
                name=label,
                error_y=err,
                line=dict(color=_COLORS[i % len(_COLORS)]),
            )
        )
    q = next(iter(lines.values())).quantity if lines else "MI (nats)"
    fig.update_layout(
        title=title, template="plotly_white", height=400, width=900, yaxis_title=f"{statistic} {q} over pairs"
    )
    return fig


@register_figure(MIResult)
def mi_heatmap_figure(
    result: MIResult,
    *,
    which: Literal["raw", "corrected", "null_mean", "null_std"] = "raw",
    title: str = "Pairwise MI",
    max_size: int = 400,
    variable: str = "variable",
) -> go.Figure:
    """Heatmap of one ``[V, V]`` matrix of ``result`` (the top-left ``max_size`` block if larger).

    The diagonal (a variable's MI with itself: its entropy) is left blank, and the colour axis
    spans the :data:`HEATMAP_PERCENTILES` of the off-diagonal values shown, so that neither the
    diagonal nor a few extreme pairs wash out the others (values outside take the end colours).
    A matrix whose off-diagonal values are all equal says so in the panel.

    Args:
        result: an :class:`~tlprobe.analyses.mi.MIResult` without leading axes: select one
            first, e.g. ``result["block 2"]``.
        which: the matrix to show.
        title: figure title.
        max_size: most variables shown per side.
        variable: what the variables are, for the axis titles (e.g. ``"hidden dimension"``).

    Raises:
        TlprobeError: ``result`` still has leading axes, or has no ``which`` matrix.

    Example:
        >>> from tlprobe.analyses.mi import miller_madow
        >>> r = miller_madow(torch.rand(2, 50, 3, generator=torch.Generator().manual_seed(0)), axes={"layer": ["L0", "L1"]})
        >>> fig = mi_heatmap_figure(r["L1"])
        >>> len(fig.data), fig.data[0].z[1][1]
        (1, None)
    """
    mat = getattr(result, which, None)
    if mat is None:
        raise TlprobeError(f"this MIResult has no {which} matrix (method {result.method!r})")
    if mat.ndim != 2:
        raise TlprobeError(
            f"mi_heatmap_figure shows one [V, V] matrix, got {tuple(mat.shape)}: "
            "select one leading index first, e.g. result[0] or result['L3']"
        )
    m = mat[:max_size, :max_size].double().cpu().numpy()
    off = ~np.eye(m.shape[0], dtype=bool)
    z = [[None if i == j else float(v) for j, v in enumerate(row)] for i, row in enumerate(m.tolist())]
    values = m[off]
    values = values[np.isfinite(values)]
    zmin = zmax = None
    if values.size:
        zmin, zmax = (float(v) for v in np.percentile(values, HEATMAP_PERCENTILES))
        if zmax <= zmin:
            zmin, zmax = zmin - 0.5, zmin + 0.5  # one colour; the note below says which value
    what = {"raw": "MI", "corrected": "MI - null", "null_mean": "null mean", "null_std": "null std"}[which]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            zmin=zmin,
            zmax=zmax,
            colorscale="Viridis",
            # below the square plot, centred: on a wide page the square sits in the middle, and a
            # colour bar at the right edge of the paper would stand far from it
            colorbar=dict(
                title=dict(text=f"{what} (nats)", side="top"),
                orientation="h",
                x=0.5,
                xanchor="center",
                y=-0.14,
                yanchor="top",
                len=0.4,
                thickness=14,
            ),
            hoverongaps=False,
            hovertemplate=f"{variable} %{{y}} x %{{x}}<br>{what}=%{{z:.3f}} nats<extra></extra>",
        )
    )
    shown = "" if mat.shape[0] <= max_size else f" (first {max_size} of {mat.shape[0]})"
    fig.update_layout(
        title=title + shown,
        template="plotly_white",
        height=700,
        width=660,
        margin=dict(b=130),
        xaxis=dict(title=dict(text=variable), constrain="domain"),
        yaxis=dict(title=dict(text=variable), autorange="reversed", scaleanchor="x"),
    )
    _constant_note(fig, values, what="all off-diagonal values")
    return fig


def _pair_labels(dep: Dependence) -> tuple[str, tuple[str, ...]]:
    """The name and labels of a one-axis dependence result (``"pair"``, indices when unlabelled)."""
    if dep.covariance.ndim != 1:
        raise TlprobeError(
            f"this figure shows pairs along one leading axis; the result has shape {tuple(dep.covariance.shape)}"
        )
    if dep.axes:
        name, labels = next(iter(dep.axes.items()))
        return name, tuple(labels)
    return "pair", tuple(str(i) for i in range(dep.covariance.shape[0]))


@register_figure(Dependence)
def dependence_sweep_figure(
    dep: Dependence,
    *,
    x_title: str | None = None,
    title: str = "Covariance vs mutual information",
) -> go.Figure:
    """L10: covariance (a line), MI (a U) and squared covariance (a U) along the result's axis.

    The x values are the labels of the result's leading axis (as numbers when they all are).

    Args:
        dep: :class:`~tlprobe.analyses.mi.Dependence` with one leading axis (the sweep), e.g.
            ``axes={"rho": ("0.90", ..., "-0.90")}``.
        x_title: title of the x axes (default: the axis name).
        title: figure title.

    Raises:
        TlprobeError: ``dep`` has more than one leading axis.

    Example:
        >>> from tlprobe.analyses.mi import dependence
        >>> g = torch.Generator().manual_seed(0)
        >>> a = torch.randn(3, 200, generator=g, dtype=torch.float64)
        >>> b = a * torch.tensor([[-1.0], [0.0], [1.0]]) + torch.randn(3, 200, generator=g, dtype=torch.float64)
        >>> fig = dependence_sweep_figure(dependence(a, b, n_shuffles=5, axes={"slope": ["-1", "0", "1"]}))
        >>> len(fig.data), fig.data[0].x
        (6, (-1.0, 0.0, 1.0))
    """
    axis, labels = _pair_labels(dep)
    try:
        xs: list = [float(v) for v in labels]
    except ValueError:
        xs = list(labels)
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("covariance (signed, linear)", "mutual information (unsigned)", "squared covariance"),
    )

    def line(name: str, y: torch.Tensor, color: str, col: int, dash: str | None = None) -> None:
        trace = go.Scatter(x=xs, y=y.tolist(), name=name, mode="lines+markers", line=dict(color=color, dash=dash))
        fig.add_trace(trace, row=1, col=col)

    line("covariance", dep.covariance, _COLORS[0], col=1)
    line("MI raw", dep.mi_raw, _COLORS[1], col=2)
    line("MI - shuffle null", dep.mi_corrected, _COLORS[3], col=2)
    line("shuffle null mean", dep.mi_null_mean, _COLORS[2], col=2, dash="dot")
    line("GCMI", dep.gcmi, _COLORS[4], col=2, dash="dash")
    line("covariance squared", dep.covariance_squared, _COLORS[5], col=3)
    for c in (1, 2, 3):
        fig.update_xaxes(title_text=x_title or axis, row=1, col=c)
    fig.update_yaxes(title_text="covariance", row=1, col=1)
    fig.update_yaxes(title_text="MI (nats)", row=1, col=2)
    fig.update_yaxes(title_text="covariance squared", row=1, col=3)
    _constant_note(fig, dep.covariance.tolist(), axis=1)
    mi_values = [dep.mi_raw, dep.mi_corrected, dep.mi_null_mean, dep.gcmi]
    _constant_note(fig, torch.cat([v.flatten() for v in mi_values]).tolist(), axis=2)
    _constant_note(fig, dep.covariance_squared.tolist(), axis=3)
    fig.update_layout(
        title=f"{title} ({dep.n_samples} samples, {dep.bins} bins, {dep.n_shuffles} shuffles)",
        template="plotly_white",
        height=420,
        width=1350,
    )
    return fig


def dependence_examples_figure(
    dep: Dependence,
    *,
    title: str = "Non-linear dependence: covariance near 0, MI clearly positive",
) -> go.Figure:
    """Scatter of each pair ``(x[i], y[i])`` of ``dep``, its covariance and MI in the panel title.

    Args:
        dep: :class:`~tlprobe.analyses.mi.Dependence` with one leading axis (the examples,
            whose labels title the panels) and its samples (``dependence(..., keep_samples=True)``).
        title: figure title.

    Raises:
        TlprobeError: ``dep`` has no samples, or more than one leading axis.

    Example:
        >>> from tlprobe.analyses.mi import dependence
        >>> a = torch.linspace(-1, 1, 50, dtype=torch.float64)[None]
        >>> d = dependence(a, a**2, n_shuffles=2, keep_samples=True, axes={"example": ["x^2"]})
        >>> len(dependence_examples_figure(d).data)
        1
    """
    _axis, names = _pair_labels(dep)
    if dep.x is None or dep.y is None:
        raise TlprobeError("this Dependence has no samples to plot: compute it with dependence(..., keep_samples=True)")
    cov, mi_c, null95, mi_r = (t.tolist() for t in (dep.covariance, dep.mi_corrected, dep.mi_null_q95, dep.mi_raw))
    titles = [
        f"{nm}<br>cov={cov[i]:.3f}, MI raw={mi_r[i]:.3f}, MI-null={mi_c[i]:.3f} (null 95%: {null95[i]:.3f})"
        for i, nm in enumerate(names)
    ]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles)
    for i, name in enumerate(names):
        fig.add_trace(
            go.Scatter(
                x=dep.x[i].tolist(),
                y=dep.y[i].tolist(),
                mode="markers",
                name=name,
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
