"""Analyses: one module per concept, pure functions over tensors.

The rule: a raw estimator (a similarity matrix, a matrix of MI values, an entropy) returns a
tensor; a bundle of numbers (statistics with their settings and labels) returns a
:class:`tlprobe.result.Result`. This package exports the entry points and the result types;
constants, type aliases and helpers stay in their modules.

* :mod:`~tlprobe.analyses.similarity`: feature similarity, the Q/K/V block statistics, null shuffles;
* :mod:`~tlprobe.analyses.moments`: mean and variance across samples;
* :mod:`~tlprobe.analyses.mi`: histogram MI (pairwise, between tokens, across), nulls, GCMI;
* :mod:`~tlprobe.analyses.mi_counts`: histogram MI over a stream on fixed edges, exact permutation null;
* :mod:`~tlprobe.analyses.lens`: logit, MLM and embedding lenses;
* :mod:`~tlprobe.analyses.stats`: Pearson r, clustering, the Simpson's-paradox check;
* :mod:`~tlprobe.analyses.punctuation`: dependence around punctuation marks, per cluster and per depth;
* :mod:`~tlprobe.analyses.simulation`: MI estimators against the known MI of Gaussian pairs;
* :mod:`~tlprobe.analyses.token_pairs`: MI between tokens against their distance and each head's attention;
* :mod:`~tlprobe.analyses.geometry`: RDMs, RSA with permutation tests, noise ceilings, category selectivity;
* :mod:`~tlprobe.analyses.dimensionality`: PCA spectra, explained variance, participation ratio, nulls;
* :mod:`~tlprobe.analyses.streaming`: accumulators of moments and similarity over a stream of batches.
"""

from tlprobe.analyses.dimensionality import Spectrum, diagonal_null, pca_spectrum, permutation_null, spectrum
from tlprobe.analyses.geometry import (
    NoiseCeiling,
    RDMs,
    RSATest,
    Selectivity,
    category_rdm,
    category_selectivity,
    compare_rdms,
    condition_means,
    noise_ceiling,
    rdm,
    rsa_test,
)
from tlprobe.analyses.lens import (
    EmbeddingLensResult,
    LensResult,
    TopK,
    choose_lens,
    embedding_lens,
    lens_logits,
    logit_lens,
    mlm_lens,
)
from tlprobe.analyses.mi import (
    Dependence,
    MIHistograms,
    MIResult,
    copnorm,
    cross_mi,
    dependence,
    entropy,
    gcmi,
    mi_histograms,
    mi_null,
    miller_madow,
    pairwise_mi,
    token_mi,
)
from tlprobe.analyses.mi_counts import MICounts, RangeAccumulator, edges_from_range
from tlprobe.analyses.moments import Moments, sample_moments
from tlprobe.analyses.punctuation import (
    ClusterDepth,
    Occurrences,
    PanelResult,
    PunctuationClusters,
    PunctuationDependence,
    cluster_depth,
    cluster_panels,
    punctuation_dependence,
    sample_occurrences,
    window_dependence,
)
from tlprobe.analyses.similarity import (
    BlockStats,
    feature_similarity,
    qkv_block_codes,
    qkv_block_similarity,
    shuffle_values,
)
from tlprobe.analyses.simulation import (
    EstimatorSweep,
    entropy_identity,
    estimator_sweep,
    gaussian_mi,
    gaussian_pairs,
    plugin_bias,
)
from tlprobe.analyses.stats import Clustering, SimpsonCheck, cluster_points, pearson_r, simpson_check
from tlprobe.analyses.streaming import MomentsAccumulator, SimilarityAccumulator
from tlprobe.analyses.token_pairs import AttentionTracking, DistanceProfile, attention_tracking, distance_profile

__all__ = [
    "AttentionTracking",
    "BlockStats",
    "ClusterDepth",
    "Clustering",
    "Dependence",
    "DistanceProfile",
    "EmbeddingLensResult",
    "EstimatorSweep",
    "LensResult",
    "MICounts",
    "MIHistograms",
    "MIResult",
    "Moments",
    "MomentsAccumulator",
    "NoiseCeiling",
    "Occurrences",
    "PanelResult",
    "PunctuationClusters",
    "PunctuationDependence",
    "RDMs",
    "RSATest",
    "RangeAccumulator",
    "Selectivity",
    "SimilarityAccumulator",
    "SimpsonCheck",
    "Spectrum",
    "TopK",
    "attention_tracking",
    "category_rdm",
    "category_selectivity",
    "choose_lens",
    "cluster_depth",
    "cluster_panels",
    "cluster_points",
    "compare_rdms",
    "condition_means",
    "copnorm",
    "cross_mi",
    "dependence",
    "diagonal_null",
    "distance_profile",
    "edges_from_range",
    "embedding_lens",
    "entropy",
    "entropy_identity",
    "estimator_sweep",
    "feature_similarity",
    "gaussian_mi",
    "gaussian_pairs",
    "gcmi",
    "lens_logits",
    "logit_lens",
    "mi_histograms",
    "mi_null",
    "miller_madow",
    "mlm_lens",
    "noise_ceiling",
    "pairwise_mi",
    "pca_spectrum",
    "pearson_r",
    "permutation_null",
    "plugin_bias",
    "punctuation_dependence",
    "qkv_block_codes",
    "qkv_block_similarity",
    "rdm",
    "rsa_test",
    "sample_moments",
    "sample_occurrences",
    "shuffle_values",
    "simpson_check",
    "spectrum",
    "token_mi",
    "window_dependence",
]
