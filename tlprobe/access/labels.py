"""Labels of layers, heads and residual-stream depths, in TransformerLens' spelling.

Results keep these labels on their leading axes (``result.axes``), so ``result["L3"]["H7"]`` or
``result["L3H7"]`` selects a head and figures read their tick labels from the result.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tlprobe.checks import as_int
from tlprobe.errors import TlprobeError

#: A head's name: ``"L3H7"`` (layer 3, head 7) or ``"H7"`` (head 7 of a layer given elsewhere).
_HEAD_LABEL = re.compile(r"(?:L([0-9]+))?H([0-9]+)")


def layer_labels(layers: int | Sequence[int]) -> tuple[str, ...]:
    """``"L0", "L1", ...`` for ``n`` layers (or for the given layer indices).

    Example:
        >>> layer_labels(3), layer_labels([2, 5])
        (('L0', 'L1', 'L2'), ('L2', 'L5'))
    """
    indices = range(layers) if isinstance(layers, int) else layers
    return tuple(f"L{int(i)}" for i in indices)


def head_labels(n_heads: int, layer: int | None = None) -> tuple[str, ...]:
    """``"H0", "H1", ...``, or with a layer the full names ``"L3H0", "L3H1", ...``.

    On a ``[layer, head]`` result the layer axis carries ``"L3"`` and the head axis ``"H7"``;
    their join ``"L3H7"`` is the TransformerLens name of the head.

    Example:
        >>> head_labels(2), head_labels(2, layer=3)
        (('H0', 'H1'), ('L3H0', 'L3H1'))
    """
    return tuple(head_label(h, layer) for h in range(int(n_heads)))


def head_label(head: int, layer: int | None = None) -> str:
    """One head's label: ``"H7"``, or with a layer ``"L3H7"`` (see :func:`head_labels`).

    Example:
        >>> head_label(7), head_label(7, layer=3)
        ('H7', 'L3H7')
    """
    return ("" if layer is None else f"L{int(layer)}") + f"H{int(head)}"


def parse_head_label(label: str) -> tuple[int | None, int]:
    """The ``(layer, head)`` a head label names; ``layer`` is ``None`` for a bare ``"H7"``.

    The inverse of :func:`head_label` (and of joining a :func:`layer_labels` label with a
    :func:`head_labels` one).

    Raises:
        TlprobeError: ``label`` is not spelled ``"L<layer>H<head>"`` or ``"H<head>"``.

    Example:
        >>> parse_head_label("L3H7"), parse_head_label("H7")
        ((3, 7), (None, 7))
    """
    match = _HEAD_LABEL.fullmatch(label) if isinstance(label, str) else None
    if match is None:
        raise TlprobeError(f"not a head label: {label!r}; write 'L3H7' (layer 3, head 7) or 'H7' (head 7)")
    layer, head = match.groups()
    return (None if layer is None else int(layer)), int(head)


def parse_head(key) -> tuple[int | None, int]:
    """The ``(layer, head)`` of a head given as ``"L3H7"``, ``(3, 7)``, ``"H7"`` or ``7``.

    Integers are head numbers (as in ``"H7"``), not positions along an axis; ``layer`` is
    ``None`` when the key does not name one.

    Raises:
        TlprobeError: any other key (a negative number, a float, a malformed label, ...).

    Example:
        >>> parse_head("L3H7"), parse_head((3, 7)), parse_head(7)
        ((3, 7), (3, 7), (None, 7))
    """
    if isinstance(key, str):
        return parse_head_label(key)
    fix = "name a head as 'L3H7', (3, 7), 'H7' or 7"
    if isinstance(key, tuple):
        if len(key) != 2:
            raise TlprobeError(f"a head tuple is (layer, head), got {key!r}; {fix}")
        return as_int(key[0], "layer", minimum=0, fix=fix), as_int(key[1], "head", minimum=0, fix=fix)
    return None, as_int(key, "head", minimum=0, fix=fix)


def resid_labels(n_layers: int, style: str = "L") -> tuple[str, ...]:
    """Labels of the ``n_layers + 1`` residual-stream depths of :func:`tlprobe.access.resid_stack`.

    ``"embed"`` (the input of block 0), then one per block output: ``"L0", ...`` (``style="L"``)
    or ``"block 0", ...`` (``style="block"``).

    Example:
        >>> resid_labels(2), resid_labels(1, style="block")
        (('embed', 'L0', 'L1'), ('embed', 'block 0'))
    """
    blocks = layer_labels(n_layers) if style == "L" else tuple(f"block {i}" for i in range(n_layers))
    return ("embed", *blocks)
