"""L15-L17: read every layer's residual stream through the vocabulary.

Decoders (``--model gpt2`` and the like, on a machine with a model hub) get the logit lens:
each depth goes through the final norm and the unembedding, and we watch the prediction form
(top-1 grid, target ranks and probabilities, KL to the final distribution, entropy).

Encoders get the MLM lens when their masked-LM head was trained (e.g. ``bert-base-uncased``).
The offline default, all-MiniLM-L6-v2, has no MLM head in its checkpoint (TransformerLens fills
it with random weights), so the MLM lens is refused and the report shows the embedding lens:
the cosine of each layer's hidden state with the token embeddings.

The report opens with :func:`findings`: each claim of the lessons checked on this run's results
(criteria fixed in the constants below), including what the embedding lens measures on this model.

Copy this file (``tlprobe cp logit-lens my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from tlprobe.access.hooks import resid_hook_names
from tlprobe.access.run import model_logits, run_batch
from tlprobe.access.unembed import HeadCheck, content_mask, decode_tokens, mlm_head_check
from tlprobe.analyses.lens import (
    LOGIT_LENS,
    MLM_LENS,
    EmbeddingLensResult,
    LensResult,
    choose_lens,
    embedding_lens,
    logit_lens,
    mlm_lens,
)
from tlprobe.analyses.stats import bootstrap_interval, spearman
from tlprobe.checks import as_int
from tlprobe.errors import TlprobeError, UnsupportedModelError
from tlprobe.figures.lens import (
    kl_entropy_figure,
    lens_grid_figure,
    recovery_figure,
    target_topk_view,
    target_trajectory_figure,
)
from tlprobe.findings import Finding, check, interval_verdict
from tlprobe.recipes.common import (
    ModelOptions,
    RecipeResult,
    data_path,
    option,
    prose,
    read_lines,
    resolve,
    script_main,
    setup,
)
from tlprobe.report import Report
from tlprobe.result import Result

NAME = "logit-lens"
DESCRIPTION = "L15-L17: logit lens (decoders), MLM lens or embedding lens (encoders), layer by layer"
DEFAULT_PROMPT = "The Eiffel Tower is in the city of"
DEFAULT_TARGETS = {"logit": (" Paris", " London"), "mlm": ("paris", "london"), "embedding": ()}
#: Short names of the lenses for titles (what the embedding lens measures is a finding, stated once).
LENS_NAMES = {"logit": LOGIT_LENS, "mlm": MLM_LENS, "embedding": "embedding lens"}

# The criteria of the findings: fixed here, stated in each finding's criterion text.
#: A depth "agrees" with the final prediction when its top-1 equals the last depth's on at least
#: this fraction of positions.
AGREE_FRACTION = 0.5
#: "Late": the relative depth (0 = embeddings, 1 = last depth) from which the final top-1 holds must
#: lie above this.
LATE_DEPTH = 0.5
#: "KL falls with depth": Spearman rho of the mean KL to the final distribution against depth (the
#: last depth, 0 by construction, left out) below this.
KL_FALL_RHO = -0.7
#: "Reads the input token": fraction of positions whose top-1 at the first depth is the input token.
IDENTITY_FRACTION = 0.9
#: "Early depths give input-like tokens" (prediction lenses): the same fraction, a weaker bar.
ECHO_FRACTION = 0.5
#: "The input token fades": top-1 recovery at the first depth minus at the last, at least this.
FADE_DROP = 0.1
#: Fewer positions than this cannot decide a claim.
MIN_POSITIONS = 8
#: Fewer depths (before the last) than this cannot show a trend.
MIN_TREND_DEPTHS = 3
#: Bootstrap resamples (over positions) and the interval's coverage.
N_BOOTSTRAP = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Options(ModelOptions):
    prompt: str | None = option(
        None,
        doc=f"the text to read (default: {DEFAULT_PROMPT!r}; encoders with an MLM head get ' [MASK].' appended)",
    )
    targets: tuple[str, ...] | None = option(
        None,
        doc="single tokens to follow across layers (default: ' Paris' ' London' for decoders, "
        "'paris' 'london' for MLM heads; unused by the embedding lens; from Python one string is one target)",
        nargs="*",
    )
    top_k: int = option(10, doc="tokens kept per layer and position")
    sentences: str | None = option(
        None,
        doc="embedding lens only: text file of sentences for the per-layer recovery curve "
        "(default: the bundled 48 sentences; 'none' to skip)",
    )


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(model="gpt2")`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    if o.prompt is not None and not o.prompt.strip():
        raise TlprobeError("--prompt is empty; give a text, or leave it out for the default prompt")
    if isinstance(o.targets, str):  # run(targets=" Paris"): one target, not its characters
        o = replace(o, targets=(o.targets,))
    try:
        as_int(o.top_k, "--top-k", minimum=1)
    except TlprobeError as exc:
        raise TlprobeError(f"top_k must be an integer >= 1 (--top-k), got {o.top_k!r}") from exc
    r = setup(NAME, o)  # seeds torch: fixes any randomly initialised head too
    m, info, text = r.model, r.info, prose(NAME)
    kind, why = choose_lens(m)
    short = info.name.rstrip("/").rsplit("/", 1)[-1]

    # 1. The prompt, run once with the residual stream cached.
    prompt = o.prompt or (DEFAULT_PROMPT + (f" {m.tokenizer.mask_token}." if kind == "mlm" else ""))
    targets = DEFAULT_TARGETS[kind] if o.targets is None else tuple(o.targets)
    batch = run_batch(m, [prompt], names=resid_hook_names(m))
    facts = {"prompt": prompt, "targets": list(targets), "lens": kind, "lens_reason": why}
    facts |= {"tokens": decode_tokens(m, batch.tokens[0].tolist()), "token_ids": batch.tokens[0].tolist()}
    head = mlm_head_check(m) if info.is_encoder else None
    if kind == "embedding" and head is not None:  # said without the caveat: the findings state it once
        saved = f", saved as {', '.join(head.architectures)}" if head.architectures else ""
        why = f"an encoder whose MLM head is {head.status} in its checkpoint{saved}: the MLM lens is refused"
        facts["lens_reason"] = why
    report = Report(text["title"].format(model=short, lens=LENS_NAMES[kind]), subtitle=DESCRIPTION)
    report.heading("Which lens, and why")
    report.text(text["which"].format(model=short, why=why))

    # 2. The lens. Decoders, and encoders with a trained head: predictions. Other encoders: the MLM
    #    lens is refused (its head is random) and the embedding lens is shown instead.
    results: dict[str, Result] = {"mlm_head": head} if head is not None else {}
    if kind in ("logit", "mlm"):
        logits = model_logits(m, batch.tokens, batch.attention_mask)
        lens = logit_lens if kind == "logit" else mlm_lens
        res = lens(
            batch.cache, targets, top_k=o.top_k, logits=logits, attention_mask=batch.attention_mask, tokens=batch.tokens
        )
        results["lens"] = res
        r.lap("forward + lens")
        _prediction_section(report, text, res, kind)
    else:
        try:
            mlm_lens(batch.cache)
            refusal = None  # pragma: no cover - choose_lens said the head is unusable
        except UnsupportedModelError as exc:
            # its closing advice (use the embedding lens) is what this recipe does next
            refusal = str(exc).split(". Use embedding_lens", 1)[0]
        facts["mlm_lens_refusal"] = refusal
        mask = content_mask(m, batch.tokens, batch.attention_mask)
        emb = embedding_lens(batch.cache, batch.tokens, top_k=o.top_k, mask=mask)
        results["lens"] = emb
        r.lap("forward + lens")
        report.text(text["refused"].format(refusal=refusal))
        report.heading(text["embedding_heading"])
        report.text(text["embedding_note"])
        report.figure(lens_grid_figure(emb), caption=text["embedding_grid_caption"])
        report.table(emb.rows(), caption=text["embedding_table"].format(n_tokens=int(emb.mask.sum())))

        # 3. The embedding lens over many sentences: how long does the input token stay recoverable?
        if (o.sentences or "").lower() != "none":
            corpus = read_lines(o.sentences or data_path("her_sentences.txt"))
            many = run_batch(m, corpus, names=resid_hook_names(m), progress=o.progress)
            mask = content_mask(m, many.tokens, many.attention_mask)
            # top_k=1: the recovery fractions come from the ranks of the input tokens, not from the top-k
            rec = embedding_lens(many.cache, many.tokens, top_k=1, mask=mask)
            results["recovery"] = rec
            facts["recovery"] = {"n_sentences": len(corpus), "n_tokens": int(rec.mask.sum())}
            r.lap("recovery corpus")
            report.figure(recovery_figure(rec), caption=text["recovery_caption"].format(**facts["recovery"]))
            report.table(rec.rows(), caption=text["recovery_table"].format(**facts["recovery"]))
    r.lap("figures")
    lens_res = results["lens"]
    assert isinstance(lens_res, (LensResult, EmbeddingLensResult))  # set by one branch above
    recovery = results.get("recovery")
    found = findings(
        lens_res,
        recovery=recovery if isinstance(recovery, EmbeddingLensResult) else None,
        mlm_head=head,
        seed=o.seed,
    )
    return r.finish(report, results=results, facts=facts, findings=found)


def _prediction_section(report: Report, text: dict[str, str], res: LensResult, kind: str) -> None:
    """The logit or MLM lens: grid, target trajectories and top-k view, KL and entropy, table."""
    report.heading(text["prediction_heading"].format(lens=res.kind, what=text[f"prediction_{kind}"]))
    report.text(text["prediction"].format(readout=res.readout, error=res.final_max_abs_error))
    report.figure(lens_grid_figure(res), caption=text["grid_caption"])
    if res.target_names:
        report.figure(target_trajectory_figure(res), caption=text["trajectory_caption"])
        names = ", ".join(repr(t) for t in res.target_names)
        report.view(target_topk_view(res), caption=text["topk_caption"].format(targets=names))
    report.figure(kl_entropy_figure(res), caption=text["kl_caption"])
    report.table(res.rows(), caption=text["prediction_table"].format(lens=res.kind))


# --------------------------------------------------------------------------------------------
# Findings: the lessons' claims checked on this run's results (pure: results in, findings out).


def findings(
    lens: LensResult | EmbeddingLensResult,
    *,
    recovery: EmbeddingLensResult | None = None,
    mlm_head: HeadCheck | None = None,
    seed: int = 0,
) -> list[Finding]:
    """The claims of L15-L17 checked on a run's lens results (no model needed).

    A logit or MLM lens (:class:`LensResult`) is checked for: early depths giving input-like
    tokens, the final top-1 emerging only late, and the KL to the final distribution falling with
    depth. An embedding lens (:class:`EmbeddingLensResult`) is checked for reading the input
    token (on ``recovery``, the many-sentence run, when given, else on ``lens``) and for that
    identity fading with depth; when an encoder's MLM head is missing (``mlm_head``), the MLM
    lens's claim is reported as undecidable. Intervals are bootstrap intervals over positions,
    drawn from a generator seeded with ``seed``.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> from tlprobe.analyses.lens import logit_lens
        >>> model = tiny_model("gpt2")
        >>> logits, cache = model.run_with_cache("She gave her the book")
        >>> [f.verdict for f in findings(logit_lens(cache, top_k=3, tokens=model.to_tokens("She gave her the book")))]
        ['inconclusive', 'inconclusive', 'inconclusive']
    """
    out: list[Finding] = []
    if isinstance(lens, LensResult):
        tag = "L16-L17" if lens.kind == MLM_LENS else "L15"
        if lens.token_ids is not None:
            echo = (lens.top_ids[..., 0] == lens.token_ids.to(lens.top_ids.device)).float()
            out.append(_input_token_finding(lens, echo, lens.mask, seed, tag, prediction=True))
        out.append(_emergence_finding(lens, seed, tag))
        out.append(_kl_finding(lens, seed, tag))
        return out
    data = recovery if recovery is not None else lens
    hits = (data.token_ranks == 0).float()
    out.append(_input_token_finding(data, hits, data.mask, seed, "L16-L17", prediction=False))
    out.append(_fade_finding(data, hits, seed))
    if mlm_head is not None and not mlm_head.trained:
        out.append(
            check(
                "an encoder's masked-token prediction forms layer by layer (MLM lens)",
                "the MLM lens needs the checkpoint's own trained MLM head",
                {"mlm_head": mlm_head.status},
                holds=None,
                why=f"the MLM head is {mlm_head.status} in this checkpoint (its weights would be random), "
                "so the MLM lens was refused and this claim cannot be checked on this model",
                lesson="L16-L17",
            )
        )
    return out


def _columns(x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """``[depth, batch, pos]`` -> ``[depth, n]``: the masked positions as columns (float64)."""
    return x.detach().cpu().double()[:, mask.cpu().bool()].numpy()


def _bootstrap(cols: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], seed: int) -> tuple[float, float]:
    """Percentile interval (:data:`CONFIDENCE`) of ``statistic`` over resampled columns (positions).

    ``statistic`` maps ``[depth, ..., n]`` to ``[...]`` (the resamples on the middle axes).
    """
    return bootstrap_interval(
        [cols], lambda x, axis: statistic(x), seed=seed, n_resamples=N_BOOTSTRAP, confidence=CONFIDENCE
    )


def _interval(lo: float, hi: float) -> str:
    return f"{CONFIDENCE:.0%} interval {lo:.2f}-{hi:.2f}"


def _few(n: int) -> str:
    return f"only {n} positions (at least {MIN_POSITIONS} are needed)"


def _input_token_finding(
    res: LensResult | EmbeddingLensResult,
    hits: torch.Tensor,
    mask: torch.Tensor,
    seed: int,
    tag: str,
    *,
    prediction: bool,
) -> Finding:
    """Fraction of positions whose top-1 at the first depth is the input token (per depth in the numbers)."""
    cols = _columns(hits, mask)
    n = cols.shape[1]
    depths = list(res.axes["depth"])
    per_depth = cols.mean(axis=1).tolist() if n else [float("nan")] * len(depths)
    bar = ECHO_FRACTION if prediction else IDENTITY_FRACTION
    if prediction:
        claim = "the first depths give input-like tokens: the top-1 at the embeddings is the input token"
        what = "the lens's top-1"
    else:
        claim = (
            "this lens reads token identity, not prediction: the nearest W_E row at the embeddings "
            "is the input token itself"
        )
        what = "the nearest W_E row"
    criterion = (
        f"fraction of positions whose {what} at depth {depths[0]!r} is the input token; its "
        f"{CONFIDENCE:.0%} bootstrap interval over positions above {bar:g} (>= {MIN_POSITIONS} positions)"
    )
    numbers: dict = {"first_depth": per_depth[0], "last_depth": per_depth[-1], "by_depth": per_depth, "n_positions": n}
    if n < MIN_POSITIONS:
        return check(claim, criterion, numbers, holds=None, why=_few(n), lesson=tag)
    lo, hi = _bootstrap(cols[:1], lambda x: x[0].mean(axis=-1), seed)
    numbers |= {"low": lo, "high": hi}
    verdict = interval_verdict(lo, hi, above=bar)
    share = f"{per_depth[0]:.0%} of {n} positions at {depths[0]!r} ({_interval(lo, hi)})"
    if verdict is None:
        why = f"{share}: the interval straddles {bar:g}"
    elif verdict:
        why = f"{share}; {per_depth[-1]:.0%} at {depths[-1]!r}"
    else:
        why = f"only {share}: {what} is mostly another token"
    return check(claim, criterion, numbers, holds=verdict, why=why, lesson=tag)


def _emergence_index(agree: np.ndarray) -> np.ndarray:
    """``[depth, ...]`` agreement fractions -> the first depth from which all later ones are >= the bar."""
    ok = agree >= AGREE_FRACTION
    # the last depth agrees with itself; count back the run of agreeing depths that ends there
    tail = np.cumprod(ok[::-1], axis=0)[::-1]
    return ok.shape[0] - tail.sum(axis=0)


def _emergence_finding(res: LensResult, seed: int, tag: str) -> Finding:
    """The first depth from which the final top-1 holds on >= AGREE_FRACTION of positions, relative to depth."""
    top1 = res.top_ids[..., 0]
    cols = _columns((top1 == top1[-1:]).float(), res.mask)
    depths = list(res.axes["depth"])
    d, n = cols.shape
    claim = "the final prediction emerges only in the last layers"
    criterion = (
        f"first depth from which the top-1 equals the last depth's on >= {AGREE_FRACTION:.0%} of positions, "
        f"as a fraction of depth (0 = embeddings, 1 = last); its {CONFIDENCE:.0%} bootstrap interval over "
        f"positions above {LATE_DEPTH:g}"
    )
    if n < MIN_POSITIONS or d < 2:
        numbers = {"n_positions": n, "n_depths": d}
        why = _few(n) if n < MIN_POSITIONS else "a single depth"
        return check(claim, criterion, numbers, holds=None, why=why, lesson=tag)
    first = int(_emergence_index(cols.mean(axis=1)))
    rel = first / (d - 1)
    lo, hi = _bootstrap(cols, lambda x: _emergence_index(x.mean(axis=-1)) / (d - 1), seed)
    numbers = {"from_depth": depths[first], "relative": rel, "low": lo, "high": hi, "n_positions": n}
    verdict = interval_verdict(lo, hi, above=LATE_DEPTH)
    where = f"the final top-1 holds from {depths[first]!r} on (relative depth {rel:.2f}, {_interval(lo, hi)})"
    if verdict is None:
        why = f"{where}: the interval straddles {LATE_DEPTH:g}"
    elif verdict:
        why = f"{where}: it forms in the last layers"
    else:
        why = f"{where}: it is settled early"
    return check(claim, criterion, numbers, holds=verdict, why=why, lesson=tag)


def _spearman_with_depth(means: np.ndarray) -> np.ndarray:
    """Spearman rho of ``[depth, ...]`` against the depth index, per trailing index (nan if constant)."""
    depth = np.arange(means.shape[0], dtype=float).reshape(-1, *[1] * (means.ndim - 1))
    return spearman(depth, means, axis=0)


def _kl_finding(res: LensResult, seed: int, tag: str) -> Finding:
    """Spearman rho of the mean KL to the final distribution against depth (last depth left out)."""
    cols = _columns(res.kl_to_final, res.mask)[:-1]
    d, n = cols.shape
    claim = "KL to the final distribution falls with depth"
    criterion = (
        f"Spearman rho of the mean KL(final || depth) against depth, the last depth (0 by construction) "
        f"left out; its {CONFIDENCE:.0%} bootstrap interval over positions below {KL_FALL_RHO:g} "
        f"(>= {MIN_TREND_DEPTHS} depths, >= {MIN_POSITIONS} positions)"
    )
    if n < MIN_POSITIONS or d < MIN_TREND_DEPTHS:
        numbers = {"n_depths": d, "n_positions": n}
        why = _few(n) if n < MIN_POSITIONS else f"only {d} depths before the last (at least {MIN_TREND_DEPTHS})"
        return check(claim, criterion, numbers, holds=None, why=why, lesson=tag)
    means = cols.mean(axis=1)
    rho = float(_spearman_with_depth(means))
    lo, hi = _bootstrap(cols, lambda x: _spearman_with_depth(x.mean(axis=-1)), seed)
    numbers = {"rho": rho, "low": lo, "high": hi, "kl_first": float(means[0]), "kl_before_last": float(means[-1])}
    # rho below the bar <=> -rho above -bar
    verdict = interval_verdict(-hi, -lo, above=-KL_FALL_RHO)
    trend = f"mean KL {means[0]:.2f} -> {means[-1]:.2f} nats before the last depth, rho {rho:.2f} ({_interval(lo, hi)})"
    if verdict is None:
        why = f"{trend}: the interval straddles {KL_FALL_RHO:g}"
    elif verdict:
        why = f"{trend}: each depth is closer to the final prediction"
    else:
        why = f"{trend}: no steady fall"
    return check(claim, criterion, numbers, holds=verdict, why=why, lesson=tag)


def _fade_finding(res: EmbeddingLensResult, hits: torch.Tensor, seed: int) -> Finding:
    """Top-1 recovery of the input token at the first depth minus at the last, with a bootstrap interval."""
    cols = _columns(hits, res.mask)
    n = cols.shape[1]
    depths = list(res.axes["depth"])
    claim = "the input token fades with depth: deeper layers recover it less often"
    criterion = (
        f"top-1 recovery of the input token at {depths[0]!r} minus at {depths[-1]!r}; its {CONFIDENCE:.0%} "
        f"bootstrap interval over positions above {FADE_DROP:g} (>= {MIN_POSITIONS} positions)"
    )
    if n < MIN_POSITIONS:
        return check(claim, criterion, {"n_positions": n}, holds=None, why=_few(n), lesson="L16-L17")
    first, last = float(cols[0].mean()), float(cols[-1].mean())
    lo, hi = _bootstrap(cols[[0, -1]], lambda x: x[0].mean(axis=-1) - x[1].mean(axis=-1), seed)
    numbers = {"first": first, "last": last, "drop": first - last, "low": lo, "high": hi, "n_positions": n}
    verdict = interval_verdict(lo, hi, above=FADE_DROP)
    moved = f"recovery {first:.2f} at {depths[0]!r} -> {last:.2f} at {depths[-1]!r} ({_interval(lo, hi)} of the drop)"
    if verdict is None:
        why = f"{moved}: the interval straddles {FADE_DROP:g}"
    elif verdict:
        why = f"{moved}: deeper layers carry less of the input token"
    else:
        why = f"{moved}: the input token stays recoverable to the last layer"
    return check(claim, criterion, numbers, holds=verdict, why=why, lesson="L16-L17")


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
