"""Across-sample moments: is a token represented the same way in every context? (L03)

For ``[..., samples, features]`` activations (a token's vectors in many sentences, per
population, layer or head), the mean and variance of every coordinate across the samples,
summarised over the coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float

from tlprobe.checks import as_tensor, check_finite, check_min_samples, check_ndim, upcast
from tlprobe.errors import TlprobeError
from tlprobe.result import Result


@dataclass(frozen=True, eq=False)
class Moments(Result):
    """Across-sample moments of every coordinate, summarised over coordinates.

    All statistics are ``[...]``: the leading axes of the input (e.g. population, layer, head).
    Variances use ``ddof=0`` (numpy's ``var``).

    Attributes:
        n_samples: samples per leading index.
        n_features: coordinates averaged over.
        var: mean over coordinates of the variance across samples (0: the token looks the
            same in every context).
        mean: mean over coordinates of the across-sample mean (signed).
        mean_abs: mean over coordinates of ``|mean|`` (the size of the offsets).
        rel_var: ``sum(var) / sum(E[x^2])`` in [0, 1]: the share of the second moment that
            changes with context; scale-free, so comparable across layers whose norms differ.
    """

    n_samples: int
    n_features: int
    var: Float[torch.Tensor, "..."]
    mean: Float[torch.Tensor, "..."]
    mean_abs: Float[torch.Tensor, "..."]
    rel_var: Float[torch.Tensor, "..."]

    #: The statistics (each ``[...]``).
    STATS: ClassVar[tuple[str, ...]] = ("var", "mean", "mean_abs", "rel_var")


def sample_moments(
    x: Float[torch.Tensor, "... samples features"], *, axes: Mapping[str, Sequence[str]] | None = None
) -> Moments:
    """Mean and variance of each coordinate across samples, summarised per leading index.

    Args:
        x: ``[..., samples, features]``, e.g. ``[population, layer, samples, d_model]`` for the
            residual stream or ``[layer, head, samples, 3 * d_head]`` after
            :func:`tlprobe.access.hooks.split_heads`; half precision is upcast to float32.
        axes: labels of the leading axes, e.g. ``{"population": ..., "layer": ...}``.

    Returns:
        :class:`Moments` with ``[...]`` statistics.

    Raises:
        TlprobeError: fewer than 2 samples, non-finite values, or a leading index whose
            activations are all zero (``rel_var`` is undefined there).

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 2.0]])  # 2 samples, 2 features
        >>> m = sample_moments(x)
        >>> m.var.item(), m.mean.item(), round(m.rel_var.item(), 4)
        (0.5, 2.0, 0.1111)
    """
    x = upcast(as_tensor(x, "x"))
    check_ndim(x, "x", 2, "[..., samples, features]")
    check_min_samples(x.shape[-2], 2, "a variance across samples", "collect more samples")
    check_finite(x, "x")
    var, mean = torch.var_mean(x, dim=-2, correction=0)
    second = var + mean * mean  # E[x^2] per coordinate
    total = second.sum(-1)
    if bool((total == 0).any()):
        raise TlprobeError("some leading index has all-zero activations; rel_var is undefined there")
    return Moments(
        n_samples=int(x.shape[-2]),
        n_features=int(x.shape[-1]),
        var=var.mean(-1).cpu(),
        mean=mean.mean(-1).cpu(),
        mean_abs=mean.abs().mean(-1).cpu(),
        rel_var=(var.sum(-1) / total).cpu(),
        axes=axes or {},
    )
