"""tlprobe: measure what happens inside a transformer's layers, on TransformerLens caches.

Layers of the package, each importing only the ones before it:

* :mod:`tlprobe.access`: hook names, model families, padding, token positions, labels;
* :mod:`tlprobe.analyses`: pure functions, tensors in, a :class:`~tlprobe.result.Result` out;
* :mod:`tlprobe.figures`: results to plotly figures and circuitsvis views;
* :mod:`tlprobe.report`: one self-contained HTML file;
* :mod:`tlprobe.recipes`: one module per lesson; :mod:`tlprobe.cli`: the ``tlprobe`` command.

The entry points and result types are re-exported here, loaded on first use (so
``import tlprobe`` and ``tlprobe ls`` stay fast and do not import torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # access
    "find_token_positions": "tlprobe.access",
    "fused_qkv": "tlprobe.access",
    "get_qkv": "tlprobe.access",
    "load_model": "tlprobe.access",
    "model_info": "tlprobe.access",
    "resid_stack": "tlprobe.access",
    "run_batch": "tlprobe.access",
    "sample_positions": "tlprobe.access",
    "split_heads": "tlprobe.access",
    # analyses: entry points
    "cross_mi": "tlprobe.analyses",
    "embedding_lens": "tlprobe.analyses",
    "feature_similarity": "tlprobe.analyses",
    "gcmi": "tlprobe.analyses",
    "logit_lens": "tlprobe.analyses",
    "mi_null": "tlprobe.analyses",
    "mlm_lens": "tlprobe.analyses",
    "pairwise_mi": "tlprobe.analyses",
    "qkv_block_similarity": "tlprobe.analyses",
    "sample_moments": "tlprobe.analyses",
    "shuffle_values": "tlprobe.analyses",
    "token_mi": "tlprobe.analyses",
    # results
    "BlockStats": "tlprobe.analyses",
    "Result": "tlprobe.result",
    "load": "tlprobe.result",
    # errors
    "TlprobeError": "tlprobe.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tlprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from tlprobe.access import (
        find_token_positions,
        fused_qkv,
        get_qkv,
        load_model,
        model_info,
        resid_stack,
        run_batch,
        sample_positions,
        split_heads,
    )
    from tlprobe.analyses import (
        BlockStats,
        cross_mi,
        embedding_lens,
        feature_similarity,
        gcmi,
        logit_lens,
        mi_null,
        mlm_lens,
        pairwise_mi,
        qkv_block_similarity,
        sample_moments,
        shuffle_values,
        token_mi,
    )
    from tlprobe.errors import TlprobeError
    from tlprobe.result import Result, load
