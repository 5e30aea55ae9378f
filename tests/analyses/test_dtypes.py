"""Half-precision inputs are upcast for statistics: results equal the float32 computation on the
same (half-rounded) values, and come back in float32."""

import pytest
import torch

from tests.analyses.reference import reference_block_similarity
from tlprobe.analyses.mi import pairwise_mi
from tlprobe.analyses.moments import sample_moments
from tlprobe.analyses.similarity import feature_similarity, qkv_block_similarity


@pytest.fixture(params=[torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def half_and_float(request):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 40, 12, generator=g) * 4 + 1).to(request.param)
    return x, x.float()


def test_similarity_upcasts(half_and_float):
    h, f = half_and_float
    out = feature_similarity(h, "correlation")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, feature_similarity(f, "correlation"))


def test_block_statistics_upcast(half_and_float):
    h, f = half_and_float
    a, b = qkv_block_similarity(h, "cosine", bins=20), qkv_block_similarity(f, "cosine", bins=20)
    assert a.mean.dtype != torch.float16 and a.mean.dtype != torch.bfloat16
    torch.testing.assert_close(a.prob, b.prob)
    torch.testing.assert_close(reference_block_similarity(h, bins=20).std, b.std)


def test_moments_upcast(half_and_float):
    h, f = half_and_float
    a, b = sample_moments(h), sample_moments(f)
    assert a.var.dtype == torch.float32
    torch.testing.assert_close(a.var, b.var)


def test_mi_upcasts(half_and_float):
    h, f = half_and_float
    a = pairwise_mi(h, bins=5)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, pairwise_mi(f, bins=5))


def test_float16_overflow_is_reported_not_propagated():
    x = torch.full((5, 6), 60000, dtype=torch.float16) * 2  # inf in float16
    with pytest.raises(ValueError, match="non-finite"):
        feature_similarity(x)
