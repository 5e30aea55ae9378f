"""Streaming histogram MI on fixed edges: equal to pairwise_mi, exact permutation null = sklearn's EMI."""

import io

import numpy as np
import pytest
import torch
from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information

from tlprobe.analyses.mi import bin_labels, mi_null, pairwise_mi
from tlprobe.analyses.mi_counts import MICounts, RangeAccumulator, edges_from_range
from tlprobe.errors import TlprobeError

SIZES = (1, 7, 13)  # uneven batches, then the rest


def _data(lead=(2,), samples=80, seed=0):
    """Seeded ``[*lead, samples, 5]``: Gaussian, a dependent one, a constant, a discrete one, skewed."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*lead, samples, 2, generator=g, dtype=torch.float64)
    dep = z[..., :1] ** 2 + 0.3 * z[..., 1:]
    const = torch.full((*lead, samples, 1), 3.25, dtype=torch.float64)
    discrete = torch.randint(0, 4, (*lead, samples, 1), generator=g).double()
    skewed = torch.randn(*lead, samples, 1, generator=g, dtype=torch.float64).exp()
    return torch.cat([z[..., :1], dep, const, discrete, skewed], -1)


def _batches(x):
    cuts = np.cumsum((0, *SIZES, x.shape[-2] - sum(SIZES)))
    return [x[..., a:b, :] for a, b in zip(cuts[:-1], cuts[1:])]


def _round_trip(acc):
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    buf.seek(0)
    return type(acc).from_state_dict(torch.load(buf, weights_only=True))


def _shards(x, k, rows_per_tile=None):
    """The same data three ways: in order, ((a + b) + c) + d and d + (c + (b + a)) of shards."""
    parts = _batches(x)
    rng = RangeAccumulator()
    for p in reversed(parts):
        rng.update(p)
    edges = rng.edges(k)

    def new():
        return MICounts(edges, rows_per_tile=rows_per_tile)

    in_order = new()
    for p in parts:
        in_order.update(p)
    shards = [new().update(p) for p in parts]
    left = new()
    for s in shards:
        left.merge(s)
    right = new().merge(shards[3]).merge(new().merge(shards[2]).merge(new().merge(shards[1]).merge(shards[0])))
    return {"in-order": in_order, "left": left, "right": right}


@pytest.mark.parametrize("k,rows_per_tile", [(3, None), (10, None), (4, 2)])
def test_counts_equal_pairwise_mi_in_any_split_and_merge_order(k, rows_per_tile):
    x = _data()
    raw = pairwise_mi(x, bins=k, dtype=torch.float64)
    mm = pairwise_mi(x, bins=k, correction="miller-madow", dtype=torch.float64)
    accs = _shards(x, k, rows_per_tile)
    ref = accs["in-order"]
    for acc in accs.values():
        assert acc.n_samples == x.shape[-2] and acc.n_clipped == 0
        torch.testing.assert_close(acc.result(), raw, atol=1e-10, rtol=0)
        torch.testing.assert_close(acc.result(correction="miller-madow"), mm, atol=1e-10, rtol=0)
        assert all(torch.equal(a, b) for a, b in zip(acc.tiles, ref.tiles))
    # the constant variable: entropy 0, MI 0 (the plug-in values of pairwise_mi)
    assert float(ref.result()[..., 2, :].abs().max()) < 1e-12
    assert ref.result().shape == (2, 5, 5)


def test_marginals_and_labels_are_those_of_bin_labels():
    x = _data(lead=(2, 3), samples=50, seed=1)
    k = 6
    acc = MICounts(RangeAccumulator().update(x).edges(k)).update(x)
    lab = bin_labels(x, bins=k)
    assert torch.equal(acc.labels(x), lab)
    want = torch.nn.functional.one_hot(lab, k).sum(-3)  # [2, 3, V, k]
    assert torch.equal(acc.marginals(), want)


def _emi_sklearn(lab, k):
    """sklearn's EMI of every pair of columns of ``[n, V]`` labels: ``[V, V]``."""
    lab = lab.numpy()
    n, v = lab.shape
    out = np.empty((v, v))
    for i in range(v):
        for j in range(v):
            table = np.zeros((k, k), dtype=np.int64)
            np.add.at(table, (lab[:, i], lab[:, j]), 1)
            table = table[table.sum(1) > 0][:, table.sum(0) > 0]  # empty bins add nothing (and log(0) there)
            out[i, j] = expected_mutual_information(table, n)
    return out


@pytest.mark.parametrize("n,k", [(50, 3), (50, 10), (200, 3), (200, 10), (2000, 10)])
def test_null_mean_equals_sklearn_expected_mutual_information(n, k):
    x = _data(lead=(2,), samples=n, seed=n + k)
    acc = MICounts(RangeAccumulator().update(x).edges(k))
    for p in _batches(x):
        acc.update(p)
    null = acc.null_mean()
    assert null.shape == (2, 5, 5)
    lab = bin_labels(x, bins=k)
    for b in range(2):
        want = torch.from_numpy(_emi_sklearn(lab[b], k))
        torch.testing.assert_close(null[b], want, atol=1e-9, rtol=0)
    r = acc.mi_result(axes={"layer": ("a", "b")})
    assert r.method == "permutation" and r.null_std is None and r.n_shuffles == 0 and r.seed is None
    assert r.bins == k and r.n_samples == n
    torch.testing.assert_close(r.corrected, r.raw - r.null_mean, atol=0, rtol=0)
    assert [row["layer"] for row in r.rows()] == ["a", "b"]


def test_null_mean_per_leading_index_equals_the_shared_table(monkeypatch):
    x = _data(lead=(3,), samples=90, seed=8)
    acc = MICounts(RangeAccumulator().update(x).edges(5)).update(x)
    shared = acc.null_mean()
    monkeypatch.setattr("tlprobe.analyses.mi_counts._EMI_TABLE_BYTES", 0)  # one table per leading index
    torch.testing.assert_close(acc.null_mean(), shared, atol=1e-14, rtol=0)


def test_null_mean_agrees_with_the_shuffle_null():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(120, 8, generator=g, dtype=torch.float64)
    x[:, 5] = x[:, 5].exp()  # a skewed marginal: a different bias
    k = 6
    exact = MICounts(RangeAccumulator().update(x).edges(k)).update(x).null_mean()
    shuffled = mi_null(x, n_shuffles=200, bins=k, seed=1, dtype=torch.float64)
    assert shuffled.null_mean is not None and shuffled.null_std is not None
    i, j = torch.triu_indices(8, 8, 1)
    diff = shuffled.null_mean[i, j] - exact[i, j]
    se = shuffled.null_std[i, j] / 200**0.5
    assert float((diff.abs() / se).max()) < 4.5  # every pair within a few standard errors
    assert abs(float(diff.mean())) < 4 * float(se.square().sum().sqrt()) / len(diff)  # the mean over pairs


def test_calibration_edges_clip_later_values_into_the_edge_bins():
    x = _data(samples=100, seed=4)
    calib = x[..., :30, :]
    k = 5
    edges = RangeAccumulator().update(calib).edges(k)
    acc = MICounts(edges).update(x[..., :60, :]).update(x[..., 60:, :])
    lo, hi = edges[..., 0], edges[..., -1]  # [2, V]
    outside = (x < lo.unsqueeze(-2)) | (x > hi.unsqueeze(-2))
    assert acc.n_clipped == int(outside.sum()) > 0
    clamped = torch.minimum(torch.maximum(x, lo.unsqueeze(-2)), hi.unsqueeze(-2))
    assert torch.equal(acc.labels(x), acc.labels(clamped))
    # the counts are those of the clamped values
    ref = MICounts(edges).update(clamped)
    assert all(torch.equal(a, b) for a, b in zip(acc.tiles, ref.tiles))
    torch.testing.assert_close(acc.result(), ref.result(), atol=0, rtol=0)


def test_user_ranges():
    edges = edges_from_range(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 10.0]), 4, shape=(3, 2))
    assert edges.shape == (3, 2, 5) and edges.dtype == torch.float64
    assert edges[0, 1].tolist() == [0.0, 2.5, 5.0, 7.5, 10.0]
    acc = MICounts(edges).update(torch.tensor([[[-5.0, 10.0]], [[1.0, 0.0]], [[0.0, 11.0]]]))
    assert acc.n_clipped == 2
    assert acc.labels(torch.tensor([[[-5.0, 10.0]], [[1.0, 0.0]], [[0.0, 11.0]]]))[..., 0, :].tolist() == [
        [0, 3],
        [3, 0],
        [2, 3],
    ]
    with pytest.raises(TlprobeError, match="hi > lo"):
        edges_from_range(1.0, 1.0, 4, shape=(2,))
    with pytest.raises(TlprobeError, match="bins must be >= 2"):
        edges_from_range(0.0, 1.0, 1, shape=(2,))


def test_state_dict_round_trip():
    x = _data(seed=5)
    acc = MICounts(RangeAccumulator().update(x[..., :40, :]).edges(4)).update(x)
    back = _round_trip(acc)
    assert back.n_samples == acc.n_samples and back.n_clipped == acc.n_clipped > 0
    assert torch.equal(back.edges, acc.edges)
    assert all(torch.equal(a, b) and b.dtype == torch.int32 for a, b in zip(acc.tiles, back.tiles))
    torch.testing.assert_close(back.result(), acc.result(), atol=0, rtol=0)
    back.update(x)  # goes on counting
    assert back.n_samples == 2 * x.shape[-2]
    rng = RangeAccumulator().update(x)
    rng_back = _round_trip(rng)
    assert torch.equal(rng_back.edges(7), rng.edges(7))
    with pytest.raises(TlprobeError, match="not a 'mi_counts'"):
        MICounts.from_state_dict(rng.state_dict())


def test_empty_and_all_reduce_sums_are_exact():
    x = _data(seed=6)
    edges = RangeAccumulator().update(x).edges(4)
    acc = MICounts(edges).update(x)
    empty = MICounts(edges)
    torch.testing.assert_close(MICounts(edges).merge(empty).merge(acc).result(), acc.result(), atol=0, rtol=0)
    sums = acc._sums()  # what the base all_reduce sums: [n_samples, n_clipped] then the tiles
    assert sums[0].dtype == torch.int64 and sums[0].tolist() == [acc.n_samples, acc.n_clipped]
    sums[0].mul_(2)  # as a SUM over two identical ranks
    for t in sums[1:]:
        t.mul_(2)
    acc._after_reduce()
    assert acc.n_samples == 2 * x.shape[-2]
    torch.testing.assert_close(acc.result(), MICounts(edges).update(x).update(x).result(), atol=0, rtol=0)


def test_errors():
    x = _data(seed=7)
    rng = RangeAccumulator().update(x)
    acc = MICounts(rng.edges(4))
    with pytest.raises(TlprobeError, match="edges are for"):
        acc.update(x[..., :4])  # wrong V
    with pytest.raises(TlprobeError, match="edges are for"):
        acc.update(x[0])  # wrong leading axes
    with pytest.raises(TlprobeError, match="other bin edges"):
        acc.merge(MICounts(rng.edges(5)))
    other = rng.edges(4).clone()
    other[0, 0, 1] += 1e-9
    with pytest.raises(TlprobeError, match="other bin edges"):
        acc.merge(MICounts(other))
    with pytest.raises(TlprobeError, match="too few samples"):
        acc.result()
    with pytest.raises(TlprobeError, match="seen no sample"):
        RangeAccumulator().edges(4)
    with pytest.raises(TlprobeError, match="non-decreasing"):
        MICounts(torch.tensor([[0.0, 2.0, 1.0]]))
    with pytest.raises(TlprobeError, match="bins \\+ 1 >= 3"):
        MICounts(torch.tensor([[0.0, 1.0]]))
    with pytest.raises(TlprobeError, match="non-finite"):
        acc.update(torch.full_like(x, float("nan")))
    with pytest.raises(TlprobeError, match="unknown correction"):
        MICounts(rng.edges(4)).update(x).result(correction="jackknife")  # type: ignore[arg-type]
    acc.n_samples = 2**31 - 10
    with pytest.raises(TlprobeError, match="int32 counts"):
        acc.update(x)


def test_memory_refusal(monkeypatch):
    monkeypatch.setattr("tlprobe.checks.available_memory", lambda device=None: 2**20)  # 1 MiB free
    with pytest.raises(TlprobeError, match="MICounts of 384 variables x 10 bins x 7 leading indices.*needs ~"):
        MICounts(edges_from_range(-1.0, 1.0, 10, shape=(7, 384)))


def test_mi_result_free_drops_the_counts_and_gives_the_same_numbers():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 300, 6, generator=g, dtype=torch.float64)
    edges = RangeAccumulator().update(x).edges(5)
    kept = MICounts(edges).update(x).mi_result()
    c = MICounts(edges).update(x)
    freed = c.mi_result(free=True)
    assert c.tiles == []
    for field in ("raw", "corrected", "null_mean"):
        assert torch.equal(getattr(freed, field), getattr(kept, field))
    for call in (lambda: c.update(x), lambda: c.result(), lambda: c.state_dict()):
        with pytest.raises(TlprobeError, match="dropped its joint counts"):
            call()
