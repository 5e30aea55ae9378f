"""Analyses: pure functions over tensors or caches, returning small typed results."""

from tlprobe.analyses.lens import (
    EmbeddingLensResult,
    LensResult,
    choose_lens,
    embedding_lens,
    lens_logits,
    logit_lens,
    mlm_lens,
)
from tlprobe.analyses.similarity import (
    BLOCKS,
    BlockStats,
    block_stats,
    feature_similarity,
    qkv_block_codes,
    qkv_block_similarity,
    qkv_labels,
    shuffle_values,
)

__all__ = [
    "EmbeddingLensResult",
    "LensResult",
    "choose_lens",
    "embedding_lens",
    "lens_logits",
    "logit_lens",
    "mlm_lens",
    "BLOCKS",
    "BlockStats",
    "block_stats",
    "feature_similarity",
    "qkv_block_codes",
    "qkv_block_similarity",
    "qkv_labels",
    "shuffle_values",
]
