"""Hook names and tensor getters over a TransformerLens ``ActivationCache``.

Only this module spells hook names. Getters return tensors in a fixed layout whatever the
model family:

* per-head ``q``, ``k``, ``v``, ``z``: ``[batch, pos, head, d_head]``, grouped-query K/V
  expanded to ``n_heads`` heads (``repeat_interleave``, the layout attention uses);
* the fused ``[Q | K | V]`` vector: ``[batch, pos, 3 * n_heads * d_head]``, head-major inside
  each part (the layout of GPT-2's ``c_attn`` output); :func:`split_heads` cuts it per head;
* the residual stream over depth: ``[n_layers + 1, batch, pos, d_model]``;
* attention patterns: ``[batch, head, q_pos, k_pos]``;
* one head's slice of q/k/v/z or of its pattern, named ``"L3H7"``: :func:`head_slice`.

On rotary models (NeoX, LLaMA) ``hook_q``/``hook_k`` hold the vectors *before* the rotary
embedding is applied: that is what TransformerLens exposes and what these getters return.

The names follow the model's world (:mod:`tlprobe.access.worlds`): on a ``HookedEncoder`` the
block output (what a bridge calls ``hook_resid_post``, Hugging Face's ``hidden_states``) is
``hook_normalized_resid_post``, and the LayerNorm'd embedding is ``hook_full_embed``. Caches made
with ``run_with_cache(..., remove_batch_dim=True)`` get their batch axis back (size 1), so every
getter returns the same layout for them.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from typing import Literal

import torch
from jaxtyping import Float

from tlprobe.access.labels import head_label, head_labels, layer_labels, parse_head
from tlprobe.access.worlds import model_kind
from tlprobe.checks import as_int, as_tensor, check_index, check_ndim
from tlprobe.errors import HookNotFoundError, TlprobeError

_HOOKS = {
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "ln_final": "ln_final.hook_out",
}

#: Where a ``HookedEncoder`` (TL 2.x/3.x BERT) differs: its ``hook_resid_post`` is the block's
#: sum *before* the output LayerNorm, ``hook_embed`` the raw word embedding.
_HOOKED_ENCODER = {
    "resid_post": "blocks.{layer}.hook_normalized_resid_post",
    "embed": "hook_full_embed",
    "pos_embed": "embed.hook_pos_embed",
}


def _template(kind: str, model) -> str:
    try:
        template = _HOOKS[kind]
    except KeyError:
        raise TlprobeError(f"unknown activation kind {kind!r}; known: {', '.join(sorted(_HOOKS))}") from None
    world = model_kind(model) if model is not None else "bridge"
    if world == "hooked-encoder":
        return _HOOKED_ENCODER.get(kind, template)
    return template


def hook_name(kind: str, layer: int | None = None, *, model=None) -> str:
    """The TransformerLens hook name for an activation kind (on ``model``'s world).

    Args:
        kind: ``"q"``, ``"resid_post"``, ``"embed"``, ... (see the module docstring).
        layer: the block, for per-block kinds.
        model: the model the name is for; ``None`` gives the bridge / ``HookedTransformer`` name.

    Example:
        >>> hook_name("q", 3)
        'blocks.3.attn.hook_q'
        >>> hook_name("embed")
        'hook_embed'
    """
    template = _template(kind, model)
    if "{layer}" in template:
        if layer is None:
            raise TlprobeError(f"activation kind {kind!r} needs a layer")
        return template.format(layer=as_int(layer, "layer", minimum=0))
    return template


def hook_names(kinds: Iterable[str], layers: Iterable[int], *, model=None) -> list[str]:
    """Hook names for several kinds and layers of ``model``, for ``run_with_cache(names_filter=...)``."""
    layers = list(layers)
    out: list[str] = []
    for kind in kinds:
        if "{layer}" in _template(kind, model):
            out.extend(hook_name(kind, layer, model=model) for layer in layers)
        else:
            out.append(hook_name(kind, model=model))
    return out


def _check_cache(cache) -> None:
    """Raise unless ``cache`` maps hook names to tensors (an ``ActivationCache`` or a dict)."""
    if not (hasattr(cache, "keys") and hasattr(cache, "__getitem__")):
        raise TlprobeError(
            f"cache must be an ActivationCache (from model.run_with_cache(...)) or a dict of hook name -> "
            f"tensor, got {type(cache).__name__}"
        )


def _n_layers(cache) -> int | None:
    _check_cache(cache)
    model = getattr(cache, "model", None)
    cfg = getattr(model, "cfg", None)
    return int(cfg.n_layers) if cfg is not None else None


def _check_layer(cache, layer: int) -> int:
    n = _n_layers(cache)
    return check_index(layer, n, "layer") if n is not None else layer


def get_activation(cache, kind: str, layer: int | None = None) -> torch.Tensor:
    """Fetch one activation, with an error that lists what the cache has if it is missing.

    Raises:
        HookNotFoundError: the hook is not in the cache (not requested in ``names_filter``, or
            the model never fires it, e.g. ``hook_resid_mid`` on parallel blocks, q/k/v on a
            vLLM ``RemoteBridge``).
    """
    _check_cache(cache)
    if layer is not None:
        layer = _check_layer(cache, layer)
    name = hook_name(kind, layer, model=getattr(cache, "model", None))
    if name in cache:
        x = cache[name]
        # remove_batch_dim=True caches drop the batch axis: put it back, so every layout holds
        return x.unsqueeze(0) if getattr(cache, "has_batch_dim", True) is False else x
    keys = list(cache.keys())
    never = _never_fired(kind, getattr(cache, "model", None))
    if never:
        raise HookNotFoundError(f"hook {name!r} does not exist on this model: {never}; this analysis cannot run on it")
    similar = [k for k in keys if k.endswith(name.rsplit(".", 1)[-1])][:6]
    hint = f" Hooks of that kind in the cache: {', '.join(similar)}." if similar else ""
    raise HookNotFoundError(
        f"hook {name!r} is not in the cache ({len(keys)} hooks cached).{hint} Run the model with "
        f"names_filter including {name!r}; if the model never fires it (e.g. q/k/v on a vLLM "
        "RemoteBridge, which fires block-level hooks only), this analysis cannot run on it"
    )


def _never_fired(kind: str, model) -> str | None:
    """Why a model family never fires a hook kind (None if it should)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return None
    if kind == "ln_final" and model_kind(model) in ("hooked", "hooked-encoder"):
        return (
            "HookedTransformer/HookedEncoder have no hook on ln_final's output (its hook_normalized comes before "
            "the norm's weight and bias); apply tlprobe.access.unembed.apply_final_norm to the residual stream"
        )
    if kind == "pos_embed" and getattr(cfg, "positional_embedding_type", "") == "rotary":
        return "rotary models (NeoX, LLaMA) add positions inside attention and have no hook_pos_embed"
    if kind == "resid_mid" and getattr(cfg, "parallel_attn_mlp", False):
        return "parallel blocks (NeoX) feed attention and MLP the same input and have no hook_resid_mid"
    return None


def get_qkv(
    cache, layer: int, *, expand_kv: bool = True
) -> tuple[
    Float[torch.Tensor, "batch pos head d_head"],
    Float[torch.Tensor, "batch pos head d_head"],
    Float[torch.Tensor, "batch pos head d_head"],
]:
    """Per-head query, key and value vectors at ``layer``.

    Args:
        cache: an ``ActivationCache`` holding ``blocks.{layer}.attn.hook_q/k/v``.
        layer: block index (negative counts from the end).
        expand_kv: repeat grouped-query K/V heads so that every query head has its own
            (``repeat_interleave(n_heads // n_kv_heads, dim=2)``). With ``False`` K/V keep
            ``n_kv_heads`` heads.

    Returns:
        ``(q, k, v)``, each ``[batch, pos, head, d_head]``.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("llama")  # 4 query heads, 2 key/value heads
        >>> _, cache = model.run_with_cache("her cat")
        >>> [tuple(t.shape[2:]) for t in get_qkv(cache, 0)]
        [(4, 16), (4, 16), (4, 16)]
    """
    q = get_activation(cache, "q", layer)
    k = get_activation(cache, "k", layer)
    v = get_activation(cache, "v", layer)
    if expand_kv and k.shape[2] != q.shape[2]:
        group = _kv_group(q.shape[2], k.shape[2])
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
    return q, k, v


def _kv_group(n_heads: int, n_kv_heads: int) -> int:
    """Query heads per key/value head: query head ``h`` reads key/value head ``h // group``.

    That is the order ``repeat_interleave`` expands grouped-query K/V in (TransformerLens' and
    Hugging Face's ``repeat_kv`` layout); 1 without grouped-query attention.
    """
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise TlprobeError(f"cannot expand {n_kv_heads} key/value heads to {n_heads} query heads (not a divisor)")
    return n_heads // n_kv_heads


def fused_qkv(cache, layer: int, *, head: int | None = None) -> Float[torch.Tensor, "batch pos qkv"]:
    """The per-token ``[Q | K | V]`` vector at ``layer`` (GPT-2 ``c_attn`` layout).

    Args:
        cache: an ``ActivationCache`` holding the layer's q, k, v hooks.
        layer: block index.
        head: if given, only that head's ``d_head`` slice of Q, K and V
            (``3 * d_head`` coordinates); otherwise all heads (``3 * n_heads * d_head``,
            grouped-query K/V expanded).

    Returns:
        ``[batch, pos, 3 * n]`` with ``n = n_heads * d_head`` (or ``d_head`` for one head):
        coordinates ``[0, n)`` are Q, ``[n, 2n)`` K, ``[2n, 3n)`` V, each head-major.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> _, cache = tiny_model("gpt2").run_with_cache("her cat")
        >>> fused_qkv(cache, 1).shape[-1], fused_qkv(cache, 1, head=2).shape[-1]
        (192, 48)
    """
    q, k, v = get_qkv(cache, layer)
    if head is not None:
        head = check_index(head, q.shape[2], "head")
        q, k, v = q[:, :, head], k[:, :, head], v[:, :, head]
        return torch.cat([q, k, v], dim=-1)
    return torch.cat([t.flatten(-2) for t in (q, k, v)], dim=-1)


def split_heads(
    qkv: Float[torch.Tensor, "... samples qkv"], n_heads: int
) -> Float[torch.Tensor, "... head samples head_qkv"]:
    """Each head's own ``[Q | K | V]`` slice, as a new leading dimension.

    A fused vector (see :func:`fused_qkv`) is ``[Q | K | V]``, each part head-major
    (``n_heads * d_head``). This reshapes ``[..., samples, 3 * H * d_head]`` into
    ``[..., H, samples, 3 * d_head]`` (a view-and-copy, no loop over heads); head ``h``'s row equals
    ``fused_qkv(cache, layer, head=h)``. Label the new axis with
    :func:`tlprobe.access.labels.head_labels`.

    Raises:
        TlprobeError: the last dimension is not ``3 * n_heads * d_head``.

    Example:
        >>> x = torch.arange(12.0).reshape(1, 12)  # one sample, Q|K|V of 2 heads x d_head 2
        >>> split_heads(x, 2)[1]  # head 1: its Q, K and V slices
        tensor([[ 2.,  3.,  6.,  7., 10., 11.]])
    """
    qkv = as_tensor(qkv, "qkv")
    check_ndim(qkv, "qkv", 2, "[..., samples, 3 * n_heads * d_head]")
    if not isinstance(n_heads, int) or n_heads < 1 or qkv.shape[-1] % (3 * n_heads):
        raise TlprobeError(
            f"cannot split {qkv.shape[-1]} Q|K|V coordinates into 3 parts of {n_heads} heads; "
            "pass the model's n_heads (model_info(model).n_heads) and a full fused_qkv vector"
        )
    d_head = qkv.shape[-1] // (3 * n_heads)
    x = qkv.unflatten(-1, (3, n_heads, d_head))  # [..., s, 3, H, dh]
    return x.movedim(-2, -4).flatten(-2)  # [..., H, s, 3 * dh]


def resid_stack(
    cache, layers: Iterable[int] | None = None, *, device: str | torch.device | None = None
) -> Float[torch.Tensor, "depth batch pos d_model"]:
    """The residual stream over depth: embeddings, then every block's output.

    Index 0 is the input of block 0 (``blocks.0.hook_resid_pre``: token + position embeddings
    on GPT-2; the LayerNorm'd embedding on BERT); index ``l + 1`` is
    ``blocks.{l}.hook_resid_post``. On decoders these are the raw (pre-``ln_final``) stream,
    equal to Hugging Face ``hidden_states[:-1]`` (HF applies the final norm to its last entry).
    On BERT (post-LN) every entry is normalised and the stack equals HF ``hidden_states``.

    Args:
        cache: an ``ActivationCache``.
        layers: which depth indices to return (0 = embeddings, ``n_layers`` = last block);
            default all ``n_layers + 1``.
        device: where the stack goes; default the device of its first entry. A model split over
            devices (``device_map``) leaves each layer on its own device: each is moved once,
            only if it is elsewhere.

    Returns:
        ``[depth, batch, pos, d_model]``.
    """
    n = _n_layers(cache)
    if n is None:
        found = [
            int(k.split(".")[1]) for k in cache.keys() if k.startswith("blocks.") and k.endswith("hook_resid_post")
        ]
        if not found:
            raise HookNotFoundError("the cache holds no blocks.N.hook_resid_post; cache the residual stream hooks")
        n = 1 + max(found)
    idx = list(range(n + 1)) if layers is None else [check_index(i, n + 1, "depth index") for i in layers]
    parts = [
        get_activation(cache, "resid_pre", 0) if i == 0 else get_activation(cache, "resid_post", i - 1) for i in idx
    ]
    target = torch.device(device) if device is not None else parts[0].device
    return torch.stack([p.to(target) for p in parts])


def resid_hook_names(model, depth: Iterable[int] | None = None) -> list[str]:
    """Hook names :func:`resid_stack` reads on ``model``, for ``names_filter``.

    Args:
        model: the model (its world decides the names), or its number of layers for the
            bridge / ``HookedTransformer`` names.
        depth: residual-stream indices (default all).

    Example:
        >>> resid_hook_names(2)
        ['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
    """
    if isinstance(model, int):
        n_layers, model = model, None
    else:
        n_layers = int(model.cfg.n_layers)
    idx = range(n_layers + 1) if depth is None else depth
    return [
        hook_name("resid_pre", 0, model=model) if i == 0 else hook_name("resid_post", i - 1, model=model) for i in idx
    ]


def attention_pattern(cache, layer: int) -> Float[torch.Tensor, "batch head q_pos k_pos"]:
    """Attention probabilities at ``layer``: ``[batch, head, q_pos, k_pos]``."""
    return get_activation(cache, "pattern", layer)


#: The per-head activations :func:`head_slice` gives.
HeadKind = Literal["q", "k", "v", "z", "pattern"]


def head_slice(
    cache, head: str | tuple[int, int], kind: HeadKind = "q"
) -> Float[torch.Tensor, "batch pos d_head"] | Float[torch.Tensor, "batch q_pos k_pos"]:
    """The activations behind one attention head, e.g. ``head_slice(cache, "L3H7", "pattern")``.

    Only kinds that every TransformerLens world (``TransformerBridge``, ``HookedTransformer``,
    ``HookedEncoder``) caches under the same name and meaning are offered. Attention scores are
    not: on a BERT bridge ``hook_attn_scores`` holds the softmax output (it equals the pattern),
    and masked entries differ between worlds. Per-head outputs (``hook_result``) are not
    either: they exist only with ``use_attn_result`` or after ``cache.stack_head_results()``.

    Args:
        cache: an ``ActivationCache`` (``tlprobe.run_batch(...).cache`` or the one from
            ``model.run_with_cache(...)``, also with ``remove_batch_dim=True``), or a dict of
            hook name -> tensor.
        head: ``"L3H7"`` or ``(3, 7)``: layer 3, head 7 (non-negative numbers).
        kind: ``"q"``, ``"k"``, ``"v"`` (pre-rotary on rotary models, as TransformerLens hooks
            them), ``"z"`` (the head's pattern-weighted values) or ``"pattern"`` (the
            attention probabilities).

    Returns:
        ``[batch, pos, d_head]`` for q/k/v/z; ``[batch, q_pos, k_pos]`` for ``"pattern"``.
        On grouped-query models k/v are those of the head's key/value group (the head
        :func:`get_qkv` expands to query head ``h``).

    Raises:
        TlprobeError: a malformed head, a layer or head the model does not have, an unknown kind.
        HookNotFoundError: the hook is not in the cache (the message names it and how to cache it).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> _, cache = tiny_model("llama").run_with_cache("her cat")
        >>> tuple(head_slice(cache, "L1H3", "k").shape), tuple(head_slice(cache, (1, 3), "pattern").shape)
        ((1, 4, 16), (1, 4, 4))
    """
    kinds = typing.get_args(HeadKind)
    if kind not in kinds:
        raise TlprobeError(
            f"unknown head_slice kind {kind!r}; choose one of {', '.join(kinds)} (attention scores and "
            "per-head outputs are not offered: their hooks differ between TransformerLens worlds)"
        )
    layer, number = parse_head(head)
    if layer is None:
        raise TlprobeError(
            f"head {head!r} does not say which layer; give it, e.g. {head_label(number, 0)!r} or (0, {number})"
        )
    label = head_label(number, layer)
    n_layers = _n_layers(cache)
    if n_layers is not None and layer >= n_layers:
        raise TlprobeError(f"no head {label}: the model has {n_layers} layers ({_span(layer_labels(n_layers))})")
    model = getattr(cache, "model", None)
    name = hook_name(kind, layer, model=model)
    if name not in cache:
        raise HookNotFoundError(
            f"head_slice(kind={kind!r}) reads {name!r}, which is not in the cache; cache it with "
            f"tlprobe.run_batch(model, prompts, names=[{name!r}]) or model.run_with_cache(..., names_filter=[{name!r}])"
        )
    x = get_activation(cache, kind, layer)
    if kind == "pattern":
        _check_head(label, number, x.shape[1])
        return x[:, number]
    if kind in ("q", "z"):
        _check_head(label, number, x.shape[2])
        return x[:, :, number]
    n_heads = _n_query_heads(cache, model, layer)
    _check_head(label, number, n_heads)
    return x[:, :, number // _kv_group(n_heads, x.shape[2])]


def _n_query_heads(cache, model, layer: int) -> int:
    """Query heads at ``layer``: the model's config, else the cached ``hook_q``."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        return int(cfg.n_heads)
    name = hook_name("q", layer)
    if name in cache:
        return int(get_activation(cache, "q", layer).shape[2])
    raise TlprobeError(
        f"cannot tell which key/value head serves each query head from a dict cache without {name!r}; "
        "cache that hook too, or pass the ActivationCache from model.run_with_cache(...)"
    )


def _check_head(label: str, number: int, n_heads: int) -> None:
    if number >= n_heads:
        raise TlprobeError(f"no head {label}: the model has {n_heads} heads per layer ({_span(head_labels(n_heads))})")


def _span(labels: tuple[str, ...]) -> str:
    """``"H0..H3"`` for a run of labels (these helpers only show whole ranges)."""
    first, last = labels[0], labels[-1]
    return first if first == last else f"{first}..{last}"
