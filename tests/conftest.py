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


@pytest.fixture(scope="session")
def recipe_output(tmp_path_factory):
    """``recipe_output(name)``: that recipe's RecipeResult, run once per test session with fast options
    (its files under ``.paths``)."""
    from tests.helpers import run_recipe_fast
    from tlprobe import recipes

    done: dict = {}

    def get(name: str):
        if name not in done:
            done[name] = run_recipe_fast(recipes.get(name), tmp_path_factory.mktemp(name))
        return done[name]

    return get
