"""Figures of the punctuation clusters: one PunctuationClusters in, every label read from it."""

from __future__ import annotations

import dataclasses
import re

import plotly.graph_objects as go
import pytest
from _plotly_utils.basevalidators import ColorValidator

from tests.helpers import punctuation_inputs
from tlprobe.analyses.punctuation import PunctuationClusters, cluster_depth, cluster_panels, punctuation_dependence
from tlprobe.figures.punctuation import (
    cluster_depth_figure,
    cluster_makeup_depth_figure,
    cluster_position_figure,
    punctuation_scatter_figure,
)


@pytest.fixture(scope="module")
def clusters():
    text_cls, occ, windows, hidden = punctuation_inputs()
    hidden[:, :, 5] = hidden[:, :, 4] * 3  # one slot copies the mark: a cluster of its own
    dep = punctuation_dependence(hidden, windows, text_cls, occ, before=4, depth=[1, 3], bins=5)
    return cluster_panels(dep, k_max=3, seed=0)


def test_scatter_is_the_main_figure_with_one_panel_per_layer_and_class(clusters):
    fig = punctuation_scatter_figure(clusters)
    assert isinstance(fig, go.Figure) and clusters.figure().to_dict() == fig.to_dict()
    notes = [a.text for a in fig.layout.annotations]
    titles = notes[: len(clusters.panels)]  # the subplot titles, then one label per cluster mean
    assert [t.split("<br>")[0] for t in titles] == [f"<b>{p.name}</b>" for p in clusters.panels]
    assert notes[len(titles) :] == [
        f"cluster {j}: r = {p.simpson.within_r[j]:+.2f}" for p in clusters.panels for j in range(p.clustering.k)
    ]
    for p, t in zip(clusters.panels, titles):
        assert t.startswith(f"<b>{p.name}</b>") and f"pooled r {p.simpson.pooled_r:+.2f}" in t
    # per cluster: its points, then a cross at its mean; then one legend symbol per cluster index
    first = clusters.panels[0]
    k_max = max(p.clustering.k for p in clusters.panels)
    data = fig.to_plotly_json()["data"]  # plain dicts: plotly's trace attributes are untyped
    assert len(data) == 2 * sum(p.clustering.k for p in clusters.panels) + k_max
    assert [t["name"] for t in data if t.get("showlegend") is not False] == [f"cluster {j}" for j in range(k_max)]
    sel = first.clustering.labels == 0
    assert list(data[0]["x"]) == first.covariance[sel].tolist() and list(data[0]["y"]) == first.mi[sel].tolist()
    assert list(data[1]["x"]) == [float(first.mean_covariance[0])]
    assert fig.layout.coloraxis.cmin == -4 and fig.layout.coloraxis.cmax == 4
    assert punctuation_scatter_figure(clusters, title="mine").layout.title.text == "mine"


def test_position_figure_stacks_the_counts_of_each_cluster(clusters):
    fig = cluster_position_figure(clusters)
    assert [a.text for a in fig.layout.annotations] == [p.name for p in clusters.panels]
    first = clusters.panels[0]
    data = fig.to_plotly_json()["data"]
    assert list(data[0]["x"]) == first.positions.tolist() and list(data[0]["y"]) == first.rel_counts[0].tolist()
    assert fig.layout.barmode == "stack"
    assert len(data) == sum(p.clustering.k for p in clusters.panels)


_VALIDATOR = ColorValidator("color", "test")


def _colours(node, path=""):
    """``(path, value, parent)`` for every colour in a figure's JSON (keys ending in "color",
    and every entry of a "colorscale")."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k.endswith("color") and not isinstance(v, dict):
                yield f"{path}/{k}", v, node
            elif k == "colorscale" and isinstance(v, (list, tuple)):
                for i, (_stop, c) in enumerate(v):
                    yield f"{path}/{k}/{i}", c, node
            else:
                yield from _colours(v, f"{path}/{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _colours(v, f"{path}/{i}")


def _valid(colour) -> bool:
    try:
        _VALIDATOR.validate_coerce(colour)
    except ValueError:
        return False
    return isinstance(colour, str)


@pytest.mark.parametrize("draw", [punctuation_scatter_figure, cluster_position_figure])
def test_every_colour_is_a_valid_plotly_colour(clusters, draw):
    fig = draw(clusters).to_plotly_json()
    found = list(_colours(fig))
    assert found
    for trace in fig["data"]:
        colour = trace.get("marker", {}).get("color")
        if isinstance(colour, (list, tuple)):
            # numbers: mapped through the colour axis; such a trace draws no legend symbol, which
            # plotly.js would try to colour with a number ("Invalid color specifier").
            assert trace["marker"].get("coloraxis") == "coloraxis" and trace.get("showlegend") is False
    for path, colour, parent in found:
        if isinstance(colour, (list, tuple)):
            assert parent.get("coloraxis") == "coloraxis", path
            assert all(isinstance(c, (int, float)) for c in colour), path
        else:
            assert _valid(colour), f"{path}: {colour!r} is not a plotly colour"


def _rgb(colour: str) -> tuple[float, ...]:
    m = re.fullmatch(r"rgb\((\d+),\s*(\d+),\s*(\d+)\)", colour)
    assert m, colour
    return tuple(float(v) for v in m.groups())


def test_neighbours_are_not_drawn_in_the_background_colour(clusters):
    fig = punctuation_scatter_figure(clusters)
    axis = fig.layout.coloraxis
    background = fig.layout.template.layout.plot_bgcolor
    assert background == "white"
    stops = [(float(t), _rgb(c)) for t, c in axis.colorscale]
    for rel in range(int(axis.cmin), int(axis.cmax) + 1):
        t = (rel - axis.cmin) / (axis.cmax - axis.cmin)
        (t0, c0), (t1, c1) = next((a, b) for a, b in zip(stops, stops[1:]) if a[0] <= t <= b[0])
        colour = [a + (b - a) * (t - t0) / (t1 - t0) for a, b in zip(c0, c1)]
        distance = sum((255 - v) ** 2 for v in colour) ** 0.5
        assert distance > 150, (rel, colour)  # white is 0 away; the old RdBu middle was ~10


def test_a_missing_panel_leaves_no_empty_axes(clusters):
    three = PunctuationClusters(panels=clusters.panels[:3])
    for draw in (punctuation_scatter_figure, cluster_position_figure):
        fig = draw(three)
        axes = [k for k in fig.layout.to_plotly_json() if k.startswith("xaxis")]
        assert len(axes) == 3
        notes = fig.layout.annotations[: len(three.panels)]
        names = [a.text.split("<br>")[0].replace("<b>", "").replace("</b>", "") for a in notes]
        assert names == [p.name for p in three.panels]
        data = fig.to_plotly_json()["data"]
        xs = {t.get("xaxis", "x") for t in data if len(t["x"]) and t["x"][0] is not None}
        assert len(xs) == 3  # every panel has points


# -- L14: clusters at every depth --------------------------------------------------------------
@pytest.fixture(scope="module")
def summary(clusters):
    return cluster_depth(clusters)


def test_cluster_depth_figure_is_the_main_figure_with_k_and_silhouette_per_class(summary):
    fig = cluster_depth_figure(summary)
    assert summary.figure().to_dict() == fig.to_dict()
    data = fig.to_plotly_json()["data"]
    assert [t["name"] for t in data] == ["internal", "internal", "terminal", "terminal"]
    assert [list(t["x"]) for t in data] == [list(summary.depth_labels)] * 4 == [["L0", "L2"]] * 4
    assert list(data[0]["y"]) == summary.k[0].tolist() and list(data[3]["y"]) == summary.silhouette[1].tolist()
    texts = [a.text for a in fig.layout.annotations]
    assert texts[:2] == ["clusters (k)", "best silhouette (k >= 2)"] and "split needs 0.5" in texts
    assert fig.layout.title.text == "Clusters of (covariance, MI) points at every depth"


def test_makeup_figure_shows_main_and_minor_fractions_and_distances_per_class(summary):
    fig = cluster_makeup_depth_figure(summary)
    data = fig.to_plotly_json()["data"]
    assert len(data) == 2 * 3 * 2  # classes x (punctuation, own token, distance) x (minor, main)
    assert [t["name"] for t in data[:6]] == [
        "minor: punctuation",
        "main: punctuation",
        "minor: own token",
        "main: own token",
        "minor: median |distance|",
        "main: median |distance|",
    ]
    want = [None if v != v else v for v in summary.minor_frac_same_token[1].tolist()]
    assert list(data[8]["y"]) == want  # terminal, minor own token
    assert [a.text for a in fig.layout.annotations] == [
        "internal: fractions",
        "terminal: fractions",
        "internal: median |distance|",
        "terminal: median |distance|",
    ]
    for t in data:  # every colour a valid plotly colour
        ColorValidator("color", "scatter").validate_coerce(t["line"]["color"])


def test_seven_depths_of_panels_draw_with_a_spacing_plotly_accepts(clusters):
    first = [p for p in clusters.panels if p.depth == clusters.panels[0].depth]
    deep = PunctuationClusters(panels=tuple(dataclasses.replace(p, depth=d) for d in range(7) for p in first))
    for draw in (punctuation_scatter_figure, cluster_position_figure):
        fig = draw(deep)
        rows = {t["yaxis"] for t in fig.to_plotly_json()["data"]}
        assert len(rows) == 14, draw.__name__  # a y axis per panel
    # Two depths keep their spacing (the figures of punctuation-clusters' runs are unchanged).
    domains = [punctuation_scatter_figure(clusters).layout[f"yaxis{i}"].domain for i in (1, 3)]
    assert round(domains[0][0] - domains[1][1], 10) == 0.16  # top row above the bottom one
