"""mi-vs-covariance (L10): the same numbers as tlprobe 0.1.0 for the same seed, and what the lesson finds."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from tests.helpers import assert_same_numbers
from tlprobe import recipes
from tlprobe.analyses.mi import dependence
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


# -- findings: each criterion built to hold, to fail and to be undecided (synthetic, no model) --

CLAIMS = ("covariance is linear in r", "MI is U-shaped in r", "squaring the covariance", "MI > 0 where covariance")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sweep(steps=19, n=400, seed=0, signed=True):
    """A correlation sweep like the recipe's (``signed=False``: every pair has correlation |r|)."""
    rho = torch.linspace(0.9, -0.9, steps, dtype=torch.float64)
    z = torch.randn(2, steps, n, generator=gen(seed), dtype=torch.float64)
    r = rho if signed else rho.abs()
    y = r[:, None] * z[0] + torch.sqrt(1 - r[:, None] ** 2) * z[1]
    return rho, dependence(z[0], y, n_shuffles=20, seed=seed, axes={"rho": [f"{v:.2f}" for v in rho.tolist()]})


def examples(y_of_x, n=400, seed=0, label="y = x^2"):
    x = torch.rand(1, n, generator=gen(seed), dtype=torch.float64) * 4 - 2
    noise = torch.randn(1, n, generator=gen(seed + 1), dtype=torch.float64)
    return dependence(x, y_of_x(x, noise), n_shuffles=20, keep_samples=True, axes={"example": [label]})


@pytest.fixture(scope="module")
def base():
    rho, sw = sweep()
    return rho, sw, examples(lambda x, e: x**2)


def verdicts(ex, sw, rho):
    fs = mi_vs_covariance.findings(ex, sw, rho, seed=0)
    assert len(fs) == 3 + ex.covariance.numel() and all(c in f.claim for c, f in zip(CLAIMS, fs))
    assert all(f.lesson == "L10" and f.why and f.criterion for f in fs)
    return [f.verdict for f in fs], fs


def test_the_lessons_world_holds(base):
    rho, sw, ex = base
    v, fs = verdicts(ex, sw, rho)
    assert v == ["holds"] * 4
    assert fs[0].numbers["pearson"] > mi_vs_covariance.LINEAR_R and fs[1].numbers["end_gap"] > 0.3
    assert "MI sees the non-linear dependence" in fs[3].why


def test_linear_claim_differs_when_covariance_is_unsigned_and_is_undecided_on_few_points(base):
    rho, sw, ex = base
    _, unsigned = sweep(signed=False)
    v, fs = verdicts(ex, unsigned, rho)
    assert v[0] == "differs" and "not a signed line" in fs[0].why
    rho3, short = sweep(steps=3)
    v, fs = verdicts(ex, short, rho3)
    assert v[:3] == ["inconclusive"] * 3 and all("only 3 sweep points" in f.why for f in fs[:3])
    noisy = dataclasses.replace(
        sw, covariance=sw.covariance + 0.2 * torch.randn(len(rho), generator=gen(5), dtype=torch.float64)
    )
    f = verdicts(ex, noisy, rho)[1][0]
    low, high = f.numbers["interval"]
    assert f.verdict == "inconclusive" and low <= mi_vs_covariance.LINEAR_R < high


def test_u_claim_holds_differs_and_is_undecided(base):
    rho, sw, ex = base
    one_sided = dataclasses.replace(sw, mi_corrected=torch.where(rho > 0, sw.mi_corrected, 0.0))
    v, fs = verdicts(ex, one_sided, rho)
    assert v[1] == "differs" and "does not follow |r|" in fs[1].why
    # a shallow U: the ends exceed the middle by less than the null's 95% margin there
    shallow = dataclasses.replace(sw, mi_corrected=0.01 * rho.abs(), mi_null_q95=sw.mi_null_mean + 0.05)
    v, fs = verdicts(ex, shallow, rho)
    assert v[1] == "inconclusive" and "within the null's margin" in fs[1].why
    flat = dataclasses.replace(sw, mi_corrected=torch.zeros(len(rho), dtype=torch.float64))
    assert verdicts(ex, flat, rho)[0][1] == "inconclusive"


def test_squared_covariance_claim_holds_differs_and_is_undecided(base):
    rho, sw, ex = base
    unrelated = dataclasses.replace(sw, mi_corrected=torch.linspace(0, 1, len(rho), dtype=torch.float64))
    assert verdicts(ex, unrelated, rho)[0][2] == "differs"
    noisy_mi = sw.mi_corrected + 0.12 * torch.randn(len(rho), generator=gen(3), dtype=torch.float64)
    f = verdicts(ex, dataclasses.replace(sw, mi_corrected=noisy_mi), rho)[1][2]
    low, high = f.numbers["interval"]
    assert f.verdict == "inconclusive" and low <= mi_vs_covariance.LIKE_R < high


def test_nonlinear_claim_holds_differs_and_is_undecided(base):
    rho, sw, _ = base
    linear = examples(lambda x, e: x + 0.5 * e, label="y = x + noise")
    v, fs = verdicts(linear, sw, rho)
    assert v[3] == "differs" and "is not about 0" in fs[3].why and fs[3].claim.startswith("y = x + noise:")
    independent = examples(lambda x, e: e, label="independent")
    undetected = dataclasses.replace(independent, mi_raw=independent.mi_null_q95 - 0.01)
    v, fs = verdicts(undetected, sw, rho)
    assert v[3] == "differs" and "does not detect" in fs[3].why
    weak = examples(lambda x, e: 0.27 * x + e, n=200, seed=4, label="weak")
    v, fs = verdicts(weak, sw, rho)
    low, high = fs[3].numbers["interval"]
    assert v[3] == "inconclusive" and low < mi_vs_covariance.ZERO_R <= high
    no_samples = dataclasses.replace(weak, x=None, y=None)
    v, fs = verdicts(no_samples, sw, rho)
    assert v[3] == "inconclusive" and "keep_samples=True" in fs[3].why


def test_findings_refuse_a_mismatched_rho(base):
    rho, sw, ex = base
    with pytest.raises(TlprobeError, match="one true correlation per pair"):
        mi_vs_covariance.findings(ex, sw, rho[:4])


def test_results_json_has_each_claim_and_text_from_the_numbers(recipe_output):
    run = recipe_output("mi-vs-covariance")
    saved = json.loads(run.paths["results"].read_text())
    claims = [f["claim"] for f in saved["findings"]]
    assert len(claims) == 5 and all(c in claim for c, claim in zip(CLAIMS, claims))
    assert claims[3].startswith("y = x^2") and claims[4].startswith("y = cos(x)")
    assert [f.to_dict() for f in run.findings] == saved["findings"]
    html = run.paths["report"].read_text(encoding="utf-8")
    ex = run.results["examples"]
    assert f"y = x^2 has correlation {float(ex.correlation[0]):.3f}" in html
    assert html.index("findings") < html.index("Non-linear dependence") and "What the lesson reported" in html
