"""Figures across depth and per head: the result's numbers, under the result's own labels ("L2H1")."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from tlprobe.access.hooks import split_heads
from tlprobe.access.labels import head_labels, layer_labels, resid_labels
from tlprobe.analyses.moments import sample_moments
from tlprobe.analyses.similarity import qkv_block_similarity
from tlprobe.errors import TlprobeError
from tlprobe.figures.depth import (
    block_summary_curves_figure,
    depth_histogram_figure,
    head_block_figure,
    head_heatmap_figure,
    moment_curves_figure,
)

POP_LAYER = {"population": ("target", "non-target"), "layer": layer_labels(3)}


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 25, 18, generator=g, dtype=torch.float64)  # [population, layer, samples, 3n]
    return x + 1.5 * torch.randn(2, 3, 1, 18, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def stats():
    return {m: qkv_block_similarity(_data(), m, bins=10, axes=POP_LAYER) for m in ("cosine", "correlation")}


def test_depth_histogram(stats):
    fig = depth_histogram_figure({m: st["target"] for m, st in stats.items()})
    assert len(fig.data) == 12
    dens = stats["cosine"]["target"].density[:, 0].numpy()
    np.testing.assert_allclose(np.array(fig.data[0].customdata), dens)  # hover: the true density
    floor = 10.0**fig.layout.coloraxis.cmin
    np.testing.assert_allclose(np.array(fig.data[0].z, dtype=float), np.log10(np.maximum(dens, floor)))
    linear = depth_histogram_figure({m: st["target"] for m, st in stats.items()}, log_color=False)
    np.testing.assert_allclose(np.array(linear.data[0].z), dens)
    assert list(fig.data[0].y) == ["L0", "L1", "L2"]
    with pytest.raises(TlprobeError, match="select one population"):
        depth_histogram_figure(stats["cosine"])


def _edge_heavy_stats():
    """Cosine-like histograms: most of the mass in the two +-1 bins, a thin spread in between."""
    g = torch.Generator().manual_seed(3)
    offsets = 4 * torch.randn(3, 1, 90, generator=g, dtype=torch.float64)
    x = torch.randn(3, 25, 90, generator=g, dtype=torch.float64) * torch.tensor([0.05, 0.3, 1.0])[:, None, None]
    return qkv_block_similarity(x + offsets, "cosine", bins=40, axes={"layer": layer_labels(3)})


def test_depth_histogram_colours_are_not_washed_out_by_the_edge_bins():
    st = _edge_heavy_stats()
    dens = st.density.numpy()
    assert dens[0, :, [0, -1]].sum() > 0.5 * dens[0].sum()  # the +-1 bins dominate layer 0
    fig = depth_histogram_figure(st)
    axis = fig.layout.coloraxis
    z = np.array([v for t in fig.data for row in t.z for v in row], dtype=float)
    position = (z - axis.cmin) / (axis.cmax - axis.cmin)  # where on the colour bar each cell sits
    assert position.min() >= 0 and position.max() == 1
    inner = np.array([v for t in fig.data for row in t.customdata for v in row[1:-1]], dtype=float)
    typical = np.median(inner[inner > 0])  # a typical occupied bin between the edges
    assert typical / dens.max() < 0.05  # on a linear 0..max scale it would sit in the darkest twentieth
    assert (np.log10(typical) - axis.cmin) / (axis.cmax - axis.cmin) > 0.3  # on the log scale it is visible
    assert axis.cmax - axis.cmin <= 3 + 1e-9  # a robust range: 3 decades below the top
    assert axis.colorscale[0][1] and all(isinstance(c[1], str) for c in axis.colorscale)
    assert list(axis.colorbar.ticktext)[:1] and all(float(t) > 0 for t in axis.colorbar.ticktext)
    # linear: the 99th percentile caps the scale, so the tallest bins saturate instead of washing out
    lin = depth_histogram_figure(st, log_color=False).layout.coloraxis
    assert lin.cmin == 0 and lin.cmax < dens.max()


def test_block_summary_curves(stats):
    fig = block_summary_curves_figure(stats)
    assert len(fig.data) == 2 * 3 * 2 * 6  # methods x summaries x populations x blocks
    assert fig.data[6].name == "QQ (non-target)" and list(fig.data[6].x) == ["L0", "L1", "L2"]
    assert list(fig.data[6].y) == stats["cosine"].frac_extreme[1, :, 0].tolist()


def test_moment_curves():
    x = _data()
    moments = {
        "Q|K|V": sample_moments(x, axes=POP_LAYER),
        "residual stream": sample_moments(x[:, :, :, :4], axes={**POP_LAYER, "layer": resid_labels(2)}),
    }
    fig = moment_curves_figure(moments)
    assert list(fig.data[0].y) == moments["Q|K|V"].var[0].tolist() and fig.data[0].name == "target"
    assert list(fig.data[0].x) == ["L0", "L1", "L2"] and list(fig.data[8].x) == ["embed", "L0", "L1"]
    assert len(moments["Q|K|V"].figure().data) == 4 * 2  # the main figure of Moments


def test_head_heatmaps_read_l3h7_labels():
    x = _data()
    heads = split_heads(x[0], 3)  # [layer, head, s, 3 * dh]
    axes = {"layer": layer_labels(3), "head": head_labels(3)}
    st = qkv_block_similarity(heads, bins=10, axes=axes)
    fig = head_heatmap_figure(st, "frac_extreme")
    assert len(fig.data) == 6 and fig.layout.annotations[1].text == "cosine QK frac_extreme"
    assert fig.data[1].text[2][1] == "L2H1"
    assert np.array(fig.data[1].z).tolist() == st.frac_extreme[..., 1].tolist()
    mo = sample_moments(split_heads(x, 3), axes={**POP_LAYER, "head": head_labels(3)})  # [population, layer, head]
    fig = head_heatmap_figure(mo, "rel_var", cols=2)
    assert [a.text for a in fig.layout.annotations] == ["target rel_var", "non-target rel_var"]
    assert np.array(fig.data[1].z).tolist() == mo.rel_var[1].tolist() and fig.data[1].text[0][2] == "L0H2"
    with pytest.raises(TlprobeError, match="layer, head"):
        head_heatmap_figure(st["L0"], "std")


def test_head_block_figure():
    x = _data()[0, 1]
    per_head = {
        m: qkv_block_similarity(split_heads(x, 3), m, bins=10, axes={"head": head_labels(3, layer=1)})
        for m in ("cosine", "correlation")
    }
    fig = head_block_figure(per_head, "std")
    assert len(fig.data) == 2 and list(fig.data[0].y) == ["L1H0", "L1H1", "L1H2"]
    assert np.array(fig.data[1].z).tolist() == per_head["correlation"].std.tolist()
    assert fig.data[0].text[2][3] == "L1H2 KK"
    # each panel its own colour scale: a method with tiny values is not one dark block beside the other
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis2"]
    assert fig.layout.coloraxis2.colorbar.x > fig.layout.xaxis2.domain[1] > fig.layout.coloraxis.colorbar.x
    assert not fig.layout.annotations[2:]  # only the two panel titles
    none = dataclasses.replace(per_head["cosine"], frac_extreme=0 * per_head["cosine"].frac_extreme)
    zeros = {"cosine": per_head["cosine"], "zeros": none}
    notes = [a.text for a in head_block_figure(zeros, "frac_extreme").layout.annotations]
    assert notes[2:] == ["all values 0"]


def test_undefined_items_are_gaps_and_blank_cells():
    """Items computed with undefined="nan" (e.g. a rotary model's layer 0) plot as null: no error, no number."""
    x = _data()
    x[0, 0] = x[0, 0, :1]  # target, layer 0: the same vector in every sample
    st = {m: qkv_block_similarity(x, m, bins=10, axes=POP_LAYER, undefined="nan") for m in ("cosine", "correlation")}
    assert bool(st["correlation"].std[0, 0].isnan().all()) and not bool(st["cosine"].std.isnan().any())
    hist = json.loads(depth_histogram_figure({m: s["target"] for m, s in st.items()}).to_json())
    z = hist["data"][6]["z"]  # correlation QQ
    assert z[0] == [None] * 10 and None not in z[1]
    curves = json.loads(str(block_summary_curves_figure(st).to_json()))
    corr_std = next(t for t in curves["data"][36:] if t["name"] == "QQ (target)" and "std" in t["hovertemplate"])
    assert corr_std["y"][0] is None and corr_std["y"][1] is not None
    heads = split_heads(x, 3)
    per_head = qkv_block_similarity(
        heads, "correlation", bins=10, axes={**POP_LAYER, "head": head_labels(3)}, undefined="nan"
    )
    cells = json.loads(str(head_heatmap_figure(per_head[:1], "frac_extreme").to_json()))["data"][0]["z"]
    assert cells[0] == [None] * 3 and None not in cells[1]
    for fig in (hist, curves):
        json.dumps(fig, allow_nan=False)  # the report's embedding refuses NaN
