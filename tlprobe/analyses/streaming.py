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
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import torch

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
