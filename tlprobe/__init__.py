"""tlprobe: measure what happens inside a transformer's layers, on TransformerLens caches.

Layers of the package:

* :mod:`tlprobe.access`: hook names, model families, padding, token positions;
* :mod:`tlprobe.analyses`: pure functions, tensors in, small typed results out;
* :mod:`tlprobe.figures`: results to plotly figures and circuitsvis views;
* :mod:`tlprobe.report`: one self-contained HTML file.

The most used entry points are re-exported here; everything else lives in those modules.
"""

from tlprobe.access import (
    find_token_positions,
    fused_qkv,
    get_qkv,
    load_model,
    model_info,
    resid_stack,
    run_batch,
    sample_positions,
)
from tlprobe.analyses import (
    BlockStats,
    block_stats,
    cross_mi,
    depth_block_similarity,
    embedding_lens,
    feature_similarity,
    gcmi,
    head_maps,
    logit_lens,
    mi_null,
    pairwise_mi,
    qkv_block_codes,
    qkv_block_similarity,
    sample_moments,
    shuffle_values,
    token_mi,
)
from tlprobe.errors import TlprobeError

__version__ = "0.1.0"

__all__ = [
    "BlockStats",
    "TlprobeError",
    "block_stats",
    "cross_mi",
    "depth_block_similarity",
    "embedding_lens",
    "feature_similarity",
    "find_token_positions",
    "fused_qkv",
    "gcmi",
    "get_qkv",
    "head_maps",
    "load_model",
    "logit_lens",
    "mi_null",
    "model_info",
    "pairwise_mi",
    "qkv_block_codes",
    "qkv_block_similarity",
    "resid_stack",
    "run_batch",
    "sample_moments",
    "sample_positions",
    "shuffle_values",
    "token_mi",
]
