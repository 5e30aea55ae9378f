"""L03: token-related similarities across layers, and per head.

For a target word in many sentences, at every layer: how much its representation varies across
contexts (variance and mean of each coordinate, residual stream and fused [Q | K | V]), and how
the L02 Q/K/V block similarity distributions change with depth (stacked per-layer histograms).
The same numbers per head, as [layer x head] maps.

Copy this file (``tlprobe cp layer-similarity my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tlprobe.access.corpus import stream
from tlprobe.access.hooks import attention_pattern, fused_qkv, hook_names, resid_hook_names, resid_stack, split_heads
from tlprobe.access.labels import head_labels, layer_labels, resid_labels
from tlprobe.access.run import run_batch, tokenize_prompts
from tlprobe.access.tokens import Positions
from tlprobe.analyses.moments import Moments
from tlprobe.analyses.similarity import BlockStats
from tlprobe.analyses.stats import bootstrap_interval, spearman
from tlprobe.analyses.streaming import MomentsAccumulator, SimilarityAccumulator
from tlprobe.checks import as_int
from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.depth import (
    block_summary_curves_figure,
    depth_histogram_figure,
    head_heatmap_figure,
    moment_curves_figure,
)
from tlprobe.findings import Finding, check, fmt_percent, interval_verdict
from tlprobe.recipes.common import (
    RecipeResult,
    TargetOptions,
    option,
    prose,
    resolve,
    script_main,
    setup,
    target_positions,
    target_sentences,
)
from tlprobe.report import Report

NAME = "layer-similarity"
DESCRIPTION = "L03: Q/K/V similarity and across-context variance of a target word through all layers, per head too"
POPULATIONS = ("target", "non-target")
METHODS = ("cosine", "correlation")

# The criteria of the findings: fixed here, stated in each criterion's text, never tuned to a run.
#: A depth trend counts when Spearman's rho (statistic vs layer) is beyond this, in the claimed direction.
TREND_RHO = 0.5
#: Fewest layers for a trend, and fewest heads per layer (the replicates of a layer's statistic).
MIN_LAYERS = 3
MIN_HEADS = 3
#: Bootstrap resamples and confidence level of every interval.
N_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Options(TargetOptions):
    bins: int = option(60, doc="histogram bins over [-1, 1]")
    batch_size: int = option(32, doc="sentences per forward pass (memory stays that of one batch)")
    checkpoint: str | None = option(
        None, doc="file for the streamed statistics: saved every --checkpoint-every batches, resumed from", record=False
    )
    checkpoint_every: int = option(20, doc="batches between checkpoints", record=False)


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(bins=30)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    prompts = target_sentences(o.sentences, "the across-layer similarity")
    r = setup(NAME, o)
    info, text = r.info, prose(NAME)
    layers = list(range(info.n_layers))

    # 1. Find the target and draw a random earlier token in each sentence (ints, for all sentences up
    # front: the draw is the in-memory run's), then stream the sentences batch by batch into the
    # accumulators: memory is that of one batch, whatever the number of sentences.
    ck = {"checkpoint": o.checkpoint, "every": o.checkpoint_every, "progress": o.progress}
    acc, tpos, npos = accumulate(r.model, prompts, o.target, o.seed, batch_size=o.batch_size, **ck)
    r.lap("forward")

    # Where a population's vectors are the same in every sentence (layer 0 of a rotary model), the
    # correlation is undefined: NaN there, and a finding in the report; other constant coordinates raise.
    same = identical_across_sentences(acc["similarity Q|K|V"], layer_labels(info.n_layers))
    undefined = "nan" if same else "raise"

    # 2. Moments across samples, block similarity per layer and per head.
    by_layer = {"population": POPULATIONS, "layer": layer_labels(info.n_layers)}
    by_head = {**by_layer, "head": head_labels(info.n_heads)}
    by_depth = {"population": POPULATIONS, "depth": resid_labels(info.n_layers)}
    moments = {
        "residual stream": acc["moments residual stream"].result(axes=by_depth),
        "Q|K|V": acc["moments Q|K|V"].result(axes=by_layer),
    }
    head_moments = acc["moments Q|K|V per head"].result(axes=by_head)
    sim, head_sim = acc["similarity Q|K|V"], acc["similarity Q|K|V per head"]
    stats = {m: sim.block_stats(m, bins=o.bins, axes=by_layer, undefined=undefined) for m in METHODS}
    head_stats = {m: head_sim.block_stats(m, bins=o.bins, axes=by_head, undefined=undefined) for m in METHODS}
    r.lap("analysis")

    # 3. Figures and report.
    assert sim.shape is not None
    model, n_features = info.name.rsplit("/", 1)[-1], int(sim.shape[-1])
    report = Report(text["title"].format(target=o.target, model=model, n_layers=info.n_layers), subtitle=DESCRIPTION)
    report.heading("What this shows")
    report.text(text["shows"].format(n_sentences=len(prompts), target=o.target, n_features=n_features))
    report.text(text["lesson_result"])
    if same:
        identical_section(report, same, text, target=o.target, rotary=info.rotary)
    report.heading("Block summaries across depth")
    report.figure(block_summary_curves_figure(stats), caption=text["summary_caption"])
    for pop in POPULATIONS:
        title = f"Similarity per block across depth ({pop}s)"
        fig = depth_histogram_figure({m: st[pop] for m, st in stats.items()}, title=title)
        report.figure(fig, caption=text["histogram_caption"].format(population=pop))
    report.heading("Variance across contexts")
    report.text(text["variance"])
    report.figure(moment_curves_figure(moments))
    report.heading("Per head")
    report.text(text["per_head"])
    for m, st in head_stats.items():  # st[:1]: the targets, labelled so in the panel titles
        report.figure(head_heatmap_figure(st[:1], "frac_extreme", title=f"Targets, {m}: fraction |s| > 0.9 per head"))
    rel_var_title = "Relative variance across contexts per head (Q|K|V slice)"
    report.figure(head_heatmap_figure(head_moments, "rel_var", cols=2, title=rel_var_title))
    top = head_stats["cosine"]["target"].rows(block="QK", sort_by="frac_extreme", k=10)
    report.table(top, caption="Heads with the most extreme cosine QK similarities (targets)")
    focus = by_layer["layer"].index(top[0]["layer"])
    report.text(text["attention"].format(layer=focus, head=top[0]["layer"] + top[0]["head"]))
    first = run_batch(r.model, prompts[:1], names=hook_names(["pattern"], [focus], model=r.model))  # sentence 0 alone
    pattern, tokens, causal = attention_pattern(first.cache, focus)[0], first.str_tokens(0), not info.is_encoder
    report.view(attention_heads_view(pattern, tokens, focus, causal=causal, mask=first.attention_mask[0]))
    report.table(stats["cosine"]["target"].rows(), caption="Cosine, targets: summary per layer and block")
    r.lap("figures")

    found = findings(stats, head_stats["cosine"], head_moments, residual=moments["residual stream"], seed=o.seed)
    results = {
        **stats,
        **{f"per_head {m}": st for m, st in head_stats.items()},
        **{f"moments {source}": mo for source, mo in moments.items()},
        "moments Q|K|V per head": head_moments,
    }
    facts = {
        "layers": layers,
        "n_sentences": len(prompts),
        "n_features": n_features,
        "target_positions": tpos.pos,
        "non_target_positions": npos.pos,
        "identical_across_sentences": same,
    }
    return r.finish(report, results=results, facts=facts, findings=found)


#: The accumulators :func:`accumulate` fills: ``[population, layer(, head), samples, features]``.
ACCUMULATORS = (
    "moments residual stream",
    "moments Q|K|V",
    "moments Q|K|V per head",
    "similarity Q|K|V",
    "similarity Q|K|V per head",
)


def sentence_batches(
    tokens: torch.Tensor, mask: torch.Tensor, tpos: Positions, npos: Positions, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """The right-padded sentences in batches of ``batch_size``, each trimmed to its longest sentence,
    with the target's and the non-target's position in each row (``"target_pos"``, ``"non_target_pos"``).

    Example:
        >>> tokens, mask = torch.ones(3, 5, dtype=torch.long), torch.tensor([[1, 1, 0, 0, 0]] * 2 + [[1] * 4 + [0]])
        >>> pos = Positions(torch.arange(3), torch.tensor([1, 1, 3]))
        >>> [tuple(b["tokens"].shape) for b in sentence_batches(tokens, mask, pos, pos, 2)]
        [(2, 2), (1, 4)]
    """
    batch_size = as_int(batch_size, "batch_size", minimum=1, fix="sentences per forward pass, e.g. 32")
    out = []
    for s in range(0, int(tokens.shape[0]), batch_size):
        e = min(int(tokens.shape[0]), s + batch_size)
        length = int(mask[s:e].sum(-1).max())  # right padding: every real token is in the first `length`
        out.append(
            {
                "tokens": tokens[s:e, :length],
                "attention_mask": mask[s:e, :length],
                "target_pos": tpos.pos[s:e].clone(),
                "non_target_pos": npos.pos[s:e].clone(),
            }
        )
    return out


def accumulate(
    model,
    prompts: list[str],
    target: str,
    seed: int,
    *,
    batch_size: int = 32,
    checkpoint: str | None = None,
    every: int = 20,
    progress: bool = False,
) -> tuple[dict, Positions, Positions]:
    """Stream the sentences through ``model`` into the accumulators of :data:`ACCUMULATORS`.

    The positions are those of the in-memory run (:func:`~tlprobe.recipes.common.target_positions`
    on all the sentences' tokens, right-padded together); each batch then runs trimmed to its
    longest sentence (right padding and the attention mask leave every real token's vectors as
    they are) and only the two rows per sentence are folded in. Under ``torch.distributed`` each
    rank runs its share of the batches and the accumulators are all-reduced.

    Returns:
        ``(accumulators, target_positions, non_target_positions)``: the accumulators over
        ``[population, layer, samples, 3 n]`` (Q|K|V), ``[population, depth, samples, d_model]``
        (residual stream) and ``[population, layer, head, samples, 3 d_head]`` (per head).
    """
    tokens, mask = tokenize_prompts(model, prompts)
    tpos, npos = target_positions(model, tokens, mask, prompts, target, seed)
    batches = sentence_batches(tokens, mask, tpos, npos, batch_size)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    layers = list(range(n_layers))
    names = hook_names(["q", "k", "v"], layers, model=model) + resid_hook_names(model)

    def feed(cache, batch, acc) -> None:
        qkv = torch.stack([fused_qkv(cache, layer) for layer in layers])  # [layer, b, pos, 3n]
        resid = resid_stack(cache)  # [depth, b, pos, d_model]

        def at(acts):  # [depth, b, pos, F] -> [population, depth, b, F]
            rows = torch.arange(acts.shape[1], device=acts.device)
            return torch.stack([acts[:, rows, batch[k].to(acts.device)] for k in ("target_pos", "non_target_pos")])

        qkv_pops, resid_pops = at(qkv), at(resid)
        acc["moments residual stream"].update(resid_pops)
        acc["moments Q|K|V"].update(qkv_pops)
        acc["similarity Q|K|V"].update(qkv_pops)
        heads = split_heads(qkv_pops, n_heads)  # [population, layer, head, b, 3 * d_head]
        acc["moments Q|K|V per head"].update(heads)
        acc["similarity Q|K|V per head"].update(heads)

    acc = {k: (MomentsAccumulator() if k.startswith("moments") else SimilarityAccumulator()) for k in ACCUMULATORS}
    name = str(getattr(model.cfg, "model_name", ""))
    stream(
        model,
        batches,
        acc,
        feed,
        names=names,
        checkpoint=checkpoint,
        every=every,
        settings=(NAME, name, target),
        progress=progress,
        desc="sentences",
    )
    return acc, tpos, npos


def identical_across_sentences(acc: SimilarityAccumulator, layers: tuple[str, ...]) -> list[dict]:
    """The (population, layer) items whose vectors are identical in every sentence, from the
    accumulated ``[population, layer, samples, F]`` Q|K|V statistics, with the measured largest
    difference across sentences.

    The criterion of :func:`~tlprobe.analyses.similarity.undefined_features` (``"correlation"``)
    on the whole stream (:meth:`SimilarityAccumulator.undefined_features`).
    """
    assert acc.lo is not None and acc.hi is not None
    n = acc.n_samples
    identical = acc.undefined_features("correlation").all(-1)  # [population, layer]
    spread = (acc.hi - acc.lo).abs().amax(-1).to(acc.work_dtype).cpu()
    return [
        {
            "population": POPULATIONS[p],
            "layer": layers[layer],
            "n_sentences": n,
            "max_abs_difference": float(spread[p, layer]),
        }
        for p, layer in identical.nonzero().tolist()
    ]


def identical_section(report: Report, same: list[dict], text: dict[str, str], *, target: str, rotary: bool) -> None:
    """The finding "vectors identical in every sentence": which layers, how many sentences, the reason."""
    report.heading("Where the correlation is undefined")
    layer_order = [row["layer"] for row in same]
    layers_text = ", ".join(sorted(set(layer_order), key=layer_order.index))
    pops_text = " and ".join(sorted({row["population"] for row in same}, key=POPULATIONS.index))
    largest = max(row["max_abs_difference"] for row in same)
    report.text(
        text["identical"].format(
            layers=layers_text,
            populations=pops_text,
            n_sentences=same[0]["n_sentences"],
            max_abs_difference=largest,
            target=target,
        )
    )
    report.text(text["identical_rotary" if rotary else "identical_not_rotary"])
    report.table(same, caption="Vectors identical in every sentence: correlation undefined (NaN)")


# -- findings: the lesson's claims, checked on this run's results ----------------------------


def findings(
    stats: Mapping[str, BlockStats],
    head_cosine: BlockStats,
    head_moments: Moments,
    *,
    residual: Moments | None = None,
    seed: int = 0,
) -> list[Finding]:
    """The claims of lesson L03, each checked on this run's results (no model needed).

    The replicates of a layer are its heads (each head's own Q|K|V slice): the intervals are
    seeded percentile bootstraps over them (layer by layer for a difference, over the (layer,
    head) points for a trend's Spearman rho).

    Args:
        stats: method -> :class:`BlockStats` over ``[population, layer]``; ``"cosine"`` is read.
        head_cosine: cosine :class:`BlockStats` over ``[population, layer, head]``.
        head_moments: :class:`Moments` over ``[population, layer, head]`` (Q|K|V slices).
        residual: the residual stream's :class:`Moments` over ``[population, depth]``, if any: its
            relative variance at the first and last depth is shown beside the Q|K|V claim.
        seed: seed of the bootstraps.

    Returns:
        One :class:`~tlprobe.findings.Finding` per claim.
    """
    cos = stats["cosine"]["target"]
    layers = list(cos.axes.get("layer", [str(i) for i in range(int(cos.frac_extreme.shape[0]))]))
    per_layer = pooled_fraction(cos)  # [layer]
    per_head = pooled_fraction(head_cosine["target"])  # [layer, head]
    rel_var = head_moments["target"].rel_var.double().numpy()  # [layer, head]
    n_layers, n_heads = per_head.shape
    too_few = (
        f"{n_layers} layers x {n_heads} heads: need {MIN_LAYERS} layers and {MIN_HEADS} heads (the replicates)"
        if n_layers < MIN_LAYERS or n_heads < MIN_HEADS
        else ""
    )
    extreme = f"|s| > {cos.extreme:g}"
    curve = {"by_layer": [float(v) for v in per_layer]}
    out = []

    # 1. Early layers crowd near +-1: the first layer has the most extremes.
    claim = "early layers: cosine similarities crowd near +1 and -1 (the first layer has the most extremes)"
    crit = (
        f"targets, cosine fraction {extreme} (all blocks pooled): first layer minus the next highest layer, "
        f"{CONFIDENCE:.0%} bootstrap interval over heads above 0"
    )
    if too_few:
        out.append(check(claim, crit, curve, holds=None, why=too_few, lesson="L03"))
    else:
        rest = 1 + int(np.argmax(per_layer[1:]))
        low, high = _gap_interval(per_head, 0, rest, seed)
        holds = interval_verdict(low, high, above=0.0)
        first, other = _at(per_layer, layers, 0), _at(per_layer, layers, rest)
        why = {
            True: f"{first} vs at most {other}: the static token identity dominates the first layer",
            False: f"{first} vs {other}: a deeper layer has as many extremes",
            None: f"{first} vs {other}; the per-head interval straddles 0",
        }[holds]
        nums = {**curve, "next_highest": layers[rest], "interval": [low, high]}
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L03"))

    # 2. Deeper, the distributions converge toward 0: fewer extremes with depth.
    claim = "deeper layers: the cosine similarities converge toward 0 (fewer extremes with depth)"
    crit = (
        f"Spearman rho of the targets' cosine fraction {extreme} per head vs layer < -{TREND_RHO:g}, "
        f"{CONFIDENCE:.0%} bootstrap interval over (layer, head) points"
    )
    if too_few:
        out.append(check(claim, crit, curve, holds=None, why=too_few, lesson="L03"))
    else:
        rho, (low, high) = spearman_trend(per_head, seed)
        below = interval_verdict(-high, -low, above=TREND_RHO)  # rho wholly below -TREND_RHO
        trough = int(np.argmin(per_layer))
        shape = f"falls from {fmt_percent(per_layer[0])} to {fmt_percent(per_layer[trough])} at {layers[trough]}"
        if trough < n_layers - 1:
            again = "rises again to" if per_layer[-1] > per_layer[trough] else "is"
            shape += f", then {again} {fmt_percent(per_layer[-1])} at {layers[-1]}"
        why = {
            True: f"the fraction {shape}: overall it falls with depth",
            False: f"the fraction {shape}: no clear fall with depth (rho {rho:.2f})",
            None: f"the fraction {shape}; the interval of rho straddles -{TREND_RHO:g}",
        }[below]
        nums = {**curve, "rho": rho, "interval": [low, high]}
        out.append(check(claim, crit, nums, holds=below, why=why, lesson="L03"))

    # 3. The convergence goes on to the last layer (no rebound at the end).
    claim = "the convergence goes on to the last layer (it is at least as close to 0 as any layer before)"
    crit = (
        f"targets' cosine fraction {extreme}: last layer minus the lowest earlier layer, {CONFIDENCE:.0%} "
        "bootstrap interval over heads not above 0"
    )
    if too_few:
        out.append(check(claim, crit, curve, holds=None, why=too_few, lesson="L03"))
    else:
        trough = int(np.argmin(per_layer[:-1]))
        low, high = _gap_interval(per_head, -1, trough, seed)
        rises = interval_verdict(low, high, above=0.0)
        last, low_text = _at(per_layer, layers, -1), _at(per_layer, layers, trough)
        why = {
            True: f"the extremes rise again at the last layer ({last} vs {low_text}): not a monotone convergence",
            False: f"the last layer has no more extremes than the lowest before it ({last} vs {low_text})",
            None: f"{last} vs {low_text}; the per-head interval straddles 0",
        }[rises]
        nums = {**curve, "lowest_before": layers[trough], "interval": [low, high]}
        out.append(check(claim, crit, nums, holds=None if rises is None else not rises, why=why, lesson="L03"))

    # 4. Deeper layers carry more context: the target varies more across sentences.
    claim = "deeper layers encode more context: the target's Q|K|V vary more across sentences with depth"
    crit = (
        f"Spearman rho of the targets' relative variance across sentences per head vs layer > {TREND_RHO:g}, "
        f"{CONFIDENCE:.0%} bootstrap interval over (layer, head) points"
    )
    nums: dict = {"mean_head_rel_var": [float(v) for v in rel_var.mean(-1)]}
    stream = ""
    if residual is not None:
        rv = residual["target"].rel_var.double().numpy()
        nums["residual_rel_var_first_last"] = [float(rv[0]), float(rv[-1])]
        stream = f"; the residual stream's goes {rv[0]:.2g} -> {rv[-1]:.2g}"
    if too_few:
        out.append(check(claim, crit, nums, holds=None, why=too_few, lesson="L03"))
    else:
        rho, (low, high) = spearman_trend(rel_var, seed)
        above = interval_verdict(low, high, above=TREND_RHO)
        by_layer = nums["mean_head_rel_var"]
        change = f"per-head relative variance {by_layer[0]:.2g} at {layers[0]}, {by_layer[-1]:.2g} at {layers[-1]}"
        why = {
            True: f"{change}{stream}: the target's vectors depend more on their sentence deeper in",
            False: f"{change} (rho {rho:.2f}){stream}: the Q|K|V vectors do not vary more across sentences with depth",
            None: f"{change}{stream}; the interval of rho straddles {TREND_RHO:g}",
        }[above]
        nums.update(rho=rho, interval=[low, high])
        out.append(check(claim, crit, nums, holds=above, why=why, lesson="L03"))
    return out


def pooled_fraction(st: BlockStats) -> np.ndarray:
    """Fraction of extremes over all blocks' pairs (blocks weighted by their pair counts): ``[...]``."""
    w = st.count.double() / st.count.sum()
    return (st.frac_extreme.double() * w).sum(-1).numpy()


def spearman_trend(values: np.ndarray, seed: int) -> tuple[float, tuple[float, float]]:
    """Spearman rho of ``[layer, head]`` values vs the layer index, and its seeded bootstrap interval
    over the (layer, head) points."""
    depth = np.repeat(np.arange(values.shape[0], dtype=float), values.shape[1])
    flat = np.asarray(values, dtype=float).reshape(-1)
    if not np.isfinite(flat).all() or np.ptp(flat) == 0:
        return float("nan"), (float("nan"), float("nan"))
    rho = float(spearman(depth, flat))
    return rho, bootstrap_interval(
        [depth, flat], spearman, seed=seed, n_resamples=N_RESAMPLES, confidence=CONFIDENCE, paired=True
    )


def _gap_interval(per_head: np.ndarray, a: int, b: int, seed: int) -> tuple[float, float]:
    """Bootstrap interval of layer ``a``'s mean over heads minus layer ``b``'s (heads resampled per layer)."""
    return bootstrap_interval(
        [per_head[a], per_head[b]],
        _mean_difference,
        seed=seed,
        n_resamples=N_RESAMPLES,
        confidence=CONFIDENCE,
        paired=False,
    )


def _at(per_layer: np.ndarray, layers: Sequence[str], i: int) -> str:
    """``'9.5% at L3'``."""
    return f"{fmt_percent(per_layer[i])} at {layers[i]}"


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return a.mean(axis) - b.mean(axis)


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
