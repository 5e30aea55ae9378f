"""Property-based tests (hypothesis) of the lenses."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

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
    res = logit_lens(cache, targets=[" her"], top_k=k, chunk_size=chunk)
    log_v = float(np.log(tiny_gpt2.cfg.d_vocab))
    assert bool((res.entropy >= -1e-5).all() and (res.entropy <= log_v + 1e-4).all())
    assert bool((res.kl_to_final >= -1e-5).all())
    assert float(res.kl_to_final[-1].abs().max()) < 1e-5
    assert bool((res.top_probs[..., :-1] >= res.top_probs[..., 1:]).all())  # sorted
    assert float(res.top_probs.sum(-1).max()) <= 1 + 1e-5
    assert bool((res.target_ranks >= 0).all() and (res.target_ranks < tiny_gpt2.cfg.d_vocab).all())
    # the top-1 token's probability bounds every target's
    assert bool((res.target_probs[..., 0] <= res.top_probs[..., 0] + 1e-6).all())
