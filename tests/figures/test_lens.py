"""Lens figures: one result in, every label (depths, tokens, targets) read from it, tokens escaped."""

from __future__ import annotations

import dataclasses

import plotly.graph_objects as go
import pytest
import torch

from tlprobe.access.hooks import resid_hook_names
from tlprobe.access.run import run_batch
from tlprobe.access.unembed import TokenStrings, content_mask, decode_tokens
from tlprobe.analyses.lens import embedding_lens, logit_lens
from tlprobe.errors import TlprobeError
from tlprobe.figures.lens import (
    MAX_WIDTH,
    kl_entropy_figure,
    lens_grid_figure,
    recovery_figure,
    target_topk_view,
    target_trajectory_figure,
)
from tlprobe.figures.views import defuse_html, plotly_text
from tlprobe.testing import tiny_model

PROMPTS = ["She gave her the book because she liked it", "The quick brown fox"]
TARGETS = [" her", " the"]


@pytest.fixture(scope="module")
def decoder():
    model = tiny_model("gpt2", n_layers=2)
    batch = run_batch(model, PROMPTS, names=resid_hook_names(model))
    res = logit_lens(batch.cache, TARGETS, top_k=5, attention_mask=batch.attention_mask, tokens=batch.tokens)
    return model, batch, res


@pytest.fixture(scope="module")
def embedding(minilm):
    text = ["The Eiffel Tower is in the city of Paris.", "She gave her the book because she liked it."]
    batch = run_batch(minilm, text, names=resid_hook_names(minilm))
    mask = content_mask(minilm, batch.tokens, batch.attention_mask)
    return minilm, batch, embedding_lens(batch.cache, batch.tokens, mask=mask)


def _with_token_text(res, token_id: int, text: str):
    """The result with one token's text replaced (to check escaping)."""
    strings = list(res.vocab.strings)
    strings[res.vocab.ids.tolist().index(token_id)] = text
    return dataclasses.replace(res, vocab=TokenStrings(ids=res.vocab.ids, strings=tuple(strings)))


def test_plotly_text_escapes_tokens():
    assert plotly_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert plotly_text("$x$") == "&#36;x&#36;"
    assert plotly_text("a\nb") == "a\\nb"


def test_grid_reads_depths_tokens_and_values_from_the_result(decoder):
    model, batch, res = decoder
    grid = lens_grid_figure(res)
    heat = grid.data[0]
    n_real = int(batch.attention_mask[1].sum())
    assert list(grid.layout.yaxis.ticktext) == list(res.axes["depth"])
    assert len(heat.z) == len(res.axes["depth"]) and len(heat.z[0]) == int(batch.attention_mask[0].sum())
    torch.testing.assert_close(
        torch.tensor(heat.z), res.top_probs[:, 0, : len(heat.z[0]), 0].float(), atol=1e-6, rtol=0
    )
    tokens = decode_tokens(model, batch.tokens[0].tolist())
    assert grid.layout.xaxis.ticktext[1] == f"1: {plotly_text(tokens[1])}"
    assert heat.text[0][0] == plotly_text(decode_tokens(model, [int(res.top_ids[0, 0, 0, 0])])[0])
    # padding positions (outside the mask) are left out
    assert len(lens_grid_figure(res, batch=1).data[0].z[0]) == n_real < len(heat.z[0])
    assert res.figure().to_plotly_json() == grid.to_plotly_json()  # the registered main figure


def test_figures_escape_tokens(decoder):
    _, batch, res = decoder
    bold = _with_token_text(res, int(batch.tokens[0, 1]), "<b>bold</b>")
    grid = lens_grid_figure(bold)
    assert "&lt;b&gt;bold&lt;/b&gt;" in grid.layout.xaxis.ticktext[1]
    view = target_topk_view(bold)
    # TopkTokens inserts tokens as HTML: they are defused (inert, same text), see figures.views
    assert defuse_html("<b>bold</b>") in view.props["tokens"][0] and "<b>bold</b>" not in view.props["tokens"][0]


def test_target_figures_read_names_from_the_result(decoder):
    _, batch, res = decoder
    n_real = int(batch.attention_mask[0].sum())
    traj = target_trajectory_figure(res)
    assert len(traj.data) == 2 * len(TARGETS)
    assert traj.data[0].name == plotly_text(repr(TARGETS[0])) and list(traj.data[0].x) == list(res.axes["depth"])
    assert list(traj.data[0].customdata) == res.target_ranks[:, 0, n_real - 1, 0].tolist()
    view = target_topk_view(res, k=3)
    assert view.component == "TopkTokens" and view.props["firstDimensionLabels"] == list(res.axes["depth"])
    assert len(view.props["tokens"]) == len(PROMPTS)
    no_targets = logit_lens(batch.cache, top_k=2, tokens=batch.tokens)
    with pytest.raises(TlprobeError, match="no targets"):
        target_trajectory_figure(no_targets)
    with pytest.raises(TlprobeError, match="no input tokens"):
        target_topk_view(logit_lens(batch.cache, TARGETS, top_k=2))
    with pytest.raises(TlprobeError, match="out of range"):
        target_trajectory_figure(res, position=99)


def test_kl_entropy_figure_draws_the_result_means(decoder):
    _, batch, res = decoder
    fig = kl_entropy_figure(res)
    assert isinstance(fig, go.Figure)
    means = [t for t in fig.data if t.name == "mean over positions"]
    assert list(means[0].y) == res.mean_kl_to_final.tolist() and list(means[1].y) == res.mean_entropy.tolist()
    n_lines = int(batch.attention_mask.sum())
    assert len(fig.data) == 2 * n_lines + 2


def test_grid_without_tokens_and_of_one_depth(decoder):
    _, batch, _ = decoder
    res = logit_lens(batch.cache, top_k=2)
    assert list(lens_grid_figure(res).layout.xaxis.ticktext[:2]) == ["0", "1"]
    with pytest.raises(TlprobeError, match="no depth axis"):
        lens_grid_figure(res["embed"])
    with pytest.raises(TlprobeError, match="batch 5 is out of range"):
        lens_grid_figure(res, batch=5)


def test_embedding_figures_are_labelled(embedding):
    _, _, res = embedding
    fig = lens_grid_figure(res)
    # the caveat (token identity, not prediction) is a finding a report states once; titles say what is drawn
    assert fig.layout.title.text == "embedding lens: nearest W_E row per depth and position"
    assert fig.data[0].colorbar.title.text == "cosine with W_E row"
    rec = recovery_figure(res)
    assert "nearest W_E row" in rec.layout.title.text and "prediction" not in rec.layout.title.text
    assert list(rec.data[0].x) == list(res.axes["depth"])
    assert list(rec.data[0].y) == res.top1_recovery.tolist() and list(rec.data[1].y) == res.top5_recovery.tolist()
    assert list(rec.data[2].y) == res.mean_cosine_with_input_token.tolist()
    assert res.figure().layout.title.text == fig.layout.title.text


def test_grid_hover_names_the_depth_and_token_and_width_is_capped(decoder):
    _, _, res = decoder
    grid = lens_grid_figure(res)
    assert (
        grid.data[0]
        .customdata[1][2]
        .startswith(f"{res.axes['depth'][1]}, position {grid.layout.xaxis.ticktext[2]}<br>")
    )
    assert grid.layout.width <= MAX_WIDTH


def test_a_panel_of_zeros_says_so(decoder):
    _, _, res = decoder
    assert not kl_entropy_figure(res).layout.annotations[2:]  # only the two subplot titles
    zero = dataclasses.replace(res, kl_to_final=torch.zeros_like(res.kl_to_final))
    notes = [a.text for a in kl_entropy_figure(zero).layout.annotations]
    assert notes.count("all values are 0 at every depth") == 1
    flat = dataclasses.replace(res, target_probs=torch.zeros_like(res.target_probs))
    assert "all values are 0 at every depth" in [a.text for a in target_trajectory_figure(flat).layout.annotations]


def test_figure_colours_are_valid_plotly_colours(decoder, embedding):
    figs = [
        lens_grid_figure(decoder[2]),
        target_trajectory_figure(decoder[2]),
        kl_entropy_figure(decoder[2]),
        recovery_figure(embedding[2]),
    ]
    for fig in figs:
        go.Figure(fig.to_plotly_json())  # plotly validates every colour on construction


def test_a_space_token_is_visible_in_the_grid(decoder):
    _, batch, res = decoder
    spaced = _with_token_text(res, int(batch.tokens[0, 1]), "  ")
    assert lens_grid_figure(spaced).layout.xaxis.ticktext[1] == "1: \u2423\u2423"
