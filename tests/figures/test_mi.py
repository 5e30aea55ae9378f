"""Figures of the mutual-information results: one result in, labels read from it."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from tlprobe.analyses.mi import dependence, mi_histograms, mi_null, pairwise_mi
from tlprobe.errors import TlprobeError
from tlprobe.figures.mi import (
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
    assert list(map(list, fig.data[0].z)) == null.raw[1, :3, :3].tolist() and "first 3 of 5" in fig.layout.title.text
    assert mi_heatmap_figure(null["L0"], which="corrected").data[0].z[0][1] == float(null.corrected[0, 0, 1])
    assert null["L0"].figure().to_dict() == mi_heatmap_figure(null["L0"]).to_dict()
    with pytest.raises(TlprobeError, match="select one leading index"):
        mi_heatmap_figure(null)


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
