"""Figures for results across depth (L03) and per head. They plot; they never compute statistics."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tlprobe.analyses.depth import HeadMaps, Moments
from tlprobe.analyses.similarity import BlockStats
from tlprobe.errors import TlprobeError

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f")
_DASHES = ("solid", "dash", "dot", "dashdot")
_MOMENT_TITLES = {
    "var": "variance",
    "rel_var": "relative variance",
    "mean": "mean",
    "mean_abs": "|mean|",
}
_MOMENT_AXES = {
    "var": "mean over coords of var",
    "rel_var": "sum var / sum E[x^2]",
    "mean": "mean over coords of mean",
    "mean_abs": "mean over coords of |mean|",
}


def _contrast_scale(gamma: float, name: str = "Viridis", steps: int = 11) -> list:
    """A colour scale whose colours are spread as ``position ** gamma``: gamma < 1 brightens low values."""
    from plotly.colors import sample_colorscale

    cols = sample_colorscale(name, [i / (steps - 1) for i in range(steps)])
    return [[(i / (steps - 1)) ** (1 / gamma), c] for i, c in enumerate(cols)]


def _check_layers(n: int, labels: list[str], what: str) -> None:
    if len(labels) != n:
        raise TlprobeError(f"{len(labels)} layer labels for {n} layers in {what}")


def depth_histogram_figure(
    stats: dict[str, BlockStats],
    layer_labels: list[str],
    title: str = "Similarity per block across depth",
    gamma: float = 0.5,
) -> go.Figure:
    """Stacked per-layer histograms as heatmaps (a 'spectrogram'): layer vs similarity, density as colour.

    One row per block, one column per method (cosine and correlation side by side).

    Args:
        stats: method -> block statistics whose ``prob`` is ``[layer, block, bins]`` (one population;
            index a :class:`~tlprobe.analyses.depth.DepthBlockStats` with ``st[i]`` to pick it).
        layer_labels: one label per layer (y axis).
        title: figure title.
        gamma: colour contrast; below 1 spreads the colours over low densities, so that a few
            tall peaks (cosine near +-1 in early layers) do not wash out the rest. Hover and
            colour bar show the true density.
    """
    if not gamma > 0:
        raise TlprobeError(f"gamma must be > 0, got {gamma}")
    methods = list(stats)
    blocks = stats[methods[0]].blocks
    fig = make_subplots(
        rows=len(blocks),
        cols=len(methods),
        shared_xaxes=True,
        subplot_titles=[f"{m}: {b}" for b in blocks for m in methods],
        horizontal_spacing=0.1,
        vertical_spacing=0.035,
    )
    for c, method in enumerate(methods, start=1):
        st = stats[method]
        if st.prob.ndim != 3:
            raise TlprobeError(f"{method}: expected prob [layer, block, bins], got {tuple(st.prob.shape)}")
        _check_layers(st.prob.shape[0], layer_labels, method)
        dens = st.density
        x = st.centers.tolist()
        axis = "coloraxis" if c == 1 else f"coloraxis{c}"
        for r, blk in enumerate(st.blocks, start=1):
            fig.add_trace(
                go.Heatmap(
                    x=x,
                    y=layer_labels,
                    z=dens[:, r - 1].tolist(),
                    coloraxis=axis,
                    name=f"{method} {blk}",
                    hovertemplate=f"{method} {blk}<br>layer %{{y}}<br>s=%{{x:.2f}}<br>density=%{{z:.3f}}<extra></extra>",
                ),
                row=r,
                col=c,
            )
            fig.update_yaxes(title_text="layer", row=r, col=c, type="category")
        fig.update_xaxes(title_text="similarity", row=len(st.blocks), col=c)
    layout = {}
    for c, method in enumerate(methods, start=1):
        key = "coloraxis" if c == 1 else f"coloraxis{c}"
        layout[key] = dict(
            colorscale=_contrast_scale(gamma),
            colorbar=dict(title=f"{method}<br>density", x=1.0 + 0.08 * (c - 1), len=0.5),
        )
    fig.update_layout(title=title, height=190 * len(blocks) + 120, width=1150, template="plotly_white", **layout)
    return fig


def moment_curves_figure(
    moments: dict[str, Moments],
    populations: list[str],
    depth_labels: dict[str, list[str]],
    stats: tuple[str, ...] = ("var", "rel_var", "mean", "mean_abs"),
    title: str = "Across-sample moments through depth",
) -> go.Figure:
    """Variance and mean curves across depth, one line per population (target vs non-target).

    Args:
        moments: source name (e.g. ``"residual stream"``, ``"Q|K|V"``) -> :class:`Moments` with
            fields ``[population, depth]``.
        populations: names of the population index.
        depth_labels: source name -> one label per depth index (x axis).
        stats: which :class:`Moments` fields to draw, one column each.
        title: figure title.
    """
    sources = list(moments)
    fig = make_subplots(
        rows=len(sources),
        cols=len(stats),
        subplot_titles=[f"{src}: {_MOMENT_TITLES.get(s, s)}" for src in sources for s in stats],
        horizontal_spacing=0.09,
        vertical_spacing=0.16,
    )
    for r, src in enumerate(sources, start=1):
        m = moments[src]
        labels = depth_labels[src]
        for c, stat in enumerate(stats, start=1):
            val = getattr(m, stat)
            if val.ndim != 2 or val.shape[0] != len(populations):
                raise TlprobeError(
                    f"{src}: expected [population, depth] moments for {len(populations)} populations, "
                    f"got {tuple(val.shape)}"
                )
            _check_layers(val.shape[1], labels, src)
            for i, pop in enumerate(populations):
                fig.add_trace(
                    go.Scatter(
                        x=labels,
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
        height=330 * len(sources) + 60,
        width=380 * len(stats) + 100,
        template="plotly_white",
        legend=dict(orientation="h", y=-0.12),
    )
    return fig


def block_summary_curves_figure(
    stats: dict[str, BlockStats],
    populations: list[str],
    layer_labels: list[str],
    summaries: tuple[str, ...] = ("frac_extreme", "std", "mean_abs"),
    title: str = "Block summaries across depth",
) -> go.Figure:
    """Per-block summaries across depth: one row per method, one column per summary.

    Colour: block; line style: population.

    Args:
        stats: method -> block statistics with summaries ``[population, layer, block]``.
        populations: names of the population index.
        layer_labels: one label per layer (x axis).
        summaries: fields to draw (``frac_extreme``, ``std``, ``mean``, ``mean_abs``).
        title: figure title.
    """
    methods = list(stats)
    first = stats[methods[0]]
    thr = first.extreme
    names = {"frac_extreme": f"fraction |s| > {thr:g}", "std": "std", "mean": "mean", "mean_abs": "mean |s|"}
    fig = make_subplots(
        rows=len(methods),
        cols=len(summaries),
        horizontal_spacing=0.06,
        vertical_spacing=0.14,
        subplot_titles=[f"{m}: {names.get(s, s)}" for m in methods for s in summaries],
    )
    for r, method in enumerate(methods, start=1):
        st = stats[method]
        for c, key in enumerate(summaries, start=1):
            val = getattr(st, key)
            if val.ndim != 3 or val.shape[0] != len(populations):
                raise TlprobeError(f"{method}: expected [population, layer, block] summaries, got {tuple(val.shape)}")
            _check_layers(val.shape[1], layer_labels, method)
            for p, pop in enumerate(populations):
                for b, blk in enumerate(st.blocks):
                    fig.add_trace(
                        go.Scatter(
                            x=layer_labels,
                            y=val[p, :, b].tolist(),
                            mode="lines+markers",
                            name=f"{blk} ({pop})",
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
        title=title, height=330 * len(methods) + 80, width=420 * len(summaries) + 200, template="plotly_white"
    )
    return fig


def head_heatmap_figure(
    maps: HeadMaps, names: list[str], cols: int = 3, title: str = "Per-head summaries", shared_scale: bool = True
) -> go.Figure:
    """``[layer, head]`` heatmaps, one panel per map, hover text "L3H7: value".

    Args:
        maps: :class:`~tlprobe.analyses.depth.HeadMaps`.
        names: which maps to draw (``maps.names`` entries).
        cols: panels per row.
        title: figure title.
        shared_scale: one colour scale for all panels (use for maps of the same statistic).
    """
    if not names:
        raise TlprobeError("give at least one map name")
    rows = (len(names) + cols - 1) // cols
    fig = make_subplots(
        rows=rows,
        cols=min(cols, len(names)),
        subplot_titles=list(names),
        horizontal_spacing=0.07,
        vertical_spacing=0.14 if rows > 1 else 0.1,
    )
    labels = maps.labels
    layers = [str(i) for i in maps.layers]
    heads = list(range(maps.values.shape[-1]))
    for k, name in enumerate(names):
        z = maps[name]
        r, c = k // cols + 1, k % cols + 1
        kwargs = dict(coloraxis="coloraxis") if shared_scale else dict(colorscale="Viridis", showscale=False)
        fig.add_trace(
            go.Heatmap(
                z=z.tolist(),
                x=heads,
                y=layers,
                text=labels,
                name=name,
                hovertemplate=f"%{{text}}<br>{name}=%{{z:.4f}}<extra></extra>",
                **kwargs,
            ),
            row=r,
            col=c,
        )
        fig.update_xaxes(title_text="head", row=r, col=c, dtick=1 if len(heads) <= 16 else None)
        fig.update_yaxes(title_text="layer", row=r, col=c, type="category")
    extra = dict(coloraxis=dict(colorscale="Viridis")) if shared_scale else {}
    fig.update_layout(
        title=title, height=300 * rows + 100, width=min(cols, len(names)) * 400 + 120, template="plotly_white", **extra
    )
    return fig


def head_block_figure(
    stats: dict[str, BlockStats],
    head_names: list[str],
    summary: str = "frac_extreme",
    title: str | None = None,
) -> go.Figure:
    """One layer's ``[head, block]`` summary as heatmaps, one panel per method, hover "L3H7".

    Args:
        stats: method -> block statistics whose summaries are ``[head, block]`` (e.g.
            :func:`~tlprobe.analyses.depth.depth_block_similarity` of ``split_heads(samples, H)``).
        head_names: one name per head, e.g. ``["L3H0", "L3H1", ...]``.
        summary: ``frac_extreme``, ``std``, ``mean`` or ``mean_abs``.
        title: figure title.
    """
    methods = list(stats)
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, horizontal_spacing=0.12)
    for c, method in enumerate(methods, start=1):
        st = stats[method]
        val = getattr(st, summary)
        if val.ndim != 2 or val.shape[0] != len(head_names):
            raise TlprobeError(
                f"{method}: expected [head, block] summaries for {len(head_names)} heads, got {tuple(val.shape)}"
            )
        text = [[f"{h} {b}" for b in st.blocks] for h in head_names]
        fig.add_trace(
            go.Heatmap(
                z=val.tolist(),
                x=list(st.blocks),
                y=head_names,
                text=text,
                coloraxis="coloraxis",
                hovertemplate=f"%{{text}}<br>{summary}=%{{z:.4f}}<extra>{method}</extra>",
            ),
            row=1,
            col=c,
        )
        fig.update_yaxes(type="category", autorange="reversed", row=1, col=c)
    thr = stats[methods[0]].extreme
    name = f"fraction |s| > {thr:g}" if summary == "frac_extreme" else summary
    fig.update_layout(
        title=title or f"Per head: {name}",
        template="plotly_white",
        height=max(320, 22 * len(head_names) + 150),
        width=420 * len(methods) + 150,
        coloraxis=dict(colorscale="Viridis", colorbar=dict(title=name)),
    )
    return fig
