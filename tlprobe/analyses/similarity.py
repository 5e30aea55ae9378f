"""Feature-by-feature similarity across samples, and its Q/K/V block statistics (L02, L03).

A *feature* is one coordinate (a hidden dimension, or one Q/K/V coordinate); a *sample* is one
occurrence of a token in one context. ``"cosine"`` keeps each feature's mean offset;
``"correlation"`` (Pearson) subtracts it first; ``"covariance"`` is the unbiased covariance.

* :func:`feature_similarity`: the ``[features, features]`` similarity matrix (batched);
* :func:`qkv_block_similarity`: the distribution of the similarities within and across the
  Q, K and V parts of fused ``[Q | K | V]`` samples (six blocks of the strict upper triangle),
  for any leading axes (populations, layers, heads) in one call, as a :class:`BlockStats`;
  computed tile by tile, so no ``[layer, F, F]`` (nor one ``F x F``) matrix is ever built;
* :func:`shuffle_values`: seeded null models of a ``[samples, features]`` matrix;
* :func:`qkv_labels`, :func:`qkv_block_codes`, :data:`BLOCKS`: the Q/K/V parts and block mask.

Per head: :func:`tlprobe.access.hooks.split_heads` gives each head's own ``[Q | K | V]`` slice as
a leading axis; label it with :func:`tlprobe.access.labels.head_labels` and ``result["L3H7"]``
selects a head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from jaxtyping import Float, Int

from tlprobe.checks import as_tensor, check_choice, check_finite, check_min_samples, check_ndim, upcast
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

    Batched over any leading dimensions (layers, heads): one matrix product per call.

    Args:
        x: ``[..., samples, features]`` activations (float16/bfloat16 are upcast to float32).
        method: ``"cosine"`` (normalised dot product of the feature columns),
            ``"correlation"`` (Pearson: columns centred first) or ``"covariance"``
            (unbiased, ``ddof=1``).

    Returns:
        ``[..., features, features]``, symmetric; the diagonal is 1 for cosine/correlation.

    Raises:
        TlprobeError: fewer than 2 samples (3 for correlation), non-finite values, or a feature
            whose norm is zero (all-zero for cosine, constant for correlation): the similarity is
            undefined there, so it is refused rather than returned as NaN. Drop those features.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [2.0, 4.1], [3.0, 5.9]])
        >>> feature_similarity(x, "correlation").round(decimals=4)
        tensor([[1.0000, 0.9990],
                [0.9990, 1.0000]])
    """
    check_choice(method, METHODS, "method")
    x = _checked_samples(x, "x", method, "[..., samples, features]")
    if method == "covariance":
        x = x - x.mean(dim=-2, keepdim=True)
        return x.mT @ x / (x.shape[-2] - 1)
    xn = unit_columns(x, method)
    return (xn.mT @ xn).clamp_(-1.0, 1.0)


def _checked_samples(x, name: str, method: str, shape_doc: str) -> torch.Tensor:
    """``x`` as a float tensor of at least 2 dims with enough samples and finite values."""
    x = upcast(as_tensor(x, name))
    check_ndim(x, name, 2, shape_doc)
    check_min_samples(
        x.shape[-2],
        3 if method == "correlation" else 2,
        f"{method} similarity",
        "collect more samples (sentences) for the target",
    )
    check_finite(x, name)
    return x


def unit_columns(
    x: Float[torch.Tensor, "... samples features"], method: Literal["cosine", "correlation"] = "cosine"
) -> Float[torch.Tensor, "... samples features"]:
    """Feature columns scaled to unit norm (centred first for ``"correlation"``).

    ``xn.mT @ xn`` is then the cosine (or correlation) matrix: the first step of
    :func:`feature_similarity` and of the tiles of :func:`qkv_block_similarity`.

    Raises:
        TlprobeError: a feature is all-zero (cosine) or constant (correlation) across samples.

    Example:
        >>> unit_columns(torch.tensor([[3.0], [4.0]])).flatten().tolist()
        [0.6000000238418579, 0.800000011920929]
    """
    if method == "correlation":
        x = x - x.mean(dim=-2, keepdim=True)
    norm = torch.linalg.vector_norm(x, dim=-2, keepdim=True)
    tiny = norm <= torch.finfo(x.dtype).eps * x.shape[-2] * (x.abs().amax(dim=-2, keepdim=True) + 1)
    if bool(tiny.any()):
        bad = tiny.flatten().nonzero().flatten()[:5].remainder(x.shape[-1]).tolist()
        what = "constant" if method == "correlation" else "all-zero"
        raise TlprobeError(
            f"{int(tiny.sum())} feature(s) are {what} across samples (e.g. feature(s) {bad}); "
            f"their {method} is undefined. Drop those features or use another method"
        )
    return x / norm


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
        seed: the same seed gives the same shuffle; the permutation is drawn on the CPU, so
            results do not depend on the device.

    Returns:
        A tensor shaped like ``x`` holding the same values.

    Example:
        >>> x = torch.arange(6.0).reshape(3, 2)
        >>> torch.equal(shuffle_values(x, seed=1).flatten().sort().values, x.flatten())
        True
    """
    check_choice(mode, ("all", "within-feature"), "shuffle mode")
    x = as_tensor(x, "x")
    check_ndim(x, "x", 2, "[..., samples, features]")
    gen = torch.Generator().manual_seed(int(seed))
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
        numbered, under ``dim0``, ``dim1``, ...).

        Args:
            block: only the rows of this block.
            sort_by: a summary (:attr:`SUMMARIES`): rows by decreasing value (ties keep index order).
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
        if sort_by is not None:
            rows.sort(key=lambda r: -r[columns[sort_by]])
        return rows if k is None else rows[: max(0, int(k))]


def _plan(n_items: int, n: int, chunk_size: int | None) -> tuple[int, int]:
    """(items per chunk, similarity rows per tile) so that one tile holds about TILE_CELLS cells."""
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise TlprobeError(f"chunk_size must be a positive integer (items per chunk), got {chunk_size!r}")
        size = chunk_size
    else:
        size = max(1, min(n_items, TILE_CELLS // (n * n)))
    rows = max(1, min(n, TILE_CELLS // (size * n)))
    return size, rows


def qkv_block_similarity(
    samples: Float[torch.Tensor, "... samples qkv"],
    method: Literal["cosine", "correlation"] = "cosine",
    *,
    bins: int = 100,
    extreme: float = 0.9,
    value_range: tuple[float, float] = (-1.0, 1.0),
    chunk_size: int | None = None,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> BlockStats:
    """Similarity of every pair of Q/K/V coordinates across samples, summarised per block.

    For each leading index (population, layer, head): the :func:`feature_similarity` of the
    ``[Q | K | V]`` coordinates, its strict upper triangle split into the six blocks of
    :data:`BLOCKS`, each block's histogram over ``value_range`` and its summaries. The
    similarity matrix is never built whole: each block ``Q^T K`` etc. is computed a tile of rows
    at a time (batched over a chunk of leading indices), summarised while it sits in cache, and
    dropped; for QQ, KK and VV only the upper triangle's tiles are multiplied. Working memory is
    three tiles of about :data:`TILE_CELLS` cells plus the chunk's input, so GPT-2 XL's 48 layers x
    4800 coordinates never hold a ``48 x 4800 x 4800`` tensor (nor one ``4800 x 4800`` matrix).

    ``mean`` and ``std`` come from Gram-matrix identities in float64 (no pass over the blocks);
    ``frac_extreme`` is read off the histogram when ``+-extreme`` are bin edges (bins=100 or 60
    over [-1, 1] with 0.9), else counted exactly. Values are not clamped to [-1, 1]: rounding
    overshoot (~1e-7) lands in the edge bins, as a clamped value would.

    Args:
        samples: ``[..., samples, 3 * n]`` fused ``[Q | K | V]`` vectors (see
            :func:`tlprobe.access.hooks.fused_qkv`), e.g. ``[population, samples, 3 * n]``,
            ``[layer, samples, 3 * n]`` or ``[layer, head, samples, 3 * d_head]`` (see
            :func:`tlprobe.access.hooks.split_heads`); half precision is upcast to float32.
        method: ``"cosine"`` or ``"correlation"``.
        bins: histogram bins over ``value_range``.
        extreme: threshold of ``frac_extreme`` (``|s| > extreme``).
        value_range: histogram range; values outside go to the first/last bin.
        chunk_size: leading indices processed together; default: as many as fit in one tile
            (many heads, one large layer). The result does not depend on it.
        axes: labels of the leading axes, e.g. ``{"population": ("target", "non-target")}``.

    Returns:
        :class:`BlockStats` with ``prob`` ``[..., block, bins]`` and summaries ``[..., block]``.

    Raises:
        TlprobeError: not ``3 * n`` coordinates (n >= 2), too few samples, non-finite values, an
            all-zero (cosine) or constant (correlation) coordinate, bad ``bins``/``value_range``/
            ``chunk_size``, or axes that do not match the leading dimensions.

    Example:
        >>> x = torch.randn(4, 30, 12, generator=torch.Generator().manual_seed(0))  # 4 layers
        >>> st = qkv_block_similarity(x, bins=10, axes={"layer": ("L0", "L1", "L2", "L3")})
        >>> st.prob.shape, st.blocks
        (torch.Size([4, 6, 10]), ('QQ', 'QK', 'QV', 'KK', 'KV', 'VV'))
        >>> bool(torch.allclose(st["L2"].prob.sum(-1), torch.ones(6)))
        True
    """
    check_choice(method, ("cosine", "correlation"), "method")
    x = _checked_samples(samples, "samples", method, "[..., samples, 3 * n]")
    if x.shape[-1] % 3:
        raise TlprobeError(f"a [Q | K | V] vector has 3 * n coordinates; got {x.shape[-1]}")
    if not isinstance(bins, int) or bins < 1:
        raise TlprobeError(f"bins must be a positive integer, got {bins!r}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise TlprobeError(f"value_range must be (low, high) with high > low, got {value_range}")
    lead, s, n = x.shape[:-2], x.shape[-2], x.shape[-1] // 3
    if n < 2:
        raise TlprobeError("each of Q, K, V needs at least 2 coordinates for the QQ/KK/VV blocks")
    flat = x.reshape(-1, s, 3 * n)
    n_items, device = flat.shape[0], x.device
    size, tile_rows = _plan(n_items, n, chunk_size)
    names = tuple(_PAIRS)
    nb = len(names)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    count = torch.tensor([n * (n - 1) // 2 if i == j else n * n for i, j in _PAIRS.values()])
    pi = torch.tensor([i for i, _ in _PAIRS.values()], device=device)
    pj = torch.tensor([j for _, j in _PAIRS.values()], device=device)
    diag = (pi == pj).to(torch.float64).cpu()
    scale = bins / (hi - lo)
    needs_clamp = lo > -1.0 or hi < 1.0

    def bin_index(t: torch.Tensor) -> torch.Tensor:
        """t = v - lo (in place) -> floor((v - lo) / (hi - lo) * bins), the reference binning."""
        if needs_clamp:
            t.clamp_(0.0, hi - lo)
        return t.mul_(scale)  # t >= 0 (or -1 < t < 0, bin 0 either way), so int truncation is floor

    # QQ/KK/VV tiles hold their lower triangle and diagonal as zeros; their count is removed from
    # the bin of 0 (they add nothing to the sums and never exceed a threshold >= 0).
    zero_bin = int(bin_index(torch.zeros(1, dtype=x.dtype) - lo).to(torch.int32))
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
    cells = size * tile_rows * n
    buf_sim = torch.empty(cells, dtype=x.dtype, device=device)
    buf_tmp = torch.empty(cells, dtype=x.dtype, device=device)
    buf_idx = torch.empty(cells, dtype=torch.int32, device=device)
    lower: dict[int, torch.Tensor] = {}
    for start in range(0, n_items, size):
        xc = unit_columns(flat[start : start + size], method)
        c = xc.shape[0]
        items = slice(start, start + c)
        parts = xc.unflatten(-1, (3, n)).movedim(-2, 1).contiguous()  # [c, 3, s, n]
        # Sum and sum of squares of every block without touching it: for S_ij = X_i^T X_j,
        # sum(S_ij) = u_i . u_j (u = row sums) and ||S_ij||^2 = <X_i X_i^T, X_j X_j^T>; the
        # strict upper triangle of S_ii is half of (full square - diagonal).
        p64 = parts.to(torch.float64)
        u = p64.sum(-1)  # [c, 3, s]
        gram = p64 @ p64.mT  # [c, 3, s, s]
        sq = p64.square().sum(-2)  # [c, 3, n]: diagonal of S_ii
        s1 = (u[:, pi] * u[:, pj]).sum(-1).cpu()
        s2 = (gram[:, pi] * gram[:, pj]).sum((-2, -1)).cpu()
        s1 = s1 - diag * sq.sum(-1)[:, pi].cpu()
        s2 = s2 - diag * sq.square().sum(-1)[:, pi].cpu()
        sums[items] = torch.stack([s1, s2], -1) / (1 + diag[:, None])
        offsets = (torch.arange(c, device=device, dtype=torch.int32) * (bins + 1))[:, None]
        for b, (i, j) in enumerate(_PAIRS.values()):
            zeros = 0
            for r0 in range(0, n, tile_rows):
                t = min(n, r0 + tile_rows) - r0
                c0 = r0 if i == j else 0  # QQ/KK/VV: only columns from the tile's first row on
                w = n - c0
                tile = buf_sim[: c * t * w].view(c, t, w)
                torch.matmul(parts[:, i, :, r0 : r0 + t].mT, parts[:, j, :, c0:], out=tile)
                if i == j:
                    if t not in lower:
                        lower[t] = torch.ones(t, t, dtype=torch.bool, device=device).tril()
                    tile[:, :, :t].masked_fill_(lower[t], 0.0)
                    zeros += t * (t + 1) // 2
                vals = tile.view(c, t * w)
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
    mean = sums[..., 0] / count
    std = (sums[..., 1] / count - mean.square()).clamp_(min=0.0).sqrt()
    return BlockStats(
        method=method,
        blocks=names,
        edges=torch.linspace(lo, hi, bins + 1, dtype=acc),
        prob=(hist.to(acc) / count[:, None]).reshape(*lead, nb, bins),
        mean=mean.to(acc).reshape(*lead, nb),
        std=std.to(acc).reshape(*lead, nb),
        mean_abs=(abs_sum.cpu() / count).reshape(*lead, nb),
        frac_extreme=frac.reshape(*lead, nb),
        count=count,
        extreme=float(extreme),
        axes=axes or {},
    )
