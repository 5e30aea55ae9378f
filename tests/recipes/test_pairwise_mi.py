"""pairwise-mi (L09): the same numbers as tlprobe 0.1.0 for the same seed, and what the lesson finds."""

import json
import math

import numpy as np

from tests.helpers import assert_same_numbers
from tlprobe.analyses.mi import MIHistograms

HISTOGRAMS = ("raw", "corrected", "null_mean", "miller_madow", "gcmi", "token_mi", "bias_middle_layer")


def test_same_numbers_as_0_1_0(recipe_output):
    new = json.loads(recipe_output("pairwise-mi").paths["results"].read_text())
    pairs = {
        "params/shuffles": "params/shuffles",
        "params/seed": "params/seed",
        "params/bins": "facts/bins",  # 0.1.0 recorded the resolved bin count as a parameter
        **{f"params/{k}": f"facts/{k}" for k in ("n_tokens", "depth", "d_model", "text_chars")},
        "model": "facts/model",
        "histograms": "results",
        "heatmap": "facts/heatmap",
    }
    ignored = {"summary": "the report's table rows: the means and medians of results/*"}
    assert_same_numbers("pairwise-mi", new, pairs, ignored)


def test_findings_on_minilm(recipe_output):
    run = recipe_output("pairwise-mi")
    facts = run.facts
    assert 90 <= facts["n_tokens"] <= 120 and facts["depth"] == 7 and facts["d_model"] == 384
    assert facts["tokens"][0] == "[CLS]" and len(facts["tokens"]) == facts["n_tokens"]
    assert set(run.results) == set(HISTOGRAMS) and all(isinstance(h, MIHistograms) for h in run.results.values())
    h = run.results
    assert h["raw"].axes["layer"][0] == "embed" and len(h["raw"].rows()) == 7
    for i in range(7):
        raw, null, cor = float(h["raw"].mean[i]), float(h["null_mean"].mean[i]), float(h["corrected"].mean[i])
        assert 0.1 < raw < 1.0
        assert cor > 0  # real hidden dimensions share information
        assert null > 0.15  # the undersampling bias is large at ~100 tokens, 10 bins
        assert float(h["miller_madow"].mean[i]) < raw
        assert 0 < float(h["gcmi"].mean[i]) < raw
    for hist in h.values():
        np.testing.assert_allclose(hist.prob.sum(-1).numpy(), 1.0)
    hm = np.array(facts["heatmap"]["mi"])
    assert hm.shape == (96, 96) and facts["heatmap"]["layer"] == h["raw"].axes["layer"][3]
    np.testing.assert_allclose(hm, hm.T)
    assert np.all(np.diag(hm) <= math.log(10) + 1e-6)
    html = run.paths["report"].read_text(encoding="utf-8")
    assert "Raw pairwise MI per layer" in html and "time: pairwise MI and its shuffle null" in html
    assert "Means over pairs of dimensions" in html and "73,536 pairs per layer" in html
