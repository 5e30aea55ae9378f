"""Figures of the punctuation clusters: one PunctuationClusters in, every label read from it."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from tests.helpers import punctuation_inputs
from tlprobe.analyses.punctuation import cluster_panels, punctuation_dependence
from tlprobe.figures.punctuation import cluster_position_figure, punctuation_scatter_figure


@pytest.fixture(scope="module")
def clusters():
    text_cls, occ, windows, hidden = punctuation_inputs()
    hidden[:, :, 5] = hidden[:, :, 4] * 3  # one slot copies the mark: a cluster of its own
    dep = punctuation_dependence(hidden, windows, text_cls, occ, before=4, depth=[1, 3], bins=5)
    return cluster_panels(dep, k_max=3, seed=0)


def test_scatter_is_the_main_figure_with_one_panel_per_layer_and_class(clusters):
    fig = punctuation_scatter_figure(clusters)
    assert isinstance(fig, go.Figure) and clusters.figure().to_dict() == fig.to_dict()
    titles = [a.text for a in fig.layout.annotations]
    assert [t.split("<br>")[0] for t in titles] == [p.name for p in clusters.panels]
    for p, t in zip(clusters.panels, titles):
        assert f"k={p.clustering.k}, r all={p.simpson.pooled_r:+.2f}" in t
    # per cluster: its points, then a cross at its mean
    first = clusters.panels[0]
    assert len(fig.data) == 2 * sum(p.clustering.k for p in clusters.panels)
    sel = first.clustering.labels == 0
    assert list(fig.data[0].x) == first.covariance[sel].tolist() and list(fig.data[0].y) == first.mi[sel].tolist()
    assert list(fig.data[1].x) == [float(first.mean_covariance[0])]
    assert fig.layout.coloraxis.cmin == -4 and fig.layout.coloraxis.cmax == 4
    assert punctuation_scatter_figure(clusters, title="mine").layout.title.text == "mine"


def test_position_figure_stacks_the_counts_of_each_cluster(clusters):
    fig = cluster_position_figure(clusters)
    assert [a.text for a in fig.layout.annotations] == [p.name for p in clusters.panels]
    first = clusters.panels[0]
    assert list(fig.data[0].x) == first.positions.tolist() and list(fig.data[0].y) == first.rel_counts[0].tolist()
    assert fig.layout.barmode == "stack"
    assert len(fig.data) == sum(p.clustering.k for p in clusters.panels)
