"""Running prompts through a model with correct padding and attention masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int

from tlprobe.access.unembed import decode_tokens
from tlprobe.access.worlds import model_kind
from tlprobe.checks import as_int, check_choice, check_memory, gib
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

    ``names=None`` caches every hook, as TransformerLens' ``run_with_cache`` does, and that is
    large: every hook of every layer at every padded position, attention patterns growing with the
    square of the length. 48 short sentences (17 tokens padded) through MiniLM give 261 hooks in
    266 MB (118 tensors: a bridge's canonical duplicates such as ``blocks.0.hook_in`` share the
    tensor of ``blocks.0.hook_resid_pre``, here too), and a run of several batches holds one
    batch more while it copies (444 MB at ``batch_size=32``). Pass the hooks you read instead,
    e.g. ``names=tlprobe.access.resid_hook_names(model)`` (the residual stream: 7 hooks, 8.8 MB
    there). With ``names=None`` or a predicate and more than one prompt, the first prompt runs
    alone first, padded to the batch's length (about ``1/len(prompts)`` of the work), to measure
    the cache per prompt: a cache that would not fit in the free memory is refused before the
    prompts run.

    Args:
        model: a ``TransformerBridge``, ``HookedTransformer`` or ``HookedEncoder``.
        prompts: texts.
        names: hook names (or a predicate) to cache; ``None`` caches every hook (see above).
        batch_size: prompts per forward pass.
        padding_side: ``"right"`` or ``"left"``.
        progress: show a progress bar over batches.

    Returns:
        A :class:`Batch`.

    Raises:
        TlprobeError: bad prompts or options, a prompt longer than the model's context, or a
            cache of every hook (``names=None``, or a predicate) larger than the free memory
            (the message gives the estimate and the fix: ``names=``, or fewer prompts).
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
    n = len(prompts)
    if (names is None or callable(names)) and n > 1:
        need, per_prompt, n_hooks, device = _cache_size(model, tokens, mask, names=names, batch_size=batch_size)
        check_memory(
            need,
            f"caching {'every hook' if names is None else 'the hooks selected by names'} ({n_hooks} hooks, "
            f"{gib(per_prompt)} per prompt of {tokens.shape[-1]} padded tokens) for {n} prompts",
            "pass names= with the hooks you read (e.g. tlprobe.access.resid_hook_names(model)), or fewer prompts",
            device=device,
        )
    starts = range(0, n, batch_size)
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm  # only for multi-batch runs with a progress bar

        starts = tqdm(starts, desc="forward", unit="batch")
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for s in starts:
            cache = forward_cache(model, tokens[s : s + batch_size], mask[s : s + batch_size], names=names)
            if n <= batch_size:  # one pass: its cache as it is
                merged = {k: cache[k] for k in cache.keys()}
            else:
                _copy_rows(merged, {k: cache[k] for k in cache.keys()}, s, min(batch_size, n - s), n)
            del cache
    return Batch(prompts, tokens, mask, ActivationCache(merged, model), model.tokenizer)


def _view(x: torch.Tensor) -> tuple:
    """Where and how ``x`` reads its memory: tensors with equal views hold the same values."""
    return (x.device, x.dtype, x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), x.stride())


def _copy_rows(out: dict[str, torch.Tensor], cache: dict[str, torch.Tensor], start: int, rows: int, n: int) -> None:
    """Copy one batch's cache (``rows`` prompts) into ``out``'s ``[n, ...]`` tensors at ``start:start + rows``.

    The tensors are allocated once, at the first batch, so the run never holds more than the
    result and one batch. Hooks that are views of one tensor (a bridge's canonical duplicates:
    ``blocks.0.hook_in`` is ``blocks.0.hook_resid_pre``) share one result tensor, as in a single
    pass's cache (MiniLM, 48 sentences: 261 hooks, 118 tensors, 265 MB; concatenated one by one
    they took 586 MB). A hook of batch size 1 in a batch of several prompts (a bridge's
    ``pos_embed.hook_in``: the positions, the same for every prompt) stays as the first batch
    gave it while later batches agree. Hooks that stop sharing in a later batch are split.
    """
    first = not out
    if not first and cache.keys() != out.keys():  # rows left unwritten would hold garbage
        odd = sorted(cache.keys() ^ out.keys())
        raise TlprobeError(
            f"batches cached different hooks ({', '.join(odd[:3])}); pass names= with the hooks to cache"
        )
    shared: dict[tuple, torch.Tensor] = {}
    written: dict[int, tuple] = {}  # id(result tensor) -> the view copied into it in this batch
    for k, x in cache.items():
        if x.ndim == 0 or x.shape[0] not in (1, rows):
            raise TlprobeError(f"hook {k} has shape {tuple(x.shape)}, no batch axis of {rows}; leave it out of names=")
        view = _view(x)
        if first:
            if x.shape[0] == 1 < rows:  # one row for every prompt of the batch
                out[k] = x
                continue
            if view not in shared:
                shared[view] = x.new_empty((n, *x.shape[1:]))
            out[k] = shared[view]
        dest = out[k]
        if dest.shape[0] == 1 < n:
            if x.shape[0] == 1 and torch.equal(x, dest):
                continue  # still the same for every prompt
            dest = out[k] = dest.expand(n, *dest.shape[1:]).clone()  # no longer: one row per prompt
        done = written.get(id(dest))
        if done == view:
            continue  # the same view as a hook already copied into this tensor
        if done is not None:  # shared until now, different in this batch: its own copy from here on
            dest = out[k] = dest.clone()
        dest[start : start + rows] = x
        written[id(dest)] = view


def _cache_size(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    attention_mask: Int[torch.Tensor, "batch pos"],
    *,
    names: Sequence[str] | Callable[[str], bool] | None,
    batch_size: int,
) -> tuple[int, int, int, torch.device]:
    """What :func:`run_batch` holds for the cache of ``names`` over ``tokens``, measured on one prompt.

    Runs the first prompt alone at the full padded length: every cached hook has one row per
    prompt, so the result holds ``len(tokens)`` such rows (hooks that are views of one tensor
    counted once, as :func:`_copy_rows` stores them), and a run of several batches one batch
    more while it copies. The forward pass's own working memory is not counted.

    Returns:
        ``(bytes needed, bytes per prompt, hooks cached, device of the cache)``.
    """
    with torch.no_grad():
        cache = forward_cache(model, tokens[:1], attention_mask[:1], names=names)
    views = {_view(cache[k]): cache[k] for k in cache.keys()}
    per_prompt = sum(x.numel() * x.element_size() for x in views.values())
    device = next(iter(views.values())).device if views else tokens.device
    n = int(tokens.shape[0])
    in_flight = min(batch_size, n) if n > batch_size else 0
    return per_prompt * (n + in_flight), per_prompt, len(cache.keys()), device


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


def str_tokens(model, text: str) -> list[str]:
    """The tokens of ``text`` as strings, one per position of ``model.run_with_cache(text)``.

    The same in every TransformerLens world (``to_str_tokens`` is missing on a 2.x ``HookedEncoder``):
    decoders as ``model.to_tokens`` makes them (BOS as configured), encoders with ``[CLS]``/``[SEP]``.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> str_tokens(tiny_model("gpt2"), "She gave her")[1:]
        ['She', ' gave', ' her']
    """
    if not isinstance(text, str):
        raise TlprobeError(f"text must be one string, got {type(text).__name__}; for several, call it once per text")
    tokens, _mask = tokenize_prompts(model, [text])
    return decode_tokens(model, tokens[0].tolist())
