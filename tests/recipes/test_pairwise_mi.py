"""pairwise-mi (L09): the same numbers as tlprobe 0.1.0 for the same seed, what the lesson finds, and the
findings' criteria, each built to hold, to fail and to be undecided."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from tests.helpers import assert_same_numbers
from tlprobe.analyses.mi import MIHistograms, mi_histograms
from tlprobe.errors import TlprobeError
from tlprobe.recipes import pairwise_mi

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


# -- findings: each criterion built to hold, to fail and to be undecided (synthetic, no model) --


LAYERS = ["embed", "block 0", "block 1", "block 2", "block 3"]
CLAIMS = ("raw MI: the embedding", "null-corrected (raw - shuffle null) MI", "shuffle-null bias", "ranks the layers")


def dims(means, sd, n_dims=40, seed=0):
    """``[dimensions, layers]`` per-dimension mean MI around the given layer means."""
    rng = np.random.default_rng(seed)
    return np.asarray(means, dtype=float)[None, :] + sd * rng.standard_normal((n_dims, len(means)))


def verdicts(raw, corrected, null, layers=LAYERS):
    fs = pairwise_mi.findings({"raw": raw, "corrected": corrected, "null": null}, layers, seed=0)
    assert len(fs) == 4 and all(c in f.claim for c, f in zip(CLAIMS, fs))
    assert all(f.lesson == "L09" and f.why for f in fs)
    return fs


def test_embedding_apart_holds_when_shifted_and_blocks_together():
    raw = dims([0.8, 0.5, 0.5, 0.5, 0.5], 0.01)
    null = np.full_like(raw, 0.3)
    fs = verdicts(raw, raw - null, null)
    assert [f.verdict for f in fs[:2]] == ["holds", "holds"]
    assert fs[0].numbers["ratio"] > pairwise_mi.APART_RATIO and "stands apart" in fs[0].why


def test_embedding_apart_differs_when_the_last_blocks_stand_apart():
    raw = dims([0.33, 0.33, 0.33, 0.34, 0.41], 0.01)  # MiniLM-like: the last block apart, not the embedding
    null = dims([0.30, 0.32, 0.33, 0.32, 0.22], 0.005, seed=1)
    fs = verdicts(raw, raw - null, null)
    assert fs[0].verdict == "differs" and fs[0].numbers["apart"] == "block 3"
    assert "sets block 3 apart (above the others)" in fs[0].why
    assert fs[1].verdict == "differs"


def test_embedding_apart_inconclusive_when_the_interval_straddles():
    raw = dims([0.83, 0.5, 0.6, 0.55, 0.55], 0.05, n_dims=30)
    null = np.full_like(raw, 0.3)
    f = verdicts(raw, raw - null, null)[0]
    low, high = f.numbers["interval"]
    assert f.verdict == "inconclusive" and low <= pairwise_mi.APART_RATIO < high and "straddles" in f.why


def test_too_few_dimensions_or_blocks_are_inconclusive():
    raw = dims([0.8, 0.5, 0.5, 0.5, 0.5], 0.01, n_dims=pairwise_mi.MIN_DIMS - 1)
    null = np.full_like(raw, 0.3)
    fs = verdicts(raw, raw - null, null)
    assert {f.verdict for f in fs} == {"inconclusive"} and all("hidden dimensions" in f.why for f in fs)
    two = dims([0.8, 0.5], 0.01)
    f = pairwise_mi.findings({"raw": two, "corrected": two, "null": two}, ["embed", "block 0"])[0]
    assert f.verdict == "inconclusive" and "only 1 block" in f.why


def test_bias_same_everywhere_holds_differs_and_inconclusive():
    raw = dims([0.8, 0.5, 0.5, 0.5, 0.5], 0.01)
    same = dims([0.30, 0.30, 0.31, 0.30, 0.30], 0.005, seed=1)
    assert verdicts(raw, raw - same, same)[2].verdict == "holds"
    falling = dims([0.33, 0.31, 0.30, 0.27, 0.22], 0.005, seed=1)
    f = verdicts(raw, raw - falling, falling)[2]
    assert f.verdict == "differs" and f.numbers["relative_range"] > pairwise_mi.BIAS_TOLERANCE
    # the text is formatted from the numbers: first and last layer means, highest and lowest
    assert f"falls from {f.numbers['first']:.2f} nats at embed to {f.numbers['last']:.2f} at block 3" in f.why
    assert "compare layers on null-corrected MI" in f.why
    near = dims([0.30, 0.315, 0.33, 0.31, 0.31], 0.03, seed=1)
    f = verdicts(raw, raw - near, near)[2]
    low, high = f.numbers["interval"]
    assert f.verdict == "inconclusive" and low <= pairwise_mi.BIAS_TOLERANCE < high


def test_rank_same_holds_differs_and_inconclusive():
    raw = dims([0.5, 0.6, 0.7, 0.8, 0.9], 0.01)
    null = np.full_like(raw, 0.3)
    assert verdicts(raw, raw - null, null)[3].verdict == "holds"
    flipped = dims([0.6, 0.5, 0.4, 0.3, 0.2], 0.01, seed=2)
    f = verdicts(raw, flipped, raw - flipped)[3]
    assert f.verdict == "differs" and f.numbers["top_raw"] == "block 3" and f.numbers["top_corrected"] == "embed"
    assert "5 layers change rank" in f.why or "4 of 5 layers change rank" in f.why
    close = dims([0.2, 0.21, 0.22, 0.23, 0.24], 0.05, seed=2)
    f = verdicts(raw, close, raw - close)[3]
    low, high = f.numbers["interval"]
    assert f.verdict == "inconclusive" and low <= pairwise_mi.RANK_TAU < high
    flat = np.full_like(raw, 0.2)
    f = verdicts(raw, flat, raw - flat)[3]
    assert f.verdict == "inconclusive" and "undefined" in f.why


def test_findings_refuse_mismatched_shapes_and_are_seeded():
    raw = dims([0.8, 0.5, 0.5], 0.05)
    with pytest.raises(TlprobeError, match="one label per layer"):
        pairwise_mi.findings({"raw": raw, "corrected": raw, "null": raw}, LAYERS)
    args = ({"raw": raw, "corrected": raw - 0.3, "null": np.full_like(raw, 0.3)}, LAYERS[:3])
    assert [f.to_dict() for f in pairwise_mi.findings(*args, seed=4)] == [
        f.to_dict() for f in pairwise_mi.findings(*args, seed=4)
    ]


def test_kendall_tau_and_dimension_means_match_references():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(7), rng.standard_normal(7)
    b[2] = b[3]  # a tie: tau-b
    assert float(pairwise_mi.kendall_tau(a, b)) == pytest.approx(kendalltau(a, b)[0])
    m = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = m + m.mT
    i, j = torch.triu_indices(6, 6, 1)
    np.testing.assert_allclose(pairwise_mi.dimension_means(m).mean(0).numpy(), m[:, i, j].mean(-1).numpy())


def test_bias_text_is_formatted_from_the_table():
    layers = {"layer": ["embed", "block 0"]}
    null = mi_histograms(torch.stack([torch.full((3, 3), 0.22), torch.full((3, 3), 0.33)]), axes=layers)
    facts = pairwise_mi.bias_facts(null, null)
    assert facts["direction"] == "rises" and facts["max_layer"] == "block 0" and facts["null_share"] > 0
    text = pairwise_mi.prose("pairwise-mi")["bias"].format(n_tokens=100, **facts)
    assert "rises from 0.22 nats at embed to 0.33 at block 0" in text
    assert "same everywhere" not in text and "common to all pairs" not in text


def test_results_json_has_each_claim(recipe_output):
    run = recipe_output("pairwise-mi")
    saved = json.loads(run.paths["results"].read_text())
    claims = [f["claim"] for f in saved["findings"]]
    assert len(claims) == 4 and all(any(c in claim for claim in claims) for c in CLAIMS)
    assert all(f["verdict"] in ("holds", "differs", "inconclusive") and f["criterion"] for f in saved["findings"])
    dm = np.array(saved["facts"]["dimension_means"]["raw"])
    assert dm.shape == (384, 7)
    np.testing.assert_allclose(dm.mean(0), run.results["raw"].mean.numpy(), rtol=1e-6)
    again = pairwise_mi.findings(saved["facts"]["dimension_means"], run.results["raw"].axes["layer"], seed=0)
    assert [f.to_dict() for f in again] == saved["findings"]  # the findings follow from results.json alone
    html = run.paths["report"].read_text(encoding="utf-8")
    assert html.index("findings") < html.index("What this shows")
    assert "What the lesson reported (GPT-2 small" in html and "is the same everywhere" not in html
