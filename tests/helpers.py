"""Builders and checks shared by the tests (import them: ``from tests.helpers import ...``)."""

from __future__ import annotations

import gzip
import json
import pathlib

import numpy as np
import pytest
import torch

from tlprobe.analyses.punctuation import sample_occurrences

FIXTURES = pathlib.Path(__file__).parent / "recipes" / "fixtures"

#: Small, fast options per recipe for the tests (recipes not listed run with their defaults).
#: The fixtures in tests/recipes/fixtures were recorded with exactly these options (tlprobe 0.1.0).
FAST_OPTIONS: dict[str, dict] = {
    "qkv-similarity": {"bins": 40},
    "punctuation-clusters": {"n": 60, "k_max": 3},
    "layer-similarity": {"bins": 30},
    "pairwise-mi": {"shuffles": 3},
    "mi-vs-covariance": {"samples": 400, "shuffles": 20},
    "rsa": {"permutations": 200, "selectivity_permutations": 50},
    "dimensionality": {},
    "mi-basics": {"rho": (0.0, 0.9), "bins": (4, 8), "samples": (100, 1000, 3000), "seeds": 4, "shuffles": 5},
    "token-distance": {"shuffles": 3, "permutations": 200},
    # punctuation-clusters' options, so the panels at its depths can be compared with its run:
    "punctuation-depth": {"n": 60, "k_max": 3},
}


def run_recipe_fast(mod, out, **extra):
    """Run a recipe module with its fast test options into ``out``; returns its RecipeResult."""
    options = {"out": None if out is None else str(out), "progress": False, "quiet": True}
    return mod.run(**{**options, **FAST_OPTIONS.get(mod.NAME, {}), **extra})


def fixture(name: str) -> dict:
    """The ``results.json`` that tlprobe 0.1.0 wrote for recipe ``name`` with :data:`FAST_OPTIONS`."""
    return json.loads(gzip.decompress((FIXTURES / f"{name}.json.gz").read_bytes()))


def get_path(data, path: str):
    """``data["a"]["b"][3]`` for ``"a/b/3"`` (segments that are digits index lists)."""
    for part in path.split("/") if path else []:
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def numeric_leaves(data, prefix: str = "") -> list[str]:
    """Paths of every number (or list of numbers) in a JSON document, lists of numbers as one leaf."""
    if isinstance(data, bool) or data is None or isinstance(data, str):
        return []
    if isinstance(data, (int, float)):
        return [prefix]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in numeric_leaves(v, f"{prefix}/{k}".lstrip("/"))]
    if isinstance(data, list):
        if _is_numeric_array(data):
            return [prefix]
        return [p for i, v in enumerate(data) for p in numeric_leaves(v, f"{prefix}/{i}".lstrip("/"))]
    return []


def _is_numeric_array(data) -> bool:
    if isinstance(data, list):
        return all(_is_numeric_array(v) for v in data) and len(data) > 0
    return data is None or (isinstance(data, (int, float)) and not isinstance(data, bool))


def _array(value) -> np.ndarray:
    return np.array(value, dtype=np.float64)  # None (NaN in JSON) -> nan


# The fixtures were recorded on a TransformerBridge (TL 4.3), which TL 3.x boots the same way.
# On TL 2.x the bundled model is a HookedEncoder: TransformerLens' own BERT code, equal to
# Hugging Face to float32 rounding (3e-6, tests/access/test_worlds.py), not bit for bit, so a
# few samples on a bin edge fall in the next bin: one count moves a histogram probability by
# ~1e-5 and a binned MI by ~1e-4 (measured: at most 1.4e-5 and 1.1e-4, 0.13 % relative).
# The bridge's numbers were bit for bit those of the recording machine, but float32 BLAS
# kernels differ between CPUs, and so does the bridge there the same way: on another Xeon
# (2026-12-02) continuous values moved by up to 2.8e-6 relative and a few samples crossed a
# bin edge (histogram probabilities by up to 1.5e-4, a binned MI by 3e-5), within the same
# bounds as the HookedEncoder. One tolerance for both.
FIXTURE_TOLERANCE = {"rtol": 2e-3, "atol": 2e-4}


def assert_fixture_values(got, want, msg: str = "") -> None:
    """Per-head fractions recorded on the bridge, within one pair of the smallest block.

    A fraction over a head's QQ block (d_head = 32: 496 pairs) moves by 1/496 when one pair
    crosses its threshold under another CPU's (or TransformerLens' own BERT code's) rounding.
    """
    np.testing.assert_allclose(got, np.array(want), rtol=FIXTURE_TOLERANCE["rtol"], atol=1.001 / 496, err_msg=msg)


#: Share of a leaf's values (at least one) that may differ by more than FIXTURE_TOLERANCE: a
#: binned MI over a vector's few hundred coordinates moves by up to ~1 % when one coordinate sits
#: on a bin edge under another CPU's rounding (measured: 1 of 1,800 values, 0.8 %, 2026-12-02).
RARE_BIN_MOVES = 0.002


def _assert_close_but_rare_bin_moves(got: np.ndarray, want: np.ndarray, msg: str) -> None:
    """Within FIXTURE_TOLERANCE, except a rare value (a bin edge crossed) within 2 % relative."""
    close = np.isclose(got, want, **FIXTURE_TOLERANCE, equal_nan=True)
    allowed = max(1, int(RARE_BIN_MOVES * close.size))
    if (~close).sum() <= allowed:
        np.testing.assert_allclose(got[~close], want[~close], rtol=2e-2, err_msg=msg + " (bin-edge values)")
    else:
        np.testing.assert_allclose(got, want, **FIXTURE_TOLERANCE, equal_nan=True, err_msg=msg)


def assert_same_numbers(name: str, new: dict, pairs: dict[str, str], ignored: dict[str, str]) -> None:
    """Every number of the 0.1.0 fixture equals the new ``results.json``'s at the mapped path.

    Args:
        name: the recipe.
        new: the new ``results.json`` (parsed).
        pairs: old path -> new path, for subtrees holding the same numbers (the longest matching
            old prefix wins, so a field can be mapped apart from its subtree).
        ignored: old path -> why it is not compared (e.g. the same numbers again, as table rows).
            Every numeric leaf of the fixture must fall under one of ``pairs`` or ``ignored``.
    """
    old = fixture(name)
    rules = {**{k: ("pair", v) for k, v in pairs.items()}, **{k: ("ignored", v) for k, v in ignored.items()}}
    compared = 0
    for leaf in numeric_leaves(old):
        prefixes = [p for p in rules if leaf == p or leaf.startswith(p + "/") or p == ""]
        assert prefixes, f"{name}: the 0.1.0 number at {leaf!r} is not compared (map it in pairs or ignored)"
        best = max(prefixes, key=len)
        kind, target = rules[best]
        if kind == "ignored":
            continue
        new_path = (target + "/" + leaf[len(best) :].lstrip("/")).strip("/")
        a, b = _array(get_path(old, leaf)), _array(get_path(new, new_path))
        assert a.shape == b.shape, f"{name}: {leaf} has shape {a.shape}, new {new_path} has {b.shape}"
        _assert_close_but_rare_bin_moves(b, a, f"{name}: {leaf} vs {new_path}")
        compared += a.size
    assert compared > 0, f"{name}: nothing compared"


def punctuation_inputs():
    """A synthetic text of token classes (marks every 9 tokens), 12 windows per class (4 before,
    3 after) and random hidden states ``[2 depths, windows, 8, 32]``: ``(classes, occurrences,
    window token ids, hidden)``."""
    g = torch.Generator().manual_seed(0)
    text_cls = torch.zeros(400, dtype=torch.long)
    text_cls[torch.arange(20, 380, 9)] = 1
    text_cls[torch.arange(24, 380, 9)] = 2
    occ = sample_occurrences(text_cls, 12, before=4, after=3, seed=0, min_count=5)
    windows = torch.randint(0, 50, (len(occ), 8), generator=g)
    hidden = torch.randn(2, len(occ), 8, 32, generator=g)
    return text_cls, occ, windows, hidden


def _worlds():
    from tlprobe.access.worlds import has_bridge, has_hooked, tl_version_string

    return has_bridge(), has_hooked(), tl_version_string()


_HAS_BRIDGE, _HAS_HOOKED, _TL = _worlds()
#: Tests of one world only; the CI legs on other TransformerLens lines run the others.
requires_bridge = pytest.mark.skipif(
    not _HAS_BRIDGE, reason=f"TransformerBridge needs TransformerLens >= 3 (installed {_TL})"
)
requires_hooked = pytest.mark.skipif(
    not _HAS_HOOKED, reason=f"HookedTransformer/HookedEncoder need TransformerLens < 4 (installed {_TL})"
)
requires_both = pytest.mark.skipif(
    not (_HAS_BRIDGE and _HAS_HOOKED),
    reason=f"bridge and hooked classes together need TransformerLens 3.x (installed {_TL})",
)
