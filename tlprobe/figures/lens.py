"""Figures for the lenses (L15-L17). They plot results; they compute no statistics.

Every label comes from the result: depth labels from ``result.axes["depth"]``, token strings
from ``result.vocab`` (input tokens, top-k tokens), target names from ``result.target_names``.
Token strings reach plotly through :func:`~tlprobe.figures.views.plotly_text`: plotly renders
text as pseudo-HTML (``<b>``, ``<br>``, ``<a href>`` are interpreted; entities are decoded) and
treats ``$...$`` as LaTeX, so tokens are HTML-escaped and ``$`` written as an entity: they then
show literally.
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from tlprobe.analyses.lens import EmbeddingLensResult, LensResult
from tlprobe.errors import TlprobeError
from tlprobe.figures.views import CircuitsVisView, circuitsvis_view, plotly_text
from tlprobe.result import register_figure

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")
#: Thin per-position lines drawn at most by :func:`kl_entropy_figure` (the mean is always drawn).
MAX_POSITION_LINES = 200
#: Widest grid (pixels): a report page is about this wide; more positions get narrower cells.
MAX_WIDTH = 1200


def _real_positions(result: LensResult | EmbeddingLensResult, batch: int) -> list[int]:
    if not 0 <= batch < result.mask.shape[0]:
        raise TlprobeError(f"batch {batch} is out of range: the result has {result.mask.shape[0]} prompts")
    return result.mask[batch].nonzero().flatten().tolist()


def _depths(result: LensResult | EmbeddingLensResult) -> list[str]:
    if "depth" not in result.axes:
        raise TlprobeError("the result has no depth axis (a single depth was selected); plot the whole result")
    return list(result.axes["depth"])


def _visible(text: str) -> str:
    """A token that is only spaces shows as open boxes (an empty cell or tick would look missing)."""
    return text if text.strip() else "␣" * max(len(text), 1)


def _lens_name(result: LensResult | EmbeddingLensResult) -> str:
    """The lens's short name for titles (the embedding lens's kind carries its caveat; a report states it once)."""
    return "embedding lens" if isinstance(result, EmbeddingLensResult) else result.kind


def _flag_if_zero(fig: go.Figure, values: list[list[float]], *, row: int | None = None, col: int | None = None) -> None:
    """Write "all values are 0" on a panel whose every value is 0, so that it does not look empty."""
    if any(v != 0 for series in values for v in series):
        return
    where = {} if row is None else {"row": row, "col": col}
    fig.add_annotation(
        text="all values are 0 at every depth", showarrow=False, xref="x domain", yref="y domain", x=0.5, y=0.5, **where
    )


def _input_tokens(result: LensResult | EmbeddingLensResult, batch: int) -> list[str] | None:
    """The prompt's tokens as text, one per position (``None``: the lens was run without tokens)."""
    if result.token_ids is None:
        return None
    return result.vocab.decode(result.token_ids[batch])  # type: ignore[return-value]


@register_figure(LensResult)
@register_figure(EmbeddingLensResult)
def lens_grid_figure(
    result: LensResult | EmbeddingLensResult, *, batch: int = 0, hover_k: int = 5, title: str | None = None
) -> go.Figure:
    """The familiar lens picture: [depth x position] grid of the top-1 token, value as colour.

    For a logit/MLM lens the colour is the top-1 probability and the cell text the predicted
    token; for the embedding lens the colour is the cosine with the nearest ``W_E`` row and the
    text that row's token: token identity, not a prediction (the title says so). Hovering a
    cell lists the ``hover_k`` best tokens. Padding positions (outside ``result.mask``) are left
    out; the x axis names each position by its input token when the result holds them.

    Args:
        result: a lens result.
        batch: which prompt of the result.
        hover_k: tokens listed in the hover box (at most the result's top-k).
        title: figure title (default says which lens).

    Example:
        >>> from tlprobe.analyses.lens import logit_lens
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("gpt2")
        >>> tokens = model.to_tokens("She gave her the book")
        >>> _, cache = model.run_with_cache(tokens)
        >>> fig = lens_grid_figure(logit_lens(cache, top_k=3, tokens=tokens))
        >>> list(fig.layout.yaxis.ticktext), fig.layout.xaxis.ticktext[1]
        (['embed', 'block 0', 'block 1'], '1: She')
    """
    depths = _depths(result)
    pos = _real_positions(result, batch)
    top = result.top(min(hover_k, result.top_ids.shape[-1]))
    k = top.ids.shape[-1]
    ids = top.ids[:, batch][:, pos].cpu()  # [depth, n, k]
    vals = top.values[:, batch][:, pos].cpu().float()
    text = plotly_text(result.vocab.decode(ids))
    value_name, what = (
        ("cosine with W_E row", "nearest W_E row")
        if isinstance(result, EmbeddingLensResult)
        else ("probability", "top-1 token")
    )
    cell_text = [[_visible(cell[0]) for cell in row] for row in text]
    hover = [
        ["<br>".join(f"{t!s} ({v:.3f})" for t, v in zip(toks, vs)) for toks, vs in zip(row_t, row_v)]
        for row_t, row_v in zip(text, vals.tolist())
    ]
    tokens = _input_tokens(result, batch)
    xt = [f"{i}: {_visible(str(plotly_text(tokens[p])))}" if tokens else str(p) for i, p in enumerate(pos)]
    hover = [[f"{depths[d]}, position {xt[i]}<br>{cell}" for i, cell in enumerate(row)] for d, row in enumerate(hover)]
    fig = go.Figure(
        go.Heatmap(
            z=vals[..., 0].tolist(),
            x=list(range(len(pos))),
            y=list(range(len(depths))),
            text=cell_text,
            texttemplate="%{text}",
            textfont=dict(size=10 if len(pos) <= 14 else 8),
            customdata=hover,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar=dict(title=dict(text=value_name)),
            hovertemplate=(f"top {k} ({value_name}) at " + "%{customdata}<extra></extra>"),
        )
    )
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(pos))), ticktext=xt, title="input position")
    fig.update_yaxes(
        tickmode="array",
        tickvals=list(range(len(depths))),
        ticktext=depths,
        title="depth (residual stream after)",
        autorange="reversed",
    )
    fig.update_layout(
        title=title or f"{_lens_name(result)}: {what} per depth and position",
        template="plotly_white",
        height=max(320, 48 * len(depths) + 160),
        width=min(MAX_WIDTH, max(700, 90 * len(pos) + 260)),
    )
    return fig


def target_trajectory_figure(result: LensResult, *, batch: int = 0, position: int = -1) -> go.Figure:
    """Rank (log scale) and probability of each target token across depth, at one position.

    Targets are named by their ``repr`` (``' Paris'`` shows its space), in the order of
    ``result.target_names``.

    Args:
        result: a logit or MLM lens result with targets.
        batch: which prompt.
        position: index among the prompt's real positions (``-1``: the last real token, whose
            prediction is the next token for a decoder).

    Example:
        >>> from tlprobe.analyses.lens import logit_lens
        >>> from tlprobe.testing import tiny_model
        >>> _, cache = tiny_model("gpt2").run_with_cache("She gave her the book")
        >>> [t.name for t in target_trajectory_figure(logit_lens(cache, [" her"], top_k=3)).data]
        ["' her'", "' her'"]
    """
    if not result.target_names:
        raise TlprobeError("the result has no targets: run the lens with targets=[...]")
    x = _depths(result)
    pos = _real_positions(result, batch)
    if not -len(pos) <= position < len(pos):
        raise TlprobeError(f"position {position} is out of range for a prompt of {len(pos)} real tokens")
    p = pos[position]
    ranks = result.target_ranks[:, batch, p].cpu()
    probs = result.target_probs[:, batch, p].cpu().float()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("rank in the vocabulary (0 = top)", "probability"))
    for t, target in enumerate(result.target_names):
        name = plotly_text(repr(target))
        color = _COLORS[t % len(_COLORS)]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=(ranks[:, t] + 1).tolist(),
                customdata=ranks[:, t].tolist(),
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line=dict(color=color),
                hovertemplate=f"{name}<br>%{{x}}: rank %{{customdata}}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=probs[:, t].tolist(),
                mode="lines+markers",
                name=name,
                legendgroup=name,
                showlegend=False,
                line=dict(color=color),
                hovertemplate=f"{name}<br>%{{x}}: p=%{{y:.4f}}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    _flag_if_zero(fig, probs.T.tolist(), row=1, col=2)
    fig.update_yaxes(type="log", title="rank + 1 (log)", autorange="reversed", row=1, col=1)
    fig.update_yaxes(title="probability", rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title="depth (residual stream after)")
    fig.update_layout(
        title=f"{result.kind}: target tokens across depth (prompt {batch}, position {p})",
        template="plotly_white",
        height=420,
        width=1100,
    )
    return fig


def kl_entropy_figure(result: LensResult, *, batch: int | None = None) -> go.Figure:
    """KL divergence to the final distribution and entropy per depth (nats).

    Thin grey lines: every real position of prompt ``batch`` (all prompts when ``None``, up to
    :data:`MAX_POSITION_LINES`); thick line: the means over real positions
    (``result.mean_kl_to_final``, ``result.mean_entropy``).

    Example:
        >>> from tlprobe.analyses.lens import logit_lens
        >>> from tlprobe.testing import tiny_model
        >>> _, cache = tiny_model("gpt2").run_with_cache("She gave her")
        >>> fig = kl_entropy_figure(logit_lens(cache, top_k=3))
        >>> fig.data[-2].y[-1]  # the mean KL to the final distribution, at the last depth
        0.0
    """
    x = _depths(result)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("KL(final || depth), nats", "entropy, nats"))
    prompts = range(result.mask.shape[0]) if batch is None else [batch]
    shown = 0
    for b in prompts:
        for p in _real_positions(result, b):
            if shown >= MAX_POSITION_LINES:
                break
            shown += 1
            for col, series in ((1, result.kl_to_final), (2, result.entropy)):
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=series[:, b, p].cpu().float().tolist(),
                        mode="lines",
                        line=dict(color="rgba(120,120,120,0.35)", width=1),
                        showlegend=False,
                        hovertemplate=f"prompt {b}, position {p}<br>%{{x}}: %{{y:.3f}}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
    for col, mean in ((1, result.mean_kl_to_final), (2, result.mean_entropy)):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=mean.tolist(),
                mode="lines+markers",
                name="mean over positions",
                showlegend=col == 1,
                line=dict(color=_COLORS[0], width=3),
            ),
            row=1,
            col=col,
        )
    for col, series in ((1, result.kl_to_final), (2, result.entropy)):
        _flag_if_zero(fig, [series.detach().cpu().float().flatten().tolist()], row=1, col=col)
    fig.update_xaxes(title="depth (residual stream after)")
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(
        title=f"{result.kind}: distance to the final prediction and uncertainty per depth",
        template="plotly_white",
        height=420,
        width=1100,
    )
    return fig


def recovery_figure(result: EmbeddingLensResult, *, title: str | None = None) -> go.Figure:
    """Embedding lens: how often the input token is the nearest (top-1) / among the 5 nearest
    ``W_E`` rows, and its mean cosine with its own row, per depth (over ``result.mask``).

    Example:
        >>> from tlprobe.analyses.lens import embedding_lens
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("gpt2")
        >>> tokens = model.to_tokens("She gave her the book")
        >>> _, cache = model.run_with_cache(tokens)
        >>> [t.name for t in recovery_figure(embedding_lens(cache, tokens)).data]
        ['top-1', 'top-5', 'mean cosine with own row']
    """
    x = _depths(result)
    fig = go.Figure()
    drawn = []
    for series, name, color in (
        (result.top1_recovery, "top-1", _COLORS[0]),
        (result.top5_recovery, "top-5", _COLORS[2]),
        (result.mean_cosine_with_input_token, "mean cosine with own row", _COLORS[4]),
    ):
        drawn.append(series.tolist())
        fig.add_trace(go.Scatter(x=x, y=drawn[-1], mode="lines+markers", name=name, line=dict(color=color)))
    _flag_if_zero(fig, drawn)
    fig.update_yaxes(range=[0, 1.05], title="fraction of positions / cosine")
    fig.update_xaxes(title="depth (residual stream after)")
    fig.update_layout(
        title=title or "Embedding lens: how often the input token is still the nearest W_E row",
        template="plotly_white",
        height=420,
        width=900,
    )
    return fig


def target_topk_view(result: LensResult, *, k: int = 5) -> CircuitsVisView:
    """circuitsvis ``TopkTokens``: for each depth and target, the positions where the lens gives
    the target the highest (and lowest) probability, across prompts.

    The component's third dimension ("Target") is numbered in the order of
    ``result.target_names``. The sort is a display selection of probabilities the lens computed.
    Padding positions are dropped.

    Args:
        result: a lens result with targets, run with ``tokens=`` (the view shows them).
        k: positions shown per table (capped by the prompt length).

    Example:
        >>> from tlprobe.analyses.lens import logit_lens
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("gpt2")
        >>> tokens = model.to_tokens("She gave her the book")
        >>> _, cache = model.run_with_cache(tokens)
        >>> view = target_topk_view(logit_lens(cache, [" her"], top_k=3, tokens=tokens), k=2)
        >>> view.component, view.props["tokens"][0][1:3]
        ('TopkTokens', ['She', ' gave'])
    """
    if not result.target_names:
        raise TlprobeError("the result has no targets: run the lens with targets=[...]")
    if result.token_ids is None:
        raise TlprobeError("the result holds no input tokens: run the lens with tokens=batch.tokens")
    depths = _depths(result)
    tokens, top_v, top_i, bot_v, bot_i = [], [], [], [], []
    for b in range(result.mask.shape[0]):
        pos = _real_positions(result, b)
        probs = result.target_probs[:, b][:, pos].detach().cpu().float()  # [depth, n, T]
        kk = min(k, len(pos))
        tv, ti = probs.topk(kk, dim=1)
        bv, bi = probs.topk(kk, dim=1, largest=False)
        toks = _input_tokens(result, b) or []
        tokens.append([toks[p] for p in pos])
        top_v.append(tv.tolist())
        top_i.append(ti.tolist())
        bot_v.append(torch.flip(bv, dims=(1,)).tolist())
        bot_i.append(torch.flip(bi, dims=(1,)).tolist())
    return circuitsvis_view(
        "TopkTokens",
        tokens=tokens,
        topkVals=top_v,
        topkIdxs=top_i,
        bottomkVals=bot_v,
        bottomkIdxs=bot_i,
        firstDimensionName="Depth",
        thirdDimensionName="Target",
        firstDimensionLabels=depths,
        sampleLabels=[f"prompt {b}" for b in range(len(tokens))],
    )
