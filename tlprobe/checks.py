"""Input validation shared by the public entry points and recipes (never ``assert``)."""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Sequence
from typing import Any

import torch

from tlprobe.errors import TlprobeError


def as_tensor(x, name: str) -> torch.Tensor:
    """Return ``x`` as a real tensor (numpy arrays and lists are converted, devices kept).

    A tensor that requires grad is detached (statistics are not differentiated); complex input
    is refused (its imaginary part would be lost); ``None`` and other objects are refused.
    """
    if not isinstance(x, torch.Tensor):
        if x is None or isinstance(x, (str, bytes, dict)):
            raise TlprobeError(f"{name} must be a tensor or array, got {type(x).__name__}")
        try:
            x = torch.as_tensor(x)
        except Exception as exc:
            raise TlprobeError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from exc
    if x.is_complex():
        raise TlprobeError(f"{name} is complex ({x.dtype}); pass a real tensor (e.g. x.real or x.abs())")
    return x.detach() if x.requires_grad else x


def as_int(value, what: str, *, minimum: int | None = None, maximum: int | None = None, fix: str = "") -> int:
    """``value`` as a Python int: ints, numpy integers and one-element integer tensors are accepted.

    Booleans, floats (also ``3.0``) and strings are refused, as are values outside
    ``[minimum, maximum]``; the message names ``what`` and, if given, ``fix``.

    Example:
        >>> import numpy as np
        >>> as_int(np.int64(3), "layer"), as_int(torch.tensor(2), "layer", minimum=0)
        (3, 2)
    """
    v: Any = value
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
        v = v.reshape(()).item()
    out = None
    if not isinstance(v, bool) and str(getattr(v, "dtype", "")) != "bool":  # numpy.bool_ is no integer
        try:
            out = operator.index(v)
        except TypeError:
            out = None
    tail = f"; {fix}" if fix else ""
    if out is None:
        raise TlprobeError(f"{what} must be an integer, got {value!r} ({type(value).__name__}){tail}")
    if minimum is not None and out < minimum or maximum is not None and out > maximum:
        lo = "" if minimum is None else f">= {minimum}"
        hi = "" if maximum is None else f"<= {maximum}"
        raise TlprobeError(f"{what} must be {' and '.join(b for b in (lo, hi) if b)}, got {out}{tail}")
    return out


def as_float(
    value, what: str, *, minimum: float | None = None, positive: bool = False, maximum: float | None = None
) -> float:
    """``value`` as a finite Python float (NaN and inf refused), optionally ``> 0`` or within bounds.

    Example:
        >>> as_float(0.5, "noise", minimum=0.0)
        0.5
    """
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise TlprobeError(f"{what} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise TlprobeError(f"{what} must be a number, got {value!r}") from exc
    if not math.isfinite(out):
        raise TlprobeError(f"{what} must be a finite number, got {out}")
    if positive and out <= 0:
        raise TlprobeError(f"{what} must be > 0, got {out}")
    if minimum is not None and out < minimum:
        raise TlprobeError(f"{what} must be >= {minimum}, got {out}")
    if maximum is not None and out > maximum:
        raise TlprobeError(f"{what} must be <= {maximum}, got {out}")
    return out


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes that can be allocated now on ``device``: free CUDA memory, else the host's available RAM."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 62


#: Largest fraction of the available memory one planned allocation may take.
MEMORY_FRACTION = 0.8


def gib(n_bytes: float) -> str:
    """``3.2e9 -> '2.98 GiB'``."""
    return f"{n_bytes / 2**30:.2f} GiB"


def check_memory(n_bytes: float, what: str, fix: str, *, device: torch.device | str | None = None) -> None:
    """Refuse, before allocating, a working set of ``n_bytes`` that would not fit on ``device``.

    Raises when ``n_bytes`` exceeds :data:`MEMORY_FRACTION` of :func:`available_memory`, with the
    estimate, what is available, and ``fix`` (the option to change), e.g. ``needs ~4.47 GiB for
    the histograms of bins=100000000; 20.1 GiB available; lower --bins``.
    """
    avail = available_memory(device)
    if n_bytes > MEMORY_FRACTION * avail:
        raise TlprobeError(f"{what} needs ~{gib(n_bytes)}; {gib(avail)} available; {fix}")


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
    """Return ``i`` as a non-negative index into ``range(n)`` (negative counts from the end).

    numpy and torch integer scalars are accepted.
    """
    i = as_int(i, what)
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
