"""Q/K/V block figures show the result's numbers under the result's own labels."""

import json

import numpy as np
import torch

from tlprobe.analyses.similarity import qkv_block_similarity
from tlprobe.figures.similarity import block_histogram_figure, extreme_fraction_figure, fraction_label
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


def test_extreme_fraction_panel_of_zeros_says_so_and_labels_do_not_overlap():
    """Correlation often has no |s| > 0.9 at all: its panel says "all values 0" instead of empty axes."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 60, 12, generator=g, dtype=torch.float64) + 5 * torch.randn(3, 1, 12, generator=g)
    stats = {
        m: qkv_block_similarity(x, m, bins=10, axes={"population": POPULATIONS}) for m in ("cosine", "correlation")
    }
    assert float(stats["correlation"].frac_extreme.max()) == 0 < float(stats["cosine"].frac_extreme.max())
    fig = extreme_fraction_figure(stats)
    notes = [a for a in fig.layout.annotations if a.text == "all values 0"]
    assert len(notes) == 1 and notes[0].xref == "x2 domain" and notes[0].yref == "y2 domain"
    assert list(fig.layout.yaxis2.range) == [0, 1]  # a frame for the note, not a range around nothing
    assert fig.layout.yaxis.range[1] > float(stats["cosine"].frac_extreme.max())  # its own scale, room for labels
    labels = [t for trace in fig.data for t in trace.text]
    assert all(len(t) <= 6 for t in labels) and "0.000" not in "".join(labels)
    assert all(trace.textangle == -90 for trace in fig.data)  # vertical: neighbouring bars' labels cannot touch
    assert {t for trace in fig.data[3:] for t in trace.text} == {"0"}
    # a panel with some values keeps its bars and gets no note
    assert not [a for a in extreme_fraction_figure(stats["cosine"]).layout.annotations if "all values" in a.text]


def test_fraction_labels_are_short():
    assert [fraction_label(v) for v in (1.0, 0.1234, 0.0947, 0.00321, 0.000999, 2.07e-05)] == [
        "100%",
        "12%",
        "9.5%",
        "0.32%",
        "1e-3",
        "2.1e-5",
    ]
    assert fraction_label(0.0) == "0" and fraction_label(float("nan")) == ""


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
    assert bars["data"][1]["y"] == [None] * 6 and bars["data"][1]["text"] == [""] * 6
    json.dumps([hist, bars], allow_nan=False)
