"""tlprobe recipes (``tlprobe.recipes``): one module per lesson, each a thin script over tlprobe's analyses.

A recipe module defines ``NAME`` (the CLI name), ``DESCRIPTION`` (one line), an ``Options``
dataclass and ``run(options=None, **overrides) -> RecipeResult`` (see
:mod:`tlprobe.recipes.common`). ``tlprobe ls`` lists them from :data:`RECIPES` without importing
any (so without importing torch), ``tlprobe run NAME`` runs one, ``tlprobe cp NAME PATH`` copies one.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tlprobe.errors import TlprobeError

#: Recipe name -> (module in this package, one-line description). A test checks it against the modules.
RECIPES: dict[str, tuple[str, str]] = {
    "dimensionality": (
        "dimensionality",
        "L06-L07: effective dimensionality (PCA) of the residual stream per layer and of each head's q/k/v/z",
    ),
    "layer-similarity": (
        "layer_similarity",
        "L03: Q/K/V similarity and across-context variance of a target word through all layers, per head too",
    ),
    "logit-lens": (
        "logit_lens",
        "L15-L17: logit lens (decoders), MLM lens or embedding lens (encoders), layer by layer",
    ),
    "mi-basics": (
        "mi_basics",
        "L08: histogram MI estimators (plug-in, Miller-Madow, shuffle, GCMI) against the known MI of Gaussian pairs",
    ),
    "mi-vs-covariance": (
        "mi_vs_covariance",
        "L10: mutual information vs covariance on simulated pairs (x^2, cos, correlation sweep; no model)",
    ),
    "pairwise-mi": (
        "pairwise_mi",
        "L09: pairwise mutual information between hidden dimensions, layer by layer, with its bias",
    ),
    "punctuation-clusters": (
        "punctuation_clusters",
        "L13: covariance vs MI around internal and terminal punctuation, clusters and a Simpson's-paradox check",
    ),
    "punctuation-depth": (
        "punctuation_depth",
        "L14: punctuation clusters (covariance vs MI) at every layer: counts, separation, Simpson check, merge",
    ),
    "qkv-similarity": (
        "qkv_similarity",
        "L01-L02: similarity within and across Q, K, V for a target word at one layer (cosine vs correlation)",
    ),
    "rsa": (
        "rsa",
        "L04-L05: RSA of Q and K vs a category model at every layer and head, and category selectivity",
    ),
    "token-distance": (
        "token_distance",
        "L11-L12: MI between tokens vs their distance (with a shuffle null) and vs each head's attention",
    ),
}


def get(name: str) -> ModuleType:
    """The module of recipe ``name``.

    Raises:
        TlprobeError: no recipe of that name (the message lists them).
    """
    if name not in RECIPES:
        raise TlprobeError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)} (see 'tlprobe ls')")
    return importlib.import_module(f"{__name__}.{RECIPES[name][0]}")


def available() -> dict[str, ModuleType]:
    """Recipe name -> module, for every recipe (imports them all)."""
    return {name: get(name) for name in RECIPES}
