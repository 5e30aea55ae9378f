"""qkv-similarity (L02): the same numbers as tlprobe 0.1.0 for the same seed, and the per-head
summary equals the single-head drill-down."""

import json

import numpy as np

from tests.helpers import assert_same_numbers, fixture, run_recipe_fast
from tlprobe import recipes
from tlprobe.recipes.common import data_path, read_lines


def test_same_numbers_as_0_1_0(recipe_output):
    new = json.loads(recipe_output("qkv-similarity").paths["results"].read_text())
    pairs = {
        "params": "params",
        **{f"params/{k}": f"facts/{k}" for k in ("layer", "n_sentences", "n_features")},
        "model": "facts/model",
        "target_positions": "facts/target_positions",
        "non_target_positions": "facts/non_target_positions",
        "histograms/cosine": "results/cosine",
        "histograms/correlation": "results/correlation",
        "per_head/cosine": "results/per_head cosine",
        "per_head/correlation": "results/per_head correlation",
    }
    ignored = {"summary": "the report's table rows: the same numbers as results/cosine and results/correlation"}
    assert_same_numbers("qkv-similarity", new, pairs, ignored)
    heads = new["results"]["per_head cosine"]["axes"]["head"]
    assert heads == [f"L{new['facts']['layer']}H{h}" for h in range(12)]
    assert new["results"]["cosine"]["axes"]["population"] == fixture("qkv-similarity")["populations"]


def test_per_head_summary_matches_head_drill_down(recipe_output, tmp_path):
    full = recipe_output("qkv-similarity").results
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(read_lines(data_path("her_sentences.txt"))[:14]) + "\n", encoding="utf-8")
    mod = recipes.get("qkv-similarity")
    few = run_recipe_fast(mod, None, sentences=str(sentences)).results
    one = run_recipe_fast(mod, None, sentences=str(sentences), head=5).results
    assert "per_head cosine" not in one
    for method in ("cosine", "correlation"):
        per_head = few[f"per_head {method}"]
        target = one[method]["target"]
        np.testing.assert_allclose(per_head["L3H5"].frac_extreme, target.frac_extreme, atol=1e-6)
        np.testing.assert_allclose(per_head["L3H5"].mean, target.mean, atol=1e-5)
    assert full["cosine"].axes["population"][0] == "target" and "per_head cosine" in full
