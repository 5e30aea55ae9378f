"""Input validation shared by the public entry points and recipes (never ``assert``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tlprobe.errors import TlprobeError


def as_tensor(x, name: str) -> torch.Tensor:
    """Return ``x`` as a tensor (numpy arrays and lists are converted, devices kept)."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except Exception as exc:  # pragma: no cover - message path
        raise TlprobeError(f"{name} must be a tensor or array, got {type(x).__name__}") from exc


def check_ndim(x: torch.Tensor, name: str, min_ndim: int, shape_doc: str) -> None:
    """Raise unless ``x`` has at least ``min_ndim`` dimensions."""
    if x.ndim < min_ndim:
        raise TlprobeError(f"{name} has shape {tuple(x.shape)}; expected {shape_doc} (at least {min_ndim} dimensions)")


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise if ``x`` holds NaN or infinite values, saying where the first one is."""
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0].tolist())
            n = int(bad.sum())
            raise TlprobeError(
                f"{name} contains {n} non-finite value(s) (NaN or inf), first at index {first}; "
                "check the activations (e.g. float16 overflow) or drop those samples"
            )


def check_min_samples(n: int, minimum: int, what: str, fix: str = "") -> None:
    """Raise if fewer than ``minimum`` samples are available."""
    if n < minimum:
        msg = f"too few samples for {what}: got {n}, need at least {minimum}"
        raise TlprobeError(msg + (f"; {fix}" if fix else ""))


def check_index(i: int, n: int, what: str) -> int:
    """Return ``i`` as a non-negative index into ``range(n)`` (negative counts from the end)."""
    if not isinstance(i, int) or isinstance(i, bool):
        raise TlprobeError(f"{what} must be an integer, got {i!r}")
    if not -n <= i < n:
        raise TlprobeError(f"{what} {i} is out of range: the model has {n} (valid: 0..{n - 1})")
    return i % n


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise TlprobeError(f"unknown {what} {value!r}; choose one of: {', '.join(map(repr, choices))}")
    return value


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are upcast to float32 for statistics (float64 stays float64)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    if not x.is_floating_point():
        return x.float()
    return x
