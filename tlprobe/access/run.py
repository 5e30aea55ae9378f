"""Running prompts through a model with correct padding and attention masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int

from tlprobe.access.worlds import model_kind
from tlprobe.checks import as_int, check_choice
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

    Builds the attention mask itself from each prompt's own token count: without it, padded
    BERT and left-padded decoders give wrong activations. Prompts longer than the model's context
    raise instead of being silently truncated. Works on a ``TransformerBridge``, a
    ``HookedTransformer`` and a ``HookedEncoder``.

    The forward passes run under ``torch.no_grad()`` (no autograd graph is kept), not
    ``torch.inference_mode()``: the cache then works with TransformerLens' own cache methods
    (``stack_head_results``, ``accumulated_resid``, ``decompose_resid``, ...), which inference
    tensors would refuse.

    Args:
        model: a ``TransformerBridge``, ``HookedTransformer`` or ``HookedEncoder``.
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

    check_choice(padding_side, ("right", "left"), "padding_side")
    batch_size = as_int(batch_size, "batch_size", minimum=1, fix="prompts per forward pass, e.g. 32")
    if isinstance(prompts, str):
        raise TlprobeError(f"prompts must be a list of strings, got one string ({prompts[:40]!r}); pass [prompt]")
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TlprobeError("prompts must be a non-empty list of strings")
    prompts = list(prompts)
    tokens, mask = tokenize_prompts(model, prompts, padding_side=padding_side)
    chunks: dict[str, list[torch.Tensor]] = {}
    starts = range(0, len(prompts), batch_size)
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm  # only for multi-batch runs with a progress bar

        starts = tqdm(starts, desc="forward", unit="batch")
    with torch.no_grad():
        for s in starts:
            cache = forward_cache(model, tokens[s : s + batch_size], mask[s : s + batch_size], names=names)
            for k in cache.keys():
                chunks.setdefault(k, []).append(cache[k])
    merged = {k: torch.cat(v, 0) if len(v) > 1 else v[0] for k, v in chunks.items()}
    return Batch(prompts, tokens, mask, ActivationCache(merged, model), model.tokenizer)


def tokenize_prompts(
    model, prompts: Sequence[str], *, padding_side: Literal["right", "left"] = "right"
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Padded token ids and the attention mask of ``prompts``, as the model tokenizes them.

    Decoders go through ``model.to_tokens`` (BOS as the model's config says); encoders through
    their tokenizer (``[CLS] ... [SEP]``). The mask comes from each prompt's own length, so a pad
    token that equals BOS/EOS (GPT-2) is never mistaken for padding.

    Raises:
        TlprobeError: a prompt longer than the model's context (says which and by how much), or
            left padding on a ``HookedEncoder`` (its positions would shift).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> tokens, mask = tokenize_prompts(tiny_model("gpt2"), ["her", "She gave her"], padding_side="left")
        >>> mask.tolist()
        [[0, 0, 1, 1], [1, 1, 1, 1]]
    """
    check_choice(padding_side, ("right", "left"), "padding_side")
    n_ctx = int(model.cfg.n_ctx)
    if model_kind(model) == "hooked-encoder":
        tok = model.tokenizer
        old = tok.padding_side
        tok.padding_side = "right"  # left padding is refused below, so right is the only side used
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True, truncation=False)
        finally:
            tok.padding_side = old
        tokens, mask = enc["input_ids"], enc["attention_mask"]
        lengths = mask.sum(-1).tolist()
        if padding_side == "left" and len(set(lengths)) > 1:
            raise TlprobeError(
                "a HookedEncoder numbers positions from the first token, padding included, so left padding "
                "would shift every position embedding; use padding_side='right' (encoders need no left padding)"
            )
    else:
        rows = [model.to_tokens(p, truncate=False)[0] for p in prompts]  # BOS as the model's config says
        lengths = [len(r) for r in rows]
        pad = model.tokenizer.pad_token_id
        pad = model.tokenizer.eos_token_id if pad is None else pad
        # padded exactly as to_tokens(list) pads (with the pad token), but each row's length is known
        tokens = torch.nn.utils.rnn.pad_sequence(
            rows, batch_first=True, padding_value=0 if pad is None else int(pad), padding_side=padding_side
        )
        pos = torch.arange(tokens.shape[-1], device=tokens.device)
        n = torch.tensor(lengths, device=tokens.device)[:, None]
        mask = (pos < n) if padding_side == "right" else (pos >= tokens.shape[-1] - n)
    too_long = [i for i, n in enumerate(lengths) if n > n_ctx]
    if too_long:
        raise TlprobeError(
            f"prompt {too_long[0]} has {lengths[too_long[0]]} tokens, more than the model's context "
            f"of {n_ctx}; shorten it or cut the text into windows"
        )
    return tokens, mask.long().to(tokens.device)


def forward_cache(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    attention_mask: Int[torch.Tensor, "batch pos"],
    *,
    names: Sequence[str] | Callable[[str], bool] | None = None,
    stop_at_layer: int | None = None,
):
    """One forward pass with a cache of the hooks in ``names``: the call each world expects.

    A bridge and a ``HookedTransformer`` take ``attention_mask=`` and ``stop_at_layer=``; a
    ``HookedEncoder`` takes ``one_zero_attention_mask=`` and runs every block (it has no
    ``stop_at_layer``; the cache is the same, the pass a little longer).

    Returns:
        The ``ActivationCache``.
    """
    kwargs: dict = {"names_filter": names}
    if model_kind(model) == "hooked-encoder":
        kwargs["one_zero_attention_mask"] = attention_mask
        kwargs["return_type"] = None
    else:
        kwargs["attention_mask"] = attention_mask
        if stop_at_layer is not None:
            kwargs["stop_at_layer"] = stop_at_layer
    _, cache = model.run_with_cache(tokens, **kwargs)
    return cache


def model_logits(
    model, tokens: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"]
) -> torch.Tensor:
    """The model's own output logits ``[batch, pos, vocab]`` for padded tokens (no grad), in each world.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("gpt2")
        >>> tokens, mask = tokenize_prompts(model, ["her cat"])
        >>> tuple(model_logits(model, tokens, mask).shape)
        (1, 4, 600)
    """
    with torch.no_grad():
        if model_kind(model) == "hooked-encoder":
            return model(tokens, one_zero_attention_mask=attention_mask)
        return model(tokens, attention_mask=attention_mask)
