"""The L09 (pairwise-mi) and L10 (mi-vs-covariance) recipes, run through their run() functions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import recipes
from recipes import mi_vs_covariance, pairwise_mi


def test_recipes_are_discovered():
    found = recipes.available()
    assert found["pairwise-mi"] is pairwise_mi
    assert found["mi-vs-covariance"] is mi_vs_covariance


def test_mi_vs_covariance_findings(recipe_output):
    paths = recipe_output("mi-vs-covariance")  # defaults: 1000 samples, 100 shuffles, 19 steps
    assert paths["report"].stat().st_size > 10_000
    res = json.loads(paths["results"].read_text())
    ex = res["examples"]
    for i in range(2):  # parabola and cosine: covariance ~0, MI far above the shuffle null
        assert abs(ex["correlation"][i]) < 0.15
        assert ex["mi_raw"][i] > ex["mi_null_q95"][i] + 0.3
        assert ex["gcmi"][i] < 0.05  # GCMI cannot see a symmetric dependence
    sw = res["sweep"]
    rho, cov, mi = np.array(sw["rho"]), np.array(sw["covariance"]), np.array(sw["mi_corrected"])
    assert rho[0] == pytest.approx(0.9) and rho[-1] == pytest.approx(-0.9)
    assert np.corrcoef(rho, cov)[0, 1] > 0.98  # covariance: a signed straight line
    assert cov[0] > 0.7 and cov[-1] < -0.7
    mid = len(rho) // 2
    assert mi[0] > mi[mid] + 0.4 and mi[-1] > mi[mid] + 0.4  # MI: a U
    assert abs(mi[mid]) < 0.05
    sq = np.array(sw["covariance_squared"])  # squared covariance: a U like MI's
    assert abs(int(np.argmin(sq)) - mid) <= 1 and sq[0] > 0.5 and sq[-1] > 0.5
    gauss = -0.5 * np.log(1 - rho**2)
    np.testing.assert_allclose(sw["gcmi"], gauss, atol=0.1)


def test_mi_vs_covariance_other_options(tmp_path):
    paths = mi_vs_covariance.run(samples=300, shuffles=20, steps=5, bins="sqrt", seed=3, out=str(tmp_path), quiet=True)
    res = json.loads(paths["results"].read_text())
    assert res["params"]["bins"] == 18  # ceil(sqrt(300))
    assert len(res["sweep"]["rho"]) == 5 and len(res["sweep_rows"]) == 5


def test_pairwise_mi_recipe_on_minilm(recipe_output):
    paths = recipe_output("pairwise-mi")
    res = json.loads(paths["results"].read_text())
    p = res["params"]
    assert 90 <= p["n_tokens"] <= 120 and p["depth"] == 7 and p["d_model"] == 384
    assert res["layers"][0] == "embeddings" and len(res["summary"]) == 7
    assert res["tokens"][0] == "[CLS]" and len(res["tokens"]) == p["n_tokens"]
    for row in res["summary"]:
        assert 0.1 < row["raw mean"] < 1.0
        assert row["raw - null mean"] > 0  # real hidden dimensions share information
        assert row["null mean"] > 0.15  # the undersampling bias is large at ~100 tokens, 10 bins
        assert row["Miller-Madow mean"] < row["raw mean"]
        assert 0 < row["GCMI mean"] < row["raw mean"]
    for h in res["histograms"].values():
        np.testing.assert_allclose(np.array(h["prob"]).sum(1), 1.0)
    hm = np.array(res["heatmap"]["mi"])
    np.testing.assert_allclose(hm, hm.T)
    assert np.all(np.diag(hm) <= math.log(10) + 1e-6)
    html = paths["report"].read_text(encoding="utf-8")
    assert "time: pairwise MI, all layers" in html and "Raw pairwise MI per layer" in html


def test_recipe_bad_options(tmp_path):
    from tlprobe.errors import TlprobeError

    with pytest.raises(TlprobeError, match="too few samples"):
        mi_vs_covariance.run(samples=5, out=str(tmp_path), quiet=True)
    with pytest.raises(TlprobeError, match="steps must be >= 3"):
        mi_vs_covariance.run(steps=2, out=str(tmp_path), quiet=True)
