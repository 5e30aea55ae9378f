"""Attention views (circuitsvis)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int

from tlprobe.errors import TlprobeError
from tlprobe.figures.views import CircuitsVisView, circuitsvis_view


def attention_heads_view(
    pattern: Float[torch.Tensor, "head q_pos k_pos"],
    tokens: list[str],
    layer: int,
    *,
    causal: bool = True,
    heads: list[int] | None = None,
    decimals: int = 4,
    mask: Int[torch.Tensor, " pos"] | None = None,
) -> CircuitsVisView:
    """circuitsvis ``AttentionHeads`` for one prompt at one layer, heads named ``L{layer}H{head}``.

    Args:
        pattern: ``[head, q_pos, k_pos]`` attention probabilities of one prompt: unpadded, or
            padded (either side) together with ``mask``.
        tokens: the prompt's real tokens as strings (``len == q_pos`` after masking); drawn on a
            canvas by circuitsvis, so passed unchanged.
        layer: the layer, for the head names.
        causal: mask the upper triangle (decoders); ``False`` for encoders.
        heads: the head indices present in ``pattern`` (default ``0..head-1``).
        decimals: rounding of the attention values (4 decimals keep 12 heads x 128 x 128 at
            about 1.6 MB instead of 4.4 MB).
        mask: ``[pos]`` attention mask of the padded prompt (1 = real token); its real positions
            are kept on both axes.

    Example:
        >>> p = torch.tensor([[[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.0, 0.0, 0.0]]])
        >>> v = attention_heads_view(p, ["a", "b"], layer=2, mask=torch.tensor([1, 1, 0]))
        >>> v.props["attentionHeadNames"], v.props["attention"]
        (['L2H0'], [[[1.0, 0.0], [0.3, 0.7]]])
    """
    if pattern.ndim != 3:
        raise TlprobeError(f"pattern has shape {tuple(pattern.shape)}; expected [head, q_pos, k_pos] for one prompt")
    if mask is not None:
        if mask.ndim != 1 or mask.shape[0] != pattern.shape[-1]:
            raise TlprobeError(
                f"mask has shape {tuple(mask.shape)}; expected [{pattern.shape[-1]}] (the prompt's positions)"
            )
        keep = mask.to(pattern.device).bool()
        pattern = pattern[:, keep][:, :, keep]
    if pattern.shape[1] != pattern.shape[2] or pattern.shape[1] != len(tokens):
        raise TlprobeError(
            f"pattern has shape {tuple(pattern.shape)} for {len(tokens)} tokens; expected [head, n, n] with "
            "n = tokens (pass mask= for a padded prompt)"
        )
    heads = list(range(pattern.shape[0])) if heads is None else list(heads)
    if len(heads) != pattern.shape[0]:
        raise TlprobeError(f"{len(heads)} head indices given for {pattern.shape[0]} heads in pattern")
    return circuitsvis_view(
        "AttentionHeads",
        decimals=decimals,
        attention=pattern.detach().float(),
        tokens=list(tokens),
        attentionHeadNames=[f"L{layer}H{h}" for h in heads],
        maskUpperTri=bool(causal),
    )
