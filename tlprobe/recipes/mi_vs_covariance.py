"""L10: mutual information vs covariance, on simulated data (no model).

Two non-linear pairs, ``y = x**2`` and ``y = cos(x) + noise`` with ``x`` symmetric around 0,
have a covariance of about 0 although ``y`` depends on ``x``: MI sees it. A sweep of linear
pairs with correlation from +0.9 to -0.9 shows covariance as a signed straight line and MI as
an unsigned U; squaring the covariance gives a U like MI's.

Copy this file (``tlprobe cp mi-vs-covariance my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tlprobe.analyses.mi import BIN_RULES, BinRule, Dependence, dependence, dependence_bytes
from tlprobe.analyses.stats import bootstrap_interval, pearson, spearman
from tlprobe.checks import as_float, as_int, check_choice, check_memory, check_min_samples
from tlprobe.errors import TlprobeError
from tlprobe.figures.mi import dependence_examples_figure, dependence_sweep_figure
from tlprobe.findings import Finding, check, interval_verdict
from tlprobe.recipes.common import CommonOptions, RecipeResult, option, prose, resolve, script_main, setup
from tlprobe.report import Report

NAME = "mi-vs-covariance"
DESCRIPTION = "L10: mutual information vs covariance on simulated pairs (x^2, cos, correlation sweep; no model)"
EXAMPLES = ("y = x^2, x ~ U(-2, 2)", "y = cos(x) + noise, x ~ U(-pi, pi)")

# The criteria of the findings: fixed here, stated in each criterion's text, never tuned to a run.
#: Covariance is "a straight line in r" when its Pearson correlation with the true r exceeds this.
LINEAR_R = 0.98
#: MI is "U-shaped in r" when its Spearman (rank) correlation with |r| exceeds this: MI grows with
#: |r| whatever the sign (a straight line in r gives about 0).
U_R = 0.9
#: Squared covariance is "a U like MI's" when its Pearson correlation with the MI exceeds this.
LIKE_R = 0.9
#: Covariance is "about 0" when the correlation's interval lies within +-ZERO_R: at most a weak
#: linear dependence (Cohen's "medium" effect is 0.3; r^2 < 9% of the variance).
ZERO_R = 0.3
#: Fewest sweep points for an interval over them.
MIN_POINTS = 5
#: Bootstrap resamples and confidence level of every interval.
N_RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Options(CommonOptions):
    samples: int = option(1000, doc="samples per simulated pair")
    bins: int | BinRule = option(10, doc="MI bins per variable: an integer >= 2, or sqrt, scott, fd")
    shuffles: int = option(100, doc="shuffles for the MI null")
    noise: float = option(0.3, doc="noise standard deviation of the cos example")
    steps: int = option(19, doc="points of the correlation sweep, +0.9 to -0.9")


def check_options(o: Options) -> None:
    """Refuse a bad option before any work, naming its flag; refuse sizes that would not fit in memory.

    The simulation holds ``(2 + steps) x samples`` draws, and :func:`dependence` batches
    ``shuffles x steps`` shuffled pairs with their joint histograms (``bins**2`` cells each):
    both are estimated and checked against the free memory first.

    Raises:
        TlprobeError: a non-integer, NaN, infinite, negative or too small option, or a working
            set over the available memory (the message names the option to lower).

    Example:
        >>> check_options(Options(noise=-1.0))
        Traceback (most recent call last):
        tlprobe.errors.TlprobeError: --noise must be a finite number >= 0, got -1.0
    """
    samples = as_int(o.samples, "--samples")
    check_min_samples(samples, 20, "the simulation", "use --samples 20 or more")
    steps = as_int(o.steps, "--steps")
    if steps < 3:
        raise TlprobeError(f"--steps must be >= 3 to show a U, got {steps}")
    shuffles = as_int(o.shuffles, "--shuffles", minimum=1)
    try:
        as_float(o.noise, "--noise", minimum=0.0)
    except TlprobeError:
        raise TlprobeError(f"--noise must be a finite number >= 0, got {o.noise!r}") from None
    if isinstance(o.bins, str):
        check_choice(o.bins, BIN_RULES, "--bins rule")
        bins = math.ceil(math.sqrt(samples))  # the rules give about sqrt(samples) bins or fewer
    else:
        bins = as_int(o.bins, "--bins", minimum=2, fix="one bin carries no information")
    simulation = (6 + 5 * steps) * samples * 8  # float64 draws and their temporaries
    check_memory(simulation, f"simulating {steps + 2} pairs of --samples {samples}", "lower --samples or --steps")
    need = simulation + dependence_bytes(steps, samples, bins=bins, n_shuffles=shuffles)
    few_bins = simulation + dependence_bytes(steps, samples, bins=2, n_shuffles=shuffles)
    fix = "lower --bins" if need > 2 * few_bins else "lower --samples or --shuffles"
    what = f"the dependence measures of --samples {samples}, --shuffles {shuffles}, --bins {o.bins}, --steps {steps}"
    check_memory(need, what, fix)


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(samples=400)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    check_options(o)
    r = setup(NAME, o)
    text = prose(NAME)

    # 1. Simulated pairs (float64, CPU generator: the same seed gives the same numbers).
    gen = torch.Generator().manual_seed(int(o.seed))
    n = int(o.samples)
    x_sq = torch.rand(n, generator=gen, dtype=torch.float64) * 4 - 2
    x_cos = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    ex_x = torch.stack([x_sq, x_cos])
    ex_y = torch.stack([x_sq**2, torch.cos(x_cos) + o.noise * torch.randn(n, generator=gen, dtype=torch.float64)])
    rho = torch.linspace(0.9, -0.9, int(o.steps), dtype=torch.float64)
    z = torch.randn(2, int(o.steps), n, generator=gen, dtype=torch.float64)
    sw_x, sw_y = z[0], rho[:, None] * z[0] + torch.sqrt(1 - rho[:, None] ** 2) * z[1]
    r.lap("simulate")

    # 2. Covariance, correlation and MI (raw, shuffle-corrected, Miller-Madow, GCMI), batched.
    ex = dependence(
        ex_x, ex_y, bins=o.bins, n_shuffles=o.shuffles, seed=o.seed, keep_samples=True, axes={"example": EXAMPLES}
    )
    rho_labels = [f"{v:.2f}" for v in rho.tolist()]
    sw = dependence(sw_x, sw_y, bins=o.bins, n_shuffles=o.shuffles, seed=o.seed + 1, axes={"rho": rho_labels})
    gaussian = -0.5 * torch.log1p(-(rho**2))  # the true MI of a Gaussian pair with correlation rho
    r.lap("dependence measures")

    # 3. The lesson's claims, checked on the results (seeded bootstraps).
    found = findings(ex, sw, rho, seed=o.seed)
    r.lap("findings")

    # 4. Figures and report.
    report = Report(text["title"], subtitle=DESCRIPTION)
    report.heading("Non-linear dependence")
    report.text(text["nonlinear"].format(shuffles=o.shuffles))
    report.text(text["nonlinear_run"].format(**example_facts(ex)))
    report.figure(dependence_examples_figure(ex))
    report.heading("Signed vs unsigned: a correlation sweep")
    report.text(text["sweep"])
    report.text(text["sweep_run"].format(**sweep_facts(sw, rho)))
    report.figure(dependence_sweep_figure(sw, x_title="true correlation"))
    report.table(ex.rows(), caption="Non-linear examples")
    report.table(
        [{**row, "Gaussian MI -0.5 log(1-rho^2)": float(g)} for row, g in zip(sw.rows(), gaussian)],
        caption="Correlation sweep",
    )
    report.text(text["lesson"])
    r.lap("figures")
    facts = {"bins": ex.bins, "rho": rho, "gaussian_mi": gaussian}
    return r.finish(report, results={"examples": ex, "sweep": sw}, facts=facts, findings=found)


def example_facts(ex: Dependence) -> dict[str, float]:
    """The numbers the report's paragraph on the two non-linear examples states."""
    out = {}
    for i, key in enumerate(("sq", "cos")):
        out |= {
            f"{key}_r": float(ex.correlation[i]),
            f"{key}_mi": float(ex.mi_raw[i]),
            f"{key}_q95": float(ex.mi_null_q95[i]),
            f"{key}_gcmi": float(ex.gcmi[i]),
        }
    return out


def sweep_facts(sw: Dependence, rho: torch.Tensor | np.ndarray | Sequence[float]) -> dict[str, float]:
    """The numbers the report's paragraph on the correlation sweep states (ends and the point nearest r = 0)."""
    r = np.round(np.asarray(torch.as_tensor(rho, dtype=torch.float64)), 10) + 0.0
    mid = int(np.argmin(np.abs(r)))
    cov, mi, raw, null = (np.asarray(v.double()) for v in (sw.covariance, sw.mi_corrected, sw.mi_raw, sw.mi_null_mean))
    return {
        "r_first": float(r[0]),
        "r_mid": float(r[mid]),
        "r_last": float(r[-1]),
        "cov_first": float(cov[0]),
        "cov_mid": float(cov[mid]),
        "cov_last": float(cov[-1]),
        "mi_first": float(mi[0]),
        "mi_mid": float(mi[mid]),
        "mi_last": float(mi[-1]),
        "raw_min": float(raw.min()),
        "null_min": float(null.min()),
        "null_max": float(null.max()),
    }


# -- findings: the lesson's claims, checked on this run's results ----------------------------


def findings(
    examples: Dependence, sweep: Dependence, rho: torch.Tensor | np.ndarray | Sequence[float], *, seed: int = 0
) -> list[Finding]:
    """The claims of lesson L10, each checked on this run's dependence measures (no model).

    Intervals are seeded percentile bootstraps (``scipy.stats.bootstrap``): over the sweep's
    points for the claims about the sweep, over the samples of each example for its correlation.
    "MI > 0" is the shuffle null's test: the raw MI above the null's 95th percentile.

    Args:
        examples: the non-linear pairs, with their samples (``dependence(..., keep_samples=True)``),
            one label per pair.
        sweep: the linear pairs of the correlation sweep.
        rho: the sweep's true correlations, one per pair of ``sweep``.
        seed: seed of the bootstraps.

    Returns:
        One :class:`~tlprobe.findings.Finding` per claim: covariance linear in r, MI U-shaped in r,
        squared covariance like MI, then one per example (MI > 0 where covariance is about 0).

    Example:
        >>> from tlprobe.analyses.mi import dependence
        >>> g = torch.Generator().manual_seed(0)
        >>> rho = torch.linspace(0.9, -0.9, 7, dtype=torch.float64)
        >>> z = torch.randn(2, 7, 500, generator=g, dtype=torch.float64)
        >>> sw = dependence(z[0], rho[:, None] * z[0] + (1 - rho[:, None] ** 2).sqrt() * z[1], n_shuffles=20)
        >>> x = torch.rand(1, 500, generator=g, dtype=torch.float64) * 4 - 2
        >>> ex = dependence(x, x**2, n_shuffles=20, keep_samples=True, axes={"example": ["x^2"]})
        >>> [f.verdict for f in findings(ex, sw, rho)]
        ['holds', 'holds', 'holds', 'holds']
    """
    r = np.round(np.asarray(torch.as_tensor(rho, dtype=torch.float64).cpu()), 10) + 0.0  # linspace's 1e-17 is 0
    cov, mi, sq = (
        np.asarray(v.double().cpu()).reshape(-1)
        for v in (sweep.covariance, sweep.mi_corrected, sweep.covariance_squared)
    )
    if r.shape != cov.shape:
        raise TlprobeError(f"rho has {r.size} values, the sweep {cov.size} pairs: give one true correlation per pair")
    n = r.size
    few = n < MIN_POINTS
    few_why = f"only {n} sweep points, need {MIN_POINTS} for an interval (use --steps {MIN_POINTS} or more)"
    mid = int(np.argmin(np.abs(r)))
    out = []

    # 1. Covariance: a signed straight line in r.
    claim = "covariance is linear in r: a signed straight line through 0"
    crit = (
        f"Pearson correlation of covariance with the true r > {LINEAR_R:g} ({CONFIDENCE:.0%} bootstrap interval "
        "over the sweep points), covariance of the same sign as r at both ends"
    )
    lin = float(pearson(r, cov))
    slope, intercept = (float(v) for v in np.polyfit(r, cov, 1))
    nums: dict = {"pearson": lin, "slope": slope, "intercept": intercept, "cov_first": cov[0], "cov_last": cov[-1]}
    signs = bool(np.sign(cov[0]) == np.sign(r[0]) and np.sign(cov[-1]) == np.sign(r[-1]))
    if few:
        out.append(check(claim, crit, nums, holds=None, why=few_why, lesson="L10"))
    else:
        low, high = bootstrap_interval([r, cov], pearson, seed=seed, n_resamples=N_RESAMPLES, confidence=CONFIDENCE)
        holds = interval_verdict(low, high, above=LINEAR_R)
        holds = False if not signs else holds
        nums["interval"] = [low, high]
        why = {
            True: f"covariance runs from {cov[0]:.2f} at r={r[0]:.2f} to {cov[-1]:.2f} at r={r[-1]:.2f} on a line "
            f"(slope {slope:.2f}, intercept {intercept:.3f}): signed and linear",
            False: f"covariance is not a signed line in r here (Pearson {lin:.3f}, ends {cov[0]:.2f} and {cov[-1]:.2f})",
            None: _undecided(low, high, LINEAR_R, n),
        }[holds]
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L10"))

    # 2. MI: an unsigned U in r.
    null_mean, null_q95 = (np.asarray(v.double().cpu()).reshape(-1) for v in (sweep.mi_null_mean, sweep.mi_null_q95))
    claim = "MI is U-shaped in r: high at both ends, minimal at 0 (unsigned)"
    crit = (
        "null-corrected MI at both ends of the sweep exceeds the MI at the point nearest r = 0 by more than the "
        f"shuffle null's 95% margin there (95th percentile - mean), and MI's Spearman correlation with |r| > {U_R:g} "
        "(a straight line in r gives about 0)"
    )
    u = float(spearman(np.abs(r), mi))
    gap = float(min(mi[0], mi[-1]) - mi[mid])
    margin = float(null_q95[mid] - null_mean[mid])
    nums = {"spearman_abs_r": u, "mi_first": mi[0], "mi_at_0": mi[mid], "mi_last": mi[-1], "r_nearest_0": r[mid]}
    nums.update(end_gap=gap, null_margin=margin)
    ends = f"MI {mi[0]:.2f} at r={r[0]:.2f}, {mi[mid]:.2f} at r={r[mid]:.2f}, {mi[-1]:.2f} at r={r[-1]:.2f}"
    if few:
        out.append(check(claim, crit, nums, holds=None, why=few_why, lesson="L10"))
    elif math.isnan(u):
        why = f"{ends}: the rank correlation with |r| is undefined (constant MI or |r|)"
        out.append(check(claim, crit, nums, holds=None, why=why, lesson="L10"))
    else:
        holds = interval_verdict(gap - margin, gap + margin, above=0.0)
        holds = False if u <= U_R else holds
        why = {
            True: f"{ends}: MI grows with |r| whatever its sign (the lower end {gap:.2f} nats above the middle, "
            f"noise margin {margin:.3f})",
            False: f"{ends}: MI does not follow |r| (Spearman {u:.2f}, ends - middle {gap:.2f} nats)",
            None: f"{ends}: the ends exceed the middle by {gap:.3f} nats, within the null's margin {margin:.3f}",
        }[holds]
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L10"))

    # 3. Squared covariance: a U like MI's.
    claim = "squaring the covariance gives a U like MI's"
    crit = (
        f"Pearson correlation of covariance squared with the null-corrected MI > {LIKE_R:g} "
        f"({CONFIDENCE:.0%} bootstrap interval over the sweep points)"
    )
    like = float(pearson(sq, mi))
    nums = {"pearson": like, "cov_sq_at_0": sq[mid], "cov_sq_first": sq[0], "cov_sq_last": sq[-1]}
    if few:
        out.append(check(claim, crit, nums, holds=None, why=few_why, lesson="L10"))
    else:
        low, high = bootstrap_interval([sq, mi], pearson, seed=seed, n_resamples=N_RESAMPLES, confidence=CONFIDENCE)
        holds = interval_verdict(low, high, above=LIKE_R)
        nums["interval"] = [low, high]
        why = {
            True: f"covariance squared ({sq[0]:.2f} and {sq[-1]:.2f} at the ends, {sq[mid]:.3f} at r={r[mid]:.2f}) "
            "rises and falls with MI: both are unsigned",
            False: f"covariance squared and MI do not move together (Pearson {like:.2f})",
            None: _undecided(low, high, LIKE_R, n),
        }[holds]
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L10"))

    # 4. Non-linear pairs: covariance about 0, MI above the shuffle null.
    labels = list(examples.axes.get("example", [])) or [str(i) for i in range(examples.covariance.numel())]
    for i, label in enumerate(labels):
        out.append(_nonlinear_finding(examples, i, label, seed))
    return out


def _undecided(low: float, high: float, threshold: float, points: int) -> str:
    if math.isnan(low) or math.isnan(high):
        return f"the correlation is undefined in some bootstrap resamples of the {points} sweep points: too few points"
    return f"the bootstrap interval of the correlation [{low:.3f}, {high:.3f}] straddles {threshold:g}"


def _nonlinear_finding(ex: Dependence, i: int, label: str, seed: int) -> Finding:
    claim = f"{label}: MI > 0 where covariance is about 0"
    crit = (
        f"correlation's {CONFIDENCE:.0%} bootstrap interval (over the samples) within +-{ZERO_R:g}, and raw MI above "
        f"the 95th percentile of its shuffle null ({ex.n_shuffles} shuffles)"
    )
    cor, raw, q95 = float(ex.correlation[i]), float(ex.mi_raw[i]), float(ex.mi_null_q95[i])
    nums: dict = {"correlation": cor, "mi_raw": raw, "null_q95": q95, "mi_corrected": float(ex.mi_corrected[i])}
    mi_above = raw > q95
    if ex.x is None or ex.y is None:
        why = (
            "the example's samples were not kept (dependence(..., keep_samples=True)): no interval for its correlation"
        )
        return check(claim, crit, nums, holds=None, why=why, lesson="L10")
    x, y = np.asarray(ex.x[i].double().cpu()), np.asarray(ex.y[i].double().cpu())
    low, high = bootstrap_interval([x, y], pearson, seed=seed, n_resamples=N_RESAMPLES, confidence=CONFIDENCE)
    nums["interval"] = [low, high]
    if math.isnan(low) or math.isnan(high):
        near0 = None
    elif -ZERO_R < low and high < ZERO_R:
        near0 = True
    elif high <= -ZERO_R or low >= ZERO_R:
        near0 = False
    else:
        near0 = None
    holds = False if (near0 is False or not mi_above) else (True if near0 else None)
    mi_text = f"MI = {raw:.3f} nats, {'above' if mi_above else 'not above'} the null's 95th percentile ({q95:.3f})"
    if holds is True:
        why = (
            f"correlation {cor:.3f} (interval [{low:.3f}, {high:.3f}]) but {mi_text}: MI sees the non-linear dependence"
        )
    elif holds is False and not mi_above:
        why = (
            f"{mi_text}: the histogram MI does not detect this dependence at {ex.bins} bins and {ex.n_samples} samples"
        )
    elif holds is False:
        why = f"the correlation {cor:.3f} (interval [{low:.3f}, {high:.3f}]) is not about 0: covariance sees this pair"
    else:
        why = f"{mi_text}, but the correlation's interval [{low:.3f}, {high:.3f}] straddles +-{ZERO_R:g}"
    return check(claim, crit, nums, holds=holds, why=why, lesson="L10")


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
