"""Per head: split_heads cuts the fused Q|K|V vector like fused_qkv(head=h), and the block statistics
and moments of a [layer, head] result equal those of each head's own slice, selected as "L1H3"."""

import pytest
import torch

from tests.analyses.reference import reference_block_similarity
from tlprobe.access.hooks import fused_qkv, split_heads
from tlprobe.access.labels import head_labels, layer_labels
from tlprobe.analyses.moments import sample_moments
from tlprobe.analyses.similarity import qkv_block_similarity
from tlprobe.errors import TlprobeError


@pytest.fixture(scope="module")
def tiny_qkv():
    from tlprobe.testing import tiny_model

    model = tiny_model("gpt2", n_layers=2, d_model=64, n_heads=4)
    text = "She gave her the book and then her friend read it to her sister after the long dinner at home"
    _, cache = model.run_with_cache(text)
    return cache


def test_split_heads_equals_fused_qkv_head(tiny_qkv):
    for layer in (0, 1):
        full = fused_qkv(tiny_qkv, layer)[0]  # [pos, 3 * H * dh]
        split = split_heads(full, 4)  # [H, pos, 3 * dh]
        for h in range(4):
            assert torch.equal(split[h], fused_qkv(tiny_qkv, layer, head=h)[0])


def test_split_heads_grouped_query():
    from tlprobe.testing import tiny_model

    _, cache = tiny_model("llama", n_layers=1).run_with_cache("her cat sat on her mat")
    split = split_heads(fused_qkv(cache, 0)[0], 4)
    assert torch.equal(split[3], fused_qkv(cache, 0, head=3)[0])


@pytest.mark.parametrize("method", ["cosine", "correlation"])
def test_per_head_equals_head_slice(tiny_qkv, method):
    stacked = torch.stack([fused_qkv(tiny_qkv, layer)[0] for layer in (0, 1)])  # [layer, pos, 3n]
    heads = split_heads(stacked, 4)  # [layer, head, pos, 3 * dh]
    axes = {"layer": layer_labels(2), "head": head_labels(4)}
    st = qkv_block_similarity(heads, method, bins=12, axes=axes)
    mo = sample_moments(heads, axes=axes)
    for layer in (0, 1):
        for h in range(4):
            one_head = fused_qkv(tiny_qkv, layer, head=h)[0]
            ref = reference_block_similarity(one_head, method, bins=12)
            got = st[f"L{layer}H{h}"]
            assert got.axes == {}
            torch.testing.assert_close(got.prob, ref.prob, rtol=0, atol=0)
            torch.testing.assert_close(got.frac_extreme, ref.frac_extreme, rtol=0, atol=0)
            torch.testing.assert_close(got.mean, ref.mean, rtol=0, atol=1e-5)
            var = float(one_head.var(0, correction=0).mean())
            assert float(mo[f"L{layer}H{h}"].var) == pytest.approx(var, rel=1e-5)


def test_top_heads_are_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 20, 6, generator=g, dtype=torch.float64)  # [layer, head, samples, 3 * d_head]
    st = qkv_block_similarity(x, bins=4, axes={"layer": ("L4", "L7"), "head": head_labels(3)})
    top = st.rows(block="QK", sort_by="std", k=2)
    qk = st.std[..., 1]
    order = qk.flatten().argsort(descending=True)[:2].tolist()
    assert [(r["layer"], r["head"]) for r in top] == [(("L4", "L7")[i // 3], f"H{i % 3}") for i in order]
    assert top[0]["std"] == float(qk.max())


def test_bad_split_raises():
    with pytest.raises(TlprobeError, match="split"):
        split_heads(torch.randn(2, 25, 24), 5)
    with pytest.raises(TlprobeError, match="expected"):
        split_heads(torch.randn(24), 2)
