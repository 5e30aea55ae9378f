"""Representational geometry: RDMs, their comparison with permutation tests, noise ceilings, selectivity.

Representational similarity analysis (RSA) describes a set of conditions (stimuli, tokens,
prompts) by how far apart the model places them, a *representational dissimilarity matrix*
(RDM), and compares those matrices between layers, models or a hypothesis:

* :func:`rdm`: the ``[..., conditions, conditions]`` RDM of ``[..., conditions, features]``
  patterns (correlation distance or rsatoolbox's squared euclidean distance per feature);
* :func:`rdm_vector`: its strict upper triangle, the vector every comparison works on;
* :func:`category_rdm`: a hypothesis RDM, 0 within a category and 1 across;
* :func:`condition_means`: each condition's mean pattern over its samples;
* :class:`RDMs`: RDMs with their condition names and categories (for figures and tables);
* :func:`compare_rdms`: Spearman, Kendall tau-a, Pearson or cosine between RDMs;
* :func:`rsa_test`: the comparison with a seeded permutation null over the conditions, as an
  :class:`RSATest`;
* :func:`noise_ceiling`: how well any RDM can match repeated measurements, as a
  :class:`NoiseCeiling` (rsatoolbox's leave-one-out bounds);
* :func:`category_selectivity`: the per-feature one-way ANOVA across categories, the share of
  selective features and its permutation null, as a :class:`Selectivity`.

Every function is batched over leading axes (layers, heads, models) and works in float64.
Numbers follow rsatoolbox 0.3 (``calc_rdm``, ``rdm.compare``, ``inference.boot_noise_ceiling``)
and scipy (``rankdata``, ``f_oneway``, ``false_discovery_control``); the tests compare against
them. A comparison that is undefined (a constant RDM vector) is NaN, never a silent number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.stats
import torch
from jaxtyping import Bool, Float, Int

from tlprobe.analyses.similarity import TILE_CELLS
from tlprobe.checks import as_float, as_int, as_tensor, check_choice, check_finite, check_memory, check_ndim
from tlprobe.errors import TlprobeError
from tlprobe.result import Result, index_rows

__all__ = [
    "CompareMethod",
    "NoiseCeiling",
    "RDMMethod",
    "RDMs",
    "RSATest",
    "Selectivity",
    "category_rdm",
    "category_selectivity",
    "compare_rdms",
    "condition_means",
    "noise_ceiling",
    "rdm",
    "rdm_vector",
    "rsa_test",
]

RDMMethod = Literal["correlation", "euclidean"]
#: ``"kendall"`` is Kendall's tau-a (rsatoolbox's ``"tau-a"``; rsatoolbox's ``"kendall"`` is tau-b).
CompareMethod = Literal["spearman", "kendall", "pearson", "cosine"]
Correction = Literal["fdr_bh", "bonferroni", "none"]

RDM_METHODS = ("correlation", "euclidean")
COMPARE_METHODS = ("spearman", "kendall", "pearson", "cosine")
CORRECTIONS = ("fdr_bh", "bonferroni", "none")

#: Null values within this of the observed one count as ties (``>=``): rounding in a different
#: summation order must not turn an exact tie into a significant result.
TIE_TOLERANCE = 1e-12


# -- RDMs ----------------------------------------------------------------------------------


def rdm(
    x: Float[torch.Tensor, "... conditions features"], *, method: RDMMethod = "correlation"
) -> Float[torch.Tensor, "... conditions conditions"]:
    """The representational dissimilarity matrix of every leading index's condition patterns.

    Args:
        x: ``[..., conditions, features]``: one pattern (row) per condition, e.g. the mean
            residual vector of each stimulus, per layer.
        method: ``"correlation"``: ``1 - r`` with ``r`` the Pearson correlation between two
            condition patterns (rsatoolbox ``calc_rdm(method="correlation")``);
            ``"euclidean"``: the squared euclidean distance divided by the number of features
            (rsatoolbox's ``"euclidean"``, which is ``"squared euclidean"`` per feature).

    Returns:
        ``[..., conditions, conditions]`` float64 on ``x``'s device, exactly symmetric, with an
        exactly zero diagonal.

    Raises:
        TlprobeError: fewer than 2 conditions, non-finite values, a result too large for the
            memory, or (``"correlation"``) a condition pattern that is constant across its
            features (its correlation is undefined; the message names where).

    Example:
        >>> x = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.5], [3.0, 1.0, 2.0]])
        >>> rdm(x).round(decimals=3)
        tensor([[0.0000, 0.0020, 1.5000],
                [0.0020, 0.0000, 1.4440],
                [1.5000, 1.4440, 0.0000]], dtype=torch.float64)
        >>> rdm(x, method="euclidean")[0, 1].item()
        5.75
    """
    check_choice(method, RDM_METHODS, "RDM method")
    x = as_tensor(x, "x")
    check_ndim(x, "x", 2, "[..., conditions, features]")
    *lead, c, f = x.shape
    if c < 2:
        raise TlprobeError(f"an RDM needs at least 2 conditions, got {c}; pass one pattern per condition")
    if f < 1:
        raise TlprobeError("the condition patterns have no features; pass [..., conditions, features]")
    check_finite(x, "x")
    check_memory(
        (3 * math.prod(lead) * c * c + 2 * x.numel()) * 8,
        f"the RDMs of {c} conditions for {math.prod(lead)} leading index(es)",
        "pass fewer conditions or leading indices per call",
        device=x.device,
    )
    x = x.double()
    if method == "correlation":
        xc = x - x.mean(-1, keepdim=True)
        norm = torch.linalg.vector_norm(xc, dim=-1)
        # A constant pattern's centred norm is rounding noise (about eps * |x| per feature).
        amax = x.abs().amax(-1)
        flat = (norm <= torch.finfo(torch.float64).eps * f * amax).reshape(-1)
        if bool(flat.any()):
            first = int(flat.nonzero()[0, 0])
            where = tuple(int(i) for i in np.unravel_index(first, (*lead, c)))
            at = f" at leading index {where[:-1]}" if lead else ""
            raise TlprobeError(
                f"condition {where[-1]}{at} is constant across its {f} feature(s) "
                f"({int(flat.sum())} such pattern(s)): its correlation distance is undefined; "
                "drop that condition or use method='euclidean'"
            )
        xn = xc / norm[..., None]
        d = 1.0 - xn @ xn.mT
    else:
        # Distances do not change when every pattern is shifted; centring first keeps the
        # Gram identity |a|^2 + |b|^2 - 2ab accurate when the patterns share a large offset.
        xc = x - x.mean(-2, keepdim=True)
        sq = xc.square().sum(-1)
        d = ((sq[..., :, None] + sq[..., None, :] - 2.0 * (xc @ xc.mT)) / f).clamp_(min=0.0)
    d = (d + d.mT) / 2  # exactly symmetric: a + b == b + a in floating point
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d


def rdm_vector(rdm: Float[torch.Tensor, "... conditions conditions"]) -> Float[torch.Tensor, "... pairs"]:
    """The strict upper triangle of RDMs, row by row (scipy ``squareform`` and rsatoolbox order).

    Args:
        rdm: ``[..., conditions, conditions]``.

    Returns:
        ``[..., conditions * (conditions - 1) / 2]``: pairs ``(0, 1), (0, 2), ..., (1, 2), ...``.

    Raises:
        TlprobeError: the last two dimensions are not square.

    Example:
        >>> rdm_vector(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]]))
        tensor([1., 2., 3.])
    """
    m = _square(rdm, "rdm", double=False)
    i, j = torch.triu_indices(m.shape[-1], m.shape[-1], 1, device=m.device)
    return m[..., i, j]


def category_rdm(labels: Sequence[str]) -> Float[torch.Tensor, "conditions conditions"]:
    """A hypothesis RDM: 0 between conditions of the same category, 1 between categories.

    Args:
        labels: the category of each condition, in the conditions' order.

    Returns:
        ``[conditions, conditions]`` float64.

    Raises:
        TlprobeError: ``labels`` is a string or has fewer than 2 entries.

    Example:
        >>> category_rdm(["animal", "animal", "tool"])
        tensor([[0., 0., 1.],
                [0., 0., 1.],
                [1., 1., 0.]], dtype=torch.float64)
    """
    codes, _ = _codes(labels, "labels")
    if codes.numel() < 2:
        raise TlprobeError(f"a category RDM needs at least 2 conditions, got {codes.numel()}")
    return (codes[:, None] != codes[None, :]).double()


def condition_means(
    x: Float[torch.Tensor, "... samples features"],
    conditions: Int[torch.Tensor, " samples"] | Sequence[int],
    n_conditions: int,
) -> Float[torch.Tensor, "... conditions features"]:
    """The mean pattern of each condition over its samples (e.g. a word's vector over its sentences).

    One matrix product with the one-hot ``[samples, conditions]`` membership, batched over the
    leading axes, in float64.

    Args:
        x: ``[..., samples, features]``.
        conditions: ``[samples]`` integer condition of each sample, in ``0 .. n_conditions - 1``.
        n_conditions: the number of conditions.

    Returns:
        ``[..., n_conditions, features]`` float64 on ``x``'s device.

    Raises:
        TlprobeError: not one condition per sample, a condition out of range or without
            samples, or non-finite values.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
        >>> condition_means(x, [0, 0, 1], 2)
        tensor([[2., 1.],
                [5., 5.]], dtype=torch.float64)
    """
    x = as_tensor(x, "x")
    check_ndim(x, "x", 2, "[..., samples, features]")
    k = as_int(n_conditions, "n_conditions", minimum=1)
    codes = as_tensor(conditions, "conditions")
    if codes.ndim != 1 or codes.numel() != x.shape[-2] or codes.is_floating_point() or codes.dtype == torch.bool:
        raise TlprobeError(
            f"conditions must be one integer per sample ({x.shape[-2]}), got shape {tuple(codes.shape)} "
            f"and dtype {codes.dtype}"
        )
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
        raise TlprobeError(f"conditions must lie in 0..{k - 1}, got {int(codes.min())}..{int(codes.max())}")
    check_finite(x, "x")
    onehot = torch.nn.functional.one_hot(codes.long().cpu(), k).double().to(x.device)  # [samples, k]
    counts = onehot.sum(0)
    if bool((counts == 0).any()):
        empty = (counts == 0).nonzero()[:8, 0].tolist()
        raise TlprobeError(f"conditions {empty} have no samples; give every condition at least one sample")
    return (onehot.mT @ x.double()) / counts[:, None]


@dataclass(frozen=True, eq=False)
class RDMs(Result):
    """RDMs with the names of their conditions (and categories), for figures and ``results.json``.

    Attributes:
        dissimilarities: ``[..., conditions, conditions]`` (e.g. from :func:`rdm`).
        conditions: one name per condition.
        categories: the category of each condition, or ``()`` when there are none.
        method: how the dissimilarities were computed (e.g. ``"correlation"``).

    Example:
        >>> r = RDMs(category_rdm(["a", "a", "b"]), conditions=("x", "y", "z"), categories=("a", "a", "b"))
        >>> r.rows()[1]
        {'condition_a': 'x', 'condition_b': 'z', 'dissimilarity': 1.0}
    """

    dissimilarities: Float[torch.Tensor, "... conditions conditions"]
    conditions: tuple[str, ...]
    categories: tuple[str, ...] = ()
    method: str = "correlation"

    def __post_init__(self):
        super().__post_init__()
        d = self.dissimilarities
        object.__setattr__(self, "conditions", tuple(str(c) for c in self.conditions))
        object.__setattr__(self, "categories", tuple(str(c) for c in self.categories))
        if d.ndim < 2 or d.shape[-1] != d.shape[-2] or d.shape[-1] != len(self.conditions):
            raise TlprobeError(
                f"RDMs of shape {tuple(d.shape)} need [..., conditions, conditions] with one name per "
                f"condition ({len(self.conditions)} given)"
            )
        if self.categories and len(self.categories) != len(self.conditions):
            raise TlprobeError(
                f"{len(self.categories)} categories for {len(self.conditions)} conditions; give one per condition"
            )

    def rows(self) -> list[dict]:
        """One row per leading index and pair ``i < j``: labels, ``condition_a``, ``condition_b``, ``dissimilarity``."""
        c = len(self.conditions)
        i, j = torch.triu_indices(c, c, 1).tolist()
        vec = rdm_vector(self.dissimilarities)
        return [
            {**labels, "condition_a": self.conditions[a], "condition_b": self.conditions[b], "dissimilarity": float(v)}
            for labels, idx in index_rows(self.axes, tuple(vec.shape[:-1]))
            for a, b, v in zip(i, j, vec[idx].tolist())
        ]


# -- comparing RDMs ------------------------------------------------------------------------


def compare_rdms(
    a: Float[torch.Tensor, "... conditions conditions"],
    b: Float[torch.Tensor, "... conditions conditions"],
    *,
    method: CompareMethod = "spearman",
) -> Float[torch.Tensor, "..."]:
    """Similarity of RDMs, computed on their upper triangles (leading axes broadcast).

    Args:
        a, b: ``[..., conditions, conditions]`` symmetric RDMs (their leading axes broadcast,
            e.g. ``[layer, c, c]`` against one hypothesis ``[c, c]``).
        method: ``"spearman"``: Pearson correlation of the average ranks (ties averaged, as
            ``scipy.stats.rankdata``); ``"kendall"``: Kendall's tau-a,
            ``sum_{p<q} sign(a_p - a_q) sign(b_p - b_q) / (m (m - 1) / 2)`` over the ``m``
            pairs (no tie correction; rsatoolbox's ``"tau-a"``): quadratic in the pairs, tiled
            so memory stays bounded, and linear when one of the RDMs takes two values (a
            category model, see :func:`category_rdm`); ``"pearson"``; ``"cosine"`` (not centred).

    Returns:
        ``[...]`` float64. NaN where either RDM vector is constant (all-zero for ``"cosine"``):
        the comparison is undefined there (rsatoolbox would return 0 or NaN depending on the
        method).

    Raises:
        TlprobeError: an unknown method, non-square, asymmetric or non-finite RDMs, fewer than
            3 conditions, different numbers of conditions, or leading axes that do not broadcast.

    Example:
        >>> a = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 4.0], [2.0, 4.0, 0.0]])
        >>> b = torch.tensor([[0.0, 1.0, 3.0], [1.0, 0.0, 2.0], [3.0, 2.0, 0.0]])
        >>> compare_rdms(a, b).item(), round(compare_rdms(a, b, method="kendall").item(), 4)
        (0.5, 0.3333)
    """
    check_choice(method, COMPARE_METHODS, "comparison method")
    va, vb = _pair_vectors(a, b)
    return _compare(va, vb, method)


def _compare(va: torch.Tensor, vb: torch.Tensor, method: str) -> torch.Tensor:
    """``compare_rdms`` of ``[..., pairs]`` vectors (float64, broadcast)."""
    lead = torch.broadcast_shapes(va.shape[:-1], vb.shape[:-1])
    if method == "kendall":
        m = va.shape[-1]
        fa, fb = (v.expand(*lead, m).reshape(-1, m) for v in (va, vb))
        factors = _tau_factors(fa, fb)
        sums = _tau_sums(fa, fb) if factors is None else 2 * (factors[0] * factors[1]).sum(-1)
        out = sums / (m * (m - 1))
        undefined = _constant(fa) | _constant(fb)
        return out.masked_fill_(undefined, math.nan).reshape(lead)
    ua, ub = _unit(va, method), _unit(vb, method)
    return (ua * ub).sum(-1)


def _unit(v: torch.Tensor, method: str) -> torch.Tensor:
    """``v`` [..., pairs] prepared so that a dot product is the comparison: ranked (spearman),
    centred (spearman, pearson), unit norm; NaN rows where the comparison is undefined."""
    undefined = _constant(v) if method != "cosine" else (v == 0).all(-1)
    if method == "spearman":
        v = _ranks(v)
    if method != "cosine":
        v = v - v.mean(-1, keepdim=True)
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v.masked_fill(undefined[..., None], math.nan)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last axis (``scipy.stats.rankdata``, ties averaged)."""
    ranks = scipy.stats.rankdata(v.detach().cpu().numpy(), axis=-1)
    return torch.from_numpy(np.ascontiguousarray(ranks, dtype=np.float64)).to(v.device)


def _constant(v: torch.Tensor) -> torch.Tensor:
    """Rows of ``[..., m]`` whose values are all equal (exactly: a rank or sign has no rounding)."""
    return (v == v[..., :1]).all(-1)


def _tau_sums(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """``sum_{p != q} sign(a_p - a_q) sign(b_p - b_q)`` per row of ``[n, m]``, tiled over pair rows."""
    ra, rb = _order_ranks(fa), _order_ranks(fb)
    n, m = fa.shape
    step = max(1, TILE_CELLS // max(1, n * m))
    total = torch.zeros(n, dtype=torch.float64, device=fa.device)
    for r in range(0, m, step):
        d = (ra[:, r : r + step, None] - ra[:, None, :]) * (rb[:, r : r + step, None] - rb[:, None, :])
        total += torch.sign(d).sum((-1, -2), dtype=torch.float64)
    return total


def _tau_factors(fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(u, w)`` with tau sum ``= 2 * sum(u * w)`` when ``fb`` or ``fa`` takes two values per row, else None.

    With two values (a category RDM), ``sign(b_p - b_q) = beta_p - beta_q`` for the indicator
    ``beta`` of the larger value, and ``sum_q sign(a_p - a_q) = 2 rank_p - m - 1`` (average
    ranks, exactly), so the double sum is ``2 sum_p beta_p (2 rank_p - m - 1)``: linear in the
    pairs instead of quadratic, and exact (integers in float64). ``w`` comes from ``fb``, so a
    permutation of ``b``'s pairs permutes ``w`` only.
    """

    def two_valued(v: torch.Tensor) -> bool:
        return bool(((v == v.amin(-1, keepdim=True)) | (v == v.amax(-1, keepdim=True))).all())

    def signed(v: torch.Tensor) -> torch.Tensor:
        return 2 * _ranks(v) - v.shape[-1] - 1

    def indicator(v: torch.Tensor) -> torch.Tensor:
        return (v == v.amax(-1, keepdim=True)).double()

    if two_valued(fb):
        return signed(fa), indicator(fb)
    if two_valued(fa):
        return indicator(fa), signed(fb)
    return None


def _order_ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks as float32: the order of ``v``, held exactly (half-integers below 2**22).

    A nonzero rank difference is at least 1/2, so the product of two differences is never
    rounded to 0 or flips sign: one ``sign`` per pair of pairs gives the concordance, and the
    tiles move half the bytes of float64.
    """
    if v.shape[-1] >= 2**22:
        raise TlprobeError(f"Kendall's tau over {v.shape[-1]} pairs is too large; use method='spearman'")
    return _ranks(v).float()


def _square(x, name: str, *, double: bool = True) -> torch.Tensor:
    """``x`` as a tensor (float64 with ``double``) of square ``[..., c, c]`` matrices."""
    x = as_tensor(x, name)
    check_ndim(x, name, 2, "[..., conditions, conditions]")
    if x.shape[-1] != x.shape[-2]:
        raise TlprobeError(
            f"{name} has shape {tuple(x.shape)}; an RDM is square [..., conditions, conditions] "
            "(a vector of pairs? rebuild the matrix, e.g. with scipy.spatial.distance.squareform)"
        )
    return x.double() if double and x.dtype != torch.float64 else x


def _checked_rdm(x, name: str) -> torch.Tensor:
    """A finite, symmetric float64 ``[..., c, c]`` with at least 3 conditions."""
    m = _square(x, name)
    c = m.shape[-1]
    if c < 3:
        raise TlprobeError(f"{name} has {c} condition(s); comparing RDMs needs at least 3 (3 pairs)")
    check_finite(m, name)
    scale = float(m.abs().amax()) if m.numel() else 0.0
    if bool(((m - m.mT).abs() > 1e-6 * scale).any()):
        raise TlprobeError(
            f"{name} is not symmetric; an RDM is symmetric (build it with rdm(), or symmetrise: (m + m.mT) / 2)"
        )
    return m


def _pair_vectors(a, b, names: tuple[str, str] = ("a", "b")) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked upper-triangle vectors of two RDM stacks, on one device, leading axes broadcastable."""
    ma, mb = _checked_rdm(a, names[0]), _checked_rdm(b, names[1])
    if ma.shape[-1] != mb.shape[-1]:
        raise TlprobeError(
            f"{names[0]} has {ma.shape[-1]} conditions and {names[1]} {mb.shape[-1]}; "
            "compare RDMs of the same conditions"
        )
    try:
        torch.broadcast_shapes(ma.shape[:-2], mb.shape[:-2])
    except RuntimeError:
        raise TlprobeError(
            f"the leading axes of {names[0]} {tuple(ma.shape[:-2])} and {names[1]} {tuple(mb.shape[:-2])} "
            "do not broadcast; give them the same leading axes, or none to one of them"
        ) from None
    return rdm_vector(ma), rdm_vector(mb).to(ma.device)


# -- the permutation test ------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RSATest(Result):
    """An RDM comparison with its permutation null (see :func:`rsa_test`).

    Attributes:
        observed: ``[...]`` :func:`compare_rdms` of the two RDMs.
        null: ``[..., permutations]`` the comparison with ``b``'s conditions permuted (rows and
            columns together); the same permutations for every leading index.
        p_value: ``[...]`` one-sided ``(1 + #{null >= observed}) / (1 + permutations)``; NaN
            where ``observed`` is NaN.
        method: the comparison method.
        n_permutations: permutations in the null.
        seed: seed of the permutations.
    """

    observed: Float[torch.Tensor, "..."]
    null: Float[torch.Tensor, "... permutations"]
    p_value: Float[torch.Tensor, "..."]
    method: str
    n_permutations: int
    seed: int

    def rows(self) -> list[dict]:
        """One row per leading index: its labels, ``observed``, ``p_value``, ``null_mean``, ``null_q95``.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> a = rdm(torch.randn(2, 6, 4, generator=g, dtype=torch.float64))
            >>> t = rsa_test(a, a[0], n_permutations=9, axes={"layer": ("L0", "L1")})
            >>> [(r["layer"], r["observed"], r["p_value"]) for r in t.rows()][0]
            ('L0', 1.0, 0.1)
        """
        mean = self.null.mean(-1)
        q95 = _quantile95(self.null)
        return [
            {
                **labels,
                "observed": float(self.observed[idx]),
                "p_value": float(self.p_value[idx]),
                "null_mean": float(mean[idx]),
                "null_q95": float(q95[idx]),
            }
            for labels, idx in index_rows(self.axes, tuple(self.observed.shape))
        ]


def rsa_test(
    a: Float[torch.Tensor, "... conditions conditions"],
    b: Float[torch.Tensor, "... conditions conditions"],
    *,
    method: CompareMethod = "spearman",
    n_permutations: int = 1000,
    seed: int = 0,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> RSATest:
    """Compare RDMs and test the comparison against a permutation null over the conditions.

    Permuting ``b``'s conditions (its rows and columns together) keeps its structure but breaks
    its correspondence with ``a``'s conditions; the p-value is the share of permutations whose
    comparison reaches the observed one (one-sided: is ``a`` *more* like ``b`` than chance?).
    Each permutation acts on the pairs vector through an index tensor, so the null is
    vectorised over leading indices and permutations, in tiles of permutations whose memory is
    bounded. The permutations are drawn on the CPU (``torch.randperm`` from
    ``torch.Generator().manual_seed(seed)``, one after another), so they do not depend on the
    device, the tile size or the leading axes: every leading index sees the same ones.

    Args:
        a, b: ``[..., conditions, conditions]`` symmetric RDMs; leading axes broadcast.
        method: as :func:`compare_rdms`.
        n_permutations: permutations in the null (>= 1); the smallest p-value is
            ``1 / (1 + n_permutations)``.
        seed: a non-negative integer; the same seed gives the same null.
        axes: labels of the (broadcast) leading axes.

    Returns:
        :class:`RSATest`.

    Raises:
        TlprobeError: as :func:`compare_rdms`, or a bad ``n_permutations`` or ``seed``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(8, 5, generator=g, dtype=torch.float64)
        >>> t = rsa_test(rdm(x), rdm(x + 0.1 * torch.randn(8, 5, generator=g, dtype=torch.float64)), n_permutations=99)
        >>> round(t.observed.item(), 3), t.p_value.item()
        (0.991, 0.01)
    """
    check_choice(method, COMPARE_METHODS, "comparison method")
    n_perm = as_int(n_permutations, "n_permutations", minimum=1, fix="use e.g. 1000")
    seed = as_int(seed, "seed", minimum=0)
    va, vb = _pair_vectors(a, b)
    m = va.shape[-1]
    c = (1 + math.isqrt(1 + 8 * m)) // 2
    lead = torch.broadcast_shapes(va.shape[:-1], vb.shape[:-1])
    n = math.prod(lead)
    check_memory(
        (n * n_perm + 4 * n * m + 3 * TILE_CELLS) * 8,
        f"a permutation null of {n_perm} permutations for {n} leading index(es) of {c} conditions",
        "lower n_permutations or pass fewer leading indices per call",
        device=va.device,
    )
    observed = _compare(va, vb, method).reshape(n)
    pair_of = _pair_index(c, va.device)
    gen = torch.Generator().manual_seed(seed)
    null = torch.empty(n, n_perm, dtype=torch.float64, device=va.device)
    if method == "kendall":
        fa, fb = (v.expand(*lead, m).reshape(n, m) for v in (va, vb))
        undefined = _constant(fa) | _constant(fb)
        factors = _tau_factors(fa, fb)
        if factors is not None:  # a two-valued RDM (e.g. a category model): linear in the pairs
            u, w = factors
            step = max(1, TILE_CELLS // (n * m))
            for start in range(0, n_perm, step):
                index = _permuted_pairs(pair_of, _draw(gen, c, min(step, n_perm - start)), va.device)
                null[:, start : start + index.shape[0]] = 2 * torch.einsum("nm,ntm->nt", u, w[:, index]) / (m * (m - 1))
        else:
            ra, rb = _order_ranks(fa), _order_ranks(fb)
            rows = min(m, max(1, TILE_CELLS // (n * m)))
            step = max(1, TILE_CELLS // (n * rows * m))
            for start in range(0, n_perm, step):
                index = _permuted_pairs(pair_of, _draw(gen, c, min(step, n_perm - start)), va.device)
                null[:, start : start + index.shape[0]] = _tau_null(ra, rb[:, index], rows) / (m * (m - 1))
        null.masked_fill_(undefined[:, None], math.nan)
    else:
        ua = _unit(va, method).expand(*lead, m).reshape(n, m)
        ub = _unit(vb, method).expand(*lead, m).reshape(n, m)
        step = max(1, TILE_CELLS // (n * m))
        for start in range(0, n_perm, step):
            index = _permuted_pairs(pair_of, _draw(gen, c, min(step, n_perm - start)), va.device)
            null[:, start : start + index.shape[0]] = torch.einsum("nm,ntm->nt", ua, ub[:, index])
    p = (1 + (null >= observed[:, None] - TIE_TOLERANCE).sum(-1)).double() / (1 + n_perm)
    p = p.masked_fill_(observed.isnan(), math.nan)
    return RSATest(
        observed=observed.reshape(lead).cpu(),
        null=null.reshape(*lead, n_perm).cpu(),
        p_value=p.reshape(lead).cpu(),
        method=method,
        n_permutations=n_perm,
        seed=seed,
        axes=axes or {},
    )


def _draw(gen: torch.Generator, n: int, count: int) -> torch.Tensor:
    """``count`` permutations of ``range(n)``, ``[count, n]``, drawn one by one from ``gen``.

    One ``randperm`` per permutation (a short loop producing only indices; the work on them is
    vectorised): the stream of draws is the same whatever the tile size, so the null does not
    depend on how the permutations were split into tiles.
    """
    return torch.stack([torch.randperm(n, generator=gen) for _ in range(count)])


def _pair_index(c: int, device) -> torch.Tensor:
    """``[c, c]``: the position in the pairs vector of the pair ``(min(i, j), max(i, j))``."""
    i, j = torch.triu_indices(c, c, 1)
    out = torch.zeros(c, c, dtype=torch.long)
    out[i, j] = torch.arange(i.numel())
    out[j, i] = torch.arange(i.numel())
    return out.to(device)


def _permuted_pairs(pair_of: torch.Tensor, perms: torch.Tensor, device) -> torch.Tensor:
    """``[T, pairs]``: pair ``(i, j)`` of ``B[perm][:, perm]`` is ``B``'s pair ``(perm[i], perm[j])``."""
    c = pair_of.shape[0]
    i, j = torch.triu_indices(c, c, 1, device=device)
    perms = perms.to(device)
    return pair_of[perms[:, i], perms[:, j]]


def _tau_null(ra: torch.Tensor, rbp: torch.Tensor, rows: int) -> torch.Tensor:
    """Tau sums of ranks ``ra`` [n, m] against each permuted ``rbp`` [n, T, m], tiled over pair rows."""
    n, t, m = rbp.shape
    total = torch.zeros(n, t, dtype=torch.float64, device=ra.device)
    for r in range(0, m, rows):
        da = ra[:, None, r : r + rows, None] - ra[:, None, None, :]
        d = da * (rbp[:, :, r : r + rows, None] - rbp[:, :, None, :])
        total += torch.sign(d).sum((-1, -2), dtype=torch.float64)
    return total


# -- noise ceiling -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NoiseCeiling(Result):
    """Bounds on how well any model RDM can match repeated measurements (see :func:`noise_ceiling`).

    Attributes:
        lower: ``[...]`` mean over repetitions of the comparison of each repetition's RDM with
            the pooled RDM of the *other* repetitions (leave one out).
        upper: ``[...]`` mean over repetitions of the comparison with the pooled RDM of *all*
            repetitions (it includes the repetition itself, hence an over-estimate).
        method: the comparison method.
        n_repetitions: repetitions pooled.
    """

    lower: Float[torch.Tensor, "..."]
    upper: Float[torch.Tensor, "..."]
    method: str
    n_repetitions: int

    def rows(self) -> list[dict]:
        """One row per leading index: its labels, ``lower``, ``upper``, ``n_repetitions``.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> base = torch.randn(6, 4, generator=g, dtype=torch.float64)
            >>> reps = rdm(base + 0.3 * torch.randn(3, 6, 4, generator=g, dtype=torch.float64))
            >>> list(noise_ceiling(reps).rows()[0])
            ['lower', 'upper', 'n_repetitions']
        """
        return [
            {
                **labels,
                "lower": float(self.lower[idx]),
                "upper": float(self.upper[idx]),
                "n_repetitions": self.n_repetitions,
            }
            for labels, idx in index_rows(self.axes, tuple(self.lower.shape))
        ]


def noise_ceiling(
    rdms: Float[torch.Tensor, "... repetitions conditions conditions"],
    *,
    method: CompareMethod = "spearman",
    axes: Mapping[str, Sequence[str]] | None = None,
) -> NoiseCeiling:
    """Lower and upper noise ceiling of repeated RDMs (rsatoolbox ``boot_noise_ceiling``).

    The pooled RDM is rsatoolbox's ``pool_rdm`` for the method, the RDM that a comparison by
    that method favours, not always the plain mean: for ``"spearman"`` and ``"kendall"`` the
    mean of the repetitions' *ranks*; for ``"pearson"`` the mean of the z-scored vectors
    (standard deviation with ``ddof=0``); for ``"cosine"`` the mean of the vectors divided by
    their root mean square. For ``"pearson"`` and ``"cosine"`` these equal the plain mean's
    comparison only when the repetitions share one scale.

    Args:
        rdms: ``[..., repetitions, conditions, conditions]``: one RDM per repetition (subject,
            seed, half of the data), per leading index.
        method: as :func:`compare_rdms`.
        axes: labels of the leading axes (before ``repetitions``).

    Returns:
        :class:`NoiseCeiling` with ``[...]`` bounds; NaN where a comparison is undefined (a
        constant repetition).

    Raises:
        TlprobeError: fewer than 2 repetitions, or RDMs :func:`compare_rdms` refuses.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> base = torch.randn(8, 5, generator=g, dtype=torch.float64)
        >>> reps = rdm(base + 0.5 * torch.randn(4, 8, 5, generator=g, dtype=torch.float64))
        >>> nc = noise_ceiling(reps)
        >>> bool(nc.lower < nc.upper <= 1), nc.n_repetitions
        (True, 4)
    """
    check_choice(method, COMPARE_METHODS, "comparison method")
    m = _checked_rdm(rdms, "rdms")
    if m.ndim < 3 or m.shape[-3] < 2:
        raise TlprobeError(
            f"rdms has shape {tuple(m.shape)}; a noise ceiling needs [..., repetitions, conditions, conditions] "
            "with at least 2 repetitions"
        )
    v = rdm_vector(m)  # [..., R, pairs]
    r = v.shape[-2]
    if method in ("spearman", "kendall"):
        z = _ranks(v)
    elif method == "pearson":
        z = v - v.mean(-1, keepdim=True)
        z = z / z.square().mean(-1, keepdim=True).sqrt()
    else:
        z = v / v.square().mean(-1, keepdim=True).sqrt()
    total = z.sum(-2, keepdim=True)
    lower = _compare(v, (total - z) / (r - 1), method).mean(-1)
    upper = _compare(v, total / r, method).mean(-1)
    return NoiseCeiling(lower=lower.cpu(), upper=upper.cpu(), method=method, n_repetitions=r, axes=axes or {})


# -- category selectivity ------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Selectivity(Result):
    """Per-feature one-way ANOVA across categories, and the share of selective features.

    A feature constant across all samples has no F (NaN, as ``scipy.stats.f_oneway``): it is
    left out of the test, so it is neither selective nor counted in the denominator of
    ``fraction``, nor in the family the correction adjusts for. A feature constant within every
    group but different between groups has ``F = inf`` and ``p = 0`` (scipy's convention).

    Attributes:
        f: ``[..., features]`` F statistic (``scipy.stats.f_oneway``).
        p: ``[..., features]`` ``scipy.stats.f.sf(F, groups - 1, samples - groups)``.
        selective: ``[..., features]`` corrected ``p < alpha``.
        fraction: ``[...]`` share of the defined features that are selective (NaN when none is
            defined).
        null_fraction: ``[..., permutations]`` the fraction with the group labels permuted.
        p_value: ``[...]`` ``(1 + #{null_fraction >= fraction}) / (1 + permutations)``.
        alpha: the significance level.
        correction: ``"fdr_bh"`` (Benjamini-Hochberg per leading index, as
            ``scipy.stats.false_discovery_control``), ``"bonferroni"`` or ``"none"``.
        n_groups: categories.
        n_samples: samples per leading index.
        n_permutations: permutations in the null.
        seed: seed of the permutations.
    """

    f: Float[torch.Tensor, "... features"]
    p: Float[torch.Tensor, "... features"]
    selective: Bool[torch.Tensor, "... features"]
    fraction: Float[torch.Tensor, "..."]
    null_fraction: Float[torch.Tensor, "... permutations"]
    p_value: Float[torch.Tensor, "..."]
    alpha: float
    correction: str
    n_groups: int
    n_samples: int
    n_permutations: int
    seed: int

    def rows(self) -> list[dict]:
        """One row per leading index: labels, ``fraction``, ``null_mean``, ``null_q95``, ``p_value``.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> x = torch.randn(2, 12, 3, generator=g, dtype=torch.float64)
            >>> s = category_selectivity(x, ["a", "b"] * 6, n_permutations=9, axes={"layer": ("L0", "L1")})
            >>> list(s.rows()[1])
            ['layer', 'fraction', 'null_mean', 'null_q95', 'p_value']
        """
        mean = self.null_fraction.mean(-1)
        q95 = _quantile95(self.null_fraction)
        return [
            {
                **labels,
                "fraction": float(self.fraction[idx]),
                "null_mean": float(mean[idx]),
                "null_q95": float(q95[idx]),
                "p_value": float(self.p_value[idx]),
            }
            for labels, idx in index_rows(self.axes, tuple(self.fraction.shape))
        ]


def category_selectivity(
    x: Float[torch.Tensor, "... samples features"],
    labels: Sequence[str] | torch.Tensor,
    *,
    alpha: float = 0.05,
    correction: Correction = "fdr_bh",
    n_permutations: int = 200,
    seed: int = 0,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> Selectivity:
    """Which features tell the categories apart: a one-way ANOVA per feature, with a permutation null.

    The F statistics are vectorised over leading axes and features (group sums by a one-hot
    matrix product, scipy's centred sums of squares). The null permutes the group labels over
    the samples (``torch.randperm`` from ``torch.Generator().manual_seed(seed)``, the same
    permutations for every leading index), in tiles of permutations whose memory is bounded, and
    records the fraction of selective features after the same correction: ``p_value`` says
    whether that many selective features is more than chance at this number of samples.

    Args:
        x: ``[..., samples, features]`` activations (e.g. ``[layer, samples, d_model]``).
        labels: the category of each sample (names, or integer codes as a sequence or a 1-d tensor).
        alpha: significance level in (0, 1).
        correction: ``"fdr_bh"`` (Benjamini-Hochberg over the features of each leading index),
            ``"bonferroni"`` (``p`` times the number of defined features) or ``"none"``.
        n_permutations: permutations in the null (>= 1).
        seed: a non-negative integer; the same seed gives the same null.
        axes: labels of the leading axes.

    Returns:
        :class:`Selectivity`.

    Raises:
        TlprobeError: fewer than 2 categories, a category with fewer than 2 samples, labels not
            one per sample, non-finite values, or bad options.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(40, 10, generator=g, dtype=torch.float64)
        >>> x[:20, :3] += 2.0  # features 0..2 are higher for category "a"
        >>> s = category_selectivity(x, ["a"] * 20 + ["b"] * 20, n_permutations=99)
        >>> s.selective[:3].tolist(), s.fraction.item(), s.p_value.item()
        ([True, True, True], 0.3, 0.01)
    """
    check_choice(correction, CORRECTIONS, "correction")
    alpha = as_float(alpha, "alpha", positive=True, maximum=1.0)
    n_perm = as_int(n_permutations, "n_permutations", minimum=1, fix="use e.g. 200")
    seed = as_int(seed, "seed", minimum=0)
    x = as_tensor(x, "x")
    check_ndim(x, "x", 2, "[..., samples, features]")
    *lead, n, nf = x.shape
    codes, names = _codes(labels, "labels")
    if codes.numel() != n:
        raise TlprobeError(f"labels has {codes.numel()} entries but x has {n} samples; give one label per sample")
    k = len(names)
    counts = torch.bincount(codes, minlength=k)
    if k < 2:
        raise TlprobeError(f"selectivity needs at least 2 categories, got {k} ({names[0]!r}); label more categories")
    if bool((counts < 2).any()):
        few = [names[g] for g in (counts < 2).nonzero()[:, 0].tolist()]
        raise TlprobeError(
            f"categories {few} have fewer than 2 samples; the within-category variance needs at least 2 "
            "per category: collect more samples or drop those categories"
        )
    check_finite(x, "x")
    b = math.prod(lead)
    step = max(1, TILE_CELLS // max(1, b * k * nf, n * k))
    check_memory(
        (3 * x.numel() + 4 * b * nf + b * n_perm + 4 * step * b * max(k, 2) * nf) * 8,
        f"category selectivity of {nf} features for {b} leading index(es) with {n_perm} permutations",
        "lower n_permutations or pass fewer features or leading indices per call",
        device=x.device,
    )
    xc = x.double().reshape(b, n, nf)
    xc = xc - xc.mean(-2, keepdim=True)  # scipy's offset: centring keeps the sums of squares accurate
    sst = xc.square().sum(-2) - xc.sum(-2).square() / n
    same = (x.reshape(b, n, nf) == x.reshape(b, n, nf)[:, :1]).all(-2)  # constant across all samples
    onehot = torch.nn.functional.one_hot(codes, k).double().to(x.device)  # [n, k]
    counts_d = counts.double().to(x.device)

    # observed F, with scipy's exact-constancy conventions (inf / NaN)
    f = _f_stat(torch.einsum("nk,bnf->bkf", onehot, xc), counts_d, sst, xc.sum(-2), n, k)
    idx = codes.to(x.device)[None, :, None].expand(b, n, nf)
    xd = x.double().reshape(b, n, nf)
    lo = torch.full((b, k, nf), math.inf, dtype=torch.float64, device=x.device).scatter_reduce(-2, idx, xd, "amin")
    hi = torch.full((b, k, nf), -math.inf, dtype=torch.float64, device=x.device).scatter_reduce(-2, idx, xd, "amax")
    f = f.masked_fill((lo == hi).all(-2), math.inf).masked_fill(same, math.nan)
    p = _f_sf(f, k - 1, n - k)
    selective = _corrected(p, correction) < alpha
    fraction = _fraction(selective, ~same)

    gen = torch.Generator().manual_seed(seed)
    null = torch.empty(b, n_perm, dtype=torch.float64, device=x.device)
    flat = xc.permute(1, 0, 2).reshape(n, b * nf)  # once, so each tile is one matrix product
    for start in range(0, n_perm, step):
        perms = _draw(gen, n, min(step, n_perm - start)).to(x.device)  # [T, n]
        t = perms.shape[0]
        sums = (onehot[perms].mT.reshape(t * k, n) @ flat).reshape(t, k, b, nf).permute(2, 0, 1, 3)
        fp = _f_stat(sums, counts_d, sst[:, None], xc.sum(-2)[:, None], n, k)
        # sum-of-squares rounding: a within-group constant feature gives SSW <= 0 instead of 0
        fp = fp.masked_fill(fp < 0, math.inf).masked_fill(same[:, None], math.nan)
        sel = _corrected(_f_sf(fp, k - 1, n - k), correction) < alpha
        null[:, start : start + t] = _fraction(sel, ~same[:, None])
    p_value = (1 + (null >= fraction[:, None]).sum(-1)).double() / (1 + n_perm)
    p_value = p_value.masked_fill_(fraction.isnan(), math.nan)
    return Selectivity(
        f=f.reshape(*lead, nf).cpu(),
        p=p.reshape(*lead, nf).cpu(),
        selective=selective.reshape(*lead, nf).cpu(),
        fraction=fraction.reshape(lead).cpu(),
        null_fraction=null.reshape(*lead, n_perm).cpu(),
        p_value=p_value.reshape(lead).cpu(),
        alpha=alpha,
        correction=correction,
        n_groups=k,
        n_samples=n,
        n_permutations=n_perm,
        seed=seed,
        axes=axes or {},
    )


def _f_stat(
    sums: torch.Tensor, counts: torch.Tensor, sst: torch.Tensor, total: torch.Tensor, n: int, k: int
) -> torch.Tensor:
    """One-way ANOVA F from group sums ``[..., k, f]`` of centred data (scipy ``f_oneway``'s formula)."""
    normalized = total.square() / n
    ssb = (sums.square() / counts[:, None]).sum(-2) - normalized
    ssw = sst - ssb
    return (ssb / (k - 1)) / (ssw / (n - k))


def _f_sf(f: torch.Tensor, dfn: int, dfd: int) -> torch.Tensor:
    """``scipy.stats.f.sf`` elementwise (NaN stays NaN, inf gives 0)."""
    out = scipy.stats.f.sf(f.detach().cpu().numpy(), dfn, dfd)
    return torch.from_numpy(np.asarray(out, dtype=np.float64)).to(f.device)


def _corrected(p: torch.Tensor, correction: str) -> torch.Tensor:
    """Multiple-comparison corrected p over the last axis; NaN entries are left out of the family."""
    defined = (~p.isnan()).sum(-1, keepdim=True)
    if correction == "none":
        return p
    if correction == "bonferroni":
        return (p * defined).clamp(max=1.0)
    return _bh(p, defined)


def _bh(p: torch.Tensor, defined: torch.Tensor) -> torch.Tensor:
    """Benjamini-Hochberg adjusted p (``scipy.stats.false_discovery_control``) over the last axis.

    Batched, and NaN-aware: the family of each row is its defined entries (scipy refuses NaN).
    """
    order = p.argsort(-1)  # NaN sorts last
    ps = p.gather(-1, order)
    i = torch.arange(1, p.shape[-1] + 1, dtype=p.dtype, device=p.device)
    adj = (ps * defined / i).nan_to_num(nan=math.inf)
    adj = adj.flip(-1).cummin(-1).values.flip(-1).clamp(max=1.0)
    adj = adj.masked_fill(ps.isnan(), math.nan)
    return torch.empty_like(adj).scatter_(-1, order, adj)


def _fraction(selective: torch.Tensor, defined: torch.Tensor) -> torch.Tensor:
    """Share of the defined features that are selective (NaN where none is defined)."""
    n_def = defined.sum(-1).double()
    return (selective & defined).sum(-1).double() / n_def  # 0 / 0 -> NaN


# -- helpers -------------------------------------------------------------------------------


def _codes(labels: Sequence[str] | torch.Tensor | np.ndarray, name: str) -> tuple[torch.Tensor, list[str]]:
    """Integer codes of ``labels`` (in order of first appearance) and the distinct labels."""
    if isinstance(labels, (torch.Tensor, np.ndarray)) and labels.ndim == 1:
        labels = labels.tolist()  # integer codes or names as an array
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise TlprobeError(f"{name} must be a sequence of labels (e.g. a list of strings), got {type(labels).__name__}")
    keys = [str(v) for v in labels]
    names = list(dict.fromkeys(keys))
    lookup = {v: i for i, v in enumerate(names)}
    return torch.tensor([lookup[v] for v in keys], dtype=torch.long), names


def _quantile95(t: torch.Tensor) -> torch.Tensor:
    """95th percentile over the last axis (NaN where the values are NaN)."""
    return torch.quantile(t, 0.95, dim=-1) if t.shape[-1] else torch.full(t.shape[:-1], math.nan)
