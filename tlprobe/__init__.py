"""tlprobe: measure what happens inside a transformer's layers, on TransformerLens caches.

Layers of the package:

* :mod:`tlprobe.access`: hook names, model families, padding, token positions;
* :mod:`tlprobe.analyses`: pure functions, tensors in, small typed results out;
* :mod:`tlprobe.figures`: results to plotly figures and circuitsvis views;
* :mod:`tlprobe.report`: one self-contained HTML file.
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
    feature_similarity,
    qkv_block_codes,
    qkv_block_similarity,
    shuffle_values,
)
from tlprobe.analyses.lens import embedding_lens, logit_lens
from tlprobe.errors import TlprobeError

__version__ = "0.1.0"

__all__ = [
    "BlockStats",
    "TlprobeError",
    "block_stats",
    "feature_similarity",
    "embedding_lens",
    "find_token_positions",
    "fused_qkv",
    "get_qkv",
    "load_model",
    "logit_lens",
    "model_info",
    "qkv_block_codes",
    "qkv_block_similarity",
    "resid_stack",
    "run_batch",
    "sample_positions",
    "shuffle_values",
]
