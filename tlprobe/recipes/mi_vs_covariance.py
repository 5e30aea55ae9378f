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
from dataclasses import dataclass

import torch

from tlprobe.analyses.mi import BIN_RULES, BinRule, dependence, dependence_bytes
from tlprobe.checks import as_float, as_int, check_choice, check_memory, check_min_samples
from tlprobe.errors import TlprobeError
from tlprobe.figures.mi import dependence_examples_figure, dependence_sweep_figure
from tlprobe.recipes.common import CommonOptions, RecipeResult, option, prose, resolve, script_main, setup
from tlprobe.report import Report

NAME = "mi-vs-covariance"
DESCRIPTION = "L10: mutual information vs covariance on simulated pairs (x^2, cos, correlation sweep; no model)"
EXAMPLES = ("y = x^2, x ~ U(-2, 2)", "y = cos(x) + noise, x ~ U(-pi, pi)")


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

    # 3. Figures and report.
    report = Report(text["title"], subtitle=DESCRIPTION)
    report.heading("Non-linear dependence")
    report.text(text["nonlinear"].format(shuffles=o.shuffles))
    report.figure(dependence_examples_figure(ex))
    report.heading("Signed vs unsigned: a correlation sweep")
    report.text(text["sweep"])
    report.figure(dependence_sweep_figure(sw, x_title="true correlation"))
    report.table(ex.rows(), caption="Non-linear examples")
    report.table(
        [{**row, "Gaussian MI -0.5 log(1-rho^2)": float(g)} for row, g in zip(sw.rows(), gaussian)],
        caption="Correlation sweep",
    )
    r.lap("figures")
    facts = {"bins": ex.bins, "rho": rho, "gaussian_mi": gaussian}
    return r.finish(report, results={"examples": ex, "sweep": sw}, facts=facts)


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
