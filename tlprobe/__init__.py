"""tlprobe: measure what happens inside a transformer's layers, on TransformerLens caches.

Layers of the package, each importing only the ones before it:

* :mod:`tlprobe.access`: hook names, model families, padding, token positions, labels;
* :mod:`tlprobe.analyses`: pure functions, tensors in, a :class:`~tlprobe.result.Result` out;
* :mod:`tlprobe.figures`: results to plotly figures and circuitsvis views;
* :mod:`tlprobe.report`: one self-contained HTML file;
* :mod:`tlprobe.recipes`: one module per lesson; :mod:`tlprobe.cli`: the ``tlprobe`` command.

The entry points and result types are re-exported here and loaded on first use, so
``import tlprobe`` and ``tlprobe ls`` stay fast and import no torch; constants stay in their modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # tlprobe.access
    "attention_pattern": "tlprobe.access",
    "Batch": "tlprobe.access",
    "find_token_positions": "tlprobe.access",
    "fused_qkv": "tlprobe.access",
    "get_qkv": "tlprobe.access",
    "head_slice": "tlprobe.access",
    "load_model": "tlprobe.access",
    "model_info": "tlprobe.access",
    "ModelInfo": "tlprobe.access",
    "Positions": "tlprobe.access",
    "resid_stack": "tlprobe.access",
    "run_batch": "tlprobe.access",
    "sample_positions": "tlprobe.access",
    "split_heads": "tlprobe.access",
    "str_tokens": "tlprobe.access",
    # tlprobe.analyses
    "NoiseCeiling": "tlprobe.analyses",
    "RDMs": "tlprobe.analyses",
    "RSATest": "tlprobe.analyses",
    "Selectivity": "tlprobe.analyses",
    "category_rdm": "tlprobe.analyses",
    "category_selectivity": "tlprobe.analyses",
    "compare_rdms": "tlprobe.analyses",
    "condition_means": "tlprobe.analyses",
    "noise_ceiling": "tlprobe.analyses",
    "rdm": "tlprobe.analyses",
    "rsa_test": "tlprobe.analyses",
    "Spectrum": "tlprobe.analyses",
    "diagonal_null": "tlprobe.analyses",
    "pca_spectrum": "tlprobe.analyses",
    "permutation_null": "tlprobe.analyses",
    "spectrum": "tlprobe.analyses",
    "BlockStats": "tlprobe.analyses",
    "choose_lens": "tlprobe.analyses",
    "cluster_panels": "tlprobe.analyses",
    "cluster_points": "tlprobe.analyses",
    "Clustering": "tlprobe.analyses",
    "copnorm": "tlprobe.analyses",
    "cross_mi": "tlprobe.analyses",
    "Dependence": "tlprobe.analyses",
    "dependence": "tlprobe.analyses",
    "embedding_lens": "tlprobe.analyses",
    "EmbeddingLensResult": "tlprobe.analyses",
    "entropy": "tlprobe.analyses",
    "feature_similarity": "tlprobe.analyses",
    "gcmi": "tlprobe.analyses",
    "lens_logits": "tlprobe.analyses",
    "LensResult": "tlprobe.analyses",
    "logit_lens": "tlprobe.analyses",
    "mi_histograms": "tlprobe.analyses",
    "mi_null": "tlprobe.analyses",
    "MIHistograms": "tlprobe.analyses",
    "miller_madow": "tlprobe.analyses",
    "MIResult": "tlprobe.analyses",
    "mlm_lens": "tlprobe.analyses",
    "Moments": "tlprobe.analyses",
    "Occurrences": "tlprobe.analyses",
    "pairwise_mi": "tlprobe.analyses",
    "PanelResult": "tlprobe.analyses",
    "pearson_r": "tlprobe.analyses",
    "punctuation_dependence": "tlprobe.analyses",
    "PunctuationClusters": "tlprobe.analyses",
    "PunctuationDependence": "tlprobe.analyses",
    "qkv_block_codes": "tlprobe.analyses",
    "qkv_block_similarity": "tlprobe.analyses",
    "sample_moments": "tlprobe.analyses",
    "sample_occurrences": "tlprobe.analyses",
    "shuffle_values": "tlprobe.analyses",
    "simpson_check": "tlprobe.analyses",
    "SimpsonCheck": "tlprobe.analyses",
    "token_mi": "tlprobe.analyses",
    "TopK": "tlprobe.analyses",
    "window_dependence": "tlprobe.analyses",
    # tlprobe.report.notebook
    "notebook_mode": "tlprobe.report.notebook",
    # tlprobe.findings
    "Finding": "tlprobe.findings",
    # tlprobe.result
    "load": "tlprobe.result",
    "Result": "tlprobe.result",
    # tlprobe.recipes.common
    "RecipeResult": "tlprobe.recipes.common",
    # tlprobe.errors
    "TlprobeError": "tlprobe.errors",
    # corpus scale
    "MICounts": "tlprobe.analyses",
    "MomentsAccumulator": "tlprobe.analyses",
    "RangeAccumulator": "tlprobe.analyses",
    "SimilarityAccumulator": "tlprobe.analyses",
    "stream": "tlprobe.access.corpus",
    "text_windows": "tlprobe.access.corpus",
}

__all__ = [
    "attention_pattern",
    "Batch",
    "BlockStats",
    "category_rdm",
    "category_selectivity",
    "choose_lens",
    "cluster_panels",
    "cluster_points",
    "Clustering",
    "compare_rdms",
    "condition_means",
    "copnorm",
    "cross_mi",
    "dependence",
    "Dependence",
    "diagonal_null",
    "embedding_lens",
    "EmbeddingLensResult",
    "entropy",
    "feature_similarity",
    "find_token_positions",
    "Finding",
    "fused_qkv",
    "gcmi",
    "get_qkv",
    "head_slice",
    "lens_logits",
    "LensResult",
    "load",
    "load_model",
    "logit_lens",
    "mi_histograms",
    "mi_null",
    "MICounts",
    "MIHistograms",
    "miller_madow",
    "MIResult",
    "mlm_lens",
    "model_info",
    "ModelInfo",
    "Moments",
    "MomentsAccumulator",
    "noise_ceiling",
    "NoiseCeiling",
    "notebook_mode",
    "Occurrences",
    "pairwise_mi",
    "PanelResult",
    "pca_spectrum",
    "pearson_r",
    "permutation_null",
    "Positions",
    "punctuation_dependence",
    "PunctuationClusters",
    "PunctuationDependence",
    "qkv_block_codes",
    "qkv_block_similarity",
    "RangeAccumulator",
    "rdm",
    "RDMs",
    "RecipeResult",
    "resid_stack",
    "Result",
    "rsa_test",
    "RSATest",
    "run_batch",
    "sample_moments",
    "sample_occurrences",
    "sample_positions",
    "Selectivity",
    "shuffle_values",
    "SimilarityAccumulator",
    "simpson_check",
    "SimpsonCheck",
    "Spectrum",
    "spectrum",
    "split_heads",
    "str_tokens",
    "stream",
    "text_windows",
    "TlprobeError",
    "token_mi",
    "TopK",
    "window_dependence",
]


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
        Batch as Batch,
        ModelInfo as ModelInfo,
        Positions as Positions,
        attention_pattern as attention_pattern,
        find_token_positions as find_token_positions,
        fused_qkv as fused_qkv,
        get_qkv as get_qkv,
        head_slice as head_slice,
        load_model as load_model,
        model_info as model_info,
        resid_stack as resid_stack,
        run_batch as run_batch,
        sample_positions as sample_positions,
        split_heads as split_heads,
        str_tokens as str_tokens,
    )
    from tlprobe.access.corpus import stream as stream, text_windows as text_windows
    from tlprobe.analyses import (
        BlockStats as BlockStats,
        Clustering as Clustering,
        Dependence as Dependence,
        EmbeddingLensResult as EmbeddingLensResult,
        LensResult as LensResult,
        MICounts as MICounts,
        MIHistograms as MIHistograms,
        MIResult as MIResult,
        Moments as Moments,
        MomentsAccumulator as MomentsAccumulator,
        NoiseCeiling as NoiseCeiling,
        Occurrences as Occurrences,
        PanelResult as PanelResult,
        PunctuationClusters as PunctuationClusters,
        PunctuationDependence as PunctuationDependence,
        RangeAccumulator as RangeAccumulator,
        RDMs as RDMs,
        RSATest as RSATest,
        Selectivity as Selectivity,
        SimilarityAccumulator as SimilarityAccumulator,
        SimpsonCheck as SimpsonCheck,
        Spectrum as Spectrum,
        TopK as TopK,
        category_rdm as category_rdm,
        category_selectivity as category_selectivity,
        choose_lens as choose_lens,
        cluster_panels as cluster_panels,
        cluster_points as cluster_points,
        compare_rdms as compare_rdms,
        condition_means as condition_means,
        copnorm as copnorm,
        cross_mi as cross_mi,
        dependence as dependence,
        diagonal_null as diagonal_null,
        embedding_lens as embedding_lens,
        entropy as entropy,
        feature_similarity as feature_similarity,
        gcmi as gcmi,
        lens_logits as lens_logits,
        logit_lens as logit_lens,
        mi_histograms as mi_histograms,
        mi_null as mi_null,
        miller_madow as miller_madow,
        mlm_lens as mlm_lens,
        noise_ceiling as noise_ceiling,
        pairwise_mi as pairwise_mi,
        pca_spectrum as pca_spectrum,
        pearson_r as pearson_r,
        permutation_null as permutation_null,
        punctuation_dependence as punctuation_dependence,
        qkv_block_codes as qkv_block_codes,
        qkv_block_similarity as qkv_block_similarity,
        rdm as rdm,
        rsa_test as rsa_test,
        sample_moments as sample_moments,
        sample_occurrences as sample_occurrences,
        shuffle_values as shuffle_values,
        simpson_check as simpson_check,
        spectrum as spectrum,
        token_mi as token_mi,
        window_dependence as window_dependence,
    )
    from tlprobe.errors import (
        TlprobeError as TlprobeError,
    )
    from tlprobe.findings import Finding as Finding
    from tlprobe.recipes.common import (
        RecipeResult as RecipeResult,
    )
    from tlprobe.report.notebook import (
        notebook_mode as notebook_mode,
    )
    from tlprobe.result import (
        Result as Result,
        load as load,
    )
