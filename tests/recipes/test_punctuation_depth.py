"""punctuation-depth (L14): punctuation-clusters' panels at every depth, their summary and findings."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from tests.helpers import FAST_OPTIONS, run_recipe_fast
from tlprobe.analyses.punctuation import ClusterDepth, PanelResult, PunctuationClusters, _cluster_summary
from tlprobe.analyses.stats import Clustering, simpson_check
from tlprobe.errors import TlprobeError
from tlprobe.findings import Finding
from tlprobe.recipes import punctuation_clusters, punctuation_depth

#: punctuation-clusters' test options, so that its run and this one read the same windows.
SAME_AS_L13 = FAST_OPTIONS["punctuation-clusters"]


@pytest.fixture(scope="module")
def depth_run(recipe_output, tmp_path_factory):
    """This recipe's run with punctuation-clusters' test options (the session's own when they agree)."""
    if FAST_OPTIONS["punctuation-depth"] == SAME_AS_L13:
        return recipe_output("punctuation-depth")
    return run_recipe_fast(punctuation_depth, tmp_path_factory.mktemp("punctuation-depth"), **SAME_AS_L13)


def test_panels_at_punctuation_clusters_depths_are_its_panels(depth_run, recipe_output):
    l13 = recipe_output("punctuation-clusters")
    assert torch.equal(depth_run.results["occurrences"].pos, l13.results["occurrences"].pos)
    mine = {(p.depth, p.class_name): p for p in depth_run.results["clusters"].panels}
    theirs = l13.results["clusters"].panels
    assert sorted({p.depth for p in theirs}) == [1, 4] and sorted({d for d, _ in mine}) == list(range(7))
    for p in theirs:
        q = mine[p.depth, p.class_name]
        for f in ("covariance", "mi", "rel", "mean_covariance", "mean_mi", "frac_same_token", "frac_punctuation"):
            assert torch.equal(getattr(q, f), getattr(p, f)), (p.name, f)
        assert torch.equal(q.clustering.labels, p.clustering.labels) and q.clustering.scores == p.clustering.scores
        for f in ("within_r", "within_p", "sizes", "considered"):
            assert torch.equal(getattr(q.simpson, f), getattr(p.simpson, f)), (p.name, f)
        assert (q.simpson.pooled_r, q.simpson.pooled_p, q.simpson.outcome) == (
            p.simpson.pooled_r,
            p.simpson.pooled_p,
            p.simpson.outcome,
        )


def test_the_summary_is_read_from_the_panels_and_saved(depth_run):
    s, clusters = depth_run.results["depth"], depth_run.results["clusters"]
    assert isinstance(s, ClusterDepth)
    assert s.axes == {"class": ("internal", "terminal"), "depth": ("embed", "L0", "L1", "L2", "L3", "L4", "L5")}
    for p in clusters.panels:
        ci, di = s.classes.index(p.class_name), p.depth
        assert int(s.k[ci, di]) == p.clustering.k and int(s.points[ci, di]) == p.covariance.numel() == 60 * 30
        best = max(p.clustering.scores)
        assert float(s.silhouette[ci, di]) == best and float(s.pooled_r[ci, di]) == p.simpson.pooled_r
    res = json.loads(depth_run.paths["results"].read_text())
    assert res["facts"]["depths"] == list(range(7)) and res["params"]["layers"] is None
    assert res["results"]["depth"]["_type"] == "ClusterDepth"
    shown = res["facts"]["scatter depths"]
    assert shown == punctuation_depth.scatter_depths(s) and shown[0] == 0 and shown[-1] == 6
    assert len(shown) <= punctuation_depth.MAX_SCATTER_DEPTHS


def test_scatter_depths_are_the_ends_and_the_first_changes():
    def summary(k_internal, k_terminal):
        n = len(k_internal)
        z = torch.zeros(2, n, dtype=torch.float64)
        zi = torch.zeros(2, n, dtype=torch.long)
        return ClusterDepth(
            torch.arange(n),
            torch.tensor([k_internal, k_terminal]),
            *([z] * 9),  # silhouette .. minor_median_distance
            zi,
            zi,
            z,
            zi.bool(),
            zi,
            axes={"class": ("internal", "terminal"), "depth": tuple(f"d{i}" for i in range(n))},
        )

    assert punctuation_depth.scatter_depths(summary([2, 2, 2, 2], [1, 1, 1, 1])) == [0, 3]
    assert punctuation_depth.scatter_depths(summary([2, 1, 2, 1, 2, 1], [1] * 6)) == [0, 1, 2, 5]
    assert punctuation_depth.scatter_depths(summary([1, 1, 1, 1], [1, 1, 2, 2])) == [0, 2, 3]


def test_report_has_the_sections_and_the_findings(depth_run):
    html = depth_run.paths["report"].read_text(encoding="utf-8")
    for fragment in (
        "Clusters at every depth",
        "Clusters per class and depth",
        "What separates the clusters",
        "Covariance vs MI where the clusters change",
        "Simpson&#x27;s-paradox check per depth",
        "embed, L0, L1, L2, L3, L4, L5 (7 depths",
        "For comparison, not measured here: the lesson (GPT-2 medium",
    ):
        assert fragment in html, fragment
    assert html.index("Findings") < html.index("What this shows") < html.index("What the lesson reported")
    res = json.loads(depth_run.paths["results"].read_text())
    assert [f["claim"] for f in res["findings"]] == list(CLAIMS)
    assert [f.to_dict() for f in punctuation_depth.findings(depth_run.results["clusters"])] == [
        f.to_dict() for f in depth_run.findings
    ]
    assert len(depth_run.figures()) == 3


def test_the_options_are_punctuation_clusters_with_every_depth():
    assert issubclass(punctuation_depth.Options, punctuation_clusters.Options)
    assert punctuation_depth.Options().layers is None and punctuation_depth.MIN_SILHOUETTE == 0.5
    with pytest.raises(TlprobeError, match=r"--layers \[99\] out of range: 0 \(embeddings\) to 6"):
        punctuation_depth.run(layers=(0, 99), out=None, quiet=True, progress=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n": -1}, r"--n must be >= 0, got -1"),
        ({"bins": 1}, r"--bins must be >= 2, got 1"),
        ({"layers": (1, -2)}, r"--layers must be >= 0, got -2"),
    ],
)
def test_bad_options_are_refused_before_the_model_loads(overrides, message):
    with pytest.raises(TlprobeError, match=message):
        punctuation_depth.run(out=None, quiet=True, model="no-such-model-is-loaded", **overrides)


# -- findings: every verdict on planted panels -------------------------------------------------
CLAIMS = (
    "internal punctuation splits into clusters at more depths than terminal punctuation",
    "the clusters of internal punctuation merge after depth N",
    "the same kind of token separates the clusters at every depth where they split",
    "pooled r has the opposite sign of within-cluster r at some depth (Simpson's paradox)",
)


def _panel(depth, class_name, slopes, *, silhouette, drop=0.0, n=300, same_token=(), seed=0) -> PanelResult:
    """A planted panel (as in test_punctuation_clusters): one cluster per slope (cluster 0, the first of
    equal sizes, is the main one), cluster j offset by
    ``(6 j, 6 j)`` or, with ``drop``, ``(6 j, -drop j)``; ``same_token``: clusters all the mark's own
    token (punctuation); the best silhouette given."""
    g = torch.Generator().manual_seed(seed)
    k = len(slopes)
    xs, ys = [], []
    for j, slope in enumerate(slopes):
        x = torch.randn(n, generator=g, dtype=torch.float64)
        y = slope * x + torch.randn(n, generator=g, dtype=torch.float64)
        xs.append(x + 6.0 * j)
        ys.append(y + (-drop * j if drop else 6.0 * j))
    x, y = torch.cat(xs), torch.cat(ys)
    labels = torch.arange(k).repeat_interleave(n)
    positions = torch.tensor([r for r in range(-20, 11) if r != 0])
    rel = positions[torch.randint(0, positions.numel(), (k * n,), generator=g)]
    same = torch.isin(labels, torch.tensor(list(same_token), dtype=torch.long))
    clustering = Clustering(
        labels=labels, k=k, method="kmeans", k_tried=(2, 3), scores=(silhouette, silhouette - 0.1), min_silhouette=0.5
    )
    points = {"x": x, "y": y, "rel": rel, "same_token": same, "slot_class": same.long()}
    summary = _cluster_summary(points, clustering, positions)
    return PanelResult(depth, class_name, x, y, rel, clustering, simpson_check(x, y, labels), **summary)


SPLIT: dict[str, Any] = {"slopes": (1.0, 1.0), "silhouette": 0.8, "same_token": (1,)}
OTHER: dict[str, Any] = {"slopes": (1.0, 1.0), "silhouette": 0.8}  # the minor cluster is other tokens
ONE: dict[str, Any] = {"slopes": (1.0,), "silhouette": 0.3}
CLOSE: dict[str, Any] = {"slopes": (1.0,), "silhouette": 0.52}


def _grid(internal: list[dict], terminal: list[dict]) -> PunctuationClusters:
    panels = []
    for d, (a, b) in enumerate(zip(internal, terminal)):
        panels += [_panel(d, "internal", **{"seed": d, **a}), _panel(d, "terminal", **{"seed": 10 + d, **b})]
    return PunctuationClusters(panels=tuple(panels))


def _verdicts(clusters: PunctuationClusters) -> dict[str, Finding]:
    found = punctuation_depth.findings(clusters)
    assert [f.claim for f in found] == list(CLAIMS) and all(f.lesson == "L14" and f.why for f in found)
    return {f.claim: f for f in found}


def test_finding_splits_per_depth_holds_differs_and_is_undecided():
    claim = CLAIMS[0]
    f = _verdicts(_grid([SPLIT, SPLIT, ONE], [ONE, ONE, ONE]))[claim]
    assert f.verdict == "holds" and f.numbers["k internal"] == [2, 2, 1] and f.numbers["k terminal"] == [1, 1, 1]
    assert f.why == "internal splits at embed, L0; terminal at no depth"
    f = _verdicts(_grid([SPLIT, ONE, ONE], [SPLIT, ONE, ONE]))[claim]
    assert f.verdict == "differs" and "terminal at embed" in f.why
    # One split each way but an undecided terminal panel: it could tie.
    f = _verdicts(_grid([SPLIT, SPLIT, ONE], [SPLIT, CLOSE, ONE]))[claim]
    assert f.verdict == "inconclusive" and "terminal at L0: the best silhouette 0.52 is within 0.05" in f.why


def test_finding_merge_holds_differs_and_is_undecided():
    claim = CLAIMS[1]
    f = _verdicts(_grid([SPLIT, SPLIT, ONE, ONE], [ONE] * 4))[claim]
    assert f.verdict == "holds" and f.numbers["N"] == "L0" and "one cluster at every depth after L0" in f.why
    f = _verdicts(_grid([SPLIT, ONE, SPLIT], [ONE] * 3))[claim]
    assert f.verdict == "differs" and "still splits at the deepest depth, L1" in f.why
    f = _verdicts(_grid([SPLIT, ONE, CLOSE], [ONE] * 3))[claim]
    assert f.verdict == "inconclusive" and "internal at L1: the best silhouette 0.52" in f.why
    f = _verdicts(_grid([ONE, ONE], [SPLIT, SPLIT]))[claim]
    assert f.verdict == "inconclusive" and "nothing to merge" in f.why
    # An undecided panel before the first split does not matter.
    f = _verdicts(_grid([CLOSE, SPLIT, ONE], [ONE] * 3))[claim]
    assert f.verdict == "holds" and f.numbers["N"] == "L0"


def test_finding_what_separates_holds_differs_and_is_undecided():
    claim = CLAIMS[2]
    f = _verdicts(_grid([SPLIT, SPLIT, ONE], [SPLIT, ONE, ONE]))[claim]
    assert f.verdict == "holds" and f.numbers["panel"] == ["internal embed", "internal L0", "terminal embed"]
    assert set(f.numbers["minor kind"]) == {"the window's other marks of the same kind"}
    assert set(f.numbers["main kind"]) == {"mostly other tokens"} and f.numbers["minor own token"] == [1.0] * 3
    f = _verdicts(_grid([SPLIT, OTHER, ONE], [ONE] * 3))[claim]  # at L0 the minor cluster is other tokens
    assert f.verdict == "differs" and "internal L0: minor mostly other tokens (0% punctuation" in f.why
    f = _verdicts(_grid([ONE, CLOSE], [ONE, ONE]))[claim]
    assert f.verdict == "inconclusive" and "no decided panel splits" in f.why


def test_finding_simpson_per_depth_holds_differs_and_is_undecided():
    claim = CLAIMS[3]
    simpson = {"slopes": (1.0, 1.0), "silhouette": 0.8, "drop": 12.0}
    f = _verdicts(_grid([SPLIT, simpson], [ONE, ONE]))[claim]
    assert (
        f.verdict == "holds" and f.numbers["reversals"] == ["internal at L0"] and "reversal at internal at L0" in f.why
    )
    f = _verdicts(_grid([SPLIT, SPLIT], [SPLIT, ONE]))[claim]
    assert f.verdict == "differs" and f.numbers["panels compared"] == 3 and "no reversal in the 3 panels" in f.why
    null = {"slopes": (0.0, 0.0), "silhouette": 0.8, "drop": 12.0, "seed": 3}
    clusters = _grid([null, ONE], [ONE, ONE])
    assert clusters.panels[0].simpson.outcome == "undecided"
    f = _verdicts(clusters)[claim]
    assert f.verdict == "inconclusive" and "not significant" in f.why
    f = _verdicts(_grid([ONE], [ONE]))[claim]
    assert f.verdict == "inconclusive" and "no subgroups to pool" in f.why
