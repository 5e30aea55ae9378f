"""L15-L17: read every layer's residual stream through the vocabulary.

Decoders (``--model gpt2`` and the like, on a machine with a model hub) get the logit lens:
each depth goes through the final norm and the unembedding, and we watch the prediction form
(top-1 grid, target ranks and probabilities, KL to the final distribution, entropy).

Encoders get the MLM lens when their masked-LM head was trained (e.g. ``bert-base-uncased``).
The offline default, all-MiniLM-L6-v2, has no MLM head in its checkpoint (TransformerLens fills
it with random weights), so the MLM lens is refused and the report shows the embedding lens:
the cosine of each layer's hidden state with the token embeddings, a measure of token
identity, not a prediction.

Copy this file (``tlprobe cp logit-lens my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from tlprobe.access.hooks import resid_hook_names
from tlprobe.access.run import model_logits, run_batch
from tlprobe.access.unembed import content_mask, decode_tokens, mlm_head_check
from tlprobe.analyses.lens import (
    EMBEDDING_LENS,
    LOGIT_LENS,
    MLM_LENS,
    LensResult,
    choose_lens,
    embedding_lens,
    logit_lens,
    mlm_lens,
)
from tlprobe.checks import as_int
from tlprobe.errors import TlprobeError, UnsupportedModelError
from tlprobe.figures.lens import (
    kl_entropy_figure,
    lens_grid_figure,
    recovery_figure,
    target_topk_view,
    target_trajectory_figure,
)
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
LENS_NAMES = {"logit": LOGIT_LENS, "mlm": MLM_LENS, "embedding": EMBEDDING_LENS}


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
    report = Report(text["title"].format(model=short, lens=LENS_NAMES[kind]), subtitle=DESCRIPTION)
    report.heading("Which lens, and why")
    report.text(text["which"].format(model=short, why=why))

    # 2. The lens. Decoders, and encoders with a trained head: predictions. Other encoders: the MLM
    #    lens is refused (its head is random) and the embedding lens reads token identity instead.
    results: dict[str, Result] = {"mlm_head": mlm_head_check(m)} if info.is_encoder else {}
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
            refusal = str(exc)
        facts["mlm_lens_refusal"] = refusal
        mask = content_mask(m, batch.tokens, batch.attention_mask)
        emb = embedding_lens(batch.cache, batch.tokens, top_k=o.top_k, mask=mask)
        results["lens"] = emb
        r.lap("forward + lens")
        report.text(text["refused"].format(refusal=refusal))
        report.heading(text["embedding_heading"])
        report.text(text["embedding_note"])
        report.figure(lens_grid_figure(emb), caption=text["embedding_grid_caption"])
        report.table(emb.rows(), caption=text["embedding_table"])

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
            report.table(rec.rows(), caption=text["recovery_table"])
    r.lap("figures")
    return r.finish(report, results=results, facts=facts)


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


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
