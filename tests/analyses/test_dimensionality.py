"""PCA spectra: equal to numpy and scikit-learn, closed forms, the streamed path, the nulls,
labelled, selectable, round-tripping, and bad input refused."""

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from tlprobe import load
from tlprobe.analyses.dimensionality import Spectrum, diagonal_null, pca_spectrum, permutation_null, spectrum
from tlprobe.analyses.streaming import SimilarityAccumulator
from tlprobe.errors import TlprobeError

AXES = {"population": ("target", "non-target"), "layer": ("L0", "L1", "L2")}


def _data(lead=(2, 3), samples=40, features=7, seed=0):
    """Correlated samples with feature offsets and unequal scales."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(*lead, features, features, generator=g, dtype=torch.float64)
    x = torch.randn(*lead, samples, features, generator=g, dtype=torch.float64) @ mix
    return x + 3.0 * torch.randn(*lead, 1, features, generator=g, dtype=torch.float64)


def _factors(samples, features=12, rank=2, noise=0.05, seed=1):
    """``rank`` shared factors plus a little independent noise: strongly correlated features."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, rank, generator=g, dtype=torch.float64)
    load_ = torch.randn(rank, features, generator=g, dtype=torch.float64)
    return z @ load_ + noise * torch.randn(samples, features, generator=g, dtype=torch.float64)


def test_pca_spectrum_equals_numpy_and_sklearn():
    x = _data()
    s = pca_spectrum(x, axes=AXES)
    assert s.eigenvalues.shape == (2, 3, 7) and s.eigenvalues.dtype == torch.float64
    for idx in np.ndindex(2, 3):
        xs = x[idx].numpy()
        ev = np.linalg.eigh(np.cov(xs, rowvar=False))[0][::-1]
        np.testing.assert_allclose(s.eigenvalues[idx].numpy(), ev, rtol=1e-10)
        ratio = PCA().fit(xs).explained_variance_ratio_
        np.testing.assert_allclose(s.explained[idx].numpy(), np.cumsum(ratio), rtol=1e-10)
        np.testing.assert_allclose(float(s.participation_ratio[idx]), ev.sum() ** 2 / (ev**2).sum(), rtol=1e-10)


def test_fewer_samples_than_features_pads_zeros_like_sklearn():
    x = _data(lead=(), samples=5, features=9)
    s = pca_spectrum(x)
    ratio = PCA().fit(x.numpy()).explained_variance_ratio_  # min(5, 9) = 5 components
    np.testing.assert_allclose(s.explained[:5].numpy(), np.cumsum(ratio), rtol=1e-10)
    assert s.eigenvalues.shape == (9,) and bool((s.eigenvalues >= 0).all())
    assert float(s.eigenvalues[4:].max()) < 1e-12 * float(s.eigenvalues[0])  # rank n - 1 = 4


def test_n_components_equals_numpy_searchsorted():
    thresholds = (0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0)
    s = pca_spectrum(_data(samples=30, features=20, seed=3), thresholds=thresholds)
    cum = s.explained.numpy()
    for idx in np.ndindex(2, 3):
        want = np.searchsorted(cum[idx], thresholds, side="left") + 1
        assert s.n_components[idx].tolist() == want.tolist()
    assert s.n_components.dtype == torch.int64
    assert bool((s.n_components[..., -1] <= 20).all())  # threshold 1 is reached (the last share is exactly 1)
    assert bool((s.explained[..., -1] == 1.0).all())


def test_closed_forms():
    f = 6
    assert float(spectrum(torch.ones(f), n_samples=10).participation_ratio) == f  # isotropic, exactly F
    known = spectrum(torch.tensor([1.0, 3.0, 2.0]), n_samples=10)  # any order: sorted
    assert known.eigenvalues.tolist() == [3.0, 2.0, 1.0]
    assert math.isclose(float(known.participation_ratio), 36 / 14, rel_tol=1e-15)
    flat = spectrum(torch.ones(4), n_samples=10, thresholds=(0.25, 0.5, 0.75, 1.0))  # shares 1/4, 2/4, 3/4, 1 exactly
    assert flat.n_components.tolist() == [1, 2, 3, 4]  # a share equal to the threshold reaches it
    clamped = spectrum(torch.tensor([2.0, -1e-17]), n_samples=10)  # rounding below 0
    assert clamped.eigenvalues.tolist() == [2.0, 0.0] and float(clamped.participation_ratio) == 1.0
    g = torch.Generator().manual_seed(0)
    iso = pca_spectrum(torch.randn(20000, 8, generator=g, dtype=torch.float64))
    assert abs(float(iso.participation_ratio) - 8) < 0.01 * 8  # PR -> F as n grows (bias ~ F/n)
    z = torch.randn(300, 1, generator=g, dtype=torch.float64)
    rank1 = pca_spectrum(z * torch.randn(1, 10, generator=g, dtype=torch.float64) + 4.0)
    assert math.isclose(float(rank1.participation_ratio), 1.0, rel_tol=1e-10)
    assert rank1.n_components.tolist() == [1, 1, 1]


def test_zero_total_variance_is_undefined_with_no_components(tmp_path):
    x = _data(lead=(2,), samples=12, features=4)
    x[1] = 0.1 * torch.arange(4, dtype=torch.float64)  # every feature constant: mean != value by rounding
    s = pca_spectrum(x, axes={"layer": ("L0", "L1")})
    assert bool((s.eigenvalues[1] == 0).all())
    assert math.isnan(float(s.participation_ratio[1])) and bool(s.explained[1].isnan().all())
    assert s.n_components[1].tolist() == [0, 0, 0] and bool((s.n_components[0] > 0).all())
    assert s.rows()[1]["total_variance"] == 0.0 and math.isnan(s.rows()[1]["participation_ratio"])
    assert load(s.save(tmp_path / "zero.json")) == s  # NaN survives the JSON round trip
    z = spectrum(torch.zeros(3), n_samples=5)
    assert math.isnan(float(z.participation_ratio)) and z.n_components.tolist() == [0, 0, 0]
    # streamed: constant samples leave rounding noise, zeroed where the accumulator marks every feature constant
    acc = SimilarityAccumulator()
    for lo, hi in ((0, 5), (5, 12)):
        acc.update(x[..., lo:hi, :])
    ev = acc.eigenvalues()
    ev = torch.where(acc.undefined_features("correlation").all(-1, keepdim=True), 0.0, ev)
    streamed = spectrum(ev, n_samples=acc.n_samples, axes={"layer": ("L0", "L1")})
    assert math.isnan(float(streamed.participation_ratio[1])) and streamed.n_components[1].tolist() == [0, 0, 0]
    np.testing.assert_allclose(streamed.participation_ratio[0], s.participation_ratio[0], rtol=1e-10)


def test_constant_feature_contributes_exactly_zero():
    x = _data(lead=(), samples=25, features=5)
    x[:, 2] = 0.1
    s = pca_spectrum(x)
    assert float(s.eigenvalues[-1]) == 0.0
    rest = pca_spectrum(x[:, [0, 1, 3, 4]])
    np.testing.assert_allclose(s.eigenvalues[:4].numpy(), rest.eigenvalues.numpy(), rtol=1e-12)


def test_streamed_eigenvalues_equal_pca_spectrum_of_the_whole():
    x = _data(lead=(2, 3), samples=50, features=6, seed=4)
    acc = SimilarityAccumulator()
    for lo, hi in ((0, 7), (7, 27), (27, 50)):
        acc.update(x[..., lo:hi, :])
    streamed = spectrum(acc.eigenvalues(), n_samples=acc.n_samples, axes=AXES)
    whole = pca_spectrum(x, axes=AXES)
    np.testing.assert_allclose(streamed.eigenvalues.numpy(), whole.eigenvalues.numpy(), rtol=1e-10)
    np.testing.assert_allclose(streamed.participation_ratio.numpy(), whole.participation_ratio.numpy(), rtol=1e-10)
    assert torch.equal(streamed.n_components, whole.n_components) and streamed.n_samples == whole.n_samples == 50


def test_permutation_null_reproducible_trace_preserving_and_above_correlated_data():
    x = _factors(400)
    null = permutation_null(x, n_permutations=4, seed=5)
    again = permutation_null(x, n_permutations=4, seed=5)
    other = permutation_null(x, n_permutations=4, seed=6)
    assert null == again and not torch.equal(null.eigenvalues, other.eigenvalues)
    assert null.null == "permutation" and null.axes == {"permutation": ("P0", "P1", "P2", "P3")}
    assert null.eigenvalues.shape == (4, 12) and null.n_samples == 400
    trace = float(x.var(0).sum())  # unbiased, as the covariance
    np.testing.assert_allclose(null.eigenvalues.sum(-1).numpy(), trace, rtol=1e-12)
    data = pca_spectrum(x)
    assert float(data.participation_ratio) < 2.0  # two factors
    assert bool((null.participation_ratio > 4 * data.participation_ratio).all())
    # the copies differ from each other: each permutation is its own
    assert len({round(float(p), 12) for p in null.participation_ratio}) == 4


def test_permutation_null_permutes_each_feature_and_keeps_its_values():
    x = _data(lead=(2,), samples=30, features=5, seed=7)
    null = permutation_null(x, n_permutations=2, seed=0, axes={"layer": ("L0", "L1")})
    assert null.axes == {"layer": ("L0", "L1"), "permutation": ("P0", "P1")}
    assert null.eigenvalues.shape == (2, 2, 5)
    assert null["L1"]["P0"].eigenvalues.shape == (5,)
    np.testing.assert_allclose(  # every copy keeps each leading index's total variance
        null.eigenvalues.sum(-1).numpy(), x.var(-2).sum(-1, keepdim=True).expand(2, 2).numpy(), rtol=1e-12
    )
    unlabelled = permutation_null(x, n_permutations=2, seed=0)
    assert unlabelled.axes == {} and torch.equal(unlabelled.eigenvalues, null.eigenvalues)
    assert [sorted(r) for r in unlabelled.rows()[:1]] == [
        sorted(["axis 0", "axis 1", "participation_ratio", "n_90", "n_95", "n_99", "total_variance", "n_samples"])
    ]


def test_diagonal_null_is_the_large_n_limit_of_the_permutation_null():
    # sum l^2 of a permuted copy = sum v_i^2 + sum_{i != j} C_ij^2, the off-diagonal sample covariances
    # having mean square ~ v_i v_j / n: its PR lies below the diagonal one by a relative ~ (PR - 1) / n.
    gaps = []
    for n in (200, 20000):
        x = _factors(n, features=10, noise=0.5, seed=2)
        diag = diagonal_null(x.var(0), n_samples=n)
        perm = permutation_null(x, n_permutations=3, seed=1)
        pr_diag = float(diag.participation_ratio)
        assert bool((perm.participation_ratio <= pr_diag * (1 + 1e-12)).all())
        gap = float((pr_diag - perm.participation_ratio).mean()) / pr_diag
        assert gap < 5 * (pr_diag - 1) / n  # the stated tolerance: five times the expected gap
        gaps.append(gap)
    assert gaps[1] < gaps[0] / 10
    assert diag.null == "diagonal" and diag.eigenvalues.tolist() == sorted(x.var(0).tolist(), reverse=True)


def test_labels_selection_rows_and_round_trip(tmp_path):
    s = pca_spectrum(_data(), thresholds=(0.5, 0.9, 0.995), axes=AXES)
    one = s["non-target"]
    assert isinstance(one, Spectrum) and one.eigenvalues.shape == (3, 7) and one.axes == {"layer": AXES["layer"]}
    assert torch.equal(s["target", "L2"].n_components, s.n_components[0, 2])
    assert float(s["non-target"]["L1"].participation_ratio) == float(s.participation_ratio[1, 1])
    rows = s.rows()
    assert len(rows) == 6
    assert rows[4] == {
        "population": "non-target",
        "layer": "L1",
        "participation_ratio": float(s.participation_ratio[1, 1]),
        "n_50": int(s.n_components[1, 1, 0]),
        "n_90": int(s.n_components[1, 1, 1]),
        "n_99.5": int(s.n_components[1, 1, 2]),
        "total_variance": float(s.eigenvalues[1, 1].sum()),
        "n_samples": 40,
    }
    back = load(s.save(tmp_path / "s.json"))
    assert isinstance(back, Spectrum) and back == s and back.thresholds == (0.5, 0.9, 0.995)
    null = permutation_null(_data(lead=(), samples=20, features=4), n_permutations=2)
    assert load(null.save(tmp_path / "null.json")) == null and [r["permutation"] for r in null.rows()] == ["P0", "P1"]


def test_float32_input_is_worked_in_float64():
    x = _data(lead=(), samples=30, features=5)
    s32, s64 = pca_spectrum(x.float()), pca_spectrum(x)
    assert s32.eigenvalues.dtype == torch.float64
    np.testing.assert_allclose(s32.eigenvalues.numpy(), s64.eigenvalues.numpy(), rtol=1e-5)


def test_bad_input_raises():
    x = _data(lead=(), samples=10, features=3)
    with pytest.raises(TlprobeError, match="too few samples"):
        pca_spectrum(x[:1])
    with pytest.raises(TlprobeError, match="at least 2 dimensions"):
        pca_spectrum(torch.randn(5))
    with pytest.raises(TlprobeError, match="no features"):
        pca_spectrum(torch.randn(5, 0))
    bad = x.clone()
    bad[3, 1] = math.nan
    with pytest.raises(TlprobeError, match="non-finite"):
        pca_spectrum(bad)
    with pytest.raises(TlprobeError, match="non-finite"):
        permutation_null(bad)
    with pytest.raises(TlprobeError, match=r"in \(0, 1\]"):
        pca_spectrum(x, thresholds=(0.5, 1.5))
    with pytest.raises(TlprobeError, match=r"in \(0, 1\]"):
        pca_spectrum(x, thresholds=(0.0, 0.5))
    with pytest.raises(TlprobeError, match="strictly increasing"):
        pca_spectrum(x, thresholds=(0.9, 0.5))
    with pytest.raises(TlprobeError, match="strictly increasing"):
        spectrum(torch.ones(3), n_samples=5, thresholds=(0.9, 0.9))
    with pytest.raises(TlprobeError, match="empty"):
        pca_spectrum(x, thresholds=())
    with pytest.raises(TlprobeError, match="sequence of fractions"):
        pca_spectrum(x, thresholds=0.9)  # type: ignore[arg-type]
    with pytest.raises(TlprobeError, match="too few samples"):
        spectrum(torch.ones(3), n_samples=1)
    with pytest.raises(TlprobeError, match="too few samples"):
        diagonal_null(torch.ones(3), n_samples=1)
    with pytest.raises(TlprobeError, match="positive semi-definite"):
        spectrum(torch.tensor([2.0, -1.0]), n_samples=5)
    with pytest.raises(TlprobeError, match="non-finite"):
        spectrum(torch.tensor([2.0, math.inf]), n_samples=5)
    with pytest.raises(TlprobeError, match="unknown null"):
        spectrum(torch.ones(3), n_samples=5, null="shuffle")
    with pytest.raises(TlprobeError, match="negative"):
        diagonal_null(torch.tensor([1.0, -0.5]), n_samples=5)
    with pytest.raises(TlprobeError, match="n_permutations must be >= 1"):
        permutation_null(x, n_permutations=0)
    with pytest.raises(TlprobeError, match="label all of them"):
        permutation_null(_data(lead=(2, 3), samples=5, features=3), axes={"population": AXES["population"]})
    with pytest.raises(TlprobeError, match="already has a 'permutation' axis"):
        permutation_null(_data(lead=(2,), samples=5, features=3), axes={"permutation": ("a", "b")})
    with pytest.raises(TlprobeError, match="one label per leading index"):
        pca_spectrum(_data(lead=(2,), samples=5, features=3), axes={"layer": ("L0",)})
