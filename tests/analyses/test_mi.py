"""Tests of the mutual-information engine against numpy, scipy and scikit-learn."""
# pyright: reportArgumentType=false, reportOperatorIssue=false, reportOptionalMemberAccess=false, reportOptionalSubscript=false
# (the tests pass numpy integers on purpose, and read MIResult fields that are Optional only for Miller-Madow)

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.special import ndtri
from scipy.stats import entropy as scipy_entropy, rankdata
from sklearn.metrics import mutual_info_score

from tlprobe.analyses.mi import (
    MIHistograms,
    MIResult,
    bin_labels,
    copnorm,
    cross_mi,
    dependence,
    dependence_bytes,
    entropy,
    gcmi,
    mi,
    mi_histograms,
    mi_null,
    mi_working_bytes,
    miller_madow,
    pairwise_mi,
    resolve_bins,
    token_mi,
)
from tlprobe.errors import TlprobeError
from tlprobe.result import load


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixed_data(n: int = 94, v: int = 12, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Independent Gaussians plus a few dependent columns (linear, quadratic, noisy sine); v >= 5."""
    g = gen(seed)
    x = torch.randn(n, v, generator=g, dtype=torch.float64)
    x[:, 1] = x[:, 0] ** 2
    x[:, 2] = 0.7 * x[:, 0] + 0.3 * x[:, 2]
    x[:, 3] = torch.sin(3 * x[:, 4]) + 0.2 * x[:, 3]
    return x.to(dtype)


def loop_mi(x: np.ndarray, i: int, j: int, bins: int) -> float:
    """The per-pair estimator a student writes: np.histogram2d, then the plug-in sum."""
    c, _, _ = np.histogram2d(x[:, i], x[:, j], bins=bins)
    p = c / c.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (px @ py)[nz])).sum())


# --- equality with independent implementations -------------------------------------------


@pytest.mark.parametrize("bins", [2, 7, 10, 20])
def test_pairwise_equals_sklearn_on_same_labels(bins):
    x = mixed_data()
    m = pairwise_mi(x, bins=bins)
    lab = bin_labels(x, bins=bins).numpy()
    v = x.shape[1]
    ref = np.array([[mutual_info_score(lab[:, i], lab[:, j]) for j in range(v)] for i in range(v)])
    assert m.dtype == torch.float64
    np.testing.assert_allclose(m.numpy(), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("bins", [5, 10])
def test_pairwise_equals_histogram2d_loop(bins):
    x = mixed_data(seed=1)
    xn = x.numpy()
    v = x.shape[1]
    ref = np.array([[loop_mi(xn, i, j, bins) for j in range(v)] for i in range(v)])
    np.testing.assert_allclose(pairwise_mi(x, bins=bins).numpy(), ref, rtol=0, atol=1e-9)
    # float32 input: float32 entropies, still within 1e-6 of the float64 loop
    m32 = pairwise_mi(x.float(), bins=bins)
    assert m32.dtype == torch.float32
    ref32 = np.array([[loop_mi(x.float().double().numpy(), i, j, bins) for j in range(v)] for i in range(v)])
    np.testing.assert_allclose(m32.double().numpy(), ref32, rtol=0, atol=1e-6)


def test_labels_match_numpy_histogram():
    x = mixed_data(n=300, v=6, seed=2)
    lab = bin_labels(x, bins=9).numpy()
    for j in range(x.shape[1]):
        counts, _ = np.histogram(x[:, j].numpy(), bins=9)
        np.testing.assert_array_equal(np.bincount(lab[:, j], minlength=9), counts)
    assert lab.min() == 0 and lab.max() == 8


@pytest.mark.parametrize("rule", ["sqrt", "scott", "fd"])
def test_bin_rules_follow_numpy(rule):
    x = mixed_data(n=200, v=9, seed=3)
    per_var = [len(np.histogram_bin_edges(x[:, j].numpy(), bins=rule)) - 1 for j in range(x.shape[1])]
    expected = max(2, int(torch.tensor(per_var).median()))  # lower median, as documented
    assert resolve_bins(x, rule) == expected
    np.testing.assert_allclose(pairwise_mi(x, bins=rule).numpy(), pairwise_mi(x, bins=expected).numpy())


def test_diagonal_is_entropy():
    x = mixed_data()
    m = pairwise_mi(x, bins=10)
    lab = bin_labels(x, bins=10).numpy()
    ref = np.array([scipy_entropy(np.bincount(lab[:, j])) for j in range(x.shape[1])])
    np.testing.assert_allclose(m.diagonal().numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(entropy(x, bins=10).numpy(), ref, atol=1e-12)


def test_miller_madow_matches_formula():
    x = mixed_data(seed=4)
    n, v = x.shape
    lab = bin_labels(x, bins=8).numpy()
    occ = [len(np.unique(lab[:, j])) for j in range(v)]
    ref = np.empty((v, v))
    for i in range(v):
        for j in range(v):
            joint = len(np.unique(lab[:, i] * 8 + lab[:, j]))
            ref[i, j] = mutual_info_score(lab[:, i], lab[:, j]) + (occ[i] + occ[j] - joint - 1) / (2 * n)
    np.testing.assert_allclose(pairwise_mi(x, bins=8, correction="miller-madow").numpy(), ref, atol=1e-9)
    h_mm = entropy(x, bins=8, correction="miller-madow").numpy()
    np.testing.assert_allclose(np.diag(ref), h_mm, atol=1e-9)


# --- properties ---------------------------------------------------------------------------


def test_symmetric():
    m = pairwise_mi(mixed_data(n=94, v=40, seed=5).float(), bins=10)
    assert torch.equal(m, m.mT)


def test_positive_affine_invariance():
    x = mixed_data(seed=6)
    y = x.clone()
    y[:, 0] = 3.7 * y[:, 0] - 1.3
    y[:, 5] = 0.01 * y[:, 5] + 100.0
    np.testing.assert_allclose(pairwise_mi(y).numpy(), pairwise_mi(x).numpy(), atol=1e-12)


def test_independent_biased_raw_and_corrections_near_zero():
    x = torch.randn(94, 60, generator=gen(7), dtype=torch.float64)  # independent Gaussians
    iu = torch.triu_indices(60, 60, 1)
    raw10 = pairwise_mi(x, bins=10)[iu[0], iu[1]].mean()
    raw20 = pairwise_mi(x, bins=20)[iu[0], iu[1]].mean()
    assert 0.35 < raw10 < 0.45  # the L09 offset: about 0.40 nats at 10 bins
    assert 1.0 < raw20 < 1.17  # and about 1.08 at 20
    mm = miller_madow(x, bins=10)
    assert 0.1 < mm.upper("corrected").mean() < 0.75 * raw10  # helps, but under-corrects this sparse case
    assert float(gcmi(x)[iu[0], iu[1]].mean()) < 0.02  # GCMI: bias about 1 / (2 n)
    null = mi_null(x, n_shuffles=8, seed=0)
    assert abs(float(null.upper("corrected").mean())) < 0.02
    assert float(null.upper("null_mean").mean()) == pytest.approx(float(raw10), abs=0.02)


def test_deterministic_function_gives_high_mi():
    x = torch.rand(2000, 1, generator=gen(8), dtype=torch.float64)
    noise = torch.rand(2000, 1, generator=gen(9), dtype=torch.float64)
    m = pairwise_mi(torch.cat([x, torch.exp(3 * x), 2 * x + 1, noise], 1), bins=10)
    h = m[0, 0]
    assert m[0, 2] == pytest.approx(float(h), abs=1e-12)  # same labels: MI = H
    assert m[0, 1] > 0.6 * h
    assert m[0, 3] < 0.05


def test_constant_variable_has_zero_entropy_and_mi():
    x = mixed_data(v=6)
    x[:, 2] = 5.0
    m = pairwise_mi(x)
    assert torch.all(m[2] == 0) and torch.all(m[:, 2] == 0)
    assert torch.all(m[[0, 1, 3, 4, 5], [0, 1, 3, 4, 5]] > 0)
    assert float(entropy(x)[2]) == 0.0


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(2, 40), st.integers(1, 6)),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    ),
    st.integers(2, 12),
)
def test_properties_symmetric_nonnegative_bounded(a, bins):
    m = pairwise_mi(torch.from_numpy(a), bins=bins)
    h = m.diagonal()
    assert torch.equal(m, m.mT)
    assert torch.all(m >= 0)
    assert torch.all(m <= torch.minimum(h[:, None], h[None, :]) + 1e-9)
    assert torch.all(h <= math.log(min(bins, a.shape[0])) + 1e-9)


@settings(max_examples=20, deadline=None)
@given(
    arrays(
        np.float64, st.tuples(st.integers(2, 30), st.integers(1, 4)), elements=st.floats(-100, 100, allow_nan=False)
    ),
    st.integers(2, 6),
)
def test_property_mi_helper_equals_sklearn(a, bins):
    x = torch.from_numpy(a)
    lab = bin_labels(x, bins=bins).numpy()
    ref = mutual_info_score(lab[:, 0], lab[:, -1])
    assert float(mi(x[:, 0], x[:, -1], bins=bins)) == pytest.approx(ref, abs=1e-9)


# --- chunking, batching, other forms --------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
def test_chunked_equals_unchunked(chunk):
    x = mixed_data(v=23, seed=10)
    full = pairwise_mi(x, bins=6)
    np.testing.assert_allclose(pairwise_mi(x, bins=6, chunk_size=chunk).numpy(), full.numpy(), atol=1e-12)
    np.testing.assert_allclose(
        pairwise_mi(x, bins=6, chunk_size=chunk, correction="miller-madow").numpy(),
        pairwise_mi(x, bins=6, correction="miller-madow").numpy(),
        atol=1e-12,
    )


def test_tiles_cover_large_matrix(monkeypatch):
    import importlib

    mod = importlib.import_module("tlprobe.analyses.mi")

    x = mixed_data(n=50, v=70, seed=11)
    full = pairwise_mi(x, bins=5)
    monkeypatch.setattr(mod, "_BLOCK_ELEMENTS", 1000)  # forces many row and column tiles
    np.testing.assert_allclose(pairwise_mi(x, bins=5).numpy(), full.numpy(), atol=1e-12)
    np.testing.assert_allclose(cross_mi(x[:, :30], x[:, 30:], bins=5).numpy(), full[:30, 30:].numpy(), atol=1e-12)


def test_leading_dims_equal_per_index():
    x = torch.randn(2, 3, 60, 9, generator=gen(12), dtype=torch.float64)
    m = pairwise_mi(x, bins=5)
    assert m.shape == (2, 3, 9, 9)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(m[i, j].numpy(), pairwise_mi(x[i, j], bins=5).numpy(), atol=1e-12)


def test_cross_and_token_forms():
    x = mixed_data(v=10, seed=13)
    full = pairwise_mi(x, bins=8)
    np.testing.assert_allclose(cross_mi(x[:, :4], x[:, 4:], bins=8).numpy(), full[:4, 4:].numpy(), atol=1e-12)
    h = torch.randn(3, 7, 50, generator=gen(14), dtype=torch.float64)  # [layer, tokens, dims]
    tm = token_mi(h, bins=6)
    assert tm.shape == (3, 7, 7)
    np.testing.assert_allclose(tm.numpy(), pairwise_mi(h.mT, bins=6).numpy(), atol=0)
    lab = bin_labels(h[1].mT, bins=6).numpy()
    assert float(tm[1, 2, 5]) == pytest.approx(mutual_info_score(lab[:, 2], lab[:, 5]), abs=1e-9)
    # broadcasting leading dims
    y = torch.randn(94, 2, generator=gen(15), dtype=torch.float64)
    xs = torch.stack([x, 2 * x])
    np.testing.assert_allclose(cross_mi(xs, y, bins=8)[1].numpy(), cross_mi(x, y, bins=8).numpy(), atol=1e-12)


def test_mi_null_seeded_and_diagonal():
    x = mixed_data(v=6, seed=16)
    a = mi_null(x, n_shuffles=4, seed=3)
    b = mi_null(x, n_shuffles=4, seed=3)
    c = mi_null(x, n_shuffles=4, seed=4)
    assert torch.equal(a.null_mean, b.null_mean)
    assert not torch.equal(a.null_mean, c.null_mean)
    np.testing.assert_allclose(a.null_mean.diagonal().numpy(), a.raw.diagonal().numpy(), atol=1e-12)
    np.testing.assert_allclose(a.corrected.numpy(), (a.raw - a.null_mean).numpy(), atol=1e-12)
    d = a.to_dict()
    assert d["method"] == "shuffle" and d["n_shuffles"] == 4 and len(d["raw"]) == 6
    (row,) = a.rows()
    assert row["null_mean"] > 0 and row["raw_mean"] == pytest.approx(float(a.upper("raw").mean()))


def test_mi_results_keep_labels_select_and_round_trip(tmp_path):
    x = torch.randn(2, 3, 60, 5, generator=gen(23), dtype=torch.float64)
    axes = {"layer": ["L0", "L1"], "head": ["H0", "H1", "H2"]}
    null = mi_null(x, n_shuffles=3, seed=1, axes=axes)
    assert isinstance(null, MIResult) and null.axes["head"] == ("H0", "H1", "H2")
    one = null["L1H2"]
    assert one.axes == {} and torch.equal(one.raw, null.raw[1, 2]) and torch.equal(one.null_std, null.null_std[1, 2])
    rows = null.rows()
    assert [(r["layer"], r["head"]) for r in rows][:2] == [("L0", "H0"), ("L0", "H1")] and len(rows) == 6
    assert rows[5]["corrected_mean"] == pytest.approx(float(one.upper("corrected").mean()))
    assert load(null.save(tmp_path / "null.json")) == null
    mm = miller_madow(x, bins=5, axes=axes)
    assert mm.null_mean is None and set(mm.rows()[0]) == {"layer", "head", "raw_mean", "corrected_mean"}
    assert torch.equal(mm["L0"].corrected, mm.corrected[0]) and load(mm.save(tmp_path / "mm.json")) == mm
    with pytest.raises(TlprobeError, match="no null_mean"):
        mm.upper("null_mean")
    with pytest.raises(TlprobeError, match="one label per leading index"):
        mi_null(x, n_shuffles=1, axes={"layer": ["L0", "L1", "L2"]})


# --- GCMI --------------------------------------------------------------------------------------


def test_copnorm_matches_scipy_with_ties():
    x = torch.tensor([[3.0, 1.0], [1.0, 1.0], [2.0, 5.0], [2.0, 0.0], [7.0, 1.0]], dtype=torch.float64)
    ref = ndtri(rankdata(x.numpy(), axis=0) / (x.shape[0] + 1))
    np.testing.assert_allclose(copnorm(x).numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("rho", [-0.8, -0.3, 0.0, 0.5, 0.9])
def test_gcmi_closed_form_for_gaussians(rho):
    z = torch.randn(20000, 2, generator=gen(17), dtype=torch.float64)
    x = torch.stack([z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]], 1)
    got = float(gcmi(x)[0, 1])
    assert got == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.015)  # closed form (sampling noise)
    r = np.corrcoef(x.numpy().T)[0, 1]
    assert got == pytest.approx(-0.5 * math.log(1 - r**2), abs=2e-3)  # Gaussian MI of this very sample


def test_gcmi_equals_independent_implementation_and_monotone_invariance():
    x = mixed_data(n=200, v=5, seed=18)
    z = ndtri(rankdata(x.numpy(), axis=0) / 201)
    r = np.corrcoef(z.T)
    off = ~np.eye(5, dtype=bool)
    ref = np.where(off, -0.5 * np.log(1 - np.where(off, r, 0) ** 2), np.inf)
    g = gcmi(x)
    np.testing.assert_allclose(g.numpy()[off], ref[off], atol=1e-10)
    assert torch.all(torch.isinf(g.diagonal()))
    y = x.clone()
    y[:, 0] = torch.exp(y[:, 0])  # monotone: ranks unchanged
    np.testing.assert_allclose(gcmi(y).numpy()[off], g.numpy()[off], atol=1e-12)
    np.testing.assert_allclose(gcmi(x[:, :2], x[:, 2:]).numpy(), g[:2, 2:].numpy(), atol=1e-12)


def test_gcmi_refuses_constant_variable():
    x = mixed_data(v=6)
    x[:, 1] = 2.0
    with pytest.raises(TlprobeError, match="constant.*variable\\(s\\) \\[1\\]"):
        gcmi(x)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pairwise_mi(torch.randn(1, 5)), "too few samples.*got 1, need at least 2"),
        (
            lambda: pairwise_mi(torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [1.0, 0.0]])),
            "non-finite.*index \\(1, 0\\)",
        ),
        (lambda: pairwise_mi(torch.randn(10, 3), bins=1), "bins must be >= 2"),
        (lambda: pairwise_mi(torch.randn(10, 3), bins=0), "bins must be >= 2"),
        (lambda: pairwise_mi(torch.randn(10, 3), bins=2.5), "bins must be an integer >= 2 or one of"),
        (lambda: pairwise_mi(torch.randn(10, 3), bins="auto"), "unknown bin rule 'auto'"),
        (lambda: pairwise_mi(torch.randn(10, 3), correction="panzeri"), "unknown correction 'panzeri'"),
        (lambda: pairwise_mi(torch.randn(10, 3), chunk_size=0), "chunk_size \\(variables per block\\) must be >= 1"),
        (lambda: pairwise_mi(torch.randn(10)), "expected \\[..., samples, variables\\]"),
        (lambda: pairwise_mi(torch.ones(10, 3), bins="fd"), "'fd' bin rule is undefined.*pass an integer"),
        (lambda: mi_null(torch.randn(10, 3), n_shuffles=0), "n_shuffles must be >= 1, got 0"),
        (lambda: cross_mi(torch.randn(10, 3), torch.randn(9, 2)), "x has 10 samples and y 9"),
        (lambda: gcmi(torch.randn(2, 3)), "need at least 3"),
        (lambda: pairwise_mi(torch.randn(10, 3), dtype=torch.float16), "dtype must be torch.float32"),
        (lambda: mi_histograms(torch.randn(2, 3, 4)), "expected \\[..., V, V\\]"),
    ],
)
def test_bad_input_raises_clear_error(call, message):
    with pytest.raises(TlprobeError, match=message):
        call()


# --- histograms, dependence, figures ----------------------------------------------------------


def test_mi_histograms_match_numpy():
    m = pairwise_mi(torch.randn(3, 94, 30, generator=gen(19), dtype=torch.float64))
    h = mi_histograms(m, bins=25, axes={"layer": ["emb", "L1", "L2"]})
    iu = np.triu_indices(30, 1)
    vals = m.numpy()[:, iu[0], iu[1]]
    for i in range(3):
        counts, edges = np.histogram(vals[i], bins=25, range=(vals.min(), vals.max()))
        np.testing.assert_allclose(h.prob[i].numpy(), counts / counts.sum(), atol=1e-12)
        dens, _ = np.histogram(vals[i], bins=25, range=(vals.min(), vals.max()), density=True)
        np.testing.assert_allclose(h.density[i].numpy(), dens, atol=1e-9)
        assert float(h.mean[i]) == pytest.approx(vals[i].mean())
        assert float(h.median[i]) == pytest.approx(np.sort(vals[i])[(vals.shape[1] - 1) // 2])  # lower median
    np.testing.assert_allclose(h.edges.numpy(), edges, atol=1e-12)
    assert h.n_pairs == 435 and h.to_dict()["axes"] == {"layer": ["emb", "L1", "L2"]}


def test_mi_histograms_keep_leading_axes_and_round_trip(tmp_path):
    m = pairwise_mi(torch.randn(2, 3, 50, 8, generator=gen(24), dtype=torch.float64))
    h = mi_histograms(m, bins=7, value_range=(0.0, 2.0), axes={"estimate": ["a", "b"]})
    assert (
        isinstance(h, MIHistograms)
        and h.prob.shape == (2, 3, 7)
        and h.mean.shape == (2, 3)
        and h.edges.tolist()[::7] == [0.0, 2.0]
    )
    assert h.series == ("a 0", "a 1", "a 2", "b 0", "b 1", "b 2")
    flat = mi_histograms(m.reshape(6, 8, 8), bins=7, value_range=(0.0, 2.0))
    assert torch.equal(flat.prob, h.prob.reshape(6, 7)) and flat.series == tuple("012345")
    assert h.rows()[4] == {
        "estimate": "b",
        "axis 1": "1",
        "n_pairs": 28,
        "mean": float(h.mean[1, 1]),
        "median": float(h.median[1, 1]),
        "std": float(h.std[1, 1]),
    }
    assert torch.equal(h["b"].prob, h.prob[1]) and torch.equal(h["b"].edges, h.edges)
    assert load(h.save(tmp_path / "h.json")) == h
    with pytest.raises(TlprobeError, match="value_range must be"):
        mi_histograms(m, value_range=(1.0, 1.0))
    with pytest.raises(TlprobeError, match="one label per leading index"):
        mi_histograms(m, axes={"estimate": ["a"]})


def test_dependence_parabola_and_sweep(tmp_path):
    g = gen(20)
    x = torch.rand(3, 400, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 400, generator=g, dtype=torch.float64)
    rho = torch.tensor([-0.9, 0.0, 0.9], dtype=torch.float64)[:, None]
    lin = rho * x + torch.sqrt(1 - rho**2) * noise * x.std()
    d = dependence(x, lin, n_shuffles=30, seed=0, axes={"rho": ["-0.9", "0", "0.9"]})
    ref_cov = [np.cov(x[i].numpy(), lin[i].numpy())[0, 1] for i in range(3)]
    np.testing.assert_allclose(d.covariance.numpy(), ref_cov, atol=1e-12)
    assert torch.equal(d.covariance_squared, d.covariance**2)
    assert d.covariance[0] < 0 < d.covariance[2]
    assert d.mi_corrected[0] > d.mi_corrected[1] < d.mi_corrected[2]  # the U
    assert d.x is None and [r["rho"] for r in d.rows()] == ["-0.9", "0", "0.9"]
    assert d.rows()[2]["gcmi"] == float(d.gcmi[2])
    p = dependence(x[0], x[0] ** 2, n_shuffles=30, seed=0)
    assert abs(float(p.correlation)) < 0.15
    assert float(p.mi_raw) > float(p.mi_null_q95)
    assert float(p.gcmi) < 0.05  # GCMI cannot see the symmetric parabola
    kept = dependence(x, lin, n_shuffles=30, seed=0, keep_samples=True, axes={"rho": ["-0.9", "0", "0.9"]})
    assert torch.equal(kept.x, x) and torch.equal(kept["0.9"].y, lin[2]) and torch.equal(kept.gcmi, d.gcmi)
    assert load(kept.save(tmp_path / "dep.json")) == kept and load(d.save(tmp_path / "d.json")) == d


# --- sizes: refused before allocating -----------------------------------------------------------

HUGE_BINS = 100_000_000  # one joint histogram alone would be 1e16 cells


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: pairwise_mi(x, bins=HUGE_BINS), "histogram MI with bins=100000000"),
        (lambda x: mi_null(x, bins=HUGE_BINS), "histogram MI with bins=100000000"),
        (lambda x: miller_madow(x, bins=HUGE_BINS), "histogram MI with bins=100000000"),
        (lambda x: token_mi(x, bins=HUGE_BINS), "histogram MI with bins=100000000"),
        (lambda x: cross_mi(x, x[:, :1], bins=HUGE_BINS), "histogram MI with bins=100000000"),
        (lambda x: mi(x[:, 0], x[:, 1], bins=HUGE_BINS), "histogram MI with bins=100000000"),
        (lambda x: entropy(x, bins=10**12), "computing the entropies with bins=1000000000000"),
        (lambda x: bin_labels(x, bins=10**12), "binning with bins=1000000000000"),
        (lambda x: dependence(x[:, 0], x[:, 1], bins=HUGE_BINS), "dependence with bins=100000000"),
        (lambda x: dependence(x[:, 0], x[:, 1], n_shuffles=10**9), "and 1000000000 shuffles"),
        (lambda x: mi_histograms(x[:4, :4][None], bins=10**11), "histogramming 1 matrices with bins=100000000000"),
    ],
)
def test_huge_sizes_are_refused_before_allocating(call, message):
    x = torch.rand(50, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TlprobeError, match=message) as err:
        call(x)
    msg = str(err.value)
    assert "GiB" in msg and "available; lower bins" in msg and "\n" not in msg


def test_working_bytes_grow_with_the_joint_histograms():
    small = mi_working_bytes(7, 115, 384, bins=10)
    assert small < 2**30  # the pairwise-mi recipe on MiniLM: well under a GiB
    assert mi_working_bytes(1, 2, 1, bins=HUGE_BINS) >= HUGE_BINS**2  # one pair's joint histogram
    assert mi_working_bytes(1, 115, 384, bins=1000) > mi_working_bytes(1, 115, 384, bins=100)
    assert dependence_bytes(19, 1000, bins=10, n_shuffles=1000) > 5 * dependence_bytes(
        19, 1000, bins=10, n_shuffles=100
    )


def test_integer_knobs_accept_numpy_and_torch_integers():
    x = torch.rand(60, 3, generator=torch.Generator().manual_seed(0))
    want = mi_null(x, n_shuffles=3, seed=1, bins=4, chunk_size=2)
    got = mi_null(x, n_shuffles=np.int64(3), seed=torch.tensor(1), bins=np.int32(4), chunk_size=torch.tensor(2))
    assert torch.equal(want.raw, got.raw) and torch.equal(want.null_mean, got.null_mean) and got.seed == 1
    d = dependence(x[:, 0], x[:, 1], bins=np.int64(4), n_shuffles=np.int16(5), seed=np.int64(2))
    assert d.bins == 4 and d.n_shuffles == 5 and d.seed == 2
    h = mi_histograms(pairwise_mi(x)[None], bins=np.int64(3))
    assert h.prob.shape == (1, 3)
    with pytest.raises(TlprobeError, match="seed must be an integer, got 1.5"):
        mi_null(x, seed=1.5)
    with pytest.raises(TlprobeError, match="value_range high must be a finite number, got nan"):
        mi_histograms(pairwise_mi(x)[None], value_range=(0.0, float("nan")))


def test_the_plug_in_bias_depends_on_the_marginals_not_one_offset():
    # The module docstring's claim: the same samples and bins, independent variables, but
    # uniform vs heavy-tailed marginals give very different shuffle-null means, so the bias
    # must be estimated per layer and pair (mi_null), never assumed to be a common offset.
    g = gen(40)
    uniform = torch.rand(94, 30, generator=g, dtype=torch.float64)
    heavy = torch.randn(94, 30, generator=g, dtype=torch.float64).exp()
    nulls = [float(mi_null(x, n_shuffles=5, seed=0).upper("null_mean").mean()) for x in (uniform, heavy)]
    assert nulls[0] > 2 * nulls[1] > 0
    both = mi_null(torch.stack([uniform, heavy]), n_shuffles=5, seed=0)
    raw = both.upper("raw").mean(-1)
    assert float(raw[0] - raw[1]) > 0.2 and float(both.upper("corrected").mean(-1).abs().max()) < 0.02
