"""Lenses: logit lens (decoders), MLM lens and embedding lens (encoders), figures and the recipe."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from tlprobe.access.hooks import hook_names, resid_hook_names, resid_stack
from tlprobe.access.models import _bridge_class, load_model, minilm_dir
from tlprobe.access.run import run_batch
from tlprobe.access.unembed import (
    apply_final_norm,
    mlm_head_check,
    special_token_ids,
    target_token_ids,
)
from tlprobe.analyses.lens import (
    EMBEDDING_LENS,
    LOGIT_LENS,
    MLM_LENS,
    choose_lens,
    embedding_lens,
    lens_logits,
    logit_lens,
    mlm_lens,
)
from tlprobe.errors import TlprobeError, UnsupportedModelError
from tlprobe.figures.lens import (
    kl_entropy_figure,
    lens_grid_figure,
    plotly_text,
    recovery_figure,
    target_topk_view,
    target_trajectory_figure,
)
from tlprobe.testing import tiny_model, tiny_tokenizer

FAMILIES = ("gpt2", "neox", "llama")
PROMPTS = ["She gave her the book because she liked it", "The quick brown fox"]
TARGETS = [" her", " the"]


def _run(model):
    n = model.cfg.n_layers
    # our lens reads resid_hook_names; TransformerLens' accumulated_resid also wants every resid_pre
    names = sorted(set(resid_hook_names(n)) | set(hook_names(["resid_pre"], range(n))))
    batch = run_batch(model, PROMPTS, names=names)
    with torch.inference_mode():
        logits = model(batch.tokens, attention_mask=batch.attention_mask)
    return batch, logits


@pytest.fixture(scope="module", params=FAMILIES)
def decoder(request):
    model = tiny_model(request.param, n_layers=3)
    batch, logits = _run(model)
    return model, batch, logits


@pytest.fixture(scope="module")
def minilm():
    model = load_model("minilm", device="cpu")
    text = ["The Eiffel Tower is in the city of Paris.", "She gave her the book because she liked it."]
    batch = run_batch(model, text, names=resid_hook_names(model.cfg.n_layers))
    return model, batch


def _tiny_bert_hf(seed=0, head=True):
    from transformers import BertConfig, BertForMaskedLM, BertModel

    tok = tiny_tokenizer("wordpiece")
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = (BertForMaskedLM if head else BertModel)(cfg).eval()
    return hf, tok


# ------------------------------------------------------------------------------------------
# Decoder logit lens


def test_last_layer_reproduces_model_logits(decoder):
    model, batch, logits = decoder
    full = lens_logits(batch.cache)
    assert full.shape == (model.cfg.n_layers + 1, *logits.shape)
    torch.testing.assert_close(full[-1], logits, atol=1e-5, rtol=0)
    res = logit_lens(batch.cache, targets=TARGETS, logits=logits, attention_mask=batch.attention_mask)
    assert res.kind == LOGIT_LENS and res.final_max_abs_error < 1e-5
    assert res.labels[0] == "embed" and len(res.labels) == model.cfg.n_layers + 1
    # top-1 of the last depth is the model's own argmax
    assert torch.equal(res.top_ids[-1, ..., 0], logits.argmax(-1))


def test_agrees_with_transformer_lens(decoder):
    from transformer_lens.tools.analysis.logit_lens import logit_lens as tl_logit_lens

    model, batch, _ = decoder
    ours = logit_lens(batch.cache, targets=TARGETS, top_k=5)
    tl_lp = tl_logit_lens(batch.cache, positions=None, return_type="log_probs")
    torch.testing.assert_close(lens_logits(batch.cache, "log_probs"), tl_lp.values, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.entropy, tl_lp.readout.entropy, atol=1e-4, rtol=0)
    tl_top = tl_logit_lens(batch.cache, positions=None, top_k=5, return_type="probs")
    assert torch.equal(ours.top_ids, tl_top.readout.top_ids)
    torch.testing.assert_close(ours.top_probs, tl_top.values, atol=1e-6, rtol=1e-4)
    tl_t = tl_logit_lens(batch.cache, positions=None, targets=TARGETS, return_type="probs")
    assert torch.equal(ours.target_ranks, tl_t.readout.target_ranks)
    torch.testing.assert_close(ours.target_probs, tl_t.values, atol=1e-6, rtol=1e-4)


def test_chunked_equals_unchunked(decoder):
    _, batch, logits = decoder
    one = logit_lens(batch.cache, targets=TARGETS, top_k=7, logits=logits)
    many = logit_lens(batch.cache, targets=TARGETS, top_k=7, logits=logits, vocab_chunk=37)
    assert torch.equal(one.top_ids, many.top_ids)
    assert torch.equal(one.target_ranks, many.target_ranks)
    for a, b in (
        (one.top_probs, many.top_probs),
        (one.target_probs, many.target_probs),
        (one.entropy, many.entropy),
        (one.kl_to_final, many.kl_to_final),
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for rt in ("logits", "log_probs", "probs"):
        torch.testing.assert_close(
            lens_logits(batch.cache, rt, vocab_chunk=50), lens_logits(batch.cache, rt), atol=1e-5, rtol=0
        )


def test_entropy_kl_and_ranks_against_independent_formulas(decoder):
    _, batch, _ = decoder
    res = logit_lens(batch.cache, targets=TARGETS, top_k=3, vocab_chunk=100)
    logp = lens_logits(batch.cache, "log_probs").double()
    ent = torch.distributions.Categorical(logits=logp).entropy()
    torch.testing.assert_close(res.entropy.double(), ent, atol=1e-4, rtol=1e-5)
    kl = torch.nn.functional.kl_div(logp, logp[-1].expand_as(logp), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(res.kl_to_final.double(), kl.clamp_min(0), atol=1e-4, rtol=1e-4)
    assert float(res.kl_to_final[-1].abs().max()) == 0.0
    assert bool((res.kl_to_final[:-1] > 0).any())
    # rank = number of strictly larger logits, counted with numpy
    z = lens_logits(batch.cache).numpy()
    tids = target_token_ids(batch.cache.model, TARGETS)
    ranks = (z[..., None, :] > z[..., tids][..., None]).sum(-1)
    np.testing.assert_array_equal(res.target_ranks.numpy(), ranks)
    np.testing.assert_allclose(res.target_probs.numpy(), np.exp(logp.numpy()[..., tids]), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_compatibility_mode_handled_and_recorded(family):
    raw = tiny_model(family, n_layers=2)
    batch, _ = _run(raw)
    compat = tiny_model(family, n_layers=2)
    compat.enable_compatibility_mode()
    cbatch, clogits = _run(compat)
    r_raw = logit_lens(batch.cache, targets=TARGETS)
    r_c = logit_lens(cbatch.cache, targets=TARGETS, logits=clogits)
    assert not r_raw.compatibility_mode and r_raw.readout == "logits"
    assert r_c.compatibility_mode and "centred" in r_c.readout
    assert r_c.final_max_abs_error < 1e-5  # the (centred) logits of the compat model itself
    # folding and centring change logits by a constant per position: every depth's distribution is the same
    torch.testing.assert_close(
        lens_logits(cbatch.cache, "log_probs"), lens_logits(batch.cache, "log_probs"), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(r_c.entropy, r_raw.entropy, atol=1e-4, rtol=0)
    assert r_c.to_dict()["compatibility_mode"] is True


def test_final_norm_uses_fresh_statistics():
    model = tiny_model("gpt2", n_layers=2)
    _, cache = model.run_with_cache("She gave her the book")
    stack = resid_stack(cache)
    x = stack.detach()
    ln = model.ln_final
    expected = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + model.cfg.eps).sqrt()
    expected = expected * ln.weight + ln.bias
    torch.testing.assert_close(apply_final_norm(model, x), expected, atol=1e-5, rtol=1e-5)


def test_logit_lens_refuses_encoder(minilm):
    _, batch = minilm
    with pytest.raises(UnsupportedModelError, match="encoder.*mlm_lens.*embedding_lens"):
        logit_lens(batch.cache)


def test_mlm_lens_refuses_decoder(decoder):
    _, batch, _ = decoder
    with pytest.raises(UnsupportedModelError, match="decoder: use logit_lens"):
        mlm_lens(batch.cache)


def test_bad_inputs(decoder):
    model, batch, logits = decoder
    with pytest.raises(TlprobeError, match="tokens"):
        logit_lens(batch.cache, targets=["herself and other things"])
    with pytest.raises(TlprobeError, match="top_k"):
        logit_lens(batch.cache, top_k=0)
    with pytest.raises(TlprobeError, match="vocab_chunk"):
        logit_lens(batch.cache, vocab_chunk=0)
    with pytest.raises(TlprobeError, match="logits has shape"):
        logit_lens(batch.cache, logits=logits[:, :-1])
    with pytest.raises(UnsupportedModelError, match="does not reproduce"):
        logit_lens(batch.cache, logits=logits.flip(0))  # logits of another input
    res = logit_lens(batch.cache, top_k=4)
    assert res.top(2).ids.shape[-1] == 2
    with pytest.raises(TlprobeError, match="k must be"):
        res.top(5)


# ------------------------------------------------------------------------------------------
# Encoders: head check, MLM lens, embedding lens


def test_minilm_mlm_lens_refused_with_reason(minilm):
    model, batch = minilm
    check = mlm_head_check(model)
    assert check.status == "missing" and "BertModel" in check.architectures
    with pytest.raises(UnsupportedModelError) as err:
        mlm_lens(batch.cache, trust_head=True)  # a known-missing head is refused even when trusted
    msg = str(err.value)
    assert "random weights" in msg and "cls.predictions.transform.dense" in msg and "embedding_lens" in msg
    assert choose_lens(model)[0] == "embedding"


def test_head_check_agrees_with_transformers_loading_report():
    from transformers import BertForMaskedLM

    model = load_model("minilm", device="cpu")
    _, info = BertForMaskedLM.from_pretrained(str(minilm_dir()), output_loading_info=True)
    hf_missing = set(info["missing_keys"])
    check = mlm_head_check(model)
    for module in check.missing:  # every module we call missing, Transformers initialised
        assert any(k.startswith(module + ".") for k in hf_missing)
    transform = {k.rsplit(".", 1)[0] for k in hf_missing if ".transform." in k}
    assert transform == set(check.missing)


def test_head_check_on_saved_and_in_memory_models(tmp_path):
    hf, tok = _tiny_bert_hf(head=True)
    hf.save_pretrained(tmp_path / "with_head")
    tok.save_pretrained(tmp_path / "with_head")
    bare, _ = _tiny_bert_hf(head=False)
    bare.save_pretrained(tmp_path / "no_head")
    tok.save_pretrained(tmp_path / "no_head")
    boot = _bridge_class().boot_transformers
    assert mlm_head_check(boot(str(tmp_path / "with_head"), device="cpu")).status == "trained"
    assert mlm_head_check(boot(str(tmp_path / "no_head"), device="cpu")).status == "missing"
    mem = boot("tiny-bert", hf_model=_tiny_bert_hf(seed=1)[0], tokenizer=tok, device="cpu")
    assert mlm_head_check(mem).status == "unknown"


def test_mlm_lens_with_trained_head(tmp_path):
    hf, tok = _tiny_bert_hf(head=True)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = _bridge_class().boot_transformers(str(tmp_path), device="cpu")
    assert choose_lens(model)[0] == "mlm"
    batch = run_batch(model, ["the cat sat on the [MASK] .", "paris is a city"], names=resid_hook_names(2))
    with torch.inference_mode():
        logits = model(batch.tokens, attention_mask=batch.attention_mask)
    res = mlm_lens(batch.cache, targets=["mat"], logits=logits, attention_mask=batch.attention_mask)
    assert res.kind == MLM_LENS and res.final_max_abs_error < 1e-5
    # independent: Hugging Face's own head on Hugging Face's hidden states, every layer
    ref = _tiny_bert_hf(head=True)[0]
    with torch.no_grad():
        hs = ref(batch.tokens, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states
        hf_logits = torch.stack([ref.cls(h) for h in hs])
    torch.testing.assert_close(lens_logits(batch.cache, lens="mlm"), hf_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lens_logits(batch.cache, lens="mlm", vocab_chunk=999), hf_logits, atol=1e-4, rtol=1e-4)


def test_mlm_lens_unverifiable_head_needs_trust():
    hf, tok = _tiny_bert_hf(head=True)
    model = _bridge_class().boot_transformers("tiny-bert", hf_model=hf, tokenizer=tok, device="cpu")
    logits, cache = model.run_with_cache("the cat sat on the [MASK] .")
    with pytest.raises(UnsupportedModelError, match="trust_head=True"):
        mlm_lens(cache)
    res = mlm_lens(cache, trust_head=True, logits=logits)
    assert res.final_max_abs_error < 1e-5


def test_embedding_lens_recovers_input_tokens_on_minilm(minilm):
    model, batch = minilm
    special = torch.tensor(special_token_ids(model))
    mask = batch.attention_mask.bool() & ~torch.isin(batch.tokens, special)
    res = embedding_lens(batch.cache, batch.tokens, top_k=5, mask=mask)
    assert res.kind == EMBEDDING_LENS and "not prediction" in res.kind
    rec = res.recovery()
    assert float(rec[0]) == 1.0 and float(rec[1]) == 1.0  # the embedding and layer 0
    # independent: scikit-learn cosine similarity against every W_E row
    stack = resid_stack(batch.cache).detach().numpy()
    W_E = model.W_E.detach().numpy()
    for d in (0, stack.shape[0] - 1):
        sims = cosine_similarity(stack[d].reshape(-1, stack.shape[-1]), W_E)
        np.testing.assert_array_equal(res.top_ids[d, ..., 0].reshape(-1).numpy(), sims.argmax(-1))
        own = sims[np.arange(sims.shape[0]), batch.tokens.reshape(-1).numpy()]
        np.testing.assert_allclose(res.token_cosines[d].reshape(-1).numpy(), own, atol=1e-5)
        ranks = (sims > own[:, None]).sum(-1)
        np.testing.assert_array_equal(res.token_ranks[d].reshape(-1).numpy(), ranks)
    chunked = embedding_lens(batch.cache, batch.tokens, top_k=5, mask=mask, vocab_chunk=4000)
    assert torch.equal(chunked.top_ids, res.top_ids) and torch.equal(chunked.token_ranks, res.token_ranks)
    assert res.to_dict()["kind"] == EMBEDDING_LENS


# ------------------------------------------------------------------------------------------
# Figures


def test_plotly_text_escapes_tokens():
    assert plotly_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert plotly_text("$x$") == "&#36;x&#36;"
    assert plotly_text("a\nb") == "a\\nb"


def test_figures_build_and_escape(decoder):
    model, batch, logits = decoder
    res = logit_lens(batch.cache, targets=TARGETS, top_k=5, attention_mask=batch.attention_mask)
    toks = [model.tokenizer.decode([t]) for t in batch.tokens[0].tolist()]
    toks[1] = "<b>bold</b>"
    grid = lens_grid_figure(res, toks, model.tokenizer)
    assert isinstance(grid, go.Figure)
    heat = grid.data[0]
    n_real = int(batch.attention_mask[0].sum())
    assert len(heat.z) == len(res.labels) and len(heat.z[0]) == n_real
    torch.testing.assert_close(torch.tensor(heat.z), res.top_probs[:, 0, :n_real, 0].float(), atol=1e-6, rtol=0)
    assert "&lt;b&gt;bold&lt;/b&gt;" in grid.layout.xaxis.ticktext[1]
    traj = target_trajectory_figure(res, TARGETS)
    assert len(traj.data) == 2 * len(TARGETS)
    assert list(traj.data[0].customdata) == res.target_ranks[:, 0, n_real - 1, 0].tolist()
    assert isinstance(kl_entropy_figure(res), go.Figure)
    view = target_topk_view(res, [toks, toks])
    assert view.component == "TopkTokens"
    # TopkTokens inserts tokens as HTML: they are defused (inert, same text), see figures.views
    from tlprobe.figures.views import defuse_html

    assert defuse_html("<b>bold</b>") in view.props["tokens"][0] and "<b>bold</b>" not in view.props["tokens"][0]
    with pytest.raises(TlprobeError, match="no targets"):
        target_trajectory_figure(logit_lens(batch.cache), [])


def test_embedding_figures_are_labelled(minilm):
    model, batch = minilm
    res = embedding_lens(batch.cache, batch.tokens)
    toks = [model.tokenizer.decode([t]) for t in batch.tokens[0].tolist()]
    fig = lens_grid_figure(res, toks, model.tokenizer)
    assert "token identity, not prediction" in fig.layout.title.text
    assert "token identity, not prediction" in recovery_figure(res.layer_summary()).layout.title.text


# ------------------------------------------------------------------------------------------
# Recipe


def test_recipe_minilm_embedding_lens(tmp_path):
    from recipes import logit_lens as recipe

    sentences = tmp_path / "s.txt"
    sentences.write_text("She gave her the book.\nHe saw her there.\n", encoding="utf-8")
    paths = recipe.run(
        model="minilm", sentences=str(sentences), out=str(tmp_path / "out"), device="cpu", progress=False, quiet=True
    )
    results = json.loads(paths["results"].read_text(encoding="utf-8"))
    assert results["lens"] == "embedding"
    assert "random weights" in results["mlm_lens_refusal"]
    assert results["result"]["kind"] == EMBEDDING_LENS
    assert results["recovery"]["layers"][0]["top1_recovery"] == 1.0
    page = paths["report"].read_text(encoding="utf-8")
    assert page.count("token identity, not prediction") >= 5
    assert "<h1>Lens: all-MiniLM-L6-v2, embedding lens (token identity, not prediction)</h1>" in page


def test_recipe_decoder_logit_lens_is_reproducible(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from recipes import logit_lens as recipe

    tok = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(tok), n_positions=64))
    hf.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    outs = [
        recipe.run(
            model=str(tmp_path / "m"),
            prompt="She gave her the book",
            targets=[" her"],
            top_k=3,
            out=str(tmp_path / f"o{i}"),
            device="cpu",
            progress=False,
            quiet=True,
        )
        for i in range(2)
    ]
    a, b = (p["results"].read_bytes() for p in outs)
    assert a == b
    results = json.loads(a)
    assert results["lens"] == "logit" and results["result"]["final_max_abs_error"] < 1e-5
    assert results["result"]["kind"] == LOGIT_LENS
    page = outs[0]["report"].read_text(encoding="utf-8")
    assert "TopkTokens" in page and "token identity" not in page
