"""The read-out path of a model: final norm, unembedding, embedding, and the MLM head.

This is the only module that knows the attribute names of that path on a TransformerLens 4
``TransformerBridge`` (``W_U``, ``b_U``, ``W_E``, ``ln_final``, ``unembed``, the adapter's
component mapping and post-unembedding transform) and where a checkpoint keeps its weights.

Decoders read ``logits = transform(ln_final(x) @ W_U + b_U)``: ``ln_final`` is called as a
module, so every vector gets fresh normalisation statistics (TransformerLens >= 3.5 does the
same; TL 2.x divided by the cached final scale). ``transform`` is the adapter's elementwise
post-unembedding transform (Gemma soft cap, Cohere/Granite scaling; the identity elsewhere).

BERT-style encoders read through their masked-language-model head: ``dense -> activation ->
LayerNorm -> decoder``. :func:`mlm_head_check` says whether that head was *trained* (its weights
are in the checkpoint) or filled with random weights by Transformers/TransformerLens because the
checkpoint has none (the bundled all-MiniLM-L6-v2 was saved from a bare ``BertModel``).

Tokenizer conventions live here too: which ids are special (:func:`special_token_ids`,
:func:`content_mask`), how a lens target becomes one token (:func:`target_token_ids`), and how ids
are shown as text (:func:`token_strings`, so that results carry the strings their figures show).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from tlprobe.access.worlds import model_kind
from tlprobe.checks import as_int
from tlprobe.errors import TlprobeError, UnsupportedModelError
from tlprobe.result import Result

#: Bridge components that make up an encoder's MLM head, in the order the head applies them.
MLM_HEAD_COMPONENTS = ("mlm_head", "ln_final", "unembed")

#: The Hugging Face modules TransformerLens' BERT conversion (``convert_bert_weights``) reads a
#: ``HookedEncoder``'s MLM head from: its ``mlm_head`` (dense + LayerNorm) and ``unembed``.
_BERT_HEAD_MODULES = {
    "mlm_head": "cls.predictions.transform.dense",
    "ln_final": "cls.predictions.transform.LayerNorm",
    "unembed": "cls.predictions.decoder",
}

_CHECKPOINT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _hf_model(model):
    hf = getattr(model, "original_model", None)
    if hf is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no wrapped Hugging Face model (original_model); the "
            "encoder read-out needs a TransformerBridge booted with boot_transformers"
        )
    return hf


def unembedding(model) -> tuple[Float[torch.Tensor, "d_model d_vocab"], Float[torch.Tensor, " d_vocab"]]:
    """The unembedding ``(W_U, b_U)``; ``b_U`` is zeros when the model has no output bias.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> W_U, b_U = unembedding(tiny_model("llama"))
        >>> tuple(W_U.shape), tuple(b_U.shape), float(b_U.detach().abs().sum())
        ((64, 600), (600,), 0.0)
    """
    W_U = getattr(model, "W_U", None)
    if not isinstance(W_U, torch.Tensor):
        raise UnsupportedModelError(
            f"{type(model).__name__} exposes no unembedding matrix W_U; the lens needs a model "
            "with an unembedding (a decoder LM head or an encoder MLM head)"
        )
    try:
        b_U = model.b_U  # TL 4 raises AttributeError on some bias-free models
    except AttributeError:
        b_U = None
    if not isinstance(b_U, torch.Tensor):
        b_U = torch.zeros(W_U.shape[-1], dtype=W_U.dtype, device=W_U.device)
    return W_U, b_U


def embedding_matrix(model) -> Float[torch.Tensor, "d_vocab d_model"]:
    """The token embedding ``W_E`` (``[d_vocab, d_model]``, word embeddings only).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> tuple(embedding_matrix(tiny_model("gpt2")).shape)
        (600, 64)
    """
    W_E = getattr(model, "W_E", None)
    if not isinstance(W_E, torch.Tensor):
        raise UnsupportedModelError(f"{type(model).__name__} exposes no token embedding matrix W_E")
    return W_E


def final_norm_kind(model) -> str:
    """``"LN"``, ``"RMS"``, ... as the model's config names it, or ``"none"``.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> final_norm_kind(tiny_model("gpt2")), final_norm_kind(tiny_model("llama"))
        ('LN', 'RMS')
    """
    kind = getattr(model.cfg, "normalization_type", None)
    return "none" if kind is None else str(kind)


def apply_final_norm(model, x: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_model"]:
    """Apply the model's final norm ``ln_final`` to every vector, with fresh statistics.

    The module is called (not the cached scale divided out), so each vector is normalised by its
    own mean/RMS, as TransformerLens' ``logit_lens`` does. In compatibility mode ``ln_final`` is
    the folded (weightless) norm and the folded weights sit in ``W_U``. Leading dimensions are
    flattened to one sequence (the norm is per vector).

    Raises:
        UnsupportedModelError: the config declares a normalisation but the bridge has no
            ``ln_final`` component (the norm cannot be applied exactly).

    Example:
        >>> from tlprobe.access.hooks import resid_stack
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("gpt2")
        >>> logits, cache = model.run_with_cache("her cat")
        >>> stack = resid_stack(cache)  # [depth, batch, pos, d_model]
        >>> W_U, b_U = unembedding(model)
        >>> torch.allclose(apply_final_norm(model, stack)[-1] @ W_U + b_U, logits, atol=1e-5)
        True
    """
    ln = getattr(model, "ln_final", None)
    if isinstance(ln, torch.nn.Module):
        out: torch.Tensor = ln(x.reshape(1, -1, x.shape[-1]))
        return out.reshape(x.shape)
    if final_norm_kind(model) == "none":
        return x
    raise UnsupportedModelError(
        f"the model declares normalization_type={final_norm_kind(model)!r} but has no ln_final "
        "component, so its final norm cannot be applied exactly"
    )


def output_transform(model, logits: torch.Tensor) -> torch.Tensor:
    """The adapter's post-unembedding transform (soft cap, logit scaling; else identity).

    Every transform in TransformerLens 4.3 is elementwise, so it can be applied to any slice of
    the vocabulary.
    """
    adapter = getattr(model, "adapter", None)
    fn: Callable[[torch.Tensor], torch.Tensor] | None = getattr(adapter, "apply_output_logits_transform", None)
    if callable(fn):
        return fn(logits)
    cap = float(getattr(getattr(model, "cfg", None), "output_logits_soft_cap", -1.0) or -1.0)
    if model_kind(model) == "hooked" and cap > 0:  # HookedTransformer's Gemma-2 soft cap
        return cap * torch.tanh(logits / cap)
    return logits


def check_decoder_readout(model) -> None:
    """Raise unless the model's logits are ``transform(ln_final(last resid_post) @ W_U + b_U)``.

    Delegates to the structural check of TransformerLens' own ``logit_lens`` (refuses
    encoder-decoder bridges, bridges without an ``unembed``, multi-stream blocks and extra
    read-out modules such as OPT-350m's ``project_out``), and turns its errors into
    :class:`~tlprobe.errors.UnsupportedModelError`.
    """
    try:
        # imported here: a private helper of TransformerLens 4.3 that may move; only decoders need it
        from transformer_lens.tools.analysis.logit_lens import _require_decoder_unembed
    except ImportError:  # pragma: no cover - a private helper of TL 4.3; keep the basic check
        if getattr(model, "unembed", None) is None:
            raise UnsupportedModelError("the logit lens needs an unembed component; this bridge has none") from None
        return
    try:
        _require_decoder_unembed(model, operation="the logit lens")
    except (ValueError, NotImplementedError) as exc:
        raise UnsupportedModelError(f"the logit lens cannot read this model: {exc}") from exc


def is_training(model) -> bool:
    """True if the model is in training mode (dropout on: lens results would be noisy).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> is_training(tiny_model("gpt2"))
        False
    """
    return bool(getattr(model, "training", False))


def lens_targets(targets) -> list[str | int]:
    """The lens targets as a list: a lone string (or id) is one target, not its characters.

    ``None`` is no target; a token id may be any integer (Python, numpy or a one-element tensor).

    Raises:
        TlprobeError: ``targets`` is neither a string, an id nor a sequence of them (a set is
            refused: its order is arbitrary, and the results are in the targets' order).

    Example:
        >>> lens_targets(" her"), lens_targets([" her", 5]), lens_targets(None)
        ([' her'], [' her', 5], [])
    """
    if targets is None:
        return []
    if isinstance(targets, str) or _is_token_id(targets):
        return [_as_target(targets)]
    if isinstance(targets, (set, frozenset, dict, bytes)) or not isinstance(targets, Iterable):
        raise TlprobeError(
            f"targets must be a token string, a token id or a list of them, got {type(targets).__name__}"
        )
    return [_as_target(t) for t in targets]


def _is_token_id(t) -> bool:
    if isinstance(t, torch.Tensor):
        return t.numel() == 1 and t.ndim == 0 and not t.is_floating_point() and t.dtype != torch.bool
    # numpy arrays define __index__ too (failing unless they hold one element): scalars only
    return not isinstance(t, (bool, np.bool_)) and hasattr(t, "__index__") and np.ndim(t) == 0


def _as_target(t) -> str | int:
    if isinstance(t, str):
        return t
    if _is_token_id(t):
        return as_int(t, "target id")
    raise TlprobeError(f"target {t!r} must be a token string or id")


def target_token_ids(model, targets) -> list[int]:
    """Token ids of the lens targets: each string must be exactly one known token.

    Args:
        model: the model (its tokenizer and unembedding size).
        targets: token strings (GPT-2 style BPE: ``" Paris"`` with its space) and/or ids; a lone
            string or id is one target (:func:`lens_targets`).

    Raises:
        TlprobeError: a string is several tokens (the message shows the pieces), is the unknown
            token (``[UNK]`` stands for every character the tokenizer does not know), or an id is
            out of range.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("gpt2")
        >>> target_token_ids(model, [" her", 5]), target_token_ids(model, " her") == target_token_ids(model, [" her"])
        ([..., 5], True)
    """
    tok = model.tokenizer
    W_U, _ = unembedding(model)
    d_vocab = int(W_U.shape[-1])
    unk = getattr(tok, "unk_token_id", None)
    out: list[int] = []
    for t in lens_targets(targets):
        if isinstance(t, int):
            if not 0 <= t < d_vocab:
                raise TlprobeError(f"target id {t} is out of range: the vocabulary has {d_vocab} tokens")
            out.append(t)
            continue
        if t == "":
            raise TlprobeError(f"target {t!r} must be a non-empty token string or an id")
        ids = tok(t, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [tok.decode([i]) for i in ids]
            alt = t[1:] if t.startswith(" ") else " " + t
            alt_ids = tok(alt, add_special_tokens=False)["input_ids"]
            hint = f"; {alt!r} is one token" if len(alt_ids) == 1 else ""
            raise TlprobeError(
                f"target {t!r} is {len(ids)} tokens {pieces}, but the lens ranks single tokens: pass "
                f"one token (GPT-2 style BPE marks a preceding space, e.g. ' Paris'){hint}, or a token id"
            )
        if unk is not None and int(ids[0]) == int(unk) and t.strip() != str(tok.unk_token):
            name = getattr(tok, "name_or_path", "") or type(tok).__name__
            raise TlprobeError(
                f"target {t!r} is unknown to the tokenizer {name}: it tokenises to {tok.unk_token}, which "
                "stands for every character the tokenizer does not know; choose a token the tokenizer "
                f"knows (check with tokenizer.tokenize({t!r}))"
            )
        out.append(int(ids[0]))
    return out


# --------------------------------------------------------------------------------------------
# Encoders: is the MLM head real?


@dataclass(frozen=True, eq=False)
class HeadCheck(Result):
    """Whether an encoder's MLM head comes from its checkpoint.

    Attributes:
        status: ``"trained"`` (every head module has weights in the checkpoint), ``"missing"``
            (the checkpoint has none for some head module: the loader filled them with random
            weights), ``"unknown"`` (no checkpoint files could be found, e.g. a model built in
            memory), or ``"no-head"`` (the bridge has no MLM head at all).
        reason: one sentence saying how the status was decided.
        checkpoint: the checkpoint file that was read, if any.
        missing: head modules without weights in the checkpoint (Hugging Face module names).
        architectures: ``config.architectures`` as saved with the checkpoint (the class it was
            saved from; ``['BertModel']`` means no head), for the record.
    """

    status: str
    reason: str
    checkpoint: str | None = None
    missing: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()

    @property
    def trained(self) -> bool:
        """The head's weights all come from the checkpoint."""
        return self.status == "trained"


def _component_names(model) -> dict[str, str]:
    """Bridge head component -> its Hugging Face module path (from the adapter's mapping)."""
    if model_kind(model) == "hooked-encoder":
        return dict(_BERT_HEAD_MODULES)
    mapping = getattr(getattr(model, "adapter", None), "component_mapping", None) or {}
    out = {}
    for key in MLM_HEAD_COMPONENTS:
        comp = mapping.get(key)
        name = getattr(comp, "name", None)
        if name:
            out[key] = str(name)
    return out


def _checkpoint_source(model) -> str | None:
    folder = getattr(model, "tlprobe_checkpoint", None)  # set by load_model on a HookedEncoder it built
    if folder:
        return str(folder)
    hf = getattr(model, "original_model", None)
    cfg = getattr(hf, "config", None)
    src = getattr(cfg, "_name_or_path", None) or getattr(model.cfg, "model_name", None)
    return str(src) if src else None


def _find_checkpoint(source: str) -> pathlib.Path | None:
    """The first checkpoint file of a local directory, or of a hub id in the local cache."""
    p = pathlib.Path(source)
    if p.is_dir():
        for name in _CHECKPOINT_FILES:
            if (p / name).is_file():
                return p / name
        return None
    try:
        from huggingface_hub import try_to_load_from_cache  # imported here: only encoder head checks need it
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    for name in _CHECKPOINT_FILES:
        try:
            hit = try_to_load_from_cache(source, name)
        except Exception:  # not a valid repo id (e.g. a label such as "tiny-bert")
            return None
        if isinstance(hit, str):
            return pathlib.Path(hit)
    return None


def checkpoint_keys(path: str | pathlib.Path) -> set[str]:
    """Parameter names stored in a checkpoint file, without loading any tensor.

    Reads the safetensors header, the ``weight_map`` of a sharded index, or a ``.bin`` file
    memory-mapped on the meta device.
    """
    path = pathlib.Path(path)
    if path.name.endswith(".index.json"):
        return set(json.loads(path.read_text(encoding="utf-8")).get("weight_map", {}))
    if path.suffix == ".safetensors":
        from safetensors import safe_open  # imported here: only encoder head checks read checkpoints

        with safe_open(str(path), "pt") as f:
            return set(f.keys())
    state = torch.load(str(path), map_location="meta", weights_only=True, mmap=True)
    return set(state)


def _has_module(keys: set[str], module: str, prefix: str) -> bool:
    """True if the checkpoint stores any parameter of ``module`` (with or without the
    base-model prefix, and whatever the parameter is called: ``weight``/``gamma``)."""
    forms = {module}
    if prefix and module.startswith(prefix + "."):
        forms.add(module[len(prefix) + 1 :])
    elif prefix:
        forms.add(f"{prefix}.{module}")
    return any(k.startswith(f + ".") for f in forms for k in keys)


def mlm_head_check(model) -> HeadCheck:
    """Decide whether an encoder's MLM head was trained or randomly initialised by the loader.

    Method: the adapter maps the head's bridge components (``mlm_head`` = transform dense,
    ``ln_final`` = transform LayerNorm, ``unembed`` = decoder) to Hugging Face module paths. The
    head is ``"trained"`` when the checkpoint the model was loaded from stores parameters for
    each of those modules (the decoder only when its weight is not tied to the input
    embedding); otherwise Transformers' loader initialised the missing ones at random (what it
    reports as "missing keys") and the status is ``"missing"``. The checkpoint is read by
    parameter *names* only (safetensors header, sharded index, or a meta-device ``.bin``), so the
    check costs milliseconds and loads no weight. Comparing weights with a fresh random
    initialisation, by contrast, would depend on the seed and could not tell a head that was
    never trained from one that was.

    Example:
        >>> from tlprobe.access.models import load_model
        >>> mlm_head_check(load_model("minilm", device="cpu")).missing
        ('cls.predictions.transform.dense', 'cls.predictions.transform.LayerNorm')
    """
    names = _component_names(model)
    hf = getattr(model, "original_model", None)
    cfg = getattr(hf, "config", None)
    source = _checkpoint_source(model)
    if model_kind(model) == "hooked-encoder":  # no wrapped HF model: BERT's layout, the saved config
        saved = _saved_config(source)
        archs = tuple(saved.get("architectures") or ())
        prefix, tied = "bert", bool(saved.get("tie_word_embeddings", True))
    else:
        archs = tuple(getattr(cfg, "architectures", None) or ())
        prefix = str(getattr(hf, "base_model_prefix", "") or "")
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
    if "mlm_head" not in names or "unembed" not in names:
        return HeadCheck("no-head", "the bridge maps no MLM head (mlm_head/unembed components)", architectures=archs)
    path = _find_checkpoint(source) if source else None
    if path is None:
        return HeadCheck(
            "unknown",
            f"no checkpoint file found for {source!r} (a model built in memory, or a hub model not in "
            "the local cache), so the head's origin cannot be verified",
            architectures=archs,
        )
    keys = checkpoint_keys(path)
    required = [names[k] for k in ("mlm_head", "ln_final") if k in names]
    if not tied:
        required.append(names["unembed"])
    missing = tuple(m for m in required if not _has_module(keys, m, prefix))
    arch_note = f" (config.architectures = {list(archs)})" if archs else ""
    if missing:
        return HeadCheck(
            "missing",
            f"the checkpoint {path.name} has no weights for {', '.join(missing)}{arch_note}: the "
            "loader filled the MLM head with random weights, so its predictions mean nothing",
            checkpoint=str(path),
            missing=missing,
            architectures=archs,
        )
    return HeadCheck(
        "trained",
        f"the checkpoint {path.name} stores weights for every MLM head module ({', '.join(required)})"
        + (" and the decoder is tied to the input embedding" if tied else ""),
        checkpoint=str(path),
        architectures=archs,
    )


def _saved_config(source: str | None) -> dict:
    """``config.json`` next to a local checkpoint (empty if there is none)."""
    path = pathlib.Path(source) / "config.json" if source else None
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


class _Captured(Exception):
    def __init__(self, value: torch.Tensor):
        super().__init__("captured")
        self.value = value


def _head_module(model) -> torch.nn.Module:
    """The Hugging Face module holding the whole MLM head (common ancestor of its components)."""
    names = _component_names(model)
    if "unembed" not in names or "mlm_head" not in names:
        raise UnsupportedModelError("the model has no MLM head (no mlm_head/unembed components)")
    parts = [n.split(".") for n in names.values()]
    common: list[str] = []
    for segs in zip(*parts):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    hf = _hf_model(model)
    return hf.get_submodule(".".join(common)) if common else hf


def mlm_transform(model, x: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_model"]:
    """Run the encoder's own MLM head code on ``x`` up to (not including) the decoder.

    Calls the Hugging Face head module (e.g. BERT's ``cls.predictions``: dense -> activation ->
    LayerNorm -> decoder) and captures the decoder's input with a pre-hook, so the activation
    and norm are exactly the model's, for any architecture whose head is one module. The
    logits are then ``mlm_transform(x) @ W_U + b_U``. A ``HookedEncoder``'s head is its own
    ``mlm_head`` module (dense -> GELU -> LayerNorm).
    """
    if model_kind(model) == "hooked-encoder":
        out: torch.Tensor = model.mlm_head(x.reshape(1, -1, x.shape[-1]))
        return out.reshape(x.shape)
    head = _head_module(model)
    decoder = getattr(model, "unembed", None)
    if not isinstance(decoder, torch.nn.Module):
        raise UnsupportedModelError("the model has no unembed component to read through")

    def grab(_module, args, kwargs):
        value = args[0] if args else next(iter(kwargs.values()))
        raise _Captured(value)

    handle = decoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        head(x.reshape(1, -1, x.shape[-1]))
    except _Captured as cap:
        return cap.value.reshape(*x.shape[:-1], cap.value.shape[-1])
    finally:
        handle.remove()
    raise UnsupportedModelError(
        "the MLM head module never called its decoder (unembed); this architecture's head is not "
        "supported by the MLM lens"
    )


def special_token_ids(model) -> list[int]:
    """Ids of the tokenizer's special tokens (BOS, ``[CLS]``, ``[SEP]``, padding).

    Example:
        >>> from tlprobe.access.models import load_model
        >>> special_token_ids(load_model("minilm", device="cpu"))
        [0, 100, 101, 102, 103]
    """
    return sorted({int(i) for i in getattr(model.tokenizer, "all_special_ids", []) or []})


def content_mask(
    model, tokens: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"]
) -> Bool[torch.Tensor, "batch pos"]:
    """Real tokens that are not special tokens (``[CLS]``, ``[SEP]``, BOS and padding do not count).

    Example:
        >>> from tlprobe.access.models import load_model
        >>> model = load_model("minilm", device="cpu")
        >>> enc = model.tokenizer(["her cat"], return_tensors="pt")
        >>> content_mask(model, enc["input_ids"], enc["attention_mask"]).int().tolist()
        [[0, 1, 1, 0]]
    """
    special = torch.tensor(special_token_ids(model) or [-1], device=tokens.device)
    return attention_mask.to(tokens.device).bool() & ~torch.isin(tokens, special)


def decode_tokens(model, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (``tokenizer.decode([i])``).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("gpt2")
        >>> decode_tokens(model, model.to_tokens("She gave her", prepend_bos=False)[0].tolist())
        ['She', ' gave', ' her']
    """
    return [model.tokenizer.decode([int(i)]) for i in ids]


@dataclass(frozen=True, eq=False)
class TokenStrings(Result):
    """The text of some token ids of a vocabulary (those a result shows), for figures and tables.

    Attributes:
        ids: sorted distinct token ids.
        strings: each id decoded on its own (``tokenizer.decode([id])``), in the order of ``ids``.
    """

    ids: Int[torch.Tensor, " n_ids"]
    strings: tuple[str, ...]

    def decode(self, ids) -> list | str:
        """The strings of ``ids`` (any shape), as nested lists of the same shape.

        Raises:
            TlprobeError: an id that this table does not hold.

        Example:
            >>> table = TokenStrings(ids=torch.tensor([3, 7]), strings=("a", " b"))
            >>> table.decode(torch.tensor([[7, 3]])), table.decode(3)
            ([[' b', 'a']], 'a')
        """
        t = torch.as_tensor(ids).long().cpu()
        flat = t.reshape(-1)
        if flat.numel() == 0:
            return np.empty(tuple(t.shape), dtype=object).tolist()
        known = self.ids.cpu()
        pos = torch.searchsorted(known, flat).clamp_max(max(len(known) - 1, 0))
        if len(known) == 0 or not bool((known[pos] == flat).all()):
            missing = sorted(set(flat.tolist()) - set(known.tolist()))[:5]
            raise TlprobeError(f"token id(s) {missing} are not in this table; build it with token_strings(model, ids)")
        out = np.array([self.strings[i] for i in pos.tolist()], dtype=object).reshape(tuple(t.shape))
        return out.tolist()


def token_strings(model, *ids: torch.Tensor | Sequence[int]) -> TokenStrings:
    """The :class:`TokenStrings` of every distinct id in ``ids`` (tensors or lists of ids, any shape).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("gpt2")
        >>> table = token_strings(model, model.to_tokens("her her cat", prepend_bos=False))
        >>> table.decode(table.ids) == decode_tokens(model, table.ids.tolist())
        True
    """
    parts = [torch.as_tensor(i).long().reshape(-1).cpu() for i in ids]
    unique = torch.unique(torch.cat(parts)) if parts else torch.zeros(0, dtype=torch.long)
    return TokenStrings(ids=unique, strings=tuple(decode_tokens(model, unique.tolist())))
