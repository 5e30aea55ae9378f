"""Feature-by-feature similarity across samples, and its Q/K/V block statistics (L02, L03).

A *feature* is one coordinate (a hidden dimension, or one Q/K/V coordinate); a *sample* is one
occurrence of a token in one context. ``"cosine"`` keeps each feature's mean offset;
``"correlation"`` (Pearson) subtracts it first; ``"covariance"`` is the unbiased covariance.

* :func:`feature_similarity`: the ``[features, features]`` similarity matrix (batched);
* :func:`qkv_block_similarity`: the distribution of the similarities within and across the
  Q, K and V parts of fused ``[Q | K | V]`` samples (six blocks of the strict upper triangle),
  for any leading axes (populations, layers, heads) in one call, as a :class:`BlockStats`;
  computed tile by tile in features and samples, so no ``[layer, F, F]`` (nor one ``F x F``,
  nor one ``samples x samples``) matrix is ever built;
* :func:`undefined_features`: where the similarity is undefined (all-zero or constant features);
* :func:`shuffle_values`: seeded null models of a ``[samples, features]`` matrix;
* :func:`qkv_labels`, :func:`qkv_block_codes`, :data:`BLOCKS`: the Q/K/V parts and block mask.

Per head: :func:`tlprobe.access.hooks.split_heads` gives each head's own ``[Q | K | V]`` slice as
a leading axis; label it with :func:`tlprobe.access.labels.head_labels` and ``result["L3H7"]``
selects a head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

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
from tlprobe.result import Result

METHODS = ("cosine", "correlation", "covariance")

#: Block codes of the Q/K/V mask: the product of the part labels Q=1, K=2, V=3.
BLOCKS: dict[str, int] = {"QQ": 1, "QK": 2, "QV": 3, "KK": 4, "KV": 6, "VV": 9}

#: Part pairs ``(i, j)`` of each block, in :data:`BLOCKS` order (Q=0, K=1, V=2).
_PAIRS: dict[str, tuple[int, int]] = {name: ("QKV".index(name[0]), "QKV".index(name[1])) for name in BLOCKS}

#: Cells of one work tile: a tile of similarity rows (with its scratch copies, 12 MiB in float32)
#: stays in cache while it is summarised, and bounds the working memory (3 such buffers).
TILE_CELLS = 2**20


def feature_similarity(
    x: Float[torch.Tensor, "... samples features"],
    method: Literal["cosine", "correlation", "covariance"] = "cosine",
) -> Float[torch.Tensor, "... features features"]:
    """Similarity between every pair of features, across samples.

    Batched over any leading dimensions (layers, heads): one matrix product per call. The
    ``[..., features, features]`` result is built whole (its size is checked first); for block
    statistics of large vectors use :func:`qkv_block_similarity`, which never builds it.

    Args:
        x: ``[..., samples, features]`` activations (float16/bfloat16 are upcast to float32).
        method: ``"cosine"`` (normalised dot product of the feature columns),
            ``"correlation"`` (Pearson: columns centred first) or ``"covariance"``
            (unbiased, ``ddof=1``).

    Returns:
        ``[..., features, features]``, symmetric; the diagonal is 1 for cosine/correlation.

    Raises:
        TlprobeError: fewer than 2 samples (3 for correlation), non-finite values, a result too
            large for the memory, or a feature whose norm is zero (all-zero for cosine, constant
            for correlation): the similarity is undefined there, so it is refused rather than
            returned as NaN. Drop those features.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [2.0, 4.1], [3.0, 5.9]])
        >>> feature_similarity(x, "correlation").round(decimals=4)
        tensor([[1.0000, 0.9990],
                [0.9990, 1.0000]])
    """
    check_choice(method, METHODS, "method")
    x = _checked_samples(x, "x", method, "[..., samples, features]")
    x = x.to(_work_dtype(x))
    *lead, s, f = x.shape
    # The result, the centred/normalised copy of x and the product's temporary.
    need = (2 * math.prod(lead) * f * f + 2 * x.numel()) * x.element_size()
    check_memory(
        need,
        f"feature_similarity of {f} features ([..., {f}, {f}] result)",
        "use qkv_block_similarity for block statistics, or fewer features or leading indices",
        device=x.device,
    )
    if method == "covariance":
        x = x - x.mean(dim=-2, keepdim=True)
        return x.mT @ x / (x.shape[-2] - 1)
    xn = unit_columns(x, method)
    return (xn.mT @ xn).clamp_(-1.0, 1.0)


def _checked_samples(x, name: str, method: str, shape_doc: str, *, finite: bool = True) -> torch.Tensor:
    """``x`` as a real tensor of at least 2 dims with enough samples (and, with ``finite``, finite values)."""
    x = as_tensor(x, name)
    if not x.is_floating_point():
        x = x.float()
    check_ndim(x, name, 2, shape_doc)
    check_min_samples(
        x.shape[-2],
        3 if method == "correlation" else 2,
        f"{method} similarity",
        "collect more samples (sentences) for the target",
    )
    if finite:
        check_finite(x, name)
    return x


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype statistics are computed in: half precision is upcast to float32."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


@dataclass(frozen=True)
class _Columns:
    """Per-column statistics across samples of ``[items, samples, features]`` (see :func:`_columns`)."""

    n_samples: int
    mean: torch.Tensor | None  # [items, features] (correlation), None for cosine
    norm: torch.Tensor  # [items, features]: norm of the (centred) column
    undefined: torch.Tensor  # [items, features] bool: norm zero within rounding
    spread: torch.Tensor  # [items, features]: max - min across samples
    identical: torch.Tensor  # [items] bool: every feature constant within rounding


def _columns(x: torch.Tensor, method: str, name: str) -> _Columns:
    """Mean, norm and degeneracy of every column of ``x`` ``[items, samples, features]``.

    A pass over sample slabs of about :data:`TILE_CELLS` cells: no copy of ``x`` is made (half
    precision is upcast slab by slab), so the working memory does not grow with the samples.
    Non-finite values raise (with :func:`tlprobe.checks.check_finite`'s message).
    """
    items, s, f = x.shape
    work = _work_dtype(x)
    mean = None if method != "correlation" else x.mean(-2, dtype=work)
    lo = torch.full((items, f), math.inf, dtype=work, device=x.device)
    hi = torch.full((items, f), -math.inf, dtype=work, device=x.device)

    def scan(part: torch.Tensor, rows: slice) -> torch.Tensor:
        """Fold ``part`` (``[items', samples', f]``) into lo/hi; its (centred) column norms."""
        part = part.to(work)
        p_lo, p_hi = torch.aminmax(part, dim=-2)
        if not bool(torch.isfinite(p_lo).all() and torch.isfinite(p_hi).all()):
            check_finite(x, name)  # only the error path copies: it names the first bad index
        torch.minimum(lo[rows], p_lo, out=lo[rows])
        torch.maximum(hi[rows], p_hi, out=hi[rows])
        return torch.linalg.vector_norm(part if mean is None else part - mean[rows, None], dim=-2)

    if s * f <= TILE_CELLS:  # whole columns, a chunk of items at a time: vector_norm's own values
        norm = torch.empty(items, f, dtype=work, device=x.device)
        step = TILE_CELLS // (s * f)
        for a in range(0, items, step):
            norm[a : a + step] = scan(x[a : a + step], slice(a, a + step))
    else:  # a slab of samples at a time, the squares summed in float64
        sq = torch.zeros(items, f, dtype=torch.float64, device=x.device)
        step = max(1, TILE_CELLS // (items * f))
        for a in range(0, s, step):
            sq += scan(x[:, a : a + step], slice(None)).double().square()
        norm = sq.sqrt().to(work)
    centre = torch.zeros_like(hi) if mean is None else mean
    amax = torch.maximum(hi - centre, centre - lo)  # max |x - centre|
    eps, spread = torch.finfo(work).eps, hi - lo
    undefined = norm <= eps * s * (amax + 1)
    constant = spread <= eps * s * (torch.maximum(hi.abs(), lo.abs()) + 1)
    return _Columns(s, mean, norm, undefined, spread, constant.all(-1))


def _undefined_message(cols: _Columns, method: str, lead: Sequence[int], axes, fix: str) -> str:
    """What is undefined where, the likely cause when an item's samples are all identical, and ``fix``."""
    bad = cols.undefined
    what = "constant" if method == "correlation" else "all-zero"
    examples = bad.nonzero()[:5, -1].tolist()
    msg = f"{int(bad.sum())} feature(s) are {what} across samples (e.g. feature(s) {examples}); their {method} is undefined"
    identical = cols.identical & bad.any(-1)
    if bool(identical.any()):
        first = int(identical.nonzero()[0, 0])
        where: tuple = tuple(int(i) for i in np.unravel_index(first, tuple(lead))) if len(lead) else ()
        labels = list((axes or {}).values())
        if len(labels) == len(where) and all(i < len(v) for i, v in zip(where, labels, strict=True)):
            where = tuple(v[i] for i, v in zip(where, labels, strict=True))
        msg += (
            f". In {int(identical.sum())} of {int(bad.shape[0])} item(s) (e.g. leading index {where}) the "
            f"{cols.n_samples} samples are identical: e.g. a rotary model's layer-0 Q/K/V see only the token, "
            "or duplicated sentences"
        )
    return f"{msg}. {fix}"


def undefined_features(
    x: Float[torch.Tensor, "... samples features"], method: Literal["cosine", "correlation"] = "cosine"
) -> Bool[torch.Tensor, "... features"]:
    """Features whose similarity across samples is undefined: all-zero (cosine) or constant (correlation).

    The criterion :func:`feature_similarity` and :func:`qkv_block_similarity` refuse on: the
    column's (centred) norm is zero within float rounding. ``undefined_features(x,
    "correlation").all(-1)`` marks the leading indices whose samples are all identical.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [1.0, 3.0], [1.0, 5.0]])
        >>> undefined_features(x, "correlation").tolist(), undefined_features(x, "cosine").tolist()
        ([True, False], [False, False])
    """
    check_choice(method, ("cosine", "correlation"), "method")
    x = _checked_samples(x, "x", method, "[..., samples, features]", finite=False)
    *lead, s, f = x.shape
    return _columns(x.reshape(-1, s, f), method, "x").undefined.reshape(*lead, f)


def unit_columns(
    x: Float[torch.Tensor, "... samples features"], method: Literal["cosine", "correlation"] = "cosine"
) -> Float[torch.Tensor, "... samples features"]:
    """Feature columns scaled to unit norm (centred first for ``"correlation"``).

    ``xn.mT @ xn`` is then the cosine (or correlation) matrix: the first step of
    :func:`feature_similarity` (:func:`qkv_block_similarity` normalises tile by tile instead).

    Raises:
        TlprobeError: a feature is all-zero (cosine) or constant (correlation) across samples
            (see :func:`undefined_features`).

    Example:
        >>> unit_columns(torch.tensor([[3.0], [4.0]])).flatten().tolist()
        [0.6000000238418579, 0.800000011920929]
    """
    *lead, s, f = x.shape
    cols = _columns(x.reshape(-1, s, f), method, "x")
    if bool(cols.undefined.any()):
        raise TlprobeError(_undefined_message(cols, method, lead, None, "Drop those features or use another method"))
    if cols.mean is not None:
        x = x - cols.mean.reshape(*lead, 1, f)
    return x / cols.norm.reshape(*lead, 1, f)


def qkv_labels(n_per_part: int, device=None) -> Int[torch.Tensor, " features"]:
    """Part label of each coordinate of a ``[Q | K | V]`` vector: Q=1, K=2, V=3.

    Example:
        >>> qkv_labels(2)
        tensor([1, 1, 2, 2, 3, 3])
    """
    if n_per_part < 1:
        raise TlprobeError(f"n_per_part must be >= 1, got {n_per_part}")
    return torch.arange(1, 4, device=device).repeat_interleave(n_per_part)


def qkv_block_codes(n_per_part: int, device=None) -> Int[torch.Tensor, "features features"]:
    """The L02 block mask: outer product of the part labels, strict upper triangle, 0 elsewhere.

    Codes: QQ=1, QK=2, QV=3, KK=4, KV=6, VV=9 (see :data:`BLOCKS`). For a per-head analysis pass
    ``d_head`` (the head's Q, K and V slices); for the full vector ``n_heads * d_head``.

    Example:
        >>> qkv_block_codes(1)
        tensor([[0, 2, 3],
                [0, 0, 6],
                [0, 0, 0]])
    """
    lab = qkv_labels(n_per_part, device)
    return torch.triu(lab[:, None] * lab[None, :], diagonal=1)


def shuffle_values(
    x: Float[torch.Tensor, "... samples features"],
    mode: Literal["all", "within-feature"] = "all",
    *,
    seed: int = 0,
) -> Float[torch.Tensor, "... samples features"]:
    """A seeded null model of a ``[samples, features]`` matrix (per leading index).

    Args:
        x: ``[..., samples, features]``.
        mode: ``"all"`` sends every value to a random cell (destroys all structure, each
            feature's mean offset included; keeps the value distribution): the L02 random
            baseline. ``"within-feature"`` permutes each feature's values across samples
            separately (keeps every feature's mean and distribution, breaks co-variation).
        seed: a non-negative integer; the same seed gives the same shuffle; the permutation is
            drawn on the CPU, so results do not depend on the device.

    Returns:
        A tensor shaped like ``x`` holding the same values (an empty ``x`` gives an empty copy).

    Example:
        >>> x = torch.arange(6.0).reshape(3, 2)
        >>> torch.equal(shuffle_values(x, seed=1).flatten().sort().values, x.flatten())
        True
    """
    check_choice(mode, ("all", "within-feature"), "shuffle mode")
    x = as_tensor(x, "x")
    check_ndim(x, "x", 2, "[..., samples, features]")
    gen = torch.Generator().manual_seed(as_int(seed, "seed", minimum=0))
    if x.numel() == 0:  # nothing to move: the shuffle of an empty matrix is itself
        return x.clone()
    *lead, s, f = x.shape
    flat = x.reshape(-1, s, f)
    b = flat.shape[0]
    if mode == "all":
        perm = torch.rand(b, s * f, generator=gen).argsort(dim=1).to(x.device)
        out = flat.reshape(b, s * f).gather(1, perm)
    else:
        perm = torch.rand(b, f, s, generator=gen).argsort(dim=2).to(x.device)
        out = flat.mT.gather(2, perm).mT
    return out.reshape(*lead, s, f)


@dataclass(frozen=True, eq=False)
class BlockStats(Result):
    """Distribution of similarity values per Q/K/V block, for every leading index.

    The leading axes are those of the samples given to :func:`qkv_block_similarity` (e.g.
    ``{"population": ..., "layer": ...}``); ``st["target"]``, ``st["L3"]`` or ``st["L3H7"]``
    selects along them.

    Attributes:
        method: the similarity method that produced the values.
        blocks: block names, ``("QQ", "QK", "QV", "KK", "KV", "VV")``.
        edges: ``[bins + 1]`` histogram bin edges.
        prob: ``[..., block, bins]`` fraction of the block's values in each bin (sums to 1).
        mean, std: ``[..., block]`` mean and standard deviation (``ddof=0``) of the values.
        mean_abs: ``[..., block]`` mean of ``|s|``.
        frac_extreme: ``[..., block]`` fraction with ``|s| > extreme``.
        count: ``[block]`` number of feature pairs in each block.
        extreme: the threshold of ``frac_extreme``.

    An item whose similarity is undefined (computed with ``undefined="nan"``) has NaN in
    ``prob`` and every summary; ``to_dict`` writes them as ``null``.
    """

    method: str
    blocks: tuple[str, ...]
    edges: Float[torch.Tensor, " edges"]
    prob: Float[torch.Tensor, "... block bins"]
    mean: Float[torch.Tensor, "... block"]
    std: Float[torch.Tensor, "... block"]
    mean_abs: Float[torch.Tensor, "... block"]
    frac_extreme: Float[torch.Tensor, "... block"]
    count: Int[torch.Tensor, " block"]
    extreme: float

    #: The per-block summaries (each ``[..., block]``).
    SUMMARIES: ClassVar[tuple[str, ...]] = ("mean", "std", "mean_abs", "frac_extreme")

    @property
    def centers(self) -> Float[torch.Tensor, " bins"]:
        """Bin centres."""
        return (self.edges[1:] + self.edges[:-1]) / 2

    @property
    def density(self) -> Float[torch.Tensor, "... block bins"]:
        """Probability density (integrates to 1 over the bin range)."""
        return self.prob / (self.edges[1:] - self.edges[:-1])

    def rows(self, *, block: str | None = None, sort_by: str | None = None, k: int | None = None) -> list[dict]:
        """Rows ``{<axis labels>, block, n_pairs, mean, std, mean_abs, frac_abs_gt_<extreme>}``.

        One row per leading index and block, in index order (leading axes without labels are
        numbered, under ``dim0``, ``dim1``, ...). The summaries of an undefined item (see
        ``undefined`` of :func:`qkv_block_similarity`) are NaN.

        Args:
            block: only the rows of this block.
            sort_by: a summary (:attr:`SUMMARIES`): rows by decreasing value (ties keep index
                order; NaN rows last).
            k: only the first ``k`` rows (with ``sort_by``: the ``k`` largest).

        Raises:
            TlprobeError: an unknown block or summary.

        Example:
            >>> x = torch.randn(3, 20, 6, generator=torch.Generator().manual_seed(0))
            >>> st = qkv_block_similarity(x, bins=4, axes={"head": ("H0", "H1", "H2")})
            >>> len(st.rows()), list(st.rows()[0])
            (18, ['head', 'block', 'n_pairs', 'mean', 'std', 'mean_abs', 'frac_abs_gt_0.9'])
            >>> top = st.rows(block="QK", sort_by="std", k=1)[0]
            >>> top["std"] == float(st.std[:, 1].max())
            True
        """
        if block is not None:
            check_choice(block, self.blocks, "block")
        if sort_by is not None:
            check_choice(sort_by, self.SUMMARIES, "summary")
        lead = tuple(self.mean.shape[:-1])
        labels = list(self.axes.items())
        frac = f"frac_abs_gt_{self.extreme:g}"
        columns = {"mean": "mean", "std": "std", "mean_abs": "mean_abs", "frac_extreme": frac}
        rows = []
        for idx in np.ndindex(*lead):
            where = {
                labels[d][0] if d < len(labels) else f"dim{d}": labels[d][1][i] if d < len(labels) else i
                for d, i in enumerate(idx)
            }
            for b, name in enumerate(self.blocks):
                if block is None or name == block:
                    values = {col: float(getattr(self, key)[(*idx, b)]) for key, col in columns.items()}
                    rows.append({**where, "block": name, "n_pairs": int(self.count[b]), **values})
        if sort_by is not None:  # undefined (NaN) rows last
            rows.sort(key=lambda r: (math.isnan(r[columns[sort_by]]), -r[columns[sort_by]]))
        return rows if k is None else rows[: max(0, int(k))]


def _plan(n_items: int, n: int, chunk_size: int | None, samples: int | None = None) -> tuple[int, int]:
    """(items per chunk, similarity rows per tile) so that one tile holds about TILE_CELLS cells.

    With ``samples``, the default chunk is also small enough for its samples to fit in one tile
    (then they are normalised once per chunk, not once per tile).
    """
    if chunk_size is not None:
        size = as_int(chunk_size, "chunk_size (leading indices per chunk)", minimum=1)
    else:
        size = max(1, min(n_items, TILE_CELLS // (n * n)))
        if samples is not None:
            size = max(1, min(size, TILE_CELLS // (samples * 3 * n)))
    rows = max(1, min(n, TILE_CELLS // (size * n)))
    return size, rows


def _slabs(s: int, step: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of ``range(s)`` in steps of ``step``."""
    return [(a, min(s, a + step)) for a in range(0, s, step)]


def _normalise(src: torch.Tensor, mean: torch.Tensor | None, norm: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``(src - mean) / norm`` into ``out`` (in ``out``'s dtype when ``mean``/``norm`` have it)."""
    if mean is None:
        return torch.div(src, norm, out=out)
    return torch.sub(src, mean, out=out).div_(norm)


def _part_slab(
    xv: torch.Tensor,
    mean: torch.Tensor | None,
    norm: torch.Tensor,
    part: int,
    samples: tuple[int, int],
    features: tuple[int, int],
    buf: torch.Tensor,
) -> torch.Tensor:
    """Normalised samples ``a:b`` of features ``f0:f1`` of one part of ``xv`` ``[c, s, 3, n]``: ``[c, b - a, f1 - f0]``."""
    (a, b), (f0, f1) = samples, features
    c = xv.shape[0]
    out = buf[: c * (b - a) * (f1 - f0)].view(c, b - a, f1 - f0)
    mu = None if mean is None else mean[:, None, part, f0:f1]
    return _normalise(xv[:, a:b, part, f0:f1], mu, norm[:, None, part, f0:f1], out)


def _square_sums(
    xv: torch.Tensor, mean: torch.Tensor | None, norm: torch.Tensor, gram: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 ``(u, diag, m)`` of one chunk's normalised ``[c, s, 3, n]`` samples, tile by tile.

    ``u[c, part, sample]`` sums a sample's coordinates in a part, ``diag[c, part, feature]`` is
    the diagonal of ``S_ii = X_i^T X_i`` and ``m[c, i, j] = ||X_i^T X_j||_F^2``: the sum of
    squares of block ``ij``. With ``gram``, ``m`` comes from sample tiles of the Gram matrices,
    ``||X_i^T X_j||^2 = <X_i X_i^T, X_j X_j^T>`` (``1.5 s^2 n`` multiply-adds, the cheaper one
    for ``s < 6 n``), else from float64 row tiles of ``X^T X`` itself (``9 n^2 s``). Every tile
    holds about :data:`TILE_CELLS` cells whatever ``s`` is.
    """
    c, s, _, n = xv.shape
    dev, f64 = xv.device, torch.float64
    u = torch.empty(c, 3, s, dtype=f64, device=dev)
    diag = torch.zeros(c, 3, n, dtype=f64, device=dev)
    m = torch.zeros(c, 3, 3, dtype=f64, device=dev)
    mu, nr = mean, norm
    # The values are normalised in the histogram's dtype, then upcast: the sums describe the same
    # similarities as the histogram, products and sums in float64.
    tmp = torch.empty(max(TILE_CELLS, 3 * c * n) if norm.dtype != f64 else 0, dtype=norm.dtype, device=dev)

    def normalise64(src: torch.Tensor, m_: torch.Tensor | None, n_: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if out.dtype == n_.dtype:
            return _normalise(src, m_, n_, out)
        return out.copy_(_normalise(src, m_, n_, tmp[: out.numel()].view(out.shape)))

    if gram:  # operands [c, 3, t, n]; Gram tiles [c, 3, t, t]
        step = max(1, TILE_CELLS // (3 * c * max(n, s)))
        slabs = _slabs(s, step)
        buf_a = torch.empty(c * 3 * min(step, s) * n, dtype=f64, device=dev)
        buf_b = torch.empty_like(buf_a) if len(slabs) > 1 else buf_a
        buf_g = torch.empty(c * 3 * min(step, s) ** 2, dtype=f64, device=dev)

        def operand(a: int, b: int, buf: torch.Tensor) -> torch.Tensor:
            src = xv[:, a:b].permute(0, 2, 1, 3)
            out = buf[: c * 3 * (b - a) * n].view(c, 3, b - a, n)
            return normalise64(src, None if mu is None else mu[:, :, None], nr[:, :, None], out)

        for k, (a0, a1) in enumerate(slabs):
            xa = operand(a0, a1, buf_a)
            u[:, :, a0:a1] = xa.sum(-1)
            diag += xa.square().sum(-2)
            for b0, b1 in slabs[k:]:
                xb = xa if b0 == a0 else operand(b0, b1, buf_b)
                g = torch.matmul(xa, xb.mT, out=buf_g[: c * 3 * (a1 - a0) * (b1 - b0)].view(c, 3, a1 - a0, b1 - b0))
                flat = g.view(c, 3, -1)
                m += (flat @ flat.mT) * (1.0 if b0 == a0 else 2.0)  # G is symmetric: tile (b, a) too
        return u, diag, m
    # Row tiles of X^T X: [c, 3 * t, 3 * n] from operands [c, step, 3 * t] and [c, step, 3 * n]
    step = max(1, TILE_CELLS // (3 * c * n))
    rows = max(1, min(n, TILE_CELLS // (9 * c * n)))
    slabs = _slabs(s, step)
    buf_b = torch.empty(c * min(step, s) * 3 * n, dtype=f64, device=dev)
    buf_a = torch.empty(c * min(step, s) * 3 * rows, dtype=f64, device=dev)
    buf_s = torch.empty(c * 9 * rows * n, dtype=f64, device=dev)
    cached = None
    for r0 in range(0, n, rows):
        t = min(n, r0 + rows) - r0
        prod = buf_s[: c * 9 * t * n].view(c, 3 * t, 3 * n)
        for k, (a, b) in enumerate(slabs):
            if cached is None:
                out = buf_b[: c * (b - a) * 3 * n].view(c, b - a, 3, n)
                xb = normalise64(xv[:, a:b], None if mu is None else mu[:, None], nr[:, None], out)
                if r0 == 0:
                    u[:, :, a:b] = xb.sum(-1).mT
                    diag += xb.square().sum(1)
                if len(slabs) == 1:
                    cached = xb  # one slab: normalised once for every row tile
            else:
                xb = cached
            xa = buf_a[: c * (b - a) * 3 * t].view(c, b - a, 3, t).copy_(xb[..., r0 : r0 + t])
            lhs, rhs = xa.view(c, b - a, 3 * t).mT, xb.view(c, b - a, 3 * n)
            if k == 0:
                torch.matmul(lhs, rhs, out=prod)
            else:
                prod.baddbmm_(lhs, rhs)
        m += prod.view(c, 3, t, 3, n).square_().sum((2, 4))
    return u, diag, m


def qkv_block_similarity(
    samples: Float[torch.Tensor, "... samples qkv"],
    method: Literal["cosine", "correlation"] = "cosine",
    *,
    bins: int = 100,
    extreme: float = 0.9,
    value_range: tuple[float, float] = (-1.0, 1.0),
    chunk_size: int | None = None,
    axes: Mapping[str, Sequence[str]] | None = None,
    undefined: Literal["raise", "nan"] = "raise",
) -> BlockStats:
    """Similarity of every pair of Q/K/V coordinates across samples, summarised per block.

    For each leading index (population, layer, head): the :func:`feature_similarity` of the
    ``[Q | K | V]`` coordinates, its strict upper triangle split into the six blocks of
    :data:`BLOCKS`, each block's histogram over ``value_range`` and its summaries. The
    similarity matrix is never built whole: each block ``Q^T K`` etc. is computed a tile of rows
    at a time (batched over a chunk of leading indices), summarised while it sits in cache, and
    dropped; for QQ, KK and VV only the upper triangle's tiles are multiplied. Samples are
    normalised a slab of samples at a time, so the working memory is a few buffers of about
    :data:`TILE_CELLS` cells whatever the number of samples and features: GPT-2 XL's 48 layers x
    4800 coordinates never hold a ``48 x 4800 x 4800`` tensor (nor one ``4800 x 4800`` matrix),
    and 16,000 samples take the same working memory as 1,000 (besides the input itself).

    ``mean`` and ``std`` come from sums of squares in float64 (sample tiles of the Gram matrices,
    or float64 tiles of the blocks when there are many more samples than coordinates);
    ``frac_extreme`` is read off the histogram when ``+-extreme`` are bin edges (bins=100 or 60
    over [-1, 1] with 0.9), else counted exactly. Values are not clamped to [-1, 1]: rounding
    overshoot (~1e-7) lands in the edge bins, as a clamped value would.

    Args:
        samples: ``[..., samples, 3 * n]`` fused ``[Q | K | V]`` vectors (see
            :func:`tlprobe.access.hooks.fused_qkv`), e.g. ``[population, samples, 3 * n]``,
            ``[layer, samples, 3 * n]`` or ``[layer, head, samples, 3 * d_head]`` (see
            :func:`tlprobe.access.hooks.split_heads`); half precision is computed in float32.
        method: ``"cosine"`` or ``"correlation"``.
        bins: histogram bins over ``value_range``.
        extreme: threshold of ``frac_extreme`` (``|s| > extreme``).
        value_range: histogram range; values outside go to the first/last bin.
        chunk_size: leading indices processed together; default: as many as fit in one tile
            (many heads, one large layer). The result does not depend on it (up to float
            rounding when the samples do not fit in one tile).
        axes: labels of the leading axes, e.g. ``{"population": ("target", "non-target")}``.
        undefined: what to do with a leading index that has an all-zero (cosine) or constant
            (correlation) coordinate, where the similarity is undefined (see
            :func:`undefined_features`): ``"raise"`` (the default) refuses, saying where and, when
            all its samples are identical, the likely cause; ``"nan"`` gives that index NaN
            summaries and a NaN histogram row, and every other index the numbers it would have
            alone.

    Returns:
        :class:`BlockStats` with ``prob`` ``[..., block, bins]`` and summaries ``[..., block]``.

    Raises:
        TlprobeError: not ``3 * n`` coordinates (n >= 2), too few samples, non-finite values, an
            all-zero (cosine) or constant (correlation) coordinate (with ``undefined="raise"``),
            bad ``bins``/``value_range``/``chunk_size``, histograms too large for the memory, or
            axes that do not match the leading dimensions.

    Example:
        >>> x = torch.randn(4, 30, 12, generator=torch.Generator().manual_seed(0))  # 4 layers
        >>> st = qkv_block_similarity(x, bins=10, axes={"layer": ("L0", "L1", "L2", "L3")})
        >>> st.prob.shape, st.blocks
        (torch.Size([4, 6, 10]), ('QQ', 'QK', 'QV', 'KK', 'KV', 'VV'))
        >>> bool(torch.allclose(st["L2"].prob.sum(-1), torch.ones(6)))
        True
        >>> x[1] = x[1, :1]  # layer 1: the same vector in every sample
        >>> st = qkv_block_similarity(x, "correlation", bins=10, undefined="nan")
        >>> st.std.isnan().all(-1).tolist()
        [False, True, False, False]
    """
    check_choice(method, ("cosine", "correlation"), "method")
    check_choice(undefined, ("raise", "nan"), "undefined")
    x = _checked_samples(samples, "samples", method, "[..., samples, 3 * n]", finite=False)
    if x.shape[-1] % 3:
        raise TlprobeError(f"a [Q | K | V] vector has 3 * n coordinates; got {x.shape[-1]}")
    bins = as_int(bins, "bins", minimum=1, fix="the number of histogram bins (--bins)")
    extreme = as_float(extreme, "extreme")
    lo, hi = as_float(value_range[0], "value_range[0]"), as_float(value_range[1], "value_range[1]")
    if not hi > lo:
        raise TlprobeError(f"value_range must be (low, high) with high > low, got {value_range}")
    lead, s, n = x.shape[:-2], x.shape[-2], x.shape[-1] // 3
    if n < 2:
        raise TlprobeError("each of Q, K, V needs at least 2 coordinates for the QQ/KK/VV blocks")
    flat = x.reshape(-1, s, 3 * n)
    n_items, device, work = flat.shape[0], x.device, _work_dtype(x)
    size, tile_rows = _plan(n_items, n, chunk_size, s)
    step = max(1, TILE_CELLS // (size * 3 * n))  # samples per slab when a chunk's do not fit one tile
    single = step >= s
    names = tuple(_PAIRS)
    nb = len(names)
    acc = torch.float64 if work == torch.float64 else torch.float32
    itemsize = torch.empty(0, dtype=work).element_size()

    # Everything this call allocates, before it does: the histograms (device, host copy, prob),
    # one chunk's bincount, and the work buffers (tiles, sample slabs, float64 square sums).
    hist_bytes = n_items * nb * (bins + 1) * (8 + 8 + torch.empty(0, dtype=acc).element_size()) + size * (bins + 1) * 8
    tile = size * tile_rows * n
    work_bytes = tile * (2 * itemsize + 4) + size * min(s, step) * 3 * n * itemsize * 2 + 4 * TILE_CELLS * 8
    check_memory(
        hist_bytes + work_bytes,
        f"qkv_block_similarity ({n_items} leading indices x {nb} blocks x {bins} bins)",
        "lower bins (--bins)" if hist_bytes >= work_bytes else "lower chunk_size",
        device=device,
    )

    cols = _columns(flat, method, "samples")
    bad_items = cols.undefined.any(-1)  # [items]
    if bool(bad_items.any()):
        if undefined == "raise":
            fix = "Drop those features, or pass undefined='nan' to get NaN for those leading indices"
            raise TlprobeError(_undefined_message(cols, method, tuple(lead), axes, fix))
    # An undefined column is divided by 1 (its numbers are replaced by NaN below).
    norm = torch.where(cols.undefined, torch.ones_like(cols.norm), cols.norm)
    mean = cols.mean

    count = torch.tensor([n * (n - 1) // 2 if i == j else n * n for i, j in _PAIRS.values()])
    pi = torch.tensor([i for i, _ in _PAIRS.values()], device=device)
    pj = torch.tensor([j for _, j in _PAIRS.values()], device=device)
    diag_blocks = (pi == pj).to(torch.float64).cpu()
    scale = bins / (hi - lo)
    needs_clamp = lo > -1.0 or hi < 1.0
    gram = s < 6 * n  # the cheaper float64 route to the sums of squares (see _square_sums)

    def bin_index(t: torch.Tensor) -> torch.Tensor:
        """t = v - lo (in place) -> floor((v - lo) / (hi - lo) * bins), the reference binning."""
        if needs_clamp:
            t.clamp_(0.0, hi - lo)
        return t.mul_(scale)  # t >= 0 (or -1 < t < 0, bin 0 either way), so int truncation is floor

    # QQ/KK/VV tiles hold their lower triangle and diagonal as zeros; their count is removed from
    # the bin of 0 (they add nothing to the sums and never exceed a threshold >= 0).
    zero_bin = int(bin_index(torch.zeros(1, dtype=work) - lo).to(torch.int32))
    # frac_extreme straight from the histogram when -extreme and +extreme are bin edges (and no
    # value beyond them is merged into an edge bin by the range).
    k_lo, k_hi = (-extreme - lo) * scale, (extreme - lo) * scale
    first = 1 if needs_clamp else 0
    aligned = (
        extreme >= 0
        and first <= k_lo <= bins - first
        and first <= k_hi <= bins - first
        and abs(k_lo - round(k_lo)) < 1e-9
        and abs(k_hi - round(k_hi)) < 1e-9
    )
    k_lo, k_hi = round(k_lo), round(k_hi)

    hist = torch.zeros(n_items, nb, bins + 1, dtype=torch.long, device=device)
    abs_sum = torch.zeros(n_items, nb, dtype=acc, device=device)
    over = torch.zeros(n_items, nb, dtype=acc, device=device)  # count of |s| > extreme (exact path)
    sums = torch.empty(n_items, nb, 2, dtype=torch.float64)  # sum and sum of squares per block
    # Work buffers, allocated once and reused by every tile (a fresh large tensor costs a page
    # fault per 4 KiB on first touch, which dominates on small machines).
    buf_sim = torch.empty(tile, dtype=work, device=device)
    buf_tmp = torch.empty(tile, dtype=work, device=device)
    buf_idx = torch.empty(tile, dtype=torch.int32, device=device)
    slab_cells = size * min(s, step) * n
    buf_parts = torch.empty(3 * slab_cells if single else 0, dtype=work, device=device)
    buf_a = torch.empty(0 if single else size * min(s, step) * tile_rows, dtype=work, device=device)
    buf_b = torch.empty(0 if single else slab_cells, dtype=work, device=device)
    slabs = _slabs(s, step)
    lower: dict[int, torch.Tensor] = {}
    for start in range(0, n_items, size):
        xv = flat[start : start + size].unflatten(-1, (3, n))  # [c, s, 3, n], a view of the input
        c = xv.shape[0]
        items = slice(start, start + c)
        mu = None if mean is None else mean[items].view(c, 3, n)
        nr = norm[items].view(c, 3, n)
        # Sum and sum of squares of every block without touching it: for S_ij = X_i^T X_j,
        # sum(S_ij) = u_i . u_j (u = row sums); the strict upper triangle of S_ii is half of
        # (full square - diagonal).
        u, diag, m = _square_sums(xv, mu, nr, gram)
        s1 = (u[:, pi] * u[:, pj]).sum(-1).cpu() - diag_blocks * diag.sum(-1)[:, pi].cpu()
        s2 = m[:, pi, pj].cpu() - diag_blocks * diag.square().sum(-1)[:, pi].cpu()
        sums[items] = torch.stack([s1, s2], -1) / (1 + diag_blocks[:, None])
        parts = buf_parts  # the chunk's samples fit one tile: normalised once, [c, 3, s, n]
        if single:
            out = buf_parts[: c * 3 * s * n].view(c, 3, s, n)
            parts = _normalise(xv.movedim(2, 1), None if mu is None else mu[:, :, None], nr[:, :, None], out)
        offsets = (torch.arange(c, device=device, dtype=torch.int32) * (bins + 1))[:, None]

        for b, (i, j) in enumerate(_PAIRS.values()):
            zeros = 0
            for r0 in range(0, n, tile_rows):
                t = min(n, r0 + tile_rows) - r0
                c0 = r0 if i == j else 0  # QQ/KK/VV: only columns from the tile's first row on
                w = n - c0
                tile_v = buf_sim[: c * t * w].view(c, t, w)
                for k, (a0, a1) in enumerate(slabs):
                    if single:
                        rhs, lhs = parts[:, j, :, c0:], parts[:, i, :, r0 : r0 + t]
                    else:
                        rhs = _part_slab(xv, mu, nr, j, (a0, a1), (c0, n), buf_b)
                        lhs = rhs[..., :t] if i == j else _part_slab(xv, mu, nr, i, (a0, a1), (r0, r0 + t), buf_a)
                    if k == 0:
                        torch.matmul(lhs.mT, rhs, out=tile_v)
                    else:
                        tile_v.baddbmm_(lhs.mT, rhs)
                if i == j:
                    if t not in lower:
                        lower[t] = torch.ones(t, t, dtype=torch.bool, device=device).tril()
                    tile_v[:, :, :t].masked_fill_(lower[t], 0.0)
                    zeros += t * (t + 1) // 2
                vals = tile_v.view(c, t * w)
                tmp = buf_tmp[: c * t * w].view(c, t * w)
                torch.abs(vals, out=tmp)
                abs_sum[items, b] += tmp.sum(1, dtype=acc)
                if not aligned:  # |s| > extreme, counted exactly: sign(max(|s| - extreme, 0))
                    over[items, b] += tmp.sub_(extreme).clamp_(min=0.0).sign_().sum(1, dtype=acc)
                idx = buf_idx[: c * t * w].view(c, t * w)
                idx.copy_(bin_index(torch.sub(vals, lo, out=tmp)))
                if c > 1:
                    idx += offsets  # one bincount for the whole chunk; slot `bins` holds v == hi
                hist[items, b] += torch.bincount(idx.view(-1), minlength=c * (bins + 1)).view(c, bins + 1)
            hist[items, b, zero_bin] -= zeros
            if extreme < 0:
                over[items, b] -= zeros
    hist = hist.cpu()
    hist[..., bins - 1] += hist[..., bins]
    hist = hist[..., :bins]
    if aligned:
        frac = (hist[..., :k_lo].sum(-1) + hist[..., k_hi:].sum(-1)).to(acc) / count
    else:
        frac = over.cpu() / count
    mean_s = sums[..., 0] / count
    std = (sums[..., 1] / count - mean_s.square()).clamp_(min=0.0).sqrt()
    prob = hist.to(acc) / count[:, None]
    summaries = [mean_s.to(acc), std.to(acc), abs_sum.cpu() / count, frac]
    if bool(bad_items.any()):
        nan_rows = bad_items.cpu()
        for t in (prob, *summaries):
            t[nan_rows] = math.nan
    mean_s, std, mean_abs, frac = summaries
    return BlockStats(
        method=method,
        blocks=names,
        edges=torch.linspace(lo, hi, bins + 1, dtype=acc),
        prob=prob.reshape(*lead, nb, bins),
        mean=mean_s.reshape(*lead, nb),
        std=std.reshape(*lead, nb),
        mean_abs=mean_abs.reshape(*lead, nb),
        frac_extreme=frac.reshape(*lead, nb),
        count=count,
        extreme=float(extreme),
        axes=axes or {},
    )
