"""Tiny random models for tests, built offline (no model hub).

Researchers can use these in their own test suites::

    from tlprobe.testing import tiny_model
    model = tiny_model("llama")          # grouped-query attention, RMSNorm, rotary
    _, cache = model.run_with_cache("She gave her the book")

Each family comes in two worlds from the *same* Hugging Face weights (same ``seed``):
``kind="bridge"`` (a ``TransformerBridge``, TransformerLens 3.x/4.x) and ``kind="hooked"`` (a
``HookedTransformer``, TransformerLens 2.x/3.x, built with TransformerLens' own weight
conversion; ``processed=True`` folds LayerNorm and centres the weights as
``HookedTransformer.from_pretrained`` does by default).

The decoders use a small byte-level BPE tokenizer trained here on tlprobe's own sentences
(GPT-2 style: ``" her"`` is one token with a leading space marker). The encoder is the
bundled all-MiniLM-L6-v2 (real weights), see :func:`tlprobe.load_model`.
"""

from __future__ import annotations

import tempfile
from functools import cache
from importlib import resources

import torch

from tlprobe.access.models import hooked_sizes, minilm_dir
from tlprobe.access.worlds import bridge_class, has_bridge, hooked_classes, weight_conversions
from tlprobe.errors import TlprobeError

FAMILIES = ("gpt2", "neox", "llama")


def _corpus() -> list[str]:
    text = resources.files("tlprobe.recipes").joinpath("data/her_sentences.txt").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    extra = [
        "She gave her the book. Herself, other, hers, there, where, here.",
        "The quick brown fox jumps over the lazy dog, twice; then it rests.",
        "Numbers like 3.14, 2.0 and version 1.2.3 appear... sometimes!",
    ]
    return lines + extra


@cache
def _tokenizer_dir(kind: str) -> str:
    # transformers/tokenizers take ~1 s to import: only when a test model is built
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind != "bpe":
        raise TlprobeError(f"unknown tokenizer kind {kind!r}; use 'bpe' or 'wordpiece'")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    fast.pad_token = fast.eos_token
    # In-memory fast tokenizers crash TransformerLens (KeyError 'name_or_path'): save and reload.
    path = tempfile.mkdtemp(prefix="tlprobe-tok-")
    fast.save_pretrained(path)
    return path


def tiny_tokenizer(kind: str = "bpe"):
    """A tokenizer that needs no hub: ``"bpe"`` (byte-level BPE, GPT-2 style, ~600 tokens) or
    ``"wordpiece"`` (the bundled MiniLM BERT tokenizer, 30522 tokens)."""
    from transformers import AutoTokenizer  # ~1 s to import: only when a test model is built

    if kind == "wordpiece":
        return AutoTokenizer.from_pretrained(str(minilm_dir()))
    return AutoTokenizer.from_pretrained(_tokenizer_dir(kind))


def tiny_model(
    family: str = "gpt2",
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    seed: int = 0,
    tokenizer: str = "bpe",
    device: str = "cpu",
    *,
    kind: str = "auto",
    processed: bool = False,
):
    """A randomly initialised decoder of a family, built offline, as a bridge or a HookedTransformer.

    Args:
        family: ``"gpt2"`` (LayerNorm, learned positions), ``"neox"`` (parallel blocks,
            rotary) or ``"llama"`` (RMSNorm, rotary, grouped-query attention with
            ``n_kv_heads`` key/value heads).
        n_layers, d_model, n_heads: sizes (``d_head = d_model // n_heads``).
        n_kv_heads: key/value heads, LLaMA only.
        seed: torch seed for the weights; the same seed gives the same weights in both kinds.
        tokenizer: ``"bpe"`` or ``"wordpiece"`` (see :func:`tiny_tokenizer`).
        device: where to put it.
        kind: ``"bridge"`` (``TransformerBridge``), ``"hooked"`` (``HookedTransformer``) or
            ``"auto"`` (the bridge where the installed TransformerLens has it).
        processed: hooked only: fold LayerNorm, centre writing weights and unembedding.

    Example:
        >>> model = tiny_model("neox", n_layers=3)
        >>> model.cfg.n_layers, model.cfg.parallel_attn_mlp
        (3, True)
    """
    hf, tok = tiny_hf_model(family, n_layers, d_model, n_heads, n_kv_heads, seed, tokenizer)
    if kind == "auto":
        kind = "bridge" if has_bridge() else "hooked"
    if kind == "bridge":
        if processed:
            raise TlprobeError(
                "processed=True is for kind='hooked'; on a bridge call model.enable_compatibility_mode()"
            )
        return bridge_class().boot_transformers(f"tiny-{family}", hf_model=hf, tokenizer=tok, device=device)
    if kind != "hooked":
        raise TlprobeError(f"unknown kind {kind!r}; use 'bridge', 'hooked' or 'auto'")
    return _hooked(family, hf, tok, device, processed)


def tiny_hf_model(
    family: str = "gpt2",
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    seed: int = 0,
    tokenizer: str = "bpe",
):
    """The Hugging Face model (eval mode) and tokenizer behind :func:`tiny_model` with the same
    arguments: the same weights, as an independent reference for tests in every world.

    Example:
        >>> hf, tok = tiny_hf_model("gpt2")
        >>> type(hf).__name__, len(tok)
        ('GPT2LMHeadModel', 600)
    """
    # ~1 s to import: only when a test model is built
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok = tiny_tokenizer(tokenizer)
    vocab = len(tok)
    if family == "gpt2":
        cfg = GPT2Config(
            n_layer=n_layers,
            n_embd=d_model,
            n_head=n_heads,
            vocab_size=vocab,
            n_positions=256,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        cls = GPT2LMHeadModel
    elif family == "neox":
        cfg = GPTNeoXConfig(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            num_attention_heads=n_heads,
            intermediate_size=4 * d_model,
            vocab_size=vocab,
            max_position_embeddings=256,
        )
        cls = GPTNeoXForCausalLM
    elif family == "llama":
        cfg = LlamaConfig(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads,
            intermediate_size=2 * d_model,
            vocab_size=vocab,
            max_position_embeddings=256,
        )
        cls = LlamaForCausalLM
    else:
        raise TlprobeError(f"unknown family {family!r}; choose one of {FAMILIES}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = cls(cfg).eval()  # pyright: ignore[reportArgumentType]  (cls matches cfg by family)
    return hf, tok


def _rope_theta(c) -> float:
    """The rotary base, wherever this Transformers version keeps it."""
    for key in ("rope_theta", "rotary_emb_base"):
        if getattr(c, key, None):
            return float(getattr(c, key))
    params = getattr(c, "rope_parameters", None) or {}
    return float(params.get("rope_theta", 10000.0))


def _rotary_fraction(c) -> float:
    for key in ("rotary_pct", "partial_rotary_factor"):
        if getattr(c, key, None):
            return float(getattr(c, key))
    params = getattr(c, "rope_parameters", None) or {}
    return float(params.get("partial_rotary_factor", 1.0))


def _hooked(family: str, hf, tok, device: str, processed: bool):
    """``hf``'s weights in a ``HookedTransformer``, through TransformerLens' own converters.

    The config mirrors ``transformer_lens.loading_from_pretrained.convert_hf_model_config`` for
    the three families (that function only accepts hub names or, on some versions, folders).
    """
    HookedTransformer, _, HookedTransformerConfig = hooked_classes()  # first: a clear error on TL 4
    conversions = weight_conversions()
    c = hf.config
    if family == "gpt2":
        d = dict(
            d_model=c.n_embd,
            d_head=c.n_embd // c.n_head,
            n_heads=c.n_head,
            d_mlp=4 * c.n_embd,
            n_layers=c.n_layer,
            n_ctx=c.n_positions,
            eps=c.layer_norm_epsilon,
            act_fn=c.activation_function,
            normalization_type="LN",
            original_architecture="GPT2LMHeadModel",
        )
        convert = conversions.convert_gpt2_weights
    elif family == "neox":
        d = dict(
            **hooked_sizes(c),
            eps=c.layer_norm_eps,
            act_fn=c.hidden_act,
            normalization_type="LN",
            positional_embedding_type="rotary",
            rotary_dim=round(_rotary_fraction(c) * hooked_sizes(c)["d_head"]),
            rotary_base=_rope_theta(c),
            rotary_adjacent_pairs=False,
            parallel_attn_mlp=True,
            default_prepend_bos=False,
            original_architecture="GPTNeoXForCausalLM",
        )
        convert = conversions.convert_neox_weights
    else:
        d = dict(
            **hooked_sizes(c),
            n_key_value_heads=c.num_key_value_heads,
            eps=c.rms_norm_eps,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=hooked_sizes(c)["d_head"],
            rotary_base=_rope_theta(c),
            rotary_adjacent_pairs=False,
            final_rms=True,
            gated_mlp=True,
            original_architecture="LlamaForCausalLM",
        )
        convert = conversions.convert_llama_weights
    if processed:  # as from_pretrained's config does when it folds LN: weightless norm modules
        d["normalization_type"] = f"{d['normalization_type']}Pre"
    cfg = HookedTransformerConfig(d_vocab=c.vocab_size, model_name=f"tiny-{family}", device=device, **d)
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=True)
    state = convert(hf, cfg)
    model.load_and_process_state_dict(
        state,
        fold_ln=processed,
        center_writing_weights=processed,
        center_unembed=processed,
        fold_value_biases=processed,
        refactor_factored_attn_matrices=False,
    )
    return model.eval()
