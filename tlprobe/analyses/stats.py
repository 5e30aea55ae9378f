"""Generic statistics of paired measures: Pearson r per group, clusters of 2-D points, Simpson's paradox.

* :func:`pearson_r`: r over all points or within each group, in one pass (a raw estimator: a tensor).
* :func:`cluster_points` -> :class:`Clustering`: clusters of ``(x, y)`` points, k chosen by
  silhouette (k-means) or BIC (Gaussian mixture).
* :func:`pearson_p`: the two-sided p-value of a Pearson r (the t test of scipy.stats.pearsonr).
* :func:`simpson_check` -> :class:`SimpsonCheck`: the pooled r against the r within each
  cluster, and a flag when pooling significantly reverses the within-cluster sign.
* :func:`bootstrap_interval`: a seeded percentile bootstrap interval (scipy.stats.bootstrap), and
  :func:`pearson`, :func:`spearman`: correlations along an axis, batched (for the recipes' findings).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from tlprobe.checks import as_float, as_int, as_tensor, check_choice, check_finite, check_min_samples
from tlprobe.errors import TlprobeError
from tlprobe.result import Result

#: Clustering methods of :func:`cluster_points`.
CLUSTER_METHODS = ("kmeans", "gmm")
ClusterMethod = Literal["kmeans", "gmm"]


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_tensor(x, "x").double().flatten()
    y = as_tensor(y, "y").double().flatten()
    if x.numel() != y.numel():
        raise TlprobeError(f"x has {x.numel()} points and y {y.numel()}")
    return x, y


def pearson_r(
    x: Float[torch.Tensor, " n"], y: Float[torch.Tensor, " n"], labels: Int[torch.Tensor, " n"] | None = None
) -> Float[torch.Tensor, " groups"]:
    """Pearson r of ``x`` and ``y`` within each group of ``labels`` (all points if ``None``).

    One pass with ``index_add`` over groups (no loop). Groups with fewer than 3 points or a
    constant variable get NaN (r is undefined there).

    Args:
        x, y: ``[n]`` the two measures.
        labels: ``[n]`` group of each point, ``0..groups-1``; ``None``: one group.

    Returns:
        ``[groups]`` float64 r per group.

    Raises:
        TlprobeError: ``x``, ``y`` and ``labels`` have different numbers of points.

    Example:
        >>> x = torch.tensor([0.0, 1, 2, 10, 11, 12])
        >>> y = torch.tensor([5.0, 6, 7, 0, 1, 2])
        >>> pearson_r(x, y).round(decimals=3), pearson_r(x, y, torch.tensor([0, 0, 0, 1, 1, 1]))
        (tensor([-0.8880], dtype=torch.float64), tensor([1., 1.], dtype=torch.float64))
    """
    x, y = _pair(x, y)
    lab = torch.zeros(x.numel(), dtype=torch.long) if labels is None else torch.as_tensor(labels).long().flatten()
    if lab.numel() != x.numel():
        raise TlprobeError(f"{lab.numel()} labels for {x.numel()} points")
    k = int(lab.max()) + 1 if lab.numel() else 1
    n = torch.bincount(lab, minlength=k).double()
    mx = torch.zeros(k, dtype=x.dtype).index_add_(0, lab, x) / n
    my = torch.zeros(k, dtype=x.dtype).index_add_(0, lab, y) / n
    dx, dy = x - mx[lab], y - my[lab]
    sxy = torch.zeros(k, dtype=x.dtype).index_add_(0, lab, dx * dy)
    sxx = torch.zeros(k, dtype=x.dtype).index_add_(0, lab, dx * dx)
    syy = torch.zeros(k, dtype=x.dtype).index_add_(0, lab, dy * dy)
    den = (sxx * syy).sqrt()
    r = (sxy / den).clamp(-1, 1)
    tiny = den <= 1e-12 * (sxx + syy + 1e-300)
    return torch.where((n < 3) | tiny, torch.nan, r)


@dataclass(frozen=True, eq=False)
class Clustering(Result):
    """Clusters of 2-D points.

    Attributes:
        labels: ``[n]`` cluster of each point, ``0..k-1``, ordered by the clusters' mean ``x``.
        k: number of clusters.
        method: ``"kmeans"`` (k by silhouette) or ``"gmm"`` (k by BIC).
        k_tried: the numbers of clusters that were scored.
        scores: one per ``k_tried``: silhouette (kmeans, k >= 2) or BIC (gmm); the chosen k is
            the best one (for kmeans k = 1 when no silhouette reaches ``min_silhouette``).
        min_silhouette: the kmeans threshold.
    """

    labels: Int[torch.Tensor, " n"]
    k: int
    method: ClusterMethod
    k_tried: tuple[int, ...]
    scores: tuple[float, ...]
    min_silhouette: float


def cluster_points(
    x: Float[torch.Tensor, " n"],
    y: Float[torch.Tensor, " n"],
    method: ClusterMethod = "kmeans",
    *,
    k_max: int = 5,
    seed: int = 0,
    min_silhouette: float = 0.5,
    sample_size: int = 3000,
) -> Clustering:
    """Cluster 2-D points (each axis standardised), choosing the number of clusters.

    * ``"kmeans"``: scikit-learn ``KMeans`` for k = 2..k_max, k chosen by the silhouette score
      (on a seeded sample of ``sample_size`` points); if the best silhouette is below
      ``min_silhouette`` (0.5: "reasonable structure" in Kaufman and Rousseeuw's scale) the
      points are one cluster. Robust to the skewed, non-Gaussian blobs of covariance/MI data.
    * ``"gmm"``: scikit-learn ``GaussianMixture`` (full covariances) for k = 1..k_max, k by BIC.
      BIC can choose one cluster by itself, but on skewed blobs it tends to add components to
      fit the shape (measured on MiniLM: it picked the largest k offered).

    Args:
        x, y: ``[n]`` coordinates (e.g. covariance and MI).
        method: ``"kmeans"`` or ``"gmm"``.
        k_max: largest number of clusters tried.
        seed: ``random_state`` of every fit and of the silhouette sample.
        min_silhouette: kmeans only, see above.
        sample_size: kmeans only, points used for the silhouette score.

    Returns:
        :class:`Clustering`.

    Raises:
        TlprobeError: an unknown method, a bad ``k_max``, too few or non-finite points.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> blobs = torch.cat([torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g) + 6])
        >>> cluster_points(blobs[:, 0], blobs[:, 1]).k
        2
        >>> cluster_points(*torch.randn(2, 300, generator=g)).k  # one Gaussian blob
        1
    """
    # threadpoolctl is installed with scikit-learn, which costs about a second to import: only
    # clustering needs them, so `import tlprobe.analyses` does not pay for them.
    from threadpoolctl import threadpool_limits

    check_choice(method, CLUSTER_METHODS, "clustering method")
    x, y = _pair(x, y)
    k_max = as_int(k_max, "k_max", minimum=1)
    seed = as_int(seed, "seed")
    sample_size = as_int(sample_size, "sample_size", minimum=2)
    min_silhouette = as_float(min_silhouette, "min_silhouette", minimum=-1.0, maximum=1.0)
    check_min_samples(x.numel(), max(3 * k_max, 10), "clustering", "give more windows or a smaller k_max")
    pts = torch.stack([x, y], 1)
    check_finite(pts, "points")
    std = pts.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = ((pts - pts.mean(0)) / std).numpy()
    # One thread: 2-D points are small, and OpenMP threads made KMeans 4-6x slower on a busy
    # 2-core machine (results are identical); it also makes them independent of the core count.
    with threadpool_limits(1):
        k, scores, fits = _fit_clusters(z, method, k_max, seed, min_silhouette, sample_size)
    lab = torch.from_numpy(np.asarray(fits[k], dtype=np.int64))
    # Canonical order: clusters sorted by mean x, numbered 0..k-1 (empty ones dropped).
    used = torch.unique(lab)
    means = torch.stack([x[lab == u].mean() for u in used])
    order = used[means.argsort()]
    remap = torch.empty(int(lab.max()) + 1, dtype=torch.long)
    remap[order] = torch.arange(order.numel())
    return Clustering(
        labels=remap[lab],
        k=int(order.numel()),
        method=method,
        k_tried=tuple(scores),
        scores=tuple(scores.values()),
        min_silhouette=float(min_silhouette),
    )


def _fit_clusters(z: np.ndarray, method: str, k_max: int, seed: int, min_silhouette: float, sample_size: int):
    """``(k, scores, fits)``: the chosen k, the score of each k tried and each fit's labels."""
    # scikit-learn costs about a second to import: only clustering needs it.
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.mixture import GaussianMixture

    scores: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    if method == "kmeans":
        fits[1] = np.zeros(len(z), dtype=np.int64)
        for k in range(2, k_max + 1):
            # scikit-learn has no annotations: pyright infers n_init: str from its default "auto".
            lab = KMeans(k, n_init=4, random_state=seed).fit_predict(z)  # pyright: ignore[reportArgumentType]
            if len(np.unique(lab)) < 2:
                continue
            fits[k] = lab
            scores[k] = float(silhouette_score(z, lab, sample_size=min(sample_size, len(z)), random_state=seed))
        best = max(scores, key=lambda k: scores[k]) if scores else 1
        return (best if scores and scores[best] >= min_silhouette else 1), scores, fits
    for k in range(1, k_max + 1):
        gm = GaussianMixture(k, covariance_type="full", n_init=2, random_state=seed).fit(z)
        scores[k] = float(gm.bic(z))
        fits[k] = gm.predict(z)
    return min(scores, key=lambda k: scores[k]), scores, fits


#: The significance test of :func:`simpson_check` (stored in :attr:`SimpsonCheck.test`).
SIMPSON_TEST = "two-sided t test of Pearson r, as scipy.stats.pearsonr"
#: What :func:`simpson_check` decided: a reversal (the flag), none, the data cannot decide, or
#: fewer than two clusters to compare.
SimpsonOutcome = Literal["reversal", "no reversal", "undecided", "no subgroups"]


def pearson_p(r: Float[torch.Tensor, "*shape"], n: Int[torch.Tensor, "*shape"] | int) -> Float[torch.Tensor, "*shape"]:
    """Two-sided p-value of Pearson ``r`` over ``n`` points against no correlation.

    The exact test under bivariate normality, as :func:`scipy.stats.pearsonr` computes it: under
    the null ``(r + 1) / 2`` follows a Beta(n/2 - 1, n/2 - 1) distribution (equivalently
    ``r sqrt((n - 2) / (1 - r^2))`` follows Student's t with ``n - 2`` degrees of freedom).

    Args:
        r: correlations (NaN where undefined).
        n: points behind each ``r`` (broadcast against ``r``).

    Returns:
        float64 p-values, NaN where ``r`` is NaN or ``n < 3``.

    Example:
        >>> pearson_p(torch.tensor([0.0, 0.5, 1.0]), 12).round(decimals=4)
        tensor([1.0000, 0.0979, 0.0000], dtype=torch.float64)
    """
    # scipy costs about 0.3 s to import: only the Simpson check needs it.
    from scipy.special import betainc

    r = torch.as_tensor(r, dtype=torch.float64)
    n = torch.as_tensor(n, dtype=torch.float64).expand_as(r)
    a = (n / 2 - 1).clamp(min=0.5)  # n < 3 is masked below
    x = ((1 - r.abs().clamp(max=1)) / 2).nan_to_num(0.5)
    p = torch.from_numpy(np.asarray(2 * betainc(a.numpy(), a.numpy(), x.numpy()), dtype=np.float64))
    return torch.where(r.isnan() | (n < 3), torch.nan, p.clamp(max=1.0).reshape(r.shape))


@dataclass(frozen=True, eq=False)
class SimpsonCheck(Result):
    """Pearson r pooled vs within clusters, each with its p-value, and whether pooling reverses the sign.

    Attributes:
        pooled_r: r over all points (NaN when undefined).
        within_r: ``[clusters]`` r inside each cluster (NaN where undefined).
        sizes: ``[clusters]`` points per cluster.
        considered: ``[clusters]`` large enough (``min_size``) with a defined r.
        pooled_p: two-sided p-value of ``pooled_r`` (:attr:`test`; NaN when undefined).
        within_p: ``[clusters]`` two-sided p-value of each ``within_r``.
        alpha: the significance level.
        test: the significance test, in words.
        outcome: ``"reversal"`` (the flag), ``"no reversal"`` (a considered cluster's r is
            significant with the pooled sign), ``"undecided"`` (an r that would have to reverse
            is not significant) or ``"no subgroups"`` (fewer than two considered clusters).
        flag: Simpson's paradox: at least two considered clusters, and the pooled r and the r of
            every considered cluster each significant at ``alpha`` with ``|r| >= min_abs_r``,
            the clusters' all of one sign and the pooled r of the other.
        explanation: one sentence saying what was found.
    """

    pooled_r: float
    within_r: Float[torch.Tensor, " clusters"]
    sizes: Int[torch.Tensor, " clusters"]
    considered: Bool[torch.Tensor, " clusters"]
    pooled_p: float
    within_p: Float[torch.Tensor, " clusters"]
    alpha: float
    test: str
    outcome: SimpsonOutcome
    flag: bool
    explanation: str

    @property
    def significant(self) -> Bool[torch.Tensor, " clusters"]:
        """``[clusters]`` the within-cluster r is significant at :attr:`alpha`."""
        return self.within_p < self.alpha


def _fmt_r(v: float) -> str:
    return "undefined" if v != v else f"{v:+.2f}"


def _fmt_p(p: float) -> str:
    if p != p:
        return "p undefined"
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


def simpson_check(
    x: Float[torch.Tensor, " n"],
    y: Float[torch.Tensor, " n"],
    labels: Int[torch.Tensor, " n"],
    *,
    alpha: float = 0.05,
    min_size: int = 10,
    min_abs_r: float = 0.02,
    x_name: str = "covariance",
    y_name: str = "MI",
) -> SimpsonCheck:
    """Flag Simpson's paradox: the pooled correlation significantly has the opposite sign of every subgroup's.

    Each r (pooled, and within each cluster of at least ``min_size`` points) is tested against
    no correlation with :func:`pearson_p` (the two-sided t test of :func:`scipy.stats.pearsonr`).
    The flag needs *every* one of these tests to reject at ``alpha`` (and each ``|r| >=
    min_abs_r``), the clusters' signs all equal and the pooled sign opposite. Because the claim
    is an intersection (every cluster reverses), testing each r at ``alpha`` without a
    multiple-comparison correction keeps the chance of a false flag at most ``alpha`` (an
    intersection-union test, Berger 1982): if any one cluster has no correlation, its own test
    alone rejects with probability ``alpha``. On noise (no correlation inside the clusters) the
    flag is therefore rare (measured: under 1% of trials at ``alpha = 0.05``), where a sign
    comparison without a test fired in about 18%.

    Args:
        x, y: ``[n]`` the two measures.
        labels: ``[n]`` subgroup (cluster) of each point, ``0..k-1``.
        alpha: significance level of every test.
        min_size: clusters with fewer points are not considered (their r is too noisy).
        min_abs_r: an r closer to 0 than this has no sign, however small its p-value.
        x_name, y_name: names of the measures in the explanation.

    Returns:
        :class:`SimpsonCheck`.

    Raises:
        TlprobeError: ``alpha`` not in (0, 1), a negative ``min_size`` or ``min_abs_r``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(50, generator=g), torch.randn(50, generator=g) + 5])
        >>> y = x.clone()
        >>> y[50:] -= 10  # inside each cluster y = x; the second one sits lower
        >>> check = simpson_check(x, y, (x > 2.5).long(), min_size=3)
        >>> check.flag, check.outcome, round(check.pooled_r, 2)
        (True, 'reversal', -0.71)
    """
    alpha = as_float(alpha, "alpha", positive=True, maximum=1.0)
    if alpha >= 1:
        raise TlprobeError(f"alpha must be < 1, got {alpha}")
    min_size = as_int(min_size, "min_size", minimum=0)
    min_abs_r = as_float(min_abs_r, "min_abs_r", minimum=0.0)
    labels = torch.as_tensor(labels).long().flatten()
    pooled = float(pearson_r(x, y)[0])
    within = pearson_r(x, y, labels)
    sizes = torch.bincount(labels, minlength=within.numel())
    n, k = int(labels.numel()), int(within.numel())
    pooled_p = float(pearson_p(torch.tensor(pooled), n))
    within_p = pearson_p(within, sizes)
    ok = (sizes >= min_size) & ~within.isnan()
    n_ok = int(ok.sum())

    def sign(r: float, p: float) -> int:
        """The sign of a significant r, 0 for one that is not (or too close to 0)."""
        return 0 if not (p < alpha and abs(r) >= min_abs_r) else (1 if r > 0 else -1)

    word = {1: "positively", -1: "negatively"}
    rs = ", ".join(f"{_fmt_r(float(r))} ({_fmt_p(float(p))})" for r, p in zip(within, within_p))
    s_pooled = sign(pooled, pooled_p)
    signs = [sign(float(within[j]), float(within_p[j])) for j in ok.nonzero().flatten().tolist()]
    at = f"at alpha = {alpha:g} ({SIMPSON_TEST})"
    outcome: SimpsonOutcome = "undecided"
    if pooled != pooled:
        text = f"The pooled r of {x_name} and {y_name} is undefined (a constant measure), so there is nothing to check."
    elif k < 2:
        outcome = "no subgroups"
        text = (
            f"One cluster: no subgroups to pool, so no Simpson's paradox ({x_name} and {y_name} "
            f"r = {_fmt_r(pooled)} over {n} points)."
        )
    elif n_ok < 2:
        outcome = "no subgroups"
        text = (
            f"Fewer than two clusters have at least {min_size} points and a defined r (within r = {rs}), "
            f"so the pooled r = {_fmt_r(pooled)} cannot be checked against subgroups."
        )
    elif s_pooled == 0:
        text = (
            f"Undecided: the pooled r = {_fmt_r(pooled)} ({_fmt_p(pooled_p)}) is not significant {at} "
            f"or closer to 0 than {min_abs_r:g}, so it has no sign to reverse (within r = {rs})."
        )
    elif all(s == -s_pooled for s in signs):
        outcome = "reversal"
        text = (
            f"Simpson's paradox: over all {n} points {x_name} and {y_name} correlate {word[s_pooled]} "
            f"(r = {_fmt_r(pooled)}, {_fmt_p(pooled_p)}), but {word[-s_pooled]} within each of the {n_ok} "
            f"clusters (r = {rs}), every r significant {at}: the clusters sit at different levels and "
            "pooling them reverses the trend."
        )
    elif all(s == s_pooled for s in signs):
        outcome = "no reversal"
        text = (
            f"No Simpson's paradox: the pooled r = {_fmt_r(pooled)} ({_fmt_p(pooled_p)}) has the same sign "
            f"as the r within every cluster ({rs}), each significant {at}."
        )
    elif s_pooled in signs:
        outcome = "no reversal"
        text = (
            f"No Simpson's paradox: some clusters correlate significantly {word[s_pooled]} like the pooled "
            f"r = {_fmt_r(pooled)} ({_fmt_p(pooled_p)}) and the others do not (within r = {rs}, {at}): "
            "the clusters behave differently, so read them separately."
        )
    else:
        text = (
            f"Undecided: the pooled r = {_fmt_r(pooled)} ({_fmt_p(pooled_p)}) and no cluster significantly "
            f"shares its sign, but not every cluster's r is significant {at} (within r = {rs}), so a "
            "reversal in every cluster cannot be claimed."
        )
    return SimpsonCheck(
        pooled_r=pooled,
        within_r=within,
        sizes=sizes,
        considered=ok,
        pooled_p=pooled_p,
        within_p=within_p,
        alpha=alpha,
        test=SIMPSON_TEST,
        outcome=outcome,
        flag=outcome == "reversal",
        explanation=text,
    )


def spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rank correlation along ``axis``, batched over the other axes (ties get average
    ranks, as in :func:`scipy.stats.spearmanr`); NaN where either side is constant.

    Example:
        >>> float(spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 4.0, 9.0, 16.0])))
        1.0
        >>> spearman(np.arange(3.0), np.array([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]]))
        array([-1., nan])
    """
    from scipy import stats as sps  # ~0.3 s to import: only findings and the Simpson check need scipy

    x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return pearson(sps.rankdata(x, axis=axis), sps.rankdata(y, axis=axis), axis=axis)


def pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson r along ``axis``, batched over the other axes (:func:`scipy.stats.pearsonr`'s
    statistic, for bootstrap statistics); NaN where either side is constant. For tensors and
    groups, see :func:`pearson_r`.

    Example:
        >>> float(pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])))
        0.993...
    """
    from scipy import stats as sps  # ~0.3 s to import: only findings and the Simpson check need scipy

    x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", sps.ConstantInputWarning)  # constant side: NaN says it
        return np.asarray(sps.pearsonr(x, y, axis=axis)[0])  # the statistic (r), batched


def bootstrap_interval(
    data: Sequence[np.ndarray | Sequence[float] | float],
    statistic: Callable[..., np.ndarray],
    *,
    seed: int,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    paired: bool = True,
) -> tuple[float, float]:
    """Seeded percentile bootstrap interval of ``statistic(*data, axis=-1)`` (:func:`scipy.stats.bootstrap`,
    vectorised: ``statistic`` takes ``axis`` and resamples along it).

    Args:
        data: the samples (the last axis holds the observations; paired samples resample together).
        statistic: ``statistic(*samples, axis=-1)`` -> a scalar per resample.
        seed: the generator's seed (the same seed gives the same interval).
        n_resamples, confidence: as in scipy.
        paired: resample the samples' observations together.

    Returns:
        ``(low, high)``; ``(nan, nan)`` with fewer than 2 observations, non-finite data, or a
        statistic undefined in some resample.

    Example:
        >>> x = np.random.default_rng(0).normal(1.0, 1.0, 200)
        >>> low, high = bootstrap_interval([x], np.mean, seed=0)
        >>> bool(low < 1.0 < high), bootstrap_interval([x], np.mean, seed=0) == (low, high)
        (True, True)
    """
    from scipy import stats as sps  # ~0.3 s to import: only findings and the Simpson check need scipy

    arrays = [np.asarray(a, dtype=float) for a in data]
    if min(a.shape[-1] if a.ndim else 0 for a in arrays) < 2 or not all(np.isfinite(a).all() for a in arrays):
        return math.nan, math.nan
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)  # the NaN interval says it
        res = sps.bootstrap(
            arrays,
            statistic,
            n_resamples=as_int(n_resamples, "n_resamples", minimum=1),
            confidence_level=as_float(confidence, "confidence", minimum=0.0, maximum=1.0),
            method="percentile",
            paired=paired and len(arrays) > 1,
            vectorized=True,
            axis=-1,
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else (math.nan, math.nan)
