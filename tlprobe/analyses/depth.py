"""L03: how a token's representation changes across depth, per layer and per head.

Three analyses, each batched over any leading dimensions (populations, layers, heads):

* :func:`sample_moments`: the mean and variance of every coordinate across samples (is the
  token represented the same way in every context?), summarised per layer;
* :func:`depth_block_similarity`: the L02 Q/K/V block histograms and summaries for every layer
  at once, as one ``[..., layer, block, bin]`` result, computed block by block and chunk by
  chunk so that no ``[layer, F, F]`` similarity tensor is ever built;
* :func:`head_maps`: per-head summaries as ``[layer, head]`` matrices with TransformerLens-style
  labels (``"L3H7"``), from :func:`split_heads` (each head's ``[Q | K | V]`` slice).

The results equal :func:`tlprobe.analyses.similarity.qkv_block_similarity` (L02) layer by layer
and head by head; the tests check it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from jaxtyping import Float

from tlprobe.analyses.similarity import BlockStats, unit_columns
from tlprobe.checks import as_tensor, check_choice, check_finite, check_min_samples, check_ndim, upcast
from tlprobe.errors import TlprobeError

#: Part pairs ``(i, j)`` of each block, in ``tlprobe.analyses.similarity.BLOCKS`` order (Q=0, K=1, V=2).
_PAIRS: dict[str, tuple[int, int]] = {
    "QQ": (0, 0),
    "QK": (0, 1),
    "QV": (0, 2),
    "KK": (1, 1),
    "KV": (1, 2),
    "VV": (2, 2),
}

#: Cells of one work tile: a tile of similarity rows (with its scratch copies, 12 MiB in float32)
#: stays in cache while it is summarised, and bounds the working memory (3 such buffers).
TILE_CELLS = 2**20


def split_heads(
    qkv: Float[torch.Tensor, "... samples qkv"], n_heads: int
) -> Float[torch.Tensor, "... head samples head_qkv"]:
    """Each head's own ``[Q | K | V]`` slice, as a new leading dimension.

    A fused vector (see :func:`tlprobe.access.fused_qkv`) is ``[Q | K | V]``, each part head-major
    (``n_heads * d_head``). This reshapes ``[..., samples, 3 * H * d_head]`` into
    ``[..., H, samples, 3 * d_head]`` (a view-and-copy, no loop over heads); head ``h``'s row equals
    ``fused_qkv(cache, layer, head=h)``.

    Example:
        >>> x = torch.arange(12.0).reshape(1, 12)  # one sample, Q|K|V of 2 heads x d_head 2
        >>> split_heads(x, 2)[1]  # head 1: its Q, K and V slices
        tensor([[ 2.,  3.,  6.,  7., 10., 11.]])
    """
    qkv = as_tensor(qkv, "qkv")
    check_ndim(qkv, "qkv", 2, "[..., samples, 3 * n_heads * d_head]")
    if not isinstance(n_heads, int) or n_heads < 1 or qkv.shape[-1] % (3 * n_heads):
        raise TlprobeError(
            f"cannot split {qkv.shape[-1]} Q|K|V coordinates into 3 parts of {n_heads} heads; "
            "pass the model's n_heads (model_info(model).n_heads) and a full fused_qkv vector"
        )
    d_head = qkv.shape[-1] // (3 * n_heads)
    x = qkv.unflatten(-1, (3, n_heads, d_head))  # [..., s, 3, H, dh]
    return x.movedim(-2, -4).flatten(-2)  # [..., H, s, 3 * dh]


# --- moments --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moments:
    """Across-sample moments of every coordinate, summarised over coordinates.

    All fields are ``[...]``: the leading dimensions of the input (e.g. population, layer,
    head). Variances use ``ddof=0`` (numpy's ``var``).

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
    var: Float[torch.Tensor, ...]
    mean: Float[torch.Tensor, ...]
    mean_abs: Float[torch.Tensor, ...]
    rel_var: Float[torch.Tensor, ...]

    STATS = ("var", "mean", "mean_abs", "rel_var")

    def __getitem__(self, index) -> Moments:
        """Index the leading dimensions (e.g. ``m[0]`` for the first population)."""
        return dataclasses.replace(self, **{k: getattr(self, k)[index] for k in self.STATS})

    def to_dict(self) -> dict:
        """JSON-ready: every number as nested lists."""
        return {
            "n_samples": self.n_samples,
            "n_features": self.n_features,
            **{k: getattr(self, k).tolist() for k in self.STATS},
        }


def sample_moments(x: Float[torch.Tensor, "... samples features"]) -> Moments:
    """Mean and variance of each coordinate across samples, summarised per leading index.

    Args:
        x: ``[..., samples, features]``, e.g. ``[population, layer, samples, d_model]`` for the
            residual stream or ``[layer, head, samples, 3 * d_head]`` after :func:`split_heads`.

    Returns:
        :class:`Moments` with ``[...]`` fields.

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
    )


# --- block similarity across depth ----------------------------------------------------------


@dataclass(frozen=True)
class DepthBlockStats(BlockStats):
    """:class:`~tlprobe.analyses.similarity.BlockStats` for many layers (and heads), plus ``mean_abs``.

    Every field keeps the input's leading dimensions: ``prob`` is ``[..., block, bins]`` (e.g.
    ``[population, layer, block, bin]``), ``mean``/``std``/``frac_extreme``/``mean_abs`` are
    ``[..., block]``. Index the leading dimensions with ``st[i]``.
    """

    mean_abs: Float[torch.Tensor, "... block"]

    SUMMARIES = ("mean", "std", "mean_abs", "frac_extreme")

    def __getitem__(self, index) -> DepthBlockStats:
        """Index the leading dimensions (not the block dimension)."""
        if self.prob.ndim < 3:
            raise TlprobeError("this result has no leading dimensions to index")
        return dataclasses.replace(self, prob=self.prob[index], **{k: getattr(self, k)[index] for k in self.SUMMARIES})

    def to_dict(self) -> dict:
        return {**super().to_dict(), "mean_abs": self.mean_abs.tolist()}


def _plan(n_items: int, n: int, chunk: int | None) -> tuple[int, int]:
    """(items per chunk, similarity rows per tile) so that one tile holds about TILE_CELLS cells."""
    if chunk is not None:
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise TlprobeError(f"chunk must be a positive integer (items per chunk), got {chunk!r}")
        size = chunk
    else:
        size = max(1, min(n_items, TILE_CELLS // (n * n)))
    rows = max(1, min(n, TILE_CELLS // (size * n)))
    return size, rows


def depth_block_similarity(
    samples: Float[torch.Tensor, "... samples qkv"],
    method: str = "cosine",
    bins: int = 100,
    extreme: float = 0.9,
    range: tuple[float, float] = (-1.0, 1.0),
    chunk: int | None = None,
) -> DepthBlockStats:
    """L02's Q/K/V block statistics for every leading index (layer, head, population) at once.

    Same numbers as :func:`~tlprobe.analyses.similarity.qkv_block_similarity` (feature
    similarity across samples, strict upper triangle, six blocks, density histograms), but the
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
        samples: ``[..., samples, 3 * n]`` fused ``[Q | K | V]`` vectors, e.g.
            ``[layer, samples, 3 * n]`` or ``[layer, head, samples, 3 * d_head]`` (see
            :func:`split_heads`).
        method: ``"cosine"`` or ``"correlation"``.
        bins: histogram bins over ``range``.
        extreme: threshold for ``frac_extreme`` (``|s| > extreme``).
        range: histogram range; values outside go to the first/last bin.
        chunk: leading indices processed together; default: as many as fit in one tile
            (many heads, one large layer). The result does not depend on it.

    Returns:
        :class:`DepthBlockStats` with ``prob`` ``[..., block, bins]`` and summaries
        ``[..., block]``.

    Example:
        >>> x = torch.randn(4, 30, 12, generator=torch.Generator().manual_seed(0))  # 4 layers
        >>> st = depth_block_similarity(x, bins=10)
        >>> st.prob.shape, st.blocks
        (torch.Size([4, 6, 10]), ('QQ', 'QK', 'QV', 'KK', 'KV', 'VV'))
        >>> bool(torch.allclose(st.prob.sum(-1), torch.ones(4, 6)))
        True
    """
    check_choice(method, ("cosine", "correlation"), "method")
    x = upcast(as_tensor(samples, "samples"))
    check_ndim(x, "samples", 2, "[..., samples, 3 * n]")
    if x.shape[-1] % 3:
        raise TlprobeError(f"a [Q | K | V] vector has 3 * n coordinates; got {x.shape[-1]}")
    if not isinstance(bins, int) or bins < 1:
        raise TlprobeError(f"bins must be a positive integer, got {bins!r}")
    lo, hi = float(range[0]), float(range[1])
    if not hi > lo:
        raise TlprobeError(f"range must be (low, high) with high > low, got {range}")
    check_min_samples(
        x.shape[-2],
        3 if method == "correlation" else 2,
        f"{method} similarity",
        "collect more samples (sentences) for the target",
    )
    check_finite(x, "x")
    lead, s, n = x.shape[:-2], x.shape[-2], x.shape[-1] // 3
    if n < 2:
        raise TlprobeError("each of Q, K, V needs at least 2 coordinates for the QQ/KK/VV blocks")
    flat = x.reshape(-1, s, 3 * n)
    n_items, device = flat.shape[0], x.device
    size, tile_rows = _plan(n_items, n, chunk)
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
        """t = v - lo (in place) -> floor((v - lo) / (hi - lo) * bins), as block_stats computes it."""
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
    lower = {}
    for start in torch.arange(0, n_items, size).tolist():
        xc = unit_columns(flat[start : start + size], method)
        c = xc.shape[0]
        rows = slice(start, start + c)
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
        sums[rows] = torch.stack([s1, s2], -1) / (1 + diag[:, None])
        offsets = (torch.arange(c, device=device, dtype=torch.int32) * (bins + 1))[:, None]
        for b, (i, j) in enumerate(_PAIRS.values()):
            zeros = 0
            for r0 in torch.arange(0, n, tile_rows).tolist():  # (`range` is the histogram range here)
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
                abs_sum[rows, b] += tmp.sum(1, dtype=acc)
                if not aligned:  # |s| > extreme, counted exactly: sign(max(|s| - extreme, 0))
                    over[rows, b] += tmp.sub_(extreme).clamp_(min=0.0).sign_().sum(1, dtype=acc)
                idx = buf_idx[: c * t * w].view(c, t * w)
                idx.copy_(bin_index(torch.sub(vals, lo, out=tmp)))
                if c > 1:
                    idx += offsets  # one bincount for the whole chunk; slot `bins` holds v == hi
                hist[rows, b] += torch.bincount(idx.view(-1), minlength=c * (bins + 1)).view(c, bins + 1)
            hist[rows, b, zero_bin] -= zeros
            if extreme < 0:
                over[rows, b] -= zeros
    hist = hist.cpu()
    hist[..., bins - 1] += hist[..., bins]
    hist = hist[..., :bins]
    prob = hist.to(acc) / count[:, None]
    if aligned:
        frac = (hist[..., :k_lo].sum(-1) + hist[..., k_hi:].sum(-1)).to(acc) / count
    else:
        frac = over.cpu() / count
    mean_abs = abs_sum.cpu() / count
    mean = sums[..., 0] / count
    std = (sums[..., 1] / count - mean.square()).clamp_(min=0.0).sqrt()
    out = {"mean": mean.to(acc), "std": std.to(acc), "mean_abs": mean_abs, "frac_extreme": frac}
    return DepthBlockStats(
        method=method,
        blocks=names,
        edges=torch.linspace(lo, hi, bins + 1, dtype=acc),
        prob=prob.reshape(*lead, nb, bins),
        mean=out["mean"].reshape(*lead, nb),
        std=out["std"].reshape(*lead, nb),
        frac_extreme=out["frac_extreme"].reshape(*lead, nb),
        count=count,
        extreme=float(extreme),
        mean_abs=out["mean_abs"].reshape(*lead, nb),
    )


# --- per-head maps --------------------------------------------------------------------------


def head_labels(n_layers: int, n_heads: int, layers: list[int] | None = None) -> list[list[str]]:
    """TransformerLens-style head names, ``[layer][head]``.

    Example:
        >>> head_labels(2, 3)
        [['L0H0', 'L0H1', 'L0H2'], ['L1H0', 'L1H1', 'L1H2']]
    """
    layers = list(range(n_layers)) if layers is None else list(layers)
    if len(layers) != n_layers:
        raise TlprobeError(f"{len(layers)} layer indices for {n_layers} layers")
    return [[f"L{layer}H{h}" for h in range(n_heads)] for layer in layers]


@dataclass(frozen=True)
class HeadMaps:
    """Named ``[layer, head]`` matrices (one per block and statistic), with "L3H7" labels.

    Attributes:
        names: one name per map, e.g. ``"cosine QQ frac_extreme"`` or ``"variance"``.
        values: ``[map, layer, head]``.
        layers: the layer index of each row.
    """

    names: tuple[str, ...]
    values: Float[torch.Tensor, "map layer head"]
    layers: tuple[int, ...]

    @property
    def labels(self) -> list[list[str]]:
        """``[layer][head]`` names such as ``"L3H7"``."""
        return head_labels(len(self.layers), self.values.shape[-1], list(self.layers))

    def __getitem__(self, name: str) -> Float[torch.Tensor, "layer head"]:
        if name not in self.names:
            raise TlprobeError(f"no head map named {name!r}; available: {', '.join(self.names)}")
        return self.values[self.names.index(name)]

    def concat(self, other: HeadMaps) -> HeadMaps:
        """Both sets of maps (same layers and heads)."""
        if other.layers != self.layers or other.values.shape[1:] != self.values.shape[1:]:
            raise TlprobeError("head maps cover different layers or heads; cannot concatenate")
        return HeadMaps(self.names + other.names, torch.cat([self.values, other.values]), self.layers)

    def top(self, name: str, k: int = 10, largest: bool = True) -> list[dict]:
        """The ``k`` heads with the largest (or smallest) value of one map: ``{head, layer, value}`` rows."""
        v = self[name].flatten()
        k = max(0, min(int(k), v.numel()))
        idx = v.topk(k, largest=largest).indices.tolist()
        n_heads = self.values.shape[-1]
        return [
            {
                "head": f"L{self.layers[i // n_heads]}H{i % n_heads}",
                "layer": self.layers[i // n_heads],
                name: float(v[i]),
            }
            for i in idx
        ]

    def to_dict(self) -> dict:
        """JSON-ready: ``{name: [layer][head] values}`` plus the layers and labels."""
        return {
            "layers": list(self.layers),
            "labels": self.labels,
            "maps": {n: self.values[i].tolist() for i, n in enumerate(self.names)},
        }


def head_maps(
    stats: DepthBlockStats | None = None,
    moments: Moments | None = None,
    layers: list[int] | None = None,
    summaries: tuple[str, ...] = ("mean_abs", "frac_extreme", "std"),
    prefix: str = "",
) -> HeadMaps:
    """Per-head ``[layer, head]`` maps from per-head results.

    Args:
        stats: :func:`depth_block_similarity` of ``split_heads(...)`` with leading dimensions
            exactly ``[layer, head]``; gives one map per block and summary, named
            ``f"{prefix}{method} {block} {summary}"``.
        moments: :func:`sample_moments` of per-head samples, fields ``[layer, head]``; gives maps
            ``f"{prefix}{stat}"`` for ``var``, ``mean_abs`` and ``rel_var``.
        layers: the layer index of each row (default ``0..L-1``).
        summaries: which block summaries to map (``mean``, ``std``, ``mean_abs``, ``frac_extreme``).
        prefix: prepended to every name (e.g. ``"target "``).

    Example:
        >>> x = torch.randn(2, 3, 20, 6, generator=torch.Generator().manual_seed(0))  # [layer, head, s, 3*dh]
        >>> maps = head_maps(depth_block_similarity(x, bins=4), sample_moments(x))
        >>> maps["cosine QK frac_extreme"].shape, maps.labels[1][2]
        (torch.Size([2, 3]), 'L1H2')
    """
    names: list[str] = []
    mats: list[torch.Tensor] = []
    shape = None
    if stats is not None:
        if stats.mean.ndim != 3:
            raise TlprobeError(
                f"stats must have leading dimensions [layer, head]; got summaries {tuple(stats.mean.shape)}"
            )
        for key in summaries:
            check_choice(key, DepthBlockStats.SUMMARIES, "summary")
            val = getattr(stats, key)
            for b, blk in enumerate(stats.blocks):
                names.append(f"{prefix}{stats.method} {blk} {key}")
                mats.append(val[..., b])
        shape = tuple(stats.mean.shape[:2])
    if moments is not None:
        if moments.var.ndim != 2 or (shape is not None and tuple(moments.var.shape) != shape):
            raise TlprobeError(f"moments must be [layer, head] like the stats; got {tuple(moments.var.shape)}")
        for key in ("var", "mean_abs", "rel_var"):
            names.append(f"{prefix}{key}")
            mats.append(getattr(moments, key))
        shape = tuple(moments.var.shape)
    if shape is None:
        raise TlprobeError("give stats, moments or both")
    layers = tuple(range(shape[0])) if layers is None else tuple(int(i) for i in layers)
    if len(layers) != shape[0]:
        raise TlprobeError(f"{len(layers)} layer indices for {shape[0]} layers")
    return HeadMaps(tuple(names), torch.stack([m.to(torch.float64) for m in mats]), layers)
