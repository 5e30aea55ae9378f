"""punctuation-clusters (L13): the same numbers as tlprobe 0.1.0 for the same seed, and its report."""

import json

import pytest

from tests.helpers import assert_same_numbers, fixture, run_recipe_fast
from tlprobe.access.text import stdlib_corpus
from tlprobe.errors import TlprobeError
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
        ({"n": 0}, r"--n must be >= 1, got 0"),
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
    options = punctuation_clusters.check_options(punctuation_clusters.Options(layers=1))
    assert options.layers == (1,)  # one depth from Python
    punctuation_clusters.check_sizes(options, 2, 384)
    with pytest.raises(
        TlprobeError, match=r"the MI of 256 windows of 31 tokens with --bins 200000 .* GiB.*lower --bins"
    ):
        punctuation_clusters.check_sizes(punctuation_clusters.Options(bins=200_000), 2, 384)
