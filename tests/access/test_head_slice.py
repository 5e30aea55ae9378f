"""head_slice: one head's activations, checked against the raw hook tensors and TransformerLens' attention."""

import numpy as np
import pytest
import torch

import tlprobe
from tlprobe.access import get_qkv, head_slice, hook_name, hook_names, run_batch
from tlprobe.errors import HookNotFoundError, TlprobeError

PROMPTS = ["She gave her the book.", "The pilot checked her instruments twice before the takeoff."]
KINDS = ("q", "k", "v", "z", "pattern")


def raw(cache, kind: str, layer: int) -> torch.Tensor:
    """The hook tensor as TransformerLens cached it (its own name for the model's world)."""
    return cache[hook_name(kind, layer, model=cache.model)]


@pytest.fixture(scope="module")
def caches(tiny_models, minilm):
    """model.run_with_cache for each tiny decoder, and run_batch (padded, two prompts) for MiniLM."""
    out = {family: (model, model.run_with_cache(PROMPTS[1])[1]) for family, model in tiny_models.items()}
    out["minilm"] = (minilm, run_batch(minilm, PROMPTS, names=hook_names(KINDS, [1, 5], model=minilm)).cache)
    return out


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama", "minilm"])
@pytest.mark.parametrize("kind", ["q", "z"])
def test_q_z_are_the_hook_sliced_by_hand(caches, family, kind):
    model, cache = caches[family]
    layer = 1
    for head in range(model.cfg.n_heads):
        got = head_slice(cache, f"L{layer}H{head}", kind=kind)
        assert got.shape == (*raw(cache, kind, layer).shape[:2], model.cfg.d_head)
        assert torch.equal(got, raw(cache, kind, layer)[..., head, :])


@pytest.mark.parametrize("family", ["gpt2", "neox", "minilm"])
@pytest.mark.parametrize("kind", ["k", "v"])
def test_k_v_without_grouped_query(caches, family, kind):
    model, cache = caches[family]
    for head in range(model.cfg.n_heads):
        assert torch.equal(head_slice(cache, (1, head), kind=kind), raw(cache, kind, 1)[..., head, :])


@pytest.mark.parametrize("kind", ["k", "v"])
def test_k_v_grouped_query_is_repeat_interleave(caches, kind):
    """LLaMA tiny: 4 query heads on 2 key/value heads; heads 0, 1 read kv head 0, heads 2, 3 kv head 1."""
    model, cache = caches["llama"]
    kv = raw(cache, kind, 1)
    assert kv.shape[2] == 2 and model.cfg.n_heads == 4
    expanded = torch.repeat_interleave(kv, model.cfg.n_heads // kv.shape[2], dim=2)
    _, k, v = get_qkv(cache, 1)
    from_get_qkv = {"k": k, "v": v}[kind]
    for head in range(4):
        got = head_slice(cache, f"L1H{head}", kind=kind)
        assert torch.equal(got, expanded[:, :, head])
        assert torch.equal(got, kv[:, :, head // 2])
        assert torch.equal(got, from_get_qkv[:, :, head])


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_z_is_pattern_times_v_per_head(caches, family):
    """Independent of the expansion rule: each head's z is its own pattern applied to its own v."""
    model, cache = caches[family]
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            pattern = head_slice(cache, (layer, head), kind="pattern")
            v = head_slice(cache, (layer, head), kind="v")
            z = head_slice(cache, (layer, head), kind="z")
            torch.testing.assert_close(pattern @ v, z, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "minilm"])
def test_pattern_is_the_hook_sliced_by_hand(caches, family):
    model, cache = caches[family]
    full = raw(cache, "pattern", 1)
    got = head_slice(cache, "L1H2", kind="pattern")
    assert got.shape == (full.shape[0], full.shape[2], full.shape[3])
    assert torch.equal(got, full[:, 2])
    assert torch.equal(got, cache["blocks.1.attn.hook_pattern"][:, 2])  # the name in every world tlprobe knows


@pytest.mark.parametrize("kind", KINDS)
def test_tuple_and_label_agree(caches, kind):
    _, cache = caches["llama"]
    expected = head_slice(cache, "L1H2", kind=kind)
    assert torch.equal(head_slice(cache, (1, 2), kind=kind), expected)
    assert torch.equal(head_slice(cache, (np.int64(1), torch.tensor(2)), kind=kind), expected)


def test_default_kind_is_q_and_top_level_export(caches):
    _, cache = caches["gpt2"]
    assert tlprobe.head_slice is head_slice
    assert torch.equal(tlprobe.head_slice(cache, "L0H3"), head_slice(cache, "L0H3", kind="q"))


def test_minilm_run_batch_matches_own_run_with_cache(minilm):
    """The same prompt through tlprobe.run_batch and through model.run_with_cache gives the same head."""
    prompt = PROMPTS[0]
    batch = run_batch(minilm, [prompt], names=hook_names(KINDS, [3], model=minilm))
    _, own = minilm.run_with_cache(prompt, names_filter=hook_names(KINDS, [3], model=minilm))
    assert own[hook_name("q", 3, model=minilm)].shape[1] == batch.tokens.shape[1]
    for kind in KINDS:
        torch.testing.assert_close(
            head_slice(batch.cache, "L3H7", kind=kind), head_slice(own, "L3H7", kind=kind), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("kind", KINDS)
def test_remove_batch_dim_cache_gets_batch_back(caches, kind):
    model, cache = caches["llama"]
    _, single = model.run_with_cache(PROMPTS[1], remove_batch_dim=True)
    got = head_slice(single, "L1H3", kind=kind)
    assert got.shape[0] == 1
    assert torch.equal(got, head_slice(cache, "L1H3", kind=kind))


def test_dict_cache(caches):
    """A plain dict of hook name -> tensor (no model): q needs nothing else; GQA k needs hook_q for the grouping."""
    _, cache = caches["llama"]
    names = [hook_name(kind, 1) for kind in KINDS]
    plain = {name: cache[name] for name in names}
    for kind in KINDS:
        assert torch.equal(head_slice(plain, "L1H3", kind=kind), head_slice(cache, "L1H3", kind=kind))
    k_only = {hook_name("k", 1): cache[hook_name("k", 1)]}
    with pytest.raises(TlprobeError, match="cannot tell which key/value head serves each query head"):
        head_slice(k_only, "L1H3", kind="k")
    with pytest.raises(HookNotFoundError, match=r"'blocks\.7\.attn\.hook_q', which is not in the cache"):
        head_slice(plain, "L7H0")  # no model: the layer cannot be checked, the hook is missing


@pytest.mark.parametrize(
    "head,kind,fragment",
    [
        ("L2H0", "q", "no head L2H0: the model has 2 layers (L0..L1)"),
        ((5, 1), "pattern", "no head L5H1: the model has 2 layers (L0..L1)"),
        ("L1H4", "q", "no head L1H4: the model has 4 heads per layer (H0..H3)"),
        ("L1H4", "k", "no head L1H4: the model has 4 heads per layer (H0..H3)"),  # 2 kv heads, 4 query heads
        ("L1H9", "pattern", "no head L1H9: the model has 4 heads per layer (H0..H3)"),
        ("H2", "q", "head 'H2' does not say which layer; give it, e.g. 'L0H2' or (0, 2)"),
        (2, "q", "head 2 does not say which layer"),
        ("L1X2", "q", "not a head label: 'L1X2'"),
        ((1, -2), "q", "head must be >= 0"),
        ((1, 2, 3), "q", "a head tuple is (layer, head)"),
        ("L1H2", "scores", "unknown head_slice kind 'scores'; choose one of q, k, v, z, pattern"),
        ("L1H2", "result", "unknown head_slice kind 'result'"),
    ],
)
def test_errors(caches, head, kind, fragment):
    _, cache = caches["llama"]
    with pytest.raises(TlprobeError) as err:
        head_slice(cache, head, kind=kind)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_hook_names_it_and_how_to_cache_it(tiny_models):
    model = tiny_models["gpt2"]
    _, cache = model.run_with_cache(PROMPTS[0], names_filter=[hook_name("q", 1, model=model)])
    with pytest.raises(HookNotFoundError) as err:
        head_slice(cache, "L1H2", kind="pattern")
    message = str(err.value)
    name = hook_name("pattern", 1, model=model)
    assert f"reads {name!r}, which is not in the cache" in message
    assert f"names=[{name!r}]" in message and f"names_filter=[{name!r}]" in message
    assert "\n" not in message


def test_not_a_cache():
    with pytest.raises(TlprobeError, match="cache must be an ActivationCache"):
        head_slice(torch.zeros(3), "L0H0")
