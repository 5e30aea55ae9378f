"""The three TransformerLens worlds tlprobe runs in, and which numerics a model gives.

* ``HookedTransformer`` (TL 2.x, 3.x): decoders, TransformerLens' own implementation; weights
  usually *processed* by ``from_pretrained`` (LayerNorm folded, writing weights and unembedding
  centred).
* ``HookedEncoder`` (TL 2.x, 3.x): BERT. Its ``hook_resid_post`` is *before* the block's output
  LayerNorm; the block output is ``hook_normalized_resid_post``.
* ``TransformerBridge`` (TL 3.x, 4.x): the Hugging Face model wrapped with hooks; raw weights
  unless ``enable_compatibility_mode()`` folded them.

TransformerLens 4.0 removed ``HookedTransformer`` and ``HookedEncoder``; even
``hasattr(transformer_lens, "HookedTransformer")`` raises there. So the kind of a model is read
from the names of its classes (no import), and the installed version from package metadata.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from functools import lru_cache
from typing import Any, Literal

import torch

from tlprobe.errors import ModelLoadError

ModelKind = Literal["bridge", "hooked", "hooked-encoder", "other"]

#: Hugging Face ``model_type`` values of bidirectional encoders (masked-LM families).
ENCODER_MODEL_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "modernbert"}
)


@lru_cache(maxsize=1)
def tl_version() -> tuple[int, int, int]:
    """The installed TransformerLens version as ``(major, minor, patch)``.

    Example:
        >>> tl_version() >= (2, 16, 0)
        True
    """
    text = importlib.metadata.version("transformer-lens")
    major, minor, patch = ([int("".join(ch for ch in p if ch.isdigit()) or 0) for p in text.split(".")[:3]] + [0, 0])[
        :3
    ]
    return major, minor, patch


def tl_version_string() -> str:
    """The installed TransformerLens version, as its metadata spells it."""
    return importlib.metadata.version("transformer-lens")


def has_bridge() -> bool:
    """``TransformerBridge`` exists (TransformerLens 3.0 and later)."""
    return tl_version() >= (3, 0, 0)


def has_hooked() -> bool:
    """``HookedTransformer`` / ``HookedEncoder`` exist (TransformerLens before 4.0)."""
    return tl_version() < (4, 0, 0)


@lru_cache(maxsize=1)
def bridge_class():
    """``transformer_lens.model_bridge.TransformerBridge`` (imported once: it costs seconds)."""
    if not has_bridge():
        raise ModelLoadError(
            f"TransformerBridge needs TransformerLens 3.0 or later (installed: {tl_version_string()}); "
            "use kind='hooked' (HookedTransformer / HookedEncoder) or pip install 'transformer-lens>=3'"
        )
    from transformer_lens.model_bridge import TransformerBridge  # seconds to import: once, lazily

    return TransformerBridge


def hooked_classes():
    """``(HookedTransformer, HookedEncoder, HookedTransformerConfig)`` of TransformerLens 2.x/3.x."""
    if not has_hooked():
        raise ModelLoadError(
            f"TransformerLens {tl_version_string()} has no HookedTransformer/HookedEncoder (removed in 4.0); "
            "use kind='bridge' (TransformerBridge), or install 'transformer-lens<4' for the hooked classes"
        )
    # seconds to import, and absent in TL 4 (so also unknown to a type checker run on TL 4): by name
    tl: Any = importlib.import_module("transformer_lens")
    return tl.HookedTransformer, tl.HookedEncoder, tl.HookedTransformerConfig


def weight_conversions() -> Any:
    """``transformer_lens.pretrained.weight_conversions`` of TL 2.x/3.x (``convert_gpt2_weights``, ...)."""
    hooked_classes()  # the same clear error on TL 4
    return importlib.import_module("transformer_lens.pretrained.weight_conversions")


def model_kind(model) -> ModelKind:
    """Which world a model comes from, read from its class names (nothing is imported).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> model_kind(tiny_model("gpt2", kind="hooked" if has_hooked() else "bridge")) in ("hooked", "bridge")
        True
        >>> model_kind(torch.nn.Linear(2, 2))
        'other'
    """
    names = {c.__name__ for c in type(model).__mro__}
    if "TransformerBridge" in names:
        return "bridge"
    if "HookedEncoder" in names:
        return "hooked-encoder"
    if "HookedTransformer" in names:
        return "hooked"
    return "other"


def hf_config(model):
    """The wrapped Hugging Face config of a bridge (``None`` for hooked models)."""
    return getattr(getattr(model, "original_model", None), "config", None)


def is_encoder(model) -> bool:
    """Bidirectional attention (BERT-style), on every TransformerLens version.

    TL 4 bridges set ``cfg.attention_dir = "bidirectional"``; TL 3.9 bridges leave it
    ``"causal"`` for BERT, so the wrapped Hugging Face config (``model_type``, ``is_decoder``,
    a ``*ForMaskedLM`` architecture) is read as well; ``HookedEncoder`` is always an encoder.
    """
    if model_kind(model) == "hooked-encoder":
        return True
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "attention_dir", "causal") == "bidirectional":
        return True
    hf = hf_config(model)
    if hf is not None and not getattr(hf, "is_decoder", False):
        if str(getattr(hf, "model_type", "")) in ENCODER_MODEL_TYPES:
            return True
    arch = str(getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None) or "")
    return arch.endswith("ForMaskedLM")


def _centred(w: torch.Tensor | None, dim: int) -> bool:
    """The mean of ``w`` along ``dim`` is zero to float precision (centring was applied)."""
    if not isinstance(w, torch.Tensor) or w.numel() == 0:
        return False
    with torch.no_grad():
        w = w.detach().float()
        return bool(w.mean(dim).abs().max() <= 1e-5 * max(float(w.abs().max()), 1e-12))


def weight_processing(model) -> dict[str, bool]:
    """What ``from_pretrained``-style weight processing a model shows, read from its weights.

    ``folded_ln``: the config's norm is ``LNPre``/``RMSPre`` (LayerNorm weights folded into the
    next matrices), or a bridge in compatibility mode. ``centred_unembed``: every row of ``W_U``
    has zero mean over the vocabulary. ``centred_writing_weights``: ``W_E`` rows have zero mean
    over ``d_model``. These are the processings that change tlprobe's numbers (the residual
    stream and the logits); ``fold_value_biases`` changes no cached activation that tlprobe reads
    except ``hook_v``'s bias and is not detected.
    """
    kind = model_kind(model)
    if kind in ("bridge", "hooked-encoder"):  # HookedEncoder.from_pretrained never processes weights
        on = kind == "bridge" and bool(getattr(model, "compatibility_mode", False))
        return {"folded_ln": on, "centred_writing_weights": on, "centred_unembed": on}
    norm = str(getattr(getattr(model, "cfg", None), "normalization_type", None))
    return {
        "folded_ln": norm in ("LNPre", "RMSPre"),
        "centred_writing_weights": _centred(getattr(model, "W_E", None), -1),
        "centred_unembed": _centred(getattr(model, "W_U", None), -1),
    }


def numerics(model, *, processing: dict[str, bool] | None = None) -> str:
    """Which numerics a model's activations come from, in words (recorded with every result).

    Args:
        model: the model.
        processing: its :func:`weight_processing`, if already computed (it reads whole matrices).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> numerics(tiny_model("gpt2"))  # a bridge on TL 3.x/4.x, a HookedTransformer on 2.x
        '... (raw Hugging Face weights)'
    """
    kind = model_kind(model)
    if kind == "bridge":
        if getattr(model, "compatibility_mode", False):
            return "bridge (compatibility mode: folded LN, centred writing weights and unembedding)"
        return "bridge (raw Hugging Face weights)"
    if kind == "hooked-encoder":
        return "HookedEncoder (raw Hugging Face weights)"
    if kind == "hooked":
        p = weight_processing(model) if processing is None else processing
        done = [
            text
            for key, text in (
                ("folded_ln", "folded LN"),
                ("centred_writing_weights", "centred writing weights"),
                ("centred_unembed", "centred unembedding"),
            )
            if p[key]
        ]
        return f"HookedTransformer ({', '.join(done)})" if done else "HookedTransformer (raw Hugging Face weights)"
    return f"{type(model).__name__} (not a TransformerLens model class)"
