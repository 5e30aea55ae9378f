"""Pearson r per group (against scipy), clusters of 2-D points, Simpson's-paradox check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

import tlprobe
from tlprobe.analyses.stats import Clustering, SimpsonCheck, cluster_points, pearson_r, simpson_check
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
    assert check.sizes.tolist() == [300, 300, 300] and check.considered.all()


def test_no_simpson_paradox_without_reversal():
    x, y = _groups(slope_between=+2.0)
    cl = cluster_points(x, y, seed=0)
    assert cl.k == 3
    check = simpson_check(x, y, cl.labels)
    assert check.pooled_r > 0.5 and not check.flag
    assert check.explanation.startswith("No Simpson's paradox")
    one = simpson_check(x, y, torch.zeros_like(x, dtype=torch.long))
    assert not one.flag and one.explanation.startswith("One cluster")
    # Mixed within-cluster signs are not a paradox either.
    y2 = y.clone()
    y2[:300] = -y2[:300] + 2 * y2[:300].mean()
    assert not simpson_check(x, y2, cl.labels).flag
    small = simpson_check(x, y, cl.labels, min_size=400)
    assert not small.flag and small.explanation.startswith("Fewer than two clusters")
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
    got = cluster_points(x, y, k_max=np.int64(3), seed=np.int64(2), sample_size=np.int32(3000))
    assert torch.equal(want.labels, got.labels)
    with pytest.raises(TlprobeError, match="min_silhouette must be a finite number, got nan"):
        cluster_points(x, y, min_silhouette=float("nan"))
    with pytest.raises(TlprobeError, match="min_abs_r must be >= 0.0, got -0.1"):
        simpson_check(x, y, torch.zeros(60, dtype=torch.long), min_abs_r=-0.1)
    with pytest.raises(TlprobeError, match="min_size must be an integer, got 2.5"):
        simpson_check(x, y, torch.zeros(60, dtype=torch.long), min_size=2.5)
