"""Property-based tests (hypothesis) over the numeric core."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tlprobe.analyses.similarity import (
    block_stats,
    feature_similarity,
    qkv_block_codes,
    shuffle_values,
)

FAST = settings(max_examples=40, deadline=None)


@st.composite
def sample_matrices(draw, min_samples=3, max_samples=12, min_features=2, max_features=9):
    s = draw(st.integers(min_samples, max_samples))
    f = draw(st.integers(min_features, max_features))
    x = draw(arrays(np.float64, (s, f), elements=st.floats(-100, 100, allow_nan=False, width=64)))
    # keep every feature non-constant (the documented error case is tested elsewhere)
    x = x + np.arange(s)[:, None] * (1 + np.arange(f)[None, :]) * 1e-3 * (1 + np.abs(x).max())
    return torch.from_numpy(x)


@FAST
@given(sample_matrices(), st.sampled_from(["cosine", "correlation"]))
def test_similarity_symmetric_bounded_unit_diagonal(x, method):
    s = feature_similarity(x, method)
    assert torch.allclose(s, s.mT)
    assert float(s.abs().max()) <= 1.0
    assert torch.allclose(s.diagonal(), torch.ones(x.shape[1], dtype=s.dtype), atol=1e-9)


@FAST
@given(sample_matrices(), st.floats(0.1, 50), st.integers(0, 10_000))
def test_similarity_invariant_to_positive_scaling_and_sample_order(x, scale, seed):
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    for method in ("cosine", "correlation"):
        ref = feature_similarity(x, method)
        torch.testing.assert_close(feature_similarity(x * scale, method), ref, atol=1e-9, rtol=1e-7)
        torch.testing.assert_close(feature_similarity(x[perm], method), ref, atol=1e-9, rtol=1e-7)


@FAST
@given(sample_matrices(min_features=3, max_features=9).filter(lambda x: x.shape[1] % 3 == 0), st.integers(1, 30))
def test_block_stats_probabilities(x, bins):
    st_ = block_stats(feature_similarity(x), qkv_block_codes(x.shape[1] // 3), bins=bins)
    torch.testing.assert_close(st_.prob.sum(-1), torch.ones(len(st_.blocks), dtype=st_.prob.dtype))
    assert bool((st_.frac_extreme >= 0).all() and (st_.frac_extreme <= 1).all())
    assert bool((st_.mean.abs() <= 1 + 1e-12).all())


@FAST
@given(sample_matrices(), st.integers(0, 2**31 - 1), st.sampled_from(["all", "within-feature"]))
def test_shuffle_is_a_permutation_and_deterministic(x, seed, mode):
    a = shuffle_values(x, mode, seed)
    assert torch.equal(a, shuffle_values(x, mode, seed))
    assert torch.equal(a.flatten().sort().values, x.flatten().sort().values)
    if mode == "within-feature":
        assert torch.equal(a.sort(0).values, x.sort(0).values)


# -- lenses -----------------------------------------------------------------------------------
WORDS = ["the", "her", "book", "tea", "river", "gave", "she", "a", "of", "storm", "quiet", "pilot"]


@pytest.fixture(scope="module")
def tiny_gpt2():
    from tlprobe.testing import tiny_model

    return tiny_model("gpt2", seed=1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8), st.sampled_from([None, 7, 64]), st.integers(1, 5))
def test_logit_lens_bounds_for_any_prompt_and_chunking(tiny_gpt2, words, chunk, k):
    from tlprobe.analyses.lens import logit_lens

    _, cache = tiny_gpt2.run_with_cache(" ".join(words))
    res = logit_lens(cache, targets=[" her"], top_k=k, vocab_chunk=chunk)
    log_v = float(np.log(tiny_gpt2.cfg.d_vocab))
    assert bool((res.entropy >= -1e-5).all() and (res.entropy <= log_v + 1e-4).all())
    assert bool((res.kl_to_final >= -1e-5).all())
    assert float(res.kl_to_final[-1].abs().max()) < 1e-5
    assert bool((res.top_probs[..., :-1] >= res.top_probs[..., 1:]).all())  # sorted
    assert float(res.top_probs.sum(-1).max()) <= 1 + 1e-5
    assert bool((res.target_ranks >= 0).all() and (res.target_ranks < tiny_gpt2.cfg.d_vocab).all())
    # the top-1 token's probability bounds every target's
    assert bool((res.target_probs[..., 0] <= res.top_probs[..., 0] + 1e-6).all())
