"""punctuation-clusters (L13): the same numbers as tlprobe 0.1.0 for the same seed, and its report."""

import json
from typing import Any

import pytest
import torch

from tests.helpers import assert_same_numbers, fixture, run_recipe_fast
from tlprobe.access.text import stdlib_corpus
from tlprobe.analyses.punctuation import PanelResult, PunctuationClusters, _cluster_summary
from tlprobe.analyses.stats import Clustering, simpson_check
from tlprobe.errors import TlprobeError
from tlprobe.findings import Finding
from tlprobe.recipes import punctuation_clusters

#: Per-cluster summaries of 0.1.0 (``panels/i/clusters/j/<field>``) now stored per panel as ``[clusters]`` tensors.
PER_CLUSTER = ("mean_covariance", "mean_mi", "frac_same_token", "frac_punctuation", "median_abs_rel")


def _pairs(old: dict, new: dict) -> tuple[dict[str, str], dict[str, str]]:
    """Old path -> new path for every panel (the clusters' summaries moved into per-panel tensors)."""
    pairs = {
        "params": "params",
        "params/depths": "facts/depths",
        "model": "facts/model",
        "corpus/characters": "facts/corpus/characters",
        "corpus/tokens": "facts/corpus/tokens",
        "corpus/class_counts": "results/occurrences/class_counts",
        "occurrences": "results/occurrences",
    }
    ignored = {}
    for i, panel in enumerate(old["panels"]):
        was, now = f"panels/{i}", f"results/clusters/panels/{i}"
        new_panel = new["results"]["clusters"]["panels"][i]
        pairs[f"{was}/depth"] = f"{now}/depth"
        ignored[f"{was}/n_points"] = "the number of points: the length of points/covariance (compared)"
        for f in ("k", "min_silhouette", "labels"):
            pairs[f"{was}/clustering/{f}"] = f"{now}/clustering/{f}"
        tried = [int(k) for k in panel["clustering"]["scores"]]
        assert new_panel["clustering"]["k_tried"] == tried
        for idx, k in enumerate(tried):
            pairs[f"{was}/clustering/scores/{k}"] = f"{now}/clustering/scores/{idx}"
        pairs[f"{was}/simpson"] = f"{now}/simpson"
        for f, field in (("covariance", "covariance"), ("mi", "mi"), ("rel", "rel")):
            pairs[f"{was}/points/{f}"] = f"{now}/{field}"
        positions = [int(p) for p in panel["clusters"][0]["rel_counts"]]
        assert new_panel["positions"] == positions
        for j, cluster in enumerate(panel["clusters"]):
            c = f"{was}/clusters/{j}"
            ignored[f"{c}/cluster"] = "the cluster's index (its place in the per-cluster tensors)"
            pairs[f"{c}/size"] = f"{now}/simpson/sizes/{j}"
            pairs[f"{c}/r"] = f"{now}/simpson/within_r/{j}"
            for f in PER_CLUSTER:
                pairs[f"{c}/{f}"] = f"{now}/{f}/{j}"
            for idx, p in enumerate(cluster["rel_counts"]):
                pairs[f"{c}/rel_counts/{p}"] = f"{now}/rel_counts/{j}/{idx}"
    return pairs, ignored


def test_same_numbers_as_0_1_0(recipe_output):
    new = json.loads(recipe_output("punctuation-clusters").paths["results"].read_text())
    pairs, ignored = _pairs(fixture("punctuation-clusters"), new)
    assert_same_numbers("punctuation-clusters", new, pairs, ignored)


def test_report_has_the_lesson_sections(recipe_output):
    run = recipe_output("punctuation-clusters")
    html = run.paths["report"].read_text(encoding="utf-8")
    for fragment in (
        "Token classes in the text",
        "Pooled vs within-cluster Pearson r",
        "Cluster summaries",
        "Simpson&#x27;s-paradox check",
        "Depth 1, internal: ",
        "(31 tokens per window, marks nearer the edges skipped)",
        "Cluster membership by relative position",
    ):
        assert fragment in html, fragment
    assert [p.name for p in run.results["clusters"].panels] == [
        "depth 1, internal",
        "depth 1, terminal",
        "depth 4, internal",
        "depth 4, terminal",
    ]
    assert len(run.figures()) == 2


def test_recipe_runs_on_a_text_file_and_is_reproducible(tmp_path):
    text = tmp_path / "prose.txt"
    text.write_text(stdlib_corpus(["csv", "json", "textwrap"]), encoding="utf-8")
    opts = dict(text=str(text), layers=(1, 3), n=20, before=6, after=3, k_max=3)
    run = run_recipe_fast(punctuation_clusters, tmp_path / "a", **opts)
    res = json.loads(run.paths["results"].read_text())
    assert res["facts"]["depths"] == [1, 3] and res["params"]["layers"] == [1, 3]
    assert res["facts"]["corpus"]["source"] == "prose.txt"
    panels = res["results"]["clusters"]["panels"]
    assert [(p["depth"], p["class_name"]) for p in panels] == [
        (1, "internal"),
        (1, "terminal"),
        (3, "internal"),
        (3, "terminal"),
    ]
    for p in panels:
        assert len(p["covariance"]) == 20 * 9
        assert isinstance(p["simpson"]["flag"], bool) and p["simpson"]["explanation"]
    again = run_recipe_fast(punctuation_clusters, tmp_path / "b", **opts)
    assert again.paths["results"].read_bytes() == run.paths["results"].read_bytes()
    short = tmp_path / "short.txt"
    short.write_text("Only a few marks here, really. Two sentences, two commas.", encoding="utf-8")
    with pytest.raises(TlprobeError, match="too few punctuation marks"):
        run_recipe_fast(punctuation_clusters, None, **{**opts, "before": 20, "after": 10, "text": str(short)})


def test_n_0_takes_every_mark_and_a_bin_rule_streams_in_two_passes(tmp_path):
    text = tmp_path / "prose.txt"
    text.write_text(stdlib_corpus(["csv", "json", "textwrap"]), encoding="utf-8")
    opts = dict(text=str(text), layers=(1,), n=0, before=6, after=3, k_max=2, bins="sqrt", batch_size=7)
    run = run_recipe_fast(punctuation_clusters, tmp_path / "a", **opts)
    res = json.loads(run.paths["results"].read_text())
    occ = run.results["occurrences"]
    assert len(occ) == sum(occ.available.values()) > 14
    for p in res["results"]["clusters"]["panels"]:
        assert len(p["covariance"]) == occ.available[p["class_name"]] * 9
    assert "For each class all marks are drawn" in run.paths["report"].read_text(encoding="utf-8")


def test_bad_text_and_layers_are_refused(tmp_path):
    with pytest.raises(TlprobeError, match="text file not found"):
        punctuation_clusters.run(text=str(tmp_path / "missing.txt"), out=None)
    with pytest.raises(TlprobeError, match=r"--layers \[99\] out of range"):
        punctuation_clusters.run(layers=(99,), out=None, quiet=True, progress=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bins": 100_000_000}, r"one joint histogram of --bins 100000000 needs ~.* GiB; .*lower --bins"),
        ({"bins": 1}, r"--bins must be >= 2, got 1"),
        ({"n": -1}, r"--n must be >= 0, got -1"),
        ({"k_max": 0}, r"--k-max must be >= 1, got 0"),
        ({"batch_size": 0}, r"--batch-size must be >= 1, got 0"),
        ({"before": -1}, r"--before must be >= 0, got -1"),
        ({"before": 0, "after": 0}, r"--before and --after are both 0"),
        ({"layers": (1, -2)}, r"--layers must be >= 0, got -2"),
    ],
)
def test_bad_options_are_refused_before_the_model_loads(overrides, message):
    with pytest.raises(TlprobeError, match=message):
        punctuation_clusters.run(out=None, quiet=True, model="no-such-model-is-loaded", **overrides)


def test_sizes_are_checked_once_the_model_is_known():
    options = punctuation_clusters.check_options(punctuation_clusters.Options(layers=1))  # pyright: ignore[reportArgumentType]
    assert options.layers == (1,)  # one depth from Python
    punctuation_clusters.check_sizes(options, 2, 384)
    with pytest.raises(
        TlprobeError, match=r"the MI of 100 windows of 31 tokens with --bins 200000 .* GiB.*lower --bins"
    ):  # one batch of 50 windows at 2 depths at a time, whatever --n (0: every mark)
        punctuation_clusters.check_sizes(punctuation_clusters.Options(bins=200_000), 2, 384)
    for n in (0, 10**6):
        with pytest.raises(TlprobeError, match=r"the MI of 256 windows of 31 tokens"):
            punctuation_clusters.check_sizes(punctuation_clusters.Options(bins=200_000, n=n, batch_size=500), 2, 384)


# -- findings: every criterion made to hold, to differ and to be undecided on synthetic clusters --
CLAIMS = (
    "layer-1 covariance splits internal punctuation into clusters, terminal stays one",
    "the clusters merge at the deep layer",
    "pooled r has the opposite sign of within-cluster r (Simpson's paradox)",
)


def _panel(depth, class_name, slopes, *, silhouette, drop=0.0, n=300, same_token=(), seed=0) -> PanelResult:
    """A synthetic panel: one cluster per slope (``y = slope x + noise`` inside it), cluster j
    offset by ``(6 j, 6 j)`` (pooled r of the within sign) or, with ``drop``, ``(6 j, -drop j)``;
    ``same_token``: clusters whose points are all the mark's own token; the best silhouette given."""
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


def _clusters(*panels: PanelResult) -> PunctuationClusters:
    return PunctuationClusters(panels=panels)


#: Two clusters (best silhouette 0.8) and one (no k reaches 0.5), as keyword arguments of _panel.
SPLIT: dict[str, Any] = {"slopes": (1.0, 1.0), "silhouette": 0.8}
ONE: dict[str, Any] = {"slopes": (1.0,), "silhouette": 0.3}


def _verdicts(clusters: PunctuationClusters) -> dict[str, Finding]:
    found = punctuation_clusters.findings(clusters)
    assert [f.claim for f in found] == list(CLAIMS) and all(f.lesson == "L13" and f.why for f in found)
    return {f.claim: f for f in found}


def test_finding_layer1_split_holds_differs_and_is_undecided():
    claim = CLAIMS[0]
    f = _verdicts(_clusters(_panel(1, "internal", **SPLIT, same_token=(1,)), _panel(1, "terminal", **ONE)))[claim]
    assert f.verdict == "holds" and f.numbers["k internal"] == 2 and f.numbers["k terminal"] == 1
    assert f.numbers["silhouette internal"] == 0.8 and "the window's other marks of the same kind" in f.why
    assert "internal k >= 2 and terminal k = 1" in f.criterion
    # Terminal punctuation splits too: the claim differs, and the why says what the cluster is.
    f = _verdicts(_clusters(_panel(1, "internal", **SPLIT), _panel(1, "terminal", **SPLIT, same_token=(1,))))[claim]
    assert f.verdict == "differs" and f.numbers["k terminal"] == 2
    assert "terminal: 2 clusters" in f.why and "the window's other marks of the same kind (100%" in f.why
    f = _verdicts(_clusters(_panel(1, "internal", **ONE), _panel(1, "terminal", **ONE)))[claim]
    assert f.verdict == "differs" and "internal: one cluster" in f.why
    # A silhouette at the threshold, or too few points: undecided.
    close = _clusters(_panel(1, "internal", slopes=(1.0, 1.0), silhouette=0.52), _panel(1, "terminal", **ONE))
    f = _verdicts(close)[claim]
    assert f.verdict == "inconclusive" and "within 0.05 of 0.5" in f.why
    few = _clusters(_panel(1, "internal", **SPLIT, n=50), _panel(1, "terminal", **ONE))
    f = _verdicts(few)[claim]
    assert f.verdict == "inconclusive" and "100 points, fewer than 200" in f.why
    f = _verdicts(_clusters(_panel(1, "internal", **SPLIT)))[claim]
    assert f.verdict == "inconclusive" and "no terminal panel" in f.why


def test_finding_merge_at_depth_holds_differs_and_is_undecided():
    claim = CLAIMS[1]
    f = _verdicts(_clusters(_panel(1, "internal", **SPLIT), _panel(4, "internal", **ONE)))[claim]
    assert f.verdict == "holds" and f.numbers["k internal"] == [2, 1] and f.numbers["depths"] == [1, 4]
    f = _verdicts(_clusters(_panel(1, "internal", **SPLIT), _panel(4, "internal", **SPLIT, same_token=(1,))))[claim]
    assert f.verdict == "differs" and "at depth 4 internal punctuation still splits" in f.why
    f = _verdicts(_clusters(_panel(1, "internal", **ONE), _panel(4, "internal", **ONE)))[claim]
    assert f.verdict == "inconclusive" and "nothing to merge" in f.why
    f = _verdicts(_clusters(_panel(1, "internal", **SPLIT)))[claim]
    assert f.verdict == "inconclusive" and "only depth 1 was run" in f.why
    f = _verdicts(_clusters(_panel(1, "internal", **SPLIT), _panel(4, "internal", slopes=(1.0,), silhouette=0.48)))
    assert f[claim].verdict == "inconclusive" and "not clear-cut" in f[claim].why


def test_finding_simpson_holds_differs_and_is_undecided():
    claim = CLAIMS[2]
    simpson = _panel(1, "internal", slopes=(1.0, 1.0), silhouette=0.8, drop=12.0)
    assert simpson.simpson.flag
    f = _verdicts(_clusters(simpson, _panel(1, "terminal", **ONE)))[claim]
    assert f.verdict == "holds" and f.numbers["reversals"] == 1 and f.numbers["panels compared"] == 1
    assert f.numbers["pooled r"][0] < 0 and all(r > 0 for r in f.numbers["within r"][0])
    assert "reversed in every cluster" in f.why and "alpha = 0.05" in f.criterion and "t test" in f.criterion
    f = _verdicts(_clusters(_panel(1, "internal", **SPLIT), _panel(1, "terminal", **SPLIT, seed=1)))[claim]
    assert f.verdict == "differs" and f.numbers["reversals"] == 0 and "no reversal in any of the 2" in f.why
    assert max(f.numbers["largest p"]) < 0.05
    # Zero correlation inside the clusters: the reversal cannot be decided.
    null = _panel(1, "internal", slopes=(0.0, 0.0), silhouette=0.8, drop=12.0, seed=3)
    assert null.simpson.outcome == "undecided"
    f = _verdicts(_clusters(null, _panel(1, "terminal", **ONE)))[claim]
    assert f.verdict == "inconclusive" and "not significant" in f.why
    f = _verdicts(_clusters(_panel(1, "internal", **ONE), _panel(1, "terminal", **ONE)))[claim]
    assert f.verdict == "inconclusive" and "no subgroups to pool" in f.why


def test_results_json_and_report_have_the_findings(recipe_output):
    run = recipe_output("punctuation-clusters")
    res = json.loads(run.paths["results"].read_text())
    assert [f["claim"] for f in res["findings"]] == list(CLAIMS)
    assert all(f["verdict"] in ("holds", "differs", "inconclusive") and f["numbers"] for f in res["findings"])
    assert [f.to_dict() for f in punctuation_clusters.findings(run.results["clusters"])] == [
        f.to_dict() for f in run.findings
    ]
    first = run.results["clusters"].panels[0]
    assert res["findings"][0]["numbers"]["k internal"] == first.clustering.k
    html = run.paths["report"].read_text(encoding="utf-8")
    assert html.index("Findings") < html.index("What this shows") < html.index("What the lesson reported")
    assert "For comparison, not measured here: the lesson (GPT-2 medium" in html
    for p in run.results["clusters"].panels:
        assert html.count(f"{p.name[0].upper()}{p.name[1:]}: ") >= 2  # what the clusters are, the Simpson check
