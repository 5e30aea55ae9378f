"""Figures of PCA spectra (L06-L07): explained variance curves and effective dimensionality across depth.

They plot; they never compute statistics (a null's several permutations are drawn as their mean,
a display choice).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tlprobe.analyses.dimensionality import Spectrum
from tlprobe.errors import TlprobeError
from tlprobe.figures.depth import head_heatmap_figure
from tlprobe.figures.views import index_labels, panels
from tlprobe.result import register_figure

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f")
_DASHES = ("solid", "dash", "dot", "dashdot")


def _check_depth(s: Spectrum, name: str) -> None:
    """One leading axis (depth), or depth and a null's trailing permutation axis (averaged for display)."""
    permutations = s.participation_ratio.ndim == 2 and list(s.axes)[-1:] == ["permutation"]
    if s.participation_ratio.ndim != 1 and not permutations:
        raise TlprobeError(
            f"{name}: expected one leading axis (depth), got {tuple(s.participation_ratio.shape)}; select one"
        )


def dimensionality_depth_figure(
    spectra: Spectrum | Mapping[str, Spectrum],
    *,
    d_model: int | None = None,
    components: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Participation ratio (left) and components for each variance threshold (right) per depth.

    Args:
        spectra: name -> :class:`Spectrum` over depth (a null with a trailing ``permutation`` axis
            is drawn as its permutations' mean), or one spectrum.
        d_model: the width, drawn as a reference line on the components panel.
        components: the spectra whose component counts are drawn (default: all).
        title: figure title.
    """
    cols = panels(spectra, name="spectrum")
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["participation ratio", "components for a share of the variance"]
    )
    for i, (name, s) in enumerate(cols.items()):
        _check_depth(s, name)
        color = _COLORS[i % len(_COLORS)]
        pr, nc = s.participation_ratio.double(), s.n_components.double()
        if pr.ndim == 2:  # a null's permutations
            pr, nc = pr.mean(-1), nc.mean(-2)
        x = index_labels(s, (s.participation_ratio.shape[0],))
        fig.add_trace(go.Scatter(x=x, y=pr.tolist(), name=name, mode="lines+markers", line=dict(color=color)), 1, 1)
        for j, t in enumerate(s.thresholds if components is None or name in components else ()):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=nc[..., j].tolist(),
                    name=f"{name}: {t:.0%}",
                    mode="lines+markers",
                    line=dict(color=color, dash=_DASHES[j % len(_DASHES)]),
                    legendgroup=name,
                ),
                1,
                2,
            )
    if d_model is not None:
        first = next(iter(cols.values()))
        x = index_labels(first, (first.participation_ratio.shape[0],))
        ref = go.Scatter(x=x, y=[d_model] * len(x), name=f"d_model = {d_model}", mode="lines")
        fig.add_trace(ref.update(line=dict(color="grey", dash="dot")), 1, 2)
    fig.update_xaxes(title_text="depth", type="category")
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(
        title=title or "Effective dimensionality across depth", template="plotly_white", height=480, width=1150
    )
    return fig


@register_figure(Spectrum)
def spectrum_figure(s: Spectrum, *, title: str | None = None) -> go.Figure:
    """Cumulative explained variance against the number of components (log x), one line per leading index.

    A ``[layer, head]`` spectrum draws its participation ratio as a head map instead.
    """
    if list(s.axes)[-2:] == ["layer", "head"]:
        return head_heatmap_figure(s, "participation_ratio", cols=2, title=title or "Participation ratio per head")
    lead = tuple(s.participation_ratio.shape)
    names = index_labels(s, lead) if lead else ["spectrum"]
    curves = s.explained.double().reshape(-1, s.explained.shape[-1])
    fig = go.Figure()
    k = list(range(1, curves.shape[-1] + 1))
    for i, name in enumerate(names):
        fig.add_trace(
            go.Scatter(
                x=k,
                y=curves[i].tolist(),
                name=name,
                mode="lines",
                line=dict(color=_COLORS[i % len(_COLORS)], dash=_DASHES[(i // len(_COLORS)) % len(_DASHES)]),
            )
        )
    for t in s.thresholds:
        fig.add_hline(y=t, line=dict(color="grey", dash="dot", width=1), annotation_text=f"{t:.0%}")
    fig.update_layout(
        title=title or "Cumulative explained variance",
        xaxis=dict(title="components", type="log"),
        yaxis=dict(title="explained variance", range=[0, 1.02]),
        template="plotly_white",
        height=460,
        width=950,
    )
    return fig
