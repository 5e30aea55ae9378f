"""run_batch's cache of every hook: what it costs, the estimate that refuses a cache too large, and
batches merged without copying a hook twice.

``names=None`` keeps TransformerLens' ``run_with_cache`` meaning (every hook); no tlprobe code
asks for it, and a cache that would not fit is refused after one prompt, not after all of them.
"""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

import tlprobe
import tlprobe.access.run as run_module
from tlprobe.access import resid_hook_names, run_batch
from tlprobe.access.run import _cache_size
from tlprobe.errors import TlprobeError
from tlprobe.recipes.common import data_path, read_lines
from tlprobe.testing import tiny_model

PACKAGE = pathlib.Path(tlprobe.__file__).parent


def _calls(func_name: str):
    """``(file, line, call)`` for every call of ``func_name`` in tlprobe's own code."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if name == func_name:
                    yield path.relative_to(PACKAGE), node.lineno, node


@pytest.mark.parametrize("func_name", ["run_batch", "forward_cache"])
def test_no_tlprobe_code_caches_every_hook(func_name):
    """Every call passes names= explicitly, never None (None would cache every hook)."""
    calls = list(_calls(func_name))
    assert calls, f"no call of {func_name} found"
    for path, line, call in calls:
        names = [kw.value for kw in call.keywords if kw.arg == "names"]
        assert names, f"{path}:{line}: {func_name}(...) without names= caches every hook"
        assert not (isinstance(names[0], ast.Constant) and names[0].value is None), f"{path}:{line}: names=None"


def _storages(cache) -> dict[int, list[str]]:
    """Hooks by the memory they hold (first byte of their storage)."""
    out: dict[int, list[str]] = {}
    for k in cache.keys():
        out.setdefault(cache[k].untyped_storage().data_ptr(), []).append(k)
    return out


def _held_bytes(cache) -> int:
    """Bytes held by the cache's tensors, each storage counted once."""
    seen = {cache[k].untyped_storage().data_ptr(): cache[k].untyped_storage().nbytes() for k in cache.keys()}
    return sum(seen.values())


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return read_lines(data_path("her_sentences.txt"))[:12]


@pytest.mark.parametrize("which", ["minilm", "gpt2 left-padded"])
def test_batches_merge_into_the_single_pass_cache(which, minilm, sentences):
    """Split into batches, every hook's values are the single pass's, and hooks that share a tensor
    there (a bridge's canonical duplicates) share one here, so nothing is held twice."""
    model, side = (minilm, "right") if which == "minilm" else (tiny_model("gpt2"), "left")
    whole = run_batch(model, sentences, batch_size=len(sentences), padding_side=side)
    split = run_batch(model, sentences, batch_size=5, padding_side=side)  # 5 + 5 + 2
    assert whole.cache.keys() == split.cache.keys()
    for k in whole.cache.keys():
        a, b = whole.cache[k], split.cache[k]
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), k
    groups = lambda cache: sorted(sorted(ks) for ks in _storages(cache).values())  # noqa: E731
    assert groups(split.cache) == groups(whole.cache)


def test_the_estimate_is_what_run_batch_holds(minilm, sentences):
    whole = run_batch(minilm, sentences, batch_size=64)
    split = run_batch(minilm, sentences, batch_size=5)
    n = len(sentences)
    need, per_prompt, n_hooks, device = _cache_size(
        minilm, whole.tokens, whole.attention_mask, names=None, batch_size=64
    )
    assert (need, n_hooks, device.type) == (n * per_prompt, len(whole.cache.keys()), "cpu")
    # Within 1 %: the estimate counts every hook for every prompt, so a hook of one row shared by
    # every prompt (a bridge's pos_embed.hook_in, the positions) n times; a single pass's hook
    # that is a slice of a larger tensor holds that whole tensor (MiniLM, 12 sentences: 2.5 kB).
    for batch in (whole, split):
        held = _held_bytes(batch.cache)
        assert abs(need - held) <= 0.01 * held, (need, held)
    need_split, *_ = _cache_size(minilm, whole.tokens, whole.attention_mask, names=None, batch_size=5)
    assert need_split == (n + 5) * per_prompt  # the result and the batch being copied


@pytest.fixture
def forward_passes(monkeypatch):
    """How many forward passes run_batch makes (its probe included)."""
    calls: list[int] = []
    real = run_module.forward_cache

    def counted(model, tokens, *args, **kwargs):
        calls.append(int(tokens.shape[0]))
        return real(model, tokens, *args, **kwargs)

    monkeypatch.setattr(run_module, "forward_cache", counted)
    return calls


@pytest.mark.parametrize(
    "names", [None, lambda name: "hook_pattern" in name or "resid" in name], ids=["None", "predicate"]
)
def test_a_cache_too_large_is_refused_after_one_prompt(names, minilm, sentences, monkeypatch, forward_passes):
    monkeypatch.setattr("tlprobe.checks.available_memory", lambda device=None: 2**20)  # 1 MiB free
    with pytest.raises(TlprobeError) as exc:
        run_batch(minilm, sentences, names=names)
    message = str(exc.value)
    assert "\n" not in message and f"for {len(sentences)} prompts needs ~" in message
    assert "pass names= with the hooks you read (e.g. tlprobe.access.resid_hook_names(model))" in message
    assert forward_passes == [1]  # the probe only: refused before the prompts run


def test_named_hooks_and_single_prompts_run_without_a_probe(minilm, sentences, monkeypatch, forward_passes):
    monkeypatch.setattr("tlprobe.checks.available_memory", lambda device=None: 2**20)
    batch = run_batch(minilm, sentences, names=resid_hook_names(minilm), batch_size=5)
    assert forward_passes == [5, 5, 2] and set(resid_hook_names(minilm)) <= set(batch.cache.keys())
    forward_passes.clear()
    run_batch(minilm, sentences[:1])  # one prompt: the run is its own probe
    assert forward_passes == [1]
