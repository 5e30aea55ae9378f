"""PCA spectra: how many directions does a representation use?

For ``[..., samples, features]`` activations (per population, layer or head), the eigenvalues
of the unbiased covariance across the samples, largest first, summarised by

* the *participation ratio* ``(sum l)^2 / sum l^2``: ``F`` for ``F`` equal eigenvalues, 1 for
  one direction, in between a soft count of the directions in use;
* ``n_components``: the fewest principal components whose cumulative share of the variance
  reaches each threshold (0.9, 0.95, 0.99 by default).

Entry points:

* :func:`pca_spectrum`: the spectrum of in-memory samples;
* :func:`spectrum`: the same summary of given eigenvalues, e.g. those of a streamed covariance
  (:meth:`tlprobe.analyses.streaming.SimilarityAccumulator.eigenvalues`);
* :func:`permutation_null`: the spectrum of the samples with every feature's samples permuted
  on their own (the variances kept, the correlations destroyed): the dimensionality expected of
  uncorrelated features with these variances at this sample size;
* :func:`diagonal_null`: the ``n -> infinity`` limit of that null, the variances themselves
  (for a streamed run that kept only the covariance).

A leading index whose total variance is exactly 0 (every feature constant) has no principal
directions: its participation ratio and cumulative shares are NaN (undefined, ``undefined`` in
a table) and its ``n_components`` are 0 (no component explains anything).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from tlprobe.checks import (
    as_float,
    as_int,
    as_tensor,
    check_choice,
    check_finite,
    check_memory,
    check_min_samples,
    check_ndim,
)
from tlprobe.errors import TlprobeError
from tlprobe.result import Result, index_rows

__all__ = ["Spectrum", "diagonal_null", "pca_spectrum", "permutation_null", "spectrum"]

#: Default cumulative explained-variance thresholds of ``n_components``.
THRESHOLDS: tuple[float, ...] = (0.9, 0.95, 0.99)
#: Values of :attr:`Spectrum.null`: data, the permutation null, the diagonal (n -> infinity) null.
NULLS: tuple[str, ...] = ("", "permutation", "diagonal")

_F64 = torch.float64


@dataclass(frozen=True, eq=False)
class Spectrum(Result):
    """A covariance spectrum and its dimensionality summaries, per leading index.

    Attributes:
        eigenvalues: ``[..., components]`` covariance eigenvalues, largest first, ``>= 0``
            (rounding's tiny negatives clamped to 0); ``components`` is the number of features.
        explained: ``[..., components]`` cumulative explained-variance fraction (the last is
            exactly 1; NaN where the total variance is 0).
        n_components: ``[..., thresholds]`` the fewest components whose cumulative fraction is
            ``>=`` each threshold (0 where the total variance is 0).
        participation_ratio: ``[...]`` ``(sum l)^2 / sum l^2`` in ``[1, components]`` (NaN where
            the total variance is 0).
        thresholds: the thresholds of ``n_components``, increasing, in ``(0, 1]``.
        n_samples: samples behind the covariance.
        null: ``""`` for data, ``"permutation"`` or ``"diagonal"`` for a null spectrum.
    """

    eigenvalues: Float[torch.Tensor, "... components"]
    explained: Float[torch.Tensor, "... components"]
    n_components: Int[torch.Tensor, "... thresholds"]
    participation_ratio: Float[torch.Tensor, "..."]
    thresholds: tuple[float, ...]
    n_samples: int
    null: str = ""

    def rows(self) -> list[dict]:
        """One row per leading index: its labels, ``participation_ratio``, one ``n_XX`` column per
        threshold (``n_90`` for 0.9, ``n_99.5`` for 0.995), ``total_variance`` and ``n_samples``.

        Leading axes without labels (e.g. :func:`permutation_null` of unlabelled input) are
        named ``axis d`` and labelled by position.
        """
        lead = tuple(self.participation_ratio.shape)
        names = [_threshold_name(t) for t in self.thresholds]
        pr = self.participation_ratio.detach().cpu().double().numpy()
        total = self.eigenvalues.detach().cpu().double().sum(-1).numpy()
        counts = self.n_components.detach().cpu().numpy()
        rows = []
        for labels, idx in index_rows(self.axes, lead):
            row: dict[str, Any] = {**labels, "participation_ratio": float(pr[idx])}
            row.update({name: int(c) for name, c in zip(names, counts[idx])})
            row.update(total_variance=float(total[idx]), n_samples=self.n_samples)
            rows.append(row)
        return rows


def spectrum(
    eigenvalues: Float[torch.Tensor, "... components"],
    *,
    n_samples: int,
    thresholds: Sequence[float] = THRESHOLDS,
    null: str = "",
    axes: Mapping[str, Sequence[str]] | None = None,
) -> Spectrum:
    """The dimensionality summaries of given covariance eigenvalues (e.g. a streamed spectrum).

    Args:
        eigenvalues: ``[..., components]`` eigenvalues of a covariance, in any order (they are
            sorted, largest first), e.g. :meth:`~tlprobe.analyses.streaming.SimilarityAccumulator.eigenvalues`.
            Negatives within rounding of 0 (``max(8 F eps, sqrt(eps))`` of the largest, ``eps``
            of their dtype) are clamped to 0. A streamed covariance of constant samples has
            rounding noise (~1e-32), not exact zeros, for eigenvalues: zero them first where
            ``SimilarityAccumulator.undefined_features("correlation").all(-1)`` to get the
            undefined (NaN) participation ratio of zero total variance.
        n_samples: samples behind the covariance (recorded; at least 2).
        thresholds: cumulative explained-variance fractions for ``n_components``, in ``(0, 1]``,
            strictly increasing.
        null: ``""`` for data, ``"permutation"`` or ``"diagonal"`` for a null spectrum.
        axes: labels of the leading axes.

    Returns:
        :class:`Spectrum` (float64 on the CPU).

    Raises:
        TlprobeError: no components, non-finite values, a negative eigenvalue beyond rounding (not
            a covariance spectrum), fewer than 2 samples, bad thresholds or an unknown ``null``.

    Example:
        >>> s = spectrum(torch.tensor([3.0, 2.0, 1.0]), n_samples=100, thresholds=(0.5, 0.9))
        >>> round(float(s.participation_ratio), 4), s.n_components.tolist(), s.explained.tolist()
        (2.5714, [1, 3], [0.5, 0.8333333333333334, 1.0])
    """
    ev = as_tensor(eigenvalues, "eigenvalues")
    check_ndim(ev, "eigenvalues", 1, "[..., components]")
    _check_features(ev.shape[-1], "eigenvalues")
    check_finite(ev, "eigenvalues")
    eps = torch.finfo(ev.dtype).eps if ev.is_floating_point() else 0.0
    ev = ev.to(_F64)
    scale = ev.abs().amax(-1, keepdim=True)
    # eigvalsh's (and a streamed co-moment's) error is a few eps * F * ||C|| at most; sqrt(eps) leaves a wide margin,
    # while a matrix that is no covariance has negatives of the order of its largest eigenvalue
    bad = ev < -max(8 * ev.shape[-1] * eps, math.sqrt(eps)) * scale
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise TlprobeError(
            f"eigenvalues has a negative value {float(ev[first]):.4g} at index {first}, beyond rounding; "
            "pass the eigenvalues of a covariance (a positive semi-definite matrix)"
        )
    ev = torch.sort(ev, dim=-1, descending=True).values.clamp(min=0.0)
    return _summarise(ev, _check_n_samples(n_samples), _check_thresholds(thresholds), null, axes)


def pca_spectrum(
    x: Float[torch.Tensor, "... samples features"],
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> Spectrum:
    """The PCA spectrum of ``x``: eigenvalues of the unbiased (``n - 1``) covariance across samples.

    Equal to ``numpy.linalg.eigvalsh(numpy.cov(x, rowvar=False))[::-1]`` per leading index, and
    ``explained`` to the cumulative ``sklearn.decomposition.PCA().explained_variance_ratio_``
    (which stops at ``min(samples, features)`` components; the rest are 0 here). Computed in
    float64 with one batched ``torch.linalg.eigvalsh`` over the leading axes; a feature constant
    across the samples contributes exactly 0.

    Args:
        x: ``[..., samples, features]``, e.g. ``[layer, samples, d_model]``.
        thresholds: cumulative explained-variance fractions for ``n_components``, in ``(0, 1]``,
            strictly increasing.
        axes: labels of the leading axes.

    Returns:
        :class:`Spectrum` with ``components = features``.

    Raises:
        TlprobeError: fewer than 2 dimensions or 2 samples, no features, non-finite values, bad
            thresholds, or a ``[..., features, features]`` covariance too large for the memory.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(500, 1, generator=g)
        >>> x = torch.cat([z, -z, 0.3 * torch.randn(500, 2, generator=g)], -1)  # one strong direction
        >>> s = pca_spectrum(x, axes={})
        >>> s.eigenvalues.shape, s.n_components.tolist(), round(float(s.participation_ratio), 2)
        (torch.Size([4]), [1, 2, 3], 1.18)
    """
    x = _check_samples(x)
    thresholds = _check_thresholds(thresholds)
    xc = _centred(x, 0, "pca_spectrum")
    ev = torch.linalg.eigvalsh(_covariance(xc)).flip(-1).clamp(min=0.0)
    return _summarise(ev, int(x.shape[-2]), thresholds, "", axes)


def permutation_null(
    x: Float[torch.Tensor, "... samples features"],
    *,
    n_permutations: int = 1,
    seed: int = 0,
    thresholds: Sequence[float] = THRESHOLDS,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> Spectrum:
    """The spectrum of ``x`` with each feature's samples permuted independently (a null of no correlation).

    Every feature (and every leading index) gets its own permutation of the samples: its values,
    hence its variance, are kept (the trace of the covariance is unchanged), while the
    correlations between features are destroyed. The spectrum of a permuted copy is the
    dimensionality expected of uncorrelated features with these variances at this sample size;
    data whose participation ratio is far below it is correlated. The permutations come from
    random keys drawn on the CPU (``torch.Generator().manual_seed(seed)``) and argsorted along
    the samples, so a seed gives the same null on every device; the permuted copies are made one
    at a time (each is as large as ``x``).

    Args:
        x: ``[..., samples, features]``.
        n_permutations: permuted copies (>= 1).
        seed: the same seed gives the same permutations.
        thresholds: as in :func:`pca_spectrum`.
        axes: labels of the leading axes of ``x`` (all of them, or none).

    Returns:
        :class:`Spectrum` with leading axes ``(*leading, permutation)``, ``null="permutation"``;
        the ``permutation`` axis is labelled ``P0, P1, ...`` (added after ``axes``, or alone when
        ``x`` has no leading axes; left unlabelled when the leading axes of ``x`` are).

    Raises:
        TlprobeError: as :func:`pca_spectrum`, a bad ``n_permutations`` or ``seed``, ``axes``
            that label only some leading axes, or a permuted copy too large for the memory.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(400, 1, generator=g)
        >>> x = z + 0.1 * torch.randn(400, 5, generator=g)  # five copies of one signal
        >>> null = permutation_null(x, n_permutations=2)
        >>> null.axes, null.participation_ratio.shape
        ({'permutation': ('P0', 'P1')}, torch.Size([2]))
        >>> round(float(pca_spectrum(x).participation_ratio), 2), bool((null.participation_ratio > 4.8).all())
        (1.02, True)
    """
    x = _check_samples(x)
    thresholds = _check_thresholds(thresholds)
    n_permutations = as_int(n_permutations, "n_permutations", minimum=1, fix="ask for at least one permuted copy")
    seed = as_int(seed, "seed", minimum=0)
    *lead, n, f = x.shape
    given = dict(axes or {})
    if "permutation" in given:
        raise TlprobeError("axes already has a 'permutation' axis; permutation_null adds it, rename yours")
    if given and len(given) != len(lead):
        raise TlprobeError(
            f"axes label {len(given)} of the {len(lead)} leading axes of x; label all of them "
            "(the permutation axis goes after them) or none"
        )
    labels = tuple(f"P{p}" for p in range(n_permutations))
    out_axes = {**given, "permutation": labels} if len(given) == len(lead) else {}
    # per copy: the CPU keys moved to the device, their argsort (int64) and the permuted copy
    xc = _centred(x, 3 * x.numel() * 8, "permutation_null")
    gen = torch.Generator().manual_seed(seed)
    spectra = []
    for _ in range(n_permutations):
        keys = torch.rand(x.shape, generator=gen, dtype=_F64).to(xc.device)
        permuted = xc.gather(-2, keys.argsort(dim=-2))
        del keys
        spectra.append(torch.linalg.eigvalsh(_covariance(permuted)).flip(-1).clamp(min=0.0))
        del permuted
    ev = torch.stack(spectra, dim=len(lead))
    return _summarise(ev, n, thresholds, "permutation", out_axes)


def diagonal_null(
    variances: Float[torch.Tensor, "... features"],
    *,
    n_samples: int,
    thresholds: Sequence[float] = THRESHOLDS,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> Spectrum:
    """The ``n -> infinity`` limit of :func:`permutation_null`: the spectrum of ``diag(variances)``.

    Uncorrelated features have a diagonal covariance, whose eigenvalues are the variances. At a
    finite ``n`` the permutation null's sample correlations add ``sum_{i != j} C_ij^2`` to
    ``sum l^2``, so its participation ratio lies below this one, by a relative ``~ (PR - 1) / n``.
    For a streamed run that kept only the covariance (its diagonal, e.g.
    :meth:`~tlprobe.analyses.streaming.SimilarityAccumulator.variances`).

    Args:
        variances: ``[..., features]`` per-feature variances (``>= 0``).
        n_samples: samples behind the variances (recorded; at least 2).
        thresholds: as in :func:`pca_spectrum`.
        axes: labels of the leading axes.

    Returns:
        :class:`Spectrum` with ``null="diagonal"``.

    Raises:
        TlprobeError: no features, non-finite or negative variances, fewer than 2 samples or
            bad thresholds.

    Example:
        >>> s = diagonal_null(torch.tensor([1.0, 4.0, 1.0, 2.0]), n_samples=1000)
        >>> s.eigenvalues.tolist(), round(float(s.participation_ratio), 4), s.null
        ([4.0, 2.0, 1.0, 1.0], 2.9091, 'diagonal')
    """
    v = as_tensor(variances, "variances")
    check_ndim(v, "variances", 1, "[..., features]")
    _check_features(v.shape[-1], "variances")
    check_finite(v, "variances")
    if bool((v < 0).any()):
        raise TlprobeError(
            f"variances has a negative value ({float(v.min()):.4g}); pass per-feature variances (>= 0), "
            "e.g. the diagonal of a covariance"
        )
    ev = torch.sort(v.to(_F64), dim=-1, descending=True).values
    return _summarise(ev, _check_n_samples(n_samples), _check_thresholds(thresholds), "diagonal", axes)


# -- helpers -------------------------------------------------------------------------------


def _summarise(
    ev: torch.Tensor,
    n_samples: int,
    thresholds: tuple[float, ...],
    null: str,
    axes: Mapping[str, Sequence[str]] | None,
) -> Spectrum:
    """The :class:`Spectrum` of sorted (largest first), non-negative float64 eigenvalues ``[..., C]``."""
    check_choice(null, NULLS, "null")
    ev = ev.cpu()
    top = ev[..., 0]  # the largest: scaling by it keeps l^2 from overflowing
    defined = top > 0
    unit = ev / torch.where(defined, top, 1.0).unsqueeze(-1)
    cum = unit.cumsum(-1)
    total = cum[..., -1]
    # dividing by the cumulative sum's own last entry makes the last share exactly 1, so a threshold of 1 is reached
    explained = torch.where(defined.unsqueeze(-1), cum / total.unsqueeze(-1), math.nan)
    pr = torch.where(defined, total.square() / unit.square().sum(-1), math.nan)
    wanted = torch.tensor(thresholds, dtype=_F64).expand(*ev.shape[:-1], len(thresholds)).contiguous()
    searched = torch.where(defined.unsqueeze(-1), explained, 0.0).contiguous()
    # searchsorted (left): the number of shares below the threshold, so +1 is the first reaching it
    counts = torch.searchsorted(searched, wanted) + 1
    counts = torch.where(defined.unsqueeze(-1), counts, 0)
    return Spectrum(
        eigenvalues=ev,
        explained=explained,
        n_components=counts,
        participation_ratio=pr,
        thresholds=thresholds,
        n_samples=n_samples,
        null=null,
        axes=axes or {},
    )


def _check_samples(x) -> torch.Tensor:
    x = as_tensor(x, "x")
    check_ndim(x, "x", 2, "[..., samples, features]")
    check_min_samples(int(x.shape[-2]), 2, "a covariance spectrum", "collect more samples")
    _check_features(x.shape[-1], "x")
    check_finite(x, "x")
    return x


def _check_features(f: int, name: str) -> None:
    if f < 1:
        raise TlprobeError(f"{name} has no features (its last axis is empty); pass at least one")


def _check_n_samples(n_samples) -> int:
    n = as_int(n_samples, "n_samples", fix="the number of samples behind the covariance")
    check_min_samples(n, 2, "a covariance spectrum", "pass the number of samples behind the covariance")
    return n


def _check_thresholds(thresholds) -> tuple[float, ...]:
    """``thresholds`` as a tuple of floats in ``(0, 1]``, strictly increasing, with distinct column names."""
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence | np.ndarray | torch.Tensor):
        raise TlprobeError(f"thresholds must be a sequence of fractions like (0.9, 0.95, 0.99), got {thresholds!r}")
    out = tuple(as_float(t, f"thresholds[{i}]") for i, t in enumerate(list(thresholds)))
    if not out:
        raise TlprobeError("thresholds is empty; give at least one fraction, e.g. (0.9,)")
    if not all(0 < t <= 1 for t in out):
        raise TlprobeError(f"thresholds must be fractions in (0, 1], got {out}; e.g. 0.9 for 90% of the variance")
    if not all(a < b for a, b in zip(out, out[1:])):
        raise TlprobeError(f"thresholds must be strictly increasing, got {out}; sort them and drop repeats")
    names = [_threshold_name(t) for t in out]
    if len(set(names)) != len(names):
        raise TlprobeError(f"thresholds {out} are too close to name their columns apart ({names}); space them out")
    return out


def _threshold_name(t: float) -> str:
    """The table column of a threshold: ``0.9 -> 'n_90'``, ``0.995 -> 'n_99.5'``."""
    return f"n_{round(100 * t, 10):.10g}"


def _centred(x: torch.Tensor, extra_bytes: int, what: str) -> torch.Tensor:
    """``x - mean`` over samples in float64 (constant features exactly 0), after a memory check.

    ``extra_bytes`` is the caller's further working set (besides the float64 copy, the centred
    copy and the ``[..., F, F]`` covariance with its eigvalsh workspace).
    """
    *lead, n, f = x.shape
    items = math.prod(lead)
    check_memory(
        (2 * items * n * f + 2 * items * f * f) * 8 + extra_bytes,
        f"{what} of {items} leading indices x {n} samples x {f} features (float64 copies and covariance)",
        "use fewer features, samples or leading indices (e.g. one layer at a time)",
        device=x.device,
    )
    x = x.to(_F64)
    lo, hi = torch.aminmax(x, dim=-2, keepdim=True)
    # a constant feature's mean can differ from its value by rounding: make its spread exactly 0
    return (x - x.mean(-2, keepdim=True)).masked_fill_(lo == hi, 0.0)


def _covariance(xc: torch.Tensor) -> torch.Tensor:
    """The unbiased covariance ``xc^T xc / (n - 1)`` of centred ``[..., n, F]`` samples."""
    return (xc.mT @ xc) / (xc.shape[-2] - 1)
