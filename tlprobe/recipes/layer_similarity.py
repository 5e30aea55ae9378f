"""L03: token-related similarities across layers, and per head.

For a target word in many sentences, at every layer: how much its representation varies across
contexts (variance and mean of each coordinate, residual stream and fused [Q | K | V]), and how
the L02 Q/K/V block similarity distributions change with depth (stacked per-layer histograms).
The same numbers per head, as [layer x head] maps.

Copy this file (``tlprobe cp layer-similarity my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from tlprobe.access.hooks import attention_pattern, fused_qkv, hook_names, resid_hook_names, resid_stack, split_heads
from tlprobe.access.labels import head_labels, layer_labels, resid_labels
from tlprobe.analyses.moments import sample_moments
from tlprobe.analyses.similarity import qkv_block_similarity, undefined_features
from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.depth import (
    block_summary_curves_figure,
    depth_histogram_figure,
    head_heatmap_figure,
    moment_curves_figure,
)
from tlprobe.recipes.common import (
    RecipeResult,
    TargetOptions,
    option,
    prose,
    resolve,
    run_targets,
    script_main,
    setup,
    target_sentences,
)
from tlprobe.report import Report

NAME = "layer-similarity"
DESCRIPTION = "L03: Q/K/V similarity and across-context variance of a target word through all layers, per head too"
POPULATIONS = ("target", "non-target")
METHODS = ("cosine", "correlation")


@dataclass(frozen=True)
class Options(TargetOptions):
    bins: int = option(60, doc="histogram bins over [-1, 1]")


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(bins=30)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    prompts = target_sentences(o.sentences, "the across-layer similarity")
    r = setup(NAME, o)
    info, text = r.info, prose(NAME)
    layers = list(range(info.n_layers))

    # 1. Run the sentences once; find the target and a random earlier token in each.
    names = hook_names(["q", "k", "v", "pattern"], layers, model=r.model) + resid_hook_names(r.model)
    batch, tpos, npos = run_targets(r.model, prompts, o.target, names, o.seed, o.progress)
    qkv = torch.stack([fused_qkv(batch.cache, layer) for layer in layers])  # [layer, batch, pos, 3n]
    resid = resid_stack(batch.cache)  # [depth, batch, pos, d_model]

    def at(acts):  # [depth, batch, pos, F] -> [population, depth, samples, F]
        return torch.stack([pos.gather(acts.movedim(0, 2)).movedim(1, 0) for pos in (tpos, npos)])

    qkv_pops, resid_pops = at(qkv), at(resid)
    heads = split_heads(qkv_pops, info.n_heads)  # [population, layer, head, samples, 3 * d_head]
    r.lap("forward")

    # Where a population's vectors are the same in every sentence (layer 0 of a rotary model), the
    # correlation is undefined: NaN there, and a finding in the report; other constant coordinates raise.
    same = identical_across_sentences(qkv_pops, layer_labels(info.n_layers))
    undefined = "nan" if same else "raise"

    # 2. Moments across samples, block similarity per layer and per head.
    by_layer = {"population": POPULATIONS, "layer": layer_labels(info.n_layers)}
    by_head = {**by_layer, "head": head_labels(info.n_heads)}
    by_depth = {"population": POPULATIONS, "depth": resid_labels(info.n_layers)}
    moments = {
        "residual stream": sample_moments(resid_pops, axes=by_depth),
        "Q|K|V": sample_moments(qkv_pops, axes=by_layer),
    }
    head_moments = sample_moments(heads, axes=by_head)
    stats = {m: qkv_block_similarity(qkv_pops, m, bins=o.bins, axes=by_layer, undefined=undefined) for m in METHODS}
    head_stats = {m: qkv_block_similarity(heads, m, bins=o.bins, axes=by_head, undefined=undefined) for m in METHODS}
    r.lap("analysis")

    # 3. Figures and report.
    model, n_features = info.name.rsplit("/", 1)[-1], int(qkv_pops.shape[-1])
    report = Report(text["title"].format(target=o.target, model=model, n_layers=info.n_layers), subtitle=DESCRIPTION)
    report.heading("What this shows")
    report.text(text["shows"].format(n_sentences=len(prompts), target=o.target, n_features=n_features))
    report.text(text["found"])
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
    pattern, tokens, causal = attention_pattern(batch.cache, focus)[0], batch.str_tokens(0), not info.is_encoder
    report.view(attention_heads_view(pattern, tokens, focus, causal=causal, mask=batch.attention_mask[0]))
    report.table(stats["cosine"]["target"].rows(), caption="Cosine, targets: summary per layer and block")
    r.lap("figures")

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
    return r.finish(report, results=results, facts=facts)


def identical_across_sentences(qkv_pops: torch.Tensor, layers: tuple[str, ...]) -> list[dict]:
    """The (population, layer) items whose ``[population, layer, samples, F]`` vectors are identical
    in every sentence (within float rounding, as :func:`undefined_features` decides), with the
    measured largest difference across sentences."""
    identical = undefined_features(qkv_pops, "correlation").all(-1)  # [population, layer]
    spread = (qkv_pops.amax(-2) - qkv_pops.amin(-2)).abs().amax(-1)
    return [
        {
            "population": POPULATIONS[p],
            "layer": layers[layer],
            "n_sentences": int(qkv_pops.shape[-2]),
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


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
