"""token_pairs (L11-L12): distance binning against numpy loops, rank correlations against scipy,
the partial correlation against the residual method, the permutation test's seed and calibration."""

import numpy as np
import pytest
import scipy.stats as sps
import torch

from tlprobe.analyses.token_pairs import (
    AttentionTracking,
    DistanceProfile,
    attention_tracking,
    average_ranks,
    bh_q_values,
    distance_edges,
    distance_profile,
    partial_rho,
    spearman_rho,
)
from tlprobe.errors import TlprobeError


def _symmetric(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(*shape, generator=g, dtype=torch.float64)
    return m + m.mT


def _numpy_profile(m: np.ndarray, edges: list[int]):
    """Loops over pairs: the bins' means, counts and mean distances, and the OLS slope on distance."""
    T = m.shape[-1]
    bins = len(edges) - 1
    sums, counts, dsum = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    ds, vs = [], []
    for i in range(T):
        for j in range(i + 1, T):
            d = j - i
            for b in range(bins):
                if edges[b] <= d < edges[b + 1]:
                    sums[b] += m[i, j]
                    counts[b] += 1
                    dsum[b] += d
                    ds.append(d)
                    vs.append(m[i, j])
    slope = np.polyfit(np.array(ds, float), np.array(vs), 1)[0]
    return sums / counts, counts, dsum / counts, slope


@pytest.mark.parametrize("edges", [None, [1, 2, 4, 9], [2, 3, 7]])
def test_distance_binning_equals_numpy_loops(edges):
    mi = _symmetric(3, 13, 13)
    null = _symmetric(4, 3, 13, 13, seed=1)
    p = distance_profile(mi, null=null, edges=edges, n_bins=5, axes={"depth": ("a", "b", "c")})
    e = p.edges.tolist()
    if edges is not None:
        assert e == edges
    else:
        assert e == distance_edges(13, 5).tolist() and e[0] == 1 and e[-1] == 13
    per_shuffle = np.zeros((4, 3, len(e) - 1))
    shuffle_slopes = np.zeros((4, 3))
    for k in range(3):
        mean, count, centre, slope = _numpy_profile(mi[k].numpy(), e)
        np.testing.assert_allclose(p.mean[k].numpy(), mean, rtol=1e-12)
        np.testing.assert_array_equal(p.count.numpy(), count)
        np.testing.assert_allclose(p.centres.numpy(), centre, rtol=1e-12)
        np.testing.assert_allclose(float(p.slope[k]), slope, rtol=1e-9)
        for s in range(4):
            per_shuffle[s, k], _, _, shuffle_slopes[s, k] = _numpy_profile(null[s, k].numpy(), e)
    assert p.null_mean is not None and p.null_q95 is not None and p.corrected is not None
    assert p.slope_null_q05 is not None and p.slope_null_q95 is not None
    np.testing.assert_allclose(p.null_mean.numpy(), per_shuffle.mean(0), rtol=1e-12)
    np.testing.assert_allclose(p.null_q95.numpy(), np.quantile(per_shuffle, 0.95, axis=0), rtol=1e-12)
    np.testing.assert_allclose(p.corrected.numpy(), p.mean.numpy() - per_shuffle.mean(0), rtol=1e-12)
    np.testing.assert_allclose(p.slope_null_q05.numpy(), np.quantile(shuffle_slopes, 0.05, axis=0), rtol=1e-9)
    np.testing.assert_allclose(p.slope_null_q95.numpy(), np.quantile(shuffle_slopes, 0.95, axis=0), rtol=1e-9)
    rows = p.rows()
    assert len(rows) == 3 * (len(e) - 1) and rows[0]["depth"] == "a" and rows[0]["pairs"] == int(count[0])


def test_distance_profile_reads_the_upper_triangle_only_and_refuses_bad_input():
    m = _symmetric(9, 9)
    lower = torch.tril(torch.full((9, 9), 100.0, dtype=torch.float64), -1)  # below the diagonal: ignored
    a, b = distance_profile(m, n_bins=3), distance_profile(torch.triu(m, 1) + lower, n_bins=3)
    assert torch.equal(a.mean, b.mean) and a.null_mean is None and a.n_shuffles == 0
    assert isinstance(a, DistanceProfile) and len(a.rows()) == len(a.count)
    with pytest.raises(TlprobeError, match="square"):
        distance_profile(torch.rand(3, 4))
    with pytest.raises(TlprobeError, match="hold no pair"):
        distance_profile(m, edges=[1, 2, 20, 30])
    with pytest.raises(TlprobeError, match="increasing"):
        distance_profile(m, edges=[3, 2])
    with pytest.raises(TlprobeError, match="null has shape"):
        distance_profile(m, null=torch.rand(2, 8, 8))


def test_average_ranks_and_spearman_equal_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (4, 3, 40), generator=g).double()  # many ties
    y = torch.randint(0, 7, (3, 40), generator=g).double()
    np.testing.assert_array_equal(average_ranks(x).numpy(), sps.rankdata(x.numpy(), axis=-1))
    rho = spearman_rho(x, y)
    for i in range(4):
        for h in range(3):
            np.testing.assert_allclose(float(rho[i, h]), sps.spearmanr(x[i, h], y[h]).statistic, rtol=1e-12)
    assert torch.isnan(spearman_rho(torch.ones(5), torch.arange(5.0)))


def test_tracking_correlations_equal_scipy_per_head_and_partial_equals_residuals():
    g = torch.Generator().manual_seed(1)
    dist = torch.randint(1, 20, (60,), generator=g).double()  # ties in distance
    mi = (torch.randint(0, 6, (2, 60), generator=g) - 0.05 * dist).double()  # ties in MI, MI falls with distance
    att = torch.rand(2, 3, 60, generator=g, dtype=torch.float64) + 0.1 * mi.unsqueeze(1) - 0.02 * dist
    t = attention_tracking(
        att, mi, dist, n_permutations=50, seed=3, axes={"layer": ("L0", "L1"), "head": ("H0", "H1", "H2")}
    )
    for layer in range(2):
        rd = sps.rankdata(dist.numpy())
        rm = sps.rankdata(mi[layer].numpy())
        np.testing.assert_allclose(
            float(t.rho_mi_distance[layer, 0]), sps.spearmanr(mi[layer], dist).statistic, rtol=1e-12
        )
        for h in range(3):
            a = att[layer, h].numpy()
            np.testing.assert_allclose(float(t.rho_mi[layer, h]), sps.spearmanr(a, mi[layer]).statistic, rtol=1e-12)
            np.testing.assert_allclose(float(t.rho_distance[layer, h]), sps.spearmanr(a, dist).statistic, rtol=1e-12)
            # the residual method: regress both ranks on the distance's ranks, correlate the residuals
            design = np.stack([np.ones_like(rd), rd], 1)
            ra = sps.rankdata(a)
            res_a = ra - design @ np.linalg.lstsq(design, ra, rcond=None)[0]
            res_m = rm - design @ np.linalg.lstsq(design, rm, rcond=None)[0]
            np.testing.assert_allclose(float(t.partial[layer, h]), np.corrcoef(res_a, res_m)[0, 1], rtol=1e-9)
    np.testing.assert_allclose(
        t.q_value.numpy(), sps.false_discovery_control(t.p_value.flatten().numpy()).reshape(2, 3)
    )
    assert t.n_pairs == 60 and len(t.rows()) == 6 and t.rows()[4]["layer"] == "L1" and t.rows()[4]["head"] == "H1"
    assert torch.equal(t["L1H2"].mi, mi[1]) and torch.equal(t["L1H2"].attention, att[1, 2])


def test_permutation_p_equals_a_direct_count_and_is_reproducible():
    g = torch.Generator().manual_seed(2)
    mi = torch.rand(50, generator=g, dtype=torch.float64)
    att = torch.rand(4, 50, generator=g, dtype=torch.float64) + torch.linspace(0, 1, 4)[:, None] * mi
    t = attention_tracking(att, mi, torch.arange(50.0), n_permutations=99, seed=7)
    # the same permutations, drawn as the function documents (seeded CPU generator, argsort of uniforms)
    perm = torch.rand(99, 50, generator=torch.Generator().manual_seed(7)).argsort(-1)
    for h in range(4):
        null = np.array([sps.spearmanr(att[h], mi[p]).statistic for p in perm])
        observed = sps.spearmanr(att[h], mi).statistic
        assert float(t.p_value[h]) == pytest.approx((1 + (null >= observed - 1e-12).sum()) / 100)
    again = attention_tracking(att, mi, torch.arange(50.0), n_permutations=99, seed=7)
    other = attention_tracking(att, mi, torch.arange(50.0), n_permutations=99, seed=8)
    assert torch.equal(t.p_value, again.p_value) and not torch.equal(t.null_q95, other.null_q95)
    assert float(t.p_value[-1]) == 0.01  # the head that follows MI most beats every permutation


def test_permutation_p_is_calibrated_on_null_data():
    g = torch.Generator().manual_seed(4)
    heads = 400
    att = torch.rand(heads, 40, generator=g, dtype=torch.float64)  # independent of the MI
    mi = torch.rand(40, generator=g, dtype=torch.float64)
    t = attention_tracking(att, mi, torch.arange(40.0), n_permutations=199, seed=0)
    share = float((t.p_value < 0.05).double().mean())
    # binomial band: 400 heads at 5 %, sd = sqrt(0.05 * 0.95 / 400) = 0.011; 3 sd either side
    assert 0.05 - 0.033 <= share <= 0.05 + 0.033, share


def test_partial_and_bh_closed_forms_and_bad_input():
    assert float(partial_rho(torch.tensor(0.3), torch.tensor(0.0), torch.tensor(0.0))) == pytest.approx(0.3)
    assert bh_q_values(torch.tensor([0.01, 0.02])).tolist() == pytest.approx([0.02, 0.02])
    with pytest.raises(TlprobeError, match="do not line up"):
        attention_tracking(torch.rand(2, 10), torch.rand(9), torch.arange(10.0))
    with pytest.raises(TlprobeError, match="too few"):
        attention_tracking(torch.rand(2, 2), torch.rand(2), torch.arange(2.0))
    with pytest.raises(TlprobeError, match="n_permutations"):
        attention_tracking(torch.rand(2, 10), torch.rand(10), torch.arange(10.0), n_permutations=0)
    t = attention_tracking(torch.rand(1, 2, 10), torch.rand(1, 10), torch.arange(10.0), n_permutations=5)
    assert isinstance(t, AttentionTracking) and t.p_value.shape == (1, 2)
