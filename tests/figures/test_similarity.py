"""Q/K/V block figures show the result's numbers under the result's own labels."""

import json

import numpy as np
import torch

from tlprobe.analyses.similarity import qkv_block_similarity
from tlprobe.figures.similarity import block_histogram_figure, extreme_fraction_figure
from tlprobe.figures.views import index_labels

POPULATIONS = ("target", "non-target", "shuffled")


def _stats():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 30, 12, generator=g, dtype=torch.float64) + torch.randn(3, 1, 12, generator=g)
    return {m: qkv_block_similarity(x, m, bins=10, axes={"population": POPULATIONS}) for m in ("cosine", "correlation")}


def test_histogram_panels_lines_and_labels():
    stats = _stats()
    fig = block_histogram_figure(stats)
    assert len(fig.data) == 2 * 6 * 3  # methods x blocks x populations
    assert [t.name for t in fig.data[:3]] == list(POPULATIONS)
    np.testing.assert_allclose(np.array(fig.data[4].y), stats["cosine"].density[1, 1].numpy())
    assert fig.layout.annotations[7].text == "correlation: QK"
    # the main figure of a BlockStats is its histogram: one row, named by the method
    one = stats["correlation"].figure()
    assert len(one.data) == 6 * 3 and one.layout.annotations[0].text == "correlation: QQ"
    assert sum(bool(t.showlegend) for t in one.data) == 3  # one legend entry per population
    # one population (e.g. result.head("L3H7") of a per-head result): one curve per panel, no legend
    alone = stats["cosine"]["target"].figure()
    assert len(alone.data) == 6 and not any(t.showlegend for t in alone.data)


def test_extreme_fraction_bars_are_the_results_numbers():
    stats = _stats()
    fig = extreme_fraction_figure(stats)
    assert len(fig.data) == 2 * 3
    assert fig.data[4].name == "non-target"
    assert list(fig.data[4].y) == stats["correlation"].frac_extreme[1].tolist()
    assert "0.9" in fig.layout.title.text


def test_index_labels_join_layer_and_head_and_number_the_rest():
    st = qkv_block_similarity(torch.randn(2, 2, 20, 6, dtype=torch.float64), bins=4)
    assert index_labels(st, (2, 2)) == ["0 0", "0 1", "1 0", "1 1"]
    labelled = qkv_block_similarity(
        torch.randn(2, 2, 20, 6, dtype=torch.float64), bins=4, axes={"population": ("a", "b"), "layer": ("L0", "L1")}
    )
    assert index_labels(labelled, (2, 2))[1] == "a L1"


def test_undefined_items_plot_as_null():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 30, 12, generator=g, dtype=torch.float64)
    x[1] = x[1, :1]  # non-target: identical samples
    st = qkv_block_similarity(x, "correlation", bins=10, axes={"population": POPULATIONS}, undefined="nan")
    hist = json.loads(str(block_histogram_figure(st).to_json()))
    assert hist["data"][1]["y"] == [None] * 10 and None not in hist["data"][0]["y"]
    bars = json.loads(str(extreme_fraction_figure(st).to_json()))
    assert bars["data"][1]["y"] == [None] * 6
    json.dumps([hist, bars], allow_nan=False)
