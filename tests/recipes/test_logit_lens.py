"""logit-lens (L15-L17): the same numbers as tlprobe 0.1.0, the embedding lens on MiniLM, the logit
lens on a decoder, and the command line."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import assert_same_numbers, fixture, requires_bridge
from tlprobe.analyses.lens import EMBEDDING_LENS, LOGIT_LENS, EmbeddingLensResult, LensResult
from tlprobe.errors import TlprobeError
from tlprobe.recipes import logit_lens
from tlprobe.recipes.common import parse_options
from tlprobe.testing import tiny_model, tiny_tokenizer

COLUMNS = ("top1_recovery", "top5_recovery", "mean_cosine_with_input_token")


def test_same_numbers_as_0_1_0(recipe_output):
    new = json.loads(recipe_output("logit-lens").paths["results"].read_text())
    depths = range(len(fixture("logit-lens")["layer_summary"]))
    pairs = {
        "params": "params",
        "model": "facts/model",
        "token_ids": "facts/token_ids",
        "result": "results/lens",
        "recovery": "facts/recovery",
        **{f"layer_summary/{d}/{c}": f"results/lens/{c}/{d}" for d in depths for c in COLUMNS},
        **{f"recovery/layers/{d}/{c}": f"results/recovery/{c}/{d}" for d in depths for c in COLUMNS},
    }
    why = "the row's index: rows are now labelled by the depth label (results/.../axes/depth)"
    ignored = {
        **{f"layer_summary/{d}/depth": why for d in depths},
        **{f"recovery/layers/{d}/depth": why for d in depths},
    }
    assert_same_numbers("logit-lens", new, pairs, ignored)


def test_minilm_gets_the_embedding_lens_labelled_as_such(recipe_output):
    run = recipe_output("logit-lens")
    assert run.facts["lens"] == "embedding" and "random weights" in run.facts["mlm_lens_refusal"]
    lens, recovery = run.results["lens"], run.results["recovery"]
    assert isinstance(lens, EmbeddingLensResult) and lens.kind == EMBEDDING_LENS
    assert isinstance(recovery, EmbeddingLensResult) and float(recovery.top1_recovery[0]) == 1.0
    assert run.facts["recovery"] == {"n_sentences": 48, "n_tokens": int(recovery.mask.sum())}
    assert run.results["mlm_head"].status == "missing"
    page = run.paths["report"].read_text(encoding="utf-8")
    assert page.count("token identity, not prediction") >= 5
    assert "<h1>Lens: all-MiniLM-L6-v2, embedding lens (token identity, not prediction)</h1>" in page
    assert "MLM lens refused. refusing the MLM lens on sentence-transformers/all-MiniLM-L6-v2" in page


def test_sentences_none_skips_the_recovery_corpus(tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("She gave her the book.\nHe saw her there.\n", encoding="utf-8")
    two = logit_lens.run(sentences=str(sentences), out=None, device="cpu", progress=False, quiet=True)
    assert two.facts["recovery"]["n_sentences"] == 2 and float(two.results["recovery"].top1_recovery[0]) == 1.0
    none = logit_lens.run(sentences="none", out=None, device="cpu", progress=False, quiet=True)
    assert "recovery" not in none.results and "recovery" not in none.facts


@requires_bridge  # a saved folder boots as a bridge; TL 2.x's HookedTransformer loads official hub names only
def test_decoder_logit_lens_is_reproducible(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel  # imported here: only this test builds a checkpoint

    tok = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(tok), n_positions=64))
    hf.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    options = logit_lens.Options(
        model=str(tmp_path / "m"), prompt="She gave her the book", targets=(" her",), top_k=3, device="cpu"
    )
    runs = [logit_lens.run(options, out=str(tmp_path / f"o{i}"), progress=False, quiet=True) for i in range(2)]
    a, b = (r.paths["results"].read_bytes() for r in runs)
    assert a == b
    run = runs[0]
    res = run.results["lens"]
    assert run.facts["lens"] == "logit" and "mlm_head" not in run.results
    assert isinstance(res, LensResult) and res.kind == LOGIT_LENS and res.final_max_abs_error < 1e-5
    assert res.target_names == (" her",) and run.facts["targets"] == [" her"]
    page = run.paths["report"].read_text(encoding="utf-8")
    assert "TopkTokens" in page and "token identity" not in page
    assert "&#x27; her&#x27; median rank" in page  # the per-depth table names the target


def test_command_line_keeps_its_flags():
    parse = lambda *argv: parse_options(logit_lens.Options, list(argv), "logit-lens", "", "out")  # noqa: E731
    default = parse()
    assert (default.prompt, default.targets, default.top_k, default.sentences) == (None, None, 10, None)
    given = parse("--targets", " Paris", "x", "--top-k", "3", "--sentences", "none", "--prompt", "a b")
    assert list(given.targets) == [" Paris", "x"] and given.top_k == 3 and given.sentences == "none"
    assert list(parse("--targets").targets) == []  # no targets at all (not the defaults)


def test_one_target_string_is_one_target():
    # Before, run(targets=" her") followed the four characters " ", "h", "e", "r".
    model = tiny_model("gpt2")
    kw = {"model": model, "prompt": "She gave her the book", "top_k": 3, "out": None, "progress": False, "quiet": True}
    one, listed = logit_lens.run(targets=" her", **kw), logit_lens.run(targets=[" her"], **kw)
    assert one.facts["targets"] == listed.facts["targets"] == [" her"] and one.params["targets"] == [" her"]
    assert one.results["lens"].target_names == (" her",)
    assert torch.equal(one.results["lens"].target_probs, listed.results["lens"].target_probs)


@pytest.mark.parametrize("top_k", [0, -3, 2.5, "x", None])
def test_bad_top_k_is_refused_before_the_model_loads(top_k):
    # a float is refused by the options themselves (--top-k must be an integer), the rest by the recipe
    with pytest.raises(
        TlprobeError, match=r"(top_k must be an integer >= 1 \(--top-k\)|--top-k must be an integer), got"
    ):
        logit_lens.run(top_k=top_k, model="no-such-model-is-loaded", out=None, quiet=True)
