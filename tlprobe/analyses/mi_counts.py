"""Streaming histogram mutual information: joint counts on bin edges fixed beforehand.

:func:`~tlprobe.analyses.mi.pairwise_mi` bins every variable over its own min..max, which needs
all samples at once. Over a corpus the bin edges must be fixed **before** the counts start; then
the joint histogram of every pair of variables is a sum of integer counts, exact whatever the
batch split, the merge order or the number of processes. There are three ways to fix the edges:

* a first pass over the corpus with :class:`RangeAccumulator` (min and max per variable), then
  :meth:`RangeAccumulator.edges`: the edges of ``pairwise_mi`` over the whole corpus, so the
  second pass with :class:`MICounts` equals ``pairwise_mi(torch.cat(batches, -2), bins=k)``
  (to float64 rounding);
* a calibration sample: update the :class:`RangeAccumulator` with the first batches only. Later
  values beyond that range fall into the edge bins (first or last) and are counted in
  :attr:`MICounts.n_clipped`;
* ranges given by the user (e.g. a known activation range): :func:`edges_from_range`; values
  outside are clipped into the edge bins and counted likewise.

:class:`MICounts` keeps the joint counts of every pair ``i <= j`` (the upper half, in row tiles)
and gives the plug-in MI (raw or Miller-Madow, :meth:`MICounts.result`) and the **exact**
expectation of the plug-in MI under random permutation of the samples (:meth:`MICounts.null_mean`,
the "expected mutual information" of Vinh, Epps & Bailey 2010): the mean that
:func:`~tlprobe.analyses.mi.mi_null` estimates with shuffles, without shuffles and without the
samples. Everything is in nats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import torch
from jaxtyping import Float, Int

from tlprobe.analyses.mi import MIResult, _check_correction, _check_dtype
from tlprobe.analyses.streaming import Accumulator, State, _batch, _Float64Accumulator, _state_get
from tlprobe.checks import as_int, as_tensor, check_finite, check_memory, check_min_samples, check_ndim
from tlprobe.errors import TlprobeError

_F64 = torch.float64
#: The counts are int32: the total number of samples must stay below this.
MAX_SAMPLES = 2**31 - 1
#: Samples per one-hot product: float32 holds every integer count of a chunk exactly below 2**24.
_EXACT_F32 = 2**24 - 1
#: Target bytes of one chunk's one-hot codes in :meth:`MICounts.update`.
_ONEHOT_BYTES = 1 << 24
#: Target cells of one step of :meth:`MICounts.result` (float64 copies of the counts).
_RESULT_CELLS = 1 << 20
#: Target elements of one tile of the EMI window work (about 60 bytes each).
_EMI_ELEMENTS = 1 << 19
#: Largest table of distinct-count terms shared by all leading indices (else one per index).
_EMI_TABLE_BYTES = 1 << 24
#: The EMI window: mu +- (13 sigma + 32) holds all of the hypergeometric mass but < 1e-33.
_WINDOW_SIGMAS, _WINDOW_PAD = 13.0, 32.0


def _as_bins(bins) -> int:
    k = as_int(bins, "bins", fix="the number of bins per variable")
    if k < 2:
        raise TlprobeError(f"bins must be >= 2 (one bin carries no information), got {k}")
    return k


def _linspace_edges(lo: torch.Tensor, hi: torch.Tensor, k: int) -> torch.Tensor:
    """``numpy.linspace(lo, hi, k + 1)`` per variable, exactly as :func:`tlprobe.analyses.mi._labels`."""
    lo, hi = lo.unsqueeze(-1), hi.unsqueeze(-1)
    step = (hi - lo) / k
    edges = torch.arange(k + 1, dtype=_F64, device=lo.device) * step + lo
    edges[..., -1:] = hi
    return edges


class RangeAccumulator(_Float64Accumulator):
    """Per-variable min and max over a stream: the first pass that fixes histogram bin edges.

    State (float64, on the device of the first batch): ``lo`` and ``hi`` ``[..., V]``. A merge is
    the elementwise min/max, so any order gives the same (exact) result; :meth:`all_reduce` is
    one ``all_reduce(MIN)`` and one ``all_reduce(MAX)``. See the module docstring for the three
    ways to fix edges (this class over the whole corpus, or over a calibration sample).

    Args:
        shape: ``(*leading, variables)`` to create the state up front (``lo = inf``,
            ``hi = -inf``): needed for :meth:`all_reduce` on a rank that may see no batch.
        device: where a pre-shaped state lives (default: the CPU).

    Example:
        >>> from tlprobe.analyses.mi import pairwise_mi
        >>> x = torch.randn(2, 60, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> rng = RangeAccumulator().update(x[:, :25]).update(x[:, 25:])
        >>> counts = MICounts(rng.edges(5)).update(x[:, :40]).update(x[:, 40:])
        >>> bool(torch.allclose(counts.result(), pairwise_mi(x, bins=5, dtype=torch.float64), atol=1e-12))
        True
    """

    KIND: ClassVar[str] = "range"
    TENSORS: ClassVar[tuple[str, ...]] = ("lo", "hi")

    lo: Float[torch.Tensor, "... variables"] | None
    hi: Float[torch.Tensor, "... variables"] | None

    def _zeros(self, shape: tuple[int, ...], device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "lo": torch.full(shape, math.inf, dtype=_F64, device=device),
            "hi": torch.full(shape, -math.inf, dtype=_F64, device=device),
        }

    def update(self, batch: Float[torch.Tensor, "... samples variables"]) -> RangeAccumulator:
        """Fold in ``batch`` ``[..., samples, V]``; returns self.

        Raises:
            TlprobeError: fewer than 2 dimensions, non-finite values, or leading axes/variables
                other than the first batch's.
        """
        x, dtype = _batch(batch)
        *lead, s, v = x.shape
        dev = self._fit((*lead, v), x.device, "this batch")
        if s == 0:
            return self
        lo, hi = torch.aminmax(x.to(device=dev, dtype=_F64), dim=-2)
        self._combine(s, lo, hi)
        self.dtype = "float64" if "float64" in (self.dtype, dtype) else "float32"
        return self

    def merge(self, other: RangeAccumulator) -> RangeAccumulator:
        """Fold in ``other`` (another shard), in place; returns self.

        Raises:
            TlprobeError: another kind of accumulator, or another shape.
        """
        if self._merge_checked(other):
            assert other.lo is not None and other.hi is not None
            self._combine(other.n_samples, other.lo.to(self.device), other.hi.to(self.device))
            self.dtype = "float64" if "float64" in (self.dtype, other.dtype) else "float32"
        return self

    def _combine(self, n_b: int, lo: torch.Tensor, hi: torch.Tensor) -> None:
        assert self.lo is not None and self.hi is not None
        torch.minimum(self.lo, lo, out=self.lo)
        torch.maximum(self.hi, hi, out=self.hi)
        self.n_samples += n_b

    def all_reduce(self, group=None) -> RangeAccumulator:
        """Combine with this accumulator on every rank of ``group``, in place (MIN, MAX, SUM of n).

        Every rank needs the shape: a rank that may see no batch creates it with ``shape=``.
        """
        import torch.distributed as dist  # only under a process group

        if self.lo is None or self.hi is None:
            raise TlprobeError(
                "this RangeAccumulator has no shape yet; create it with shape=(*leading, variables) "
                "on a rank that may see no batch"
            )
        dist.all_reduce(self.lo, op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(self.hi, op=dist.ReduceOp.MAX, group=group)
        n = torch.tensor([self.n_samples], dtype=torch.int64, device=self.lo.device)
        dist.all_reduce(n, op=dist.ReduceOp.SUM, group=group)
        self.n_samples = int(n.item())
        return self

    def edges(self, bins: int) -> Float[torch.Tensor, "... variables edges"]:
        """``[..., V, bins + 1]`` float64 edges: ``linspace(min, max, bins + 1)`` per variable.

        Built exactly as :func:`~tlprobe.analyses.mi.pairwise_mi` builds them
        (``arange(bins + 1) * step + min``, the last edge the max itself), so binning with them
        reproduces its labels bit for bit. A constant variable gets ``bins + 1`` equal edges (all
        its samples in one bin, as in ``pairwise_mi``).

        Raises:
            TlprobeError: no sample seen yet, or ``bins < 2``.
        """
        k = _as_bins(bins)
        if self.n_samples == 0 or self.lo is None or self.hi is None:
            raise TlprobeError("this RangeAccumulator has seen no sample; update it with a batch before edges()")
        return _linspace_edges(self.lo, self.hi, k)


def edges_from_range(
    lo: float | torch.Tensor,
    hi: float | torch.Tensor,
    bins: int,
    *,
    shape: Sequence[int] | None = None,
) -> Float[torch.Tensor, "... variables edges"]:
    """Equal-width edges over user-given ranges: ``[*shape, bins + 1]`` float64.

    ``lo`` and ``hi`` are numbers or tensors broadcast to ``shape`` (``(*leading, variables)``;
    default: their broadcast shape, which must then have a variables axis). The edges are built
    as :meth:`RangeAccumulator.edges` builds them.

    Raises:
        TlprobeError: ``bins < 2``, non-finite bounds, ``hi <= lo`` somewhere, shapes that do
            not broadcast, or no variables axis.

    Example:
        >>> edges_from_range(-1.0, 1.0, 4, shape=(2, 3)).shape
        torch.Size([2, 3, 5])
        >>> edges_from_range(-1.0, 1.0, 4, shape=(3,))[0].tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    k = _as_bins(bins)
    lo_t = as_tensor(lo, "lo").to(_F64)
    hi_t = as_tensor(hi, "hi").to(device=lo_t.device, dtype=_F64)
    try:
        target = torch.broadcast_shapes(lo_t.shape, hi_t.shape) if shape is None else tuple(int(d) for d in shape)
        lo_t, hi_t = lo_t.expand(target), hi_t.expand(target)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise TlprobeError(
            f"lo {tuple(lo_t.shape)} and hi {tuple(hi_t.shape)} do not broadcast to shape {shape!r}; "
            "pass shape=(*leading, variables) and bounds of that shape (or numbers)"
        ) from exc
    if len(target) < 1:
        raise TlprobeError("edges need a variables axis; pass shape=(*leading, variables)")
    check_finite(lo_t, "lo")
    check_finite(hi_t, "hi")
    if bool((hi_t <= lo_t).any()):
        raise TlprobeError("every range must have hi > lo; fix the bounds (or fix edges with a RangeAccumulator)")
    return _linspace_edges(lo_t.contiguous(), hi_t.contiguous(), k)


def _tile_rows(v: int, k: int, rows: int | None) -> list[tuple[int, int]]:
    """Row-variable ranges ``[r0, r1)`` of the count tiles."""
    r = max(1, 256 // k) if rows is None else as_int(rows, "rows_per_tile", minimum=1)
    return [(r0, min(r0 + r, v)) for r0 in range(0, v, r)]


def _tile_cells(spans: list[tuple[int, int]], v: int, k: int) -> list[int]:
    return [(r1 - r0) * k * (v - r0) * k for r0, r1 in spans]


class MICounts(Accumulator):
    """Joint histogram counts of every pair of variables over a stream, on fixed bin edges.

    Each batch's values are binned with the edges (the rule of
    :func:`~tlprobe.analyses.mi.bin_labels`: ``searchsorted(edges, x, right=True) - 1``, a value
    equal to the last edge in the last bin); values outside ``[first edge, last edge]`` are
    clamped into the edge bins and counted in :attr:`n_clipped`. The joint counts of all pairs
    come from one-hot matrix products (float32, exact for chunks of < 2**24 samples) added into
    **int32** count tiles: tile ``t`` covers row variables ``[r0, r1)`` and column variables
    ``[r0, V)``, shape ``[lead, (r1 - r0) k, (V - r0) k]`` (``lead`` the flattened leading
    indices), so only the pairs ``i <= j`` (and the diagonal blocks) are stored: about
    ``lead k^2 V^2 / 2`` int32 counts, e.g. 7 layers x 384 variables x 10 bins in ~220 MB. The
    marginal counts are the diagonals of the diagonal blocks. int32 limits the total to
    :data:`MAX_SAMPLES` samples (refused beyond).

    Counts add exactly: :meth:`merge` and :meth:`all_reduce` (a SUM of the tiles) give the
    same counts in any order.

    Args:
        edges: ``[..., V, k + 1]`` non-decreasing bin edges per variable (from
            :meth:`RangeAccumulator.edges` or :func:`edges_from_range`); the leading axes are
            those of the batches.
        rows_per_tile: row variables per count tile (default ``256 // k``): smaller tiles store
            fewer unused lower-triangle cells, larger ones make fewer matrix products.
        device: where the counts live (default: the edges' device; an accumulator that has seen
            no sample moves to its first batch's device).

    Raises:
        TlprobeError: bad edges (fewer than 2 dimensions, fewer than 3 edges, non-finite or
            decreasing), or counts too large for the memory.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(500, 3, generator=g, dtype=torch.float64)
        >>> x[:, 1] = x[:, 0] ** 2  # dependent on variable 0; variable 2 is independent noise
        >>> counts = MICounts(RangeAccumulator().update(x).edges(4)).update(x[:300]).update(x[300:])
        >>> r = counts.mi_result()
        >>> r.method, bool(r.corrected[0, 1] > 0.5), bool(abs(r.corrected[0, 2]) < 0.02)
        ('permutation', True, True)
    """

    KIND: ClassVar[str] = "mi_counts"
    #: The marginals kept by ``mi_result(free=True)``, which drops the joint counts.
    _freed: torch.Tensor | None = None

    edges: Float[torch.Tensor, "... variables edges"]
    tiles: list[Int[torch.Tensor, "lead rows cols"]]
    n_clipped: int

    def __init__(
        self,
        edges: Float[torch.Tensor, "... variables edges"],
        *,
        rows_per_tile: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        e = as_tensor(edges, "edges")
        check_ndim(e, "edges", 2, "[..., variables, bins + 1]")
        dev = torch.device(device) if device is not None else e.device
        e = e.to(device=dev, dtype=_F64).contiguous()
        self._set_edges(e)
        spans = _tile_rows(self.n_vars, self.bins, rows_per_tile)
        self.rows_per_tile = spans[0][1] - spans[0][0]
        cells = sum(_tile_cells(spans, self.n_vars, self.bins)) * self.n_lead
        check_memory(
            cells * 4 + self._update_bytes(),
            f"MICounts of {self.n_vars} variables x {self.bins} bins x {self.n_lead} leading indices "
            f"(int32 joint counts of every pair, {cells} cells)",
            "use fewer variables, bins or leading indices per accumulator (e.g. one per layer)",
            device=dev,
        )
        self.tiles = [
            torch.zeros(
                self.n_lead, (r1 - r0) * self.bins, (self.n_vars - r0) * self.bins, dtype=torch.int32, device=dev
            )
            for r0, r1 in spans
        ]
        self.n_samples = 0
        self.n_clipped = 0

    # -- bookkeeping ---------------------------------------------------------------------------
    def _set_edges(self, e: torch.Tensor) -> None:
        if e.shape[-1] < 3:
            raise TlprobeError(
                f"edges has {e.shape[-1]} edges per variable; need bins + 1 >= 3 (bins >= 2): "
                "build them with RangeAccumulator.edges(bins) or edges_from_range"
            )
        if e.shape[-2] < 1:
            raise TlprobeError(f"edges has no variables (shape {tuple(e.shape)})")
        check_finite(e, "edges")
        if bool((e[..., 1:] < e[..., :-1]).any()):
            raise TlprobeError("edges must be non-decreasing along the last axis; build them with RangeAccumulator")
        self.edges = e
        self.lead = tuple(int(d) for d in e.shape[:-2])
        self.n_lead = math.prod(self.lead)
        self.n_vars = int(e.shape[-2])
        self.bins = int(e.shape[-1]) - 1

    @property
    def device(self) -> torch.device:
        """The device of the counts."""
        return self.edges.device

    def _spans(self) -> list[tuple[int, int]]:
        return _tile_rows(self.n_vars, self.bins, self.rows_per_tile)

    def _chunk(self) -> int:
        """Samples per one-hot product: exact in float32, about ``_ONEHOT_BYTES`` of codes."""
        per_sample = max(1, self.n_lead * self.n_vars * self.bins * 4)
        return max(1, min(_EXACT_F32, _ONEHOT_BYTES // per_sample))

    def _update_bytes(self, samples: int | None = None) -> int:
        s = self._chunk() if samples is None else min(samples, self._chunk())
        vk = self.n_vars * self.bins
        biggest = max(_tile_cells(self._spans(), self.n_vars, self.bins)) * self.n_lead
        labels = self.n_lead * self.n_vars * s * 8 * 4
        return labels + 2 * self.n_lead * s * vk * 4 + biggest * 8

    def _move(self, device: torch.device) -> None:
        self.edges = self.edges.to(device)
        self.tiles = [t.to(device) for t in self.tiles]

    def _check_total(self, more: int) -> None:
        if self.n_samples + more > MAX_SAMPLES:
            raise TlprobeError(
                f"MICounts holds int32 counts: {self.n_samples} + {more} samples exceed {MAX_SAMPLES}; "
                "split the corpus over several accumulators (e.g. subsample tokens)"
            )

    def __repr__(self) -> str:
        lead = ", ".join(map(str, self.lead))
        return (
            f"MICounts(n_samples={self.n_samples}, n_clipped={self.n_clipped}, "
            f"[{lead + ', ' if lead else ''}samples, {self.n_vars}], bins={self.bins})"
        )

    # -- binning -------------------------------------------------------------------------------
    def labels(self, batch: Float[torch.Tensor, "... samples variables"]) -> Int[torch.Tensor, "... samples variables"]:
        """Bin labels ``[..., samples, V]`` (int64, ``0 .. k - 1``) of a batch with these edges.

        Values outside the edges are clamped into the first/last bin (see :meth:`update`).

        Raises:
            TlprobeError: a batch of another shape, or non-finite values.
        """
        lab, _ = self._labels(batch)
        return lab.mT.reshape(*self.lead, -1, self.n_vars)

    def _labels(self, batch) -> tuple[torch.Tensor, int]:
        """``[lead, V, samples]`` labels on the counts' device, and how many values were clipped."""
        x, _ = _batch(batch)
        *lead, s, v = x.shape
        if tuple(lead) != self.lead or v != self.n_vars:
            want = ", ".join([*map(str, self.lead), "samples", str(self.n_vars)])
            raise TlprobeError(
                f"this batch is {tuple(x.shape)} but the edges are for [{want}]; feed batches with the "
                "edges' leading axes and variables (or build edges for this shape)"
            )
        if self.n_samples == 0 and x.device != self.device:
            self._move(x.device)
        e = self.edges.reshape(self.n_lead, v, self.bins + 1)
        xd = x.to(device=self.device, dtype=_F64).reshape(self.n_lead, s, v).mT.contiguous()  # [lead, V, s]
        first, last = e[..., :1], e[..., -1:]
        clipped = int(((xd < first) | (xd > last)).sum())
        lab = torch.searchsorted(e, xd, right=True) - 1
        lab = torch.where(xd == last, self.bins - 1, lab).clamp_(0, self.bins - 1)
        return lab, clipped

    # -- protocol ------------------------------------------------------------------------------
    def update(self, batch: Float[torch.Tensor, "... samples variables"]) -> MICounts:
        """Fold in ``batch`` ``[..., samples, V]`` (leading axes and V those of the edges); returns self.

        Raises:
            TlprobeError: fewer than 2 dimensions, non-finite values, leading axes or variables
                other than the edges', more than :data:`MAX_SAMPLES` samples in all, or a working
                set too large for the memory.
        """
        self._check_counts()
        x = as_tensor(batch, "batch")
        check_ndim(x, "batch", 2, "[..., samples, variables]")
        s = int(x.shape[-2])
        self._check_total(s)
        step = self._chunk()
        if s > step:  # a chunk of samples at a time from the binning on: working memory flat in s
            for c0 in range(0, s, step):
                self.update(x[..., c0 : c0 + step, :])
            return self
        check_memory(
            self._update_bytes(s),
            f"MICounts.update of {s} samples ({self.n_lead} x {self.n_vars} variables, {self.bins} bins)",
            "feed smaller batches",
            device=self.device,
        )
        lab, clipped = self._labels(x)
        if s == 0:
            return self
        k, vk = self.bins, self.n_vars * self.bins
        offs = (torch.arange(self.n_vars, device=self.device) * k).view(1, -1, 1)
        spans = self._spans()
        for c0 in range(0, s, self._chunk()):
            part = lab[..., c0 : c0 + self._chunk()] + offs  # [lead, V, s_c]
            sc = part.shape[-1]
            oh = torch.zeros(self.n_lead, sc, vk, dtype=torch.float32, device=self.device)
            oh.scatter_(2, part.mT, 1.0)
            oh_t = oh.mT.contiguous()  # [lead, V k, s_c]
            for (r0, r1), tile in zip(spans, self.tiles):
                prod = torch.bmm(oh_t[:, r0 * k : r1 * k], oh[:, :, r0 * k :])
                tile.add_(prod.to(torch.int32))  # integer counts < 2**24: exact in float32
        self.n_samples += s
        self.n_clipped += clipped
        return self

    def merge(self, other: MICounts) -> MICounts:
        """Fold in ``other`` (another shard with the same edges), in place; returns self.

        Raises:
            TlprobeError: another kind of accumulator, other edges or tiles, or more than
                :data:`MAX_SAMPLES` samples in all.
        """
        self._check_counts()
        self._check_same(other)
        if other.edges.shape != self.edges.shape or not torch.equal(other.edges.to(self.device), self.edges):
            raise TlprobeError(
                "cannot merge MICounts with other bin edges; fix the edges once (one RangeAccumulator or "
                "edges_from_range) and build every shard's MICounts from them"
            )
        if [t.shape for t in other.tiles] != [t.shape for t in self.tiles]:
            raise TlprobeError("cannot merge MICounts with another tile layout; use the same rows_per_tile")
        if other.n_samples == 0:
            return self
        self._check_total(other.n_samples)
        if self.n_samples == 0 and other.device != self.device:
            self._move(other.device)
        for t, o in zip(self.tiles, other.tiles):
            t.add_(o.to(self.device))
        self.n_samples += other.n_samples
        self.n_clipped += other.n_clipped
        return self

    def _sums(self) -> list[torch.Tensor]:
        """``[n_samples, n_clipped]`` (int64) and the count tiles: all-reduced with SUM."""
        self._ints = torch.tensor([self.n_samples, self.n_clipped], dtype=torch.int64, device=self.device)
        return [self._ints, *self.tiles]

    def _after_reduce(self) -> None:
        self.n_samples, self.n_clipped = (int(v) for v in self._ints.tolist())
        del self._ints
        if self.n_samples > MAX_SAMPLES:
            raise TlprobeError(
                f"the all-reduced MICounts hold {self.n_samples} samples, more than int32 counts allow "
                f"({MAX_SAMPLES}); the counts overflowed: split the corpus over several accumulators"
            )

    def state_dict(self) -> State:
        """Plain tensors and numbers (``torch.load(weights_only=True)`` loads them)."""
        self._check_counts()
        return {
            "kind": self.KIND,
            "n_samples": self.n_samples,
            "n_clipped": self.n_clipped,
            "rows_per_tile": self.rows_per_tile,
            "edges": self.edges,
            "tiles": tuple(self.tiles),
        }

    def _load(self, state: State) -> None:
        kind = self.KIND
        e = torch.as_tensor(_state_get(state, "edges", kind)).to(_F64).contiguous()
        check_ndim(e, "edges", 2, "[..., variables, bins + 1]")
        self._set_edges(e)
        self.rows_per_tile = as_int(_state_get(state, "rows_per_tile", kind), "rows_per_tile", minimum=1)
        self.n_samples = as_int(_state_get(state, "n_samples", kind), "n_samples", minimum=0)
        self.n_clipped = as_int(_state_get(state, "n_clipped", kind), "n_clipped", minimum=0)
        tiles = [torch.as_tensor(t).to(device=e.device) for t in _state_get(state, "tiles", kind)]
        want = [(self.n_lead, (r1 - r0) * self.bins, (self.n_vars - r0) * self.bins) for r0, r1 in self._spans()]
        if [tuple(t.shape) for t in tiles] != want or any(t.dtype != torch.int32 for t in tiles):
            raise TlprobeError(f"this {kind!r} state's count tiles do not match its edges; it is corrupt")
        self.tiles = tiles

    # -- results -------------------------------------------------------------------------------
    def marginals(self) -> Int[torch.Tensor, "... variables bins"]:
        """``[..., V, k]`` int64 counts of each variable's bins (the diagonals of the diagonal blocks)."""
        if self._freed is not None:
            return self._freed
        k = self.bins
        out = []
        for (r0, r1), tile in zip(self._spans(), self.tiles):
            r = r1 - r0
            t5 = tile.view(self.n_lead, r, k, self.n_vars - r0, k)
            ar = torch.arange(r, device=self.device)
            blocks = t5[:, ar, :, ar, :]  # [r, lead, k, k]: variable r0 + i with itself
            out.append(torch.diagonal(blocks, dim1=-2, dim2=-1).transpose(0, 1))
        return torch.cat(out, 1).to(torch.int64).reshape(*self.lead, self.n_vars, k)

    def _check_counts(self) -> None:
        if self._freed is not None:
            raise TlprobeError(
                "this MICounts dropped its joint counts (mi_result(free=True)); keep a copy of the state "
                "(state_dict) before freeing it if you need the counts again"
            )

    def _check_result(self) -> None:
        check_min_samples(self.n_samples, 2, "mutual information", "update the MICounts with more samples")

    def result(
        self,
        *,
        correction: Literal["miller-madow"] | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> Float[torch.Tensor, "... variables variables"]:
        """Plug-in MI (nats) of every pair from the counts: ``[..., V, V]``, symmetric.

        The diagonal is each variable's entropy, as in :func:`~tlprobe.analyses.mi.pairwise_mi`;
        ``correction="miller-madow"`` adds ``(m_x + m_y - m_xy - 1) / (2 n)`` (``m``: occupied
        bins). With the edges of a :class:`RangeAccumulator` over the same samples it equals
        ``pairwise_mi(torch.cat(batches, -2), bins=k, correction=correction, dtype=torch.float64)``
        to float64 rounding, whatever the batch split or merge order. Computed in float64.

        Raises:
            TlprobeError: fewer than 2 samples, an unknown correction or dtype, or a working set
                too large for the memory.
        """
        self._check_counts()
        _check_correction(correction)
        _check_dtype(dtype)
        self._check_result()
        k, V, B, n = self.bins, self.n_vars, self.n_lead, self.n_samples
        biggest = max(t.numel() for t in self.tiles)
        check_memory(
            biggest * 8 * 3 + B * V * V * 8 * 3,
            f"MICounts.result ({B} x {V} x {V} MI matrix, {k} bins)",
            "use fewer variables or leading indices per accumulator",
            device=self.device,
        )
        marg = self.marginals().reshape(B, V, k).double()
        s_marg = torch.xlogy(marg, marg).sum(-1)  # [B, V]
        m_marg = (marg > 0).sum(-1).double()
        mm = correction == "miller-madow"
        out = torch.zeros(B, V, V, dtype=_F64, device=self.device)
        for (t0, t1), whole in zip(self._spans(), self.tiles):
            rows = max(1, _RESULT_CELLS // max(1, B * k * k * (V - t0)))  # row variables per step
            for r0 in range(t0, t1, rows):  # a few rows of a tile at a time: float64 copies stay small
                r1 = min(t1, r0 + rows)
                tile = whole[:, (r0 - t0) * k : (r1 - t0) * k]
                f = tile.double().view(B, r1 - r0, k, V - t0, k)
                s_joint = torch.xlogy(f, f).sum((2, 4))
                mi = (s_joint - s_marg[:, r0:r1, None] - s_marg[:, None, t0:]).div_(n).add_(math.log(n)).clamp_min_(0)
                if mm:
                    occ = (tile.view(B, r1 - r0, k, V - t0, k) > 0).sum((2, 4)).double()
                    mi += (m_marg[:, r0:r1, None] + m_marg[:, None, t0:] - occ - 1) / (2 * n)
                out[:, r0:r1, t0:] = mi
        out = out.triu() + out.triu(1).mT
        return out.to(dtype).reshape(*self.lead, V, V)

    def null_mean(self, *, dtype: torch.dtype = torch.float64) -> Float[torch.Tensor, "... variables variables"]:
        """Exact expectation of the plug-in MI under random permutation of the samples: ``[..., V, V]``.

        The "expected mutual information" (EMI) of Vinh, Epps & Bailey (2010): with both
        marginals fixed (counts ``a_i`` of variable x's bins, ``b_j`` of y's, ``n`` samples),
        ``EMI = sum_ij sum_c (c / n) log(n c / (a_i b_j)) P(c)``, ``P`` the hypergeometric
        probability of ``c`` samples in cell ``(i, j)``, ``c`` from ``max(1, a_i + b_j - n)`` to
        ``min(a_i, b_j)``. It is the mean that :func:`~tlprobe.analyses.mi.mi_null`'s shuffles
        estimate (off the diagonal), without sampling noise.

        The term of a cell depends only on ``(a_i, b_j)``: it is computed once per pair of the
        distinct counts present (``torch.unique``), with the sum over ``c`` restricted to
        ``mu +- (13 sigma + 32)`` (``mu = a b / n``, ``sigma^2 = a b (n - a)(n - b) / (n^2 (n - 1))``;
        checked on a grid of counts up to n = 1e6: n times the probability just outside the window
        is < 1e-33, and the log-concave probability falls beyond it, so the result is exact to
        float64 rounding), ``log P`` from a float64 ``lgamma`` table, in tiles of bounded size;
        then every pair of variables sums its ``k x k`` cells as one bilinear form
        (``M T M^T``, ``M[x, u]`` the number of x's bins holding count ``u``). The cost grows
        with the number of distinct counts squared times the window (at most about
        ``6.5 sqrt(n) + 65`` values of ``c``); memory is estimated before allocating.

        The diagonal is the EMI of a variable with a randomly permuted copy of itself (both
        marginals its own). Note that :func:`~tlprobe.analyses.mi.mi_null`'s diagonal is
        different: its shuffled variable is still compared with itself, so its null diagonal is
        the entropy (and its corrected diagonal 0).

        Raises:
            TlprobeError: fewer than 2 samples, a bad dtype, or a working set too large for the
                memory.
        """
        _check_dtype(dtype)
        self._check_result()
        k, V, B, n = self.bins, self.n_vars, self.n_lead, self.n_samples
        marg = self.marginals().reshape(B, V * k)
        u_all = torch.unique(marg)
        whole = u_all.numel() ** 2 * 8 * 3 <= _EMI_TABLE_BYTES
        groups = [slice(0, B)] if whole else [slice(b, b + 1) for b in range(B)]
        lg = torch.lgamma(torch.arange(n + 2, dtype=_F64, device=self.device) + 1)  # lg[m] = log(m!)
        out = torch.empty(B, V, V, dtype=_F64, device=self.device)
        for g in groups:
            m_g = marg[g]
            u, inv = torch.unique(m_g, return_inverse=True)
            U, G = u.numel(), m_g.shape[0]
            what = f"the exact permutation null of {G} x {V} variables ({U} distinct bin counts, n = {n})"
            check_memory(
                U * U * 8 * 6 + G * V * U * 8 * 2 + G * V * V * 8,
                what,
                "use fewer variables or leading indices per accumulator",
                device=self.device,
            )
            table = _emi_table(u, n, lg, what)  # [U, U]
            cnt = torch.zeros(G * V, U, dtype=_F64, device=self.device)
            cnt.scatter_add_(1, inv.reshape(G * V, k), torch.ones(G * V, k, dtype=_F64, device=self.device))
            cnt = cnt.view(G, V, U)
            out[g] = (cnt @ table) @ cnt.mT
        out = (out + out.mT) / 2  # symmetric by construction; equal halves up to rounding
        return out.to(dtype).reshape(*self.lead, V, V)

    def mi_result(self, *, axes: Mapping[str, Sequence[str]] | None = None, free: bool = False) -> MIResult:
        """Raw MI, the exact permutation null and ``raw - null_mean``, as an :class:`~tlprobe.analyses.mi.MIResult`.

        ``method="permutation"``, ``null_std=None``, ``n_shuffles=0``, ``seed=None``; float64.
        The corrected diagonal is the entropy minus the EMI of the variable with a permuted copy
        of itself (see :meth:`null_mean`). With ``free=True`` the joint counts are dropped once
        the raw MI is computed (the null needs only the marginals), so the two never share the
        peak memory; the accumulator then takes no more samples.

        Raises:
            TlprobeError: as :meth:`result` and :meth:`null_mean`.
        """
        raw = self.result()
        if free:
            self._freed = self.marginals()
            self.tiles = []
        null = self.null_mean()
        return MIResult(
            raw=raw,
            corrected=raw - null,
            null_mean=null,
            null_std=None,
            bins=self.bins,
            method="permutation",
            n_samples=self.n_samples,
            n_shuffles=0,
            seed=None,
            axes=axes or {},
        )


def _emi_table(u: torch.Tensor, n: int, lg: torch.Tensor, what: str) -> torch.Tensor:
    """``T[p, q] = sum_c (c / n) log(n c / (u_p u_q)) P(c)`` for sorted distinct counts ``u`` (int64).

    Rows are processed in tiles of at most about ``_EMI_ELEMENTS`` window cells; only
    ``q >= p`` is computed (``T`` is symmetric) and mirrored.
    """
    dev = u.device
    U = u.numel()
    a = u.to(_F64)
    A, Bm = a[:, None], a[None, :]
    mu = A * Bm / n
    sigma = (A * Bm * (n - A) * (n - Bm) / (n * n * (n - 1))).clamp_min(0).sqrt()
    half = _WINDOW_SIGMAS * sigma + _WINDOW_PAD
    ui, uj = u[:, None], u[None, :]
    lo = torch.maximum(torch.clamp(ui + uj - n, min=1), torch.floor(mu - half).to(torch.int64))
    hi = torch.minimum(torch.minimum(ui, uj), torch.ceil(mu + half).to(torch.int64))
    del mu, sigma, half
    width = (hi - lo + 1).clamp_min(0)
    row_w = width.amax(1).tolist()
    log_n = math.log(n)
    log_u = torch.log(a.clamp_min(1))
    table = torch.zeros(U, U, dtype=_F64, device=dev)
    check_memory(
        max(_EMI_ELEMENTS, U * max(row_w, default=0)) * 64,
        f"{what} (window work of {U} distinct bin counts)",
        "use fewer variables or leading indices per accumulator",
        device=dev,
    )
    p0 = 0
    while p0 < U:  # tiles of rows: rows * columns * window <= _EMI_ELEMENTS (at least one row)
        p1, w = p0 + 1, row_w[p0]
        while p1 < U and (p1 - p0 + 1) * (U - p0) * max(w, row_w[p1]) <= _EMI_ELEMENTS:
            w = max(w, row_w[p1])
            p1 += 1
        if w > 0:
            lo_t, hi_t = lo[p0:p1, p0:], hi[p0:p1, p0:]
            c = lo_t.unsqueeze(-1) + torch.arange(w, device=dev)  # [rows, cols, w]
            valid = c <= hi_t.unsqueeze(-1)
            ai, bj = ui[p0:p1, :, None], uj[:, p0:, None]
            idx = [c, ai - c, bj - c, n - ai - bj + c]
            logp = lg[ai.squeeze(-1)] + lg[n - ai.squeeze(-1)] + lg[bj.squeeze(-1)] + lg[n - bj.squeeze(-1)] - lg[n]
            logp = logp.unsqueeze(-1).expand(c.shape).clone()
            for t in idx:
                logp -= lg[t.clamp(0, n)]
            cf = c.to(_F64)
            term = cf.div(n).mul_(
                torch.log(cf.clamp_min(1)).add_(log_n) - log_u[p0:p1, None, None] - log_u[None, p0:, None]
            )
            term.mul_(logp.exp_()).masked_fill_(~valid, 0.0)
            table[p0:p1, p0:] = term.sum(-1)
        p0 = p1
    return table.triu() + table.triu(1).mT
