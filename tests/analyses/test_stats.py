"""Pearson r per group (against scipy), clusters of 2-D points, Simpson's-paradox check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

import tlprobe
from tlprobe.analyses.stats import (
    SIMPSON_TEST,
    Clustering,
    SimpsonCheck,
    cluster_points,
    pearson_p,
    pearson_r,
    simpson_check,
)
from tlprobe.errors import TlprobeError
from tlprobe.result import Result


def test_pearson_r_equals_scipy_per_group():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 90, generator=g, dtype=torch.float64)
    y = y + 0.5 * x
    lab = torch.arange(90) % 3
    r = pearson_r(x, y, lab)
    for k in range(3):
        assert r[k].item() == pytest.approx(pearsonr(x[lab == k].numpy(), y[lab == k].numpy())[0], abs=1e-12)
    assert pearson_r(x, y)[0].item() == pytest.approx(pearsonr(x.numpy(), y.numpy())[0], abs=1e-12)
    assert pearson_r(torch.ones(5), x[:5]).isnan().all()  # constant: undefined, not 0
    assert pearson_r(x[:2], y[:2]).isnan().all()  # fewer than 3 points: undefined
    with pytest.raises(TlprobeError, match="3 labels for 90 points"):
        pearson_r(x, y, lab[:3])
    with pytest.raises(TlprobeError, match="x has 90 points and y 5"):
        pearson_r(x, y[:5])


def _groups(slope_between: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three tight groups on a line of slope ``slope_between``; inside each, y rises with x."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for i in range(3):
        x = torch.randn(300, generator=g, dtype=torch.float64) * 0.3
        y = x + torch.randn(300, generator=g, dtype=torch.float64) * 0.15
        xs.append(x + 3.0 * i)
        ys.append(y + slope_between * 3.0 * i)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
def test_simpson_paradox_is_flagged(method):
    x, y = _groups(slope_between=-2.0)
    cl = cluster_points(x, y, method, seed=0)
    assert cl.k == 3 and cl.method == method
    check = simpson_check(x, y, cl.labels)
    assert check.pooled_r < -0.5 and bool((check.within_r > 0.5).all())
    assert check.flag and "Simpson's paradox" in check.explanation and "reverses" in check.explanation
    assert check.outcome == "reversal" and check.alpha == 0.05 and check.test == SIMPSON_TEST
    assert SIMPSON_TEST in check.explanation and "alpha = 0.05" in check.explanation
    assert check.sizes.tolist() == [300, 300, 300] and check.considered.all() and check.significant.all()
    assert check.pooled_p < 1e-10 and bool((check.within_p < 1e-10).all())


def test_no_simpson_paradox_without_reversal():
    x, y = _groups(slope_between=+2.0)
    cl = cluster_points(x, y, seed=0)
    assert cl.k == 3
    check = simpson_check(x, y, cl.labels)
    assert check.pooled_r > 0.5 and not check.flag
    assert check.explanation.startswith("No Simpson's paradox") and check.outcome == "no reversal"
    one = simpson_check(x, y, torch.zeros_like(x, dtype=torch.long))
    assert not one.flag and one.explanation.startswith("One cluster") and one.outcome == "no subgroups"
    # Mixed within-cluster signs are not a paradox either.
    y2 = y.clone()
    y2[:300] = -y2[:300] + 2 * y2[:300].mean()
    mixed = simpson_check(x, y2, cl.labels)
    assert not mixed.flag and mixed.outcome == "no reversal" and "behave differently" in mixed.explanation
    small = simpson_check(x, y, cl.labels, min_size=400)
    assert not small.flag and small.explanation.startswith("Fewer than two clusters")
    assert small.outcome == "no subgroups"
    assert simpson_check(x, torch.ones_like(y), cl.labels).explanation.startswith("The pooled r of covariance")


def test_one_blob_is_one_cluster_and_labels_are_ordered():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 500, generator=g)
    one = cluster_points(x, y, seed=0)
    assert one.k == 1 and one.k_tried == (2, 3, 4, 5) and max(one.scores) < one.min_silhouette
    xg, yg = _groups(+2.0)
    lab = cluster_points(xg, yg, seed=0).labels
    means = [xg[lab == k].mean().item() for k in range(3)]
    assert means == sorted(means)
    gmm = cluster_points(xg, yg, "gmm", k_max=4, seed=0)
    assert gmm.k_tried == (1, 2, 3, 4) and gmm.scores.index(min(gmm.scores)) == gmm.k - 1


def test_bad_clustering_inputs_are_refused():
    x, y = torch.randn(2, 40, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TlprobeError, match="unknown clustering method 'dbscan'"):
        cluster_points(x, y, "dbscan")  # type: ignore[arg-type]
    with pytest.raises(TlprobeError, match="k_max must be >= 1, got 0"):
        cluster_points(x, y, k_max=0)
    with pytest.raises(TlprobeError, match="too few samples for clustering"):
        cluster_points(x[:12], y[:12], k_max=5)
    x[3] = float("nan")
    with pytest.raises(TlprobeError, match="non-finite"):
        cluster_points(x, y)


def test_results_round_trip(tmp_path):
    x, y = _groups(slope_between=-2.0)
    cl = cluster_points(x, y, seed=0)
    check = simpson_check(x, y, cl.labels)
    for r in (cl, check):
        assert isinstance(r, Result)
        assert Result.from_dict(r.to_dict()) == r
        assert tlprobe.load(r.save(tmp_path / f"{type(r).__name__}.json")) == r
    assert isinstance(Result.from_dict(cl.to_dict()), Clustering)
    undefined = simpson_check(x[:2], y[:2], torch.tensor([0, 1]))
    assert isinstance(undefined, SimpsonCheck) and Result.from_dict(undefined.to_dict()) == undefined


def test_knobs_are_checked_and_accept_numpy_integers():
    x, y = torch.randn(2, 60, generator=torch.Generator().manual_seed(1))
    want = cluster_points(x, y, k_max=3, seed=2)
    got = cluster_points(x, y, k_max=np.int64(3), seed=np.int64(2), sample_size=np.int32(3000))  # pyright: ignore[reportArgumentType]
    assert torch.equal(want.labels, got.labels)
    with pytest.raises(TlprobeError, match="min_silhouette must be a finite number, got nan"):
        cluster_points(x, y, min_silhouette=float("nan"))
    with pytest.raises(TlprobeError, match="min_abs_r must be >= 0.0, got -0.1"):
        simpson_check(x, y, torch.zeros(60, dtype=torch.long), min_abs_r=-0.1)
    with pytest.raises(TlprobeError, match="min_size must be an integer, got 2.5"):
        simpson_check(x, y, torch.zeros(60, dtype=torch.long), min_size=2.5)  # pyright: ignore[reportArgumentType]
    for bad, message in ((0.0, "alpha must be > 0, got 0.0"), (1.0, "alpha must be < 1, got 1.0")):
        with pytest.raises(TlprobeError, match=message):
            simpson_check(x, y, torch.zeros(60, dtype=torch.long), alpha=bad)


def _null_trial(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two clusters of 100 points, x and y independent inside each (no within-cluster correlation),
    the second cluster 4 standard deviations up and right, so the pooled r is large (about +0.8)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(100, generator=g), torch.randn(100, generator=g) + 4])
    y = torch.cat([torch.randn(100, generator=g), torch.randn(100, generator=g) + 4])
    return x, y, torch.arange(200) // 100


def test_simpson_false_positive_rate_on_null_data_is_at_most_alpha():
    trials = [simpson_check(*_null_trial(seed)) for seed in range(400)]
    assert min(t.pooled_r for t in trials) > 0.6 and all(t.pooled_p < 1e-10 for t in trials)
    rate = sum(t.flag for t in trials) / len(trials)
    assert rate <= 0.05, rate  # measured: 0.0025 (1 of 400)
    # The sign comparison alone (every r "significant": alpha just under 1) fired in ~20%:
    # the test is what keeps noise from flagging.
    untested = sum(simpson_check(*_null_trial(seed), alpha=1 - 1e-12).flag for seed in range(400)) / 400
    assert untested > 0.1, untested
    # Undecided is the usual answer on noise: the within-cluster r's are not significant.
    assert sum(t.outcome == "undecided" for t in trials) > 0.8 * len(trials)


def test_simpson_true_case_flags_with_few_points():
    # 2 clusters x 100 points, y = x + noise inside each (r ~ 0.7), the second cluster far lower.
    g = torch.Generator().manual_seed(5)
    x0, x1 = torch.randn(100, generator=g), torch.randn(100, generator=g) + 4
    y0 = x0 + torch.randn(100, generator=g)
    y1 = x1 + torch.randn(100, generator=g) - 12
    check = simpson_check(torch.cat([x0, x1]), torch.cat([y0, y1]), torch.arange(200) // 100)
    assert check.flag and check.outcome == "reversal" and check.pooled_r < 0 and bool((check.within_r > 0).all())
    # One cluster whose r is not significant: the reversal cannot be claimed in every cluster.
    weak = simpson_check(torch.cat([x0, x1]), torch.cat([torch.randn(100, generator=g), y1]), torch.arange(200) // 100)
    assert not weak.flag and weak.outcome == "undecided" and weak.explanation.startswith("Undecided")


def test_p_values_equal_scipy_pearsonr():
    x, y, lab = _null_trial(7)
    y = y + 0.2 * x
    lab = lab.clone()
    lab[::7] = 2  # a third, smaller cluster
    check = simpson_check(x, y, lab)
    xs, ys = x.double().numpy(), y.double().numpy()
    # r agrees to ~1e-16; a p-value of 1e-58 moves by ~1e-5 of itself with that last bit of r.
    assert check.pooled_p == pytest.approx(pearsonr(xs, ys)[1], rel=1e-4)
    for j in range(3):
        sel = (lab == j).numpy()
        assert check.within_p[j].item() == pytest.approx(pearsonr(xs[sel], ys[sel])[1], rel=1e-9)
    rs = torch.tensor([-1.0, -0.3, 0.0, 0.05, 0.999, float("nan")], dtype=torch.float64)
    ps = pearson_p(rs, torch.tensor([5, 30, 8, 1000, 4, 50]))
    assert ps[0] == 0 and ps[2] == 1 and ps[5].isnan()
    assert pearson_p(torch.tensor(0.5), 2).isnan()  # fewer than 3 points: undefined
    for r, n, p in zip(rs[1:5].tolist(), [30, 8, 1000, 4], ps[1:5].tolist()):
        # pearsonr of data with exactly this r: y = r x + sqrt(1 - r^2) z, with z orthogonal to x.
        g = np.random.default_rng(n)
        a, b = g.normal(size=n), g.normal(size=n)
        a, b = a - a.mean(), b - b.mean()
        b = b - (a @ b) / (a @ a) * a
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        assert p == pytest.approx(pearsonr(a, r * a + np.sqrt(1 - r * r) * b)[1], rel=1e-6), (r, n)


def test_batched_pearson_and_spearman_equal_scipy_row_by_row():
    from scipy.stats import pearsonr, spearmanr

    from tlprobe.analyses.stats import pearson, spearman

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 11)), rng.standard_normal((4, 11))
    b[:, 3] = b[:, 4]  # ties: average ranks
    b[2] = 1.0  # constant: undefined
    got_p, got_s = pearson(a, b), spearman(a, b)
    for i in (0, 1, 3):
        assert got_p[i] == pytest.approx(pearsonr(a[i], b[i])[0], abs=1e-12)
        assert got_s[i] == pytest.approx(spearmanr(a[i], b[i])[0], abs=1e-12)
    assert np.isnan(got_p[2]) and np.isnan(got_s[2])


def test_bootstrap_interval_is_scipys_seeded_and_undefined_on_bad_input():
    from scipy.stats import bootstrap

    from tlprobe.analyses.stats import bootstrap_interval, pearson

    rng = np.random.default_rng(1)
    x = rng.standard_normal(60)
    y = x + rng.standard_normal(60)
    got = bootstrap_interval([x, y], pearson, seed=3, n_resamples=500)
    ref = bootstrap(
        (x, y),
        pearson,
        paired=True,
        vectorized=True,
        n_resamples=500,
        method="percentile",
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert got == (float(ref.low), float(ref.high))
    assert got == bootstrap_interval([x, y], pearson, seed=3, n_resamples=500)  # reproducible
    assert got != bootstrap_interval([x, y], pearson, seed=4, n_resamples=500)
    assert all(np.isnan(bootstrap_interval([x[:1]], np.mean, seed=0)))  # one observation
    assert all(np.isnan(bootstrap_interval([np.r_[x, np.nan]], np.mean, seed=0)))  # non-finite data
    assert bootstrap_interval([np.ones(5)], np.mean, seed=0) == (1.0, 1.0)  # no spread: the value itself
