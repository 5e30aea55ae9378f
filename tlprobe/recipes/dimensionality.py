"""L06-L07: effective dimensionality of the residual stream, layer by layer, and of every head's q, k, v, z.

A text runs through the model in windows; every token at every depth is a sample. The covariance
of each depth's residual stream (and of each head's q/k/v/z vectors) is accumulated window batch
by window batch (memory O(d_model^2), whatever the length of the text, so the same recipe runs on
Pythia 2.8B: L07); its eigenvalues give the PCA spectrum: the components needed for 90 / 95 / 99 %
of the variance and the participation ratio (sum l)^2 / sum l^2. The null permutes every feature
across tokens independently (it keeps each feature's variance and removes their co-variation).

Copy this file (``tlprobe cp dimensionality my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from tlprobe.access.corpus import Windows, stream, text_windows, window_hidden, window_rows, world
from tlprobe.access.hooks import get_activation, get_qkv, hook_names, resid_hook_names
from tlprobe.access.labels import head_labels, layer_labels, resid_labels
from tlprobe.analyses.dimensionality import Spectrum, diagonal_null, permutation_null, spectrum
from tlprobe.analyses.streaming import SimilarityAccumulator
from tlprobe.figures.depth import head_heatmap_figure
from tlprobe.figures.dimensionality import dimensionality_depth_figure, spectrum_figure
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

NAME = "dimensionality"
DESCRIPTION = "L06-L07: effective dimensionality (PCA) of the residual stream per layer and of each head's q/k/v/z"
HEAD_KINDS = ("q", "k", "v", "z")
HALVES = ("even", "odd")
HALF_KEYS = tuple(f"resid {h} batches" for h in HALVES)

# The criteria of the findings: fixed here, stated in each criterion's text, never tuned to a run.
#: "A few directions carry most of the variance": 90 % needs fewer than this share of d_model components.
FEW_SHARE = 0.5
#: Fewest tokens per residual dimension for a spectrum worth reading (below it the rank limits the spectrum).
MIN_TOKENS_PER_DIM = 2
#: Largest residual-stream sample kept in memory for the exact permutation null (bytes); above it, the diagonal limit.
NULL_BUDGET = 512 * 2**20


@dataclass(frozen=True)
class Options(ModelOptions):
    text: str | None = option(None, doc="text file (default: a bundled ~2,500-token text written for tlprobe)")
    window: int | None = option(None, doc="tokens per window, special tokens included (default: 256 or the context)")
    batch_size: int = option(4, doc="windows per forward pass")
    null: Literal["auto", "permutation", "diagonal"] = option(
        "auto",
        doc="permutation: each feature permuted across tokens (keeps the tokens in memory); diagonal: its "
        "n -> infinity limit from the covariance alone (constant memory); auto: permutation when it fits",
    )
    heads: bool = option(True, doc="also the per-head spectra of q, k, v and z")


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(window=128)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    paragraph = " ".join(read_lines(o.text or data_path("dimensionality_text.txt")))
    r = setup(NAME, o)
    info, text = r.info, prose(NAME)
    windows = text_windows(r.model, paragraph, window=o.window)
    depth, d_model = info.n_layers + 1, info.d_model
    null_kind = choose_null(o.null, depth * windows.n_tokens * d_model * 4)

    # 1. Stream the windows: covariance accumulators per half (even / odd batches) and per head.
    batches = [{**b, "index": i} for i, b in enumerate(windows.batches(o.batch_size))]
    names = resid_hook_names(r.model) + (hook_names(HEAD_KINDS, range(info.n_layers), model=r.model) if o.heads else [])
    acc: dict[str, Any] = {f"resid {h}": SimilarityAccumulator() for h in HALVES}
    if o.heads:
        acc.update({kind: SimilarityAccumulator() for kind in HEAD_KINDS})
    kept: list[torch.Tensor] = []
    feed = make_feed(windows, info.n_layers, heads=o.heads, keep=kept if null_kind == "permutation" else None)
    stream(r.model, batches, acc, feed, names=names, progress=o.progress, desc="windows")
    r.lap("forward")

    # 2. Spectra: the whole text, each half, the null; per head.
    by_depth = {"depth": resid_labels(info.n_layers)}
    halves = {f"resid {h} batches": acc[f"resid {h}"] for h in HALVES}
    halves = {k: spectrum(a.eigenvalues(), n_samples=a.n_samples, axes=by_depth) for k, a in halves.items()}
    whole = acc.pop("resid even").merge(acc.pop("resid odd"))  # in place: no third d_model^2 state
    n = whole.n_samples
    spectra = {"resid": spectrum(whole.eigenvalues(), n_samples=n, axes=by_depth), **halves}
    if null_kind == "permutation":
        spectra["null"] = permutation_null(torch.cat(kept, dim=-2), seed=o.seed, axes=by_depth)
    else:
        spectra["null"] = diagonal_null(whole.variances(), n_samples=n, axes=by_depth)
    by_head = {"layer": layer_labels(info.n_layers), "head": head_labels(info.n_heads)}
    heads = {}
    if o.heads:  # one spectrum [vector, layer, head]: q, k, v and z side by side
        ev = torch.stack([acc[k].eigenvalues() for k in HEAD_KINDS])
        heads["heads"] = spectrum(ev, n_samples=acc["q"].n_samples, axes={"vector": HEAD_KINDS, **by_head})
        var = torch.stack([acc[k].variances() for k in HEAD_KINDS])
        heads["heads null"] = diagonal_null(var, n_samples=acc["q"].n_samples, axes={"vector": HEAD_KINDS, **by_head})
    r.lap("analysis")

    # 3. Figures and report.
    model = info.name.rsplit("/", 1)[-1]
    report = Report(text["title"].format(model=model, n_layers=info.n_layers), subtitle=DESCRIPTION)
    report.heading("What this shows")
    facts_text = dict(n_tokens=n, n_windows=len(windows), d_model=d_model, depth=depth)
    report.text(text["shows"].format(**facts_text, null=text[f"null_{null_kind}"]))
    report.text(text["lesson"])
    fig = dimensionality_depth_figure(spectra, d_model=d_model, components=("resid", "null"))
    report.figure(fig, caption=text["depth_caption"])
    report.figure(spectrum_figure(spectra["resid"]), caption=text["spectrum_caption"])
    report.table(spectra["resid"].rows(), caption="Residual stream spectrum per depth")
    if heads:
        report.heading("Per head (L06)")
        report.text(text["per_head"].format(d_head=info.d_head))
        title = "Participation ratio per head (q, k, v, z)"
        report.figure(head_heatmap_figure(heads["heads"], "participation_ratio", cols=2, title=title))
    r.lap("figures")

    found = findings(spectra, d_model=d_model, heads=heads)
    facts = {"n_tokens": n, "n_windows": len(windows), "text_chars": len(paragraph), "null": null_kind}
    return r.finish(report, results={**spectra, **heads}, facts=facts, findings=found)


def choose_null(null: str, kept_bytes: int) -> str:
    """``permutation`` or ``diagonal``: ``auto`` keeps the tokens when they fit :data:`NULL_BUDGET` on one process."""
    if null != "auto":
        return null
    return "permutation" if kept_bytes <= NULL_BUDGET and world()[1] == 1 else "diagonal"


def make_feed(windows: Windows, n_layers: int, *, heads: bool, keep: list[torch.Tensor] | None):
    """The stream's ``feed``: fold a window batch into the accumulators (and keep its tokens for the null)."""

    def feed(cache, batch: Mapping[str, Any], acc: MutableMapping[str, Any]) -> None:
        h = window_hidden(cache, batch, windows)  # [depth, tokens, d_model]
        acc[f"resid {HALVES[int(batch['index']) % 2]}"].update(h)
        if keep is not None:
            keep.append(h.float().cpu())
        if heads:
            qkv = [get_qkv(cache, layer) for layer in range(n_layers)]
            for i, kind in enumerate(HEAD_KINDS):
                per_layer = [t[i] if i < 3 else get_activation(cache, "z", layer) for layer, t in enumerate(qkv)]
                x = torch.stack([window_rows(t, batch, windows) for t in per_layer])  # [layer, tokens, head, d_head]
                acc[kind].update(x.movedim(-2, 1))  # [layer, head, tokens, d_head]

    return feed


# -- findings: the lessons' claims, checked on this run's spectra ------------------------------


def findings(
    spectra: Mapping[str, Spectrum], *, d_model: int, heads: Mapping[str, Spectrum] | None = None
) -> list[Finding]:
    """The claims of lessons L06-L07, checked on this run's spectra (no model needed).

    Args:
        spectra: ``"resid"`` (the whole text), ``"resid even batches"``, ``"resid odd batches"``
            and ``"null"`` :class:`Spectrum` results over depth.
        d_model: the residual stream's width.
        heads: ``"heads"`` and ``"heads null"`` ``[vector, layer, head]`` spectra, or None / empty
            (a ``--no-heads`` run: the per-head claim is left out).

    Returns:
        One :class:`~tlprobe.findings.Finding` per claim.
    """
    s = spectra["resid"]
    labels = s.axes["depth"]
    pr = s.participation_ratio.double().numpy()
    few = s.n_samples < MIN_TOKENS_PER_DIM * d_model
    short = (
        f"{s.n_samples} tokens for {d_model} dimensions (need {MIN_TOKENS_PER_DIM} per dimension): give a longer --text"
    )
    out = []

    # 1. Rises, then falls.
    claim = "effective dimensionality first rises then falls with depth"
    crit = (
        "the participation ratio is largest at a depth other than the first and last, in the whole text and in "
        "each half (even and odd window batches)"
    )
    peaks = {k: int(np.nanargmax(spectra[k].participation_ratio.double().numpy())) for k in ("resid", *HALF_KEYS)}
    nums: dict[str, Any] = {"peak": labels[peaks["resid"]], "first": float(pr[0]), "peak_value": float(pr.max())}
    nums.update(last=float(pr[-1]), by_depth=pr.tolist(), half_peaks=[labels[peaks[k]] for k in HALF_KEYS])
    inside = {k: 0 < i < len(pr) - 1 for k, i in peaks.items()}
    if few:
        out.append(check(claim, crit, nums, holds=None, why=short, lesson="L06"))
    elif not inside["resid"]:
        end = "first" if peaks["resid"] == 0 else "last"
        out.append(check(claim, crit, nums, holds=False, why=f"it is largest at the {end} depth", lesson="L06"))
    elif not all(inside.values()):
        why = "the whole text peaks inside, but a half peaks at an end: the shape depends on the text"
        out.append(check(claim, crit, nums, holds=None, why=why, lesson="L06"))
    else:
        why = f"it rises to {labels[peaks['resid']]} and falls after, in both halves too"
        out.append(check(claim, crit, nums, holds=True, why=why, lesson="L06"))

    # 2. A few directions carry most of the variance.
    i90 = s.thresholds.index(0.9)
    n90 = s.n_components[..., i90].tolist()
    claim = "a few directions carry most of the variance at every depth"
    crit = f"components for 90% of the variance < {FEW_SHARE:g} x d_model ({FEW_SHARE * d_model:g}) at every depth"
    nums = {"n_90": n90, "d_model": d_model, "largest": max(n90)}
    holds = None if few else max(n90) < FEW_SHARE * d_model
    why = short if few else ("the spectrum is steep" if holds else f"90% needs up to {max(n90)} components")
    out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L06"))

    # 3. Lower-dimensional than chance.
    null = spectra["null"]
    null_pr = null.participation_ratio.double()
    null_pr = null_pr.mean(-1) if null_pr.ndim > 1 else null_pr  # the permutations' mean
    ratio = pr / null_pr.numpy()
    claim = "the residual stream is lower-dimensional than its features permuted independently, at every depth"
    crit = f"participation ratio < the {null.null} null's at every depth"
    nums = {"ratio": ratio.tolist(), "null_pr": null_pr.tolist(), "largest_ratio": float(ratio.max())}
    holds = None if few else bool((ratio < 1).all())
    why = short if few else ("co-variation concentrates the variance" if holds else "some depth is as spread as chance")
    out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L06"))

    # 4. Per head: q, k, v and z below their own independent-feature limit.
    if heads:
        h, hn = heads["heads"], heads["heads null"]
        ratio_h = (h.participation_ratio / hn.participation_ratio).double()
        claim = "every head's q, k, v and z are lower-dimensional than their features made independent"
        crit = "per head and vector: participation ratio < the diagonal null's (the variances alone)"
        below = (ratio_h < 1).double().flatten(1).mean(-1)  # [vector]
        nums = {"vectors": list(h.axes["vector"]), "share_below": below.tolist()}
        nums.update(median_ratio=ratio_h.flatten(1).median(-1).values.tolist(), d_head=int(h.eigenvalues.shape[-1]))
        holds = bool((ratio_h < 1).all()) if bool(ratio_h.isfinite().all()) else None
        n_not = int((ratio_h >= 1).sum())
        why = {
            None: "undefined for some head (a constant vector)",
            True: "each head's coordinates co-vary: its variance sits in fewer directions than its width",
            False: f"{n_not} of {ratio_h.numel()} head vectors are as spread as their independent features",
        }[holds]
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L06"))
    return out


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
