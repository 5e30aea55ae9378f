"""L09: pairwise mutual information between hidden dimensions, through the layers.

One paragraph of encyclopedic text is run through the model; the hidden states of every layer
(embeddings, then every block's output) give ``tokens x d_model`` samples per layer. For each
layer the MI between every pair of hidden dimensions is estimated across the tokens
(histogram estimator), with its bias made visible: a shuffle null (each dimension's tokens
permuted separately), the Miller-Madow correction and the Gaussian-copula estimator.

Copy this file (``tlprobe cp pairwise-mi my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import tlprobe
from recipes._common import Timer, add_common_arguments, data_path, finish, read_lines, versions
from tlprobe.access import model_info, resid_hook_names, resid_stack, run_batch
from tlprobe.analyses.mi import gcmi, mi_histograms, mi_null, pairwise_mi, token_mi
from tlprobe.analyses.similarity import shuffle_values
from tlprobe.checks import check_min_samples
from tlprobe.figures.mi import mi_heatmap_figure, mi_histogram_figure, mi_means_figure
from tlprobe.report import Report

NAME = "pairwise-mi"
DESCRIPTION = "L09: pairwise mutual information between hidden dimensions, layer by layer, with its bias"
MIN_TOKENS = 20
HEATMAP_DIMS = 96


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text",
        default=None,
        help="text file with one paragraph (default: a bundled ~115-token paragraph on the history of tea)",
    )
    parser.add_argument("--bins", default="10", help="MI bins per dimension: an integer >= 2, or sqrt, scott, fd")
    parser.add_argument("--shuffles", type=int, default=10, help="shuffles for the null distribution")
    parser.add_argument("--hist-bins", type=int, default=60, help="bins of the MI-value histograms")
    add_common_arguments(parser, NAME)


def run(
    model: str = "minilm",
    text: str | None = None,
    bins: int | str = 10,
    shuffles: int = 10,
    hist_bins: int = 60,
    device: str | None = None,
    seed: int = 0,
    out: str = f"tlprobe-out/{NAME}",
    progress: bool = True,
    quiet: bool = False,
) -> dict:
    """Run the recipe; returns the paths written (``report``, ``results``)."""
    timer = Timer()
    bins = int(bins) if isinstance(bins, str) and bins.isdigit() else bins
    paragraph = " ".join(read_lines(text or data_path("tea_paragraph.txt")))
    m = tlprobe.load_model(model, device=device)
    info = model_info(m)
    timer.lap("load model")

    # 1. Hidden states of every layer for the paragraph: [depth, tokens, d_model].
    batch = run_batch(m, [paragraph], names=resid_hook_names(info.n_layers), progress=progress)
    n_tok = int(batch.attention_mask[0].sum())
    check_min_samples(n_tok, MIN_TOKENS, "pairwise MI across tokens", "give a longer paragraph (--text FILE)")
    hs = resid_stack(batch.cache)[:, 0, :n_tok].float()
    depth = hs.shape[0]
    names = ["embeddings"] + [f"block {i}" for i in range(depth - 1)]
    timer.lap("forward")

    # 2. MI between every pair of hidden dimensions, per layer, and its bias.
    t0 = time.perf_counter()
    raw = pairwise_mi(hs, bins=bins)
    t_raw = time.perf_counter() - t0
    timer.lap("pairwise MI, all layers")
    null = mi_null(hs, n_shuffles=shuffles, seed=seed, bins=bins)
    one_shuffle = pairwise_mi(shuffle_values(hs, "within-feature", seed=seed), bins=bins)
    mm = pairwise_mi(hs, bins=bins, correction="miller-madow")
    timer.lap("shuffle null and Miller-Madow")
    gc = gcmi(hs)
    tok = token_mi(hs, bins=bins)
    timer.lap("GCMI and token-by-token MI")

    # 3. Distributions over pairs (strict upper triangle), shared bins per quantity.
    h_raw = mi_histograms(raw, names, bins=hist_bins)
    h_cor = mi_histograms(null.corrected, names, bins=hist_bins, quantity="MI - shuffle null (nats)")
    h_null = mi_histograms(null.null_mean, names, bins=hist_bins, quantity="shuffle-null mean MI (nats)")
    h_mm = mi_histograms(mm, names, bins=hist_bins, quantity="Miller-Madow MI (nats)")
    h_gc = mi_histograms(gc, names, bins=hist_bins, quantity="GCMI (nats)")
    h_tok = mi_histograms(tok, names, bins=hist_bins, quantity="token-by-token MI (nats)")
    mid = depth // 2
    h_bias = mi_histograms(
        torch.stack([raw[mid], one_shuffle[mid], null.corrected[mid]]),
        ["raw", "one shuffle (null)", "raw - mean of shuffles"],
        bins=hist_bins,
    )
    timer.lap("histograms")

    report = Report(f"L09 pairwise MI through the layers: {info.name.rsplit('/', 1)[-1]}", subtitle=DESCRIPTION)
    report.heading("What this shows")
    report.text(
        f"The paragraph has {n_tok} tokens (special tokens included). At each of the {depth} layers "
        f"(embeddings, then every block's output) the {hs.shape[-1]} hidden dimensions are the "
        f"variables and the tokens the samples: the MI between every pair of dimensions "
        f"({hs.shape[-1] * (hs.shape[-1] - 1) // 2:,} pairs per layer, upper triangle once) is estimated "
        f"with {null.bins} equal-width bins per dimension."
    )
    report.text(
        f"With only {n_tok} samples the histogram estimator is biased upward: the shuffle null (each "
        "dimension's tokens permuted separately, which destroys dependence and keeps the marginals) "
        "sits at a similar level as the raw values. The offset is common to all pairs, so compare layers "
        "and pairs, not absolute values; 'raw - null' removes it. The lesson (GPT-2 small, 94 tokens) "
        "found the raw distribution around 1.0, the embedding layer distinct (narrow, shifted) and the "
        "transformer blocks lying on top of one another."
    )
    report.figure(
        mi_histogram_figure(h_raw, "Raw pairwise MI per layer", highlight=0),
        caption="Density of the pairwise MI values; the embedding layer in red.",
    )
    report.figure(mi_histogram_figure(h_cor, "Pairwise MI minus the shuffle null, per layer", highlight=0))
    report.figure(
        mi_histogram_figure(h_bias, f"Bias at layer {names[mid]}: raw vs shuffle null vs corrected"),
        caption="The null histogram is one shuffle's MI values (the spread a pair has by chance).",
    )
    report.figure(
        mi_means_figure(
            {"raw": h_raw, "shuffle-null mean": h_null, "raw - null": h_cor, "Miller-Madow": h_mm, "GCMI": h_gc},
            "Mean pairwise MI per layer",
        ),
        caption="Error bars: standard deviation over pairs.",
    )
    report.figure(
        mi_histogram_figure(h_gc, "Gaussian-copula MI per layer (low bias, monotonic dependence only)", highlight=0)
    )
    report.figure(mi_histogram_figure(h_tok, "Token-by-token MI (across hidden dimensions) per layer", highlight=0))
    report.figure(mi_heatmap_figure(raw[mid], f"Raw pairwise MI at {names[mid]}", max_size=HEATMAP_DIMS))
    rows = [
        {
            "layer": nm,
            "raw mean": float(h_raw.mean[i]),
            "raw median": float(h_raw.median[i]),
            "null mean": float(h_null.mean[i]),
            "raw - null mean": float(h_cor.mean[i]),
            "Miller-Madow mean": float(h_mm.mean[i]),
            "GCMI mean": float(h_gc.mean[i]),
            "token MI mean": float(h_tok.mean[i]),
        }
        for i, nm in enumerate(names)
    ]
    report.table(rows, caption="Means over pairs of dimensions (token MI: over pairs of tokens)")
    timer.lap("figures")
    params = {
        "model": info.name,
        "family": info.family,
        "compatibility mode": info.compatibility_mode,
        "tokens": n_tok,
        "layers": depth,
        "d_model": hs.shape[-1],
        "bins": null.bins,
        "shuffles": shuffles,
        "seed": seed,
        "time: raw pairwise MI per layer": f"{t_raw / depth:.3f} s",
        "threads": torch.get_num_threads(),
        **versions(),
        **timer.as_params(),
    }
    report.params(params)

    results = {
        "recipe": NAME,
        "params": {
            "model": info.name,
            "bins": null.bins,
            "shuffles": shuffles,
            "seed": seed,
            "n_tokens": n_tok,
            "depth": depth,
            "d_model": int(hs.shape[-1]),
            "text_chars": len(paragraph),
        },
        "model": info.to_dict(),
        "layers": names,
        "tokens": batch.str_tokens(0),
        "summary": rows,
        "histograms": {
            "raw": h_raw.to_dict(),
            "corrected": h_cor.to_dict(),
            "null_mean": h_null.to_dict(),
            "miller_madow": h_mm.to_dict(),
            "gcmi": h_gc.to_dict(),
            "token_mi": h_tok.to_dict(),
            "bias_middle_layer": h_bias.to_dict(),
        },
        "heatmap": {
            "layer": names[mid],
            "dims": min(HEATMAP_DIMS, int(hs.shape[-1])),
            "mi": raw[mid, :HEATMAP_DIMS, :HEATMAP_DIMS],
        },
    }
    return finish(report, results, out, quiet=quiet)


def main(args: argparse.Namespace) -> dict:
    return run(**vars(args))


if __name__ == "__main__":
    from tlprobe.cli import script_main

    raise SystemExit(script_main(sys.modules[__name__]))
