"""mi-vs-covariance (L10): the same numbers as tlprobe 0.1.0 for the same seed, and what the lesson finds."""

import json

import numpy as np
import pytest

from tests.helpers import assert_same_numbers
from tlprobe import recipes
from tlprobe.errors import TlprobeError

mi_vs_covariance = recipes.get("mi-vs-covariance")


def test_same_numbers_as_0_1_0(recipe_output):
    new = json.loads(recipe_output("mi-vs-covariance").paths["results"].read_text())
    fields = [
        "covariance",
        "correlation",
        "mi_raw",
        "mi_miller_madow",
        "mi_null_mean",
        "mi_null_q95",
        "mi_corrected",
        "gcmi",
        "bins",
        "n_samples",
        "n_shuffles",
        "seed",
    ]
    pairs = {
        "params": "params",
        "examples": "results/examples",
        **{f"sweep/{f}": f"results/sweep/{f}" for f in fields + ["covariance_squared"]},
        "sweep/rho": "facts/rho",
        "example_data": "results/examples",  # x and y: the scatter plots' data, kept in the result
    }
    ignored = {
        "example_rows": "the report's table rows: the same numbers as results/examples",
        "sweep_rows": "the report's table rows: the same numbers as results/sweep and facts/gaussian_mi",
    }
    assert_same_numbers("mi-vs-covariance", new, pairs, ignored)


def test_findings(recipe_output):
    run = recipe_output("mi-vs-covariance")  # 400 samples, 20 shuffles, 19 steps
    ex, sw = run.results["examples"], run.results["sweep"]
    assert ex.axes["example"][0].startswith("y = x^2") and ex.x is not None and sw.x is None
    for i in range(2):  # parabola and cosine: covariance ~0, MI far above the shuffle null
        assert abs(float(ex.correlation[i])) < 0.15
        assert float(ex.mi_raw[i]) > float(ex.mi_null_q95[i]) + 0.3
        assert float(ex.gcmi[i]) < 0.05  # GCMI cannot see a symmetric dependence
    rho, cov, mi = np.array(run.facts["rho"]), sw.covariance.numpy(), sw.mi_corrected.numpy()
    assert rho[0] == pytest.approx(0.9) and rho[-1] == pytest.approx(-0.9)
    assert sw.axes["rho"][0] == "0.90" and len(sw.rows()) == len(rho)
    assert np.corrcoef(rho, cov)[0, 1] > 0.98  # covariance: a signed straight line
    assert cov[0] > 0.7 and cov[-1] < -0.7
    mid = len(rho) // 2
    assert mi[0] > mi[mid] + 0.4 and mi[-1] > mi[mid] + 0.4  # MI: a U
    assert abs(mi[mid]) < 0.05
    sq = sw.covariance_squared.numpy()  # squared covariance: a U like MI's
    assert abs(int(np.argmin(sq)) - mid) <= 1 and sq[0] > 0.5 and sq[-1] > 0.5
    np.testing.assert_allclose(sw.gcmi.numpy(), -0.5 * np.log(1 - rho**2), atol=0.1)
    html = run.paths["report"].read_text(encoding="utf-8")
    assert "Correlation sweep" in html and "true correlation" in html and "cov=" in html


def test_other_options():
    run = mi_vs_covariance.run(samples=300, shuffles=20, steps=5, bins="sqrt", seed=3, out=None, quiet=True)
    assert run.params["bins"] == "sqrt" and run.facts["bins"] == 18  # ceil(sqrt(300))
    assert run.results["sweep"].bins == 18 and len(run.results["sweep"].rows()) == 5


def test_bad_options():
    with pytest.raises(TlprobeError, match="too few samples"):
        mi_vs_covariance.run(samples=5, out=None, quiet=True)
    with pytest.raises(TlprobeError, match="steps must be >= 3"):
        mi_vs_covariance.run(steps=2, out=None, quiet=True)
