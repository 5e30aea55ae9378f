"""Figures across depth (L03) and per head. They plot; they never compute statistics.

Each figure takes one result (or a mapping of panel name -> result of one type) and reads its
labels from the result's axes: the last leading axis is the depth (x or y axis), earlier ones
are populations (one line each); a ``[layer, head]`` result hovers with "L3H7". An undefined
item (NaN, e.g. the correlation of a rotary model's layer 0) is a gap in a curve and a blank
row or cell in a heatmap (plotly writes NaN as null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tlprobe.analyses.moments import Moments
from tlprobe.analyses.similarity import BlockStats
from tlprobe.errors import TlprobeError
from tlprobe.figures.views import index_labels, panels
from tlprobe.result import Result, register_figure

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f")
_DASHES = ("solid", "dash", "dot", "dashdot")
_MOMENT_TITLES = {"var": "variance", "rel_var": "relative variance", "mean": "mean", "mean_abs": "|mean|"}
_MOMENT_AXES = {
    "var": "mean over coords of var",
    "rel_var": "sum var / sum E[x^2]",
    "mean": "mean over coords of mean",
    "mean_abs": "mean over coords of |mean|",
}


#: Decades of density a log colour scale spans below a panel's largest density.
LOG_DECADES = 3.0


def _log_colour(dens: list[list[float]], floor: float) -> list[list[float | None]]:
    """``log10`` of densities for a log colour scale: 0 (and anything below ``floor``) at the floor's
    colour, NaN (undefined) as None, a blank cell."""
    return [
        [None if math.isnan(v) else math.log10(max(v, floor)) for v in row]  # 0 -> the lowest colour
        for row in dens
    ]


def _decade_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """Colour bar ticks at 1, 2 and 5 x each power of ten between ``low`` and ``high`` (log10 units)."""
    vals, text = [], []
    for e in range(math.floor(low), math.ceil(high) + 1):
        for m in (1, 2, 5):
            t = e + math.log10(m)
            if low - 1e-9 <= t <= high + 1e-9:
                vals.append(t)
                text.append(f"{m * 10.0**e:g}")
    return vals, text


def _depth_and_populations(result, lead: tuple[int, ...]) -> tuple[list[str], list[str]]:
    """Labels of the last leading axis (the depth) and of the flattened axes before it (populations)."""
    depth = index_labels(result, lead[-1:], start=len(lead) - 1) if lead else [""]
    return depth, index_labels(result, lead[:-1]) if len(lead) > 1 else [""]


def depth_histogram_figure(
    stats: BlockStats | Mapping[str, BlockStats],
    *,
    title: str = "Similarity per block across depth",
    log_color: bool = True,
) -> go.Figure:
    """Stacked per-layer histograms as heatmaps (a 'spectrogram'): layer vs similarity, density as colour.

    One row per block, one column per result (cosine and correlation side by side).

    Args:
        stats: block statistics with one leading axis, the layers (``st["target"]`` of a
            ``[population, layer]`` result), or method -> such results.
        title: figure title.
        log_color: colour by ``log10`` of the density (the default), over the
            :data:`LOG_DECADES` decades below each panel's largest density: the few tall bins (cosine
            near +-1 in early layers) do not wash out the rest, and 0 takes the lowest colour. With
            False, a linear scale from 0 to the 99th percentile of the panel's densities (the few
            taller bins saturate). Hover shows the true density.

    Raises:
        TlprobeError: a result without exactly one leading axis.
    """
    cols = panels(stats, name=stats.method if isinstance(stats, BlockStats) else "")
    blocks = next(iter(cols.values())).blocks
    fig = make_subplots(
        rows=len(blocks),
        cols=len(cols),
        shared_xaxes=True,
        subplot_titles=[f"{m}: {b}" for b in blocks for m in cols],
        horizontal_spacing=0.1,
        vertical_spacing=0.035,
    )
    layout = {}
    for c, (method, st) in enumerate(cols.items(), start=1):
        if st.prob.ndim != 3:
            raise TlprobeError(
                f"{method}: expected prob [layer, block, bins], got {tuple(st.prob.shape)}; select one population"
            )
        layers = index_labels(st, tuple(st.prob.shape[:1]))
        dens = st.density
        x = st.centers.tolist()
        axis = "coloraxis" if c == 1 else f"coloraxis{c}"
        finite = [v for v in dens.flatten().tolist() if not math.isnan(v)]
        positive = sorted(v for v in finite if v > 0)
        top = positive[-1] if positive else 1.0
        if log_color:
            low = max(positive[0], top * 10.0**-LOG_DECADES) if positive else top / 10
            zmin, zmax = math.log10(low), math.log10(top)
            if zmax - zmin < 1e-9:  # one density everywhere: a one-decade range around it
                zmin -= 1
            tickvals, ticktext = _decade_ticks(zmin, zmax)
            bar = dict(title=f"{method}<br>density<br>(log)", tickvals=tickvals, ticktext=ticktext)
        else:
            zmin, zmax = 0.0, (positive[int(0.99 * (len(positive) - 1))] if positive else 1.0)
            bar = dict(title=f"{method}<br>density")
        for r, blk in enumerate(st.blocks, start=1):
            z = dens[:, r - 1].tolist()
            fig.add_trace(
                go.Heatmap(
                    x=x,
                    y=layers,
                    z=_log_colour(z, 10.0**zmin) if log_color else z,
                    customdata=z,
                    coloraxis=axis,
                    name=f"{method} {blk}",
                    hovertemplate=(
                        f"{method} {blk}<br>layer %{{y}}<br>s=%{{x:.2f}}<br>density=%{{customdata:.3g}}<extra></extra>"
                    ),
                ),
                row=r,
                col=c,
            )
            fig.update_yaxes(title_text="layer", row=r, col=c, type="category")
        fig.update_xaxes(title_text="similarity", row=len(st.blocks), col=c)
        layout[axis] = dict(
            colorscale="Viridis",
            cmin=zmin,
            cmax=zmax,
            colorbar=dict(**bar, x=1.0 + 0.08 * (c - 1), len=0.5),
        )
    fig.update_layout(title=title, height=190 * len(blocks) + 120, width=1150, template="plotly_white", **layout)
    return fig


@register_figure(Moments)
def moment_curves_figure(
    moments: Moments | Mapping[str, Moments],
    *,
    stats: tuple[str, ...] = ("var", "rel_var", "mean", "mean_abs"),
    title: str = "Across-sample moments through depth",
) -> go.Figure:
    """Variance and mean curves across depth, one line per population (target vs non-target).

    Args:
        moments: :class:`Moments` whose last leading axis is the depth (x axis) and earlier axes
            the populations (one line each), or source name (e.g. ``"residual stream"``,
            ``"Q|K|V"``) -> such moments (one row each).
        stats: which :class:`Moments` fields to draw, one column each.
        title: figure title.
    """
    rows = panels(moments)
    fig = make_subplots(
        rows=len(rows),
        cols=len(stats),
        subplot_titles=[
            f"{src}: {_MOMENT_TITLES.get(s, s)}" if src else _MOMENT_TITLES.get(s, s) for src in rows for s in stats
        ],
        horizontal_spacing=0.09,
        vertical_spacing=0.16,
    )
    for r, (src, m) in enumerate(rows.items(), start=1):
        depth, pops = _depth_and_populations(m, tuple(m.var.shape))
        for c, stat in enumerate(stats, start=1):
            val = getattr(m, stat).reshape(len(pops), len(depth))
            for i, pop in enumerate(pops):
                fig.add_trace(
                    go.Scatter(
                        x=depth,
                        y=val[i].tolist(),
                        mode="lines+markers",
                        name=pop,
                        legendgroup=pop,
                        showlegend=(r == 1 and c == 1),
                        line=dict(color=_COLORS[i % len(_COLORS)]),
                        hovertemplate=f"{pop}<br>%{{x}}<br>{stat}=%{{y:.4g}}<extra>{src}</extra>",
                    ),
                    row=r,
                    col=c,
                )
            fig.update_xaxes(type="category", row=r, col=c)
            fig.update_yaxes(title_text=_MOMENT_AXES.get(stat, stat), row=r, col=c)
    fig.update_layout(
        title=title,
        height=330 * len(rows) + 60,
        width=380 * len(stats) + 100,
        template="plotly_white",
        legend=dict(orientation="h", y=-0.12),
    )
    return fig


def block_summary_curves_figure(
    stats: BlockStats | Mapping[str, BlockStats],
    *,
    summaries: tuple[str, ...] = ("frac_extreme", "std", "mean_abs"),
    title: str = "Block summaries across depth",
) -> go.Figure:
    """Per-block summaries across depth: one row per result (method), one column per summary.

    Colour: block; line style: population.

    Args:
        stats: block statistics whose last leading axis is the layer (x axis) and earlier axes
            the populations, e.g. ``[population, layer]``; or method -> such results.
        summaries: fields to draw (``frac_extreme``, ``std``, ``mean``, ``mean_abs``).
        title: figure title.
    """
    rows = panels(stats, name=stats.method if isinstance(stats, BlockStats) else "")
    thr = next(iter(rows.values())).extreme
    names = {"frac_extreme": f"fraction |s| > {thr:g}", "std": "std", "mean": "mean", "mean_abs": "mean |s|"}
    fig = make_subplots(
        rows=len(rows),
        cols=len(summaries),
        horizontal_spacing=0.06,
        vertical_spacing=0.14,
        subplot_titles=[f"{m}: {names.get(s, s)}" for m in rows for s in summaries],
    )
    for r, (method, st) in enumerate(rows.items(), start=1):
        layers, pops = _depth_and_populations(st, tuple(st.mean.shape[:-1]))
        for c, key in enumerate(summaries, start=1):
            val = getattr(st, key).reshape(len(pops), len(layers), len(st.blocks))
            for p, pop in enumerate(pops):
                for b, blk in enumerate(st.blocks):
                    name = f"{blk} ({pop})" if pop else blk
                    fig.add_trace(
                        go.Scatter(
                            x=layers,
                            y=val[p, :, b].tolist(),
                            mode="lines+markers",
                            name=name,
                            legendgroup=f"{blk}{pop}",
                            showlegend=(r == 1 and c == 1),
                            line=dict(color=_COLORS[b % len(_COLORS)], dash=_DASHES[p % len(_DASHES)]),
                            hovertemplate=f"{blk}, {pop}<br>%{{x}}<br>{key}=%{{y:.4f}}<extra>{method}</extra>",
                        ),
                        row=r,
                        col=c,
                    )
            fig.update_xaxes(type="category", row=r, col=c)
    fig.update_layout(
        title=title, height=330 * len(rows) + 80, width=420 * len(summaries) + 200, template="plotly_white"
    )
    return fig


def head_heatmap_figure(
    result: Result,
    field: str,
    *,
    cols: int = 3,
    title: str = "Per-head summaries",
    shared_scale: bool = True,
) -> go.Figure:
    """``[layer, head]`` heatmaps of one field, hover text "L3H7: value".

    Args:
        result: a result whose last two leading axes are ``[layer, head]``: a :class:`BlockStats`
            (one panel per block, and per index of any axes before them), or any other result
            (a :class:`Moments`, an RSA test, a spectrum: one panel per index of the axes before
            them, e.g. per population).
        field: the field to draw (``frac_extreme``, ``std``, ... or ``var``, ``rel_var``, ...).
        cols: panels per row.
        title: figure title.
        shared_scale: one colour scale for all panels (use for maps of the same statistic).

    Raises:
        TlprobeError: the result has fewer than two leading axes.
    """
    value = getattr(result, field)
    blocks = result.blocks if isinstance(result, BlockStats) else None
    lead = tuple(value.shape[:-1] if blocks else value.shape)
    if len(lead) < 2:
        raise TlprobeError(f"expected a result with [..., layer, head] leading axes, got {field} {tuple(value.shape)}")
    n_layers, n_heads = lead[-2:]
    outer = index_labels(result, lead[:-2]) if len(lead) > 2 else [""]
    names = index_labels(result, (n_layers, n_heads), start=len(lead) - 2)
    text = [names[i * n_heads : (i + 1) * n_heads] for i in range(n_layers)]
    layers = index_labels(result, (n_layers,), start=len(lead) - 2)
    flat = value.reshape(len(outer), n_layers, n_heads, *([len(blocks)] if blocks else []))
    maps = []
    for o, label in enumerate(outer):
        for b, blk in enumerate(blocks or (None,)):
            z = flat[o, ..., b] if blk is not None else flat[o]
            what = f"{result.method} {blk} {field}" if isinstance(result, BlockStats) else field
            maps.append((f"{label} {what}".strip(), z))
    n_rows = (len(maps) + cols - 1) // cols
    fig = make_subplots(
        rows=n_rows,
        cols=min(cols, len(maps)),
        subplot_titles=[name for name, _ in maps],
        horizontal_spacing=0.07,
        vertical_spacing=0.14 if n_rows > 1 else 0.1,
    )
    heads = list(range(n_heads))
    for k, (name, z) in enumerate(maps):
        r, c = k // cols + 1, k % cols + 1
        kwargs = dict(coloraxis="coloraxis") if shared_scale else dict(colorscale="Viridis", showscale=False)
        fig.add_trace(
            go.Heatmap(
                z=z.tolist(),
                x=heads,
                y=layers,
                text=text,
                name=name,
                hovertemplate=f"%{{text}}<br>{name}=%{{z:.4f}}<extra></extra>",
                **kwargs,
            ),
            row=r,
            col=c,
        )
        fig.update_xaxes(title_text="head", row=r, col=c, dtick=1 if n_heads <= 16 else None)
        fig.update_yaxes(title_text="layer", row=r, col=c, type="category")
    extra: dict[str, Any] = (
        dict(coloraxis=dict(colorscale="Viridis", colorbar=dict(title=field))) if shared_scale else {}
    )
    fig.update_layout(
        title=title, height=300 * n_rows + 100, width=min(cols, len(maps)) * 400 + 120, template="plotly_white", **extra
    )
    return fig


def head_block_figure(
    stats: BlockStats | Mapping[str, BlockStats], summary: str = "frac_extreme", *, title: str | None = None
) -> go.Figure:
    """One layer's ``[head, block]`` summary as heatmaps, one panel per result (method), hover "L3H7".

    Args:
        stats: block statistics with one leading axis, the heads (labelled "L3H0", ...), e.g.
            :func:`~tlprobe.analyses.similarity.qkv_block_similarity` of ``split_heads(samples, H)``;
            or method -> such results.
        summary: ``frac_extreme``, ``std``, ``mean`` or ``mean_abs``.
        title: figure title.
    """
    cols = panels(stats, name=stats.method if isinstance(stats, BlockStats) else "")
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=list(cols), horizontal_spacing=0.16)
    thr = next(iter(cols.values())).extreme
    name = f"fraction |s| > {thr:g}" if summary == "frac_extreme" else summary
    layout: dict[str, Any] = {}
    heads: list[str] = []
    for c, (method, st) in enumerate(cols.items(), start=1):
        val = getattr(st, summary)
        heads = index_labels(st, tuple(val.shape[:-1]))
        text = [[f"{h} {b}" for b in st.blocks] for h in heads]
        # one colour scale per panel: correlation's fractions can be 100 x smaller than cosine's
        axis = "coloraxis" if c == 1 else f"coloraxis{c}"
        fig.add_trace(
            go.Heatmap(
                z=val.reshape(len(heads), len(st.blocks)).tolist(),
                x=list(st.blocks),
                y=heads,
                text=text,
                coloraxis=axis,
                hovertemplate=f"%{{text}}<br>{summary}=%{{z:.4f}}<extra>{method}</extra>",
            ),
            row=1,
            col=c,
        )
        fig.update_yaxes(type="category", autorange="reversed", row=1, col=c)
        suffix = "" if c == 1 else str(c)
        domain = getattr(fig.layout, f"xaxis{suffix}").domain
        layout[axis] = dict(colorscale="Viridis", colorbar=dict(title=name if c == 1 else "", x=domain[1] + 0.01))
        values = [v for v in val.flatten().tolist() if not math.isnan(v)]
        if not values or max(values) == min(values):
            note = "all values undefined" if not values else f"all values {values[0]:g}"
            fig.add_annotation(
                text=note, xref=f"x{suffix} domain", yref=f"y{suffix} domain", x=0.5, y=0.5, showarrow=False
            )
    fig.update_layout(
        title=title or f"Per head: {name}",
        template="plotly_white",
        height=max(320, 22 * len(heads) + 150),
        width=420 * len(cols) + 150,
        **layout,
    )
    return fig
