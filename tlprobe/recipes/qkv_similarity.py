"""L02: token-related similarities within and across Q, K and V.

The target word's fused [Q | K | V] vector at one layer, in every sentence, is a sample; the
feature-by-feature similarity across samples (cosine, then Pearson correlation) is split into
the six Q/K/V blocks and compared with non-target tokens and shuffled baselines.

Copy this file (``tlprobe cp qkv-similarity my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from tlprobe.access.hooks import attention_pattern, fused_qkv, hook_names, split_heads
from tlprobe.access.labels import head_labels
from tlprobe.analyses.similarity import BlockStats, qkv_block_similarity, shuffle_values
from tlprobe.analyses.stats import bootstrap_interval
from tlprobe.checks import check_index
from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.depth import head_block_figure
from tlprobe.figures.similarity import block_histogram_figure, extreme_fraction_figure
from tlprobe.findings import Finding, check, fmt_percent, interval_verdict
from tlprobe.recipes.common import (
    RecipeResult,
    TargetOptions,
    gather_targets,
    option,
    prose,
    resolve,
    script_main,
    setup,
    target_sentences,
)
from tlprobe.report import Report

NAME = "qkv-similarity"
DESCRIPTION = "L01-L02: similarity within and across Q, K, V for a target word at one layer (cosine vs correlation)"
POPULATIONS = ("target", "non-target", "shuffled (all values)", "permuted (per feature)")
METHODS = ("cosine", "correlation")

# The criteria of the findings: fixed here, stated in each criterion's text, never tuned to a run.
#: Cosine extremes count as "far more frequent" when at least this many times correlation's.
EXTREME_RATIO = 2.0
#: QK is "dense at high similarity" when at least this share of its extremes is near +1 (2:1).
POSITIVE_SHARE = 2 / 3
#: Two spreads are "alike" when their ratio lies within [1 / ALIKE_RATIO, ALIKE_RATIO].
ALIKE_RATIO = 1.25
#: Fewest per-head replicates for an interval (a --head run has none).
MIN_REPLICATES = 3
#: Bootstrap resamples and confidence level of every interval.
N_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Options(TargetOptions):
    layer: int | None = option(None, doc="block index (default: the middle layer)")
    head: int | None = option(None, doc="only this head's Q, K, V slices (default: all heads)")
    bins: int = option(60, doc="histogram bins over [-1, 1]")


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(layer=2)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    prompts = target_sentences(o.sentences, "the Q/K/V similarity")
    r = setup(NAME, o)
    info, text = r.info, prose(NAME)
    layer = check_index(info.n_layers // 2 if o.layer is None else o.layer, info.n_layers, "--layer")
    head = None if o.head is None else check_index(o.head, info.n_heads, "--head")  # -1: the last head

    # 1. Run the sentences, find the target and a random earlier token in each.
    # Only the two positions of each sentence are kept, batch by batch (memory ~ sentences, not tokens).
    names, view = hook_names(["q", "k", "v"], [layer], model=r.model), hook_names(["pattern"], [layer], model=r.model)
    acts = gather_targets(r.model, prompts, o.target, names, o.seed, o.progress, view_names=view)
    tpos, npos = acts.target_positions, acts.non_target_positions
    r.lap("forward")

    # 2. Four populations of [samples, features]: targets, non-targets, and two null models.
    targets = fused_qkv(acts.target, layer, head=head)[:, 0]  # [samples, 3 * n]
    nulls = [shuffle_values(targets, mode, seed=o.seed) for mode in ("all", "within-feature")]
    pops = torch.stack([targets, fused_qkv(acts.non_target, layer, head=head)[:, 0], *nulls])
    stats = {m: qkv_block_similarity(pops, m, bins=o.bins, axes={"population": POPULATIONS}) for m in METHODS}
    # Per-head drill-down (all heads at once): each head's own Q|K|V slice, targets only.
    per_head = {}
    if head is None:
        heads = {"head": head_labels(info.n_heads, layer=layer)}
        slices = split_heads(targets, info.n_heads)  # [head, samples, 3 * d_head]
        per_head = {m: qkv_block_similarity(slices, m, bins=o.bins, axes=heads) for m in METHODS}
    r.lap("analysis")

    # 3. Figures and report.
    scope = f"layer {layer}" + (f", head {head}" if head is not None else ", all heads")
    model = info.name.rsplit("/", 1)[-1]
    report = Report(text["title"].format(target=o.target, model=model, scope=scope), subtitle=DESCRIPTION)
    report.heading("What this shows")
    n_features = int(targets.shape[-1])
    report.text(text["shows"].format(n_sentences=len(prompts), target=o.target, n_features=n_features, scope=scope))
    report.text(text["lesson_result"])
    report.figure(block_histogram_figure(stats), caption=text["histogram_caption"])
    report.figure(extreme_fraction_figure(stats), caption=text["extreme_caption"])
    rows = [{"method": m, **row} for m, st in stats.items() for row in st.rows()]
    report.table(rows, caption="Summary per method, population and block")
    if per_head:
        report.heading("Per head")
        report.text(text["per_head"])
        report.figure(head_block_figure(per_head, "frac_extreme"))
        report.figure(head_block_figure(per_head, "std"))
    report.heading("Attention at this layer")
    report.text(text["attention"].format(layer=layer))
    batch = acts.first
    pattern = attention_pattern(batch.cache, layer)[0]
    if head is not None:
        pattern = pattern[head : head + 1]
    tokens, causal = batch.str_tokens(0), not info.is_encoder
    heads_shown = None if head is None else [head]
    report.view(
        attention_heads_view(pattern, tokens, layer, causal=causal, heads=heads_shown, mask=batch.attention_mask[0])
    )
    r.lap("figures")

    found = findings(stats, per_head, seed=o.seed)
    results = {**stats, **{f"per_head {m}": st for m, st in per_head.items()}}
    facts = {
        "layer": layer,
        "n_sentences": len(prompts),
        "n_features": n_features,
        "target_positions": tpos.pos,
        "non_target_positions": npos.pos,
    }
    return r.finish(report, results=results, facts=facts, findings=found)


# -- findings: the lesson's claims, checked on this run's results ----------------------------


def findings(
    stats: Mapping[str, BlockStats], per_head: Mapping[str, BlockStats] | None = None, *, seed: int = 0
) -> list[Finding]:
    """The claims of lesson L02, each checked on this run's block statistics (no model needed).

    The intervals are seeded percentile bootstraps over the heads: each head's own Q|K|V slice
    (``per_head``) is one replicate of the layer's statistic; without ``per_head`` (a ``--head``
    run) the claims that need them are inconclusive.

    Args:
        stats: method (``"cosine"``, ``"correlation"``) -> :class:`BlockStats` over the
            populations of :data:`POPULATIONS` (target, non-target, shuffled, permuted).
        per_head: method -> targets' :class:`BlockStats` over the heads, or None / empty.
        seed: seed of the bootstraps.

    Returns:
        One :class:`~tlprobe.findings.Finding` per claim.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(4, 30, 12, generator=g, dtype=torch.float64) + 3 * torch.randn(4, 1, 12, generator=g)
        >>> st = {m: qkv_block_similarity(x, m, bins=20, axes={"population": POPULATIONS}) for m in METHODS}
        >>> [f.verdict for f in findings(st)][:2]
        ['inconclusive', 'inconclusive']
    """
    cos, corr = stats["cosine"]["target"], stats["correlation"]["target"]
    shuffled = stats["correlation"]["shuffled (all values)"]
    heads = dict(per_head or {})
    h_cos, h_corr = heads.get("cosine"), heads.get("correlation")
    n_heads = 0 if h_cos is None else int(h_cos.frac_extreme.shape[0])
    few = f"only {n_heads} per-head replicate(s), need {MIN_REPLICATES} for an interval (rerun without --head)"
    out = []

    # 1. The mean offsets make the extremes: cosine >> correlation.
    claim = "under cosine the extremes (|s| > 0.9) are far more frequent than under correlation"
    crit = (
        f"targets: mean over heads of (cosine - {EXTREME_RATIO:g} x correlation) fraction |s| > {cos.extreme:g}, "
        f"{CONFIDENCE:.0%} bootstrap interval above 0"
    )
    nums: dict = {"cosine": pooled_fraction(cos), "correlation": pooled_fraction(corr)}
    if h_cos is None or h_corr is None or n_heads < MIN_REPLICATES:
        out.append(check(claim, crit, nums, holds=None, why=few, lesson="L02"))
    else:
        diff = pooled_fraction(h_cos) - EXTREME_RATIO * pooled_fraction(h_corr)
        low, high = bootstrap_interval([diff], np.mean, seed=seed, n_resamples=N_RESAMPLES, confidence=CONFIDENCE)
        holds = interval_verdict(low, high, above=0.0)
        share = f"{fmt_percent(nums['cosine'])} of the pairs under cosine, {fmt_percent(nums['correlation'])} under correlation"
        why = {
            True: f"{share}: each coordinate's mean offset makes the extremes",
            False: f"{share}: removing the mean offsets leaves about as many extremes",
            None: f"{share}, but the per-head interval straddles 0",
        }[holds]
        nums.update(heads=n_heads, head_mean=float(np.mean(diff)), interval=[low, high])
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L02"))

    # 2. QK skewed toward +1 ("dense at high similarity"), not a symmetric smile.
    qk = cos.blocks.index("QK")
    claim = "QK is dense at high similarity (skewed toward +1) under cosine"
    crit = (
        f"targets, cosine QK: share of the extremes (|s| > {cos.extreme:g}) that are near +1 >= {POSITIVE_SHARE:.2f} "
        f"(2:1), {CONFIDENCE:.0%} bootstrap interval over heads"
    )
    pos, neg = tail_mass(cos, qk)
    nums = {"near_plus_1": float(pos), "near_minus_1": float(neg), "positive_share": _share(pos, neg)}
    if h_cos is None or n_heads < MIN_REPLICATES:
        out.append(check(claim, crit, nums, holds=None, why=few, lesson="L02"))
    else:
        h_pos, h_neg = tail_mass(h_cos, qk)
        nan = float("nan")
        if float(h_pos.sum() + h_neg.sum()) == 0:
            low, high = nan, nan
        else:
            low, high = bootstrap_interval(
                [h_pos, h_neg], _share_of_sums, seed=seed, n_resamples=N_RESAMPLES, confidence=CONFIDENCE
            )
        holds = interval_verdict(low, high, above=POSITIVE_SHARE)
        if math.isnan(low):
            why = "no QK pair is extreme: the share is undefined"
        else:
            why = {
                True: "QK's extremes sit near +1: queries and keys align",
                False: f"QK piles up at both ends like every block (a symmetric 'smile', {nums['positive_share']:.0%} "
                "of its extremes near +1), not mainly at +1",
                None: f"{nums['positive_share']:.0%} of QK's extremes are near +1; the per-head interval straddles "
                f"{POSITIVE_SHARE:.2f}",
            }[holds]
        nums.update(heads=n_heads, interval=[low, high])
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L02"))

    # 3. Correlation: every block looks like the shuffled baseline.
    claim = "under correlation every block looks like the shuffled baseline (a Gaussian around 0)"
    crit = (
        f"targets' correlation std (all blocks pooled) / shuffled baseline's within "
        f"[{1 / ALIKE_RATIO:.2f}, {ALIKE_RATIO:g}], {CONFIDENCE:.0%} bootstrap interval over heads"
    )
    base = pooled_std(shuffled)
    nums = {"target_std": pooled_std(corr), "shuffled_std": base, "ratio": pooled_std(corr) / base}
    if h_corr is None or n_heads < MIN_REPLICATES:
        out.append(check(claim, crit, nums, holds=None, why=few, lesson="L02"))
    else:
        low, high = bootstrap_interval(
            [pooled_std(h_corr) / base], np.mean, seed=seed, n_resamples=N_RESAMPLES, confidence=CONFIDENCE
        )
        holds = band_verdict(low, high, 1 / ALIKE_RATIO, ALIKE_RATIO)
        why = {
            True: "centring removes the structure: the targets' correlations spread like the shuffled values'",
            False: f"the targets' correlations spread {nums['ratio']:.2g} x as wide as the shuffled baseline's: "
            "the coordinates still co-vary after centring",
            None: f"the targets' correlations spread {nums['ratio']:.2g} x the shuffled baseline's; the per-head "
            "interval straddles a bound of the band",
        }[holds]
        nums.update(heads=n_heads, head_mean=float(np.mean(pooled_std(h_corr) / base)), interval=[low, high])
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L02"))

    # 4. Correlation: the blocks stop differing from one another.
    claim = "under correlation the six blocks stop differing from one another"
    crit = (
        f"targets, correlation: largest / smallest block std <= {ALIKE_RATIO:g}, mean over heads (each head's own "
        f"slice), {CONFIDENCE:.0%} bootstrap interval"
    )
    spread = _max_over_min(corr.std)
    nums = {"layer_ratio": spread}
    if h_corr is None or n_heads < MIN_REPLICATES:
        out.append(check(claim, crit, nums, holds=None, why=few, lesson="L02"))
    else:
        ratios = (h_corr.std.amax(-1) / h_corr.std.amin(-1)).double().numpy()
        low, high = bootstrap_interval([ratios], np.mean, seed=seed, n_resamples=N_RESAMPLES, confidence=CONFIDENCE)
        above = interval_verdict(low, high, above=ALIKE_RATIO)
        holds = None if above is None else not above
        why = {
            True: "after centring, the blocks' spreads agree within each head",
            False: f"within a head the blocks' spreads still differ (mean largest/smallest {float(ratios.mean()):.2g}; "
            f"{spread:.2g} over the whole layer)",
            None: f"over the whole layer the blocks' spreads agree within {spread:.2g} x, but within a head they "
            f"differ by {float(ratios.mean()):.2g} x on average; the interval straddles {ALIKE_RATIO:g}",
        }[holds]
        nums.update(head_ratio=float(ratios.mean()), heads=n_heads, interval=[low, high])
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L02"))

    # 5. The per-feature permutation keeps each mean and so (on a real model) the cosine extremes.
    perm = stats["cosine"]["permuted (per feature)"]
    claim = "permuting each feature separately keeps the cosine extremes almost unchanged"
    crit = (
        f"cosine fraction |s| > {cos.extreme:g} (all blocks pooled), permuted / targets within "
        f"[{1 / ALIKE_RATIO:.2f}, {ALIKE_RATIO:g}] (one seeded permutation)"
    )
    t, p = pooled_fraction(cos), pooled_fraction(perm)
    nums = {"targets": t, "permuted": p, "ratio": p / t if t > 0 else float("nan")}
    if t == 0:
        out.append(check(claim, crit, nums, holds=None, why="the targets have no cosine extremes", lesson="L02"))
    else:
        holds = 1 / ALIKE_RATIO <= nums["ratio"] <= ALIKE_RATIO
        why = (
            "the extremes survive breaking the co-variation: they come from the features' mean offsets"
            if holds
            else f"the permutation changes the extremes ({nums['ratio']:.2g} x): co-variation, not only the "
            "mean offsets, makes them"
        )
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L02"))
    return out


def pooled_fraction(st: BlockStats) -> np.ndarray | float:
    """Fraction of extremes over all blocks' pairs (blocks weighted by their pair counts): ``[...]``."""
    w = st.count.double() / st.count.sum()
    value = (st.frac_extreme.double() * w).sum(-1).numpy()
    return float(value) if value.ndim == 0 else value


def pooled_std(st: BlockStats) -> np.ndarray | float:
    """Standard deviation of all blocks' values pooled (from the blocks' means and stds): ``[...]``."""
    w = st.count.double() / st.count.sum()
    mean, std = st.mean.double(), st.std.double()
    grand = (mean * w).sum(-1, keepdim=True)
    value = (((std**2 + (mean - grand) ** 2) * w).sum(-1)).sqrt().numpy()
    return float(value) if value.ndim == 0 else value


def tail_mass(st: BlockStats, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractions of a block's values in the bins beyond ``+extreme`` and below ``-extreme``: ``([...], [...])``."""
    c = st.centers
    prob = st.prob[..., block, :].double()
    return prob[..., c > st.extreme].sum(-1).numpy(), prob[..., c < -st.extreme].sum(-1).numpy()


def band_verdict(low: float, high: float, lo: float, hi: float) -> bool | None:
    """True: the interval lies inside ``[lo, hi]``; False: wholly outside it; None: it straddles a bound."""
    if math.isnan(low) or math.isnan(high):
        return None
    if lo <= low and high <= hi:
        return True
    if high < lo or low > hi:
        return False
    return None


def _share(pos, neg) -> float:
    total = float(pos) + float(neg)
    return float(pos) / total if total > 0 else float("nan")


def _share_of_sums(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    p, n = pos.sum(axis), neg.sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return p / (p + n)


def _max_over_min(std: torch.Tensor) -> float:
    lo = float(std.min())
    return float(std.max()) / lo if lo > 0 else float("nan")


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
