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

import argparse
import sys

import torch

import tlprobe
from recipes._common import Timer, add_common_arguments, data_path, finish, read_lines, versions
from tlprobe.access import model_info, resid_hook_names, run_batch
from tlprobe.access.unembed import decode_tokens, mlm_head_check, special_token_ids
from tlprobe.analyses.lens import choose_lens, embedding_lens, logit_lens, mlm_lens
from tlprobe.errors import TlprobeError, UnsupportedModelError
from tlprobe.figures.lens import (
    kl_entropy_figure,
    lens_grid_figure,
    recovery_figure,
    target_topk_view,
    target_trajectory_figure,
)
from tlprobe.report import Report

NAME = "logit-lens"
DESCRIPTION = "L15-L17: logit lens (decoders), MLM lens or embedding lens (encoders), layer by layer"
DEFAULT_PROMPT = "The Eiffel Tower is in the city of"
DEFAULT_TARGETS = {"logit": [" Paris", " London"], "mlm": ["paris", "london"], "embedding": []}
EMBEDDING_NOTE = (
    "Embedding lens = cosine of each layer's hidden state with the rows of W_E: it shows "
    "which input token a layer still encodes (token identity). It is NOT a prediction."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompt",
        default=None,
        help=f"the text to read (default: {DEFAULT_PROMPT!r}; encoders with an MLM head get ' [MASK].' appended)",
    )
    parser.add_argument(
        "--targets",
        nargs="*",
        default=None,
        help="single tokens to follow across layers (default: ' Paris' ' London' for decoders, "
        "'paris' 'london' for MLM heads; unused by the embedding lens)",
    )
    parser.add_argument("--top-k", dest="top_k", type=int, default=10, help="tokens kept per layer and position")
    parser.add_argument(
        "--sentences",
        default=None,
        help="embedding lens only: text file of sentences for the per-layer recovery curve "
        "(default: the bundled 48 sentences; 'none' to skip)",
    )
    add_common_arguments(parser, NAME)


def run(
    model: str = "minilm",
    prompt: str | None = None,
    targets: list[str] | None = None,
    top_k: int = 10,
    sentences: str | None = None,
    device: str | None = None,
    seed: int = 0,
    out: str = f"tlprobe-out/{NAME}",
    progress: bool = True,
    quiet: bool = False,
) -> dict:
    """Run the recipe; returns the paths written (``report``, ``results``)."""
    timer = Timer()
    torch.manual_seed(seed)  # nothing here is random; fixes any randomly initialised head too
    m = tlprobe.load_model(model, device=device)
    info = model_info(m)
    kind, why = choose_lens(m)
    head = mlm_head_check(m).to_dict() if info.is_encoder else None
    timer.lap("load model")

    if prompt is not None and not prompt.strip():
        raise TlprobeError("--prompt is empty; give a text, or leave it out for the default prompt")
    prompt = prompt or (DEFAULT_PROMPT + (f" {m.tokenizer.mask_token}." if kind == "mlm" else ""))
    targets = DEFAULT_TARGETS[kind] if targets is None else list(targets)
    batch = run_batch(m, [prompt], names=resid_hook_names(info.n_layers))
    tokens = decode_tokens(m, batch.tokens[0].tolist())
    short = "all-MiniLM-L6-v2" if model == "minilm" else model.rstrip("/").rsplit("/", 1)[-1]
    results = {
        "recipe": NAME,
        "params": {"model": info.name, "prompt": prompt, "targets": targets, "top_k": top_k, "seed": seed},
        "model": info.to_dict(),
        "lens": kind,
        "lens_reason": why,
        "mlm_head": head,
        "tokens": tokens,
        "token_ids": batch.tokens[0].tolist(),
    }
    title = {"logit": "logit lens", "mlm": "MLM lens", "embedding": "embedding lens (token identity, not prediction)"}[
        kind
    ]
    report = Report(f"Lens: {short}, {title}", subtitle=DESCRIPTION)
    report.heading("Which lens, and why")
    report.text(f"{short} is {why}.")

    if kind in ("logit", "mlm"):
        with torch.inference_mode():
            logits = m(batch.tokens, attention_mask=batch.attention_mask)
        lens = logit_lens if kind == "logit" else mlm_lens
        res = lens(batch.cache, targets=targets, top_k=top_k, logits=logits, attention_mask=batch.attention_mask)
        timer.lap("forward + lens")
        _report_prediction_lens(report, res, tokens, targets, m.tokenizer, kind)
        results["result"] = res.to_dict()
        results["top_tokens"] = [[decode_tokens(m, pos) for pos in depth[0]] for depth in res.top_ids.tolist()]
        results["layer_summary"] = res.layer_summary([repr(t) for t in targets])
    else:
        try:
            mlm_lens(batch.cache)
            refusal = None  # pragma: no cover - choose_lens said the head is unusable
        except UnsupportedModelError as exc:
            refusal = str(exc)
        results["mlm_lens_refusal"] = refusal
        report.text(f"MLM lens refused. {refusal}")
        mask = _content_mask(m, batch)
        res = embedding_lens(batch.cache, batch.tokens, top_k=top_k, mask=mask)
        timer.lap("forward + lens")
        results["result"] = res.to_dict()
        results["top_tokens"] = [[decode_tokens(m, pos) for pos in depth[0]] for depth in res.top_ids.tolist()]
        results["layer_summary"] = res.layer_summary()
        report.heading("Embedding lens (token identity, not prediction)")
        report.text(EMBEDDING_NOTE)
        report.figure(
            lens_grid_figure(res, tokens, m.tokenizer),
            caption="Embedding lens (token identity, not prediction): the nearest W_E row to each "
            "hidden state; colour = its cosine. Hover for the 5 nearest rows.",
        )
        report.table(
            res.layer_summary(),
            caption="Embedding lens (token identity, not prediction) on the prompt, "
            "per depth (special tokens excluded)",
        )
        if (sentences or "").lower() != "none":
            corpus = read_lines(sentences or data_path("her_sentences.txt"))
            many = run_batch(m, corpus, names=resid_hook_names(info.n_layers), progress=progress)
            rec = embedding_lens(many.cache, many.tokens, top_k=5, mask=_content_mask(m, many))
            rows = rec.layer_summary()
            results["recovery"] = {"n_sentences": len(corpus), "n_tokens": int(rec.mask.sum()), "layers": rows}
            timer.lap("recovery corpus")
            report.figure(
                recovery_figure(rows),
                caption=f"Embedding lens (token identity, not prediction) over {len(corpus)} sentences "
                f"({int(rec.mask.sum())} tokens, special tokens excluded): how often the input "
                "token is still the nearest embedding row.",
            )
            report.table(
                rows, caption="Recovery of the input token per depth (embedding lens: token identity, not prediction)"
            )

    timer.lap("figures")
    report.params(
        {
            "model": info.name,
            "family": info.family,
            "lens": kind,
            "compatibility mode": info.compatibility_mode,
            "prompt": prompt,
            "targets": ", ".join(repr(t) for t in targets) or "none",
            "top-k": top_k,
            "seed": seed,
            **versions(),
            **timer.as_params(),
        }
    )
    return finish(report, results, out, quiet=quiet)


def _content_mask(m, batch) -> torch.Tensor:
    """Real, non-special tokens (``[CLS]``, ``[SEP]``, BOS do not count in recovery)."""
    special = torch.tensor(special_token_ids(m) or [-1], device=batch.tokens.device)
    return batch.attention_mask.bool() & ~torch.isin(batch.tokens, special)


def _report_prediction_lens(report: Report, res, tokens, targets, tokenizer, kind: str) -> None:
    what = "next-token prediction" if kind == "logit" else "masked-token prediction of the trained MLM head"
    report.heading(f"{res.kind}: {what} at every depth")
    report.text(
        f"Each depth of the residual stream is read through the model's own read-out ({res.readout}); the last "
        f"depth reproduces the model's logits (max difference {res.final_max_abs_error:.2g}). "
        "What to expect on a pretrained decoder such as GPT-2: early depths give generic or input-like tokens, "
        "the eventual prediction appears in the middle-to-late layers and sharpens toward the end (KL to the "
        "final distribution falls to 0)."
    )
    report.figure(
        lens_grid_figure(res, tokens, tokenizer),
        caption="Top-1 token per depth and position; colour = its probability. Hover for the top 5.",
    )
    if len(targets):
        names = [repr(t) for t in targets]
        report.figure(
            target_trajectory_figure(res, names),
            caption="Rank and probability of each target at the last position, across depth.",
        )
        report.view(
            target_topk_view(res, [tokens]),
            caption="circuitsvis TopkTokens: per depth and target (numbered in the order "
            f"{', '.join(names)}), the positions where the lens gives it the highest probability.",
        )
    report.figure(
        kl_entropy_figure(res),
        caption="KL divergence to the final distribution (0 at the last depth) and entropy, per depth.",
    )
    report.table(
        res.layer_summary([repr(t) for t in targets]), caption=f"{res.kind} per depth (means over real positions)"
    )


def main(args: argparse.Namespace) -> dict:
    return run(**vars(args))


if __name__ == "__main__":
    from tlprobe.cli import script_main

    raise SystemExit(script_main(sys.modules[__name__]))
