"""Labels of layers, heads and residual-stream depths, in TransformerLens' spelling.

Results keep these labels on their leading axes (``result.axes``), so ``result["L3"]["H7"]`` or
``result["L3H7"]`` selects a head and figures read their tick labels from the result.
"""

from __future__ import annotations

from collections.abc import Sequence


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
    prefix = "" if layer is None else f"L{int(layer)}"
    return tuple(f"{prefix}H{h}" for h in range(int(n_heads)))


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
