"""Running prompts through a model with correct padding and attention masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int

from tlprobe.checks import check_choice
from tlprobe.errors import TlprobeError


@dataclass
class Batch:
    """Prompts run through a model: tokens, mask, and the cache of the requested hooks.

    Attributes:
        prompts: the input texts.
        tokens: ``[batch, pos]`` token ids, padded on ``padding_side``.
        attention_mask: ``[batch, pos]``, 1 for real tokens.
        cache: a TransformerLens ``ActivationCache`` with the requested hooks for every prompt.
        tokenizer: the model's tokenizer.
    """

    prompts: list[str]
    tokens: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]
    cache: Any
    tokenizer: Any

    def str_tokens(self, i: int) -> list[str]:
        """The real (unpadded) tokens of prompt ``i`` as strings."""
        ids = self.tokens[i][self.attention_mask[i].bool()].tolist()
        return [self.tokenizer.decode([t]) for t in ids]


def run_batch(
    model,
    prompts: Sequence[str],
    *,
    names: Sequence[str] | Callable[[str], bool] | None = None,
    batch_size: int = 32,
    padding_side: Literal["right", "left"] = "right",
    progress: bool = False,
) -> Batch:
    """Run prompts through ``model`` and cache the hooks in ``names``.

    Builds the attention mask itself (``transformer_lens.utilities.get_attention_mask``):
    without it, padded BERT and left-padded decoders give wrong activations. Prompts longer
    than the model's context raise instead of being silently truncated.

    Args:
        model: a ``TransformerBridge``.
        prompts: texts.
        names: hook names (or a predicate) to cache; ``None`` caches every hook.
        batch_size: prompts per forward pass.
        padding_side: ``"right"`` or ``"left"``.
        progress: show a progress bar over batches.

    Returns:
        A :class:`Batch`.
    """
    # TransformerLens takes ~3 s to import: loaded on the first run, not with tlprobe
    from transformer_lens import ActivationCache
    from transformer_lens.utilities import get_attention_mask  # pyright: ignore[reportPrivateImportUsage]

    check_choice(padding_side, ("right", "left"), "padding_side")
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TlprobeError("prompts must be a non-empty list of strings")
    prompts = list(prompts)
    n_ctx = int(model.cfg.n_ctx)
    lengths = [len(model.tokenizer(p)["input_ids"]) for p in prompts]
    too_long = [i for i, n in enumerate(lengths) if n > n_ctx]
    if too_long:
        raise TlprobeError(
            f"prompt {too_long[0]} has {lengths[too_long[0]]} tokens, more than the model's context "
            f"of {n_ctx}; shorten it or cut the text into windows"
        )
    tokens = model.to_tokens(prompts, padding_side=padding_side, truncate=False)
    mask = get_attention_mask(
        model.tokenizer, tokens, prepend_bos=model.cfg.default_prepend_bos, padding_side=padding_side
    ).to(tokens.device)
    chunks: dict[str, list[torch.Tensor]] = {}
    starts = range(0, len(prompts), batch_size)
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm  # only for multi-batch runs with a progress bar

        starts = tqdm(starts, desc="forward", unit="batch")
    with torch.inference_mode():
        for s in starts:
            _, cache = model.run_with_cache(
                tokens[s : s + batch_size], attention_mask=mask[s : s + batch_size], names_filter=names
            )
            for k in cache.keys():
                chunks.setdefault(k, []).append(cache[k])
    merged = {k: torch.cat(v, 0) if len(v) > 1 else v[0] for k, v in chunks.items()}
    return Batch(prompts, tokens, mask, ActivationCache(merged, model), model.tokenizer)
