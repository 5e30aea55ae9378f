"""Mutual information between variables (L08-L12): histogram estimator, bias handling, GCMI.

Which estimator to use:

* :func:`pairwise_mi` (plug-in histogram estimator, equal-width bins per variable): sees any
  kind of dependence (also non-monotonic, e.g. ``y = x**2``), exact and fast, but **biased
  upward** when samples are few for the number of cells: on independent data with 94 samples
  it gives about 0.40 nats at 10 bins and about 1.1 at 20. The offset is **not** one constant:
  it depends on the bins, the sample count and each pair's marginals (how the samples fill the
  bins: skewed or heavy-tailed variables leave more cells empty), so it differs between pairs
  and between layers (MiniLM's shuffle-null mean falls by about a third over its layers at 10
  bins). Estimate it per layer and pair with :func:`mi_null` and compare layers and pairs on
  the null-corrected MI; raw values, absolute or relative, can rank layers differently.
* ``correction="miller-madow"``: subtracts the first-order analytic bias. Cheap, and enough with
  several samples per joint cell; it under-corrects when most cells hold 0-1 samples (94
  independent Gaussian samples: 0.39 -> 0.24 nats at 10 bins, 1.08 -> 0.87 at 20). Corrected
  values can be slightly negative: read them as "no detectable dependence".
* :func:`mi_null` (shuffle null): permutes each variable's samples separately (seeded), which
  keeps every marginal and destroys dependence; the mean over shuffles is the bias at exactly
  this sample size and binning, and ``raw - null_mean`` the corrected value. The most faithful
  correction, and also a significance reference; costs one full computation per shuffle.
* :func:`gcmi` (Gaussian-copula MI, Ince et al. 2017, as in frites): rank-normalise each variable,
  then the Gaussian MI ``-0.5 log(1 - r**2)``. Low bias and low variance with few samples, no bins
  to choose, a lower bound of the true MI. It only sees dependence that survives a monotonic
  re-mapping to a Gaussian: a symmetric ``y = x**2`` gives about 0. Use it to rank pairs with few
  samples; use the histogram estimators (with a correction) to detect non-monotonic dependence.

Everything is in nats. Binning (:func:`bin_labels`) matches ``numpy.histogram2d`` with an integer
``bins``: edges ``linspace(min, max, bins + 1)`` per variable, the maximum in the last bin.
A constant variable falls into one bin: its entropy is 0 and its MI with anything is 0, the exact
plug-in values (documented, not an error); :func:`gcmi` refuses constant variables.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
from jaxtyping import Float, Int

from tlprobe.analyses.similarity import feature_similarity, shuffle_values
from tlprobe.checks import (
    as_float,
    as_int,
    as_tensor,
    check_choice,
    check_finite,
    check_memory,
    check_min_samples,
    check_ndim,
    upcast,
)
from tlprobe.errors import TlprobeError
from tlprobe.result import Result, index_rows

#: A bin-count rule (numpy's definitions of the bin width; one count per call, see :func:`resolve_bins`).
BinRule = Literal["sqrt", "scott", "fd"]
#: A bias correction of the plug-in estimator (``None``: the raw plug-in value).
Correction = Literal["miller-madow"]
BIN_RULES: tuple[str, ...] = typing.get_args(BinRule)
CORRECTIONS: tuple[str | None, ...] = (None, *typing.get_args(Correction))

# Target size (cells) of one joint-histogram tile: ~4 MB in float32 keeps the tile's
# elementwise work in cache on a CPU (measured: smaller blocks were faster than 8 MB ones).
_BLOCK_ELEMENTS = 1 << 20


def _count(value, what: str, minimum: int = 1) -> int:
    """An integer knob (numpy and torch integers accepted) of at least ``minimum``."""
    return as_int(value, what, minimum=minimum)


def _prepare(x, name: str, shape_doc: str, min_samples: int = 2) -> torch.Tensor:
    x = upcast(as_tensor(x, name))
    check_ndim(x, name, 2, shape_doc)
    check_min_samples(
        x.shape[-2],
        min_samples,
        "mutual information",
        f"{name} is [..., samples, variables]: give at least {min_samples} samples",
    )
    if x.shape[-1] < 1:
        raise TlprobeError(f"{name} has no variables (shape {tuple(x.shape)})")
    check_finite(x, name)
    return x


def _check_correction(correction) -> None:
    if correction not in CORRECTIONS:
        raise TlprobeError(f"unknown correction {correction!r}; choose one of: {', '.join(map(repr, CORRECTIONS))}")


def _check_dtype(dtype) -> None:
    if dtype not in (None, torch.float32, torch.float64):
        raise TlprobeError(f"dtype must be torch.float32 or torch.float64 (or None), got {dtype}")


def resolve_bins(x: Float[torch.Tensor, "... samples variables"], bins: int | BinRule = 10) -> int:
    """The number of bins a call uses: ``bins`` itself, or a rule computed from the data.

    Rules use numpy's bin widths (``numpy.histogram_bin_edges``) per variable,
    ``count = ceil((max - min) / width)``: ``"sqrt"`` (width ``range / sqrt(n)``), ``"scott"``
    (``(24 sqrt(pi) / n)**(1/3) * std``) and ``"fd"`` (Freedman-Diaconis, ``2 IQR n**(-1/3)``).
    A pairwise matrix needs one count per call: the lower median of the per-variable counts
    over all variables (and leading indices), at least 2. Variables where the width is 0
    (constant, or zero IQR for ``"fd"``) are left out of the median.

    Args:
        x: ``[..., samples, variables]``.
        bins: an integer >= 2, or one of ``"sqrt"``, ``"scott"``, ``"fd"``.

    Raises:
        TlprobeError: bins < 2, an unknown rule, or a rule undefined for every variable.

    Example:
        >>> x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
        >>> resolve_bins(x, "sqrt"), resolve_bins(x, 7)
        (10, 7)
    """
    if not isinstance(bins, str):
        try:
            k = as_int(bins, "bins")
        except TlprobeError:
            raise TlprobeError(f"bins must be an integer >= 2 or one of {BIN_RULES}, got {bins!r}") from None
        if k < 2:
            raise TlprobeError(f"bins must be >= 2 (one bin carries no information), got {k}")
        return k
    check_choice(bins, BIN_RULES, "bin rule")
    x = as_tensor(x, "x").double()
    n = x.shape[-2]
    rng = x.amax(-2) - x.amin(-2)
    if bins == "sqrt":
        width = rng / math.sqrt(n)
    elif bins == "scott":
        width = (24.0 * math.pi**0.5 / n) ** (1.0 / 3.0) * x.std(-2, correction=0)
    else:
        q = torch.quantile(x.mT.reshape(-1, n), torch.tensor([0.75, 0.25], dtype=x.dtype, device=x.device), dim=1)
        width = (2.0 * (q[0] - q[1]) * n ** (-1.0 / 3.0)).reshape(rng.shape)
    valid = width > 0
    if not bool(valid.any()):
        raise TlprobeError(
            f"the {bins!r} bin rule is undefined here: every variable has zero width "
            "(constant values, or zero inter-quartile range for 'fd'); pass an integer bins"
        )
    counts = torch.ceil(rng[valid] / width[valid])
    return max(2, int(counts.median()))


def bin_labels(
    x: Float[torch.Tensor, "... samples variables"], *, bins: int | BinRule = 10
) -> Int[torch.Tensor, "... samples variables"]:
    """Equal-width bin index of every value, each variable binned over its own min..max.

    Identical to the bins of ``numpy.histogram2d(a, b, bins)`` (edges
    ``linspace(min, max, bins + 1)``, the maximum in the last bin), computed in float64.
    A constant variable gets label 0 everywhere.

    Args:
        x: ``[..., samples, variables]``.
        bins: integer >= 2 or a rule (see :func:`resolve_bins`).

    Returns:
        ``[..., samples, variables]`` integer labels in ``0 .. bins - 1``.

    Example:
        >>> bin_labels(torch.tensor([[0.0], [0.4], [0.5], [1.0]]), bins=2).flatten().tolist()
        [0, 0, 1, 1]
    """
    x = _prepare(x, "x", "[..., samples, variables]", min_samples=1)
    k = resolve_bins(x, bins)
    need = math.prod(x.shape[:-2]) * x.shape[-1] * (3 * x.shape[-2] + k + 1) * 8
    check_memory(need, f"binning with bins={k}", "lower bins", device=x.device)
    return _labels(x, k)


def _labels(x: torch.Tensor, k: int) -> torch.Tensor:
    xd = x.double().mT.contiguous()  # [..., variables, samples]
    lo = xd.amin(-1, keepdim=True)
    hi = xd.amax(-1, keepdim=True)
    step = (hi - lo) / k
    # numpy.linspace: arange * step + start, last edge set to stop exactly.
    edges = torch.arange(k + 1, dtype=torch.float64, device=x.device) * step + lo
    edges[..., -1:] = hi
    lab = torch.searchsorted(edges, xd, right=True) - 1
    lab = torch.where(xd == hi, k - 1, lab).clamp_(0, k - 1)
    return lab.mT


@lru_cache(maxsize=1)
def _cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - depends on the build
        return False


def _count_dtype(n: int, device: torch.device) -> torch.dtype:
    """Dtype of the one-hot matmul. Counts are integers <= n, and every partial sum too, so
    bfloat16 (integers <= 256 exact) and float32 (< 2**24) give exact counts."""
    if n <= 256 and (device.type == "cuda" or (device.type == "cpu" and _cpu_bf16())):
        return torch.bfloat16
    return torch.float32 if n < (1 << 24) else torch.float64


def _onehot(lab: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, n, V] labels -> [B, n, V * k] one-hot (variable-major)."""
    B, n, V = lab.shape
    offs = torch.arange(V, device=lab.device) * k
    return torch.zeros(B, n, V * k, dtype=dtype, device=lab.device).scatter_(2, lab + offs, 1)


def _marginal(lab: torch.Tensor, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """sum c log c and number of occupied bins per variable: [B, V] each."""
    B, n, V = lab.shape
    c = torch.zeros(B, V, k, dtype=dtype, device=lab.device)
    c.scatter_add_(2, lab.mT, torch.ones(B, V, n, dtype=dtype, device=lab.device))
    return torch.xlogy(c, c).sum(-1), (c > 0).sum(-1).to(dtype)


def _plan(B: int, V_rows: int, V_cols: int, k: int, chunk_size: int | None) -> tuple[int, int, int]:
    """Tiles of the joint-histogram matrix: (leading indices, row variables, column variables).

    A tile holds about ``_BLOCK_ELEMENTS`` cells; rows (about 256 histogram rows) are large
    enough for an efficient matrix product, columns fill the rest of the budget.
    """
    if chunk_size is not None:
        rows = min(_count(chunk_size, "chunk_size (variables per block)"), V_rows)
    else:
        rows = min(V_rows, max(1, 256 // k))
    cols = min(V_cols, max(1, _BLOCK_ELEMENTS // (rows * k * k)))
    whole = rows == V_rows and cols == V_cols
    groups = max(1, min(B, _BLOCK_ELEMENTS // (V_rows * V_cols * k * k))) if whole else 1
    return groups, rows, cols


def mi_working_bytes(
    lead: int,
    n: int,
    v_rows: int,
    v_cols: int | None = None,
    *,
    bins: int,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> int:
    """Bytes the histogram MI of one call allocates at its peak, estimated before any allocation.

    Counts the bin labels and edges, the one-hot bin codes (``samples x variables x bins``),
    the marginal histograms, the reused buffers of one tile of joint histograms (at least
    ``bins**2`` cells: one pair's joint histogram, whatever ``chunk_size``) and the output. Every
    MI entry point checks it against the free memory (:func:`tlprobe.checks.check_memory`) and
    refuses before allocating; recipes call it to name their own option in the refusal.

    Args:
        lead: leading indices batched together (layers x heads, shuffles x pairs).
        n: samples per variable.
        v_rows: variables of ``x``.
        v_cols: variables of ``y`` (:func:`cross_mi`); ``None`` for the pairwise case.
        bins: bins per variable (an integer: resolve a rule with :func:`resolve_bins` first).
        chunk_size, dtype: as :func:`pairwise_mi`.
        device: where the work runs (sets the dtype of the counts).

    Returns:
        The estimate in bytes.

    Example:
        >>> mi_working_bytes(7, 115, 384, bins=10) < 2**30
        True
        >>> mi_working_bytes(1, 115, 384, bins=100_000_000) > 2**50  # one joint histogram: 1e16 cells
        True
    """
    lead, n, v_rows = _count(lead, "lead"), _count(n, "n"), _count(v_rows, "v_rows")
    sym = v_cols is None
    v_cols = v_rows if v_cols is None else _count(v_cols, "v_cols")
    k = _count(bins, "bins", minimum=2)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cdt = _count_dtype(n, dev)
    cb, db = cdt.itemsize, dtype.itemsize
    n_vars = v_rows + (0 if sym else v_cols)
    labels = lead * n * n_vars * 8 * 3 + lead * n_vars * (k + 1) * 8  # float64 copy, ids, labels; edges
    onehot = lead * n * k * cb * (2 * v_rows + (0 if sym else v_cols))  # scatter target + transposed copy
    marginals = lead * n_vars * (k + n) * 8
    groups, rows, cols = _plan(lead, v_rows, v_cols, k, chunk_size)
    cells = groups * rows * k * cols * k
    tile = cells * (cb + db + (0 if cdt == dtype else db))
    out = lead * v_rows * v_cols * db * (3 if sym else 1)  # the mirrored copy of the symmetric case
    return labels + onehot + marginals + tile + out


def _check_mi_memory(lead: int, n: int, v_rows: int, v_cols: int | None, k: int, chunk_size, dtype, device) -> None:
    need = mi_working_bytes(lead, n, v_rows, v_cols, bins=k, chunk_size=chunk_size, dtype=dtype, device=device)
    check_memory(
        need,
        f"histogram MI with bins={k} ({n} samples, {v_rows} x {v_rows if v_cols is None else v_cols} variables, "
        f"{lead} leading indices; one joint histogram is {k}^2 cells)",
        "lower bins, or pass fewer samples or variables per call",
        device=device,
    )


def _mi_labels(
    lab_r: torch.Tensor,
    lab_c: torch.Tensor | None,
    k: int,
    correction: str | None,
    dtype: torch.dtype,
    chunk_size: int | None,
) -> torch.Tensor:
    """MI between every row variable and every column variable, from labels [B, n, V].

    ``lab_c=None``: the symmetric pairwise case (tiles on or above the diagonal only, mirrored).
    """
    B, n, Vr = lab_r.shape
    sym = lab_c is None
    Vc = Vr if sym else lab_c.shape[-1]
    dev = lab_r.device
    cdt = _count_dtype(n, dev)
    oh_r = _onehot(lab_r, k, cdt).mT.contiguous()  # [B, Vr*k, n]
    oh_c = oh_r.mT if sym else _onehot(lab_c, k, cdt)  # [B, n, Vc*k]
    Sr, mr = _marginal(lab_r, k, torch.float64)
    Sc, mc = (Sr, mr) if sym else _marginal(lab_c, k, torch.float64)
    mm = correction == "miller-madow"
    log_n = math.log(n)
    ones = torch.ones(k, dtype=dtype, device=dev)
    out = torch.empty(B, Vr, Vc, dtype=dtype, device=dev)
    G, R, C = _plan(B, Vr, Vc, k, chunk_size)
    # Reused flat buffers: fresh multi-MB tensors per tile cost page faults on a CPU.
    cells = G * R * k * C * k
    buf_joint = torch.empty(cells, dtype=cdt, device=dev)
    buf_f = buf_joint if cdt == dtype else torch.empty(cells, dtype=dtype, device=dev)
    buf_h = torch.empty(cells, dtype=dtype, device=dev)
    for g0 in range(0, B, G):
        g = slice(g0, min(g0 + G, B))
        for a in range(0, Vr, R):
            b = min(a + R, Vr)
            for c0 in range(a if sym else 0, Vc, C):
                c1 = min(c0 + C, Vc)
                size = (g.stop - g0, (b - a) * k, (c1 - c0) * k)
                ncell = size[0] * size[1] * size[2]
                # all joint histograms of the tile, exact integer counts: [G, r*k, c*k]
                joint = torch.bmm(oh_r[g, a * k : b * k], oh_c[g, :, c0 * k : c1 * k], out=buf_joint[:ncell].view(size))
                f = joint if cdt == dtype else buf_f[:ncell].view(size).copy_(joint)
                h = torch.clamp(f, min=1, out=buf_h[:ncell].view(size))
                h.sub_(1).log1p_().mul_(f)  # c log c (0 for c in {0, 1}); log1p is the fast log here
                shape = (size[0], b - a, k, c1 - c0)  # [G, r, row bin, c] once column bins are summed
                S = torch.mv(h.view(-1, k), ones).view(shape).sum(2).double()
                mi = (S - Sr[g, a:b, None] - Sc[g, None, c0:c1]).div_(n).add_(log_n).clamp_min_(0)
                if mm:
                    occupied = torch.clamp(f, max=1, out=h)  # counts are integers: 1 where c >= 1
                    occ = torch.mv(occupied.view(-1, k), ones).view(shape).sum(2).double()
                    mi += (mr[g, a:b, None] + mc[g, None, c0:c1] - occ - 1) / (2 * n)
                out[g, a:b, c0:c1] = mi.to(dtype)
    if sym:
        out = out.triu() + out.triu(1).mT
    return out


def _setup(x, name: str, bins: int | BinRule, correction: Correction | None, dtype: torch.dtype | None):
    x = _prepare(x, name, "[..., samples, variables]")
    _check_correction(correction)
    _check_dtype(dtype)
    k = resolve_bins(x, bins)
    return x, k, dtype or x.dtype


def pairwise_mi(
    x: Float[torch.Tensor, "... samples variables"],
    *,
    bins: int | BinRule = 10,
    correction: Correction | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> Float[torch.Tensor, "... variables variables"]:
    """Mutual information (nats) between every pair of variables, across samples.

    Plug-in histogram estimator ``I = sum p(x,y) log(p(x,y) / (p(x) p(y)))`` on equal-width bins
    per variable (:func:`bin_labels`). All joint histograms of a block of variables come from one
    matrix product of one-hot bin codes (``onehot.T @ onehot``, exact integer counts); the upper
    triangle is computed once and mirrored. Tiles of about a million histogram cells bound the
    working memory (besides the ``samples x variables x bins`` one-hot and the output). Counts
    are exact: the product runs in bfloat16 for up to 256 samples where the CPU supports it
    (integers <= 256 are exact there), else float32.
    Leading dimensions (layers, heads) are batched; runs on ``x``'s device.

    Args:
        x: ``[..., samples, variables]``, e.g. ``[layers, tokens, d_model]`` for MI between
            hidden dimensions across tokens (for MI between tokens use :func:`token_mi`).
        bins: integer >= 2, or ``"sqrt"``, ``"scott"``, ``"fd"`` (one count per call, see
            :func:`resolve_bins`).
        correction: ``None`` (raw plug-in, >= 0, biased upward with few samples) or
            ``"miller-madow"`` (adds ``(m_x + m_y - m_xy - 1) / (2 n)``, ``m`` = occupied bins;
            can be slightly negative). For a shuffle null use :func:`mi_null`.
        chunk_size: row variables per tile (default: about 256 // bins); columns fill a tile
            of about a million histogram cells.
        dtype: precision of the entropies, ``torch.float32`` (fast, about 1e-7 nats) or
            ``torch.float64`` (exact to rounding); default ``x``'s dtype after upcasting.

    Returns:
        ``[..., variables, variables]``, symmetric; the diagonal is each variable's entropy
        (Miller-Madow-corrected entropy with the correction). Constant variables have entropy
        0 and MI 0.

    Raises:
        TlprobeError: fewer than 2 samples, NaN/inf, bins < 2, unknown rule or correction.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(200, 1, generator=g)
        >>> m = pairwise_mi(torch.cat([x, x**2, torch.rand(200, 1, generator=g)], 1), bins=4)
        >>> m.round(decimals=2)  # x, x**2, independent noise; diagonal = entropies
        tensor([[1.3800, 0.9400, 0.0100],
                [0.9400, 1.1700, 0.0200],
                [0.0100, 0.0200, 1.3800]])
    """
    x, k, dtype = _setup(x, "x", bins, correction, dtype)
    lead, n, V = x.shape[:-2], x.shape[-2], x.shape[-1]
    _check_mi_memory(math.prod(lead), n, V, None, k, chunk_size, dtype, x.device)
    lab = _labels(x, k).reshape(-1, n, V)
    return _mi_labels(lab, None, k, correction, dtype, chunk_size).reshape(*lead, V, V)


def token_mi(
    h: Float[torch.Tensor, "... tokens dims"],
    *,
    bins: int | BinRule = 10,
    correction: Correction | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> Float[torch.Tensor, "... tokens tokens"]:
    """MI between every pair of tokens, using the hidden dimensions as samples.

    The token-by-token slicing of L09/L11: ``pairwise_mi(h.mT)``; each token's vector is binned
    over its own min..max. Same arguments as :func:`pairwise_mi`.

    Example:
        >>> h = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
        >>> token_mi(h, bins=4).shape
        torch.Size([5, 5])
    """
    h = as_tensor(h, "h")
    check_ndim(h, "h", 2, "[..., tokens, dims]")
    return pairwise_mi(h.mT, bins=bins, correction=correction, chunk_size=chunk_size, dtype=dtype)


def cross_mi(
    x: Float[torch.Tensor, "... samples vx"],
    y: Float[torch.Tensor, "... samples vy"],
    *,
    bins: int | BinRule = 10,
    correction: Correction | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> Float[torch.Tensor, "... vx vy"]:
    """MI between every variable of ``x`` and every variable of ``y`` (same samples).

    Leading dimensions broadcast. A bin rule is computed over the variables of ``x`` and ``y``
    together. Otherwise as :func:`pairwise_mi`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(300, 2, generator=g)
        >>> cross_mi(x, x[:, :1] * 3 + 1, bins=5).squeeze(-1).round(decimals=3)
        tensor([1.5990, 0.0350])
    """
    x = _prepare(x, "x", "[..., samples, vx]")
    y = _prepare(y, "y", "[..., samples, vy]")
    if x.shape[-2] != y.shape[-2]:
        raise TlprobeError(f"x has {x.shape[-2]} samples and y {y.shape[-2]}; pair the same samples")
    try:
        lead = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    except RuntimeError as exc:
        raise TlprobeError(f"leading dimensions of x {tuple(x.shape)} and y {tuple(y.shape)} do not broadcast") from exc
    _check_correction(correction)
    _check_dtype(dtype)
    dtype = dtype or torch.promote_types(x.dtype, y.dtype)
    n = x.shape[-2]
    x = x.expand(*lead, n, x.shape[-1])
    y = y.expand(*lead, n, y.shape[-1]).to(x.device)
    k = resolve_bins(torch.cat([x.double(), y.double()], -1), bins)
    _check_mi_memory(math.prod(lead), n, x.shape[-1], y.shape[-1], k, chunk_size, dtype, x.device)
    lx = _labels(x, k).reshape(-1, n, x.shape[-1])
    ly = _labels(y, k).reshape(-1, n, y.shape[-1])
    return _mi_labels(lx, ly, k, correction, dtype, chunk_size).reshape(*lead, x.shape[-1], y.shape[-1])


def entropy(
    x: Float[torch.Tensor, "... samples variables"],
    *,
    bins: int | BinRule = 10,
    correction: Correction | None = None,
    dtype: torch.dtype | None = None,
) -> Float[torch.Tensor, "... variables"]:
    """Plug-in entropy (nats) of each variable, on the same bins as :func:`pairwise_mi`.

    Equals the diagonal of :func:`pairwise_mi`; ``correction="miller-madow"`` adds ``(m - 1) / (2 n)``.

    Example:
        >>> entropy(torch.tensor([[0.0], [1.0], [2.0], [3.0]]), bins=2)
        tensor([0.6931])
    """
    x, k, dtype = _setup(x, "x", bins, correction, dtype)
    lead, n, V = x.shape[:-2], x.shape[-2], x.shape[-1]
    need = math.prod(lead) * V * (4 * n + 2 * k + 1) * 8  # labels and edges, then the marginals
    check_memory(need, f"computing the entropies with bins={k}", "lower bins", device=x.device)
    S, m = _marginal(_labels(x, k).reshape(-1, n, V), k, torch.float64)
    h = math.log(n) - S / n
    if correction == "miller-madow":
        h = h + (m - 1) / (2 * n)
    return h.to(dtype).reshape(*lead, V)


def mi(
    x: Float[torch.Tensor, "... samples"],
    y: Float[torch.Tensor, "... samples"],
    *,
    bins: int | BinRule = 10,
    correction: Correction | None = None,
    dtype: torch.dtype | None = None,
) -> Float[torch.Tensor, "..."]:
    """MI (nats) between two variables (leading dimensions batched), as :func:`cross_mi`.

    Import it from this module: ``tlprobe.analyses`` does not re-export it, because a package
    attribute ``mi`` would shadow the ``tlprobe.analyses.mi`` module.

    Example:
        >>> x = torch.tensor([0.0, 1.0, 2.0, 3.0])
        >>> mi(x, -x, bins=2), mi(x, torch.tensor([0.0, 1.0, 0.0, 1.0]), bins=2)
        (tensor(0.6931), tensor(0.))
    """
    x, y = as_tensor(x, "x"), as_tensor(y, "y")
    check_ndim(x, "x", 1, "[..., samples]")
    check_ndim(y, "y", 1, "[..., samples]")
    return cross_mi(x[..., None], y[..., None], bins=bins, correction=correction, dtype=dtype)[..., 0, 0]


def _upper(m: torch.Tensor) -> torch.Tensor:
    """The strict upper triangle of ``[..., V, V]`` matrices: ``[..., pairs]``, each pair once."""
    i, j = torch.triu_indices(m.shape[-1], m.shape[-1], 1, device=m.device)
    return m[..., i, j]


@dataclass(frozen=True, eq=False)
class MIResult(Result):
    """Pairwise MI with a bias estimate.

    Attributes:
        raw: ``[..., V, V]`` plug-in MI (diagonal: entropy).
        corrected: ``[..., V, V]`` bias-corrected MI (``raw - null_mean`` for the shuffle null);
            its diagonal is 0 for the shuffle null (a shuffled variable is still itself).
        null_mean: ``[..., V, V]`` mean MI over shuffles (``None`` for Miller-Madow).
        null_std: ``[..., V, V]`` standard deviation over shuffles (``None`` for Miller-Madow).
        bins: bins used.
        method: ``"shuffle"``, ``"miller-madow"`` or ``"permutation"`` (the exact permutation null of
            :class:`tlprobe.analyses.mi_counts.MICounts`).
        n_samples: samples per variable.
        n_shuffles: shuffles drawn (0 for Miller-Madow).
        seed: the shuffle seed.
        axes: labels of the leading axes (e.g. ``{"layer": ("embed", "block 0", ...)}``).
    """

    raw: Float[torch.Tensor, "... v v"]
    corrected: Float[torch.Tensor, "... v v"]
    null_mean: Float[torch.Tensor, "... v v"] | None
    null_std: Float[torch.Tensor, "... v v"] | None
    bins: int
    method: Literal["shuffle", "miller-madow", "permutation"]
    n_samples: int
    n_shuffles: int = 0
    seed: int | None = None

    def upper(
        self, which: Literal["raw", "corrected", "null_mean", "null_std"] = "corrected"
    ) -> Float[torch.Tensor, "... pairs"]:
        """The strict upper triangle (each pair once) of ``raw``, ``corrected``, ``null_mean`` or ``null_std``."""
        check_choice(which, ("raw", "corrected", "null_mean", "null_std"), "field")
        m = getattr(self, which)
        if m is None:
            raise TlprobeError(f"this result has no {which} (method {self.method!r}); use mi_null for a shuffle null")
        return _upper(m)

    def rows(self) -> list[dict]:
        """One row per leading index (e.g. layer): the mean raw, null and corrected MI over all pairs."""
        fields = {"raw_mean": self.raw, "null_mean": self.null_mean, "corrected_mean": self.corrected}
        upper = {k: _upper(v) for k, v in fields.items() if v is not None}
        return [
            {**labels, **{k: float(v[idx].mean()) for k, v in upper.items()}}
            for labels, idx in index_rows(self.axes, self.raw.shape[:-2])
        ]


def mi_null(
    x: Float[torch.Tensor, "... samples variables"],
    *,
    n_shuffles: int = 10,
    seed: int = 0,
    bins: int | BinRule = 10,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> MIResult:
    """Pairwise MI corrected by a shuffle null.

    Each shuffle permutes every variable's samples separately (seeded, drawn on the CPU, so
    results do not depend on the device): the marginals and the bins stay the same, dependence
    is destroyed, so the MI of shuffled data is the estimator's bias at this sample size and
    binning. ``corrected = raw - mean over shuffles``.

    Args:
        x: ``[..., samples, variables]``.
        n_shuffles: number of shuffles (>= 1; the null mean's noise falls as 1/sqrt of it).
        seed: the same seed gives the same shuffles.
        bins, chunk_size, dtype: as :func:`pairwise_mi`.
        axes: labels of the leading axes (axis name -> one label per index), kept in the result.

    Returns:
        An :class:`MIResult` with ``method="shuffle"``.

    Raises:
        TlprobeError: ``n_shuffles < 1``, or an input :func:`pairwise_mi` refuses.

    Example:
        >>> x = torch.rand(94, 4, generator=torch.Generator().manual_seed(0))
        >>> r = mi_null(x, n_shuffles=20, seed=0)
        >>> bool(r.upper("raw").mean() > 0.3), bool(r.upper("corrected").abs().mean() < 0.1)
        (True, True)
    """
    x, k, dtype = _setup(x, "x", bins, None, dtype)
    n_shuffles = _count(n_shuffles, "n_shuffles")
    lead, n, V = x.shape[:-2], x.shape[-2], x.shape[-1]
    _check_mi_memory(math.prod(lead), n, V, None, k, chunk_size, dtype, x.device)
    lab = _labels(x, k).reshape(-1, n, V)
    raw = _mi_labels(lab, None, k, None, dtype, chunk_size)
    seed = as_int(seed, "seed")
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(raw, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for _ in range(n_shuffles):
        s = int(torch.randint(0, 2**62, (1,), generator=gen))
        null = _mi_labels(shuffle_values(lab, "within-feature", seed=s), None, k, None, dtype, chunk_size).double()
        total += null
        total_sq += null * null
    mean = total / n_shuffles
    std = (total_sq / n_shuffles - mean * mean).clamp_min(0).sqrt()
    shape = (*lead, V, V)
    return MIResult(
        raw=raw.reshape(shape),
        corrected=(raw - mean).to(dtype).reshape(shape),
        null_mean=mean.to(dtype).reshape(shape),
        null_std=std.to(dtype).reshape(shape),
        bins=k,
        method="shuffle",
        n_samples=n,
        n_shuffles=n_shuffles,
        seed=seed,
        axes=axes or {},
    )


def miller_madow(
    x: Float[torch.Tensor, "... samples variables"],
    *,
    bins: int | BinRule = 10,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> MIResult:
    """Pairwise MI with the Miller-Madow correction, packaged like :func:`mi_null`.

    Args:
        x: ``[..., samples, variables]``.
        bins, chunk_size, dtype: as :func:`pairwise_mi`.
        axes: labels of the leading axes (axis name -> one label per index), kept in the result.

    Returns:
        An :class:`MIResult` with ``method="miller-madow"`` (no null: ``null_mean`` is ``None``).

    Example:
        >>> x = torch.rand(94, 4, generator=torch.Generator().manual_seed(0))
        >>> r = miller_madow(x)
        >>> bool(r.upper("corrected").mean() < r.upper("raw").mean())
        True
    """
    x, k, dtype = _setup(x, "x", bins, None, dtype)
    lead, n, V = x.shape[:-2], x.shape[-2], x.shape[-1]
    _check_mi_memory(math.prod(lead), n, V, None, k, chunk_size, dtype, x.device)
    lab = _labels(x, k).reshape(-1, n, V)
    raw = _mi_labels(lab, None, k, None, dtype, chunk_size).reshape(*lead, V, V)
    cor = _mi_labels(lab, None, k, "miller-madow", dtype, chunk_size).reshape(*lead, V, V)
    return MIResult(
        raw=raw,
        corrected=cor,
        null_mean=None,
        null_std=None,
        bins=k,
        method="miller-madow",
        n_samples=n,
        axes=axes or {},
    )


def copnorm(x: Float[torch.Tensor, "... samples variables"]) -> Float[torch.Tensor, "... samples variables"]:
    """Copula normalisation: each variable's ranks mapped to a standard normal.

    ``ndtri(rank / (n + 1))`` per variable, ranks 1..n along the samples axis; tied values get
    their average rank (as ``scipy.stats.rankdata``), so ties never create spurious order.

    Example:
        >>> copnorm(torch.tensor([[3.0], [1.0], [2.0]])).flatten().round(decimals=4)
        tensor([ 0.6745, -0.6745,  0.0000], dtype=torch.float64)
    """
    x = as_tensor(x, "x")
    check_ndim(x, "x", 2, "[..., samples, variables]")
    n = x.shape[-2]
    v, order = x.double().sort(dim=-2, stable=True)
    idx = torch.arange(n, device=x.device, dtype=torch.float64).view(n, 1).expand_as(v)
    edge = torch.ones_like(v[..., :1, :], dtype=torch.bool)
    diff = v[..., 1:, :] != v[..., :-1, :]
    start = torch.cat([edge, diff], -2)
    stop = torch.cat([diff, edge], -2)
    first = torch.where(start, idx, 0.0).cummax(-2).values
    last = torch.where(stop, idx, float(n - 1)).flip(-2).cummin(-2).values.flip(-2)
    ranks = torch.empty_like(v).scatter_(-2, order, (first + last) / 2 + 1)
    return torch.special.ndtri(ranks / (n + 1))


def _check_not_constant(x: torch.Tensor, name: str) -> None:
    const = x.amax(-2) == x.amin(-2)
    if bool(const.any()):
        bad = const.flatten().nonzero().flatten()[:5].remainder(x.shape[-1]).tolist()
        raise TlprobeError(
            f"{int(const.sum())} variable(s) of {name} are constant across samples (e.g. variable(s) {bad}); "
            "Gaussian-copula MI is undefined for them (no ranks). Drop those variables, or use "
            "pairwise_mi, whose plug-in value for a constant variable is 0"
        )


def gcmi(
    x: Float[torch.Tensor, "... samples vx"],
    y: Float[torch.Tensor, "... samples vy"] | None = None,
) -> Float[torch.Tensor, "... vx vy"]:
    """Gaussian-copula MI (nats): pairwise over ``x``'s variables, or ``x`` vs ``y``.

    Each variable is copula-normalised (:func:`copnorm`), then the MI of a bivariate Gaussian
    with correlation ``r`` is ``-0.5 log(1 - r**2)``, for all pairs at once from one
    correlation matrix (:func:`tlprobe.analyses.similarity.feature_similarity`). No bias
    correction is applied (frites' ``biascorrect=False``). Monotonic transforms of a variable
    leave it unchanged. See the module docstring for when to prefer it.

    Args:
        x: ``[..., samples, vx]``.
        y: optional ``[..., samples, vy]`` (same samples, same leading shape).

    Returns:
        ``[..., vx, vx]`` (diagonal ``inf``: a continuous variable has infinite MI with itself)
        or ``[..., vx, vy]``; float64.

    Raises:
        TlprobeError: fewer than 3 samples, NaN/inf, or a constant variable.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(20000, 2, dtype=torch.float64, generator=g)
        >>> x = torch.stack([z[:, 0], 0.6 * z[:, 0] + 0.8 * z[:, 1]], 1)
        >>> abs(float(gcmi(x)[0, 1]) + 0.5 * math.log(1 - 0.6**2)) < 0.01  # closed form for rho = 0.6
        True
    """
    x = _prepare(x, "x", "[..., samples, variables]", min_samples=3)
    _check_not_constant(x, "x")
    if y is None:
        r = feature_similarity(copnorm(x), "correlation")
        out = -0.5 * torch.log1p(-r * r)
        return out.diagonal_scatter(
            torch.full(out.shape[:-1], math.inf, dtype=out.dtype, device=out.device), dim1=-2, dim2=-1
        )
    y = _prepare(y, "y", "[..., samples, variables]", min_samples=3)
    _check_not_constant(y, "y")
    if x.shape[:-1] != y.shape[:-1]:
        raise TlprobeError(
            f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same leading and sample dimensions"
        )
    vx = x.shape[-1]
    r = feature_similarity(copnorm(torch.cat([x.double(), y.double().to(x.device)], -1)), "correlation")
    r = r[..., :vx, vx:]
    return -0.5 * torch.log1p(-r * r)


@dataclass(frozen=True, eq=False)
class MIHistograms(Result):
    """Histograms of the pairwise values of MI matrices (strict upper triangle: each pair once).

    One histogram per leading index of the matrices (e.g. per layer), all on the same bins so
    that overlays line up.

    Attributes:
        edges: ``[bins + 1]`` bin edges, shared by every histogram.
        prob: ``[..., bins]`` fraction of the pairs in each bin (sums to 1).
        density: ``[..., bins]`` probability density (``prob`` over the bin width; integrates to 1).
        mean, median, std: ``[...]`` over the pairs.
        n_pairs: pairs per histogram.
        quantity: what the values are, e.g. ``"MI (nats)"``.
        axes: labels of the leading axes (e.g. ``{"layer": ("embed", "block 0", ...)}``).
    """

    edges: Float[torch.Tensor, " edges"]
    prob: Float[torch.Tensor, "... bins"]
    density: Float[torch.Tensor, "... bins"]
    mean: Float[torch.Tensor, "..."]
    median: Float[torch.Tensor, "..."]
    std: Float[torch.Tensor, "..."]
    n_pairs: int
    quantity: str = "MI (nats)"

    @property
    def centers(self) -> Float[torch.Tensor, " bins"]:
        """Bin centres."""
        return (self.edges[1:] + self.edges[:-1]) / 2

    @property
    def series(self) -> tuple[str, ...]:
        """One name per histogram (leading indices flattened in row-major order): the labels of
        its leading axes joined by a space (the index where an axis has no labels)."""
        return tuple(" ".join(labels.values()) for labels, _ in index_rows(self.axes, self.mean.shape))

    def rows(self) -> list[dict]:
        """One row per histogram: its labels, ``n_pairs``, ``mean``, ``median``, ``std``."""
        return [
            {
                **labels,
                "n_pairs": self.n_pairs,
                "mean": float(self.mean[idx]),
                "median": float(self.median[idx]),
                "std": float(self.std[idx]),
            }
            for labels, idx in index_rows(self.axes, self.mean.shape)
        ]


def mi_histograms(
    mats: Float[torch.Tensor, "... v v"],
    *,
    bins: int = 60,
    value_range: tuple[float, float] | None = None,
    quantity: str = "MI (nats)",
    axes: Mapping[str, Sequence[str]] | None = None,
) -> MIHistograms:
    """Histogram the pairwise values (strict upper triangle) of each matrix, on shared bins.

    One ``bincount`` for all matrices, no loop. For the L09 figure pass the per-layer matrices
    ``[layers, V, V]``; for raw vs null vs corrected stack them into ``[3, V, V]`` (or
    ``[3, layers, V, V]``: one histogram per leading index).

    Args:
        mats: ``[..., V, V]`` symmetric matrices (e.g. from :func:`pairwise_mi`).
        bins: number of equal-width bins.
        value_range: ``(low, high)``; default the min and max over all matrices. Values outside
            are counted in the first/last bin.
        quantity: label of the values.
        axes: labels of the leading axes (axis name -> one label per index), kept in the result.

    Returns:
        :class:`MIHistograms` with ``[..., bins]`` histograms and ``[...]`` statistics.

    Raises:
        TlprobeError: ``mats`` is not ``[..., V, V]`` with ``V >= 2``, holds NaN/inf off the
            diagonal, ``bins < 1``, or ``value_range`` is empty.

    Example:
        >>> m = torch.tensor([[[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]]])
        >>> h = mi_histograms(m, bins=2, value_range=(0.0, 1.0), axes={"layer": ["L0"]})
        >>> h.prob.tolist(), h.n_pairs, h.rows()[0]["layer"]
        ([[0.6666666666666666, 0.3333333333333333]], 3, 'L0')
    """
    mats = upcast(as_tensor(mats, "mats")).double()
    check_ndim(mats, "mats", 2, "[..., V, V]")
    V = mats.shape[-1]
    if mats.shape[-2] != V or V < 2:
        raise TlprobeError(f"mats has shape {tuple(mats.shape)}; expected [..., V, V] with V >= 2")
    bins = _count(bins, "bins")
    lead = mats.shape[:-2]
    s = math.prod(lead)
    # bincount, counts, probabilities and densities ([matrices, bins]), and the binned values
    need = s * bins * 8 * 5 + s * V * (V - 1) // 2 * 8 * 4
    check_memory(need, f"histogramming {s} matrices with bins={bins}", "lower bins", device=mats.device)
    vals = _upper(mats).reshape(-1, V * (V - 1) // 2)
    check_finite(vals, "mats (off-diagonal values)")
    if value_range is None:
        lo, hi = float(vals.min()), float(vals.max())
        hi = hi if hi > lo else lo + 1e-9
    else:
        lo, hi = as_float(value_range[0], "value_range low"), as_float(value_range[1], "value_range high")
        if hi <= lo:
            raise TlprobeError(f"value_range must be (low, high) with high > low, got {value_range}")
    idx = ((vals - lo) / (hi - lo) * bins).floor().long().clamp_(0, bins - 1)
    flat = torch.arange(s, device=vals.device)[:, None] * bins + idx
    counts = torch.bincount(flat.flatten(), minlength=s * bins).reshape(s, bins).double()
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    prob = (counts / vals.shape[1]).cpu()
    return MIHistograms(
        edges=edges,
        prob=prob.reshape(*lead, bins),
        density=(prob / (edges[1:] - edges[:-1])).reshape(*lead, bins),
        mean=vals.mean(1).cpu().reshape(lead),
        median=vals.median(1).values.cpu().reshape(lead),
        std=vals.std(1, correction=0).cpu().reshape(lead),
        n_pairs=int(vals.shape[1]),
        quantity=quantity,
        axes=axes or {},
    )


@dataclass(frozen=True, eq=False)
class Dependence(Result):
    """Linear and information measures of dependence for pairs ``(x, y)`` (L10).

    Every measure is ``[...]`` (one value per leading index of the input pairs).

    Attributes:
        covariance: unbiased covariance (signed, scale-dependent, linear only).
        correlation: Pearson correlation.
        mi_raw: plug-in histogram MI (nats), biased upward.
        mi_miller_madow: Miller-Madow-corrected MI.
        mi_null_mean: mean MI over the shuffles.
        mi_null_q95: 95th percentile of the shuffle MI (a significance threshold).
        mi_corrected: ``mi_raw - mi_null_mean``.
        covariance_squared: ``covariance ** 2`` (unsigned, U-shaped like MI in a correlation sweep).
        gcmi: Gaussian-copula MI (monotonic dependence only).
        bins, n_samples, n_shuffles, seed: settings.
        x, y: ``[..., samples]`` the pairs themselves (for scatter plots), or ``None`` (the
            default of :func:`dependence`, which keeps them only with ``keep_samples=True``).
        axes: labels of the leading axes (e.g. ``{"rho": ("0.90", ...)}``).
    """

    covariance: Float[torch.Tensor, "..."]
    correlation: Float[torch.Tensor, "..."]
    mi_raw: Float[torch.Tensor, "..."]
    mi_miller_madow: Float[torch.Tensor, "..."]
    mi_null_mean: Float[torch.Tensor, "..."]
    mi_null_q95: Float[torch.Tensor, "..."]
    mi_corrected: Float[torch.Tensor, "..."]
    covariance_squared: Float[torch.Tensor, "..."]
    gcmi: Float[torch.Tensor, "..."]
    bins: int
    n_samples: int
    n_shuffles: int
    seed: int
    x: Float[torch.Tensor, "... samples"] | None = None
    y: Float[torch.Tensor, "... samples"] | None = None


def dependence_bytes(lead: int, n: int, *, bins: int, n_shuffles: int, device: torch.device | str | None = None) -> int:
    """Bytes :func:`dependence` allocates at its peak for ``lead`` pairs of ``n`` samples.

    The shuffle null is batched: ``n_shuffles x lead`` permutations of ``n`` samples and their
    histogram MI (:func:`mi_working_bytes`), besides the pairs themselves.

    Example:
        >>> dependence_bytes(19, 1000, bins=10, n_shuffles=100) < 2**30
        True
    """
    lead, n = _count(lead, "lead"), _count(n, "n")
    n_shuffles = _count(n_shuffles, "n_shuffles")
    pairs = lead * n * 2 * 8 * 6  # stacked, prepared and float64 copies, labels
    # per shuffled pair: the random keys (float32), the permutation, the gathered and stacked labels
    perms = n_shuffles * lead * n * (4 + 8 + 8 + 16)
    null = mi_working_bytes(n_shuffles * lead, n, 2, bins=bins, dtype=torch.float64, device=device)
    return pairs + perms + null


def dependence(
    x: Float[torch.Tensor, "... samples"],
    y: Float[torch.Tensor, "... samples"],
    *,
    bins: int | BinRule = 10,
    n_shuffles: int = 100,
    seed: int = 0,
    keep_samples: bool = False,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> Dependence:
    """Covariance, correlation and MI (raw, Miller-Madow, shuffle-corrected, GCMI) of pairs.

    Batched over leading dimensions (e.g. one pair per correlation value of a sweep): covariance
    and correlation come from :func:`tlprobe.analyses.similarity.feature_similarity`, MI from
    :func:`pairwise_mi` / :func:`mi_null` / :func:`gcmi`, so the numbers line up with the
    pairwise matrices. The shuffle null permutes ``y`` only (enough for one pair).

    Args:
        x, y: ``[..., samples]`` paired samples.
        bins: as :func:`pairwise_mi`.
        n_shuffles: shuffles for the null (>= 1).
        seed: seed of the shuffles.
        keep_samples: keep ``x`` and ``y`` in the result (for a scatter plot of each pair).
        axes: labels of the leading axes (axis name -> one label per index), kept in the result.

    Returns:
        :class:`Dependence` with one value per leading index.

    Raises:
        TlprobeError: ``x`` and ``y`` differ in shape, fewer than 3 samples, NaN/inf,
            ``n_shuffles < 1``, or a bad ``bins``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(500, generator=g, dtype=torch.float64) * 2 - 1
        >>> d = dependence(x, x**2, n_shuffles=20)
        >>> abs(float(d.correlation)) < 0.1, float(d.mi_corrected) > 0.5
        (True, True)
    """
    x, y = as_tensor(x, "x"), as_tensor(y, "y")
    check_ndim(x, "x", 1, "[..., samples]")
    check_ndim(y, "y", 1, "[..., samples]")
    if x.shape != y.shape:
        raise TlprobeError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")
    n_shuffles = _count(n_shuffles, "n_shuffles")
    seed = as_int(seed, "seed")
    xy = _prepare(torch.stack([x, y.to(x.device)], -1), "(x, y)", "[..., samples]", min_samples=3)
    xy = xy.double()
    n = xy.shape[-2]
    k = resolve_bins(xy, bins)
    check_memory(
        dependence_bytes(math.prod(xy.shape[:-2]), n, bins=k, n_shuffles=n_shuffles, device=xy.device),
        f"dependence with bins={k}, {n} samples and {n_shuffles} shuffles of {math.prod(xy.shape[:-2])} pair(s)",
        "lower bins or n_shuffles, or pass fewer samples per call",
        device=xy.device,
    )
    cov = feature_similarity(xy, "covariance")[..., 0, 1]
    cor = feature_similarity(xy, "correlation")[..., 0, 1]
    lead = xy.shape[:-2]
    lab = _labels(xy, k).reshape(-1, n, 2)
    raw = _mi_labels(lab, None, k, None, torch.float64, None)[:, 0, 1]
    mm = _mi_labels(lab, None, k, "miller-madow", torch.float64, None)[:, 0, 1]
    # Null: permute y's labels, all shuffles batched as leading indices.
    gen = torch.Generator().manual_seed(seed)
    perm = torch.rand(n_shuffles, lab.shape[0], n, generator=gen).argsort(-1).to(lab.device)
    ly = lab[..., 1].expand(n_shuffles, -1, -1).gather(-1, perm)
    lx = lab[..., 0].expand(n_shuffles, -1, -1)
    null = _mi_labels(torch.stack([lx, ly], -1).reshape(-1, n, 2), None, k, None, torch.float64, None)
    null = null[:, 0, 1].reshape(n_shuffles, -1)
    return Dependence(
        covariance=cov,
        correlation=cor,
        mi_raw=raw.reshape(lead),
        mi_miller_madow=mm.reshape(lead),
        mi_null_mean=null.mean(0).reshape(lead),
        mi_null_q95=null.quantile(0.95, dim=0).reshape(lead),
        mi_corrected=(raw - null.mean(0)).reshape(lead),
        covariance_squared=cov**2,
        gcmi=gcmi(xy)[..., 0, 1],
        bins=k,
        n_samples=n,
        n_shuffles=n_shuffles,
        seed=seed,
        x=x if keep_samples else None,
        y=y if keep_samples else None,
        axes=axes or {},
    )
