"""Streaming statistics: accumulators that see a corpus one batch at a time, in constant memory.

Every accumulator has the same protocol:

* ``update(batch)``: fold one batch of samples in (``[..., samples, features]``; the leading
  axes are fixed by the first batch);
* ``merge(other)``: fold in another accumulator of the same kind and shape (another shard of the
  corpus, another process), in place; merging in any order gives the same result (exactly for
  integer counts, to float rounding for sums);
* ``result(...)``: the statistic, equal to the in-memory function over all the samples seen;
* ``state_dict()`` / ``from_state_dict(state)``: plain tensors and numbers (``torch.save`` with
  ``weights_only=True`` loads them back), for checkpoints;
* ``all_reduce(group=None)``: combine with the same accumulator on every rank of a
  ``torch.distributed`` process group, in place; every rank ends with the merged state.

The accumulators keep their state on the device of the first batch they see (later batches are
moved there), so a model split over devices (``device_map``) feeds them layer by layer.

* :class:`MomentsAccumulator`: :func:`tlprobe.analyses.moments.sample_moments` over a stream;
* :class:`SimilarityAccumulator`: :func:`tlprobe.analyses.similarity.feature_similarity`, the
  covariance spectrum (PCA dimensionality) and
  :func:`tlprobe.analyses.similarity.qkv_block_similarity`'s block statistics over a stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import torch
from jaxtyping import Bool, Float

from tlprobe.analyses.moments import Moments
from tlprobe.analyses.similarity import (
    _PAIRS,
    METHODS,
    BlockStats,
    _Columns,
    _undefined_message,
)
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

AccumulatorT = TypeVar("AccumulatorT", bound="Accumulator")

#: A state dict: tensors, numbers, strings and tuples of them (``torch.load(weights_only=True)``-safe).
State = dict[str, Any]


class Accumulator:
    """The protocol every streaming statistic follows (see the module docstring).

    Subclasses set :attr:`KIND`, implement :meth:`update`, :meth:`merge`, :meth:`state_dict` and
    :meth:`_load` (the inverse of :meth:`state_dict`), and either list their additive tensors in
    :meth:`_sums` (reduced across ranks with one ``all_reduce(SUM)`` each) or override
    :meth:`all_reduce`.
    """

    #: The name of the kind in a state dict (checked when a state is loaded back).
    KIND: ClassVar[str] = "accumulator"

    def update(self: AccumulatorT, batch) -> AccumulatorT:  # pragma: no cover - abstract
        raise NotImplementedError

    def merge(self: AccumulatorT, other: AccumulatorT) -> AccumulatorT:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, state: State) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def empty(self) -> bool:
        """Whether no batch has been folded in yet."""
        return self.n_samples == 0

    n_samples: int = 0

    @classmethod
    def from_state_dict(cls: type[AccumulatorT], state: State) -> AccumulatorT:
        """The accumulator a :meth:`state_dict` describes."""
        if not isinstance(state, dict) or state.get("kind") != cls.KIND:
            got = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise TlprobeError(f"this state is a {got!r}, not a {cls.KIND!r} accumulator; load it with its own class")
        out = cls.__new__(cls)
        out._load(state)
        return out

    def _check_same(self, other: Accumulator) -> None:
        if type(other) is not type(self):
            raise TlprobeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")

    def _sums(self) -> list[torch.Tensor]:  # pragma: no cover - abstract
        """The additive state tensors (all-reduced with SUM); see :meth:`all_reduce`."""
        raise NotImplementedError

    def all_reduce(self: AccumulatorT, group=None) -> AccumulatorT:
        """Combine with this accumulator on every rank of ``group`` (default: the world), in place.

        Every rank must call it, in the same order as its other collectives, with an accumulator
        of the same shape. Integer counts stay exact; float sums differ from a one-process run
        only by the order of summation. An accumulator that is empty on some rank (a shard with
        no batch) must be created with its shape beforehand (see each class).
        """
        import torch.distributed as dist  # only under a process group

        for t in self._sums():
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        self._after_reduce()
        return self

    def _after_reduce(self) -> None:
        """Refresh derived fields (e.g. ``n_samples``) after :meth:`all_reduce`."""


def gather_merge(acc: AccumulatorT, group=None) -> AccumulatorT:
    """All-reduce ``acc`` by gathering every rank's state and merging them in rank order.

    For accumulators whose merge is not a plain sum (e.g. Chan et al.'s moments): every rank
    merges the same states in the same order, so all ranks hold identical results. Each state
    tensor must have the same shape on every rank.
    """
    import torch.distributed as dist  # only under a process group

    states: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, _cpu_state(acc.state_dict()), group=group)
    merged = type(acc).from_state_dict(states[0])
    for s in states[1:]:
        merged.merge(type(acc).from_state_dict(s))
    acc._load(_to_device(merged.state_dict(), _device_of(acc)))
    return acc


def _cpu_state(state: State) -> State:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _device_of(acc: Accumulator) -> torch.device:
    for v in acc.state_dict().values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def _to_device(state: State, device: torch.device) -> State:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Shared helpers of the float64 accumulators.

_F64 = torch.float64
_DTYPES = ("float32", "float64")


def _batch(batch) -> tuple[torch.Tensor, str]:
    """``batch`` as a finite ``[..., samples, features]`` tensor, and its work dtype's name.

    Half precision (and integers) work in float32, float64 in float64 (see
    :func:`tlprobe.checks.upcast`); the values themselves are converted to float64 by the caller.
    """
    x = as_tensor(batch, "batch")
    check_ndim(x, "batch", 2, "[..., samples, features]")
    x = upcast(x)
    check_finite(x, "batch")
    return x, "float64" if x.dtype == _F64 else "float32"


def _shape_doc(shape: tuple[int, ...]) -> str:
    """``(2, 3, 5) -> '[2, 3, samples, 5]'``."""
    return "[" + ", ".join([*map(str, shape[:-1]), "samples", str(shape[-1])]) + "]"


def _as_shape(shape) -> tuple[int, ...]:
    """A pre-shaped accumulator's ``(*leading, features)``, checked."""
    try:
        out = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as exc:
        raise TlprobeError(f"shape must be a tuple of ints (*leading, features), got {shape!r}") from exc
    if not out or any(d < 0 for d in out):
        raise TlprobeError(f"shape must be (*leading, features) with sizes >= 0, got {shape!r}")
    return out


def _wider(a: str, b: str) -> str:
    """The work dtype of two merged accumulators: float64 when either saw float64 input."""
    return "float64" if "float64" in (a, b) else "float32"


def _state_get(state: State, key: str, kind: str):
    if key not in state:
        raise TlprobeError(f"this {kind!r} state has no {key!r}; it was not written by state_dict()")
    return state[key]


class _Float64Accumulator(Accumulator):
    """Shape, device and dtype bookkeeping of an accumulator with float64 state tensors.

    The state is ``None`` until the shape is known (the first batch, a merge, or ``shape=``);
    an accumulator that has seen no sample keeps zeros (n = 0), which merge as nothing.
    """

    #: Names of the state tensors, in :meth:`state_dict` order.
    TENSORS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, shape: tuple[int, ...] | None = None, *, device: torch.device | str | None = None) -> None:
        self.n_samples = 0
        self.dtype = "float32"
        self._shape: tuple[int, ...] | None = None
        for name in self.TENSORS:
            setattr(self, name, None)
        if shape is not None:
            self._allocate(_as_shape(shape), torch.device(device) if device is not None else torch.device("cpu"))

    # -- subclass hooks -----------------------------------------------------------------------
    def _zeros(self, shape: tuple[int, ...], device: torch.device) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...] | None:
        """``(*leading, features)`` fixed by the first batch (or ``shape=``); ``None`` before."""
        return self._shape

    @property
    def device(self) -> torch.device | None:
        """The device of the state (``None`` before the shape is known)."""
        t = getattr(self, self.TENSORS[0])
        return None if t is None else t.device

    def _allocate(self, shape: tuple[int, ...], device: torch.device) -> None:
        for name, t in self._zeros(shape, device).items():
            setattr(self, name, t)
        self._shape = shape

    def _fit(self, shape: tuple[int, ...], device: torch.device, what: str) -> torch.device:
        """Check ``shape`` against the state (allocating it first time); the state's device.

        An accumulator that has seen no sample moves its (zero) state to ``device``: the state
        lives where the first batch was.
        """
        if self._shape is None:
            self._allocate(shape, device)
        elif shape != self._shape:
            raise TlprobeError(
                f"{what} is {_shape_doc(shape)} but this {type(self).__name__} holds {_shape_doc(self._shape)} "
                "(leading axes and features are fixed by its first batch); feed batches of one shape, "
                "or use one accumulator per shape"
            )
        elif self.n_samples == 0 and self.device != device:
            for name in self.TENSORS:
                setattr(self, name, getattr(self, name).to(device))
        out = self.device
        assert out is not None
        return out

    def _merge_checked(self, other: _Float64Accumulator) -> bool:
        """Checks before merging ``other``; whether there is anything to fold in."""
        self._check_same(other)
        if other._shape is None:
            return False
        self._fit(other._shape, other.device or torch.device("cpu"), f"the merged {type(other).__name__}")
        return other.n_samples > 0

    @property
    def work_dtype(self) -> torch.dtype:
        """The dtype results are returned in: float32 for half/float32 input, float64 for float64."""
        return torch.float64 if self.dtype == "float64" else torch.float32

    def state_dict(self) -> State:
        """Plain tensors, numbers and strings (``torch.load(weights_only=True)`` loads them)."""
        out: State = {"kind": self.KIND, "n_samples": self.n_samples, "dtype": self.dtype}
        out.update({name: getattr(self, name) for name in self.TENSORS})
        return out

    def _load(self, state: State) -> None:
        kind = self.KIND
        self.n_samples = int(_state_get(state, "n_samples", kind))
        self.dtype = str(_state_get(state, "dtype", kind))
        if self.dtype not in _DTYPES:
            raise TlprobeError(f"this {kind!r} state has dtype {self.dtype!r}; expected one of {_DTYPES}")
        tensors = [_state_get(state, name, kind) for name in self.TENSORS]
        if any(t is None for t in tensors):
            if self.n_samples or any(t is not None for t in tensors):
                raise TlprobeError(f"this {kind!r} state has samples but no tensors; it is corrupt")
            self._shape = None
            for name in self.TENSORS:
                setattr(self, name, None)
            return
        for name, t in zip(self.TENSORS, tensors, strict=True):
            setattr(self, name, torch.as_tensor(t).to(_F64).contiguous())
        self._shape = tuple(int(d) for d in tensors[0].shape)

    def all_reduce(self, group=None):
        """Combine with the same accumulator on every rank of ``group``, in place.

        The pairwise (Chan et al.) merge is not a plain sum of the state, so every rank's state is
        gathered and merged in rank order (:func:`gather_merge`): all ranks end with identical
        state. A rank that saw no batch may hold an accumulator without a shape, or one made with
        ``shape=`` (merging zeros with n = 0 is a no-op).
        """
        return gather_merge(self, group)

    def __repr__(self) -> str:
        shape = "unshaped" if self._shape is None else _shape_doc(self._shape)
        return f"{type(self).__name__}(n_samples={self.n_samples}, {shape}, dtype={self.dtype})"


# ---------------------------------------------------------------------------------------------


class MomentsAccumulator(_Float64Accumulator):
    """Streaming :func:`~tlprobe.analyses.moments.sample_moments`: per-coordinate mean and variance.

    State (float64, on the device of the first batch): ``n_samples``, ``mean`` ``[..., F]`` and
    ``m2`` ``[..., F]`` (the sum of squared deviations from the mean). A batch is folded in as
    the merge of its own statistics, with Chan, Golub & LeVeque's pairwise formula
    (``delta = mean_b - mean_a``; ``mean = mean_a + delta n_b / n``;
    ``m2 = m2_a + m2_b + delta^2 n_a n_b / n``), which has no cancellation however large the
    offsets of the coordinates.

    Args:
        shape: ``(*leading, features)`` to create the state up front (zeros, n = 0): needed for
            :meth:`all_reduce` on a rank that may see no batch. Default: fixed by the first batch.
        device: where a pre-shaped state lives (default: the CPU; an accumulator that has seen
            no sample moves to its first batch's device).

    Example:
        >>> from tlprobe.analyses.moments import sample_moments
        >>> x = torch.randn(2, 50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> acc = MomentsAccumulator().update(x[:, :20]).update(x[:, 20:])
        >>> bool(torch.allclose(acc.result().rel_var, sample_moments(x).rel_var, rtol=1e-12))
        True
    """

    KIND: ClassVar[str] = "moments"
    TENSORS: ClassVar[tuple[str, ...]] = ("mean", "m2")

    mean: Float[torch.Tensor, "... features"] | None
    m2: Float[torch.Tensor, "... features"] | None

    def _zeros(self, shape: tuple[int, ...], device: torch.device) -> dict[str, torch.Tensor]:
        return {name: torch.zeros(shape, dtype=_F64, device=device) for name in self.TENSORS}

    def update(self, batch: Float[torch.Tensor, "... samples features"]) -> MomentsAccumulator:
        """Fold in ``batch`` ``[..., samples, features]`` (half precision counts as float32); returns self.

        Raises:
            TlprobeError: fewer than 2 dimensions, non-finite values, or leading axes/features
                other than the first batch's.
        """
        x, dtype = _batch(batch)
        *lead, s, f = x.shape
        dev = self._fit((*lead, f), x.device, "this batch")
        if s == 0:
            return self
        x = x.to(device=dev, dtype=_F64)
        mean = x.mean(-2)
        m2 = (x - mean.unsqueeze(-2)).square_().sum(-2)
        self._combine(s, mean, m2)
        self.dtype = _wider(self.dtype, dtype)
        return self

    def merge(self, other: MomentsAccumulator) -> MomentsAccumulator:
        """Fold in ``other`` (another shard), in place; returns self.

        Raises:
            TlprobeError: another kind of accumulator, or another shape.
        """
        if self._merge_checked(other):
            dev = self.device
            assert other.mean is not None and other.m2 is not None
            self._combine(other.n_samples, other.mean.to(dev), other.m2.to(dev))
            self.dtype = _wider(self.dtype, other.dtype)
        return self

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan et al.'s pairwise merge of ``(n_b, mean_b, m2_b)`` into the state (n_a = 0 copies it)."""
        assert self.mean is not None and self.m2 is not None
        n_a = self.n_samples
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean.add_(delta, alpha=n_b / n)
        self.m2.add_(m2_b).add_(delta.square_(), alpha=n_a * n_b / n)
        self.n_samples = n

    def result(self, *, axes: Mapping[str, Sequence[str]] | None = None) -> Moments:
        """The :class:`~tlprobe.analyses.moments.Moments` of every sample seen.

        Equal (to float rounding) to ``sample_moments(torch.cat(batches, -2), axes=axes)``, in
        its dtype (float32 unless the input was float64).

        Raises:
            TlprobeError: fewer than 2 samples, or a leading index whose samples are all zero.
        """
        check_min_samples(self.n_samples, 2, "a variance across samples", "collect more samples")
        assert self.mean is not None and self.m2 is not None
        var, mean = self.m2 / self.n_samples, self.mean
        total = (var + mean * mean).sum(-1)
        if bool((total == 0).any()):
            raise TlprobeError("some leading index has all-zero activations; rel_var is undefined there")
        dt = self.work_dtype
        return Moments(
            n_samples=self.n_samples,
            n_features=int(mean.shape[-1]),
            var=var.mean(-1).to(dt).cpu(),
            mean=mean.mean(-1).to(dt).cpu(),
            mean_abs=mean.abs().mean(-1).to(dt).cpu(),
            rel_var=(var.sum(-1) / total).to(dt).cpu(),
            axes=axes or {},
        )


class SimilarityAccumulator(_Float64Accumulator):
    """Streaming feature similarity, covariance spectrum and Q/K/V block statistics.

    State (float64, on the device of the first batch): ``n_samples``, ``mean`` ``[..., F]``,
    the centred co-moment ``comoment`` ``[..., F, F]`` (the sum over samples of
    ``(x - mean)(x - mean)^T``), the per-feature ``lo``/``hi`` (min and max, for the
    undefined-feature criterion of :func:`~tlprobe.analyses.similarity.feature_similarity`)
    and ``dtype``, the work dtype of the input (float32 for half/float32, float64 for float64).
    A batch's own mean and co-moment come from one batched matrix product, then merge with
    Chan et al.'s pairwise formula ``C = C_a + C_b + outer(delta, delta) n_a n_b / n``, so large
    mean offsets do not cancel.

    * :meth:`result`: the cosine, correlation or (unbiased) covariance matrix;
    * :meth:`eigenvalues`: the covariance spectrum, largest first; :meth:`variances`: its diagonal. ``result("covariance")``
      and :meth:`eigenvalues` are the dimensionality (PCA) path: there is no separate
      covariance accumulator;
    * :meth:`block_stats`: :func:`~tlprobe.analyses.similarity.qkv_block_similarity` of fused
      ``[Q | K | V]`` features (F = 3 n).

    The ``[..., F, F]`` state is held whole (its size is checked before it is allocated): for
    GPT-2 XL's 4800 Q/K/V coordinates that is 184 MB per leading index.

    Args:
        shape: ``(*leading, features)`` to create the state up front (zeros, n = 0): needed for
            :meth:`all_reduce` on a rank that may see no batch. Default: fixed by the first batch.
        device: where a pre-shaped state lives (default: the CPU; an accumulator that has seen
            no sample moves to its first batch's device).

    Example:
        >>> from tlprobe.analyses.similarity import feature_similarity
        >>> x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)) + 50
        >>> acc = SimilarityAccumulator().update(x[:25]).update(x[25:])
        >>> bool(torch.allclose(acc.result("correlation"), feature_similarity(x, "correlation"), atol=1e-4))
        True
        >>> acc.eigenvalues().shape
        torch.Size([3])
    """

    KIND: ClassVar[str] = "similarity"
    TENSORS: ClassVar[tuple[str, ...]] = ("mean", "comoment", "lo", "hi")

    mean: Float[torch.Tensor, "... features"] | None
    comoment: Float[torch.Tensor, "... features features"] | None
    lo: Float[torch.Tensor, "... features"] | None
    hi: Float[torch.Tensor, "... features"] | None

    def _zeros(self, shape: tuple[int, ...], device: torch.device) -> dict[str, torch.Tensor]:
        *lead, f = shape
        items = math.prod(lead)
        check_memory(
            2 * items * f * f * 8,
            f"SimilarityAccumulator of {f} features x {items} leading indices ([..., {f}, {f}] float64 co-moment)",
            "use fewer features or leading indices (e.g. one accumulator per layer)",
            device=device,
        )
        return {
            "mean": torch.zeros(shape, dtype=_F64, device=device),
            "comoment": torch.zeros((*shape, f), dtype=_F64, device=device),
            "lo": torch.full(shape, math.inf, dtype=_F64, device=device),
            "hi": torch.full(shape, -math.inf, dtype=_F64, device=device),
        }

    def update(self, batch: Float[torch.Tensor, "... samples features"]) -> SimilarityAccumulator:
        """Fold in ``batch`` ``[..., samples, features]`` (half precision counts as float32); returns self.

        Raises:
            TlprobeError: fewer than 2 dimensions, non-finite values, leading axes/features other
                than the first batch's, or a state too large for the memory.
        """
        x, dtype = _batch(batch)
        *lead, s, f = x.shape
        dev = self._fit((*lead, f), x.device, "this batch")
        if s == 0:
            return self
        x = x.to(device=dev, dtype=_F64).reshape(-1, s, f)
        mean = x.mean(-2)
        xc = x - mean.unsqueeze(-2)
        lo, hi = torch.aminmax(x, dim=-2)
        self._combine(s, mean.view(*lead, f), (xc.mT, xc), lo.view(*lead, f), hi.view(*lead, f))
        self.dtype = _wider(self.dtype, dtype)
        return self

    def merge(self, other: SimilarityAccumulator) -> SimilarityAccumulator:
        """Fold in ``other`` (another shard), in place; returns self.

        Raises:
            TlprobeError: another kind of accumulator, or another shape.
        """
        if self._merge_checked(other):
            dev = self.device
            assert other.mean is not None and other.comoment is not None
            assert other.lo is not None and other.hi is not None
            self._combine(
                other.n_samples, other.mean.to(dev), other.comoment.to(dev), other.lo.to(dev), other.hi.to(dev)
            )
            self.dtype = _wider(self.dtype, other.dtype)
        return self

    def _combine(self, n_b: int, mean_b: torch.Tensor, comoment_b, lo_b: torch.Tensor, hi_b: torch.Tensor) -> None:
        """Pairwise merge; ``comoment_b`` is a tensor, or ``(xc^T, xc)`` whose product it is."""
        assert self.mean is not None and self.comoment is not None and self.lo is not None and self.hi is not None
        f = self.mean.shape[-1]
        n_a = self.n_samples
        n = n_a + n_b
        delta = (mean_b - self.mean).reshape(-1, f)
        c = self.comoment.view(-1, f, f)
        if isinstance(comoment_b, tuple):
            c.baddbmm_(*comoment_b)  # the batch's co-moment, summed straight into the state
        else:
            c.add_(comoment_b.reshape(-1, f, f))
        c.baddbmm_(delta.unsqueeze(-1), delta.unsqueeze(-2), alpha=n_a * n_b / n)
        self.mean.add_(delta.view_as(self.mean), alpha=n_b / n)
        torch.minimum(self.lo, lo_b, out=self.lo)
        torch.maximum(self.hi, hi_b, out=self.hi)
        self.n_samples = n

    # -- results -------------------------------------------------------------------------------
    def _columns(self, method: str) -> tuple[torch.Tensor, _Columns]:
        """The raw ``[items, F, F]`` product (gram for cosine, co-moment for correlation) and column stats
        (:meth:`_column_stats`)."""
        assert self.mean is not None and self.comoment is not None
        f, n = self.mean.shape[-1], self.n_samples
        mean, c = self.mean.reshape(-1, f), self.comoment.view(-1, f, f)
        if method == "correlation":
            prod = c.clone()
        else:  # the raw gram: C + n outer(mean, mean)
            prod = torch.baddbmm(c, mean.unsqueeze(-1), mean.unsqueeze(-2), alpha=n)
        return prod, self._column_stats(method)

    def _column_stats(self, method: str) -> _Columns:
        """Norm and degeneracy of every ``[items, F]`` column, from the co-moment's diagonal and lo/hi.

        The criterion of :func:`~tlprobe.analyses.similarity.undefined_features`: a column's
        (centred) norm is at most ``eps * n * (amax + 1)``, ``amax = max |x - centre|`` (from
        lo/hi), ``eps`` that of the work dtype.
        """
        assert self.mean is not None and self.comoment is not None and self.lo is not None and self.hi is not None
        f, n = self.mean.shape[-1], self.n_samples
        mean, lo, hi = self.mean.reshape(-1, f), self.lo.reshape(-1, f), self.hi.reshape(-1, f)
        sq = torch.diagonal(self.comoment.view(-1, f, f), dim1=-2, dim2=-1)  # centred squares
        if method == "correlation":
            centre = mean
        else:  # the raw squares: the gram's diagonal, C_ii + n mean_i^2
            sq, centre = sq + n * mean.square(), torch.zeros_like(mean)
        norm = sq.clamp(min=0.0).sqrt()
        eps = torch.finfo(self.work_dtype).eps
        amax = torch.maximum(hi - centre, centre - lo)
        undefined = norm <= eps * n * (amax + 1)
        spread = hi - lo
        identical = (spread <= eps * n * (torch.maximum(hi.abs(), lo.abs()) + 1)).all(-1)
        return _Columns(n, mean if method == "correlation" else None, norm, undefined, spread, identical)

    def undefined_features(
        self, method: Literal["cosine", "correlation"] = "cosine"
    ) -> Bool[torch.Tensor, "... features"]:
        """Features whose similarity is undefined over the samples seen: all-zero (cosine) or
        constant (correlation), as :func:`~tlprobe.analyses.similarity.undefined_features` decides
        on the concatenated samples. ``.all(-1)`` marks leading indices whose samples are all identical.
        """
        check_choice(method, ("cosine", "correlation"), "method")
        assert self._shape is not None
        return self._column_stats(method).undefined.reshape(self._shape).cpu()

    def _normalised(self, method: str, fix: str, undefined: str = "raise", axes=None) -> tuple[torch.Tensor, _Columns]:
        """The ``[items, F, F]`` float64 cosine/correlation matrix (undefined columns divided by 1)."""
        assert self._shape is not None
        prod, cols = self._columns(method)
        if undefined == "raise" and bool(cols.undefined.any()):
            raise TlprobeError(_undefined_message(cols, method, self._shape[:-1], axes, fix))
        norm = torch.where(cols.undefined, torch.ones_like(cols.norm), cols.norm)
        return prod.div_(norm.unsqueeze(-1)).div_(norm.unsqueeze(-2)), cols

    def _check_samples(self, method: str) -> None:
        check_min_samples(
            self.n_samples,
            3 if method == "correlation" else 2,
            f"{method} similarity",
            "collect more samples (sentences) for the target",
        )

    def result(
        self, method: Literal["cosine", "correlation", "covariance"] = "cosine"
    ) -> Float[torch.Tensor, "... features features"]:
        """The ``[..., F, F]`` similarity of the features over every sample seen.

        Equal (to float rounding) to ``feature_similarity(torch.cat(batches, -2), method)``, in
        the work dtype. ``"covariance"`` is the unbiased ``C / (n - 1)``.

        Raises:
            TlprobeError: an unknown method, fewer than 2 samples (3 for correlation), or an
                all-zero (cosine) / constant (correlation) feature, where it is undefined.
        """
        check_choice(method, METHODS, "method")
        self._check_samples(method)
        assert self._shape is not None and self.comoment is not None
        if method == "covariance":
            return (self.comoment / (self.n_samples - 1)).to(self.work_dtype)
        sim, _ = self._normalised(method, "Drop those features or use another method")
        return sim.clamp_(-1.0, 1.0).view(*self._shape, self._shape[-1]).to(self.work_dtype)

    def variances(self) -> Float[torch.Tensor, "... features"]:
        """Unbiased per-feature variances (float64), from the co-moment's diagonal: no ``F x F`` copy.

        Equal to ``numpy.var(x, axis=-2, ddof=1)`` and to the diagonal of ``result("covariance")``.

        Raises:
            TlprobeError: fewer than 2 samples.
        """
        self._check_samples("covariance")
        assert self.comoment is not None
        return torch.diagonal(self.comoment, dim1=-2, dim2=-1) / (self.n_samples - 1)

    def eigenvalues(self) -> Float[torch.Tensor, "... features"]:
        """Eigenvalues of the unbiased covariance, largest first (float64): the PCA spectrum.

        Equal to ``numpy.linalg.eigvalsh(numpy.cov(x.T))[::-1]`` per leading index.

        Raises:
            TlprobeError: fewer than 2 samples.
        """
        self._check_samples("covariance")
        assert self.comoment is not None
        return torch.linalg.eigvalsh(self.comoment / (self.n_samples - 1)).flip(-1)

    def block_stats(
        self,
        method: Literal["cosine", "correlation"] = "cosine",
        *,
        bins: int = 60,
        value_range: tuple[float, float] = (-1.0, 1.0),
        extreme: float = 0.9,
        axes: Mapping[str, Sequence[str]] | None = None,
        undefined: Literal["raise", "nan"] = "raise",
    ) -> BlockStats:
        """The Q/K/V block statistics of fused ``[Q | K | V]`` features (F = 3 n).

        Equal (to float rounding) to ``qkv_block_similarity(torch.cat(batches, -2), method,
        bins=bins, value_range=value_range, extreme=extreme, axes=axes, undefined=undefined)``:
        the same binning (``floor((v - low) * bins / (high - low))``, values clamped into the range
        when it is narrower than [-1, 1], ``v == high`` in the last bin), QQ/KK/VV over their
        strict upper triangle and QK/QV/KV over the whole ``n x n`` block, ``frac_extreme``
        counting ``|s| > extreme``. Built from the whole float64 similarity matrix, batched over
        the leading indices.

        Args:
            method: ``"cosine"`` or ``"correlation"``.
            bins: histogram bins over ``value_range``.
            value_range: histogram range; values outside go to the first/last bin.
            extreme: threshold of ``frac_extreme``.
            axes: labels of the leading axes.
            undefined: ``"raise"`` refuses a leading index with an all-zero (cosine) / constant
                (correlation) feature; ``"nan"`` gives it NaN summaries and histogram row.

        Raises:
            TlprobeError: not ``3 * n`` features (n >= 2), too few samples, an undefined feature
                (with ``undefined="raise"``), bad ``bins``/``value_range``, or a working set too
                large for the memory.

        Example:
            >>> x = torch.randn(2, 30, 12, generator=torch.Generator().manual_seed(0))
            >>> st = SimilarityAccumulator().update(x[:, :10]).update(x[:, 10:]).block_stats(bins=10)
            >>> st.prob.shape, bool(torch.allclose(st.prob.sum(-1), torch.ones(2, 6)))
            (torch.Size([2, 6, 10]), True)
        """
        check_choice(method, ("cosine", "correlation"), "method")
        check_choice(undefined, ("raise", "nan"), "undefined")
        self._check_samples(method)
        assert self._shape is not None
        *lead, f = self._shape
        if f % 3:
            raise TlprobeError(f"a [Q | K | V] vector has 3 * n coordinates; got {f}")
        n = f // 3
        if n < 2:
            raise TlprobeError("each of Q, K, V needs at least 2 coordinates for the QQ/KK/VV blocks")
        bins = as_int(bins, "bins", minimum=1, fix="the number of histogram bins (--bins)")
        extreme = as_float(extreme, "extreme")
        lo, hi = as_float(value_range[0], "value_range[0]"), as_float(value_range[1], "value_range[1]")
        if not hi > lo:
            raise TlprobeError(f"value_range must be (low, high) with high > low, got {value_range}")
        items = math.prod(lead)
        nb = len(_PAIRS)
        check_memory(
            (items * f * f + 4 * items * n * n + items * nb * (bins + 1)) * 8,
            f"block_stats ({items} leading indices x {f} features, {bins} bins)",
            "use fewer leading indices, features or bins",
            device=self.device,
        )
        fix = "Drop those features, or pass undefined='nan' to get NaN for those leading indices"
        sim, cols = self._normalised(method, fix, undefined, axes)
        bad_items = cols.undefined.any(-1).cpu()
        dev = sim.device

        acc = torch.float64 if self.work_dtype == torch.float64 else torch.float32
        count = torch.tensor([n * (n - 1) // 2 if i == j else n * n for i, j in _PAIRS.values()])
        upper = torch.triu_indices(n, n, 1, device=dev)
        scale = bins / (hi - lo)
        needs_clamp = lo > -1.0 or hi < 1.0
        offsets = (torch.arange(items, device=dev) * (bins + 1)).unsqueeze(-1)
        prob = torch.empty(items, nb, bins, dtype=_F64)
        stats = torch.empty(4, items, nb, dtype=_F64)  # mean, std, mean_abs, frac_extreme
        for b, (i, j) in enumerate(_PAIRS.values()):
            block = sim[:, i * n : (i + 1) * n, j * n : (j + 1) * n]
            vals = block[:, upper[0], upper[1]] if i == j else block.reshape(items, n * n)
            mean = vals.mean(-1)
            mags = vals.abs()
            stats[0, :, b] = mean.cpu()
            stats[1, :, b] = (vals - mean.unsqueeze(-1)).square_().mean(-1).sqrt_().cpu()
            stats[2, :, b] = mags.mean(-1).cpu()
            stats[3, :, b] = ((mags > extreme).sum(-1).to(_F64) / int(count[b])).cpu()
            t = vals - lo
            if needs_clamp:
                t.clamp_(0.0, hi - lo)
            idx = t.mul_(scale).to(torch.long).clamp_(0, bins)  # t >= 0 (or just below): truncation is floor
            hist = torch.bincount((idx + offsets).view(-1), minlength=items * (bins + 1)).view(items, bins + 1)
            hist[:, bins - 1] += hist[:, bins]  # v == high: the last bin
            prob[:, b] = (hist[:, :bins].to(_F64) / int(count[b])).cpu()
        if bool(bad_items.any()):
            prob[bad_items] = math.nan
            stats[:, bad_items] = math.nan
        prob, stats = prob.to(acc), stats.to(acc)
        return BlockStats(
            method=method,
            blocks=tuple(_PAIRS),
            edges=torch.linspace(lo, hi, bins + 1, dtype=acc),
            prob=prob.reshape(*lead, nb, bins),
            mean=stats[0].reshape(*lead, nb),
            std=stats[1].reshape(*lead, nb),
            mean_abs=stats[2].reshape(*lead, nb),
            frac_extreme=stats[3].reshape(*lead, nb),
            count=count,
            extreme=float(extreme),
            axes=axes or {},
        )
