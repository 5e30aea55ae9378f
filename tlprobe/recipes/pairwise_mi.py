"""L09: pairwise mutual information between hidden dimensions, through the layers.

One paragraph of encyclopedic text is run through the model; the hidden states of every layer
(embeddings, then every block's output) give ``tokens x d_model`` samples per layer. For each
layer the MI between every pair of hidden dimensions is estimated across the tokens
(histogram estimator), with its bias made visible: a shuffle null (each dimension's tokens
permuted separately), the Miller-Madow correction and the Gaussian-copula estimator.

Copy this file (``tlprobe cp pairwise-mi my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float

from tlprobe.access import resid_hook_names, resid_stack, run_batch
from tlprobe.access.corpus import Windows, stream, text_windows, window_hidden
from tlprobe.access.labels import resid_labels
from tlprobe.analyses.mi import (
    BIN_RULES,
    BinRule,
    MIHistograms,
    gcmi,
    mi_histograms,
    mi_null,
    mi_working_bytes,
    pairwise_mi,
    resolve_bins,
    token_mi,
)
from tlprobe.analyses.mi_counts import MICounts, RangeAccumulator
from tlprobe.analyses.similarity import shuffle_values
from tlprobe.checks import as_int, check_choice, check_memory, check_min_samples
from tlprobe.errors import TlprobeError
from tlprobe.figures.mi import mi_heatmap_figure, mi_histogram_figure, mi_means_figure
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

NAME = "pairwise-mi"
DESCRIPTION = "L09: pairwise mutual information between hidden dimensions, layer by layer, with its bias"
MIN_TOKENS = 20
HEATMAP_DIMS = 96
#: The three histograms of the bias figure (in memory).
BIAS_ESTIMATES = ("raw", "one shuffle (null)", "raw - mean of shuffles")
#: The MI matrices summarised per hidden dimension (facts["dimension_means"]) and in the findings.
QUANTITIES = ("raw", "corrected", "null")

# The criteria of the findings: fixed here, stated in each criterion's text, never tuned to a run.
#: The embedding layer "stands apart" when its mean MI is at least this many times farther from the
#: nearest block's mean than the blocks' means are from one another (their range).
APART_RATIO = 2.0
#: The shuffle-null bias is "about the same at every layer" when its range across layers is at most
#: this fraction of its mean over layers.
BIAS_TOLERANCE = 0.10
#: Raw and null-corrected MI "rank the layers alike" when Kendall's tau between them is above this.
RANK_TAU = 0.8
#: Fewest hidden dimensions for a bootstrap interval, and fewest blocks for a spread among blocks.
MIN_DIMS = 10
MIN_BLOCKS = 2
#: Bootstrap resamples (over hidden dimensions) and confidence level of every interval.
N_RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Options(ModelOptions):
    text: str | None = option(
        None,
        doc="text file: a paragraph, or a whole book (streamed in windows) (default: a bundled ~115-token "
        "paragraph on the history of tea)",
    )
    bins: int | BinRule = option(10, doc="MI bins per dimension: an integer >= 2, or sqrt, scott, fd")
    shuffles: int = option(10, doc="shuffles for the null distribution (in memory; a streamed run uses the exact null)")
    hist_bins: int = option(60, doc="bins of the MI-value histograms")
    stream: Literal["auto", "always", "never"] = option(
        "auto",
        doc="stream the text in windows into bin counts, in constant memory (auto: when it is longer than one window)",
    )
    window: int | None = option(
        None, doc="tokens per streamed window, special tokens included (default: 256 or the context)"
    )
    batch_size: int = option(
        1, doc="windows per forward pass when streaming (each 256-token window takes ~60 MB of work on MiniLM)"
    )
    checkpoint: str | None = option(
        None, doc="file for the streamed counts: saved every --checkpoint-every batches, resumed from", record=False
    )
    checkpoint_every: int = option(20, doc="batches between checkpoints", record=False)


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
    layers = {"layer": resid_labels(r.info.n_layers, style="block")}  # embed, block 0, ...
    windows = text_windows(r.model, paragraph, window=o.window)
    streamed = o.stream == "always" or (o.stream == "auto" and len(windows) > 1)
    facts: dict[str, Any] = {"text_chars": len(paragraph)}

    if streamed:  # 1-2. every token of every window, into bin counts batch by batch (constant memory)
        null, mm, n_tok, d_model = streamed_mi(r, o, windows, layers)
        gc = tok = one_shuffle = None
        facts |= {"streamed": True, "windows": len(windows), "window_tokens": sorted({len(w) for w in windows.ids})}
    else:
        null, mm, gc, tok, one_shuffle, n_tok, d_model, tokens = in_memory_mi(r, o, paragraph, layers)
        facts |= {"streamed": False, "tokens": tokens}
    depth = null.raw.shape[0]

    # 3. Distributions over pairs (strict upper triangle), shared bins per quantity.
    hist = partial(mi_histograms, bins=o.hist_bins, axes=layers)
    h_raw = hist(null.raw)
    h_cor = hist(null.corrected, quantity="MI - shuffle null (nats)")
    assert null.null_mean is not None  # mi_null and the streamed counts always fill it
    h_null = hist(null.null_mean, quantity="shuffle-null mean MI (nats)")
    h_mm = hist(mm, quantity="Miller-Madow MI (nats)")
    h_gc = None if gc is None else hist(gc, quantity="GCMI (nats)")
    h_tok = None if tok is None else hist(tok, quantity="token-by-token MI (nats)")
    mid, mid_name = depth // 2, layers["layer"][depth // 2]
    # streamed: the exact null expectation stands in for one shuffle
    names = ("raw", "permutation null (expected)", "raw - null") if one_shuffle is None else BIAS_ESTIMATES
    middle = null.null_mean[mid] if one_shuffle is None else one_shuffle[mid]
    h_bias = hist(torch.stack([null.raw[mid], middle, null.corrected[mid]]), axes={"estimate": names})
    r.lap("histograms")

    # 4. The lesson's claims, checked on each hidden dimension's mean MI (bootstrap over dimensions).
    dims_mean = {q: dimension_means(m) for q, m in zip(QUANTITIES, (null.raw, null.corrected, null.null_mean))}
    found = findings(dims_mean, layers["layer"], seed=o.seed)
    r.lap("findings")

    # 5. Figures and report.
    report = Report(text["title"].format(model=r.info.name.rsplit("/", 1)[-1]), subtitle=DESCRIPTION)
    report.heading("What this shows")
    pairs = d_model * (d_model - 1) // 2
    what = text["what_streamed"] if streamed else text["what"]
    sizes = {"windows": len(windows), "window": max(len(w) for w in windows.ids)}
    report.text(what.format(n_tokens=n_tok, depth=depth, d_model=d_model, pairs=pairs, bins=null.bins, **sizes))
    bias = text["bias_streamed"] if streamed else text["bias"]
    report.text(bias.format(n_tokens=n_tok, **bias_facts(h_raw, h_null)))
    report.text(text["lesson"])
    per_layer = partial(mi_histogram_figure, highlight=0)
    report.figure(per_layer(h_raw, title="Raw pairwise MI per layer"), caption=text["raw_caption"])
    report.figure(per_layer(h_cor, title="Pairwise MI minus the shuffle null, per layer"), caption=text["raw_caption"])
    bias_title = f"Bias at layer {mid_name}: raw vs shuffle null vs corrected"
    bias_caption = text["bias_caption_streamed"] if streamed else text["bias_caption"]
    report.figure(mi_histogram_figure(h_bias, title=bias_title), caption=bias_caption)
    means = {"raw": h_raw, "shuffle-null mean": h_null, "raw - null": h_cor, "Miller-Madow": h_mm}
    if h_gc is not None:
        means["GCMI"] = h_gc
    report.figure(mi_means_figure(means, title="Mean pairwise MI per layer"), caption=text["means_caption"])
    if h_gc is not None and h_tok is not None:
        report.figure(per_layer(h_gc, title="Gaussian-copula MI per layer (low bias, monotonic dependence only)"))
        report.figure(per_layer(h_tok, title="Token-by-token MI (across hidden dimensions) per layer"))
    else:
        report.text(text["streamed_left_out"])
    heatmap_title = f"Raw pairwise MI at {mid_name}"
    heatmap = mi_heatmap_figure(null[mid_name], title=heatmap_title, max_size=HEATMAP_DIMS, variable="hidden dimension")
    report.figure(heatmap, caption=text["heatmap_caption"])
    columns = {"null": h_null, "raw - null": h_cor, "Miller-Madow": h_mm, "GCMI": h_gc, "token MI": h_tok}
    rows = [
        {"layer": label, "raw mean": float(h_raw.mean[i]), "raw median": float(h_raw.median[i])}
        | {f"{k} mean": float(h.mean[i]) for k, h in columns.items() if h is not None}
        for i, label in enumerate(layers["layer"])
    ]
    caption = "Means over pairs of dimensions" + ("" if streamed else " (token MI: over pairs of tokens)")
    report.table(rows, caption=caption)
    r.lap("figures")

    dims = min(HEATMAP_DIMS, d_model)
    facts |= {"bins": null.bins, "n_tokens": n_tok, "depth": depth, "d_model": d_model, "null": null.method}
    facts |= {
        "heatmap": {"layer": mid_name, "dims": dims, "mi": null.raw[mid, :dims, :dims]},
        "dimension_means": dims_mean,
    }
    results = {"raw": h_raw, "corrected": h_cor, "null_mean": h_null, "miller_madow": h_mm}
    results |= {"bias_middle_layer": h_bias}
    results |= {k: h for k, h in (("gcmi", h_gc), ("token_mi", h_tok)) if h is not None}
    return r.finish(report, results=results, facts=facts, findings=found)


def in_memory_mi(r, o: Options, paragraph: str, layers: Mapping[str, Sequence[str]]):
    """Pairwise MI of the paragraph's tokens (special tokens included), all in memory, with a
    shuffle null, one shuffle, Miller-Madow, GCMI and token-by-token MI.

    Returns ``(MIResult, Miller-Madow, GCMI, token MI, one shuffle, tokens, d_model, token strings)``.
    """
    # 1. Hidden states of every layer for the paragraph: [depth, tokens, d_model].
    batch = run_batch(r.model, [paragraph], names=resid_hook_names(r.model), progress=o.progress)
    n_tok = int(batch.attention_mask[0].sum())
    check_min_samples(n_tok, MIN_TOKENS, "pairwise MI across tokens", "give a longer paragraph (--text FILE)")
    hs = resid_stack(batch.cache)[:, 0, :n_tok].float()
    depth, d_model = hs.shape[0], hs.shape[-1]
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
    return null, mm, gc, tok, one_shuffle, n_tok, d_model, batch.str_tokens(0)


def streamed_mi(r, o: Options, windows: Windows, layers: Mapping[str, Sequence[str]]):
    """Pairwise MI of every token of ``windows``, streamed: ``(MIResult, Miller-Madow MI, tokens, d_model)``.

    Two passes over the windows, each holding one batch's hidden states at a time: the first
    finds every dimension's min and max (so the bin edges are those of the in-memory estimator
    over the same tokens), the second counts the joint bins of every pair of dimensions. The
    null is the exact expectation of the plug-in MI over permutations of each dimension's
    tokens, computed from the counts (the shuffle null with infinitely many shuffles). Under
    ``torch.distributed`` each process runs its share of the batches and the counts are summed.
    """
    if isinstance(o.bins, str):
        raise TlprobeError(
            f"--bins {o.bins} needs every sample at once; a streamed run needs an integer number of bins (e.g. --bins 10)"
        )
    check_min_samples(windows.n_tokens, MIN_TOKENS, "pairwise MI across tokens", "give a longer text (--text FILE)")
    batches = windows.batches(o.batch_size)
    names = resid_hook_names(r.model)
    ck = None if o.checkpoint is None else str(o.checkpoint)
    common: dict[str, Any] = dict(names=names, every=o.checkpoint_every, progress=o.progress, settings=(o.bins,))

    def feed_range(cache, batch, acc) -> None:
        acc["range"].update(window_hidden(cache, batch, windows).float())

    ranges = stream(r.model, batches, {"range": RangeAccumulator()}, feed_range, checkpoint=_ck(ck, "range"), **common)
    edges = ranges["range"].edges(o.bins)
    r.lap("pass 1: range of every dimension")

    def feed_counts(cache, batch, acc) -> None:
        acc["counts"].update(window_hidden(cache, batch, windows).float())

    counts = stream(r.model, batches, {"counts": MICounts(edges)}, feed_counts, checkpoint=_ck(ck, "counts"), **common)
    c = counts["counts"]
    r.lap("pass 2: joint bin counts of every pair of dimensions")
    mm = c.result(correction="miller-madow")
    null = c.mi_result(axes=layers, free=True)  # the null needs only the marginals: counts dropped first
    r.lap("MI, its permutation null and Miller-Madow from the counts")
    return null, mm, int(c.n_samples), int(edges.shape[-2])


def _ck(path: str | None, part: str) -> str | None:
    """The checkpoint file of one pass: ``PATH.range``, ``PATH.counts``."""
    return None if path is None else f"{path}.{part}"


def bias_facts(raw: MIHistograms, null_mean: MIHistograms) -> dict[str, Any]:
    """The numbers the report's bias paragraph states, from the per-layer means over pairs.

    Example:
        >>> from tlprobe.analyses.mi import mi_histograms
        >>> m = torch.stack([torch.full((3, 3), v) for v in (0.33, 0.30, 0.22)])
        >>> h = mi_histograms(m, axes={"layer": ["embed", "block 0", "block 1"]})
        >>> f = bias_facts(h, h)
        >>> f["direction"], f"{f['null_first']:.2f}", f"{f['null_last']:.2f}", f["min_layer"]
        ('falls', '0.33', '0.22', 'block 1')
    """
    names = list(null_mean.series)
    null = [float(v) for v in null_mean.mean.flatten()]
    raw_means = [float(v) for v in raw.mean.flatten()]
    lo, hi = int(np.argmin(null)), int(np.argmax(null))
    first, last = null[0], null[-1]
    direction = "falls" if last < first else "rises" if last > first else "stays the same"
    return {
        "direction": direction,
        "null_first": first,
        "null_last": last,
        "first": names[0],
        "last": names[-1],
        "null_max": null[hi],
        "max_layer": names[hi],
        "null_min": null[lo],
        "min_layer": names[lo],
        "null_share": 100 * (max(null) - min(null)) / (sum(null) / len(null)) if sum(null) > 0 else 0.0,
        "raw_min": min(raw_means),
        "raw_max": max(raw_means),
    }


def dimension_means(mats: Float[torch.Tensor, "layers v v"]) -> Float[torch.Tensor, "v layers"]:
    """Each variable's mean MI with the other variables, per layer: ``[V, layers]`` (float64, CPU).

    The mean over variables of a layer's column equals the mean over its pairs (a symmetric matrix
    counts each pair twice), so resampling variables bootstraps the layer means.

    Example:
        >>> m = torch.tensor([[[9.0, 1.0, 2.0], [1.0, 9.0, 3.0], [2.0, 3.0, 9.0]]])
        >>> dimension_means(m).flatten().tolist()
        [1.5, 2.0, 2.5]
    """
    m = mats.double()
    off = m.sum(-1) - m.diagonal(dim1=-2, dim2=-1)
    return (off / (m.shape[-1] - 1)).mT.cpu()


# -- findings: the lesson's claims, checked on this run's results ----------------------------


def findings(
    dim_means: Mapping[str, Float[torch.Tensor, "v layers"] | np.ndarray | Sequence[Sequence[float]]],
    layers: Sequence[str],
    *,
    seed: int = 0,
) -> list[Finding]:
    """The claims of lesson L09, each checked on this run's per-dimension mean MI (no model needed).

    The intervals are seeded percentile bootstraps over the hidden dimensions (one resample draws
    the dimensions with replacement, the same for every layer and quantity; a layer's mean MI is
    then the mean of the drawn dimensions' means).

    Args:
        dim_means: ``"raw"``, ``"corrected"`` (raw - shuffle null) and ``"null"`` (shuffle-null
            mean) -> ``[V, layers]`` each dimension's mean MI with the others
            (:func:`dimension_means`; ``facts["dimension_means"]`` of ``results.json``).
        layers: one label per layer, the embedding layer first.
        seed: seed of the bootstraps.

    Returns:
        One :class:`~tlprobe.findings.Finding` per claim: the embedding stands apart (raw, then
        corrected), the shuffle-null bias is about the same at every layer, raw MI ranks the
        layers as the corrected MI does.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> raw = 0.5 + 0.01 * torch.randn(40, 4, generator=g, dtype=torch.float64)
        >>> raw[:, 0] += 0.3  # the embedding layer stands apart
        >>> null = torch.full((40, 4), 0.3, dtype=torch.float64)
        >>> fs = findings({"raw": raw, "corrected": raw - null, "null": null}, ["embed", "b0", "b1", "b2"])
        >>> [f.verdict for f in fs]
        ['holds', 'holds', 'holds', 'holds']
    """
    d = {q: np.asarray(torch.as_tensor(dim_means[q], dtype=torch.float64).cpu()) for q in QUANTITIES}
    names = [str(v) for v in layers]
    n_dims, n_layers = d["raw"].shape
    if len(names) != n_layers or any(v.shape != (n_dims, n_layers) for v in d.values()):
        raise TlprobeError(
            f"findings needs [dimensions, layers] means with one label per layer; got "
            f"{ {q: v.shape for q, v in d.items()} } and {len(names)} labels"
        )
    means = {q: v.mean(0) for q, v in d.items()}
    # why every interval is missing, or "" when there are dimensions enough to resample
    few = f"only {n_dims} hidden dimensions, need {MIN_DIMS} for a bootstrap interval" if n_dims < MIN_DIMS else ""
    # One set of resampled dimensions serves all four claims (and raw, corrected and null together),
    # so each claim's interval comes from the same resamples; scipy.stats.bootstrap resamples per call.
    boot: dict[str, np.ndarray] = {}
    if not few:
        idx = np.random.default_rng(seed).integers(0, n_dims, size=(N_RESAMPLES, n_dims))
        boot = {q: v[idx].mean(1) for q, v in d.items()}  # [resamples, layers]
    out = [_apart_finding(q, means[q], boot.get(q), names, few) for q in ("raw", "corrected")]
    out.append(_bias_finding(means["null"], boot.get("null"), names, few))
    out.append(_rank_finding(means["raw"], means["corrected"], boot.get("raw"), boot.get("corrected"), names, few))
    return out


def _interval(values: np.ndarray) -> tuple[float, float]:
    """The percentile interval of bootstrap values (NaN when any is undefined)."""
    if values.size == 0 or np.isnan(values).any():
        return math.nan, math.nan
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _apart_ratio(m: np.ndarray) -> np.ndarray:
    """Distance of the embedding's mean (``m[..., 0]``) to the nearest block's, over the blocks' range."""
    embed, blocks = m[..., 0], m[..., 1:]
    separation = np.abs(blocks - embed[..., None]).min(-1)
    spread = blocks.max(-1) - blocks.min(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return separation / spread


def _largest_gap(m: np.ndarray, names: Sequence[str]) -> tuple[str, str, float]:
    """The layers the largest gap between sorted layer means sets apart (the smaller side), on
    which side of the others they lie, and the gap."""
    order = np.argsort(m, kind="stable")
    gaps = np.diff(m[order])
    g = int(np.argmax(gaps))
    below, above = order[: g + 1], order[g + 1 :]
    group, side = (below, "below") if len(below) < len(above) else (above, "above")
    return ", ".join(names[int(i)] for i in sorted(group)), side, float(gaps[g])


def _apart_finding(q: str, m: np.ndarray, boot: np.ndarray | None, names: list[str], few: str) -> Finding:
    what = "raw" if q == "raw" else "null-corrected (raw - shuffle null)"
    claim = (
        f"{what} MI: the embedding layer's distribution is distinct from the blocks', which lie on top of each other"
    )
    crit = (
        f"mean {what} MI over pairs: distance of the embedding's mean to the nearest block's >= {APART_RATIO:g} x "
        f"the range of the blocks' means, {CONFIDENCE:.0%} bootstrap interval over hidden dimensions"
    )
    nums: dict = {"embed": float(m[0])}
    if len(names) - 1 < MIN_BLOCKS:
        why = f"only {len(names) - 1} block(s): no spread among blocks to compare with"
        return check(claim, crit, nums, holds=None, why=why, lesson="L09")
    blocks = m[1:]
    ratio = float(_apart_ratio(m))
    group, side, gap = _largest_gap(m, names)
    nums.update(blocks_min=float(blocks.min()), blocks_max=float(blocks.max()), ratio=ratio)
    if few or boot is None:
        return check(claim, crit, nums, holds=None, why=few, lesson="L09")
    low, high = _interval(_apart_ratio(boot))
    holds = interval_verdict(low, high, above=APART_RATIO)
    nums["interval"] = [low, high]
    nums["apart"] = group
    spread = float(blocks.max() - blocks.min())
    if holds is True:
        why = (
            f"the embedding's mean ({m[0]:.3f} nats) lies {ratio:.3g} x the blocks' range ({spread:.3f}) "
            f"from the nearest block: the embedding stands apart, the blocks stay together"
        )
    elif holds is False:
        why = (
            f"the embedding is only {ratio:.3g} x the blocks' range ({spread:.3f} nats) from the nearest block; "
            f"the largest gap between layer means ({gap:.3f} nats) sets {group} apart ({side} the others)"
        )
    else:
        why = f"the bootstrap interval of the ratio [{low:.3g}, {high:.3g}] straddles {APART_RATIO:g}"
    return check(claim, crit, nums, holds=holds, why=why, lesson="L09")


def _relative_range(m: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (m.max(-1) - m.min(-1)) / m.mean(-1)


def _bias_finding(m: np.ndarray, boot: np.ndarray | None, names: list[str], few: str) -> Finding:
    claim = "the shuffle-null bias is about the same at every layer (a global offset)"
    crit = (
        f"mean shuffle-null MI over pairs: (largest - smallest layer) / mean over layers <= {BIAS_TOLERANCE:.0%}, "
        f"{CONFIDENCE:.0%} bootstrap interval over hidden dimensions"
    )
    rel = float(_relative_range(m))
    hi, lo = int(np.argmax(m)), int(np.argmin(m))
    nums: dict = {"first": float(m[0]), "last": float(m[-1]), "relative_range": rel}
    nums.update(highest=names[hi], lowest=names[lo])
    if few or boot is None:
        return check(claim, crit, nums, holds=None, why=few, lesson="L09")
    low, high = _interval(_relative_range(boot))
    above = interval_verdict(low, high, above=BIAS_TOLERANCE)
    holds = None if above is None else not above
    nums["interval"] = [low, high]
    direction = "falls" if m[-1] < m[0] else "rises" if m[-1] > m[0] else "stays"
    span = (
        f"the null mean {direction} from {m[0]:.2f} nats at {names[0]} to {m[-1]:.2f} at {names[-1]} "
        f"(highest {m[hi]:.2f} at {names[hi]}, lowest {m[lo]:.2f} at {names[lo]}), a range of {rel:.0%} of its mean"
    )
    why = {
        True: f"{span}: one offset fits every layer",
        False: f"{span}: the bias differs by layer, so compare layers on null-corrected MI",
        None: f"{span}; the interval [{low:.0%}, {high:.0%}] straddles {BIAS_TOLERANCE:.0%}",
    }[holds]
    return check(claim, crit, nums, holds=holds, why=why, lesson="L09")


def kendall_tau(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between ``a`` and ``b`` along the last axis (as ``scipy.stats.kendalltau``),
    batched over leading axes; NaN where either is constant.

    Example:
        >>> float(kendall_tau(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])))
        0.333...
    """
    sa = np.sign(a[..., :, None] - a[..., None, :])
    sb = np.sign(b[..., :, None] - b[..., None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        return (sa * sb).sum((-2, -1)) / np.sqrt((sa * sa).sum((-2, -1)) * (sb * sb).sum((-2, -1)))


def _rank_finding(
    raw: np.ndarray, cor: np.ndarray, b_raw: np.ndarray | None, b_cor: np.ndarray | None, names: list[str], few: str
) -> Finding:
    claim = "the bias is a global shift, so raw MI ranks the layers as the null-corrected MI does"
    crit = (
        f"Kendall's tau between the layers' mean raw and mean null-corrected MI > {RANK_TAU:g}, "
        f"{CONFIDENCE:.0%} bootstrap interval over hidden dimensions"
    )
    tau = float(kendall_tau(raw, cor))
    rank_raw = np.argsort(np.argsort(-raw, kind="stable"), kind="stable")
    rank_cor = np.argsort(np.argsort(-cor, kind="stable"), kind="stable")
    moved = int((rank_raw != rank_cor).sum())
    nums: dict = {"tau": tau, "top_raw": names[int(np.argmax(raw))], "top_corrected": names[int(np.argmax(cor))]}
    nums["layers_moved"] = moved
    if few or b_raw is None or b_cor is None:
        return check(claim, crit, nums, holds=None, why=few, lesson="L09")
    low, high = _interval(kendall_tau(b_raw, b_cor))
    holds = interval_verdict(low, high, above=RANK_TAU)
    nums["interval"] = [low, high]
    order = (
        f"highest mean MI: {nums['top_raw']} raw, {nums['top_corrected']} corrected; lowest: "
        f"{names[int(np.argmin(raw))]} raw, {names[int(np.argmin(cor))]} corrected; "
        f"{moved} of {len(names)} layers change rank"
    )
    if math.isnan(tau) or math.isnan(low):
        why = "a layer ranking is undefined (every layer has the same mean)"
        return check(claim, crit, nums, holds=None, why=why, lesson="L09")
    why = {
        True: f"{order}: raw comparisons between layers stand",
        False: f"{order}: the ranking changes once the null is subtracted, so raw comparisons mislead",
        None: f"{order}; the interval of tau [{low:.2f}, {high:.2f}] straddles {RANK_TAU:g}",
    }[holds]
    return check(claim, crit, nums, holds=holds, why=why, lesson="L09")


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
