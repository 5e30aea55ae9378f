"""Figures for the lenses (L15-L17). They plot results; they compute no statistics.

Token strings reach plotly through :func:`plotly_text`: plotly renders text as pseudo-HTML
(``<b>``, ``<br>``, ``<a href>`` are interpreted; entities are decoded) and treats ``$...$`` as
LaTeX, so tokens are HTML-escaped and ``$`` written as an entity: they then show literally.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from tlprobe.analyses.lens import EmbeddingLensResult, LensResult
from tlprobe.errors import TlprobeError
from tlprobe.figures.views import CircuitsVisView, circuitsvis_view, plotly_text

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def _decode(tokenizer, i: int) -> str:
    return tokenizer.decode([int(i)])


def _real_positions(result, batch: int) -> list[int]:
    if not 0 <= batch < result.mask.shape[0]:
        raise TlprobeError(f"batch {batch} is out of range: the result has {result.mask.shape[0]} prompts")
    return result.mask[batch].nonzero().flatten().tolist()


def _value_name(result) -> tuple[str, str]:
    if isinstance(result, EmbeddingLensResult):
        return "cosine with W_E row", "nearest W_E row"
    return "probability", "top-1 token"


def lens_grid_figure(
    result: LensResult | EmbeddingLensResult,
    input_tokens: Sequence[str],
    tokenizer,
    batch: int = 0,
    hover_k: int = 5,
    title: str | None = None,
) -> go.Figure:
    """The familiar lens picture: [depth x position] grid of the top-1 token, value as colour.

    For a logit/MLM lens the colour is the top-1 probability and the cell text the predicted
    token; for the embedding lens the colour is the cosine with the nearest ``W_E`` row and the
    text that row's token: token identity, not a prediction (the title says so). Hovering a
    cell lists the ``hover_k`` best tokens.

    Args:
        result: a lens result.
        input_tokens: the prompt's tokens as strings, one per position of ``result`` (padding
            positions, outside ``result.mask``, are dropped).
        tokenizer: anything with ``decode([id])``, to name the token ids.
        batch: which prompt of the result.
        hover_k: tokens listed in the hover box (at most the result's top-k).
        title: figure title (default says which lens).
    """
    pos = _real_positions(result, batch)
    if len(input_tokens) != result.mask.shape[1]:
        raise TlprobeError(
            f"{len(input_tokens)} input tokens for {result.mask.shape[1]} positions; pass the padded prompt's tokens"
        )
    k = min(hover_k, result.top_ids.shape[-1])
    top = result.top(k)
    ids = top.ids[:, batch][:, pos].cpu()  # [depth, n, k]
    vals = top.values[:, batch][:, pos].cpu().float()
    value_name, what = _value_name(result)
    cell_text, hover = [], []
    for d in range(ids.shape[0]):
        row_t, row_h = [], []
        for j in range(ids.shape[1]):
            toks = [plotly_text(_decode(tokenizer, t)) for t in ids[d, j].tolist()]
            row_t.append(toks[0])
            lines = "<br>".join(f"{t!s} ({v:.3f})" for t, v in zip(toks, vals[d, j].tolist()))
            row_h.append(lines)
        cell_text.append(row_t)
        hover.append(row_h)
    xt = [f"{i}: {plotly_text(input_tokens[p])}" for i, p in enumerate(pos)]
    fig = go.Figure(
        go.Heatmap(
            z=vals[..., 0].tolist(),
            x=list(range(len(pos))),
            y=list(range(len(result.labels))),
            text=cell_text,
            texttemplate="%{text}",
            textfont=dict(size=10),
            customdata=hover,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar=dict(title=dict(text=value_name)),
            hovertemplate=(
                "depth %{y}, position %{x}<br>" + f"top {k} ({value_name}):<br>" + "%{customdata}<extra></extra>"
            ),
        )
    )
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(pos))), ticktext=xt, title="input position")
    fig.update_yaxes(
        tickmode="array",
        tickvals=list(range(len(result.labels))),
        ticktext=list(result.labels),
        title="residual stream after",
        autorange="reversed",
    )
    default = f"{result.kind}: {what} per depth and position"
    fig.update_layout(
        title=title or default,
        template="plotly_white",
        height=max(320, 48 * len(result.labels) + 160),
        width=max(700, 90 * len(pos) + 260),
    )
    return fig


def target_trajectory_figure(
    result: LensResult,
    target_names: Sequence[str],
    batch: int = 0,
    position: int = -1,
) -> go.Figure:
    """Rank (log scale) and probability of each target token across depth, at one position.

    Args:
        result: a logit or MLM lens result with targets.
        target_names: display names of ``result.target_ids`` (same order).
        batch: which prompt.
        position: index among the prompt's real positions (``-1``: the last real token, whose
            prediction is the next token for a decoder).
    """
    n_t = result.target_ids.numel()
    if n_t == 0:
        raise TlprobeError("the result has no targets: run the lens with targets=[...]")
    if len(target_names) != n_t:
        raise TlprobeError(f"{len(target_names)} target names for {n_t} targets")
    pos = _real_positions(result, batch)
    if not -len(pos) <= position < len(pos):
        raise TlprobeError(f"position {position} is out of range for a prompt of {len(pos)} real tokens")
    p = pos[position]
    ranks = result.target_ranks[:, batch, p].cpu()
    probs = result.target_probs[:, batch, p].cpu().float()
    x = list(result.labels)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("rank in the vocabulary (0 = top)", "probability"))
    for t in range(n_t):
        name = plotly_text(target_names[t])
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
    fig.update_yaxes(type="log", title="rank + 1 (log)", autorange="reversed", row=1, col=1)
    fig.update_yaxes(title="probability", rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title="residual stream after")
    fig.update_layout(
        title=f"{result.kind}: target tokens across depth (prompt {batch}, position {p})",
        template="plotly_white",
        height=420,
        width=1100,
    )
    return fig


def kl_entropy_figure(result: LensResult, batch: int | None = None) -> go.Figure:
    """KL divergence to the final distribution and entropy per depth (nats).

    Thin grey lines: every real position of prompt ``batch`` (all prompts when ``None`` and the
    result is small); thick line: the mean over real positions from
    :meth:`~tlprobe.analyses.lens.LensResult.layer_summary`.
    """
    summary = result.layer_summary()
    x = list(result.labels)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("KL(final || depth), nats", "entropy, nats"))
    prompts = range(result.mask.shape[0]) if batch is None else [batch]
    shown = 0
    for b in prompts:
        for p in _real_positions(result, b):
            if shown >= 200:
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
    for col, key in ((1, "mean_kl_to_final"), (2, "mean_entropy")):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[r[key] for r in summary],
                mode="lines+markers",
                name="mean over positions",
                showlegend=col == 1,
                line=dict(color=_COLORS[0], width=3),
            ),
            row=1,
            col=col,
        )
    fig.update_xaxes(title="residual stream after")
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(
        title=f"{result.kind}: distance to the final prediction and uncertainty per depth",
        template="plotly_white",
        height=420,
        width=1100,
    )
    return fig


def recovery_figure(rows: Sequence[dict], title: str | None = None) -> go.Figure:
    """Embedding lens: how often the input token is the nearest (top-1) / among the 5 nearest
    ``W_E`` rows, per depth; rows from :meth:`EmbeddingLensResult.layer_summary`."""
    x = [r["label"] for r in rows]
    fig = go.Figure()
    for key, name, color in (
        ("top1_recovery", "top-1", _COLORS[0]),
        ("top5_recovery", "top-5", _COLORS[2]),
        ("mean_cosine_with_input_token", "mean cosine with own row", _COLORS[4]),
    ):
        fig.add_trace(
            go.Scatter(x=x, y=[r[key] for r in rows], mode="lines+markers", name=name, line=dict(color=color))
        )
    fig.update_yaxes(range=[0, 1.05], title="fraction / cosine")
    fig.update_xaxes(title="residual stream after")
    fig.update_layout(
        title=title or "Embedding lens: is the input token still recoverable? (token identity, not prediction)",
        template="plotly_white",
        height=420,
        width=900,
    )
    return fig


def target_topk_view(
    result: LensResult,
    prompts_tokens: Sequence[Sequence[str]],
    k: int = 5,
) -> CircuitsVisView:
    """circuitsvis ``TopkTokens``: for each depth and target, the positions where the lens gives
    the target the highest (and lowest) probability, across prompts.

    The component's third dimension ("Target") is numbered in the order of
    ``result.target_ids``. The sort is a display selection of probabilities the lens computed.

    Args:
        result: a lens result with targets.
        prompts_tokens: per prompt, its tokens (one per position of the result; padding
            positions are dropped).
        k: positions shown per table (capped by the prompt length).
    """
    n_t = result.target_ids.numel()
    if n_t == 0:
        raise TlprobeError("the result has no targets: run the lens with targets=[...]")
    if len(prompts_tokens) != result.mask.shape[0]:
        raise TlprobeError(f"{len(prompts_tokens)} token lists for {result.mask.shape[0]} prompts")
    tokens, top_v, top_i, bot_v, bot_i = [], [], [], [], []
    for b, toks in enumerate(prompts_tokens):
        pos = _real_positions(result, b)
        probs = result.target_probs[:, b][:, pos].detach().cpu().float()  # [depth, n, T]
        kk = min(k, len(pos))
        tv, ti = probs.topk(kk, dim=1)
        bv, bi = probs.topk(kk, dim=1, largest=False)
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
        firstDimensionLabels=list(result.labels),
        sampleLabels=[f"prompt {b}" for b in range(len(tokens))],
    )
