"""Similarity matrices, the Q/K/V block mask, shuffled baselines and block statistics."""

import numpy as np
import pytest
import torch

from tlprobe.analyses.similarity import (
    BLOCKS,
    block_stats,
    feature_similarity,
    qkv_block_codes,
    qkv_block_similarity,
    shuffle_values,
)
from tlprobe.errors import TlprobeError


def _data(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) + torch.linspace(-2, 2, shape[-1], dtype=torch.float64)


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


def test_block_stats_equal_numpy_masks_and_histograms():
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
            assert st.frac_extreme[p, b].item() == pytest.approx((np.abs(vals) > 0.5).mean(), abs=1e-12)
    torch.testing.assert_close(st.prob.sum(-1), torch.ones(2, 6, dtype=st.prob.dtype))
    width = st.edges[1:] - st.edges[:-1]
    torch.testing.assert_close((st.density * width).sum(-1), torch.ones(2, 6, dtype=st.prob.dtype))


def test_qkv_block_similarity_single_equals_batched():
    x = _data(3, 30, 12)
    batched = qkv_block_similarity(x, "correlation", bins=10)
    single = qkv_block_similarity(x[1], "correlation", bins=10)
    torch.testing.assert_close(batched.prob[1], single.prob)
    assert len(batched.table(["a", "b", "c"])) == 18


def test_shuffle_all_reproducible_and_keeps_values():
    x = _data(20, 10)
    a, b, c = shuffle_values(x, seed=3), shuffle_values(x, seed=3), shuffle_values(x, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.flatten().sort().values, x.flatten().sort().values)
    # it moves values across features: column means are no longer the originals
    assert not torch.allclose(a.mean(0), x.mean(0))


def test_shuffle_within_feature_keeps_each_column():
    x = _data(2, 20, 10)
    s = shuffle_values(x, mode="within-feature", seed=0)
    assert torch.equal(s.sort(dim=-2).values, x.sort(dim=-2).values)
    assert not torch.equal(s, x)
    assert not torch.equal(s[0], shuffle_values(x[0], mode="within-feature", seed=1))


def test_shuffled_baseline_correlation_is_centred_gaussian_like():
    x = _data(200, 30)
    st = qkv_block_similarity(shuffle_values(x, seed=0), "correlation", bins=20)
    assert float(st.mean.abs().max()) < 0.02
    assert float(st.frac_extreme.max()) == 0.0


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
        feature_similarity(torch.randn(5, 3), "spearman")
    with pytest.raises(TlprobeError, match="3 \\* n coordinates"):
        qkv_block_similarity(torch.randn(10, 7))
