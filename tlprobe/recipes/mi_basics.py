"""L08: histogram MI estimators against the known MI of Gaussian pairs (simulation, no model).

A bivariate Gaussian with correlation rho has MI = -0.5 log(1 - rho^2). The raw plug-in histogram
MI, Miller-Madow, the shuffle-corrected MI and the Gaussian-copula MI are computed over a grid of
bins and sample sizes with many seeds, and compared with that truth: the plug-in's upward bias
(about (bins-1)^2 / (2n) at independence), what each correction removes, and what equal-width
bins lose to discretisation when the correlation is strong.

Copy this file (``tlprobe cp mi-basics my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from tlprobe.analyses.mi import mi
from tlprobe.analyses.simulation import EstimatorSweep, entropy_identity, estimator_sweep, gaussian_pairs, sweep_bytes
from tlprobe.analyses.stats import spearman
from tlprobe.checks import as_float, as_int, check_memory, check_min_samples
from tlprobe.errors import TlprobeError
from tlprobe.figures.simulation import estimator_sweep_figure, plugin_bias_figure
from tlprobe.findings import Finding, check
from tlprobe.recipes.common import CommonOptions, RecipeResult, option, prose, resolve, script_main, setup
from tlprobe.report import Report

NAME = "mi-basics"
DESCRIPTION = (
    "L08: histogram MI estimators (plug-in, Miller-Madow, shuffle, GCMI) against the known MI of Gaussian pairs"
)

# The criteria of the findings: fixed here, stated in each criterion's text, never tuned to a run.
#: The asymptotic regime of the first-order bias: cells with n >= REGIME x bins^2 (ten samples per joint cell).
REGIME = 10
#: The plug-in bias at independence "is about (bins-1)^2/(2n)" when measured / theory lies in this band.
BIAS_BAND = (0.75, 1.33)
#: Miller-Madow "removes most of it" when |its mean - truth| is below this share of the plug-in's bias.
MM_SHARE = 0.5
#: The shuffle correction "removes the bias" when its mean's 95% interval contains the truth, or
#: |mean - truth| is below this share of the theoretical plug-in bias.
SHUFFLE_SHARE = 0.1
#: The bias "grows with bins^2/n" when its Spearman correlation with bins^2/n over all cells exceeds this.
RANK_R = 0.9
#: Fewest (bins, samples) cells for the rank correlation.
MIN_CELLS = 4
#: A correlation this close to 0 counts as independence (the truth at most 0.005 nats).
ZERO_RHO = 0.1
#: GCMI "recovers the truth" at the largest n when |mean - truth| is at most this (nats).
GCMI_TOL = 0.02
#: The binned corrected estimators recover the truth when |mean - truth| <= max(BINNED_TOL, BINNED_SHARE x
#: truth): equal-width bins about half a standard deviation wide lose a few percent up to ~10% of the MI of a
#: strongly correlated pair (a loss of order width^2), plus sampling noise.
BINNED_TOL = 0.05
BINNED_SHARE = 0.15
#: Family-wise confidence of the intervals over seeds: Student t, Bonferroni over the regime's cells.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Options(CommonOptions):
    rho: tuple[float, ...] = option((0.0, 0.3, 0.6, 0.9), doc="correlations of the Gaussian pairs, each in (-1, 1)")
    bins: tuple[int, ...] = option((4, 8, 16, 32), doc="equal-width bins per variable (each >= 2)")
    samples: tuple[int, ...] = option((100, 300, 1000, 3000, 10000), doc="sample sizes n (each >= 10)")
    seeds: int = option(10, doc="independent draws per correlation and sample size (>= 2)")
    shuffles: int = option(5, doc="shuffles of the null of the shuffle-corrected MI (its mean is the bias)")


def check_options(o: Options) -> None:
    """Refuse a bad option before any work, naming its flag; refuse a grid that would not fit in memory.

    Raises:
        TlprobeError: an empty list, a correlation outside (-1, 1), fewer than 2 bins, fewer than
            10 samples, fewer than 2 seeds or 1 shuffle, or a cell over the available memory.

    Example:
        >>> check_options(Options(rho=(0.0, 1.0)))
        Traceback (most recent call last):
        tlprobe.errors.TlprobeError: --rho values must lie strictly between -1 and 1 (the MI of |rho| = 1 is infinite), got 1.0
    """
    for flag, values in (("--rho", o.rho), ("--bins", o.bins), ("--samples", o.samples)):
        if not isinstance(values, (tuple, list)):
            raise TlprobeError(f"{flag} takes a list of values (e.g. {flag} 1 2 3), got {values!r}")
        if not len(values):
            raise TlprobeError(f"{flag} needs at least one value")
    for v in o.rho:
        if not -1 < as_float(v, "--rho") < 1:
            raise TlprobeError(
                f"--rho values must lie strictly between -1 and 1 (the MI of |rho| = 1 is infinite), got {v}"
            )
    bins = [as_int(b, "--bins", minimum=2, fix="one bin carries no information") for b in o.bins]
    samples = [as_int(s, "--samples") for s in o.samples]
    for s in samples:
        check_min_samples(s, 10, "an MI estimate", "use --samples 10 or more")
    seeds = as_int(o.seeds, "--seeds", minimum=2, fix="an interval over seeds needs two")
    shuffles = as_int(o.shuffles, "--shuffles", minimum=1)
    need = sweep_bytes(len(o.rho), seeds=seeds, n=max(samples), bins=max(bins), n_shuffles=shuffles)
    what = f"{len(o.rho)} correlations x --seeds {seeds} at --samples {max(samples)}, --bins {max(bins)}"
    check_memory(need, what, "lower --samples, --seeds or --shuffles")


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(seeds=4)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    check_options(o)
    r = setup(NAME, o)
    text = prose(NAME)

    # 1. Every estimator on seeded Gaussian pairs, one batched call per (bins, samples) cell.
    sweep = estimator_sweep(o.rho, bins=o.bins, samples=o.samples, seeds=o.seeds, n_shuffles=o.shuffles, seed=o.seed)
    r.lap("estimators")

    # 2. Entropy, joint entropy and MI of one pair (the strongest correlation, the middle bins).
    ent = entropy_facts(sweep, seed=o.seed)
    r.lap("entropies")

    # 3. The lesson's claims, checked on the sweep.
    found = findings(sweep)
    r.lap("findings")

    # 4. Figures and report.
    facts = sweep_facts(sweep)
    report = Report(text["title"], subtitle=DESCRIPTION)
    report.heading("Entropy, joint entropy and MI")
    report.text(text["entropy"])
    report.text(text["entropy_run"].format(**ent))
    report.heading("The plug-in bias at independence")
    report.text(text["bias"].format(regime=REGIME))
    report.text(text["bias_run"].format(**facts))
    report.figure(plugin_bias_figure(sweep))
    report.heading("Estimators against the truth")
    report.text(text["estimators"].format(seeds=o.seeds, shuffles=o.shuffles))
    report.figure(estimator_sweep_figure(sweep))
    report.figure(estimator_sweep_figure(sweep, rho_index=int(np.argmin(np.abs(sweep.rho)))))
    report.text(text["estimators_run"].format(**facts))
    report.table(sweep.rows(), caption="Every estimator, correlation, bins and sample size (over seeds)")
    report.text(text["lesson"])
    r.lap("figures")
    return r.finish(report, results={"sweep": sweep}, facts={**facts, "entropy": ent}, findings=found)


def entropy_facts(sweep: EstimatorSweep, *, seed: int) -> dict:
    """H(X), H(Y), H(X,Y) and H(X)+H(Y)-H(X,Y) of one pair (largest |rho|, largest n, middle bins),
    next to the plug-in MI of the same pair (:func:`tlprobe.analyses.mi.mi`): the two are equal."""
    ri = int(np.argmax(np.abs(sweep.rho)))
    n, bins = max(sweep.samples), sorted(sweep.bins)[len(sweep.bins) // 2]
    x, y = gaussian_pairs([sweep.rho[ri]], n, seeds=1, seed=seed)
    out = entropy_identity(x[0, 0], y[0, 0], bins=bins)
    return {**out, "plugin": float(mi(x[0, 0], y[0, 0], bins=bins)), "rho": sweep.rho[ri], "n": n, "bins": bins}


def sweep_facts(sweep: EstimatorSweep) -> dict:
    """The numbers the report's paragraphs state (smallest |rho|'s bias, largest |rho|'s estimates at the largest n)."""
    mean = sweep.mean()
    z, top = int(np.argmin(np.abs(sweep.rho))), int(np.argmax(np.abs(sweep.rho)))
    b_lo, b_hi = int(np.argmin(sweep.bins)), int(np.argmax(sweep.bins))
    s_lo, s_hi = int(np.argmin(sweep.samples)), int(np.argmax(sweep.samples))
    cell = lambda e, r, b, s: float(mean[e, r, b, s])  # noqa: E731
    return {
        "rho_zero": sweep.rho[z],
        "rho_top": sweep.rho[top],
        "truth_top": float(sweep.truth[top]),
        "bins_lo": sweep.bins[b_lo],
        "bins_hi": sweep.bins[b_hi],
        "n_lo": sweep.samples[s_lo],
        "n_hi": sweep.samples[s_hi],
        "plugin_worst": cell(0, z, b_hi, s_lo),
        "theory_worst": float(sweep.plugin_bias[b_hi, s_lo]),
        "plugin_best": cell(0, z, b_lo, s_hi),
        "theory_best": float(sweep.plugin_bias[b_lo, s_hi]),
        "mm_worst": cell(1, z, b_hi, s_lo),
        "shuffle_worst": cell(2, z, b_hi, s_lo),
        "gcmi_top": cell(3, top, b_lo, s_hi),
        "mm_top_lo": cell(1, top, b_lo, s_hi),
        "mm_top_hi": cell(1, top, b_hi, s_hi),
        "shuffle_top_hi": cell(2, top, b_hi, s_hi),
    }


# -- findings: the lesson's claims, checked on this run's results ----------------------------


INTERVAL = f"mean +- t sd/sqrt(seeds), {CONFIDENCE:.0%} family-wise: Student t, Bonferroni over the regime's cells"


def _half_width(est: np.ndarray, cells: int) -> np.ndarray:
    """Half-width of the mean's interval over the seeds (last axis), Student t with Bonferroni over ``cells``."""
    from scipy import stats  # ~0.3 s to import: only the findings need it

    seeds = est.shape[-1]
    t = float(stats.t.ppf(1 - (1 - CONFIDENCE) / (2 * cells), seeds - 1))
    return t * est.std(-1, ddof=1) / math.sqrt(seeds)


def _regime(sweep: EstimatorSweep) -> np.ndarray:
    """``[bins, samples]`` True where n >= REGIME x bins^2."""
    b, n = np.asarray(sweep.bins, dtype=float)[:, None], np.asarray(sweep.samples, dtype=float)[None]
    return n >= REGIME * b**2


def _cells(mask: np.ndarray, sweep: EstimatorSweep) -> str:
    return ", ".join(f"{sweep.bins[b]} bins/n={sweep.samples[s]}" for b, s in zip(*np.nonzero(mask)))


def findings(sweep: EstimatorSweep) -> list[Finding]:
    """The claims of lesson L08, each checked on the sweep's means over seeds (no model).

    Claims 1-4 use the correlation nearest 0 (inconclusive unless ``|rho| <= ZERO_RHO``) and the
    cells of the asymptotic regime ``n >= REGIME x bins^2`` (inconclusive when there are none);
    claim 5 uses the largest sample size.

    Example:
        >>> s = estimator_sweep([0.0, 0.6], bins=[4, 8], samples=[300, 1000, 3000], seeds=4, n_shuffles=5)
        >>> [f.verdict for f in findings(s)]  # 4 seeds: the bias ratio is too noisy to place in its band
        ['inconclusive', 'holds', 'holds', 'holds', 'holds']
    """
    est = np.asarray(sweep.estimates, dtype=float)
    truth = np.asarray(sweep.truth, dtype=float)
    theory = np.asarray(sweep.plugin_bias, dtype=float)
    bias = est.mean(-1) - truth[None, :, None, None]  # [estimator, rho, bins, samples]
    z = int(np.argmin(np.abs(sweep.rho)))
    regime = _regime(sweep)
    half = _half_width(est, max(int(regime.sum()), 1))  # [estimator, rho, bins, samples]
    no_zero = abs(sweep.rho[z]) > ZERO_RHO
    zero_why = f"no correlation within {ZERO_RHO:g} of 0 (smallest |rho| {abs(sweep.rho[z]):g}): add --rho 0"
    none_why = f"no cell with n >= {REGIME} x bins^2 (the asymptotic regime): add larger --samples or fewer --bins"
    undecided = zero_why if no_zero else none_why if not regime.any() else None
    out = []

    # 1. The plug-in's bias at independence is about (bins-1)^2/(2n).
    ratio = bias[0, z] / theory
    claim = "the plug-in MI overestimates the truth by about (bins-1)^2/(2n)"
    crit = (
        f"at the correlation nearest 0, in every cell with n >= {REGIME} x bins^2, the mean plug-in bias over seeds "
        f"divided by (bins-1)^2/(2n) lies in [{BIAS_BAND[0]:g}, {BIAS_BAND[1]:g}]; differs where a cell's interval "
        f"over seeds ({INTERVAL}) lies outside it, inconclusive otherwise"
    )
    inside = (ratio >= BIAS_BAND[0]) & (ratio <= BIAS_BAND[1])
    low, high = (bias[0, z] - half[0, z]) / theory, (bias[0, z] + half[0, z]) / theory
    clearly_out = (high < BIAS_BAND[0]) | (low > BIAS_BAND[1])
    nums: dict = {"ratio_min": float(ratio[regime].min()) if regime.any() else math.nan}
    nums |= {"ratio_max": float(ratio[regime].max()) if regime.any() else math.nan, "cells": int(regime.sum())}
    if undecided:
        out.append(check(claim, crit, nums, holds=None, why=undecided, lesson="L08"))
    else:
        holds = True if inside[regime].all() else False if clearly_out[regime].any() else None
        why = (
            f"measured / theory is {nums['ratio_min']:.2f} to {nums['ratio_max']:.2f} over the {nums['cells']} cells "
            f"of the regime ({_cells(regime, sweep)})"
        )
        if holds is False:
            why += f"; outside the band beyond the seeds' noise: {_cells(regime & clearly_out, sweep)}"
        elif holds is None:
            why += f"; outside the band but within the seeds' noise of it: {_cells(regime & ~inside, sweep)}"
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L08"))

    # 2. Miller-Madow removes most of it.
    claim = "Miller-Madow removes most of the plug-in bias"
    crit = (
        f"at the correlation nearest 0, in every cell with n >= {REGIME} x bins^2, |mean Miller-Madow - truth| < "
        f"{MM_SHARE:g} x the mean plug-in bias"
    )
    share = np.abs(bias[1, z]) / bias[0, z]
    nums = {"share_max": float(share[regime].max()) if regime.any() else math.nan, "cells": int(regime.sum())}
    if undecided:
        out.append(check(claim, crit, nums, holds=None, why=undecided, lesson="L08"))
    else:
        bad = regime & ~(share < MM_SHARE)
        why = f"Miller-Madow leaves at most {nums['share_max']:.0%} of the plug-in bias in the regime's cells"
        why += f"; too much left in {_cells(bad, sweep)}" if bad.any() else ""
        out.append(check(claim, crit, nums, holds=not bad.any(), why=why, lesson="L08"))

    # 3. The shuffle correction removes the bias where the truth is 0.
    claim = "the shuffle correction removes the bias where the truth is 0"
    crit = (
        f"at the correlation nearest 0, in every cell with n >= {REGIME} x bins^2, the mean shuffle-corrected MI's "
        f"interval over seeds ({INTERVAL}) contains the truth, or |mean - truth| < {SHUFFLE_SHARE:g} x "
        "(bins-1)^2/(2n)"
    )
    ok = (np.abs(bias[2, z]) <= half[2, z]) | (np.abs(bias[2, z]) < SHUFFLE_SHARE * theory)
    worst = float(np.abs(bias[2, z] / theory)[regime].max()) if regime.any() else math.nan
    nums = {"abs_bias_over_theory_max": worst, "cells": int(regime.sum())}
    if undecided:
        out.append(check(claim, crit, nums, holds=None, why=undecided, lesson="L08"))
    else:
        bad = regime & ~ok
        why = (
            f"in every cell the shuffle-corrected mean is within its interval over seeds of the truth or within "
            f"{SHUFFLE_SHARE:.0%} of the theoretical plug-in bias (largest |mean - truth|: {worst:.1%} of that bias)"
        )
        why = f"a bias remains in {_cells(bad, sweep)} ({worst:.1%} of the theory)" if bad.any() else why
        out.append(check(claim, crit, nums, holds=not bad.any(), why=why, lesson="L08"))

    # 4. The bias grows with bins^2/n.
    claim = "the plug-in bias grows with bins^2/n"
    crit = (
        f"Spearman correlation of the mean plug-in bias at the correlation nearest 0 with bins^2/n, over every "
        f"(bins, samples) cell, > {RANK_R:g} (at least {MIN_CELLS} cells)"
    )
    load = (np.asarray(sweep.bins, dtype=float)[:, None] ** 2) / np.asarray(sweep.samples, dtype=float)[None]
    rho_s = float(spearman(load.reshape(-1), bias[0, z].reshape(-1))) if load.size >= 2 else math.nan
    nums = {"spearman": rho_s, "cells": int(load.size)}
    if no_zero or load.size < MIN_CELLS or math.isnan(rho_s):
        why = zero_why if no_zero else f"{load.size} cells (need {MIN_CELLS}) or a constant bias: no rank correlation"
        out.append(check(claim, crit, nums, holds=None, why=why, lesson="L08"))
    else:
        why = f"Spearman {rho_s:.3f} over {load.size} cells (bins^2/n from {load.min():.3g} to {load.max():.3g})"
        out.append(check(claim, crit, nums, holds=rho_s > RANK_R, why=why, lesson="L08"))

    # 5. At the largest n the corrected estimators recover the truth.
    out.append(_recovery_finding(sweep, bias))
    return out


def _recovery_finding(sweep: EstimatorSweep, bias: np.ndarray) -> Finding:
    s = int(np.argmax(sweep.samples))
    n = sweep.samples[s]
    truth = np.asarray(sweep.truth, dtype=float)
    fine = [i for i, b in enumerate(sweep.bins) if n >= REGIME * b**2]
    claim = "at the largest n the corrected estimators recover the Gaussian truth"
    crit = (
        f"at the largest n: |mean GCMI - truth| <= {GCMI_TOL:g} nats at every rho, and Miller-Madow and "
        f"shuffle-corrected at the most bins with n >= {REGIME} x bins^2 within max({BINNED_TOL:g} nats, "
        f"{BINNED_SHARE:.0%} of the truth) at every rho"
    )
    g = np.abs(bias[3, :, 0, s])
    top, lo = int(np.argmax(np.abs(sweep.rho))), int(np.argmin(sweep.bins))
    nums: dict = {"n": n, "gcmi_max_error": float(g.max())}
    nums |= {f"loss_{sweep.bins[lo]}_bins_at_rho_{sweep.rho[top]:g}": float(-bias[1, top, lo, s])}
    if not fine:
        why = f"no bins with {n} >= {REGIME} x bins^2 for the binned estimators: add larger --samples or fewer --bins"
        return check(claim, crit, nums, holds=None, why=why, lesson="L08")
    b = max(fine, key=lambda i: sweep.bins[i])
    tol = np.maximum(BINNED_TOL, BINNED_SHARE * truth)
    mm, sh = np.abs(bias[1, :, b, s]), np.abs(bias[2, :, b, s])
    nums |= {"bins": sweep.bins[b], "mm_max_error": float(mm.max()), "shuffle_max_error": float(sh.max())}
    holds = bool((g <= GCMI_TOL).all() and (mm <= tol).all() and (sh <= tol).all())
    why = (
        f"at n={n}: GCMI within {g.max():.4f} nats of the truth; at {sweep.bins[b]} bins Miller-Madow within "
        f"{mm.max():.3f} and shuffle-corrected within {sh.max():.3f}; with {sweep.bins[lo]} bins the binned MI loses "
        f"{-bias[1, top, lo, s]:.3f} of {truth[top]:.3f} nats at rho={sweep.rho[top]:g} to discretisation"
    )
    return check(claim, crit, nums, holds=holds, why=why, lesson="L08")


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
