"""Lenses: logit lens (decoders), MLM lens and embedding lens (encoders), and their results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from tests.helpers import requires_bridge
from tlprobe.access.hooks import hook_names, resid_hook_names, resid_stack
from tlprobe.access.models import bridge_class, load_model, minilm_dir
from tlprobe.access.run import model_logits, run_batch
from tlprobe.access.unembed import (
    HeadCheck,
    TokenStrings,
    apply_final_norm,
    content_mask,
    decode_tokens,
    mlm_head_check,
    special_token_ids,
    target_token_ids,
    token_strings,
)
from tlprobe.access.worlds import model_kind
from tlprobe.analyses.lens import (
    EMBEDDING_LENS,
    LOGIT_LENS,
    MLM_LENS,
    EmbeddingLensResult,
    LensResult,
    TopK,
    choose_lens,
    embedding_lens,
    lens_logits,
    logit_lens,
    mlm_lens,
)
from tlprobe.errors import TlprobeError, UnsupportedModelError
from tlprobe.result import load
from tlprobe.testing import tiny_model, tiny_tokenizer

FAMILIES = ("gpt2", "neox", "llama")
PROMPTS = ["She gave her the book because she liked it", "The quick brown fox"]
TARGETS = [" her", " the"]


def _run(model):
    n = model.cfg.n_layers
    # our lens reads resid_hook_names; TransformerLens' accumulated_resid also wants every resid_pre
    names = sorted(set(resid_hook_names(model)) | set(hook_names(["resid_pre"], range(n), model=model)))
    batch = run_batch(model, PROMPTS, names=names)
    return batch, model_logits(model, batch.tokens, batch.attention_mask)


@pytest.fixture(scope="module", params=FAMILIES)
def decoder(request):
    model = tiny_model(request.param, n_layers=3)
    batch, logits = _run(model)
    return model, batch, logits


@pytest.fixture(scope="module")
def minilm():
    model = load_model("minilm", device="cpu")
    text = ["The Eiffel Tower is in the city of Paris.", "She gave her the book because she liked it."]
    batch = run_batch(model, text, names=resid_hook_names(model))
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
    res = logit_lens(batch.cache, TARGETS, logits=logits, attention_mask=batch.attention_mask)
    assert res.kind == LOGIT_LENS and res.final_max_abs_error < 1e-5
    assert res.axes["depth"] == ("embed", *(f"block {i}" for i in range(model.cfg.n_layers)))
    # top-1 of the last depth is the model's own argmax
    assert torch.equal(res.top_ids[-1, ..., 0], logits.argmax(-1))


def test_agrees_with_transformer_lens(decoder):
    # TransformerLens' own logit-lens tool exists from 4.0; the 2.x/3.x legs check the same numbers
    # against the independent formulas below and against the bridge (test_worlds.py)
    tool = pytest.importorskip("transformer_lens.tools.analysis.logit_lens", reason="TransformerLens < 4 has no tool")
    tl_logit_lens = tool.logit_lens

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
    many = logit_lens(batch.cache, targets=TARGETS, top_k=7, logits=logits, chunk_size=37)
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
            lens_logits(batch.cache, rt, chunk_size=50), lens_logits(batch.cache, rt), atol=1e-5, rtol=0
        )


def test_entropy_kl_and_ranks_against_independent_formulas(decoder):
    _, batch, _ = decoder
    res = logit_lens(batch.cache, targets=TARGETS, top_k=3, chunk_size=100)
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
def test_compatibility_mode_handled_and_recorded(family, tmp_path):
    raw = tiny_model(family, n_layers=2)
    batch, _ = _run(raw)
    if model_kind(raw) == "bridge":
        compat = tiny_model(family, n_layers=2)
        compat.enable_compatibility_mode()
    else:  # HookedTransformer.from_pretrained's default processing
        compat = tiny_model(family, n_layers=2, kind="hooked", processed=True)
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
    assert r_c.to_dict()["compatibility_mode"] is True and load(r_c.save(tmp_path / "r.json")) == r_c


def test_final_norm_uses_fresh_statistics():
    model = tiny_model("gpt2", n_layers=2)
    _, cache = model.run_with_cache("She gave her the book")
    stack = resid_stack(cache)
    x = stack.detach()
    ln = model.ln_final
    expected = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + model.cfg.eps).sqrt()
    weight, bias = (ln.weight, ln.bias) if hasattr(ln, "weight") else (ln.w, ln.b)  # bridge / HookedTransformer
    expected = expected * weight + bias
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
    with pytest.raises(TlprobeError, match="chunk_size must be >= 1, got 0; pass a positive integer or None"):
        logit_lens(batch.cache, chunk_size=0)
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


@requires_bridge  # a BERT with a trained head is booted from a folder; HookedEncoder loads hub names only
def test_head_check_on_saved_and_in_memory_models(tmp_path):
    hf, tok = _tiny_bert_hf(head=True)
    hf.save_pretrained(tmp_path / "with_head")
    tok.save_pretrained(tmp_path / "with_head")
    bare, _ = _tiny_bert_hf(head=False)
    bare.save_pretrained(tmp_path / "no_head")
    tok.save_pretrained(tmp_path / "no_head")
    boot = bridge_class().boot_transformers
    assert mlm_head_check(boot(str(tmp_path / "with_head"), device="cpu")).status == "trained"
    assert mlm_head_check(boot(str(tmp_path / "no_head"), device="cpu")).status == "missing"
    mem = boot("tiny-bert", hf_model=_tiny_bert_hf(seed=1)[0], tokenizer=tok, device="cpu")
    assert mlm_head_check(mem).status == "unknown"


@requires_bridge  # a BERT with a trained head is booted from a folder; HookedEncoder loads hub names only
def test_mlm_lens_with_trained_head(tmp_path):
    hf, tok = _tiny_bert_hf(head=True)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = bridge_class().boot_transformers(str(tmp_path), device="cpu")
    assert choose_lens(model)[0] == "mlm"
    batch = run_batch(model, ["the cat sat on the [MASK] .", "paris is a city"], names=resid_hook_names(model))
    logits = model_logits(model, batch.tokens, batch.attention_mask)
    res = mlm_lens(batch.cache, targets=["mat"], logits=logits, attention_mask=batch.attention_mask)
    assert res.kind == MLM_LENS and res.final_max_abs_error < 1e-5
    # independent: Hugging Face's own head on Hugging Face's hidden states, every layer
    ref = _tiny_bert_hf(head=True)[0]
    with torch.no_grad():
        hs = ref(batch.tokens, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states
        hf_logits = torch.stack([ref.cls(h) for h in hs])
    torch.testing.assert_close(lens_logits(batch.cache, lens="mlm"), hf_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lens_logits(batch.cache, lens="mlm", chunk_size=999), hf_logits, atol=1e-4, rtol=1e-4)


@requires_bridge  # a BERT with a trained head is booted from a folder; HookedEncoder loads hub names only
def test_mlm_lens_unverifiable_head_needs_trust():
    hf, tok = _tiny_bert_hf(head=True)
    model = bridge_class().boot_transformers("tiny-bert", hf_model=hf, tokenizer=tok, device="cpu")
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
    chunked = embedding_lens(batch.cache, batch.tokens, top_k=5, mask=mask, chunk_size=4000)
    assert torch.equal(chunked.top_ids, res.top_ids) and torch.equal(chunked.token_ranks, res.token_ranks)
    assert res.to_dict()["kind"] == EMBEDDING_LENS
    # the recovery fields are what recovery(k) gives; the table shows them per depth label
    assert torch.equal(res.top1_recovery, res.recovery(1)) and torch.equal(res.top5_recovery, res.recovery(5))
    row = res.rows()[0]
    assert list(row) == ["depth", "top1_recovery", "top5_recovery", "mean_cosine_with_input_token"]
    assert row["depth"] == "embed" and row["top1_recovery"] == 1.0


# ------------------------------------------------------------------------------------------
# Results: labels, tables, selection, round trips


def test_lens_result_round_trips_and_selects_by_depth_label(decoder, tmp_path):
    model, batch, logits = decoder
    res = logit_lens(
        batch.cache, TARGETS, top_k=4, logits=logits, attention_mask=batch.attention_mask, tokens=batch.tokens
    )
    assert isinstance(res, LensResult) and load(res.save(tmp_path / "lens.json")) == res
    top = res.top(2)
    assert isinstance(top, TopK) and top.axes == res.axes and load(top.save(tmp_path / "top.json")) == top
    last = res[res.axes["depth"][-1]]
    assert last.axes == {} and tuple(last.top_ids.shape) == tuple(res.top_ids.shape[1:])
    assert torch.equal(last.kl_to_final, res.kl_to_final[-1]) and float(last.mean_kl_to_final) == 0.0
    assert torch.equal(res[1:].top_ids, res.top_ids[1:]) and res[1:].axes["depth"] == res.axes["depth"][1:]
    # the strings the figures show travel with the result
    assert res.target_names == tuple(TARGETS)
    assert res.vocab.decode(res.token_ids[0]) == decode_tokens(model, batch.tokens[0].tolist())
    assert res.vocab.decode(res.top_ids[0, 0, 0]) == decode_tokens(model, res.top_ids[0, 0, 0].tolist())
    rows = top.rows()
    assert len(rows) == top.ids.numel() and rows[1]["rank"] == 1
    assert rows[0] == {
        "depth": "embed",
        "batch": 0,
        "pos": 0,
        "rank": 0,
        "id": int(top.ids[0, 0, 0, 0]),
        "token": res.vocab.decode(top.ids[0, 0, 0, 0]),
        "value": float(top.values[0, 0, 0, 0]),
    }


def test_rows_are_means_and_medians_over_real_positions(decoder):
    _, batch, _ = decoder
    mask = batch.attention_mask.bool()
    assert not bool(mask.all())  # the prompts have different lengths: padding must not count
    res = logit_lens(batch.cache, TARGETS, top_k=3, attention_mask=batch.attention_mask)
    rows = res.rows()
    assert [r["depth"] for r in rows] == list(res.axes["depth"])
    sel = mask.numpy()
    for d, row in enumerate(rows):
        assert row["mean_entropy"] == pytest.approx(float(res.entropy[d].numpy()[sel].mean()), rel=1e-5)
        assert row["mean_kl_to_final"] == pytest.approx(
            float(res.kl_to_final[d].numpy()[sel].mean()), rel=1e-5, abs=1e-7
        )
        for t, name in enumerate(TARGETS):
            probs = res.target_probs[d, ..., t].numpy()[sel]
            ranks = np.sort(res.target_ranks[d, ..., t].numpy()[sel])
            assert row[f"{name!r} mean prob"] == pytest.approx(float(probs.mean()), rel=1e-5)
            assert row[f"{name!r} median rank"] == int(ranks[(len(ranks) - 1) // 2])  # the lower median
    assert set(rows[0]) == {"depth", "mean_entropy", "mean_kl_to_final"} | {
        f"{n!r} {what}" for n in TARGETS for what in ("mean prob", "median rank")
    }


def test_target_ids_are_named_by_their_token(decoder):
    model, batch, _ = decoder
    tid = target_token_ids(model, [" her"])[0]
    res = logit_lens(batch.cache, [tid, " the"], top_k=2)
    assert res.target_names == (" her", " the") and res.target_ids.tolist() == target_token_ids(model, [" her", " the"])


def test_a_lone_target_string_is_one_target(decoder):
    # Before, targets=" her" ranked the four characters " ", "h", "e", "r".
    model, batch, _ = decoder
    one = logit_lens(batch.cache, targets=" her", top_k=2)
    listed = logit_lens(batch.cache, targets=[" her"], top_k=2)
    assert one.target_names == listed.target_names == (" her",)
    assert torch.equal(one.target_ids, listed.target_ids) and torch.equal(one.target_ranks, listed.target_ranks)
    tid = int(listed.target_ids[0])
    for lone in (tid, np.int64(tid), torch.tensor(tid)):
        res = logit_lens(batch.cache, targets=lone, top_k=2)
        assert res.target_names == (" her",) and torch.equal(res.target_probs, listed.target_probs)
    ids = target_token_ids(model, np.array([tid, tid]))
    assert ids == [tid, tid] and all(type(i) is int for i in ids)
    with pytest.raises(TlprobeError, match="targets must be a token string, a token id or a list of them, got set"):
        logit_lens(batch.cache, targets={" her", " the"})
    with pytest.raises(TlprobeError, match="target 2.5 must be a token string or id"):
        logit_lens(batch.cache, targets=[2.5])
    assert logit_lens(batch.cache, top_k=np.int64(2), chunk_size=np.int32(100)).top_ids.shape[-1] == 2


def test_unknown_mlm_target_is_refused(minilm):
    model, _ = minilm
    with pytest.raises(TlprobeError, match=r"target '猫' is unknown to the tokenizer .*tokenises to \[UNK\]"):
        target_token_ids(model, "猫")
    assert target_token_ids(model, "paris") == [model.tokenizer.convert_tokens_to_ids("paris")]


def test_depth_labels_can_be_given_and_must_fit(decoder):
    model, batch, _ = decoder
    labels = tuple(f"resid {i}" for i in range(model.cfg.n_layers + 1))
    res = logit_lens(batch.cache, top_k=2, axes={"depth": labels})
    assert res.axes == {"depth": labels} and res.rows()[0]["depth"] == "resid 0"
    with pytest.raises(TlprobeError, match="one label per leading index"):
        logit_lens(batch.cache, top_k=2, axes={"depth": labels[:-1]})
    with pytest.raises(TlprobeError, match="tokens has shape"):
        logit_lens(batch.cache, top_k=2, tokens=batch.tokens[:, :-1])
    with pytest.raises(TlprobeError, match="attention_mask has shape"):
        logit_lens(batch.cache, top_k=2, attention_mask=batch.attention_mask[:1])


def test_embedding_lens_result_round_trips(minilm, tmp_path):
    model, batch = minilm
    res = embedding_lens(
        batch.cache, batch.tokens, top_k=3, mask=content_mask(model, batch.tokens, batch.attention_mask)
    )
    assert isinstance(res, EmbeddingLensResult) and load(res.save(tmp_path / "emb.json")) == res
    sub = res["block 0"]
    assert float(sub.top1_recovery) == float(res.top1_recovery[1]) and float(sub.recovery(1)) == float(
        res.recovery(1)[1]
    )
    with pytest.raises(TlprobeError, match="mask has shape"):
        embedding_lens(batch.cache, batch.tokens, mask=batch.attention_mask[:, :-1])


def test_content_mask_drops_padding_and_special_tokens(minilm):
    model, batch = minilm
    mask = content_mask(model, batch.tokens, batch.attention_mask)
    special = set(special_token_ids(model))
    for b in range(batch.tokens.shape[0]):
        for p, t in enumerate(batch.tokens[b].tolist()):
            assert bool(mask[b, p]) == (bool(batch.attention_mask[b, p]) and t not in special)


def test_token_strings_decode_and_round_trip(tmp_path):
    model = tiny_model("gpt2", n_layers=1)
    ids = model.to_tokens("She gave her the book", prepend_bos=False)
    table = token_strings(model, ids, [5, 5, 7])
    assert table.ids.tolist() == sorted(set(ids.flatten().tolist()) | {5, 7})
    assert table.decode(ids) == [decode_tokens(model, ids[0].tolist())]
    assert table.decode(torch.zeros(2, 0, dtype=torch.long)) == [[], []]
    with pytest.raises(TlprobeError, match="not in this table"):
        table.decode([int(table.ids.max()) + 1])
    assert isinstance(table, TokenStrings) and load(table.save(tmp_path / "t.json")) == table


def test_head_check_round_trips(minilm, tmp_path):
    model, _ = minilm
    check = mlm_head_check(model)
    assert isinstance(check, HeadCheck) and load(check.save(tmp_path / "h.json")) == check
    assert check.to_dict()["missing"] == list(check.missing)
