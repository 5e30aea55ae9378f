"""L09: pairwise mutual information between hidden dimensions, through the layers.

One paragraph of encyclopedic text is run through the model; the hidden states of every layer
(embeddings, then every block's output) give ``tokens x d_model`` samples per layer. For each
layer the MI between every pair of hidden dimensions is estimated across the tokens
(histogram estimator), with its bias made visible: a shuffle null (each dimension's tokens
permuted separately), the Miller-Madow correction and the Gaussian-copula estimator.

Copy this file (``tlprobe cp pairwise-mi my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

import torch

from tlprobe.access import resid_hook_names, resid_stack, run_batch
from tlprobe.access.labels import resid_labels
from tlprobe.analyses.mi import (
    BIN_RULES,
    BinRule,
    gcmi,
    mi_histograms,
    mi_null,
    mi_working_bytes,
    pairwise_mi,
    resolve_bins,
    token_mi,
)
from tlprobe.analyses.similarity import shuffle_values
from tlprobe.checks import as_int, check_choice, check_memory, check_min_samples
from tlprobe.figures.mi import mi_heatmap_figure, mi_histogram_figure, mi_means_figure
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

NAME = "pairwise-mi"
DESCRIPTION = "L09: pairwise mutual information between hidden dimensions, layer by layer, with its bias"
MIN_TOKENS = 20
HEATMAP_DIMS = 96


@dataclass(frozen=True)
class Options(ModelOptions):
    text: str | None = option(
        None, doc="text file with one paragraph (default: a bundled ~115-token paragraph on the history of tea)"
    )
    bins: int | BinRule = option(10, doc="MI bins per dimension: an integer >= 2, or sqrt, scott, fd")
    shuffles: int = option(10, doc="shuffles for the null distribution")
    hist_bins: int = option(60, doc="bins of the MI-value histograms")


def _hist_bytes(matrices: int, d: int, bins: int) -> int:
    """What :func:`mi_histograms` holds for ``matrices`` ``[d, d]`` matrices on ``bins`` bins."""
    return matrices * bins * 8 * 5 + matrices * d * (d - 1) // 2 * 8 * 4


def check_options(o: Options) -> None:
    """Refuse a bad option before the model loads, naming its flag.

    Sizes that cannot fit whatever the model are refused here too: one joint histogram of
    ``--bins`` is ``bins**2`` cells, and the three bias histograms hold ``3 x --hist-bins`` bins.

    Raises:
        TlprobeError: ``--bins`` below 2 or an unknown rule, ``--shuffles`` or ``--hist-bins``
            below 1, or a working set over the available memory (the message names the option).

    Example:
        >>> check_options(Options(bins=100_000_000))
        Traceback (most recent call last):
        tlprobe.errors.TlprobeError: one joint histogram of --bins 100000000 needs ~...; lower --bins
    """
    as_int(o.shuffles, "--shuffles", minimum=1)
    hist_bins = as_int(o.hist_bins, "--hist-bins", minimum=1)
    if isinstance(o.bins, str):
        check_choice(o.bins, BIN_RULES, "--bins rule")
    else:
        bins = as_int(o.bins, "--bins", minimum=2, fix="one bin carries no information")
        lower = mi_working_bytes(1, MIN_TOKENS, 2, bins=bins)
        check_memory(lower, f"one joint histogram of --bins {bins}", "lower --bins")
    check_memory(_hist_bytes(3, 2, hist_bins), f"the histograms of --hist-bins {hist_bins}", "lower --hist-bins")


def check_sizes(o: Options, depth: int, n_tokens: int, d_model: int, *, bins: int, device=None) -> None:
    """Refuse, before the MI, a working set over the free memory: the pairwise MI of ``depth``
    layers of ``n_tokens x d_model`` hidden states with ``bins`` bins, and the histograms."""
    need = mi_working_bytes(depth, n_tokens, d_model, bins=bins, device=device)
    what = f"pairwise MI of {depth} layers x {d_model} dimensions x {n_tokens} tokens with --bins {o.bins}"
    check_memory(need, what, "lower --bins, or give a shorter --text", device=device)
    hist = _hist_bytes(max(depth, 3), d_model, as_int(o.hist_bins, "--hist-bins"))
    check_memory(hist, f"the histograms of {depth} layers with --hist-bins {o.hist_bins}", "lower --hist-bins")


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(shuffles=3)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    check_options(o)
    paragraph = " ".join(read_lines(o.text or data_path("tea_paragraph.txt")))
    r = setup(NAME, o)
    text = prose(NAME)

    # 1. Hidden states of every layer for the paragraph: [depth, tokens, d_model].
    batch = run_batch(r.model, [paragraph], names=resid_hook_names(r.model), progress=o.progress)
    n_tok = int(batch.attention_mask[0].sum())
    check_min_samples(n_tok, MIN_TOKENS, "pairwise MI across tokens", "give a longer paragraph (--text FILE)")
    hs = resid_stack(batch.cache)[:, 0, :n_tok].float()
    depth, d_model = hs.shape[0], hs.shape[-1]
    layers = {"layer": resid_labels(r.info.n_layers, style="block")}  # embed, block 0, ...
    check_sizes(o, depth, n_tok, d_model, bins=resolve_bins(hs, o.bins), device=hs.device)
    r.lap("forward")

    # 2. MI between every pair of hidden dimensions, per layer, and its bias.
    null = mi_null(hs, n_shuffles=o.shuffles, seed=o.seed, bins=o.bins, axes=layers)
    r.lap("pairwise MI and its shuffle null, all layers")
    one_shuffle = pairwise_mi(shuffle_values(hs, "within-feature", seed=o.seed), bins=o.bins)
    mm = pairwise_mi(hs, bins=o.bins, correction="miller-madow")
    gc = gcmi(hs)
    tok = token_mi(hs, bins=o.bins)
    r.lap("one shuffle, Miller-Madow, GCMI and token-by-token MI")

    # 3. Distributions over pairs (strict upper triangle), shared bins per quantity.
    hist = partial(mi_histograms, bins=o.hist_bins, axes=layers)
    h_raw = hist(null.raw)
    h_cor = hist(null.corrected, quantity="MI - shuffle null (nats)")
    assert null.null_mean is not None  # mi_null always fills it (only a raw MIResult has none)
    h_null = hist(null.null_mean, quantity="shuffle-null mean MI (nats)")
    h_mm = hist(mm, quantity="Miller-Madow MI (nats)")
    h_gc = hist(gc, quantity="GCMI (nats)")
    h_tok = hist(tok, quantity="token-by-token MI (nats)")
    mid = depth // 2
    mid_name = layers["layer"][mid]
    estimates = {"estimate": ("raw", "one shuffle (null)", "raw - mean of shuffles")}
    h_bias = hist(torch.stack([null.raw[mid], one_shuffle[mid], null.corrected[mid]]), axes=estimates)
    r.lap("histograms")

    # 4. Figures and report.
    report = Report(text["title"].format(model=r.info.name.rsplit("/", 1)[-1]), subtitle=DESCRIPTION)
    report.heading("What this shows")
    pairs = d_model * (d_model - 1) // 2
    report.text(text["what"].format(n_tokens=n_tok, depth=depth, d_model=d_model, pairs=pairs, bins=null.bins))
    report.text(text["bias"].format(n_tokens=n_tok))
    per_layer = partial(mi_histogram_figure, highlight=0)
    report.figure(per_layer(h_raw, title="Raw pairwise MI per layer"), caption=text["raw_caption"])
    report.figure(per_layer(h_cor, title="Pairwise MI minus the shuffle null, per layer"))
    bias_title = f"Bias at layer {mid_name}: raw vs shuffle null vs corrected"
    report.figure(mi_histogram_figure(h_bias, title=bias_title), caption=text["bias_caption"])
    means = {"raw": h_raw, "shuffle-null mean": h_null, "raw - null": h_cor, "Miller-Madow": h_mm, "GCMI": h_gc}
    report.figure(mi_means_figure(means, title="Mean pairwise MI per layer"), caption=text["means_caption"])
    report.figure(per_layer(h_gc, title="Gaussian-copula MI per layer (low bias, monotonic dependence only)"))
    report.figure(per_layer(h_tok, title="Token-by-token MI (across hidden dimensions) per layer"))
    report.figure(mi_heatmap_figure(null[mid_name], title=f"Raw pairwise MI at {mid_name}", max_size=HEATMAP_DIMS))
    columns = {"null": h_null, "raw - null": h_cor, "Miller-Madow": h_mm, "GCMI": h_gc, "token MI": h_tok}
    rows = [
        {"layer": label, "raw mean": float(h_raw.mean[i]), "raw median": float(h_raw.median[i])}
        | {f"{k} mean": float(h.mean[i]) for k, h in columns.items()}
        for i, label in enumerate(layers["layer"])
    ]
    report.table(rows, caption="Means over pairs of dimensions (token MI: over pairs of tokens)")
    r.lap("figures")

    dims = min(HEATMAP_DIMS, d_model)
    facts = {"bins": null.bins, "n_tokens": n_tok, "depth": depth, "d_model": d_model, "text_chars": len(paragraph)}
    facts |= {
        "tokens": batch.str_tokens(0),
        "heatmap": {"layer": mid_name, "dims": dims, "mi": null.raw[mid, :dims, :dims]},
    }
    results = {"raw": h_raw, "corrected": h_cor, "null_mean": h_null, "miller_madow": h_mm}
    results |= {"gcmi": h_gc, "token_mi": h_tok, "bias_middle_layer": h_bias}
    return r.finish(report, results=results, facts=facts)


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
