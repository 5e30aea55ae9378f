"""Shared fixtures. Tests never reach a model hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

from tests.browser import CHROMIUM_ARGS, unavailable  # noqa: E402
from tlprobe.errors import TlprobeError  # noqa: E402


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


@pytest.fixture(scope="session")
def chromium_path() -> str:
    from tlprobe.report.png import find_browser

    try:
        return find_browser()
    except TlprobeError as exc:
        unavailable(f"no browser for the browser tests: {exc}")


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed (pip install playwright; no 'playwright install' needed)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()
