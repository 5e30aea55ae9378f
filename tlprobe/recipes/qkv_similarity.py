"""L02: token-related similarities within and across Q, K and V.

The target word's fused [Q | K | V] vector at one layer, in every sentence, is a sample; the
feature-by-feature similarity across samples (cosine, then Pearson correlation) is split into
the six Q/K/V blocks and compared with non-target tokens and shuffled baselines.

Copy this file (``tlprobe cp qkv-similarity my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from tlprobe.access.hooks import attention_pattern, fused_qkv, hook_names, split_heads
from tlprobe.access.labels import head_labels
from tlprobe.analyses.similarity import qkv_block_similarity, shuffle_values
from tlprobe.checks import check_index
from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.depth import head_block_figure
from tlprobe.figures.similarity import block_histogram_figure, extreme_fraction_figure
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
DESCRIPTION = "L02: similarity within and across Q, K, V for a target word (cosine vs correlation)"
POPULATIONS = ("target", "non-target", "shuffled (all values)", "permuted (per feature)")
METHODS = ("cosine", "correlation")


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
    report.text(text["found"])
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

    results = {**stats, **{f"per_head {m}": st for m, st in per_head.items()}}
    facts = {
        "layer": layer,
        "n_sentences": len(prompts),
        "n_features": n_features,
        "target_positions": tpos.pos,
        "non_target_positions": npos.pos,
    }
    return r.finish(report, results=results, facts=facts)


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
