"""Figures of the mutual-information results: one result in, labels read from it."""
# pyright: reportAttributeAccessIssue=false, reportOptionalSubscript=false, reportArgumentType=false
# (plotly builds figure attributes at run time: fig.data[0].z, fig.layout.xaxis are unknown to a type checker)

from __future__ import annotations

import dataclasses

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from tlprobe.analyses.mi import MIResult, dependence, mi_histograms, mi_null, pairwise_mi
from tlprobe.errors import TlprobeError
from tlprobe.figures.mi import (
    HEATMAP_PERCENTILES,
    dependence_examples_figure,
    dependence_sweep_figure,
    mi_heatmap_figure,
    mi_histogram_figure,
    mi_means_figure,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


LAYERS = {"layer": ("embed", "1", "2", "3")}


@pytest.fixture(scope="module")
def mats():
    return pairwise_mi(torch.randn(4, 94, 12, generator=gen(21), dtype=torch.float64))


def test_histogram_figure_reads_labels_and_is_the_main_figure(mats):
    h = mi_histograms(mats, bins=20, axes=LAYERS)
    fig = mi_histogram_figure(h, highlight=0)
    assert isinstance(fig, go.Figure) and [t.name for t in fig.data] == list(LAYERS["layer"])
    assert fig.data[0].line.width > fig.data[1].line.width
    assert list(fig.data[2].y) == h.density[2].tolist() and list(fig.data[2].x) == h.centers.tolist()
    assert list(mi_histogram_figure(h, density=False).data[1].y) == h.prob[1].tolist()
    assert fig.layout.xaxis.title.text == "MI (nats)"
    assert h.figure(highlight=0).to_dict() == fig.to_dict()
    unlabelled = mi_histogram_figure(mi_histograms(mats[:2], bins=5))
    assert [t.name for t in unlabelled.data] == ["0", "1"]
    with pytest.raises(TlprobeError, match="highlight 9"):
        mi_histogram_figure(h, highlight=9)


def test_histogram_figure_cuts_long_tails_from_its_x_axis():
    vals = torch.rand(60, 60, generator=gen(28), dtype=torch.float64) * 0.2
    vals = vals + vals.mT
    vals[0, 1] = vals[1, 0] = 10.0  # one pair far out: every other pair lies in the first 2% of the range
    h = mi_histograms(vals[None], bins=500, axes={"layer": ["L0"]})
    fig = mi_histogram_figure(h)
    low, high = fig.layout.xaxis.range
    assert low >= float(h.edges[0]) and high < 1.0 and "all but 0.5% of the pairs" in fig.layout.title.text
    assert list(fig.data[0].x) == h.centers.tolist()  # every bin is still drawn
    full = mi_histogram_figure(h, tail=0.0)
    assert full.layout.xaxis.range is None and "all but" not in full.layout.title.text
    even = mi_histogram_figure(mi_histograms(torch.rand(1, 30, 30, generator=gen(29)), bins=20))
    assert even.layout.xaxis.range is None  # nothing to cut
    with pytest.raises(TlprobeError, match="tail must be"):
        mi_histogram_figure(h, tail=0.6)


def test_means_figure_one_line_per_result(mats):
    h = mi_histograms(mats, axes=LAYERS)
    half = mi_histograms(mats / 2, axes=LAYERS, quantity="half MI (nats)")
    fig = mi_means_figure({"raw": h, "half": half})
    assert [t.name for t in fig.data] == ["raw", "half"] and list(fig.data[0].x) == list(LAYERS["layer"])
    assert list(fig.data[1].y) == half.mean.tolist() and list(fig.data[1].error_y.array) == half.std.tolist()
    median = mi_means_figure(half, statistic="median")
    assert [t.name for t in median.data] == ["half MI (nats)"] and list(median.data[0].y) == half.median.tolist()
    with pytest.raises(TlprobeError, match="statistic must be"):
        mi_means_figure(h, statistic="max")  # type: ignore[arg-type]


def test_heatmap_figure_from_one_selected_result():
    null = mi_null(
        torch.randn(2, 60, 5, generator=gen(25), dtype=torch.float64), n_shuffles=2, axes={"layer": ["L0", "L1"]}
    )
    fig = mi_heatmap_figure(null["L1"], max_size=3)
    expected = null.raw[1, :3, :3].tolist()
    for i in range(3):
        expected[i][i] = None  # the diagonal (entropy) is masked
    assert list(map(list, fig.data[0].z)) == expected and "first 3 of 5" in fig.layout.title.text
    assert mi_heatmap_figure(null["L0"], which="corrected").data[0].z[0][1] == float(null.corrected[0, 0, 1])
    assert null["L0"].figure().to_dict() == mi_heatmap_figure(null["L0"]).to_dict()
    with pytest.raises(TlprobeError, match="select one leading index"):
        mi_heatmap_figure(null)


def test_heatmap_masks_the_diagonal_and_takes_its_colour_range_from_the_pairs():
    mat = torch.rand(40, 40, generator=gen(26), dtype=torch.float64) * 0.1
    mat = mat + mat.mT
    mat[3, 7] = mat[7, 3] = 50.0  # one extreme pair
    mat.fill_diagonal_(190.0)  # entropies dwarf every pair
    r = MIResult(raw=mat, corrected=mat, null_mean=None, null_std=None, bins=10, method="miller-madow", n_samples=94)
    fig = mi_heatmap_figure(r, variable="hidden dimension")
    z = fig.data[0].z
    assert all(z[i][i] is None for i in range(40)) and z[0][1] == float(mat[0, 1])
    off = mat[~torch.eye(40, dtype=torch.bool)].numpy()
    low, high = np.percentile(off, HEATMAP_PERCENTILES)
    assert fig.data[0].zmin == pytest.approx(low) and fig.data[0].zmax == pytest.approx(high)
    assert fig.data[0].zmax < 1.0  # neither the diagonal (190) nor the one extreme pair (50) sets the range
    assert fig.layout.xaxis.title.text == "hidden dimension" and fig.data[0].colorbar.title.text == "MI (nats)"
    assert not fig.layout.annotations


def test_constant_panels_say_all_values():
    zero = torch.zeros(6, 6, dtype=torch.float64)
    r = MIResult(raw=zero, corrected=zero, null_mean=None, null_std=None, bins=10, method="miller-madow", n_samples=9)
    fig = mi_heatmap_figure(r)
    assert [a.text for a in fig.layout.annotations] == ["all off-diagonal values 0"]
    assert fig.data[0].zmin < fig.data[0].zmax  # a valid colour axis around the one value
    h = mi_histogram_figure(mi_histograms(torch.zeros(2, 4, 4), axes={"layer": ["a", "b"]}))
    assert [a.text for a in h.layout.annotations] == ["all values 0"]
    x = torch.randn(3, 50, generator=gen(27), dtype=torch.float64)
    d = dependence(x, x, n_shuffles=2, axes={"rho": ["1", "2", "3"]})
    zero_cov = dataclasses.replace(d, covariance=torch.zeros(3, dtype=torch.float64))
    texts = [
        (a.text, a.xref) for a in dependence_sweep_figure(zero_cov).layout.annotations if a.xref.endswith("domain")
    ]
    assert texts == [("all values 0", "x domain")]


def test_dependence_figures_read_the_result():
    x = torch.rand(2, 100, generator=gen(22), dtype=torch.float64) * 2 - 1
    d = dependence(x, x**2, n_shuffles=3, keep_samples=True, axes={"example": ["a", "b"]})
    ex = dependence_examples_figure(d)
    assert ex.layout.annotations[0].text.startswith("a<br>cov=") and list(ex.data[1].y) == (x[1] ** 2).tolist()
    sweep = dependence_sweep_figure(d)
    assert len(sweep.data) == 6 and list(sweep.data[0].x) == ["a", "b"]  # categorical labels
    assert list(sweep.data[5].y) == d.covariance_squared.tolist() and sweep.layout.xaxis.title.text == "example"
    assert d.figure().to_dict() == sweep.to_dict()
    rho = dependence(x, -x, n_shuffles=3, axes={"rho": ["-1.00", "0.50"]})
    fig = dependence_sweep_figure(rho, x_title="true correlation")
    assert list(fig.data[0].x) == [-1.0, 0.5] and fig.layout.xaxis.title.text == "true correlation"
    with pytest.raises(TlprobeError, match="keep_samples=True"):
        dependence_examples_figure(rho)
    with pytest.raises(TlprobeError, match="one leading axis"):
        dependence_sweep_figure(dependence(x[None], x[None] ** 2, n_shuffles=2))
