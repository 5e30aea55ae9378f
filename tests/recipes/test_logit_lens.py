"""logit-lens (L15-L17): the same numbers as tlprobe 0.1.0, the embedding lens on MiniLM, the logit
lens on a decoder, the command line, and the findings (each criterion on synthetic results built to
hold, to differ and to be undecidable)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import assert_same_numbers, fixture, requires_bridge
from tlprobe.access.unembed import HeadCheck, TokenStrings
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
    assert page.count("token identity, not prediction") == 1  # the caveat is said once, in the findings
    assert page.count("token identity") == 1
    assert "<h1>Lens: all-MiniLM-L6-v2, embedding lens</h1>" in page
    assert "Details: refusing the MLM lens on sentence-transformers/all-MiniLM-L6-v2" in page


def test_minilm_results_json_has_each_finding(recipe_output):
    run = recipe_output("logit-lens")
    saved = json.loads(run.paths["results"].read_text())["findings"]
    claims = [f["claim"] for f in saved]
    assert [c.split(":")[0] for c in claims] == [
        "this lens reads token identity, not prediction",
        "the input token fades with depth",
        "an encoder's masked-token prediction forms layer by layer (MLM lens)",
    ]
    assert [f["verdict"] for f in saved] == [f.verdict for f in run.findings]
    assert saved[0]["numbers"]["n_positions"] == run.facts["recovery"]["n_tokens"]  # on the corpus, not the prompt
    assert saved[2]["verdict"] == "inconclusive" and saved[2]["numbers"] == {"mlm_head": "missing"}
    page = run.paths["report"].read_text(encoding="utf-8")
    assert page.index("class='findings'") < page.index("Which lens, and why</h2>")


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
    claims = [f["claim"] for f in json.loads(a)["findings"]]
    assert claims == [
        "the first depths give input-like tokens: the top-1 at the embeddings is the input token",
        "the final prediction emerges only in the last layers",
        "KL to the final distribution falls with depth",
    ]


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


# --------------------------------------------------------------------------------------------
# Findings on synthetic results: each criterion built to hold, to differ and to be undecidable.


def _vocab(n: int = 8) -> TokenStrings:
    return TokenStrings(ids=torch.arange(n), strings=tuple(f"t{i}" for i in range(n)))


def _axes(depth: int) -> dict:
    return {"depth": ("embed", *(f"block {i}" for i in range(depth - 1)))}


def _lens(top1: torch.Tensor, kl: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> LensResult:
    """A logit-lens result with the given ``[depth, pos]`` top-1 ids and KL (one prompt, all positions real)."""
    d, p = top1.shape
    kl = torch.zeros(d, p) if kl is None else kl
    zeros3, none4 = torch.zeros(d, 1, p), torch.zeros(d, 1, p, 0)
    return LensResult(
        kind=LOGIT_LENS,
        top_ids=top1.reshape(d, 1, p, 1).long(),
        top_probs=torch.ones(d, 1, p, 1),
        entropy=zeros3,
        kl_to_final=kl.reshape(d, 1, p).float(),
        target_ids=torch.zeros(0, dtype=torch.long),
        target_names=(),
        target_ranks=none4.long(),
        target_probs=none4,
        mean_entropy=torch.zeros(d),
        mean_kl_to_final=kl.float().mean(1),
        target_mean_probs=torch.zeros(d, 0),
        target_median_ranks=torch.zeros(d, 0, dtype=torch.long),
        mask=torch.ones(1, p, dtype=torch.bool),
        token_ids=None if tokens is None else tokens.reshape(1, p).long(),
        vocab=_vocab(),
        compatibility_mode=False,
        readout="logits",
        final_max_abs_error=None,
        model_name="synthetic",
        axes=_axes(d),
    )


def _embedding(ranks: torch.Tensor) -> EmbeddingLensResult:
    """An embedding-lens result with the given ``[depth, pos]`` ranks of the input token's row."""
    d, p = ranks.shape
    r = ranks.reshape(d, 1, p).long()
    return EmbeddingLensResult(
        kind=EMBEDDING_LENS,
        top_ids=torch.zeros(d, 1, p, 1, dtype=torch.long),
        top_cosines=torch.ones(d, 1, p, 1),
        token_ranks=r,
        token_cosines=torch.ones(d, 1, p),
        top1_recovery=(r < 1).float().mean((1, 2)),
        top5_recovery=(r < 5).float().mean((1, 2)),
        mean_cosine_with_input_token=torch.ones(d),
        token_ids=torch.zeros(1, p, dtype=torch.long),
        mask=torch.ones(1, p, dtype=torch.bool),
        vocab=_vocab(),
        model_name="synthetic",
        axes=_axes(d),
    )


def _by_claim(found, start: str):
    (f,) = [f for f in found if f.claim.startswith(start)]
    return f


def _emerging_from(first: list[int], depth: int = 9) -> torch.Tensor:
    """``[depth, pos]`` top-1 ids: position ``i`` predicts the final token 1 from depth ``first[i]`` on."""
    d = torch.arange(depth).unsqueeze(1)
    return torch.where(d >= torch.tensor(first).unsqueeze(0), 1, 2)


@pytest.mark.parametrize(
    "first, verdict",
    [
        ([6] * 20, "holds"),  # relative depth 6/8 = 0.75 at every position
        ([1] * 20, "differs"),  # 1/8: settled early
        ([2] * 20 + [7] * 20, "inconclusive"),  # exactly half agree from depth 2: resamples swing 0.25 / 0.875
        ([6] * 4, "inconclusive"),  # too few positions
    ],
)
def test_emergence_criterion(first, verdict):
    f = _by_claim(logit_lens.findings(_lens(_emerging_from(first))), "the final prediction emerges")
    assert f.verdict == verdict, f.why
    if verdict == "holds":
        assert f.numbers["from_depth"] == "block 5" and f.numbers["relative"] == 0.75
        assert f.numbers["low"] == f.numbers["high"] == 0.75


def _kl(signs: list[float], depth: int = 6) -> torch.Tensor:
    """``[depth, pos]``: KL falling to 0 (sign +1) or rising before the last depth (-1), plus a small tilt."""
    d = torch.arange(depth, dtype=torch.float).unsqueeze(1)
    falling = (depth - 1 - d) + 0.01 * torch.arange(len(signs))
    kl = torch.where(torch.tensor(signs) > 0, falling, d + 1)
    kl[-1] = 0
    return kl


@pytest.mark.parametrize(
    "signs, depth, verdict",
    [
        ([1.0] * 12, 6, "holds"),
        ([-1.0] * 12, 6, "differs"),
        ([1.0, -1.0] * 12, 6, "inconclusive"),  # the mean is flat: resampled trends go either way
        ([1.0] * 12, 3, "inconclusive"),  # two depths before the last: no trend
        ([1.0] * 4, 6, "inconclusive"),  # too few positions
    ],
)
def test_kl_criterion(signs, depth, verdict):
    kl = _kl(signs, depth)
    f = _by_claim(logit_lens.findings(_lens(torch.ones(depth, len(signs)), kl)), "KL to the final")
    assert f.verdict == verdict, f.why
    if verdict != "inconclusive":
        assert f.numbers["rho"] == (-1.0 if verdict == "holds" else 1.0)


@pytest.mark.parametrize("n_echo, n, verdict", [(20, 20, "holds"), (0, 20, "differs"), (20, 40, "inconclusive")])
def test_input_like_tokens_criterion(n_echo, n, verdict):
    tokens = torch.arange(n) % 8
    top1 = torch.full((4, n), 7)
    top1[0, :n_echo] = tokens[:n_echo]
    top1[0, n_echo:] = (tokens[n_echo:] + 1) % 8
    f = _by_claim(logit_lens.findings(_lens(top1, tokens=tokens)), "the first depths give input-like tokens")
    assert f.verdict == verdict, f.why
    assert f.numbers["first_depth"] == n_echo / n


def test_no_input_tokens_no_input_token_finding():
    found = logit_lens.findings(_lens(_emerging_from([6] * 20)))
    assert [f.claim.split(" ")[1] for f in found] == ["final", "to"]


@pytest.mark.parametrize(
    "n_hit, n, verdict",
    [(40, 40, "holds"), (0, 40, "differs"), (36, 40, "inconclusive"), (4, 4, "inconclusive")],
)
def test_token_identity_criterion(n_hit, n, verdict):
    ranks = torch.zeros(5, n, dtype=torch.long)
    ranks[0, n_hit:] = 3
    f = _by_claim(logit_lens.findings(_embedding(ranks)), "this lens reads token identity")
    assert f.verdict == verdict, f.why
    assert f.numbers["by_depth"][0] == n_hit / n and f.numbers["n_positions"] == n


@pytest.mark.parametrize(
    "n_lost, n, verdict",
    [(20, 40, "holds"), (0, 40, "differs"), (4, 40, "inconclusive"), (2, 4, "inconclusive")],
)
def test_fade_criterion(n_lost, n, verdict):
    ranks = torch.zeros(5, n, dtype=torch.long)
    ranks[-1, :n_lost] = 2
    f = _by_claim(logit_lens.findings(_embedding(ranks)), "the input token fades")
    assert f.verdict == verdict, f.why
    if n >= logit_lens.MIN_POSITIONS:
        assert f.numbers["drop"] == n_lost / n


def test_embedding_findings_prefer_the_corpus_and_name_a_missing_head():
    prompt, corpus = _embedding(torch.zeros(5, 4, dtype=torch.long)), _embedding(torch.zeros(5, 40, dtype=torch.long))
    missing = HeadCheck(status="missing", reason="no weights")
    found = logit_lens.findings(prompt, recovery=corpus, mlm_head=missing)
    assert [f.verdict for f in found] == ["holds", "differs", "inconclusive"]
    assert found[0].numbers["n_positions"] == 40 and found[2].numbers == {"mlm_head": "missing"}
    alone = logit_lens.findings(prompt, mlm_head=HeadCheck(status="trained", reason="ok"))
    assert [f.verdict for f in alone] == ["inconclusive", "inconclusive"]  # 4 positions only
    assert "only 4 positions" in alone[0].why


def test_findings_are_seeded():
    top1 = _emerging_from([2] * 20 + [7] * 20)
    a, b = (logit_lens.findings(_lens(top1), seed=3) for _ in range(2))
    assert [f.to_dict() for f in a] == [f.to_dict() for f in b]
