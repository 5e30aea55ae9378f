"""The TransformerLens worlds (bridge, HookedTransformer, HookedEncoder) give the same tlprobe numbers
from the same weights, and caches of every kind work: batch-less ones, run_batch's with TL's own methods.

Which tests run depends on the installed TransformerLens: the bridge exists from 3.0, the hooked
classes until 3.x; the CI legs (TL 4.3, 3.9, 2.18, 2.16.1) run each on at least one version.
"""

import pytest
import torch

from tests.helpers import requires_both, requires_hooked
from tlprobe.access import (
    fused_qkv,
    get_qkv,
    hook_names,
    load_model,
    minilm_dir,
    model_info,
    model_kind,
    resid_hook_names,
    resid_stack,
    run_batch,
)
from tlprobe.access.worlds import has_bridge, has_hooked, numerics
from tlprobe.analyses.lens import logit_lens
from tlprobe.analyses.similarity import qkv_block_similarity
from tlprobe.errors import HookNotFoundError, ModelLoadError
from tlprobe.testing import tiny_model

PROMPTS = ["She gave her the book because she liked it.", "The pilot checked her instruments."]
PROMPT = "She gave her the book because she liked it."
KINDS = [k for k, ok in (("bridge", has_bridge()), ("hooked", has_hooked())) if ok]
STATS = ("prob", "mean", "std", "mean_abs", "frac_extreme")


def _close(a, b, atol=1e-4):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


def _block_stats_close(a, b):
    assert a.blocks == b.blocks and torch.equal(a.count, b.count)
    for name in STATS:
        _close(getattr(a, name), getattr(b, name))


@requires_both
@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_hooked_and_bridge_caches_give_the_same_numbers(family):
    """One state dict, two worlds: tokens, Q|K|V, block statistics, residual stream and lens agree to 1e-4."""
    bridge, hooked = tiny_model(family, kind="bridge"), tiny_model(family, kind="hooked")
    assert (model_kind(bridge), model_kind(hooked)) == ("bridge", "hooked")
    b, h = run_batch(bridge, PROMPTS), run_batch(hooked, PROMPTS)
    assert torch.equal(b.tokens, h.tokens) and torch.equal(b.attention_mask, h.attention_mask)
    real = b.attention_mask.bool()
    for layer in range(bridge.cfg.n_layers):
        qb, qh = fused_qkv(b.cache, layer)[real], fused_qkv(h.cache, layer)[real]
        assert qb.shape[-1] == 3 * 64  # GQA K/V expanded in both worlds
        _close(qb, qh)
        for method in ("cosine", "correlation"):
            _block_stats_close(qkv_block_similarity(qb, method, bins=20), qkv_block_similarity(qh, method, bins=20))
    _close(resid_stack(b.cache)[:, real], resid_stack(h.cache)[:, real])
    lb = logit_lens(b.cache, [" her"], attention_mask=b.attention_mask)
    lh = logit_lens(h.cache, [" her"], attention_mask=h.attention_mask)
    for name in ("entropy", "kl_to_final", "target_probs"):  # padded positions differ by design
        _close(getattr(lb, name)[:, real], getattr(lh, name)[:, real])
    for name in ("mean_entropy", "target_mean_probs"):
        _close(getattr(lb, name), getattr(lh, name))
    assert lb.numerics == "bridge (raw Hugging Face weights)" == model_info(bridge).numerics
    assert lh.numerics == "HookedTransformer (raw Hugging Face weights)" == model_info(hooked).numerics


@requires_hooked
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_processed_hooked_model_says_so_and_changes_only_what_processing_changes(family):
    """from_pretrained's default processing: Q|K|V and lens probabilities stay, the residual stream moves."""
    raw, proc = tiny_model(family, kind="hooked"), tiny_model(family, kind="hooked", processed=True)
    a, b = run_batch(raw, PROMPTS), run_batch(proc, PROMPTS)
    real = a.attention_mask.bool()
    _close(fused_qkv(a.cache, 1)[real], fused_qkv(b.cache, 1)[real])
    la, lb = logit_lens(a.cache, [" her"]), logit_lens(b.cache, [" her"])
    _close(la.entropy, lb.entropy)
    _close(la.target_probs, lb.target_probs)
    info = model_info(proc)
    assert info.compatibility_mode and not model_info(raw).compatibility_mode
    assert "centred unembedding" in info.numerics and info.numerics == lb.numerics
    assert lb.compatibility_mode and "centred" in lb.readout
    if family == "gpt2":  # LayerNorm models: writing weights centred, so the stream itself differs
        assert "centred writing weights" in info.numerics
        assert float((resid_stack(a.cache) - resid_stack(b.cache))[:, real].abs().max()) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_batchless_cache_on_gqa_gives_the_batched_numbers(kind):
    """remove_batch_dim=True (TL tutorials' habit): K/V still expanded, blocks still Q, K, V, lens works."""
    model = tiny_model("llama", kind=kind)
    _, batched = model.run_with_cache(PROMPT)
    _, single = model.run_with_cache(PROMPT, remove_batch_dim=True)
    assert single["blocks.0.attn.hook_k"].shape[-2] == 2  # the raw cache keeps n_kv_heads, no batch axis
    for layer in range(model.cfg.n_layers):
        q, k, v = get_qkv(single, layer)
        assert q.shape == k.shape == v.shape == (1, q.shape[1], 4, 16)
        fs, fb = fused_qkv(single, layer), fused_qkv(batched, layer)
        assert fs.shape == fb.shape and fs.shape[-1] == 192
        torch.testing.assert_close(fs, fb)
        _block_stats_close(qkv_block_similarity(fs[0], bins=20), qkv_block_similarity(fb[0], bins=20))
    torch.testing.assert_close(resid_stack(single), resid_stack(batched))
    ls, lb = logit_lens(single, [" her"]), logit_lens(batched, [" her"])
    torch.testing.assert_close(ls.entropy, lb.entropy)
    assert torch.equal(ls.top_ids, lb.top_ids)


@pytest.mark.parametrize("kind", KINDS)
def test_run_batch_caches_work_with_transformer_lens_cache_methods(kind):
    """No inference tensors: TL's stack_head_results, accumulated_resid and decompose_resid accept the cache."""
    model = tiny_model("gpt2", kind=kind)
    batch = run_batch(model, [PROMPT])
    stacked = batch.cache.stack_head_results(layer=-1)
    _, reference = model.run_with_cache(PROMPT)
    torch.testing.assert_close(stacked, reference.stack_head_results(layer=-1), atol=1e-5, rtol=1e-5)
    # TL's accumulated residual stream (every resid_pre, then the last resid_post) is tlprobe's stack
    torch.testing.assert_close(batch.cache.accumulated_resid(), resid_stack(batch.cache))
    parts = batch.cache.decompose_resid()
    torch.testing.assert_close(parts.sum(0), resid_stack(batch.cache)[-1], atol=1e-4, rtol=1e-4)
    assert not any(t.is_inference() for t in (stacked, batch.cache[resid_hook_names(model)[0]]))


def test_resid_stack_puts_every_layer_on_one_device(tiny_models):
    _, cache = tiny_models["gpt2"].run_with_cache(PROMPT)
    stack = resid_stack(cache, device="meta")
    assert stack.device.type == "meta" and stack.shape == resid_stack(cache).shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a second device needs a GPU")
def test_resid_stack_of_a_cache_split_over_devices():
    from transformer_lens import ActivationCache

    model = tiny_model("gpt2")
    _, cache = model.run_with_cache(PROMPT)
    names = resid_hook_names(model)
    split = ActivationCache({n: cache[n].to("cuda" if i % 2 else "cpu") for i, n in enumerate(names)}, model)
    torch.testing.assert_close(resid_stack(split, device="cpu"), resid_stack(cache))
    assert resid_stack(split).device.type == "cpu"  # the first entry's device


def test_minilm_is_an_encoder_in_every_world(minilm):
    info = model_info(minilm)
    assert info.is_encoder and info.post_ln and info.family == "bert"
    assert info.kind == ("bridge" if has_bridge() else "hooked-encoder")
    assert info.numerics == numerics(minilm) and "raw Hugging Face weights" in info.numerics


@requires_hooked
def test_hooked_encoder_minilm_equals_hugging_face():
    """The bundled model as a HookedEncoder: the block outputs (hook_normalized_resid_post) are HF's hidden_states."""
    from transformers import AutoModel

    model = load_model("minilm", kind="hooked", device="cpu")
    assert model_kind(model) == "hooked-encoder" and model_info(model).is_encoder
    batch = run_batch(model, PROMPTS, names=resid_hook_names(model))
    assert resid_hook_names(model)[1] == "blocks.0.hook_normalized_resid_post"
    hf = AutoModel.from_pretrained(str(minilm_dir())).eval()
    with torch.no_grad():
        hs = torch.stack(hf(input_ids=batch.tokens, attention_mask=batch.attention_mask, output_hidden_states=True)[2])
    real = batch.attention_mask.bool()
    torch.testing.assert_close(resid_stack(batch.cache)[:, real], hs[:, real], atol=1e-4, rtol=1e-4)


@requires_both
def test_hooked_encoder_and_bridge_minilm_agree(minilm):
    hooked = load_model("minilm", kind="hooked", device="cpu")
    a = run_batch(minilm, PROMPTS, names=resid_hook_names(minilm) + hook_names(["q", "k", "v"], [2], model=minilm))
    b = run_batch(hooked, PROMPTS, names=resid_hook_names(hooked) + hook_names(["q", "k", "v"], [2], model=hooked))
    assert torch.equal(a.tokens, b.tokens)
    real = a.attention_mask.bool()
    _close(resid_stack(a.cache)[:, real], resid_stack(b.cache)[:, real])
    _close(fused_qkv(a.cache, 2)[real], fused_qkv(b.cache, 2)[real])


def test_a_kind_this_version_lacks_is_refused_with_the_fix():
    missing = "hooked" if not has_hooked() else ("bridge" if not has_bridge() else None)
    if missing is None:
        pytest.skip("this TransformerLens has both worlds")
    with pytest.raises(ModelLoadError, match="transformer-lens"):
        load_model("minilm", kind=missing)  # type: ignore[arg-type]


def test_ln_final_hook_on_hooked_models_is_explained():
    if not has_hooked():
        pytest.skip("HookedTransformer needs TransformerLens < 4")
    from tlprobe.access import get_activation

    _, cache = tiny_model("gpt2", kind="hooked").run_with_cache(PROMPT)
    with pytest.raises(HookNotFoundError, match="apply_final_norm"):
        get_activation(cache, "ln_final")


@requires_hooked
@pytest.mark.parametrize("processed", [False, True])
def test_load_model_hooked_passes_the_processing_and_picks_the_class(monkeypatch, processed):
    """The hub path (unreachable here): decoders go to HookedTransformer.from_pretrained with every
    processing flag equal to compatibility_mode, BERT-type configs to HookedEncoder.from_pretrained."""
    import transformers

    from tlprobe.access.worlds import hooked_classes

    HookedTransformer, HookedEncoder, _ = hooked_classes()
    calls = []
    tiny = tiny_model("gpt2", kind="hooked")
    monkeypatch.setattr(HookedTransformer, "from_pretrained", lambda name, **kw: calls.append(("ht", kw)) or tiny)
    monkeypatch.setattr(HookedEncoder, "from_pretrained", lambda name, **kw: calls.append(("he", kw)) or tiny)
    for model_type in ("gpt2", "bert"):
        config = transformers.PretrainedConfig()
        config.model_type = model_type
        monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda name, config=config: config)
        load_model("some/model", kind="hooked", device="cpu", compatibility_mode=processed)
    (which_d, kw_d), (which_e, kw_e) = calls
    assert (which_d, which_e) == ("ht", "he")
    flags = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
    assert {f: kw_d[f] for f in flags} == dict.fromkeys(flags, processed)
    assert kw_d["device"] == kw_e["device"] == "cpu"
