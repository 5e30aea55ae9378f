"""The access layer on tiny GPT-2, NeoX, LLaMA-GQA decoders and on the real MiniLM encoder."""

import pytest
import torch

from tlprobe.access import (
    fused_qkv,
    get_activation,
    get_qkv,
    hook_names,
    model_info,
    model_kind,
    resid_hook_names,
    resid_stack,
    run_batch,
)
from tlprobe.errors import HookNotFoundError, ModelLoadError, TlprobeError

PROMPTS = ["She gave her the book.", "The pilot checked her instruments twice before the takeoff."]


@pytest.mark.parametrize("family,n_kv", [("gpt2", 4), ("neox", 4), ("llama", 2)])
def test_model_info_families(tiny_models, family, n_kv):
    info = model_info(tiny_models[family])
    assert info.family == family
    assert info.n_kv_heads == n_kv
    assert not info.is_encoder and not info.post_ln
    assert info.rotary == (family != "gpt2")
    assert info.parallel_blocks == (family == "neox")


def test_model_info_minilm(minilm):
    info = model_info(minilm)
    assert (info.family, info.is_encoder, info.post_ln, info.n_layers, info.d_model) == ("bert", True, True, 6, 384)


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_qkv_shapes_and_z_identity(tiny_models, family):
    """Expanded K/V are the ones attention uses: z == pattern @ v for every head."""
    model = tiny_models[family]
    _, cache = model.run_with_cache(PROMPTS[1])
    for layer in range(model.cfg.n_layers):
        q, k, v = get_qkv(cache, layer)
        assert q.shape == k.shape == v.shape == (1, q.shape[1], 4, 16)
        pattern = get_activation(cache, "pattern", layer)
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        torch.testing.assert_close(z, get_activation(cache, "z", layer), rtol=1e-4, atol=1e-5)


def test_gqa_expansion_is_repeat_interleave(tiny_models):
    _, cache = tiny_models["llama"].run_with_cache(PROMPTS[0])
    _, k_raw, v_raw = get_qkv(cache, 1, expand_kv=False)
    _, k, v = get_qkv(cache, 1)
    assert k_raw.shape[2] == 2 and k.shape[2] == 4
    # query heads 0,1 share kv head 0; heads 2,3 share kv head 1
    for h in range(4):
        assert torch.equal(k[:, :, h], k_raw[:, :, h // 2])
        assert torch.equal(v[:, :, h], v_raw[:, :, h // 2])


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_fused_qkv_is_per_head_tensors_relaid(tiny_models, family):
    _, cache = tiny_models[family].run_with_cache(PROMPTS[0])
    q, k, v = get_qkv(cache, 0)
    fused = fused_qkv(cache, 0)
    n = q.shape[2] * q.shape[3]
    assert fused.shape[-1] == 3 * n
    for part, t in enumerate((q, k, v)):
        assert torch.equal(fused[..., part * n : (part + 1) * n], t.flatten(-2))
    head = fused_qkv(cache, 0, head=3)
    assert torch.equal(head, torch.cat([q[:, :, 3], k[:, :, 3], v[:, :, 3]], -1))


def test_fused_qkv_equals_gpt2_c_attn_output(tiny_models):
    """Independent check of the layout: GPT-2's own fused projection c_attn(ln_1(resid_pre))."""
    from tlprobe.testing import tiny_hf_model

    model = tiny_models["gpt2"]
    _, cache = model.run_with_cache(PROMPTS[1])
    block = tiny_hf_model("gpt2")[0].transformer.h[1]  # the same weights, straight from transformers
    with torch.no_grad():
        expected = block.attn.c_attn(block.ln_1(get_activation(cache, "resid_pre", 1)))
    torch.testing.assert_close(fused_qkv(cache, 1), expected, rtol=1e-5, atol=1e-5)


def test_resid_stack_minilm_equals_hf_hidden_states(minilm):
    """BERT post-LN: the stack is HF's hidden_states (padding handled by the mask)."""
    from transformers import AutoModel, AutoTokenizer

    from tlprobe.access import minilm_dir

    batch = run_batch(minilm, PROMPTS, names=resid_hook_names(minilm))
    stack = resid_stack(batch.cache)
    assert stack.shape == (7, 2, batch.tokens.shape[1], 384)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    hf = AutoModel.from_pretrained(str(minilm_dir())).eval()
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    assert torch.equal(enc["input_ids"], batch.tokens)
    with torch.no_grad():
        hs = torch.stack(hf(**enc, output_hidden_states=True).hidden_states)
    valid = enc["attention_mask"].bool()
    torch.testing.assert_close(stack[:, valid], hs[:, valid], rtol=1e-4, atol=1e-4)


def test_resid_stack_decoder_equals_hf_before_final_norm(tiny_models):
    from tlprobe.testing import tiny_hf_model

    model = tiny_models["gpt2"]
    hf = tiny_hf_model("gpt2")[0]
    _, cache = model.run_with_cache(PROMPTS[1])
    stack = resid_stack(cache)
    ids = model.to_tokens(PROMPTS[1])
    with torch.no_grad():
        hs = hf(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(stack[:-1], torch.stack(hs[:-1]), rtol=1e-5, atol=1e-5)
    ln_f = hf.transformer.ln_f
    torch.testing.assert_close(ln_f(stack[-1]), hs[-1], rtol=1e-5, atol=1e-5)
    assert torch.equal(resid_stack(cache, layers=[0, -1]), stack[[0, -1]])


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("which", ["minilm", "gpt2", "llama"])
def test_run_batch_padding_matches_single_prompts(minilm, tiny_models, side, which):
    model = minilm if which == "minilm" else tiny_models[which]
    names = hook_names(["resid_post", "q"], [1], model=model)
    if side == "left" and model_kind(model) == "hooked-encoder":
        with pytest.raises(TlprobeError, match="left padding would shift every position embedding"):
            run_batch(model, PROMPTS, names=names, padding_side=side)
        return
    batch = run_batch(model, PROMPTS, names=names, padding_side=side, batch_size=1)
    for i, prompt in enumerate(PROMPTS):
        _, single = model.run_with_cache(prompt, names_filter=names)
        valid = batch.attention_mask[i].bool()
        for name in names:
            torch.testing.assert_close(batch.cache[name][i][valid], single[name][0], rtol=1e-4, atol=1e-4)
        assert len(batch.str_tokens(i)) == int(valid.sum())


def test_run_batch_refuses_too_long_prompt(tiny_models):
    with pytest.raises(TlprobeError, match="more than the model's context"):
        run_batch(tiny_models["gpt2"], ["word " * 400])


def test_missing_hook_error_names_hook(tiny_models):
    model = tiny_models["neox"]
    _, cache = model.run_with_cache("her", names_filter=hook_names(["q"], [0]))
    with pytest.raises(HookNotFoundError, match=r"blocks\.0\.attn\.hook_k.*names_filter"):
        get_qkv(cache, 0)
    _, full = model.run_with_cache("her")
    with pytest.raises(HookNotFoundError, match="hook_resid_mid.*parallel blocks"):
        get_activation(full, "resid_mid", 0)
    with pytest.raises(HookNotFoundError, match="hook_pos_embed.*rotary models"):
        get_activation(full, "pos_embed")


def test_layer_and_head_out_of_range(tiny_models):
    _, cache = tiny_models["gpt2"].run_with_cache("her")
    with pytest.raises(TlprobeError, match="layer 5 is out of range"):
        get_qkv(cache, 5)
    with pytest.raises(TlprobeError, match="head 9 is out of range"):
        fused_qkv(cache, 0, head=9)


def test_offline_hub_id_gives_clear_error():
    from tlprobe import load_model

    with pytest.raises(ModelLoadError, match="--model minilm"):
        load_model("gpt2", device="cpu")


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_tokenize_prompts_pads_as_transformer_lens_does(tiny_models, family, side):
    """The padded batch is TL's own to_tokens(list); the mask marks exactly each prompt's own tokens."""
    from tlprobe.access import tokenize_prompts

    model = tiny_models[family]
    tokens, mask = tokenize_prompts(model, PROMPTS + ["her"], padding_side=side)
    assert torch.equal(tokens, model.to_tokens(PROMPTS + ["her"], padding_side=side, truncate=False))
    for i, prompt in enumerate(PROMPTS + ["her"]):
        assert torch.equal(tokens[i][mask[i].bool()], model.to_tokens(prompt, truncate=False)[0])
