"""Figures of token-distance (L11-L12): traces, titles, labels, and the registered main figures."""

import pytest
import torch

from tlprobe.analyses.mi import miller_madow
from tlprobe.analyses.token_pairs import attention_tracking, distance_profile
from tlprobe.errors import TlprobeError
from tlprobe.figures.token_pairs import (
    distance_profile_figure,
    token_mi_heatmap_figure,
    tracking_maps_figure,
    tracking_scatter_figure,
)


def _profile(null=True):
    g = torch.Generator().manual_seed(0)
    mi = torch.rand(3, 12, 12, generator=g)
    nl = torch.rand(4, 3, 12, 12, generator=g) if null else None
    return distance_profile(mi, null=nl, n_bins=4, axes={"depth": ("embed", "L0", "L1")})


def _tracking():
    g = torch.Generator().manual_seed(1)
    return attention_tracking(
        torch.rand(2, 3, 30, generator=g),
        torch.rand(2, 30, generator=g),
        torch.arange(30.0),
        n_permutations=19,
        axes={"layer": ("L0", "L1"), "head": ("H0", "H1", "H2")},
    )


def test_distance_profile_figure_has_one_line_set_per_depth():
    p = _profile()
    fig = distance_profile_figure(p, title="T")
    assert fig.layout.title.text == "T"
    assert len(fig.data) == 3 * 5  # per depth: observed, null mean, null q95; corrected, null margin
    assert [t.name for t in fig.data if t.showlegend is not False] == ["embed", "L0", "L1"]
    assert list(fig.data[0].x) == p.centres.tolist() and list(fig.data[0].y) == p.mean[0].tolist()
    assert fig.layout.xaxis.type == "log"
    assert len(p.figure().data) == 15  # the registered main figure
    assert len(distance_profile_figure(_profile(null=False)).data) == 3


def test_tracking_maps_and_scatter():
    t = _tracking()
    fig = tracking_maps_figure(t, field="partial")
    assert fig.data[0].type == "heatmap" and "partial" in fig.layout.title.text
    assert "L1H2" in str(fig.data[0].text) or "L1H2" in str(fig.data[0].customdata) or "L1H2" in str(fig.data[0])
    assert t.figure().data[0].type == "heatmap"
    with pytest.raises(TlprobeError, match="unknown field"):
        tracking_maps_figure(t, field="nope")  # type: ignore[arg-type]
    labels = [f"a@{i} -> b@{i + 1}" for i in range(30)]
    sc = tracking_scatter_figure(t, "L1H2", labels=labels)
    assert list(sc.data[0].x) == t.attention[1, 2].tolist() and list(sc.data[0].y) == t.mi[1, 2].tolist()
    assert list(sc.data[0].text) == labels and sc.layout.title.text.startswith("L1H2")
    with pytest.raises(TlprobeError, match="name the layer"):
        tracking_scatter_figure(t, "H2")
    with pytest.raises(TlprobeError, match="labels"):
        tracking_scatter_figure(t, (0, 1), labels=["x"])


def test_token_mi_heatmap_labels_tokens_and_blanks_the_diagonal():
    r = miller_madow(torch.rand(50, 3, generator=torch.Generator().manual_seed(0)))
    fig = token_mi_heatmap_figure(r, ["<script>", "a", "b"], title="M")
    assert list(fig.data[0].x) == ["0:<script>", "1:a", "2:b"] and fig.data[0].z[1][1] is None
    assert fig.layout.title.text == "M"
    with pytest.raises(TlprobeError, match="tokens"):
        token_mi_heatmap_figure(r, ["a"])
