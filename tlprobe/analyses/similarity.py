"""Feature-by-feature similarity across samples, and the Q/K/V block statistics of L02/L03.

A *feature* is one coordinate (a hidden dimension, or one Q/K/V coordinate); a *sample* is one
occurrence of a token in one context. ``"cosine"`` keeps each feature's mean offset;
``"correlation"`` (Pearson) subtracts it first; ``"covariance"`` is the unbiased covariance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tlprobe.checks import as_tensor, check_choice, check_finite, check_min_samples, check_ndim, upcast
from tlprobe.errors import TlprobeError

METHODS = ("cosine", "correlation", "covariance")

#: Block codes of the Q/K/V mask: the product of the part labels Q=1, K=2, V=3.
BLOCKS: dict[str, int] = {"QQ": 1, "QK": 2, "QV": 3, "KK": 4, "KV": 6, "VV": 9}


def feature_similarity(
    x: Float[torch.Tensor, "... samples features"], method: str = "cosine"
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
    x = upcast(as_tensor(x, "x"))
    check_ndim(x, "x", 2, "[..., samples, features]")
    check_min_samples(
        x.shape[-2],
        3 if method == "correlation" else 2,
        f"{method} similarity",
        "collect more samples (sentences) for the target",
    )
    check_finite(x, "x")
    if method == "covariance":
        x = x - x.mean(dim=-2, keepdim=True)
        return x.mT @ x / (x.shape[-2] - 1)
    xn = unit_columns(x, method)
    return (xn.mT @ xn).clamp_(-1.0, 1.0)


def unit_columns(
    x: Float[torch.Tensor, "... samples features"], method: str = "cosine"
) -> Float[torch.Tensor, "... samples features"]:
    """Feature columns scaled to unit norm (centred first for ``"correlation"``).

    ``xn.mT @ xn`` is then the cosine (or correlation) matrix. Shared by
    :func:`feature_similarity` and the tiled kernel of
    :func:`tlprobe.analyses.depth.depth_block_similarity`.

    Raises:
        TlprobeError: a feature is all-zero (cosine) or constant (correlation) across samples.
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
    x: Float[torch.Tensor, "... samples features"], mode: str = "all", seed: int = 0
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


@dataclass(frozen=True)
class BlockStats:
    """Distribution of similarity values per Q/K/V block (and per leading index).

    Attributes:
        method: the similarity method that produced the values.
        blocks: block names, e.g. ``("QQ", "QK", "QV", "KK", "KV", "VV")``.
        edges: ``[bins + 1]`` histogram bin edges.
        prob: ``[..., block, bins]`` fraction of the block's values in each bin (sums to 1).
        mean, std: ``[..., block]`` mean and standard deviation of the values.
        frac_extreme: ``[..., block]`` fraction with ``|s| > extreme``.
        count: ``[block]`` number of feature pairs in each block.
        extreme: the threshold used for ``frac_extreme``.
    """

    method: str
    blocks: tuple[str, ...]
    edges: Float[torch.Tensor, " edges"]
    prob: Float[torch.Tensor, "... block bins"]
    mean: Float[torch.Tensor, "... block"]
    std: Float[torch.Tensor, "... block"]
    frac_extreme: Float[torch.Tensor, "... block"]
    count: Int[torch.Tensor, " block"]
    extreme: float

    @property
    def centers(self) -> Float[torch.Tensor, " bins"]:
        """Bin centres."""
        return (self.edges[1:] + self.edges[:-1]) / 2

    @property
    def density(self) -> Float[torch.Tensor, "... block bins"]:
        """Probability density (integrates to 1 over the bin range)."""
        return self.prob / (self.edges[1:] - self.edges[:-1])

    def table(self, labels: list[str] | None = None) -> list[dict]:
        """Rows ``{index, block, n_pairs, mean, std, frac_extreme}``, one per leading index and block.

        ``labels`` names the leading indices (e.g. population names); by default they are
        numbered. A result without leading dimensions has one row per block.
        """
        mean = self.mean.reshape(-1, len(self.blocks))
        std = self.std.reshape(-1, len(self.blocks))
        ext = self.frac_extreme.reshape(-1, len(self.blocks))
        names = labels if labels is not None else [str(i) for i in range(mean.shape[0])]
        if len(names) != mean.shape[0]:
            raise TlprobeError(f"{len(names)} labels for {mean.shape[0]} leading indices")
        rows = []
        for i, name in enumerate(names):
            for j, blk in enumerate(self.blocks):
                rows.append(
                    {
                        "index": name,
                        "block": blk,
                        "n_pairs": int(self.count[j]),
                        "mean": float(mean[i, j]),
                        "std": float(std[i, j]),
                        f"frac_abs_gt_{self.extreme:g}": float(ext[i, j]),
                    }
                )
        return rows

    def to_dict(self) -> dict:
        """JSON-ready: every number as nested lists."""
        return {
            "method": self.method,
            "blocks": list(self.blocks),
            "edges": self.edges.tolist(),
            "prob": self.prob.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "frac_extreme": self.frac_extreme.tolist(),
            "extreme": self.extreme,
            "count": self.count.tolist(),
        }


def block_stats(
    sim: Float[torch.Tensor, "... features features"],
    codes: Int[torch.Tensor, "features features"],
    method: str = "cosine",
    bins: int = 100,
    range: tuple[float, float] = (-1.0, 1.0),
    extreme: float = 0.9,
    blocks: dict[str, int] | None = None,
) -> BlockStats:
    """Histogram and summarise the values of ``sim`` in each block of ``codes``.

    All leading indices and blocks are binned in one ``bincount``; no loop over blocks.
    Values outside ``range`` are counted in the first/last bin.

    Args:
        sim: ``[..., F, F]`` similarity matrices (e.g. from :func:`feature_similarity`).
        codes: ``[F, F]`` integer block codes, 0 for cells to ignore (e.g.
            :func:`qkv_block_codes`).
        method: recorded in the result.
        bins: number of equal-width bins over ``range``.
        range: histogram range.
        extreme: threshold for ``frac_extreme`` (fraction with ``|s| > extreme``).
        blocks: name -> code; default :data:`BLOCKS`, restricted to codes present in ``codes``.

    Returns:
        :class:`BlockStats`.

    Example:
        >>> x = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
        >>> st = block_stats(feature_similarity(x), qkv_block_codes(2), bins=10)
        >>> st.blocks, st.count.tolist()
        (('QQ', 'QK', 'QV', 'KK', 'KV', 'VV'), [1, 4, 4, 1, 4, 1])
    """
    sim = upcast(as_tensor(sim, "sim"))
    check_ndim(sim, "sim", 2, "[..., features, features]")
    if sim.shape[-1] != sim.shape[-2] or tuple(codes.shape) != tuple(sim.shape[-2:]):
        raise TlprobeError(
            f"sim has shape {tuple(sim.shape)} and codes {tuple(codes.shape)}; expected sim [..., F, F] "
            "and codes [F, F] with the same F"
        )
    if bins < 1:
        raise TlprobeError(f"bins must be >= 1, got {bins}")
    lo, hi = float(range[0]), float(range[1])
    if not hi > lo:
        raise TlprobeError(f"range must be (low, high) with high > low, got {range}")
    check_finite(sim, "sim")
    device = sim.device
    codes = codes.to(device)
    present = set(torch.unique(codes).tolist()) - {0}
    table = {k: v for k, v in (blocks or BLOCKS).items() if v in present}
    missing = present - set(table.values())
    if missing:
        raise TlprobeError(f"codes {sorted(missing)} have no block name; pass blocks={{name: code}}")
    names = tuple(table)
    # Map each code to its block number 0..nb-1, gather the selected cells once.
    lut = torch.full((int(codes.max()) + 1,), -1, dtype=torch.long, device=device)
    lut[torch.tensor(list(table.values()), device=device)] = torch.arange(len(names), device=device)
    flat_codes = codes.flatten()
    cells = (flat_codes > 0).nonzero().flatten()
    block_id = lut[flat_codes[cells]]
    lead = sim.shape[:-2]
    vals = sim.reshape(-1, sim.shape[-1] * sim.shape[-2])[:, cells]  # [L, P]
    n_lead, nb = vals.shape[0], len(names)
    count = torch.bincount(block_id, minlength=nb)

    acc = torch.float64 if vals.dtype == torch.float64 else torch.float32
    sums = torch.zeros(n_lead, nb, dtype=acc, device=device).index_add_(1, block_id, vals.to(acc))
    mean = sums / count
    dev = vals.to(acc) - mean[:, block_id]
    var = torch.zeros_like(sums).index_add_(1, block_id, dev * dev) / count
    ext = torch.zeros_like(sums).index_add_(1, block_id, (vals.abs() > extreme).to(acc)) / count

    bin_idx = ((vals - lo) / (hi - lo) * bins).floor().long().clamp_(0, bins - 1)
    flat = (torch.arange(n_lead, device=device)[:, None] * nb + block_id[None, :]) * bins + bin_idx
    hist = torch.bincount(flat.flatten(), minlength=n_lead * nb * bins).reshape(n_lead, nb, bins)
    prob = hist.to(acc) / count[None, :, None]
    return BlockStats(
        method=method,
        blocks=names,
        edges=torch.linspace(lo, hi, bins + 1, dtype=acc),
        prob=prob.reshape(*lead, nb, bins).cpu(),
        mean=mean.reshape(*lead, nb).cpu(),
        std=var.sqrt().reshape(*lead, nb).cpu(),
        frac_extreme=ext.reshape(*lead, nb).cpu(),
        count=count.cpu(),
        extreme=float(extreme),
    )


def qkv_block_similarity(
    samples: Float[torch.Tensor, "... samples qkv"],
    method: str = "cosine",
    bins: int = 100,
    extreme: float = 0.9,
) -> BlockStats:
    """L02 in one call: feature similarity of ``[Q | K | V]`` samples, summarised per block.

    The same numbers as ``block_stats(feature_similarity(samples, method), qkv_block_codes(n))``,
    computed tile by tile without building the ``3n x 3n`` matrix (see
    :func:`tlprobe.analyses.depth.depth_block_similarity`).

    Args:
        samples: ``[..., samples, 3 * n]`` fused Q|K|V vectors (see
            :func:`tlprobe.access.fused_qkv`), e.g. one row per sentence; leading dimensions
            (populations, layers) are batched.
        method: ``"cosine"`` or ``"correlation"``.
        bins: histogram bins over [-1, 1].
        extreme: threshold for ``frac_extreme``.

    Example:
        >>> x = torch.randn(2, 30, 12, generator=torch.Generator().manual_seed(0))
        >>> qkv_block_similarity(x, "correlation", bins=20).prob.shape
        torch.Size([2, 6, 20])
    """
    # One implementation of the Q/K/V block statistics: the tiled, memory-bounded kernel of
    # depth_block_similarity (tested against feature_similarity + block_stats and numpy).
    from tlprobe.analyses.depth import depth_block_similarity

    return depth_block_similarity(samples, method, bins=bins, extreme=extreme)
