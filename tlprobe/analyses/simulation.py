"""MI estimators against a known truth (L08): Gaussian pairs with correlation rho, no model.

A bivariate Gaussian with correlation ``rho`` has ``MI = -0.5 log(1 - rho**2)`` nats
(:func:`gaussian_mi`), so the estimators of :func:`tlprobe.analyses.mi.dependence` (plug-in
histogram MI, Miller-Madow, shuffle-corrected and Gaussian-copula MI) can be compared with the
truth over the number of bins and the sample size (:func:`estimator_sweep`).

The plug-in MI of two *independent* variables is biased upward: to first order in ``1/n`` its
expectation is ``(bins - 1)**2 / (2 n)`` nats (:func:`plugin_bias`; Miller 1955, Panzeri and
Treves 1996), the number of joint cells a pair of independent variables has beyond the margins'
(``(Bx - 1)(By - 1)``) over twice the sample size. It assumes every bin is occupied: Gaussian
data in equal-width bins from the minimum to the maximum leave the outermost bins nearly empty,
so with many bins for the samples the measured bias falls below the formula. Miller-Madow
subtracts the same term computed from the *occupied* bins; the shuffle null measures the bias
at exactly this binning and sample size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from tlprobe.analyses.mi import bin_labels, dependence, dependence_bytes, entropy
from tlprobe.checks import as_int, as_tensor, check_finite, check_memory, check_min_samples
from tlprobe.errors import TlprobeError
from tlprobe.result import Result, index_rows

#: The estimators of :class:`EstimatorSweep`, in the order of its ``estimates``' first axis.
ESTIMATORS = ("plug-in", "miller-madow", "shuffle-corrected", "gcmi")


def _as64(rho, name: str) -> torch.Tensor:
    """float64, also for Python floats (``as_tensor`` would make them float32 first)."""
    if isinstance(rho, torch.Tensor):
        return as_tensor(rho, name).double()
    return as_tensor(torch.as_tensor(rho, dtype=torch.float64), name)


def _rho(rho, name: str = "rho") -> torch.Tensor:
    r = _as64(rho, name).reshape(-1).cpu()
    check_finite(r, name)
    if r.numel() == 0:
        raise TlprobeError(f"{name} is empty: give at least one correlation in (-1, 1)")
    if bool((r.abs() >= 1).any()):
        bad = float(r[r.abs() >= 1][0])
        raise TlprobeError(f"{name} must lie strictly between -1 and 1 (the MI of |rho| = 1 is infinite), got {bad}")
    return r


def gaussian_mi(rho: Float[torch.Tensor, "..."] | Sequence[float] | float) -> Float[torch.Tensor, "..."]:
    """The MI (nats) of a bivariate Gaussian with correlation ``rho``: ``-0.5 log(1 - rho**2)``.

    Raises:
        TlprobeError: ``|rho| >= 1`` (infinite MI) or a non-finite value.

    Example:
        >>> gaussian_mi(torch.tensor([0.0, 0.6])).round(decimals=4)
        tensor([0.0000, 0.2231], dtype=torch.float64)
    """
    t = _as64(rho, "rho")
    _rho(t)
    return -0.5 * torch.log1p(-(t**2))


def gaussian_pairs(
    rho: Float[torch.Tensor, " rho"] | Sequence[float],
    n: int,
    *,
    seeds: int,
    seed: int = 0,
) -> tuple[Float[torch.Tensor, "rho seeds n"], Float[torch.Tensor, "rho seeds n"]]:
    """``seeds`` independent draws of ``n`` standard Gaussian pairs per correlation, float64.

    ``x = z1``, ``y = rho z1 + sqrt(1 - rho**2) z2`` with ``z1, z2`` from one CPU generator
    seeded with ``seed`` (one ``[2, rho, seeds, n]`` draw: the same arguments give the same pairs,
    and the first ``m < n`` samples of a draw are a draw of ``m``).

    Raises:
        TlprobeError: ``|rho| >= 1``, ``n < 3`` or ``seeds < 1``.

    Example:
        >>> x, y = gaussian_pairs([0.0, 0.9], 20000, seeds=1)
        >>> x.shape, round(float(torch.corrcoef(torch.stack([x[1, 0], y[1, 0]]))[0, 1]), 2)
        (torch.Size([2, 1, 20000]), 0.9)
    """
    r = _rho(rho)
    n = as_int(n, "n")
    check_min_samples(n, 3, "a Gaussian pair", "use n >= 3")
    seeds = as_int(seeds, "seeds", minimum=1)
    seed = as_int(seed, "seed", minimum=0)
    need = 4 * r.numel() * seeds * n * 8
    check_memory(need, f"drawing {r.numel()} x {seeds} Gaussian pairs of {n} samples", "lower n or seeds")
    z = torch.randn(2, r.numel(), seeds, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return z[0], r[:, None, None] * z[0] + torch.sqrt(1 - r[:, None, None] ** 2) * z[1]


def plugin_bias(
    bins: Sequence[int] | torch.Tensor | int, n: Sequence[int] | torch.Tensor | int
) -> Float[torch.Tensor, "..."]:
    """First-order bias (nats) of the plug-in MI of two independent variables: ``(bins-1)**2 / (2n)``.

    The Miller-Madow / Panzeri-Treves term: the expected plug-in MI of independent variables with
    ``bins`` equal-probability-enough bins each is ``((bins - 1)**2) / (2 n) + O(1 / n**2)``.
    ``bins`` and ``n`` broadcast (pass ``bins[:, None]`` and ``n[None]`` for a grid).

    Raises:
        TlprobeError: ``bins < 2`` or ``n < 1``.

    Example:
        >>> plugin_bias(torch.tensor([4, 8])[:, None], torch.tensor([100, 1000])[None])
        tensor([[0.0450, 0.0045],
                [0.2450, 0.0245]], dtype=torch.float64)
    """
    b = torch.as_tensor(bins).double()
    m = torch.as_tensor(n).double()
    if bool((b < 2).any()) or bool((m < 1).any()):
        raise TlprobeError(f"plugin_bias needs bins >= 2 and n >= 1, got bins {b.tolist()} and n {m.tolist()}")
    return (b - 1) ** 2 / (2 * m)


@dataclass(frozen=True, eq=False)
class EstimatorSweep(Result):
    """MI estimates of simulated Gaussian pairs over estimators, correlations, bins and sample sizes.

    Attributes:
        estimates: ``[estimator, rho, bins, samples, seeds]`` nats, estimators as :data:`ESTIMATORS`
            (GCMI has no bins: its values repeat along the bins axis).
        truth: ``[rho]`` the Gaussian MI of each correlation (:func:`gaussian_mi`).
        plugin_bias: ``[bins, samples]`` the first-order bias of the plug-in at independence
            (:func:`plugin_bias`), the theory the rho = 0 estimates are checked against.
        rho, bins, samples: the grid.
        n_seeds, n_shuffles, seed: the draws, the shuffles of the null and their seed.
        axes: labels of ``estimator``, ``rho``, ``bins`` and ``samples``.
    """

    estimates: Float[torch.Tensor, "... seeds"]
    truth: Float[torch.Tensor, " rho"]
    plugin_bias: Float[torch.Tensor, "bins samples"]
    rho: tuple[float, ...]
    bins: tuple[int, ...]
    samples: tuple[int, ...]
    n_seeds: int
    n_shuffles: int
    seed: int

    def mean(self) -> Float[torch.Tensor, "estimator rho bins samples"]:
        """The mean estimate over seeds."""
        return self.estimates.mean(-1)

    def interval(self) -> tuple[Float[torch.Tensor, "estimator rho bins samples"], ...]:
        """The 2.5 % and 97.5 % percentiles over seeds (linear interpolation, as ``numpy.percentile``)."""
        q = torch.tensor([0.025, 0.975], dtype=torch.float64)
        low, high = self.estimates.quantile(q, dim=-1)
        return low, high

    def rows(self) -> list[dict]:
        """One row per (estimator, rho, bins, samples): mean, percentile interval, truth, bias."""
        mean = self.mean()
        low, high = self.interval()
        out = []
        for labels, idx in index_rows(self.axes, tuple(mean.shape)):
            e, r, b, s = idx
            row = {**labels, "mean": float(mean[idx]), "low 2.5%": float(low[idx]), "high 97.5%": float(high[idx])}
            row |= {"truth": float(self.truth[r]), "bias": float(mean[idx] - self.truth[r])}
            out.append(row | {"theory bias at 0": float(self.plugin_bias[b, s])})
        return out


def sweep_bytes(n_rho: int, *, seeds: int, n: int, bins: int, n_shuffles: int) -> int:
    """Peak bytes of one (bins, samples) cell of :func:`estimator_sweep`: the pairs and :func:`dependence`.

    Example:
        >>> sweep_bytes(4, seeds=10, n=10000, bins=32, n_shuffles=10) < 2**32
        True
    """
    pairs = 4 * n_rho * seeds * n * 8
    return pairs + dependence_bytes(n_rho * seeds, n, bins=bins, n_shuffles=n_shuffles)


def estimator_sweep(
    rho: Float[torch.Tensor, " rho"] | Sequence[float],
    *,
    bins: Sequence[int],
    samples: Sequence[int],
    seeds: int,
    n_shuffles: int = 20,
    seed: int = 0,
) -> EstimatorSweep:
    """Plug-in, Miller-Madow, shuffle-corrected and Gaussian-copula MI of Gaussian pairs vs the truth.

    One draw of :func:`gaussian_pairs` with ``max(samples)`` samples per (rho, seed); each sample
    size uses the first ``n`` samples of it (nested samples: the curves over ``n`` are smooth).
    Every (bins, n) cell is one batched :func:`dependence` call over all correlations and seeds
    (shuffles seeded with ``seed``); the memory of the largest cell is checked first.

    Args:
        rho: correlations, each in (-1, 1).
        bins: equal-width bins per variable, each >= 2.
        samples: sample sizes, each >= 3 (any order; kept as given).
        seeds: independent draws per correlation and sample size.
        n_shuffles: shuffles of the null (the shuffle-corrected estimate is raw - null mean).
        seed: seed of the draws and the shuffles.

    Returns:
        :class:`EstimatorSweep`.

    Raises:
        TlprobeError: an empty grid, a bad value, or a cell over the available memory.

    Example:
        >>> s = estimator_sweep([0.0, 0.6], bins=[4], samples=[200, 2000], seeds=3, n_shuffles=5)
        >>> tuple(s.estimates.shape), s.axes["estimator"][3]
        ((4, 2, 1, 2, 3), 'gcmi')
        >>> bool(abs(s.mean()[3, 1, 0, 1] - s.truth[1]) < 0.02)  # GCMI at rho = 0.6, n = 2000
        True
    """
    r = _rho(rho)
    if not len(bins) or not len(samples):
        raise TlprobeError("bins and samples need at least one value each (e.g. bins=[8], samples=[1000])")
    bins_t = tuple(as_int(b, "bins", minimum=2, fix="one bin carries no information") for b in bins)
    samples_t = tuple(as_int(s, "samples") for s in samples)
    for s in samples_t:
        check_min_samples(s, 3, "an MI estimate", "use samples >= 3")
    seeds = as_int(seeds, "seeds", minimum=1)
    n_shuffles = as_int(n_shuffles, "n_shuffles", minimum=1)
    seed = as_int(seed, "seed", minimum=0)
    n_max = max(samples_t)
    need = sweep_bytes(r.numel(), seeds=seeds, n=n_max, bins=max(bins_t), n_shuffles=n_shuffles)
    what = f"the MI estimates of {r.numel()} correlations x {seeds} seeds at {n_max} samples and {max(bins_t)} bins"
    check_memory(need, what, "lower samples, seeds, shuffles or bins")
    x, y = gaussian_pairs(r, n_max, seeds=seeds, seed=seed)
    est = torch.empty(len(ESTIMATORS), r.numel(), len(bins_t), len(samples_t), seeds, dtype=torch.float64)
    for bi, b in enumerate(bins_t):  # a small grid of settings: one batched call per cell
        for si, n in enumerate(samples_t):
            d = dependence(x[..., :n], y[..., :n], bins=b, n_shuffles=n_shuffles, seed=seed)
            est[:, :, bi, si] = torch.stack([d.mi_raw, d.mi_miller_madow, d.mi_corrected, d.gcmi])
    return EstimatorSweep(
        estimates=est,
        truth=gaussian_mi(r),
        plugin_bias=plugin_bias(torch.tensor(bins_t)[:, None], torch.tensor(samples_t)[None]),
        rho=tuple(float(v) for v in r.tolist()),
        bins=bins_t,
        samples=samples_t,
        n_seeds=seeds,
        n_shuffles=n_shuffles,
        seed=seed,
        axes={
            "estimator": ESTIMATORS,
            "rho": tuple(f"{v:g}" for v in r.tolist()),
            "bins": tuple(str(b) for b in bins_t),
            "samples": tuple(str(s) for s in samples_t),
        },
    )


def entropy_identity(
    x: Float[torch.Tensor, " samples"], y: Float[torch.Tensor, " samples"], *, bins: int
) -> dict[str, float]:
    """H(X), H(Y), H(X,Y) (plug-in, nats, equal-width bins) and MI = H(X) + H(Y) - H(X,Y) of one pair.

    The marginal entropies come from :func:`tlprobe.analyses.mi.entropy`; the joint entropy from
    the joint histogram on the same bins (the two labels combined into one of ``bins**2`` values).
    The identity's MI equals the plug-in MI of :func:`tlprobe.analyses.mi.mi`.

    Example:
        >>> x = torch.tensor([0.0, 1.0, 2.0, 3.0])
        >>> entropy_identity(x, x, bins=2)["mi"] == entropy_identity(x, x, bins=2)["h_x"]
        True
    """
    x, y = as_tensor(x, "x").double(), as_tensor(y, "y").double()
    if x.ndim != 1 or x.shape != y.shape:
        raise TlprobeError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must be two samples of the same length")
    bins = as_int(bins, "bins", minimum=2)
    xy = torch.stack([x, y], -1)
    h = entropy(xy, bins=bins)
    lab = bin_labels(xy, bins=bins)
    counts = torch.bincount(lab[:, 0] * bins + lab[:, 1], minlength=bins * bins).double()
    p = counts[counts > 0] / x.numel()
    h_xy = float(-(p * p.log()).sum())
    h_x, h_y = float(h[0]), float(h[1])
    return {"h_x": h_x, "h_y": h_y, "h_xy": h_xy, "mi": h_x + h_y - h_xy}


def discretisation_note(bins: int, n: int) -> float:
    """Width of one equal-width bin of ``n`` standard Gaussian samples, in standard deviations.

    The expected range of ``n`` standard normals is about ``2 sqrt(2 log n)``; the bins split it.

    Example:
        >>> round(discretisation_note(16, 10000), 2)
        0.54
    """
    return 2 * math.sqrt(2 * math.log(as_int(n, "n", minimum=2))) / as_int(bins, "bins", minimum=1)
