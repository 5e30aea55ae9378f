"""L11-L12: MI between tokens against their distance, and against the attention from "coffee".

One paragraph about coffee is run through the model once. At every depth of the residual
stream, the MI between every pair of tokens is estimated across the hidden dimensions
(``token_mi``), with a shuffle null (each token's dimensions permuted separately). The pair MI
is binned by the distance between the tokens, against the null binned the same way. Then, for
every occurrence of the target word, each head's attention to every other token is
rank-correlated with the MI between the two tokens in the residual stream that layer reads,
with their distance, and with MI given distance.

Copy this file (``tlprobe cp token-distance my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tlprobe.access import (
    attention_pattern,
    content_mask,
    find_token_positions,
    hook_names,
    resid_hook_names,
    resid_stack,
    run_batch,
)
from tlprobe.access.labels import head_labels, layer_labels, resid_labels
from tlprobe.analyses.mi import MIResult, mi_working_bytes, token_mi
from tlprobe.analyses.similarity import shuffle_values
from tlprobe.analyses.token_pairs import AttentionTracking, DistanceProfile, attention_tracking, distance_profile
from tlprobe.checks import as_int, check_index, check_memory, check_min_samples
from tlprobe.figures.token_pairs import (
    distance_profile_figure,
    token_mi_heatmap_figure,
    tracking_maps_figure,
    tracking_scatter_figure,
)
from tlprobe.findings import Finding, check
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

NAME = "token-distance"
DESCRIPTION = "L11-L12: MI between tokens vs their distance (with a shuffle null) and vs each head's attention"
LESSON = "L11-L12"
MIN_TOKENS = 20

# The criteria of the findings: fixed here, stated in each criterion's text, never tuned to a run.
#: A head "tracks" MI when its permutation test survives Benjamini-Hochberg at this false discovery rate.
ALPHA = 0.05
#: A tracking head tracks MI "beyond distance" when its partial Spearman given distance exceeds this.
MIN_PARTIAL = 0.1
#: ... and the claim holds when at least this share of the tracking heads do.
BEYOND_SHARE = 0.5
#: Fewest (occurrence, key) pairs for a rank correlation, and fewest pairs in the nearest distance bin.
MIN_PAIRS = 30
#: Fewest shuffles for the null's percentiles.
MIN_SHUFFLES = 2
#: The tracking heads "sit in particular layers" when the peak layer holds at least this many
#: times the mean count per layer, with at least MIN_TRACKING tracking heads in all.
CONCENTRATION = 2.0
MIN_TRACKING = 3


@dataclass(frozen=True)
class Options(ModelOptions):
    text: str | None = option(
        None, doc="text file: one paragraph (default: a bundled ~210-word paragraph about coffee)"
    )
    target: str = option("coffee", doc="the word whose attention rows are read (every occurrence, whole words)")
    layer: int | None = option(None, doc="focus layer of the detail figures (default: the middle layer)")
    bins: int = option(10, doc="MI bins per token (over its hidden dimensions)")
    shuffles: int = option(10, doc="shuffles of the MI null (each token's dimensions permuted separately)")
    permutations: int = option(1000, doc="permutations of the attention-MI test (per head)")
    distance_bins: int = option(12, doc="log-spaced distance bins (short texts get fewer)")


def check_options(o: Options) -> None:
    """Refuse a bad option before the model loads, naming its flag.

    Raises:
        TlprobeError: ``--bins`` below 2, ``--shuffles``, ``--permutations`` or
            ``--distance-bins`` below 1, or a permutation null over the free memory.

    Example:
        >>> check_options(Options(bins=1))
        Traceback (most recent call last):
        tlprobe.errors.TlprobeError: --bins must be >= 2, got 1; one bin carries no information
    """
    as_int(o.bins, "--bins", minimum=2, fix="one bin carries no information")
    as_int(o.shuffles, "--shuffles", minimum=1)
    perms = as_int(o.permutations, "--permutations", minimum=1)
    as_int(o.distance_bins, "--distance-bins", minimum=1)
    check_memory(8 * perms * MIN_PAIRS, f"the permutation null of --permutations {perms}", "lower --permutations")


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(shuffles=3)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    check_options(o)
    paragraph = " ".join(read_lines(o.text or data_path("coffee_paragraph.txt")))
    r = setup(NAME, o)
    info, text = r.info, prose(NAME)
    focus = check_index(info.n_layers // 2 if o.layer is None else o.layer, info.n_layers, "--layer")
    depths = resid_labels(info.n_layers)

    # 1. One forward pass: the residual stream at every depth and every layer's attention pattern.
    names = resid_hook_names(r.model) + hook_names(["pattern"], range(info.n_layers), model=r.model)
    batch = run_batch(r.model, [paragraph], names=names, progress=o.progress)
    keep = content_mask(r.model, batch.tokens, batch.attention_mask)[0].cpu()  # special tokens left out
    content = keep.nonzero().flatten()
    n_tok = len(content)
    check_min_samples(n_tok, MIN_TOKENS, "MI between tokens", "give a longer paragraph (--text FILE)")
    found = find_token_positions(r.model.tokenizer, batch.tokens, o.target, batch.attention_mask, occurrence="all")
    hs = resid_stack(batch.cache)[:, 0, content.to(batch.tokens.device)].float()  # [depth, T, d_model]
    pattern = torch.stack([attention_pattern(batch.cache, layer)[0] for layer in range(info.n_layers)]).float()
    all_tokens = batch.str_tokens(0)
    tokens = [all_tokens[int(i)] for i in content]
    r.lap("forward")

    # 2. MI between every pair of tokens at every depth, and its shuffle null as a leading axis.
    d_model = int(hs.shape[-1])
    need = mi_working_bytes((1 + o.shuffles) * hs.shape[0], d_model, n_tok, bins=o.bins, device=hs.device)
    check_memory(
        need, f"token MI of {hs.shape[0]} depths x {n_tok} tokens with {o.shuffles} shuffles", "lower --shuffles"
    )
    mi = token_mi(hs, bins=o.bins)  # [depth, T, T]
    stacked = hs.mT.unsqueeze(0).expand(o.shuffles, -1, -1, -1)  # [shuffles, depth, d_model, T]
    null = token_mi(shuffle_values(stacked, "within-feature", seed=o.seed).mT, bins=o.bins)  # [shuffles, depth, T, T]
    r.lap("token MI and its shuffle null, all depths")
    profile = distance_profile(mi, null=null, n_bins=o.distance_bins, axes={"depth": depths})
    mi_focus = MIResult(
        raw=mi[focus],
        corrected=mi[focus] - null[:, focus].mean(0),
        null_mean=null[:, focus].mean(0),
        null_std=null[:, focus].std(0, correction=0),
        bins=o.bins,
        method="shuffle",
        n_samples=d_model,
        n_shuffles=o.shuffles,
        seed=o.seed,
    )

    # 3. Attention from every target occurrence to every other content token it may attend to.
    q, k, labels = key_pairs(found.pos.tolist(), content.tolist(), tokens, causal=not info.is_encoder)
    index = {int(p): i for i, p in enumerate(content.tolist())}
    qi, ki = torch.tensor([index[p] for p in q]), torch.tensor([index[p] for p in k])
    att = pattern[:, :, torch.tensor(q), torch.tensor(k)]  # [layer, head, pairs]
    reads = mi[: info.n_layers][:, qi, ki]  # depth l is the input of layer l: the stream layer l reads
    dist = (torch.tensor(q) - torch.tensor(k)).abs().double()
    heads = {"layer": layer_labels(info.n_layers), "head": head_labels(info.n_heads)}
    tracking = attention_tracking(att, reads, dist, n_permutations=o.permutations, seed=o.seed, axes=heads)
    r.lap("attention against MI, every head")

    # 4. Findings, figures and report.
    found_claims = findings(profile, tracking)
    best = best_head(tracking)
    model = info.name.rsplit("/", 1)[-1]
    report = Report(text["title"].format(target=o.target, model=model), subtitle=DESCRIPTION)
    report.heading("What this shows")
    nums = {"n_tokens": n_tok, "depth": len(depths), "d_model": d_model, "bins": o.bins, "shuffles": o.shuffles}
    report.text(text["what"].format(**nums, pairs=n_tok * (n_tok - 1) // 2))
    report.figure(distance_profile_figure(profile), caption=text["profile_caption"])
    report.table(profile_rows(profile), caption="Per depth: slope of the pair MI on distance, and the nearest bin")
    report.heading(f"Attention from '{o.target}'")
    n_occ = len(found)
    report.text(text["attention"].format(target=o.target, occurrences=n_occ, pairs=tracking.n_pairs, alpha=ALPHA))
    for field in ("rho_mi", "rho_distance", "partial"):
        report.figure(tracking_maps_figure(tracking, field=field))
    report.figure(
        tracking_scatter_figure(tracking, best, labels=labels), caption=text["scatter_caption"].format(head=best)
    )
    report.table(tracking_rows(tracking), caption=f"Heads with BH q < {ALPHA:g} (attention tracks MI)")
    report.heading(f"Token MI at {depths[focus]}")
    report.text(text["heatmap"].format(depth=depths[focus], layer=focus))
    report.figure(token_mi_heatmap_figure(mi_focus, tokens, title=f"MI between tokens at {depths[focus]} (raw)"))
    report.text(text["lesson"])
    r.lap("figures")

    facts = {"n_tokens": n_tok, "d_model": d_model, "focus_layer": focus, "target_positions": found.pos.tolist()}
    facts |= {"occurrences": n_occ, "pairs": tracking.n_pairs, "best_head": best, "tokens": tokens}
    results = {"distance_profile": profile, "attention_tracking": tracking}  # the [T, T] matrices: figure only
    return r.finish(report, results=results, facts=facts, findings=found_claims)


def key_pairs(
    queries: Sequence[int], content: Sequence[int], tokens: Sequence[str], *, causal: bool
) -> tuple[list[int], list[int], list[str]]:
    """The (query, key) position pairs of every query occurrence, concatenated, and a label for each.

    The keys of a query are the content positions other than itself; on a decoder (``causal``)
    only the earlier ones. ``tokens`` are the content tokens (one per ``content`` position).

    Example:
        >>> key_pairs([2], [1, 2, 3], ["a", "b", "c"], causal=True)
        ([2], [1], ['b@2 -> a@1'])
    """
    text = dict(zip(content, tokens))
    q, k = [], []
    for i in queries:  # a handful of occurrences; the keys of each are one list comprehension
        keys = [j for j in content if j != i and (j < i or not causal)]
        q += [i] * len(keys)
        k += keys
    return q, k, [f"{text[i]}@{i} -> {text[j]}@{j}" for i, j in zip(q, k)]


def best_head(tracking: AttentionTracking) -> str:
    """The head with the largest ``rho_mi`` (``"L3H7"``; NaN never wins)."""
    rho = torch.nan_to_num(tracking.rho_mi, nan=-2.0)
    flat = int(rho.flatten().argmax())
    n_heads = int(rho.shape[-1])
    return f"{tracking.axes['layer'][flat // n_heads]}{tracking.axes['head'][flat % n_heads]}"


def profile_rows(profile: DistanceProfile) -> list[dict]:
    """One row per depth: slope and its null band, the nearest bin's mean, null and corrected value."""
    assert profile.null_mean is not None and profile.null_q95 is not None and profile.corrected is not None
    assert profile.slope_null_q05 is not None and profile.slope_null_q95 is not None
    return [
        {
            "depth": name,
            "slope (nats/token)": float(profile.slope[i]),
            "null slope 5%": float(profile.slope_null_q05[i]),
            "null slope 95%": float(profile.slope_null_q95[i]),
            "nearest bin mean": float(profile.mean[i, 0]),
            "nearest bin null 95%": float(profile.null_q95[i, 0]),
            "nearest bin corrected": float(profile.corrected[i, 0]),
        }
        for i, name in enumerate(profile.axes["depth"])
    ]


def tracking_rows(tracking: AttentionTracking) -> list[dict]:
    """The rows of the tracking heads (BH q < ALPHA and rho_mi > 0), strongest first."""
    rows = [row | {"head": row["layer"] + row["head"]} for row in tracking.rows()]
    rows = [
        {k: v for k, v in row.items() if k != "layer"} for row in rows if row["q_value"] < ALPHA and row["rho_mi"] > 0
    ]
    return sorted(rows, key=lambda row: -row["rho_mi"])


# -- findings: the lesson's claims, checked on this run's results ----------------------------


def findings(profile: DistanceProfile, tracking: AttentionTracking) -> list[Finding]:
    """The claims of lessons L11-L12, each checked on this run's results (no model needed).

    Args:
        profile: the ``[depth, bins]`` :class:`DistanceProfile` with its shuffle null.
        tracking: the ``[layer, head]`` :class:`AttentionTracking`.

    Returns:
        Four findings: MI decays with distance beyond the null; MI tracks attention in some
        heads; beyond distance; at which layers.

    Example:
        >>> i = torch.arange(40.0)
        >>> mi = (1.0 / (1.0 + (i[:, None] - i[None, :]).abs())).expand(2, 40, 40)
        >>> null = 0.01 * torch.rand(3, 2, 40, 40, generator=torch.Generator().manual_seed(0))
        >>> p = distance_profile(mi, null=null, axes={"depth": ("embed", "L0")})
        >>> g = torch.Generator().manual_seed(1)
        >>> m = torch.rand(1, 40, generator=g)
        >>> t = attention_tracking(torch.stack([m, torch.rand(1, 40, generator=g)], 1), m, torch.arange(40.0),
        ...                        n_permutations=99, axes={"layer": ("L0",), "head": ("H0", "H1")})
        >>> [f.verdict for f in findings(p, t)]
        ['holds', 'holds', 'holds', 'inconclusive']
    """
    return [_decay_finding(profile), *_tracking_findings(tracking)]


def _decay_finding(p: DistanceProfile) -> Finding:
    claim = "MI between tokens decays with distance beyond the shuffle null, at every depth"
    crit = (
        "at each depth: the OLS slope of the pair MI on distance < the 5th percentile of the shuffles' slopes, "
        "and the nearest distance bin's mean > the 95th percentile of its shuffle means "
        f"(inconclusive with < {MIN_PAIRS} pairs in that bin or < {MIN_SHUFFLES} shuffles)"
    )
    names = list(p.axes.get("depth", [str(i) for i in range(int(p.slope.numel()))]))
    nums: dict = {"nearest_bin_pairs": int(p.count[0]), "shuffles": p.n_shuffles}
    if p.null_q95 is None or p.slope_null_q05 is None or p.corrected is None or p.null_mean is None:
        return check(claim, crit, nums, holds=None, why="no shuffle null: run with --shuffles >= 2", lesson=LESSON)
    slope, q05 = p.slope.flatten(), p.slope_null_q05.flatten()
    near, near_q95 = p.mean.reshape(len(names), -1)[:, 0], p.null_q95.reshape(len(names), -1)[:, 0]
    nums |= {"slope": slope, "slope_null_q05": q05, "nearest_corrected": p.corrected.reshape(len(names), -1)[:, 0]}
    if int(p.count[0]) < MIN_PAIRS or p.n_shuffles < MIN_SHUFFLES:
        why = f"{int(p.count[0])} pairs in the nearest bin and {p.n_shuffles} shuffles: too few to decide"
        return check(claim, crit, nums, holds=None, why=why, lesson=LESSON)
    ok = (slope < q05) & (near > near_q95)
    holding = [n for n, v in zip(names, ok.tolist()) if v]
    failing = [n for n, v in zip(names, ok.tolist()) if not v]
    nums |= {"depths_holding": holding}
    if not failing:
        why = (
            f"at all {len(names)} depths the slope is below the null's and the nearest tokens share more MI than chance"
        )
    elif holding:
        why = f"holds at {', '.join(holding)}; not at {', '.join(failing)}"
    else:
        why = "at no depth does the pair MI fall with distance beyond the shuffles' spread"
    return check(claim, crit, nums, holds=not failing, why=why, lesson=LESSON)


def _tracking_findings(t: AttentionTracking) -> list[Finding]:
    layers, heads = list(t.axes["layer"]), list(t.axes["head"])
    tracks = (t.q_value < ALPHA) & (t.rho_mi > 0)  # [layer, head]
    names = [layers[i] + heads[j] for i, j in tracks.nonzero().tolist()]
    few = t.n_pairs < MIN_PAIRS
    too_few = f"only {t.n_pairs} (occurrence, key) pairs, need {MIN_PAIRS} for a rank correlation"
    out = []

    claim = "MI between tokens tracks attention in some heads"
    crit = f"heads whose permutation test of Spearman(attention, MI) > 0 has Benjamini-Hochberg q < {ALPHA:g} over all heads"
    nums: dict = {
        "pairs": t.n_pairs,
        "tracking_heads": names,
        "max_rho_mi": float(torch.nan_to_num(t.rho_mi, nan=-2).max()),
    }
    if few:
        out.append(check(claim, crit, nums, holds=None, why=too_few, lesson=LESSON))
    else:
        why = f"{len(names)} of {tracks.numel()} heads: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
        out.append(
            check(claim, crit, nums, holds=bool(names), why=why if names else "no head survives BH", lesson=LESSON)
        )

    claim = "in those heads attention tracks MI beyond distance"
    crit = (
        f"among the tracking heads, at least {BEYOND_SHARE:.0%} have a partial Spearman of attention and MI "
        f"given distance > {MIN_PARTIAL:g} (else distance explains it)"
    )
    part = t.partial[tracks]
    beyond = [n for n, v in zip(names, (part > MIN_PARTIAL).tolist()) if v]
    nums = {
        "beyond_distance": beyond,
        "tracking": len(names),
        "median_partial": float(part.median()) if names else None,
    }
    nums["median_rho_distance"] = float(t.rho_distance[tracks].median()) if names else None
    if few or not names:
        why = too_few if few else "no tracking head to test"
        out.append(check(claim, crit, nums, holds=None, why=why, lesson=LESSON))
    else:
        holds = len(beyond) >= BEYOND_SHARE * len(names)
        why = f"{len(beyond)} of {len(names)} tracking heads keep partial > {MIN_PARTIAL:g}" + (
            "" if holds else ": distance explains most of it (near tokens get attention and share MI)"
        )
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson=LESSON))

    claim = "the tracking heads sit in particular layers"
    crit = (
        f"the layer with most tracking heads holds >= {CONCENTRATION:g} x the mean count per layer "
        f"(inconclusive with < {MIN_TRACKING} tracking heads)"
    )
    per_layer = tracks.sum(-1)
    peak = int(per_layer.argmax())
    nums = {"layers": layers, "per_layer": per_layer.tolist(), "peak_layer": layers[peak]}
    if few or len(names) < MIN_TRACKING:
        why = too_few if few else f"only {len(names)} tracking head(s), need {MIN_TRACKING}"
        out.append(check(claim, crit, nums, holds=None, why=why, lesson=LESSON))
    else:
        mean = float(per_layer.double().mean())
        holds = float(per_layer[peak]) >= CONCENTRATION * mean
        counts = ", ".join(f"{n}: {c}" for n, c in zip(layers, per_layer.tolist()))
        why = f"peak at {layers[peak]} ({int(per_layer[peak])} heads, mean {mean:.2g} per layer); {counts}"
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson=LESSON))
    return out


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
