"""MI between pairs of tokens against their distance and against attention (L11-L12).

Two bundles over a token-by-token MI matrix (:func:`tlprobe.analyses.mi.token_mi`: the hidden
dimensions are the samples, the tokens the variables):

* :func:`distance_profile`: the pair MI binned by the distance ``|i - j|`` between the tokens
  (each unordered pair once), with a shuffle null binned the same way, so that what decays with
  distance is told apart from the estimator's bias;
* :func:`attention_tracking`: for the rows of a query token (e.g. every "coffee"), the Spearman
  rank correlation, per head, of the attention it pays to each key with the MI between the two
  tokens, with the distance, and the partial correlation of attention and MI given distance; a
  seeded permutation p-value and Benjamini-Hochberg q-values over all heads.

MI is symmetric, so an encoder's and a decoder's matrices are binned alike; which keys a query
may attend to (a decoder's causal mask) is the caller's choice of pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int

from tlprobe.checks import as_int, as_tensor, check_finite, check_memory, check_min_samples, check_ndim
from tlprobe.errors import TlprobeError
from tlprobe.result import Result, index_rows

#: Quantiles of the null distributions kept in the results (the one-sided 5 % levels).
LOW_Q, HIGH_Q = 0.05, 0.95


def distance_edges(n_tokens: int, n_bins: int) -> Int[torch.Tensor, " edges"]:
    """Integer edges of about ``n_bins`` log-spaced distance bins covering ``1 .. n_tokens - 1``.

    Bin ``b`` holds the distances ``edges[b] <= d < edges[b + 1]``; the first bins are single
    distances (1, 2, ...), later ones grow geometrically, so the short range, where MI changes
    fastest, is resolved and the long range still holds enough pairs per bin. Duplicate edges of
    the rounding are merged (fewer bins than asked for short texts).

    Example:
        >>> distance_edges(10, 4).tolist()
        [1, 2, 3, 6, 10]
    """
    n_tokens = as_int(n_tokens, "n_tokens", minimum=2)
    n_bins = as_int(n_bins, "n_bins", minimum=1)
    raw = np.round(np.geomspace(1, n_tokens, n_bins + 1)).astype(np.int64)
    return torch.from_numpy(np.unique(raw))


def _membership(edges: torch.Tensor, n_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """``[T, T, bins]`` one-hot bin of each pair ``i < j`` (zero elsewhere: the diagonal, ``i > j``, out of range)."""
    idx = torch.arange(n_tokens)
    d = idx[None, :] - idx[:, None]  # j - i: positive above the diagonal
    b = torch.bucketize(d, edges, right=True) - 1  # edges[b] <= d < edges[b + 1]
    inside = (d > 0) & (d >= edges[0]) & (d < edges[-1])
    onehot = torch.nn.functional.one_hot(b.clamp(0, len(edges) - 2), len(edges) - 1).to(dtype)
    return onehot * inside[..., None].to(dtype)


def _slope(m: torch.Tensor, d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """OLS slope of ``m [..., T, T]`` on ``d [T, T]`` over the pairs where ``w [T, T]`` is 1."""
    n = w.sum()
    dc = (d - (d * w).sum() / n) * w
    return (m * dc).sum((-2, -1)) / (dc * dc).sum()


@dataclass(frozen=True, eq=False)
class DistanceProfile(Result):
    """Mean pair MI per distance bin, with its shuffle null and a slope on distance.

    Attributes:
        edges: ``[bins + 1]`` integer distance edges; bin ``b`` holds ``edges[b] <= |i - j| < edges[b + 1]``.
        centres: ``[bins]`` mean distance of the pairs in each bin.
        count: ``[bins]`` pairs per bin (each unordered pair once).
        mean: ``[..., bins]`` mean MI of the pairs in each bin.
        null_mean: ``[..., bins]`` mean over shuffles of each shuffle's binned mean (None without a null).
        null_q95: ``[..., bins]`` 95th percentile over shuffles of the binned means (None without a null).
        corrected: ``[..., bins]`` ``mean - null_mean`` (None without a null).
        slope: ``[...]`` OLS slope of the pair MI on the distance (nats per token), over every
            binned pair (not the bin means: each pair counts once, the far bins hold most pairs).
        slope_null_q05, slope_null_q95: ``[...]`` 5th and 95th percentiles of the same slope of
            each shuffle (None without a null).
        n_tokens: tokens per matrix.
        n_shuffles: shuffles in the null (0 without one).
    """

    edges: Int[torch.Tensor, " edges"]
    centres: Float[torch.Tensor, " bins"]
    count: Int[torch.Tensor, " bins"]
    mean: Float[torch.Tensor, "... bins"]
    null_mean: Float[torch.Tensor, "... bins"] | None
    null_q95: Float[torch.Tensor, "... bins"] | None
    corrected: Float[torch.Tensor, "... bins"] | None
    slope: Float[torch.Tensor, "..."]
    slope_null_q05: Float[torch.Tensor, "..."] | None
    slope_null_q95: Float[torch.Tensor, "..."] | None
    n_tokens: int
    n_shuffles: int = 0

    def rows(self) -> list[dict]:
        """One row per leading index and distance bin: labels, the bin, its pairs, mean, null and slope.

        Example:
            >>> mi = torch.rand(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            >>> p = distance_profile(mi + mi.T, n_bins=2)
            >>> [(r["distance"], r["pairs"]) for r in p.rows()]
            [('1', 5), ('2-5', 10)]
        """
        names = [
            f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}"
            for lo, hi in zip(self.edges[:-1].tolist(), self.edges[1:].tolist())
        ]
        out = []
        for labels, idx in index_rows(self.axes, tuple(self.slope.shape)):
            for b, name in enumerate(names):
                row = {**labels, "distance": name, "pairs": int(self.count[b]), "centre": float(self.centres[b])}
                row["mean"] = float(self.mean[idx][b])
                if self.null_mean is not None and self.null_q95 is not None and self.corrected is not None:
                    row |= {"null_mean": float(self.null_mean[idx][b]), "null_q95": float(self.null_q95[idx][b])}
                    row["corrected"] = float(self.corrected[idx][b])
                row["slope"] = float(self.slope[idx])
                out.append(row)
        return out


def distance_profile(
    mi: Float[torch.Tensor, "... tokens tokens"],
    *,
    null: Float[torch.Tensor, "shuffles ... tokens tokens"] | None = None,
    edges: Sequence[int] | torch.Tensor | None = None,
    n_bins: int = 12,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> DistanceProfile:
    """Bin the pair MI of token-by-token matrices by the distance ``|i - j|``, with a shuffle null.

    Only the strict upper triangle is read (each unordered pair once; MI is symmetric). The
    binning is one matrix product: the matrices times a ``[T, T, bins]`` one-hot bin membership
    of each pair, no loop over pairs or bins. The null matrices (e.g. :func:`token_mi` of tokens
    whose hidden dimensions were permuted separately) are binned the same way, per shuffle.

    Args:
        mi: ``[..., T, T]`` MI between tokens (e.g. one matrix per depth).
        null: ``[shuffles, ..., T, T]`` the same MI on shuffled data, or None.
        edges: integer distance edges (increasing, from >= 1); default :func:`distance_edges`
            ``(T, n_bins)``. Pairs outside ``[edges[0], edges[-1])`` are left out.
        n_bins: bins of the default edges.
        axes: labels of the leading axes of ``mi`` (e.g. ``{"depth": ("embed", "L0", ...)}``).

    Returns:
        A :class:`DistanceProfile`.

    Raises:
        TlprobeError: ``mi`` not square, a null of another shape, bad edges, an empty bin, or a
            working set over the free memory.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> i = torch.arange(8.0)
        >>> mi = 1.0 / (1.0 + (i[:, None] - i[None, :]).abs())  # decays with distance
        >>> null = torch.rand(4, 8, 8, generator=g) * 0.01
        >>> p = distance_profile(mi, null=null, n_bins=3)
        >>> p.edges.tolist(), bool(p.slope < p.slope_null_q05)
        ([1, 2, 4, 8], True)
    """
    mi = as_tensor(mi, "mi")
    check_ndim(mi, "mi", 2, "[..., tokens, tokens]")
    T = int(mi.shape[-1])
    if mi.shape[-2] != T:
        raise TlprobeError(f"mi has shape {tuple(mi.shape)}; expected square [..., tokens, tokens] matrices")
    check_min_samples(T, 2, "a distance profile", "give at least 2 tokens")
    check_finite(mi, "mi")
    e = distance_edges(T, n_bins) if edges is None else torch.as_tensor(edges).long().cpu()
    if e.ndim != 1 or len(e) < 2 or bool((e[1:] <= e[:-1]).any()) or int(e[0]) < 1:
        raise TlprobeError(f"edges must be increasing integers from >= 1 (two at least), got {e.tolist()}")
    dtype = torch.float64
    lead = tuple(mi.shape[:-2])
    shuffles = 0 if null is None else int(null.shape[0])
    need = (T * T * (len(e) + 2) + (1 + shuffles) * math.prod(lead) * T * T) * 8
    check_memory(
        need,
        f"the distance binning of {(1 + shuffles) * math.prod(lead)} matrices of {T} tokens",
        "give a shorter text",
    )
    member = _membership(e, T, dtype).to(mi.device)  # [T, T, bins]
    count = member.sum((0, 1))
    if bool((count == 0).any()):
        empty = e[:-1][count.cpu() == 0].tolist()
        raise TlprobeError(f"distance bins starting at {empty} hold no pair of {T} tokens; give edges below {T}")
    idx = torch.arange(T, device=mi.device, dtype=dtype)
    d = (idx[None, :] - idx[:, None]).abs()
    centres = (member * d[..., None]).sum((0, 1)) / count
    w = member.sum(-1)  # 1 for every binned pair

    def binned(m: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ij,ijb->...b", m.to(dtype), member) / count

    mean, slope = binned(mi), _slope(mi.to(dtype), d, w)
    null_mean = null_q95 = corrected = q05 = q95 = None
    if null is not None:
        null = as_tensor(null, "null").to(mi.device)
        if tuple(null.shape[1:]) != tuple(mi.shape) or shuffles < 1:
            raise TlprobeError(
                f"null has shape {tuple(null.shape)}; expected [shuffles, {', '.join(map(str, mi.shape))}] (one matrix per shuffle)"
            )
        check_finite(null, "null")
        per_shuffle = binned(null)  # [shuffles, ..., bins]
        null_mean = per_shuffle.mean(0)
        null_q95 = torch.quantile(per_shuffle, HIGH_Q, dim=0)
        corrected = mean - null_mean
        slopes = _slope(null.to(dtype), d, w)  # [shuffles, ...]
        q05, q95 = torch.quantile(slopes, LOW_Q, dim=0), torch.quantile(slopes, HIGH_Q, dim=0)
    return DistanceProfile(
        edges=e,
        centres=centres.cpu(),
        count=count.long().cpu(),
        mean=mean.cpu(),
        null_mean=None if null_mean is None else null_mean.cpu(),
        null_q95=None if null_q95 is None else null_q95.cpu(),
        corrected=None if corrected is None else corrected.cpu(),
        slope=slope.cpu(),
        slope_null_q05=None if q05 is None else q05.cpu(),
        slope_null_q95=None if q95 is None else q95.cpu(),
        n_tokens=T,
        n_shuffles=shuffles,
        axes=axes or {},
    )


# -- attention against MI ------------------------------------------------------------------


def average_ranks(x: Float[torch.Tensor, "... n"]) -> Float[torch.Tensor, "... n"]:
    """Ranks ``1 .. n`` along the last axis, ties given their average rank (``scipy.stats.rankdata``).

    Vectorised: a stable sort, then each run of equal values takes the mean of its first and
    last sorted index (the trick of :func:`tlprobe.analyses.mi.copnorm`), scattered back.

    Example:
        >>> average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist()
        [3.5, 1.0, 3.5, 2.0]
    """
    x = as_tensor(x, "x")
    n = x.shape[-1]
    v, order = x.double().sort(dim=-1, stable=True)
    idx = torch.arange(n, device=x.device, dtype=torch.float64).expand_as(v)
    edge = torch.ones_like(v[..., :1], dtype=torch.bool)
    diff = v[..., 1:] != v[..., :-1]
    first = torch.where(torch.cat([edge, diff], -1), idx, 0.0).cummax(-1).values
    last = torch.where(torch.cat([diff, edge], -1), idx, float(n - 1)).flip(-1).cummin(-1).values.flip(-1)
    return torch.empty_like(v).scatter_(-1, order, (first + last) / 2 + 1)


def _standardise(r: torch.Tensor) -> torch.Tensor:
    """Centred, unit-norm vectors along the last axis (NaN for a constant vector)."""
    c = r - r.mean(-1, keepdim=True)
    return c / c.norm(dim=-1, keepdim=True)


def spearman_rho(x: Float[torch.Tensor, "... n"], y: Float[torch.Tensor, "... n"]) -> Float[torch.Tensor, "..."]:
    """Spearman's rank correlation along the last axis, broadcast over the others (NaN if a side is constant).

    Example:
        >>> float(spearman_rho(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 8.0, 27.0])))
        1.0
    """
    a, b = torch.broadcast_tensors(as_tensor(x, "x"), as_tensor(y, "y"))
    return (_standardise(average_ranks(a)) * _standardise(average_ranks(b))).sum(-1)


def partial_rho(
    r_xy: Float[torch.Tensor, "..."], r_xz: Float[torch.Tensor, "..."], r_yz: Float[torch.Tensor, "..."]
) -> Float[torch.Tensor, "..."]:
    """Partial correlation of x and y given z from the three pairwise correlations.

    ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz**2)(1 - r_yz**2))``; on rank correlations it equals
    the correlation of the ranks' residuals after a least-squares fit on z's ranks.

    Example:
        >>> round(float(partial_rho(torch.tensor(0.5), torch.tensor(0.5), torch.tensor(0.5))), 4)
        0.3333
    """
    return (r_xy - r_xz * r_yz) / ((1 - r_xz**2) * (1 - r_yz**2)).sqrt()


def bh_q_values(p: Float[torch.Tensor, "..."]) -> Float[torch.Tensor, "..."]:
    """Benjamini-Hochberg q-values over every entry of ``p`` (``scipy.stats.false_discovery_control``).

    Example:
        >>> bh_q_values(torch.tensor([0.01, 0.04, 0.03])).tolist()
        [0.03, 0.04, 0.04]
    """
    from scipy.stats import false_discovery_control  # ~0.3 s to import: only the tracking test needs scipy

    flat = as_tensor(p, "p").detach().double().cpu().flatten().numpy()
    return torch.from_numpy(np.asarray(false_discovery_control(flat, method="bh"))).reshape(p.shape)


@dataclass(frozen=True, eq=False)
class AttentionTracking(Result):
    """Whether each head's attention from a query token follows the MI between tokens, or distance.

    The vectors are over (query occurrence, key) pairs: every key a query occurrence attends to,
    all occurrences concatenated.

    Attributes:
        rho_mi: ``[..., head]`` Spearman rank correlation of the attention with the MI.
        rho_distance: ``[..., head]`` Spearman of the attention with the distance ``|i - j|``
            (negative: the head prefers near keys).
        rho_mi_distance: ``[..., head]`` Spearman of the MI with the distance (one per MI vector:
            the same for every head that shares it).
        partial: ``[..., head]`` partial Spearman correlation of attention and MI given distance.
        p_value: ``[..., head]`` one-sided permutation p of ``rho_mi`` (keys permuted, the same
            permutations for every head): ``(1 + #{null >= observed}) / (1 + permutations)``.
        q_value: ``[..., head]`` Benjamini-Hochberg q-values over every head.
        null_q95: ``[..., head]`` 95th percentile of the permutation null of ``rho_mi``.
        attention: ``[..., head, pairs]`` the attention vectors correlated.
        mi: ``[..., head, pairs]`` the MI vectors (each head's copy of the one it was correlated with).
        distance: ``[pairs]`` the distances.
        n_permutations: permutations drawn.
        seed: the permutation seed.
    """

    rho_mi: Float[torch.Tensor, "... head"]
    rho_distance: Float[torch.Tensor, "... head"]
    rho_mi_distance: Float[torch.Tensor, "... head"]
    partial: Float[torch.Tensor, "... head"]
    p_value: Float[torch.Tensor, "... head"]
    q_value: Float[torch.Tensor, "... head"]
    null_q95: Float[torch.Tensor, "... head"]
    attention: Float[torch.Tensor, "... head pairs"]
    mi: Float[torch.Tensor, "... head pairs"]
    distance: Float[torch.Tensor, " pairs"]
    n_permutations: int
    seed: int

    @property
    def n_pairs(self) -> int:
        """The (occurrence, key) pairs each correlation is over."""
        return int(self.distance.shape[-1])

    def rows(self) -> list[dict]:
        """One row per leading index and head: labels, the correlations, p and q.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> t = attention_tracking(torch.rand(2, 40, generator=g), torch.rand(40, generator=g),
            ...                        torch.arange(40.0), n_permutations=19, axes={"head": ("H0", "H1")})
            >>> sorted(t.rows()[0])
            ['head', 'p_value', 'partial', 'q_value', 'rho_distance', 'rho_mi', 'rho_mi_distance']
        """
        return [
            {
                **labels,
                "rho_mi": float(self.rho_mi[idx]),
                "rho_distance": float(self.rho_distance[idx]),
                "rho_mi_distance": float(self.rho_mi_distance[idx]),
                "partial": float(self.partial[idx]),
                "p_value": float(self.p_value[idx]),
                "q_value": float(self.q_value[idx]),
            }
            for labels, idx in index_rows(self.axes, tuple(self.rho_mi.shape))
        ]


def attention_tracking(
    attention: Float[torch.Tensor, "... head pairs"],
    mi: Float[torch.Tensor, "... pairs"],
    distance: Float[torch.Tensor, " pairs"],
    *,
    n_permutations: int = 1000,
    seed: int = 0,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> AttentionTracking:
    """Rank-correlate each head's attention with the MI between the tokens, and with their distance.

    All correlations are Spearman's (ranks with ties averaged, as ``scipy.stats.spearmanr``),
    vectorised over the leading axes and heads. The permutation null permutes the MI over the
    pairs (seeded on the CPU; every head and leading index sees the same permutations), which
    keeps both marginals and breaks their pairing; ``p`` is one-sided (attention *tracks* MI:
    large ``rho_mi``). The q-values control the false discovery rate over all heads.

    Args:
        attention: ``[..., head, pairs]`` attention from a query to each key (e.g. ``[layer, head, pairs]``).
        mi: ``[..., pairs]`` MI between the query and each key (e.g. that of the residual stream
            each layer reads), broadcast over the heads.
        distance: ``[pairs]`` token distance of each pair.
        n_permutations: permutations of the null (>= 1).
        seed: the permutation seed.
        axes: labels of the leading axes, the heads included (e.g. ``{"layer": ..., "head": ...}``).

    Returns:
        An :class:`AttentionTracking`.

    Raises:
        TlprobeError: shapes that do not line up, fewer than 3 pairs, non-finite values, or a
            permutation null over the free memory (fewer ``n_permutations``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> mi = torch.rand(3, 50, generator=g)
        >>> att = torch.stack([mi, torch.rand(3, 50, generator=g)], 1)  # head 0 follows MI
        >>> t = attention_tracking(att, mi, torch.arange(50.0), n_permutations=99, seed=0)
        >>> t.rho_mi[:, 0].tolist(), bool((t.p_value[:, 0] == 0.01).all())
        ([1.0, 1.0, 1.0], True)
    """
    att = as_tensor(attention, "attention")
    m = as_tensor(mi, "mi")
    dist = as_tensor(distance, "distance")
    check_ndim(att, "attention", 2, "[..., head, pairs]")
    n = int(att.shape[-1])
    if tuple(m.shape) != tuple(att.shape[:-2]) + (n,) or tuple(dist.shape) != (n,):
        raise TlprobeError(
            f"attention {tuple(att.shape)}, mi {tuple(m.shape)} and distance {tuple(dist.shape)} do not line up; "
            "expected [..., head, pairs], [..., pairs] and [pairs]"
        )
    check_min_samples(n, 3, "a rank correlation", "give more (query, key) pairs")
    for x, name in ((att, "attention"), (m, "mi"), (dist, "distance")):
        check_finite(x, name)
    n_permutations = as_int(n_permutations, "n_permutations", minimum=1)
    seed = as_int(seed, "seed", minimum=0)
    lead = math.prod(m.shape[:-1])
    check_memory(
        8 * n * (n_permutations * (lead + 1) + lead * att.shape[-2]) + 8 * n_permutations * lead * att.shape[-2],
        f"the permutation null of {n_permutations} permutations over {n} pairs",
        "lower n_permutations (--permutations)",
    )
    ra = _standardise(average_ranks(att))  # [..., head, n]
    rm = _standardise(average_ranks(m))  # [..., n]
    rd = _standardise(average_ranks(dist))  # [n]
    r_am = (ra * rm.unsqueeze(-2)).sum(-1)
    r_ad = (ra * rd).sum(-1)
    r_md = (rm * rd).sum(-1)
    part = partial_rho(r_am, r_ad, r_md.unsqueeze(-1))
    gen = torch.Generator().manual_seed(seed)
    perm = torch.rand(n_permutations, n, generator=gen).argsort(-1).to(rm.device)  # [P, n]
    shuffled = rm[..., perm]  # [..., P, n]: every leading index sees the same permutations
    null = torch.einsum("...hn,...pn->...hp", ra, shuffled)  # [..., head, P]
    exceed = (null >= r_am.unsqueeze(-1) - 1e-12).sum(-1)  # ties with the observed count as >=
    p = (1 + exceed).double() / (1 + n_permutations)
    return AttentionTracking(
        rho_mi=r_am.cpu(),
        rho_distance=r_ad.cpu(),
        rho_mi_distance=r_md.unsqueeze(-1).expand_as(r_am).contiguous().cpu(),
        partial=part.cpu(),
        p_value=p.cpu(),
        q_value=bh_q_values(p),
        null_q95=torch.quantile(null, HIGH_Q, dim=-1).cpu(),
        attention=att.cpu(),
        mi=m.unsqueeze(-2).expand_as(att).contiguous().cpu(),
        distance=dist.cpu(),
        n_permutations=n_permutations,
        seed=seed,
        axes=axes or {},
    )
