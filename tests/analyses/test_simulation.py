"""The L08 simulation: Gaussian pairs with a known MI, the estimators against it, the bias's closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import tlprobe
from tlprobe.analyses.mi import dependence, entropy, mi
from tlprobe.analyses.simulation import (
    ESTIMATORS,
    EstimatorSweep,
    entropy_identity,
    estimator_sweep,
    gaussian_mi,
    gaussian_pairs,
    plugin_bias,
)
from tlprobe.errors import TlprobeError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_mi_is_the_closed_form_and_refuses_perfect_correlation():
    rho = np.array([0.0, 0.3, -0.6, 0.9])
    np.testing.assert_allclose(gaussian_mi(torch.tensor(rho)).numpy(), -0.5 * np.log(1 - rho**2), rtol=1e-14)
    # the MI of a bivariate Gaussian is its entropies' identity: h(x) + h(y) - h(x, y), from scipy
    cov = np.array([[1.0, 0.6], [0.6, 1.0]])
    h = 2 * stats.norm().entropy() - stats.multivariate_normal(cov=cov).entropy()
    assert float(gaussian_mi(0.6)) == pytest.approx(h, rel=1e-12)
    with pytest.raises(TlprobeError, match="strictly between -1 and 1"):
        gaussian_mi([0.5, 1.0])


def test_gaussian_pairs_are_seeded_correlated_and_shaped():
    x, y = gaussian_pairs([0.0, 0.5, -0.9], 50000, seeds=2, seed=3)
    assert x.shape == y.shape == (3, 2, 50000) and x.dtype == torch.float64
    x2, y2 = gaussian_pairs([0.0, 0.5, -0.9], 50000, seeds=2, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, gaussian_pairs([0.0, 0.5, -0.9], 50000, seeds=2, seed=4)[0])
    r = np.array([[np.corrcoef(x[i, s], y[i, s])[0, 1] for s in range(2)] for i in range(3)])
    np.testing.assert_allclose(r, np.array([[0.0] * 2, [0.5] * 2, [-0.9] * 2]), atol=0.015)  # ~3 / sqrt(n)
    np.testing.assert_allclose(y.std(-1).numpy(), 1.0, atol=0.01)
    with pytest.raises(TlprobeError, match="too few samples"):
        gaussian_pairs([0.1], 2, seeds=1)


def test_plugin_bias_is_the_closed_form_and_matches_independent_uniforms():
    b, n = torch.tensor([4, 8, 32]), torch.tensor([100, 1000])
    np.testing.assert_allclose(
        plugin_bias(b[:, None], n[None]).numpy(), (np.array([3, 7, 31])[:, None] ** 2) / (2 * np.array([100, 1000]))
    )
    with pytest.raises(TlprobeError, match="bins >= 2"):
        plugin_bias(1, 100)
    # Independent uniforms fill all 8 x 8 cells equally: the first-order bias is accurate. 2n MI is
    # about chi-square with (bins-1)^2 degrees of freedom, so the mean of 400 draws has a standard
    # error of sqrt(2 (bins-1)^2) / (2n) / sqrt(400); the closed form must lie within 4 of them.
    g = gen(1)
    x, y = (torch.rand(400, 2000, generator=g, dtype=torch.float64) for _ in range(2))
    v = mi(x, y, bins=8).numpy()
    se = math.sqrt(2 * 49) / (2 * 2000) / math.sqrt(400)
    assert abs(v.mean() - float(plugin_bias(8, 2000))) < 4 * se
    assert v.var(ddof=1) == pytest.approx(2 * 49 / (2 * 2000) ** 2, rel=0.25)  # chi-square's variance


def _binned_gaussian_mi(rho: float, ex: np.ndarray, ey: np.ndarray) -> float:
    """Exact MI of a bivariate Gaussian discretised on these edges (outer bins open), from scipy's CDF."""
    big = 50.0
    gx, gy = np.r_[-big, ex[1:-1], big], np.r_[-big, ey[1:-1], big]
    pts = np.stack(np.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)
    F = stats.multivariate_normal(cov=[[1, rho], [rho, 1]]).cdf(pts).reshape(len(gx), len(gy))
    F[0, :], F[:, 0] = 0.0, 0.0
    p = np.diff(np.diff(F, axis=0), axis=1).clip(min=0)
    p /= p.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    m = p > 0
    return float((p[m] * np.log(p[m] / (px @ py)[m])).sum())


def test_large_n_recovers_the_truth():
    """At n = 1e5 GCMI recovers the Gaussian MI; the corrected binned estimators recover the MI of the
    *binned* Gaussian (computed exactly from scipy's bivariate CDF on the same edges), which is below the
    truth by the discretisation loss; that loss is what the recipe's tolerance max(0.05, 15% of truth)
    allows for at 16 bins (bins ~0.55 sd wide)."""
    rho, n = [0.0, 0.5, 0.9], 100_000
    s = estimator_sweep(rho, bins=[4, 16], samples=[n], seeds=1, n_shuffles=3, seed=7)
    x, y = gaussian_pairs(rho, n, seeds=1, seed=7)  # the sweep's pairs
    truth = -0.5 * np.log(1 - np.array(rho) ** 2)
    est = s.estimates[..., 0, 0].numpy()  # [estimator, rho, bins]
    np.testing.assert_allclose(est[3, :, 0], truth, atol=0.01)  # GCMI: sd ~ 1/sqrt(n) ~ 0.003
    for bi, bins in enumerate((4, 16)):
        exact = []
        for i, r in enumerate(rho):
            ex = np.linspace(float(x[i, 0].min()), float(x[i, 0].max()), bins + 1)
            ey = np.linspace(float(y[i, 0].min()), float(y[i, 0].max()), bins + 1)
            exact.append(_binned_gaussian_mi(r, ex, ey))
        exact = np.array(exact)
        for e in (1, 2):  # Miller-Madow, shuffle-corrected: the binned MI within sampling noise (~0.005)
            np.testing.assert_allclose(est[e, :, bi], exact, atol=0.01)
        assert (exact <= truth + 1e-9).all()  # binning never adds information
    # the discretisation loss: large with 4 bins at rho = 0.9, within the recipe's tolerance with 16
    assert truth[2] - est[1, 2, 0] > 0.3
    assert (np.abs(est[1:3, :, 1] - truth) <= np.maximum(0.05, 0.15 * truth)).all()


def test_sweep_equals_direct_calls_and_numpy():
    rho, bins, samples = [0.0, 0.7], [3, 6], [50, 200]
    s = estimator_sweep(rho, bins=bins, samples=samples, seeds=3, n_shuffles=4, seed=5)
    assert s.estimates.shape == (4, 2, 2, 2, 3) and s.estimates.dtype == torch.float64
    assert s.axes == {"estimator": ESTIMATORS, "rho": ("0", "0.7"), "bins": ("3", "6"), "samples": ("50", "200")}
    x, y = gaussian_pairs(rho, max(samples), seeds=3, seed=5)
    for bi, b in enumerate(bins):
        for si, n in enumerate(samples):
            d = dependence(x[..., :n], y[..., :n], bins=b, n_shuffles=4, seed=5)
            want = torch.stack([d.mi_raw, d.mi_miller_madow, d.mi_corrected, d.gcmi])
            assert torch.equal(s.estimates[:, :, bi, si], want)
            for i in range(2):  # plug-in MI from numpy's joint histogram
                for k in range(3):
                    c, _, _ = np.histogram2d(x[i, k, :n].numpy(), y[i, k, :n].numpy(), bins=b)
                    p = c / n
                    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
                    m = p > 0
                    ref = (p[m] * np.log(p[m] / (px @ py)[m])).sum()
                    assert float(s.estimates[0, i, bi, si, k]) == pytest.approx(ref, abs=1e-12)
    np.testing.assert_allclose(s.truth.numpy(), -0.5 * np.log(1 - np.array(rho) ** 2))
    np.testing.assert_allclose(s.plugin_bias.numpy(), np.array([[4 / 100, 4 / 400], [25 / 100, 25 / 400]]))


def test_rows_and_round_trip(tmp_path):
    s = estimator_sweep([0.0, 0.5], bins=[4], samples=[100, 300], seeds=5, n_shuffles=2)
    rows = s.rows()
    assert len(rows) == 4 * 2 * 1 * 2
    row = rows[3]
    assert (row["estimator"], row["rho"], row["bins"], row["samples"]) == ("plug-in", "0.5", "4", "300")
    vals = s.estimates[0, 1, 0, 1].numpy()
    assert row["mean"] == pytest.approx(vals.mean())
    assert row["low 2.5%"] == pytest.approx(np.percentile(vals, 2.5))
    assert row["high 97.5%"] == pytest.approx(np.percentile(vals, 97.5))
    assert row["bias"] == pytest.approx(vals.mean() - row["truth"]) and row["theory bias at 0"] == 9 / 600
    back = tlprobe.load(s.save(tmp_path / "s.json"))
    assert isinstance(back, EstimatorSweep) and back == s
    gc = s["gcmi"]
    assert gc.estimates.shape == (2, 1, 2, 5) and torch.equal(gc.estimates, s.estimates[3])


def test_entropy_identity_equals_the_plug_in_mi():
    x, y = gaussian_pairs([0.8], 3000, seeds=1, seed=2)
    x, y = x[0, 0], y[0, 0]
    out = entropy_identity(x, y, bins=12)
    assert out["mi"] == pytest.approx(float(mi(x, y, bins=12)), abs=1e-12)
    assert out["h_x"] == pytest.approx(float(entropy(x[:, None], bins=12)[0]), abs=1e-12)
    c, _, _ = np.histogram2d(x.numpy(), y.numpy(), bins=12)
    p = c[c > 0] / 3000
    assert out["h_xy"] == pytest.approx(-(p * np.log(p)).sum(), abs=1e-12)
    assert out["h_xy"] <= out["h_x"] + out["h_y"]


def test_bad_input_is_refused():
    with pytest.raises(TlprobeError, match="bins and samples need at least one value"):
        estimator_sweep([0.0], bins=[], samples=[100], seeds=2)
    with pytest.raises(TlprobeError, match="bins must be >= 2"):
        estimator_sweep([0.0], bins=[1], samples=[100], seeds=2)
    with pytest.raises(TlprobeError, match="strictly between -1 and 1"):
        estimator_sweep([1.5], bins=[4], samples=[100], seeds=2)
    with pytest.raises(TlprobeError, match="needs ~"):
        estimator_sweep([0.0], bins=[4], samples=[10**12], seeds=2)
