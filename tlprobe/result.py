"""The Result protocol: every bundle of numbers an analysis returns is a :class:`Result`.

A result is a frozen dataclass whose fields are tensors, plain values (``str``, ``int``,
``float``, ``bool``, ``None``), tuples, lists and dicts of those, or other results. The base
class gives every result the same behaviour:

* :meth:`Result.to_dict` / :meth:`Result.from_dict`: a JSON-ready dict (tensors as nested lists on
  the CPU, NaN as ``None``, with each tensor's dtype and shape under ``"_tensors"``) and back;
* :meth:`Result.save` / :func:`load`: a JSON file; the round trip is exact (``load(save(r)) == r``);
* :meth:`Result.rows`: a list of dicts for a table (one name for every result's table);
* ``axes``: the labels of the leading axes, e.g. ``{"population": ("target", "non-target")}``.
  Tensor fields whose shape (in the jaxtyping annotation) starts with ``...`` carry them;
* ``result[i]``, ``result["target"]``, ``result["L3H7"]`` (a ``[layer, head]`` result whose
  labels join to the key): selection along the leading axes, labels kept;
* :meth:`Result.head`: one head of a per-head result, by ``"L3H7"`` or ``(3, 7)``;
* :meth:`Result._repr_html_`: a compact summary in a notebook (first rows and the main figure,
  see :mod:`tlprobe.report.notebook`); :meth:`Result.figure`: the main figure, drawn by
  :mod:`tlprobe.figures` (which registers one per result type).

Example:
    >>> import torch
    >>> from dataclasses import dataclass
    >>> from jaxtyping import Float
    >>> @dataclass(frozen=True, eq=False)
    ... class Spread(Result):
    ...     std: Float[torch.Tensor, "..."]
    >>> r = Spread(std=torch.tensor([0.5, 2.0]), axes={"layer": ("L0", "L1")})
    >>> r.rows()
    [{'layer': 'L0', 'std': 0.5}, {'layer': 'L1', 'std': 2.0}]
    >>> float(r["L1"].std), Result.from_dict(r.to_dict()) == r
    (2.0, True)
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import json
import math
import os
import pathlib
import re
import tempfile
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
import torch
from jaxtyping import Float  # noqa: F401  (string annotations of result classes defined in doctests resolve here)

from tlprobe.errors import TlprobeError

#: Result type name -> class, filled as result classes are defined (for :func:`load`).
_TYPES: dict[str, type[Result]] = {}
#: Result type -> function drawing its main figure (registered by :mod:`tlprobe.figures`).
_FIGURES: dict[type, Callable[..., Any]] = {}
#: Rows shown by the notebook summary of a result.
REPR_ROWS = 12


@dataclass(frozen=True, eq=False)
class Result:
    """Base of every tlprobe result (see the module docstring for the protocol).

    Attributes:
        axes: labels of the leading axes, in order: axis name -> one label per index.
    """

    axes: Mapping[str, Sequence[str]] = field(default_factory=dict, kw_only=True)

    _lead_fields: ClassVar[tuple[str, ...] | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        other = _TYPES.get(cls.__name__)
        if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"two result types named {cls.__name__}: {other.__module__} and {cls.__module__}")
        _TYPES[cls.__name__] = cls
        cls._lead_fields = None

    def __post_init__(self):
        axes: dict[str, tuple[str, ...]] = {str(k): tuple(str(v) for v in labels) for k, labels in self.axes.items()}
        object.__setattr__(self, "axes", axes)  # normalised: labels are tuples of strings
        sizes = tuple(len(v) for v in axes.values())
        for name in self._leading_fields():
            t = getattr(self, name)
            if isinstance(t, torch.Tensor) and tuple(t.shape[: len(sizes)]) != sizes:
                raise TlprobeError(
                    f"{type(self).__name__}.{name} has shape {tuple(t.shape)} but the axes "
                    f"{list(axes)} have sizes {list(sizes)}; give one label per leading index"
                )

    # -- fields ----------------------------------------------------------------------------
    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def _leading_fields(cls) -> tuple[str, ...]:
        """Tensor fields whose annotated shape starts with ``...`` (they carry the leading axes)."""
        if cls._lead_fields is None:
            hints = cls._hints()
            cls._lead_fields = tuple(
                f.name for f in dataclasses.fields(cls) if _dims(hints.get(f.name)).startswith("...")
            )
        return cls._lead_fields

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("save", True)}

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready dict: tensors as nested lists (CPU), NaN as ``None``, results nested.

        ``"_type"`` names the class and ``"_tensors"`` records each tensor field's dtype and shape,
        so :meth:`from_dict` rebuilds the same tensors exactly.
        """
        out: dict[str, Any] = {"_type": type(self).__name__}
        tensors: dict[str, dict] = {}
        for name, value in self._fields().items():
            if isinstance(value, torch.Tensor):
                tensors[name] = {"dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape)}
            elif isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                tensors[name] = {
                    "dtype": {k: str(v.dtype).removeprefix("torch.") for k, v in value.items()},
                    "shape": {k: list(v.shape) for k, v in value.items()},
                }
            out[name] = jsonable(value)
        if tensors:
            out["_tensors"] = tensors
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Self:
        """The result that :meth:`to_dict` described (the class is read from ``"_type"``).

        Raises:
            TlprobeError: the dict was not written by :meth:`to_dict` of a known result type.
        """
        if not isinstance(data, Mapping) or "_type" not in data:
            raise TlprobeError("not a tlprobe result: the dict has no '_type' (was it written by Result.to_dict?)")
        kind = _TYPES.get(str(data["_type"]))
        if kind is None:
            raise TlprobeError(f"unknown result type {data['_type']!r}; import the module that defines it first")
        if not issubclass(kind, cls):
            raise TlprobeError(f"{data['_type']} is not a {cls.__name__}")
        hints = kind._hints()
        tensors = data.get("_tensors", {})
        kwargs = {}
        for f in dataclasses.fields(kind):
            if not f.metadata.get("save", True):
                continue
            if f.name not in data:
                raise TlprobeError(f"{data['_type']} dict lacks the field {f.name!r}")
            value = data[f.name]
            if f.name in tensors:
                spec = tensors[f.name]
                if isinstance(spec["dtype"], Mapping):
                    value = {k: _tensor(v, spec["dtype"][k], spec["shape"][k]) for k, v in value.items()}
                else:
                    value = _tensor(value, spec["dtype"], spec["shape"])
            else:
                value = _decode(value, hints.get(f.name, Any))
            kwargs[f.name] = value
        return kind(**kwargs)

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write :meth:`to_dict` as JSON (atomically: a complete file or the previous one)."""
        return write_json(self.to_dict(), path)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_equal(a, b) for a, b in zip(self._fields().values(), other._fields().values()))  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # results hold tensors: compared by value, not hashed

    # -- selection -------------------------------------------------------------------------
    def __getitem__(self, key) -> Self:
        """Select along the leading axes by index, label or slice; a tuple selects several axes.

        A string that is not a label of the first axis may join labels of the first two axes,
        so ``result["L3H7"]`` is ``result["L3"]["H7"]``.
        """
        keys = key if isinstance(key, tuple) else (key,)
        out = self
        for k in keys:
            out = out._select(k)
        return out

    def _select(self, key) -> Self:
        if not self.axes:
            raise TlprobeError(f"{type(self).__name__} has no labelled leading axes to select from")
        (axis, labels), *rest = self.axes.items()
        if isinstance(key, str) and key not in labels and rest:
            inner = rest[0][1]
            for i, a in enumerate(labels):
                if key.startswith(a) and key[len(a) :] in inner:
                    return self._select(i)._select(key[len(a) :])
        index = _index(key, labels, axis)
        changes: dict[str, Any] = {
            name: getattr(self, name)[index]
            for name in self._leading_fields()
            if isinstance(getattr(self, name), torch.Tensor)
        }
        axes = dict(rest)
        if isinstance(index, slice):
            axes = {axis: labels[index], **axes}
        changes["axes"] = axes
        return dataclasses.replace(self, **changes)

    def head(self, key: str | int | tuple[int, int]) -> Self:
        """One attention head's values from a per-head result; its other leading axes are kept.

        The head axes may sit anywhere among the leading axes (e.g. after a ``population``
        axis). Three layouts are understood:

        * a ``layer`` axis (``"L0"``, ...) and a ``head`` axis (``"H0"``, ...): both are
          selected, so the key must name the layer (``"L3H7"`` or ``(3, 7)``);
        * a ``head`` axis whose labels carry the layer (``"L3H0"``, ...): ``"L3H7"`` or
          ``(3, 7)``, and also ``"H7"`` or ``7`` when all its heads are from one layer;
        * a ``head`` axis of bare labels (``"H0"``, ...): ``"H7"`` or ``7`` only. A key with a
          layer is refused: the result does not record which layer its heads are from, so
          ``"L3H7"`` could not be checked and would silently give head 7 of whatever layer
          the result was computed at.

        Args:
            key: ``"L3H7"``, ``(3, 7)``, ``"H7"`` or ``7``; integers are head numbers (as in
                ``"H7"``), not positions along the axis.

        Returns:
            A result of the same type without the ``layer`` and ``head`` axes.

        Raises:
            TlprobeError: no ``head`` axis, a malformed key, or a head or layer the result does
                not hold (the message says what it holds).

        Example:
            >>> @dataclass(frozen=True, eq=False)
            ... class HeadNorms(Result):
            ...     norm: Float[torch.Tensor, "..."]
            >>> r = HeadNorms(torch.arange(6.0).reshape(2, 3), axes={"layer": ("L0", "L1"), "head": ("H0", "H1", "H2")})
            >>> float(r.head("L1H2").norm), float(r.head((1, 2)).norm), r.head("L1H2").axes
            (5.0, 5.0, {})
        """
        # Imported here, not at the top: tlprobe.access imports this module (some access types are
        # results), so a top-level import would be circular.
        from tlprobe.access.labels import head_label, layer_labels, parse_head, parse_head_label

        names = ", ".join(self.axes) or "none"
        if "head" not in self.axes:
            raise TlprobeError(
                f"this result has no head axis (axes: {names}); head() needs a per-head result, "
                "select along its other axes with result[...]"
            )
        layer, number = parse_head(key)
        wanted = head_label(number, layer)
        labels = self.axes["head"]
        try:
            heads = [parse_head_label(label) for label in labels]
        except TlprobeError:
            raise TlprobeError(
                f"the head axis is labelled {_span(labels)}, not with head names like 'H7' or 'L3H7'; "
                "select with result[...]"
            ) from None
        picks: dict[str, int] = {}
        if "layer" in self.axes:
            layers = self.axes["layer"]
            if layer is None:
                raise TlprobeError(
                    f"head {key!r} does not say which layer, and this result has layers {_span(layers)}; "
                    f"give one, e.g. {head_label(number, 0)!r} or (0, {number})"
                )
            (layer_label,) = layer_labels([layer])
            if layer_label not in layers:
                raise TlprobeError(f"no head {wanted}: layers are {_span(layers)}")
            picks["layer"] = layers.index(layer_label)
            found = [i for i, (lay, h) in enumerate(heads) if h == number and lay in (None, layer)]
        else:
            held = sorted({lay for lay, _ in heads if lay is not None})  # the layers the head labels name
            if not held and layer is not None:
                raise TlprobeError(
                    f"this result's heads carry no layer (head axis {_span(labels)}), so {wanted!r} cannot be "
                    f"checked against it; select with {head_label(number)!r} or {number}"
                )
            if layer is None and len(held) > 1:
                raise TlprobeError(
                    f"head {key!r} is ambiguous: the head axis holds heads of several layers ({_span(labels)}); "
                    f"give the layer, e.g. {head_label(number, held[-1])!r}"
                )
            if layer is None and held:
                layer = held[0]
            elif layer is not None and layer not in held:
                only = f"from layer {layer_labels(held)[0]} only " if len(held) == 1 else ""
                raise TlprobeError(f"no head {wanted}: this result's heads are {only}({_span(labels)})")
            found = [i for i, (lay, h) in enumerate(heads) if (lay, h) == (layer, number)]
        if not found:
            raise TlprobeError(f"no head {head_label(number, layer)}: heads are {_span(labels)}")
        picks["head"] = found[0]
        return self._take(picks)

    def _take(self, picks: Mapping[str, int]) -> Self:
        """Index the named leading axes (dropping them), keeping the other axes in their order."""
        index = tuple(picks.get(axis, slice(None)) for axis in self.axes)
        changes: dict[str, Any] = {
            name: getattr(self, name)[index]
            for name in self._leading_fields()
            if isinstance(getattr(self, name), torch.Tensor)
        }
        changes["axes"] = {axis: labels for axis, labels in self.axes.items() if axis not in picks}
        return dataclasses.replace(self, **changes)

    # -- tables, display, figures ----------------------------------------------------------
    def rows(self) -> list[dict]:
        """Rows for a table: one per leading index, with the axis labels and each per-index number.

        The default covers tensor fields shaped exactly like the leading axes (and scalar
        fields when there are no axes); result types with richer shapes override it.
        """
        sizes = tuple(len(v) for v in self.axes.values())
        scalars = {
            name: getattr(self, name)
            for name in self._leading_fields()
            if isinstance(getattr(self, name), torch.Tensor) and tuple(getattr(self, name).shape) == sizes
        }
        if not sizes:
            plain = {k: v for k, v in self._fields().items() if isinstance(v, (int, float, str, bool)) and k != "axes"}
            return [{**plain, **{k: _py(v) for k, v in scalars.items()}}]
        rows = []
        for idx in np.ndindex(*sizes):
            row: dict[str, Any] = {axis: labels[i] for (axis, labels), i in zip(self.axes.items(), idx)}
            row.update({k: _py(v[idx]) for k, v in scalars.items()})
            rows.append(row)
        return rows

    def figure(self, **options):
        """The main plotly figure of this result (drawn by :mod:`tlprobe.figures`)."""
        # Imported here on purpose: figures register themselves when tlprobe.figures is imported,
        # and analyses (below figures in the layering) must not import plotly code at import time.
        importlib.import_module("tlprobe.figures")
        for kind in type(self).__mro__:
            if kind in _FIGURES:
                return _FIGURES[kind](self, **options)
        raise TlprobeError(f"{type(self).__name__} has no figure; use rows() for a table")

    def _repr_html_(self) -> str:
        """In a notebook: the type and axes, the first rows, and the main figure (offline)."""
        # Imported here on purpose: notebook display sits in the report layer, above this module.
        notebook = importlib.import_module("tlprobe.report.notebook")
        return notebook.result_html(self, max_rows=REPR_ROWS)


def register_figure(kind: type[Result]) -> Callable:
    """Decorator: ``fn(result, **options) -> Figure`` is the main figure of ``kind`` results."""

    def wrap(fn):
        _FIGURES[kind] = fn
        return fn

    return wrap


def load(path: str | os.PathLike) -> Result:
    """Read a result written by :meth:`Result.save` (or a recipe's ``results.json``).

    Raises:
        TlprobeError: the file is missing, not JSON, or not a tlprobe result.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise TlprobeError(f"file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TlprobeError(f"{p} is not a JSON file written by tlprobe: {exc}") from exc
    _import_result_modules()
    return Result.from_dict(data)


def _import_result_modules() -> None:
    """Define every built-in result type (so :func:`load` knows them)."""
    # Imported by name at call time: result types register when their modules are imported, and
    # this base module sits below all of them in the layering.
    importlib.import_module("tlprobe.analyses")
    importlib.import_module("tlprobe.recipes.common")


def write_json(data, path: str | os.PathLike) -> pathlib.Path:
    """Write JSON atomically (temporary file in the same folder, then rename); no NaN allowed.

    Raises:
        TlprobeError: the data holds NaN or infinity (a bug upstream, not a number to ship).
    """
    p = pathlib.Path(path)
    try:
        text = json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n"
    except ValueError as exc:
        raise TlprobeError(f"results contain NaN or infinity, refusing to write {p}: {exc}") from exc
    write_text_atomic(p, text)
    return p


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """``path`` holds either its previous content or ``text``, never a part of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def index_rows(axes: Mapping[str, Sequence[str]], lead: Sequence[int]) -> Iterator[tuple[dict, tuple[int, ...]]]:
    """``(labels, index)`` for every leading index of sizes ``lead``, row-major, for ``rows()``.

    Axes without labels (``lead`` longer than ``axes``) are named by position, ``"axis 1"``, with
    their indices as labels.

    Example:
        >>> [labels for labels, _ in index_rows({"layer": ("L0", "L1")}, (2, 2))][:2]
        [{'layer': 'L0', 'axis 1': '0'}, {'layer': 'L0', 'axis 1': '1'}]
    """
    names = [*axes, *(f"axis {d}" for d in range(len(axes), len(lead)))]
    labels = [*axes.values(), *(tuple(str(i) for i in range(n)) for n in lead[len(axes) :])]
    for idx in np.ndindex(*lead):
        yield {a: lab[i] for a, lab, i in zip(names, labels, idx)}, idx


def fmt_cell(v: Any, float_fmt: str = "{:.4g}") -> str:
    """A table cell's text: floats with ``float_fmt``, NaN (an undefined value) as ``undefined``.

    Example:
        >>> fmt_cell(0.123456), fmt_cell(float("nan")), fmt_cell("L3H7"), fmt_cell(3)
        ('0.1235', 'undefined', 'L3H7', '3')
    """
    if isinstance(v, float):
        return "undefined" if math.isnan(v) else float_fmt.format(v)
    return str(v)


def rows_html(rows: list[dict], float_fmt: str = "{:.4g}") -> str:
    """A small escaped HTML table (columns: the union of the rows' keys, in order)."""
    if not rows:
        return "<p>(no rows)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)

    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt_cell(r.get(c, ''), float_fmt))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


# -- helpers -------------------------------------------------------------------------------


def _dims(hint) -> str:
    """The jaxtyping shape string of an annotation (also inside ``X | None``), or ``""``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((d for d in map(_dims, typing.get_args(hint)) if d), "")
    return str(getattr(hint, "dim_str", ""))


def _py(v):
    """A 0-d tensor or numpy scalar as a Python number (NaN stays NaN)."""
    if isinstance(v, torch.Tensor):
        v = v.item()
    elif isinstance(v, np.generic):
        v = v.item()
    return v


def jsonable(value) -> Any:
    """JSON-ready copy: tensors and arrays to lists (NaN to None), results to dicts, tuples to lists.

    Example:
        >>> jsonable({"t": torch.tensor([1.5, float("nan")]), "k": (1, 2)})
        {'t': [1.5, None], 'k': [1, 2]}
    """
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_complex():
            raise TlprobeError("complex tensors cannot be written to JSON")
        return _nan_to_none(value.tolist()) if value.is_floating_point() else value.tolist()
    if isinstance(value, np.ndarray):
        return _nan_to_none(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


def _nan_to_none(data):
    if isinstance(data, list):
        return [_nan_to_none(v) for v in data]
    if isinstance(data, float) and math.isnan(data):
        return None
    return data


def _tensor(data, dtype: str, shape: list[int]) -> torch.Tensor:
    torch_dtype = getattr(torch, dtype)
    if torch_dtype.is_floating_point:
        arr = np.array(data, dtype=np.float64)  # None -> NaN
    else:
        arr = np.array(data, dtype=np.int64 if torch_dtype != torch.bool else np.bool_)
    return torch.from_numpy(arr.reshape(shape)).to(torch_dtype)


def _decode(value, hint):
    """Undo :func:`jsonable` for a plain (non-tensor) field, guided by its type annotation."""
    if isinstance(value, Mapping) and "_type" in value:
        return Result.from_dict(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return math.nan if hint is float else None
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _decode(value, options[0]) if len(options) == 1 else value
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0]) for v in value)
        if args and len(args) == len(value):
            return tuple(_decode(v, a) for v, a in zip(value, args))
        return tuple(value)
    if origin is list and isinstance(value, list):
        return [_decode(v, args[0] if args else Any) for v in value]
    if origin in (dict, Mapping) and isinstance(value, Mapping):
        inner = args[1] if len(args) == 2 else Any
        return {k: _decode(v, inner) for k, v in value.items()}
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.is_floating_point():
            return bool(((a == b) | (a.isnan() & b.isnan())).all())
        return torch.equal(a, b)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _span(labels: Sequence[str]) -> str:
    """Labels for a message: ``"L0..L5"`` for a consecutive run, else the first few."""
    parts = [re.fullmatch(r"(.*?)([0-9]+)", label) for label in labels]
    if len(labels) > 2 and all(parts):
        stems = {p.group(1) for p in parts if p}
        numbers = [int(p.group(2)) for p in parts if p]
        if len(stems) == 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return f"{labels[0]}..{labels[-1]}"
    return ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")


def _index(key, labels: Sequence[str], axis: str):
    if isinstance(key, slice):
        return key
    if isinstance(key, str):
        if key not in labels:
            shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
            raise TlprobeError(f"no {axis} labelled {key!r}; labels: {shown}")
        return labels.index(key)
    try:
        i = int(key.__index__())
    except (AttributeError, TypeError):
        raise TlprobeError(f"select {axis} by an integer, a label or a slice, got {key!r}") from None
    if not -len(labels) <= i < len(labels):
        raise TlprobeError(f"{axis} index {i} is out of range (there are {len(labels)})")
    return i % len(labels)
