"""Access layer: the only code that knows hook names, model families, padding and positions."""

from tlprobe.access.hooks import (
    attention_pattern,
    fused_qkv,
    get_activation,
    get_qkv,
    hook_name,
    hook_names,
    resid_hook_names,
    resid_stack,
)
from tlprobe.access.models import BUNDLED_MODELS, ModelInfo, load_model, minilm_dir, model_info
from tlprobe.access.run import Batch, run_batch
from tlprobe.access.unembed import (
    HeadCheck,
    apply_final_norm,
    embedding_matrix,
    mlm_head_check,
    target_token_ids,
    unembedding,
)
from tlprobe.access.tokens import Positions, find_token_positions, sample_positions, target_variants

__all__ = [
    "HeadCheck",
    "apply_final_norm",
    "embedding_matrix",
    "mlm_head_check",
    "target_token_ids",
    "unembedding",
    "BUNDLED_MODELS",
    "Batch",
    "ModelInfo",
    "Positions",
    "attention_pattern",
    "find_token_positions",
    "fused_qkv",
    "get_activation",
    "get_qkv",
    "hook_name",
    "hook_names",
    "load_model",
    "minilm_dir",
    "model_info",
    "resid_hook_names",
    "resid_stack",
    "run_batch",
    "sample_positions",
    "target_variants",
]
