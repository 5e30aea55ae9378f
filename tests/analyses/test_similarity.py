"""Similarity matrices, the Q/K/V block mask, shuffled baselines, and the tiled block kernel
(qkv_block_similarity) against an independent torch implementation and numpy."""

import numpy as np
import pytest
import torch

from tests.analyses.reference import SUMMARIES, block_stats, numpy_block_similarity, reference_block_similarity
from tlprobe import load
from tlprobe.analyses import similarity
from tlprobe.analyses.similarity import (
    BLOCKS,
    BlockStats,
    feature_similarity,
    qkv_block_codes,
    qkv_block_similarity,
    shuffle_values,
)
from tlprobe.errors import TlprobeError


def _data(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) + torch.linspace(-2, 2, shape[-1], dtype=torch.float64)


def _qkv(lead=(4,), samples=25, n=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # A per-feature mean offset, as in real activations, so cosine and correlation differ.
    x = torch.randn(*lead, samples, 3 * n, generator=g, dtype=dtype)
    return x + 1.5 * torch.randn(*lead, 1, 3 * n, generator=g, dtype=dtype)


# -- feature similarity -------------------------------------------------------------------------


def test_cosine_equals_normalised_numpy_dot():
    x = _data(30, 12)
    a = x.numpy()
    an = a / np.linalg.norm(a, axis=0, keepdims=True)
    np.testing.assert_allclose(feature_similarity(x, "cosine").numpy(), an.T @ an, atol=1e-12)


def test_correlation_and_covariance_equal_numpy():
    x = _data(25, 9)
    np.testing.assert_allclose(
        feature_similarity(x, "correlation").numpy(), np.corrcoef(x.numpy(), rowvar=False), atol=1e-12
    )
    np.testing.assert_allclose(feature_similarity(x, "covariance").numpy(), np.cov(x.numpy(), rowvar=False), atol=1e-12)


def test_batched_equals_per_index():
    x = _data(3, 4, 20, 6)
    full = feature_similarity(x, "correlation")
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(full[i, j], feature_similarity(x[i, j], "correlation"))


def test_correlation_is_invariant_to_feature_offsets_cosine_is_not():
    x = _data(40, 6)
    shifted = x + torch.arange(6, dtype=x.dtype) * 10
    torch.testing.assert_close(feature_similarity(shifted, "correlation"), feature_similarity(x, "correlation"))
    assert not torch.allclose(feature_similarity(shifted, "cosine"), feature_similarity(x, "cosine"))


def test_float16_input_is_upcast():
    x = _data(30, 8).half()
    out = feature_similarity(x, "cosine")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, feature_similarity(x.float(), "cosine"))


@pytest.mark.parametrize("n", [1, 3, 7])
def test_block_codes_counts_and_layout(n):
    codes = qkv_block_codes(n)
    assert codes.shape == (3 * n, 3 * n)
    assert bool((torch.tril(codes) == 0).all())  # strict upper triangle only
    counts = {name: int((codes == c).sum()) for name, c in BLOCKS.items()}
    within, across = n * (n - 1) // 2, n * n
    assert counts == {"QQ": within, "QK": across, "QV": across, "KK": within, "KV": across, "VV": within}
    # cell (i, j) of block QK: i in Q part, j in K part
    i, j = (codes == BLOCKS["QK"]).nonzero()[0].tolist()
    assert i < n <= j < 2 * n


# -- shuffles ---------------------------------------------------------------------------------------


def test_shuffle_all_reproducible_and_keeps_values():
    x = _data(20, 10)
    a, b, c = shuffle_values(x, seed=3), shuffle_values(x, seed=3), shuffle_values(x, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.flatten().sort().values, x.flatten().sort().values)
    # it moves values across features: column means are no longer the originals
    assert not torch.allclose(a.mean(0), x.mean(0))


def test_shuffle_within_feature_keeps_each_column():
    x = _data(2, 20, 10)
    s = shuffle_values(x, "within-feature", seed=0)
    assert torch.equal(s.sort(dim=-2).values, x.sort(dim=-2).values)
    assert not torch.equal(s, x)
    assert not torch.equal(s[0], shuffle_values(x[0], "within-feature", seed=1))


def test_shuffled_baseline_correlation_is_centred_gaussian_like():
    x = _data(200, 30)
    st = qkv_block_similarity(shuffle_values(x, seed=0), "correlation", bins=20)
    assert float(st.mean.abs().max()) < 0.02
    assert float(st.frac_extreme.max()) == 0.0


# -- the reference implementations agree with numpy ----------------------------------------------


def test_reference_block_stats_equal_numpy_masks_and_histograms():
    x = _data(2, 40, 15)
    sim = feature_similarity(x, "cosine")
    codes = qkv_block_codes(5)
    st = block_stats(sim, codes, bins=16, extreme=0.5)
    edges = np.linspace(-1, 1, 17)
    for p in range(2):
        s = sim[p].numpy()
        for b, name in enumerate(st.blocks):
            vals = s[codes.numpy() == BLOCKS[name]]
            hist, _ = np.histogram(vals, bins=edges)
            np.testing.assert_allclose(st.prob[p, b].numpy(), hist / len(vals), atol=1e-12)
            assert st.mean[p, b].item() == pytest.approx(vals.mean(), abs=1e-12)
            assert st.std[p, b].item() == pytest.approx(vals.std(), abs=1e-12)
            assert st.mean_abs[p, b].item() == pytest.approx(np.abs(vals).mean(), abs=1e-12)
            assert st.frac_extreme[p, b].item() == pytest.approx((np.abs(vals) > 0.5).mean(), abs=1e-12)


# -- the tiled kernel -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cosine", "correlation"])
@pytest.mark.parametrize("bins", [20, 17])  # 20: +-0.9 are bin edges (fast path); 17: they are not
def test_kernel_equals_numpy_per_leading_index(method, bins):
    x = _qkv((4,))
    st = qkv_block_similarity(x, method, bins=bins)
    assert st.blocks == tuple(BLOCKS)
    for layer in range(4):
        ref = numpy_block_similarity(x[layer].numpy(), method, bins, 0.9)
        np.testing.assert_array_equal(st.prob[layer].numpy(), ref["prob"])
        for k in SUMMARIES:
            np.testing.assert_allclose(getattr(st, k)[layer].numpy(), ref[k], atol=1e-12, err_msg=k)


@pytest.mark.parametrize("method", ["cosine", "correlation"])
def test_kernel_equals_reference_implementation(method):
    x = _qkv((5,), seed=3)
    st = qkv_block_similarity(x, method, bins=40)
    ref = reference_block_similarity(x, method, bins=40)
    torch.testing.assert_close(st.prob, ref.prob, rtol=0, atol=0)
    for k in SUMMARIES:
        torch.testing.assert_close(getattr(st, k), getattr(ref, k), rtol=0, atol=1e-12)
    assert torch.equal(st.count, ref.count) and torch.equal(st.edges, ref.edges)
    # one leading index alone gives the same numbers as inside the batch
    one = qkv_block_similarity(x[2], method, bins=40)
    torch.testing.assert_close(one.prob, st.prob[2], rtol=0, atol=0)


def test_float32_matches_reference_and_is_float32():
    x = _qkv((3,), samples=40, n=30, seed=1, dtype=torch.float32)
    st = qkv_block_similarity(x, "cosine", bins=100)
    one = reference_block_similarity(x, "cosine", bins=100)
    assert st.prob.dtype == torch.float32
    # Bin counts may differ only by values within float32 rounding of a bin edge.
    assert float(((st.prob - one.prob).abs() * st.count[:, None]).max()) <= 2
    torch.testing.assert_close(st.mean, one.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(st.std, one.std, rtol=0, atol=1e-5)
    torch.testing.assert_close(st.frac_extreme, one.frac_extreme, rtol=0, atol=2 / 900)


def test_histograms_are_densities():
    st = qkv_block_similarity(_qkv((2, 3)), "correlation", bins=30)
    assert st.prob.shape == (2, 3, 6, 30)
    torch.testing.assert_close(st.prob.sum(-1), torch.ones(2, 3, 6, dtype=torch.float64))
    widths = st.edges[1:] - st.edges[:-1]
    torch.testing.assert_close((st.density * widths).sum(-1), torch.ones(2, 3, 6, dtype=torch.float64))
    n = 8
    assert st.count.tolist() == [n * (n - 1) // 2, n * n, n * n, n * (n - 1) // 2, n * n, n * (n - 1) // 2]


@pytest.mark.parametrize("method", ["cosine", "correlation"])
def test_chunked_and_tiled_equal_unchunked(monkeypatch, method):
    x = _qkv((7,), n=10, seed=2)
    full = qkv_block_similarity(x, method, bins=25, chunk_size=7)  # one chunk, one tile per block
    ref = [numpy_block_similarity(x[layer].numpy(), method, 25, 0.9) for layer in range(7)]
    # Tiles of a few rows (a partial last one) and chunks of 1 or 3 layers, the bench's code path.
    monkeypatch.setattr(similarity, "TILE_CELLS", 45)
    # Sample slabs of a few samples too: the float64 sums (and the norms) are then added in
    # another order, so the summaries agree to rounding; the bin counts exactly.
    for chunk_size in (1, 3, None):
        part = qkv_block_similarity(x, method, bins=25, chunk_size=chunk_size)
        for k in ("prob", "frac_extreme"):
            assert torch.equal(getattr(part, k), getattr(full, k)), (chunk_size, k)
        for k in ("mean", "std", "mean_abs"):
            torch.testing.assert_close(getattr(part, k), getattr(full, k), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(part.mean_abs.numpy(), np.stack([r["mean_abs"] for r in ref]), atol=1e-12)


def test_value_range_outside_values_go_to_edge_bins():
    x = _qkv((2,), seed=4)
    st = qkv_block_similarity(x, "cosine", bins=10, value_range=(-0.5, 0.5))
    for layer in range(2):
        xn = x[layer] / x[layer].norm(dim=0)
        sim = (xn.T @ xn).numpy()
        v = sim[:8, 8:16].ravel()  # the QK block
        idx = np.clip(np.floor((v + 0.5) / 1.0 * 10), 0, 9).astype(int)
        np.testing.assert_array_equal(st.prob[layer, 1].numpy(), np.bincount(idx, minlength=10) / v.size)
    ref = reference_block_similarity(x, "cosine", bins=10, value_range=(-0.5, 0.5))
    torch.testing.assert_close(st.prob, ref.prob, rtol=0, atol=0)
    # +-0.9 are the range ends here: values beyond them sit in the edge bins, so they must still count.
    y = x + 3 * x.mean(-2, keepdim=True)  # larger mean offsets: many |cosine| > 0.9
    clipped = qkv_block_similarity(y, "cosine", bins=18, value_range=(-0.9, 0.9))
    full = qkv_block_similarity(y, "cosine", bins=20)
    torch.testing.assert_close(clipped.frac_extreme, full.frac_extreme, rtol=0, atol=0)
    assert float(full.frac_extreme.min()) > 0


def test_rank_one_samples_closed_form():
    # Every sample is the same vector v (up to a positive scale): cosine(a, b) = sign(v_a v_b).
    g = torch.Generator().manual_seed(5)
    v = torch.randn(12, generator=g, dtype=torch.float64)
    x = torch.rand(9, 1, generator=g, dtype=torch.float64).add(0.5) * v
    st = qkv_block_similarity(x, "cosine", bins=4)
    sign = torch.sign(v)
    expect_qk = float((sign[:4, None] * sign[None, 4:8]).mean())
    assert float(st.mean[1]) == pytest.approx(expect_qk, abs=1e-12)
    torch.testing.assert_close(st.frac_extreme, torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(st.mean_abs, torch.ones(6, dtype=torch.float64))
    assert float(st.prob[:, 1:3].sum()) == 0  # nothing in the middle bins


# -- the result ----------------------------------------------------------------------------------


def test_axes_selection_rows_and_round_trip(tmp_path):
    x = _qkv((2, 3), n=4)
    axes = {"population": ("target", "non-target"), "layer": ("L0", "L1", "L2")}
    st = qkv_block_similarity(x, "correlation", bins=8, axes=axes)
    sub = st["non-target"]
    assert isinstance(sub, BlockStats) and sub.prob.shape == (3, 6, 8) and sub.axes == {"layer": axes["layer"]}
    assert torch.equal(st["non-target", "L2"].mean_abs, st.mean_abs[1, 2])
    rows = st.rows()
    assert len(rows) == 2 * 3 * 6
    first = rows[0]
    assert first == {
        "population": "target",
        "layer": "L0",
        "block": "QQ",
        "n_pairs": 6,
        "mean": float(st.mean[0, 0, 0]),
        "std": float(st.std[0, 0, 0]),
        "mean_abs": float(st.mean_abs[0, 0, 0]),
        "frac_abs_gt_0.9": float(st.frac_extreme[0, 0, 0]),
    }
    top = st.rows(block="KV", sort_by="mean_abs", k=3)
    assert [r["block"] for r in top] == ["KV"] * 3
    assert [r["mean_abs"] for r in top] == sorted(st.mean_abs[..., 4].flatten().tolist(), reverse=True)[:3]
    assert load(st.save(tmp_path / "st.json")) == st
    assert len(qkv_block_similarity(x[0], bins=8).rows()) == 18  # unlabelled leading axis: numbered
    assert qkv_block_similarity(x[0], bins=8).rows()[6]["dim0"] == 1


def test_bad_input_errors():
    with pytest.raises(TlprobeError, match="constant across samples.*Drop those features"):
        feature_similarity(torch.tensor([[1.0, 2.0], [1.0, 3.0], [1.0, 5.0]]), "correlation")
    with pytest.raises(TlprobeError, match="all-zero"):
        feature_similarity(torch.tensor([[0.0, 2.0], [0.0, 3.0]]), "cosine")
    with pytest.raises(TlprobeError, match="too few samples.*got 2, need at least 3"):
        feature_similarity(torch.randn(2, 4), "correlation")
    with pytest.raises(TlprobeError, match="non-finite"):
        feature_similarity(torch.tensor([[1.0, float("nan")], [2.0, 1.0], [3.0, 0.0]]))
    with pytest.raises(TlprobeError, match="expected \\[..., samples, features\\]"):
        feature_similarity(torch.randn(5))
    with pytest.raises(TlprobeError, match="unknown method 'spearman'"):
        feature_similarity(torch.randn(5, 3), "spearman")  # type: ignore[arg-type]
    x = _qkv((2,))
    with pytest.raises(TlprobeError, match="3 \\* n coordinates"):
        qkv_block_similarity(torch.randn(10, 7))
    with pytest.raises(TlprobeError, match="chunk_size"):
        qkv_block_similarity(x, chunk_size=0)
    with pytest.raises(TlprobeError, match="bins must be"):
        qkv_block_similarity(x, bins=0)
    with pytest.raises(TlprobeError, match="value_range"):
        qkv_block_similarity(x, value_range=(1.0, -1.0))
    with pytest.raises(TlprobeError, match="too few samples"):
        qkv_block_similarity(x[:, :2], "correlation")
    with pytest.raises(TlprobeError, match="all-zero"):
        qkv_block_similarity(torch.cat([torch.zeros(2, 25, 3, dtype=x.dtype), x[..., 3:]], -1))
    with pytest.raises(TlprobeError, match="method"):
        qkv_block_similarity(x, "covariance")  # type: ignore[arg-type]
    with pytest.raises(TlprobeError, match="one label per leading index"):
        qkv_block_similarity(x, axes={"layer": ("L0",)})
    st = qkv_block_similarity(x, bins=4)
    with pytest.raises(TlprobeError, match="unknown block"):
        st.rows(block="QQQ")
    with pytest.raises(TlprobeError, match="unknown summary"):
        st.rows(sort_by="median")


# -- memory: linear in samples, refused up front when too large ----------------------------------


@pytest.mark.parametrize("method", ["cosine", "correlation"])
def test_many_samples_equal_numpy_and_do_not_depend_on_tiles(monkeypatch, method):
    # 3000 samples of 3 x 6 coordinates: far more samples than coordinates (the float64 block
    # tiles route; the Gram route alone would hold 3 x 3000 x 3000 float64 per item).
    x = _qkv((2,), samples=3000, n=6, seed=7)
    st = qkv_block_similarity(x, method, bins=20)
    for p in range(2):
        ref = numpy_block_similarity(x[p].numpy(), method, 20, 0.9)
        np.testing.assert_array_equal(st.prob[p].numpy(), ref["prob"])
        for k in SUMMARIES:
            np.testing.assert_allclose(getattr(st, k)[p].numpy(), ref[k], rtol=0, atol=1e-12, err_msg=k)
    # Slabs of 10 samples (TILE_CELLS 200), tiles of a few rows, chunks of 1 and 2 populations.
    monkeypatch.setattr(similarity, "TILE_CELLS", 200)
    for chunk_size in (1, 2):
        part = qkv_block_similarity(x, method, bins=20, chunk_size=chunk_size)
        assert torch.equal(part.prob, st.prob) and torch.equal(part.frac_extreme, st.frac_extreme)
        for k in ("mean", "std", "mean_abs"):
            torch.testing.assert_close(getattr(part, k), getattr(st, k), rtol=1e-12, atol=1e-14)


def test_gram_route_in_sample_tiles_equals_numpy(monkeypatch):
    # Fewer samples than coordinates (the Gram route), its s x s Gram matrices cut into sample tiles.
    x = _qkv((3,), samples=40, n=30, seed=8)
    monkeypatch.setattr(similarity, "TILE_CELLS", 400)
    st = qkv_block_similarity(x, "correlation", bins=17)
    for p in range(3):
        ref = numpy_block_similarity(x[p].numpy(), "correlation", 17, 0.9)
        np.testing.assert_array_equal(st.prob[p].numpy(), ref["prob"])
        for k in SUMMARIES:
            np.testing.assert_allclose(getattr(st, k)[p].numpy(), ref[k], rtol=0, atol=1e-12, err_msg=k)


def test_histograms_too_large_are_refused_before_allocating():
    x = _qkv((48,), samples=5, n=2)
    with pytest.raises(TlprobeError, match=r"needs ~[\d.]+ GiB; [\d.]+ GiB available; lower bins \(--bins\)"):
        qkv_block_similarity(x, bins=100000000)
    with pytest.raises(TlprobeError, match="needs ~.*GiB"):
        feature_similarity(torch.randn(2, 3, 100000))  # a [2, 100000, 100000] result


def test_integer_knobs_accept_numpy_and_torch_scalars():
    x = _qkv((3,))
    ref = qkv_block_similarity(x, bins=12, chunk_size=2)
    st = qkv_block_similarity(x, bins=np.int64(12), chunk_size=torch.tensor(2))  # type: ignore[arg-type]
    assert st == ref
    with pytest.raises(TlprobeError, match="bins must be an integer"):
        qkv_block_similarity(x, bins=12.0)  # type: ignore[arg-type]
    with pytest.raises(TlprobeError, match="chunk_size"):
        qkv_block_similarity(x, chunk_size=True)  # type: ignore[arg-type]
    assert torch.equal(shuffle_values(x, seed=np.int64(3)), shuffle_values(x, seed=3))  # type: ignore[arg-type]


def test_tensors_that_require_grad_work_and_complex_is_refused():
    x = _qkv((2,)).requires_grad_(True)
    st = qkv_block_similarity(x, "correlation", bins=10)
    assert st == qkv_block_similarity(x.detach(), "correlation", bins=10)
    sim = feature_similarity(x, "correlation")
    assert not sim.requires_grad and torch.equal(sim, feature_similarity(x.detach(), "correlation"))
    z = torch.complex(x.detach(), x.detach())
    for call in (lambda: qkv_block_similarity(z), lambda: feature_similarity(z)):
        with pytest.raises(TlprobeError, match="complex"):
            call()


def test_shuffle_of_an_empty_matrix_is_empty():
    for shape in ((0, 5), (3, 0), (2, 0, 4)):
        x = torch.empty(shape)
        for mode in ("all", "within-feature"):
            out = shuffle_values(x, mode)  # type: ignore[arg-type]
            assert out.shape == x.shape and out.numel() == 0


# -- undefined items: identical samples -----------------------------------------------------------


def _with_identical():
    x = _qkv((2, 3), n=5, seed=9)
    x[0, 1] = x[0, 1, :1]  # population 0, layer 1: the same vector in every sample
    return x


def test_undefined_raise_says_the_samples_are_identical():
    x = _with_identical()
    axes = {"population": ("target", "non-target"), "layer": ("L0", "L1", "L2")}
    with pytest.raises(
        TlprobeError,
        match=r"15 feature\(s\) are constant .*In 1 of 6 item\(s\) \(e.g. leading index \('target', 'L1'\)\) "
        r"the 25 samples are identical: e.g. a rotary model's layer-0 Q/K/V see only the token, or duplicated "
        r"sentences\. Drop those features, or pass undefined='nan'",
    ):
        qkv_block_similarity(x, "correlation", axes=axes)
    with pytest.raises(TlprobeError, match="the 25 samples are identical"):
        feature_similarity(x, "correlation")
    # one constant coordinate only: no claim about identical samples
    y = _qkv((2,))
    y[1, :, 4] = 3.0
    with pytest.raises(TlprobeError, match=r"1 feature\(s\) are constant") as err:
        qkv_block_similarity(y, "correlation")
    assert "identical" not in str(err.value)
    # cosine is defined on identical (non-zero) samples
    assert not bool(qkv_block_similarity(x, "cosine", bins=10).std.isnan().any())


@pytest.mark.parametrize("bins", [20, 17])
def test_undefined_nan_equals_the_defined_items_alone(bins):
    x = _with_identical()
    st = qkv_block_similarity(x, "correlation", bins=bins, undefined="nan")
    assert bool(st.prob[0, 1].isnan().all())
    for k in SUMMARIES:
        assert bool(getattr(st, k)[0, 1].isnan().all()), k
    keep = [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)]
    alone = qkv_block_similarity(torch.stack([x[i] for i in keep]), "correlation", bins=bins)
    for row, idx in enumerate(keep):
        assert torch.equal(st.prob[idx], alone.prob[row])
        for k in SUMMARIES:
            torch.testing.assert_close(getattr(st, k)[idx], getattr(alone, k)[row], rtol=0, atol=1e-14)
    mask = similarity.undefined_features(x, "correlation")
    assert mask.shape == (2, 3, 15) and bool(mask[0, 1].all()) and int(mask.sum()) == 15
    with pytest.raises(TlprobeError, match="unknown undefined 'zero'"):
        qkv_block_similarity(x, undefined="zero")  # type: ignore[arg-type]


def test_undefined_rows_are_nan_sorted_last_and_saved_as_null(tmp_path):
    x = _with_identical()
    st = qkv_block_similarity(x, "correlation", bins=8, undefined="nan", axes={"population": ("a", "b")})
    rows = st.rows(block="QK", sort_by="std")
    assert [r["layer"] if "layer" in r else r["dim1"] for r in rows][-1] == 1
    assert np.isnan(rows[-1]["std"]) and not np.isnan(rows[0]["std"])
    d = st.to_dict()
    assert d["std"][0][1] == [None] * 6
    assert load(st.save(tmp_path / "st.json")) == st
