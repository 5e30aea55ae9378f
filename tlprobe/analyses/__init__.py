"""Analyses: pure functions over tensors or caches, returning small typed results."""

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
    "BLOCKS",
    "BlockStats",
    "block_stats",
    "feature_similarity",
    "qkv_block_codes",
    "qkv_block_similarity",
    "qkv_labels",
    "shuffle_values",
]
