"""Shared fixtures. Tests never reach a model hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    from tlprobe import load_model

    return load_model("minilm", device="cpu")


@pytest.fixture(scope="session")
def tiny_models():
    from tlprobe.testing import tiny_model

    return {fam: tiny_model(fam) for fam in ("gpt2", "neox", "llama")}


@pytest.fixture(scope="session")
def bpe_tokenizer():
    from tlprobe.testing import tiny_tokenizer

    return tiny_tokenizer("bpe")


@pytest.fixture(scope="session")
def wordpiece_tokenizer():
    from tlprobe.testing import tiny_tokenizer

    return tiny_tokenizer("wordpiece")


#: Small, fast options per recipe for the tests (recipes not listed run with their defaults).
FAST_OPTIONS: dict[str, dict] = {
    "qkv-similarity": {"bins": 40},
    "punctuation-clusters": {"n": 60, "k_max": 3},
    "layer-similarity": {"bins": 30},
    "pairwise-mi": {"shuffles": 3},
    "mi-vs-covariance": {"samples": 400, "shuffles": 20},
}


def run_recipe_fast(mod, out, **extra) -> dict:
    """Run a recipe module with its fast test options into ``out``; returns the paths written."""
    import inspect

    accepted = inspect.signature(mod.run).parameters
    options = {"out": str(out), "progress": False, "quiet": True, **FAST_OPTIONS.get(mod.NAME, {}), **extra}
    return mod.run(**{k: v for k, v in options.items() if k in accepted})


@pytest.fixture(scope="session")
def recipe_output(tmp_path_factory):
    """``recipe_output(name)``: that recipe's outputs, run once per test session with fast options."""
    import recipes

    done: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in done:
            done[name] = run_recipe_fast(recipes.available()[name], tmp_path_factory.mktemp(name))
        return done[name]

    return get
