"""Attention views (circuitsvis)."""

from __future__ import annotations

import torch
from jaxtyping import Float

from tlprobe.errors import TlprobeError
from tlprobe.figures.views import CircuitsVisView, circuitsvis_view


def attention_heads_view(
    pattern: Float[torch.Tensor, "head q_pos k_pos"],
    tokens: list[str],
    layer: int,
    causal: bool = True,
    heads: list[int] | None = None,
    decimals: int = 4,
) -> CircuitsVisView:
    """circuitsvis ``AttentionHeads`` for one prompt at one layer, heads named ``L{layer}H{head}``.

    Args:
        pattern: ``[head, q_pos, k_pos]`` attention probabilities of one prompt (unpadded).
        tokens: the prompt's tokens as strings (``len == q_pos``).
        layer: the layer, for the head names.
        causal: mask the upper triangle (decoders); ``False`` for encoders.
        heads: the head indices present in ``pattern`` (default ``0..head-1``).
        decimals: rounding of the attention values (keeps the report small).
    """
    if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2] or pattern.shape[1] != len(tokens):
        raise TlprobeError(
            f"pattern has shape {tuple(pattern.shape)} for {len(tokens)} tokens; expected [head, n, n] with n = tokens"
        )
    heads = list(range(pattern.shape[0])) if heads is None else heads
    return circuitsvis_view(
        "AttentionHeads",
        attention=pattern.detach().double().cpu().round(decimals=decimals),
        tokens=list(tokens),
        attentionHeadNames=[f"L{layer}H{h}" for h in heads],
        maskUpperTri=bool(causal),
    )
