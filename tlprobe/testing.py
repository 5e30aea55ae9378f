"""Tiny random models for tests, built offline (no model hub).

Researchers can use these in their own test suites::

    from tlprobe.testing import tiny_model
    model = tiny_model("llama")          # grouped-query attention, RMSNorm, rotary
    _, cache = model.run_with_cache("She gave her the book")

The decoders use a small byte-level BPE tokenizer trained here on tlprobe's own sentences
(GPT-2 style: ``" her"`` is one token with a leading space marker). The encoder is the
bundled all-MiniLM-L6-v2 (real weights), see :func:`tlprobe.load_model`.
"""

from __future__ import annotations

import tempfile
from functools import cache
from importlib import resources

import torch

from tlprobe.access.models import bridge_class, minilm_dir
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
):
    """A randomly initialised ``TransformerBridge`` of a decoder family, built offline.

    Args:
        family: ``"gpt2"`` (LayerNorm, learned positions), ``"neox"`` (parallel blocks,
            rotary) or ``"llama"`` (RMSNorm, rotary, grouped-query attention with
            ``n_kv_heads`` key/value heads).
        n_layers, d_model, n_heads: sizes (``d_head = d_model // n_heads``).
        n_kv_heads: key/value heads, LLaMA only.
        seed: torch seed for the weights; the same seed gives the same model.
        tokenizer: ``"bpe"`` or ``"wordpiece"`` (see :func:`tiny_tokenizer`).
        device: where to put it.

    Example:
        >>> model = tiny_model("neox", n_layers=3)
        >>> model.cfg.n_layers, model.cfg.parallel_attn_mlp
        (3, True)
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
    return bridge_class().boot_transformers(f"tiny-{family}", hf_model=hf, tokenizer=tok, device=device)
