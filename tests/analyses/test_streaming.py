"""Streaming accumulators: equal to the in-memory functions over the concatenated batches."""

import io
import math

import numpy as np
import pytest
import torch

from tlprobe.analyses.moments import sample_moments
from tlprobe.analyses.similarity import feature_similarity, qkv_block_similarity, undefined_features
from tlprobe.analyses.streaming import MomentsAccumulator, SimilarityAccumulator
from tlprobe.errors import TlprobeError

SIZES = (1, 7, 13)  # uneven batches, then the rest


def _data(lead=(2, 3), samples=60, features=9, dtype=torch.float64, offset=50.0, seed=0):
    """Seeded ``[*lead, samples, features]`` with per-feature offsets around ``offset``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, samples, features, generator=g, dtype=torch.float64)
    x = x * (1 + torch.rand(features, generator=g, dtype=torch.float64))
    x = x + offset + torch.randn(*lead, 1, features, generator=g, dtype=torch.float64)
    return x.to(dtype)


def _batches(x):
    edges = np.cumsum((0, *SIZES, x.shape[-2] - sum(SIZES)))
    return [x[..., a:b, :] for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _accumulators(cls, x):
    """The same data three ways: updated in order, ((a + b) + c) and (c + (a + b)) of shards."""
    parts = _batches(x)
    in_order = cls()
    for p in parts:
        in_order.update(p)
    a = cls().update(parts[0]).update(parts[1])
    b = cls().update(parts[2])
    c = cls().update(parts[3])
    left = cls().merge(a).merge(b).merge(c)
    ab = cls().merge(a).merge(b)
    right = cls().merge(c).merge(ab)
    return {"in-order": in_order, "left": left, "right": right}


def _round_trip(acc):
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    buf.seek(0)
    return type(acc).from_state_dict(torch.load(buf, weights_only=True))


# ---------------------------------------------------------------------------------------------
# MomentsAccumulator


def test_moments_equal_sample_moments_in_any_merge_order():
    x = _data()
    ref = sample_moments(x)
    for how, acc in _accumulators(MomentsAccumulator, x).items():
        m = acc.result()
        assert (m.n_samples, m.n_features) == (60, 9), how
        for k in ("var", "mean", "mean_abs", "rel_var"):
            got, want = getattr(m, k), getattr(ref, k)
            assert got.dtype == want.dtype == torch.float64 and got.shape == (2, 3), (how, k)
            assert torch.allclose(got, want, rtol=1e-10, atol=0), (how, k)


def test_moments_state_matches_numpy_and_survives_the_offset():
    x = _data(offset=1e6)  # naive sum-of-squares would lose ~12 digits here
    acc = _accumulators(MomentsAccumulator, x)["right"]
    xs = x.numpy()
    np.testing.assert_allclose(acc.mean.numpy(), xs.mean(-2), rtol=1e-13)
    np.testing.assert_allclose(acc.m2.numpy(), ((xs - xs.mean(-2, keepdims=True)) ** 2).sum(-2), rtol=1e-9)
    assert acc.n_samples == 60 and acc.shape == (2, 3, 9)


def test_moments_half_and_float32_input():
    x = _data(lead=(3,), dtype=torch.float16, offset=4.0)
    acc = MomentsAccumulator()
    for p in _batches(x):
        acc.update(p)
    assert acc.mean.dtype == torch.float64
    m, ref = acc.result(axes={"layer": ("L0", "L1", "L2")}), sample_moments(x.float())
    assert m.var.dtype == torch.float32 and m.axes == {"layer": ("L0", "L1", "L2")}
    assert torch.allclose(m.var, ref.var, rtol=1e-5) and torch.allclose(m.rel_var, ref.rel_var, rtol=1e-5)


def test_moments_state_dict_round_trip_and_kind_check():
    acc = _accumulators(MomentsAccumulator, _data())["left"]
    back = _round_trip(acc)
    assert back.n_samples == acc.n_samples and back.dtype == acc.dtype
    assert torch.equal(back.result().rel_var, acc.result().rel_var)
    # the loaded accumulator keeps streaming
    extra = _data(seed=3)
    assert torch.equal(back.update(extra).result().var, acc.update(extra).result().var)
    with pytest.raises(TlprobeError, match="not a 'moments' accumulator"):
        MomentsAccumulator.from_state_dict(SimilarityAccumulator().update(_data()).state_dict())
    with pytest.raises(TlprobeError, match="not a 'similarity' accumulator"):
        SimilarityAccumulator.from_state_dict(acc.state_dict())


def test_moments_errors():
    acc = MomentsAccumulator().update(_data(lead=(2, 3), features=9))
    with pytest.raises(TlprobeError, match=r"\[2, 4, samples, 9\].*holds \[2, 3, samples, 9\]"):
        acc.update(_data(lead=(2, 4), features=9))
    with pytest.raises(TlprobeError, match=r"\[2, 3, samples, 8\].*holds \[2, 3, samples, 9\]"):
        acc.merge(MomentsAccumulator().update(_data(features=8)))
    with pytest.raises(TlprobeError, match="cannot merge a SimilarityAccumulator into a MomentsAccumulator"):
        acc.merge(SimilarityAccumulator())  # type: ignore[arg-type]
    with pytest.raises(TlprobeError, match="too few samples"):
        MomentsAccumulator().update(_data(samples=1)).result()
    with pytest.raises(TlprobeError, match="too few samples"):
        MomentsAccumulator().result()
    with pytest.raises(TlprobeError, match="non-finite"):
        MomentsAccumulator().update(torch.tensor([[1.0], [math.nan]]))
    with pytest.raises(TlprobeError, match="all-zero activations"):
        MomentsAccumulator().update(torch.zeros(2, 5, 3)).result()


def test_moments_empty_merge_sides():
    x = _data()
    ref = MomentsAccumulator().update(x).result()
    for empty in (MomentsAccumulator(), MomentsAccumulator(shape=(2, 3, 9))):
        assert empty.empty
        left = MomentsAccumulator().update(x).merge(empty)
        right = type(empty).from_state_dict(empty.state_dict()).merge(MomentsAccumulator().update(x))
        for acc in (left, right):
            assert acc.n_samples == 60 and torch.equal(acc.result().var, ref.var)
    # a pre-shaped empty accumulator survives the state round trip (a rank that saw nothing)
    shaped = _round_trip(MomentsAccumulator(shape=(2, 3, 9)))
    assert shaped.shape == (2, 3, 9) and shaped.empty
    assert torch.equal(shaped.merge(MomentsAccumulator().update(x)).result().mean, ref.mean)
    with pytest.raises(TlprobeError, match="holds"):
        MomentsAccumulator(shape=(2, 9)).update(x)
    # a batch with no samples only fixes the shape
    assert MomentsAccumulator().update(x[..., :0, :]).shape == (2, 3, 9)


# ---------------------------------------------------------------------------------------------
# SimilarityAccumulator


@pytest.mark.parametrize("method", ["cosine", "correlation", "covariance"])
def test_similarity_equal_feature_similarity(method):
    for dtype, atol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        x = _data(dtype=dtype)
        ref = feature_similarity(x, method)
        for how, acc in _accumulators(SimilarityAccumulator, x).items():
            got = acc.result(method)
            assert got.dtype == dtype and got.shape == (2, 3, 9, 9), (how, dtype)
            # covariance is ~1-4 at offset 50: compare relative to its scale
            tol = atol * (float(ref.abs().max()) if method == "covariance" else 1.0)
            assert torch.allclose(got, ref, rtol=0, atol=tol), (how, dtype, float((got - ref).abs().max()))


def test_similarity_state_matches_numpy():
    x = _data(lead=(), samples=40, features=5, offset=1e4)
    acc = _accumulators(SimilarityAccumulator, x)["right"]
    xs = x.numpy()
    np.testing.assert_allclose(acc.comoment.numpy(), np.cov(xs.T, ddof=0) * 40, rtol=1e-9)
    np.testing.assert_allclose(acc.mean.numpy(), xs.mean(0), rtol=1e-14)
    assert torch.equal(acc.lo, x.amin(0)) and torch.equal(acc.hi, x.amax(0))
    assert acc.dtype == "float64" and acc.shape == (5,)


def test_similarity_half_input_works_in_float32():
    x = _data(lead=(2,), dtype=torch.bfloat16, offset=2.0)
    acc = SimilarityAccumulator()
    for p in _batches(x):
        acc.update(p)
    got = acc.result("correlation")
    assert acc.dtype == "float32" and got.dtype == torch.float32
    assert torch.allclose(got, feature_similarity(x, "correlation"), atol=1e-5)


def test_eigenvalues_equal_numpy():
    x = _data(samples=50, features=7)
    xs = x.numpy()
    for how, acc in _accumulators(SimilarityAccumulator, x).items():
        ev = acc.eigenvalues()
        assert ev.dtype == torch.float64 and ev.shape == (2, 3, 7)
        assert bool((ev[..., :-1] >= ev[..., 1:]).all()), how
        for idx in np.ndindex(2, 3):
            want = np.linalg.eigvalsh(np.cov(xs[idx].T))[::-1]
            np.testing.assert_allclose(ev[idx].numpy(), want, rtol=1e-9, atol=1e-12, err_msg=how)
        var = acc.variances()
        assert var.dtype == torch.float64 and var.shape == (2, 3, 7)
        np.testing.assert_allclose(var.numpy(), xs.var(axis=-2, ddof=1), rtol=1e-9, err_msg=how)


@pytest.mark.parametrize(
    ("method", "kw"),
    [
        ("cosine", {}),
        ("correlation", {}),
        ("correlation", {"bins": 100, "value_range": (-0.5, 0.7), "extreme": 0.3}),
        ("cosine", {"bins": 7, "value_range": (-1.5, 1.25), "extreme": 0.999}),
    ],
)
def test_block_stats_equal_qkv_block_similarity(method, kw):
    x = _data(lead=(2, 3), samples=70, features=12, offset=0.5)
    # coupled Q/K/V parts, so the blocks differ and reach both extremes
    x[..., 4:8] += 2 * x[..., :4]
    x[..., 8:12] -= 3 * x[..., 4:8]
    axes = {"population": ("a", "b"), "layer": ("L0", "L1", "L2")}
    ref = qkv_block_similarity(x, method, axes=axes, **{"bins": 60, **kw})
    assert float(ref.mean.min()) < -0.15 and float(ref.mean.max()) > 0.15  # blocks of both signs
    if kw.get("value_range", (-1, 1))[0] > -1:  # the narrow range clamps into both edge bins
        assert float(ref.prob[..., 0].max()) > 0 and float(ref.prob[..., -1].max()) > 0
    for how, acc in _accumulators(SimilarityAccumulator, x).items():
        st = acc.block_stats(method, axes=axes, **kw)
        assert st.blocks == ref.blocks and st.method == ref.method and st.extreme == ref.extreme, how
        assert torch.equal(st.count, ref.count) and torch.allclose(st.edges, ref.edges), how
        assert st.prob.shape == ref.prob.shape == (2, 3, 6, kw.get("bins", 60))
        assert st.prob.dtype == torch.float64 and st.axes == ref.axes
        for k in ("prob", "mean", "std", "mean_abs", "frac_extreme"):
            assert torch.allclose(getattr(st, k), getattr(ref, k), rtol=1e-9, atol=1e-12), (how, k)
        assert float(st["b", "L1"].std[1]) == float(st.std[1, 1, 1])


def test_block_stats_undefined_nan_rows_where_qkv_block_similarity_has_them():
    x = _data(lead=(4,), samples=30, features=12, offset=3.0)
    x[1, :, 5] = 7.0  # one constant coordinate: correlation undefined in item 1 only
    x[2] = x[2, :1]  # item 2: identical samples
    ref = qkv_block_similarity(x, "correlation", bins=20, undefined="nan")
    acc = _accumulators(SimilarityAccumulator, x)["right"]
    st = acc.block_stats("correlation", bins=20, undefined="nan")
    nan_rows = st.std.isnan().all(-1)
    assert nan_rows.tolist() == [False, True, True, False] == ref.std.isnan().all(-1).tolist()
    for k in ("prob", "mean", "std", "mean_abs", "frac_extreme"):
        assert torch.equal(getattr(st, k).isnan(), getattr(ref, k).isnan()), k
        assert torch.allclose(getattr(st, k), getattr(ref, k), rtol=1e-9, atol=1e-12, equal_nan=True), k
    with pytest.raises(TlprobeError, match="constant across samples.*samples are identical.*undefined='nan'"):
        acc.block_stats("correlation")
    with pytest.raises(TlprobeError, match="constant across samples.*Drop those features"):
        acc.result("correlation")
    # cosine: a constant non-zero coordinate is fine, an all-zero one is not
    assert acc.result("cosine").isfinite().all()
    x[3, :, 0] = 0.0
    with pytest.raises(TlprobeError, match="1 feature.*all-zero"):
        SimilarityAccumulator().update(x).result("cosine")


def test_similarity_state_dict_round_trip_and_kind_check():
    x = _data(features=12)
    acc = _accumulators(SimilarityAccumulator, x.float())["left"]
    back = _round_trip(acc)
    assert back.dtype == "float32" and back.n_samples == 60
    for method in ("cosine", "correlation", "covariance"):
        assert torch.equal(back.result(method), acc.result(method)), method
    assert torch.equal(back.block_stats().prob, acc.block_stats().prob)
    with pytest.raises(TlprobeError, match="not a 'similarity' accumulator"):
        SimilarityAccumulator.from_state_dict({"kind": "mi_counts"})
    with pytest.raises(TlprobeError, match="not a 'similarity' accumulator"):
        SimilarityAccumulator.from_state_dict([1, 2])  # type: ignore[arg-type]


def test_similarity_errors():
    acc = SimilarityAccumulator().update(_data(lead=(2,), features=9))
    with pytest.raises(TlprobeError, match=r"\[3, samples, 9\].*holds \[2, samples, 9\]"):
        acc.update(_data(lead=(3,), features=9))
    with pytest.raises(TlprobeError, match=r"\[2, samples, 6\].*holds \[2, samples, 9\]"):
        acc.merge(SimilarityAccumulator(shape=(2, 6)))
    with pytest.raises(TlprobeError, match="unknown method 'dot'"):
        acc.result("dot")  # type: ignore[arg-type]
    with pytest.raises(TlprobeError, match="3 \\* n coordinates; got 8"):
        SimilarityAccumulator().update(_data(features=8)).block_stats()
    with pytest.raises(TlprobeError, match="at least 2 coordinates"):
        SimilarityAccumulator().update(_data(features=3)).block_stats()
    with pytest.raises(TlprobeError, match="value_range"):
        acc.block_stats(value_range=(1.0, -1.0))
    two = SimilarityAccumulator().update(_data(samples=2))
    assert two.result("cosine").shape == (2, 3, 9, 9)
    with pytest.raises(TlprobeError, match="too few samples for correlation similarity: got 2, need at least 3"):
        two.result("correlation")
    with pytest.raises(TlprobeError, match="too few samples"):
        SimilarityAccumulator().eigenvalues()
    with pytest.raises(TlprobeError, match="too few samples"):
        SimilarityAccumulator().variances()
    with pytest.raises(TlprobeError, match="non-finite"):
        SimilarityAccumulator().update(torch.tensor([[1.0, 2.0], [math.inf, 0.0]]))
    with pytest.raises(TlprobeError, match=r"co-moment\) needs ~.*fewer features or leading indices"):
        SimilarityAccumulator(shape=(10**4, 10**4))


def test_similarity_empty_merge_sides():
    x = _data(features=6)
    ref = SimilarityAccumulator().update(x)
    for empty in (SimilarityAccumulator(), _round_trip(SimilarityAccumulator(shape=(2, 3, 6)))):
        left = SimilarityAccumulator().update(x).merge(empty)
        right = SimilarityAccumulator.from_state_dict(empty.state_dict()).merge(SimilarityAccumulator().update(x))
        for acc in (left, right):
            assert acc.n_samples == 60 and acc.dtype == "float64"
            for name in ("mean", "comoment", "lo", "hi"):
                assert torch.equal(getattr(acc, name), getattr(ref, name)), name
    shaped = SimilarityAccumulator(shape=(2, 3, 6))
    assert shaped.empty and shaped.comoment.shape == (2, 3, 6, 6) and shaped.device == torch.device("cpu")
    assert torch.equal(shaped.update(x).result(), ref.result())


@pytest.mark.parametrize("method", ["cosine", "correlation"])
def test_undefined_features_equal_the_in_memory_ones(method):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 40, 6, generator=g)
    x[0, 1, :, 2] = 4.0  # constant: undefined for correlation
    x[1, 0, :, 4] = 0.0  # all-zero: undefined for both
    x[1, 2] = x[1, 2, :1]  # every sample identical
    acc = SimilarityAccumulator()
    for part in torch.split(x, [1, 7, 13, 19], dim=-2):
        acc.update(part)
    want = undefined_features(x, method)
    assert torch.equal(acc.undefined_features(method), want)
    assert bool(want.any())
