"""Independent reference implementations that the tiled Q/K/V block kernel is tested against.

* :func:`block_stats`: the whole similarity matrix, then every block's values gathered by
  their codes and binned in one ``bincount`` (torch, no tiling, no Gram identities);
* :func:`reference_block_similarity`: :func:`block_stats` of :func:`feature_similarity`;
* :func:`numpy_block_similarity`: the straightforward numpy per-matrix computation (full matrix,
  boolean masks, ``np.histogram``).
"""

from __future__ import annotations

import numpy as np
import torch

from tlprobe.analyses.similarity import BLOCKS, BlockStats, feature_similarity, qkv_block_codes
from tlprobe.checks import as_tensor, check_finite, check_ndim, upcast
from tlprobe.errors import TlprobeError

SUMMARIES = BlockStats.SUMMARIES


def block_stats(
    sim: torch.Tensor,
    codes: torch.Tensor,
    method: str = "cosine",
    bins: int = 100,
    value_range: tuple[float, float] = (-1.0, 1.0),
    extreme: float = 0.9,
    blocks: dict[str, int] | None = None,
) -> BlockStats:
    """Histogram and summarise the values of ``sim`` (``[..., F, F]``) in each block of ``codes`` (``[F, F]``).

    All leading indices and blocks are binned in one ``bincount``; values outside ``value_range``
    are counted in the first/last bin. ``blocks``: name -> code (default :data:`BLOCKS`, restricted
    to the codes present).
    """
    sim = upcast(as_tensor(sim, "sim"))
    check_ndim(sim, "sim", 2, "[..., features, features]")
    if sim.shape[-1] != sim.shape[-2] or tuple(codes.shape) != tuple(sim.shape[-2:]):
        raise TlprobeError(f"sim has shape {tuple(sim.shape)} and codes {tuple(codes.shape)}")
    lo, hi = float(value_range[0]), float(value_range[1])
    check_finite(sim, "sim")
    device = sim.device
    codes = codes.to(device)
    present = set(torch.unique(codes).tolist()) - {0}
    table = {k: v for k, v in (blocks or BLOCKS).items() if v in present}
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
    mean_abs = torch.zeros_like(sums).index_add_(1, block_id, vals.abs().to(acc)) / count
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
        mean_abs=mean_abs.reshape(*lead, nb).cpu(),
        frac_extreme=ext.reshape(*lead, nb).cpu(),
        count=count.cpu(),
        extreme=float(extreme),
    )


def reference_block_similarity(x: torch.Tensor, method: str = "cosine", bins: int = 100, **kw) -> BlockStats:
    """The full similarity matrix of ``[..., samples, 3n]`` samples, then :func:`block_stats`."""
    return block_stats(feature_similarity(x, method), qkv_block_codes(x.shape[-1] // 3), method=method, bins=bins, **kw)


def numpy_block_similarity(x: np.ndarray, method: str, bins: int, extreme: float = 0.9) -> dict[str, np.ndarray]:
    """One ``[samples, 3n]`` matrix the straightforward way: full matrix, boolean masks, np.histogram."""
    if method == "cosine":
        xn = x / np.linalg.norm(x, axis=0, keepdims=True)
        sim = xn.T @ xn
    else:
        sim = np.corrcoef(x, rowvar=False)
    sim = np.clip(sim, -1, 1)
    n = x.shape[1] // 3
    lab = np.repeat([1, 2, 3], n)
    codes = np.triu(np.outer(lab, lab), k=1)
    out: dict[str, list] = {k: [] for k in ("prob", *SUMMARIES)}
    for code in BLOCKS.values():
        v = sim[codes == code]
        hist, _ = np.histogram(v, bins=bins, range=(-1, 1))
        out["prob"].append(hist / v.size)
        out["mean"].append(v.mean())
        out["std"].append(v.std())
        out["mean_abs"].append(np.abs(v).mean())
        out["frac_extreme"].append(np.mean(np.abs(v) > extreme))
    return {k: np.array(v) for k, v in out.items()}
