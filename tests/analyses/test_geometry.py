"""RSA: RDMs, comparisons, permutation tests, noise ceilings and selectivity against rsatoolbox and scipy."""

import numpy as np
import pytest
import scipy.stats
import torch
from rsatoolbox.data.dataset import Dataset
from rsatoolbox.inference.noise_ceiling import boot_noise_ceiling
from rsatoolbox.rdm.calc import calc_rdm
from rsatoolbox.rdm.compare import compare
from rsatoolbox.rdm.rdms import RDMs as RsaRDMs
from scipy.spatial.distance import squareform

from tlprobe import load
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
    rdm_vector,
    rsa_test,
)
from tlprobe.errors import TlprobeError

#: tlprobe method -> rsatoolbox method.
RSATOOLBOX = {"spearman": "spearman", "kendall": "tau-a", "pearson": "corr", "cosine": "cosine"}
METHODS = tuple(RSATOOLBOX)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _patterns(*shape, seed=0) -> torch.Tensor:
    """Random patterns with a per-condition offset and scale (so centring and norms matter)."""
    g = _gen(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x * (1 + torch.rand(*shape[:-1], 1, generator=g, dtype=torch.float64)) + 3.0


def _rsa_vectors(m: torch.Tensor) -> np.ndarray:
    """``[n, c, c]`` -> rsatoolbox RDMs' vectors ``[n, pairs]`` via scipy's squareform."""
    return np.stack([squareform(a, checks=False) for a in m.numpy()])


def _rsa_compare(a: torch.Tensor, b: torch.Tensor, method: str) -> float:
    ra = RsaRDMs(squareform(a.numpy(), checks=False)[None])
    rb = RsaRDMs(squareform(b.numpy(), checks=False)[None])
    return float(compare(ra, rb, method=RSATOOLBOX[method])[0, 0])


# -- RDMs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["correlation", "euclidean"])
def test_rdm_equals_rsatoolbox_calc_rdm(method):
    x = _patterns(2, 3, 7, 5)
    d = rdm(x, method=method)
    assert d.shape == (2, 3, 7, 7) and d.dtype == torch.float64
    assert torch.equal(d, d.mT) and bool((d.diagonal(dim1=-2, dim2=-1) == 0).all())
    for i in range(2):
        for j in range(3):
            ref = calc_rdm(Dataset(x[i, j].numpy()), method=method)
            assert isinstance(ref, RsaRDMs)
            np.testing.assert_allclose(d[i, j].numpy(), ref.get_matrices()[0], atol=1e-10, rtol=0)
            np.testing.assert_allclose(rdm_vector(d[i, j]).numpy(), ref.get_vectors()[0], atol=1e-10, rtol=0)


def test_rdm_float32_input_works_in_float64():
    x = _patterns(6, 4).float()
    np.testing.assert_allclose(rdm(x).numpy(), rdm(x.double()).numpy(), atol=1e-12)


def test_rdm_vector_is_squareform_order():
    m = rdm(_patterns(3, 6, 4))
    v = rdm_vector(m)
    assert v.shape == (3, 15)
    for i in range(3):
        np.testing.assert_array_equal(v[i].numpy(), squareform(m[i].numpy(), checks=False))


def test_category_rdm_structure():
    labels = ["cat", "dog", "cat", "car", "dog"]
    m = category_rdm(labels)
    assert m.dtype == torch.float64 and m.shape == (5, 5)
    expected = [[float(a != b) for b in labels] for a in labels]
    assert m.tolist() == expected


def test_condition_means_equal_numpy_group_means():
    x = _patterns(2, 3, 11, 4)
    codes = [0, 2, 1, 0, 2, 2, 1, 0, 3, 1, 2]
    got = condition_means(x, torch.tensor(codes), 4)
    assert got.shape == (2, 3, 4, 4) and got.dtype == torch.float64
    want = np.stack([x.numpy()[..., [i for i, c in enumerate(codes) if c == k], :].mean(-2) for k in range(4)], -2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-13)
    with pytest.raises(TlprobeError, match=r"conditions \[4\] have no samples"):
        condition_means(x, codes, 5)
    with pytest.raises(TlprobeError, match="lie in 0..2"):
        condition_means(x, codes, 3)
    with pytest.raises(TlprobeError, match="one integer per sample"):
        condition_means(x, codes[:-1], 4)


def test_rdms_result_round_trip_selection_rows(tmp_path):
    d = rdm(_patterns(2, 4, 3))
    r = RDMs(d, conditions=("w", "x", "y", "z"), categories=("a", "a", "b", "b"), axes={"rdm": ("Q", "K")})
    assert load(r.save(tmp_path / "r.json")) == r
    assert torch.equal(r["K"].dissimilarities, d[1]) and r["K"].conditions == ("w", "x", "y", "z")
    rows = r.rows()
    assert len(rows) == 12 and rows[8] == {
        "rdm": "K",
        "condition_a": "w",
        "condition_b": "z",
        "dissimilarity": float(d[1, 0, 3]),
    }
    with pytest.raises(TlprobeError, match="one name per condition"):
        RDMs(d, conditions=("w", "x"))
    with pytest.raises(TlprobeError, match="give one per condition"):
        RDMs(d, conditions=("w", "x", "y", "z"), categories=("a",))


# -- comparisons ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_compare_equals_rsatoolbox_with_broadcast(method):
    a = rdm(_patterns(2, 3, 8, 6, seed=1))  # [2, 3, c, c]
    b = rdm(_patterns(8, 6, seed=2))  # [c, c]: broadcast over the leading axes
    got = compare_rdms(a, b, method=method)
    assert got.shape == (2, 3) and got.dtype == torch.float64
    for i in range(2):
        for j in range(3):
            assert abs(float(got[i, j]) - _rsa_compare(a[i, j], b, method)) < 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_compare_with_ties_equals_rsatoolbox(method):
    """A category RDM has many tied dissimilarities: average ranks (spearman), no tie correction (tau-a)."""
    hyp = category_rdm(["a", "a", "b", "b", "b", "c", "c", "d", "d"])
    data = rdm(_patterns(4, 9, 5, seed=3))
    got = compare_rdms(data, hyp, method=method)
    for i in range(4):
        assert abs(float(got[i]) - _rsa_compare(data[i], hyp, method)) < 1e-10
    coarse = (data * 2).round() / 2  # a few tied levels on both sides (tau-a's general path)
    got = compare_rdms(coarse[:2], coarse[2:], method=method)
    for i in range(2):
        assert abs(float(got[i]) - _rsa_compare(coarse[i], coarse[i + 2], method)) < 1e-10


def test_compare_equals_scipy():
    a, b = rdm(_patterns(3, 10, 6, seed=4)), rdm(_patterns(3, 10, 6, seed=5))
    va, vb = rdm_vector(a).numpy(), rdm_vector(b).numpy()
    for method, ref in [
        ("spearman", scipy.stats.spearmanr),
        ("pearson", scipy.stats.pearsonr),
        ("kendall", scipy.stats.kendalltau),  # no ties: tau-a == tau-b
    ]:
        got = compare_rdms(a, b, method=method)  # type: ignore[arg-type]
        want = [ref(va[i], vb[i]).statistic for i in range(3)]
        np.testing.assert_allclose(got.numpy(), want, atol=1e-10, rtol=0)
    cos = (va * vb).sum(-1) / np.linalg.norm(va, axis=-1) / np.linalg.norm(vb, axis=-1)
    np.testing.assert_allclose(compare_rdms(a, b, method="cosine").numpy(), cos, atol=1e-12)


def test_kendall_tiles_over_pair_rows(monkeypatch):
    """A tile smaller than the pairs: the tiled tau-a equals the untiled one."""
    a, b = rdm(_patterns(2, 12, 5, seed=6)), rdm(_patterns(2, 12, 5, seed=7))
    whole = compare_rdms(a, b, method="kendall")
    monkeypatch.setattr("tlprobe.analyses.geometry.TILE_CELLS", 50)
    np.testing.assert_allclose(compare_rdms(a, b, method="kendall").numpy(), whole.numpy(), atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_constant_rdm_compares_as_nan(method):
    ones = torch.ones(5, 5, dtype=torch.float64) - torch.eye(5, dtype=torch.float64)
    zeros = torch.zeros(5, 5, dtype=torch.float64)
    other = rdm(_patterns(5, 4, seed=8))
    flat = zeros if method == "cosine" else ones
    assert compare_rdms(flat, other, method=method).isnan().item()
    assert compare_rdms(other, flat, method=method).isnan().item()
    assert abs(compare_rdms(other, other, method=method).item() - 1) < 1e-12


# -- permutation test ----------------------------------------------------------------------


def _permuted(b: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return b[..., perm, :][..., :, perm]


@pytest.mark.parametrize("method", METHODS)
def test_rsa_test_null_is_the_comparison_with_permuted_conditions(method):
    a, b = rdm(_patterns(2, 7, 5, seed=9)), rdm(_patterns(2, 7, 5, seed=10))
    t = rsa_test(a, b, method=method, n_permutations=30, seed=3)
    g = _gen(3)
    perms = [torch.randperm(7, generator=g) for _ in range(30)]
    want = torch.stack([compare_rdms(a, _permuted(b, p), method=method) for p in perms], -1)
    np.testing.assert_allclose(t.null.numpy(), want.numpy(), atol=1e-12)
    np.testing.assert_allclose(t.observed.numpy(), compare_rdms(a, b, method=method).numpy(), atol=1e-15)
    count = (want >= t.observed[:, None] - 1e-12).sum(-1)
    np.testing.assert_array_equal(t.p_value.numpy(), ((1 + count.double()) / 31).numpy())


@pytest.mark.parametrize("hyp_first", [False, True])
def test_kendall_null_with_a_category_rdm_equals_rsatoolbox(hyp_first):
    """A two-valued RDM takes tau-a's linear path: its null equals rsatoolbox's tau-a of the permuted RDMs."""
    hyp = category_rdm(list("aabbbccdd"))
    data = rdm(_patterns(2, 9, 5, seed=25))
    a, b = (hyp, data) if hyp_first else (data, hyp)
    t = rsa_test(a, b, method="kendall", n_permutations=12, seed=4)
    g = _gen(4)
    for k in range(12):
        perm = torch.randperm(9, generator=g)
        for i in range(2):
            ai, bi = (a, b[i]) if hyp_first else (a[i], b)
            assert abs(float(t.null[i, k]) - _rsa_compare(ai, _permuted(bi, perm), "kendall")) < 1e-12
    for i in range(2):
        ai, bi = (a, b[i]) if hyp_first else (a[i], b)
        assert abs(float(t.observed[i]) - _rsa_compare(ai, bi, "kendall")) < 1e-12


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_rsa_test_tiles_do_not_change_the_null(method, monkeypatch):
    a, b = rdm(_patterns(3, 8, 5, seed=11)), rdm(_patterns(8, 5, seed=12))
    whole = rsa_test(a, b, method=method, n_permutations=40, seed=1)
    monkeypatch.setattr("tlprobe.analyses.geometry.TILE_CELLS", 64)
    tiled = rsa_test(a, b, method=method, n_permutations=40, seed=1)
    np.testing.assert_allclose(tiled.null.numpy(), whole.null.numpy(), atol=1e-14)
    assert torch.equal(tiled.p_value, whole.p_value)


def test_rsa_test_reproducible_with_seed():
    a, b = rdm(_patterns(9, 4, seed=13)), rdm(_patterns(9, 4, seed=14))
    one, two = rsa_test(a, b, n_permutations=50, seed=5), rsa_test(a, b, n_permutations=50, seed=5)
    assert one == two
    assert not torch.equal(one.null, rsa_test(a, b, n_permutations=50, seed=6).null)


@pytest.mark.parametrize("method", METHODS)
def test_identical_structure_gives_the_smallest_p(method):
    a = rdm(_patterns(2, 10, 6, seed=15))
    t = rsa_test(a, a, method=method, n_permutations=99)
    np.testing.assert_allclose(t.observed.numpy(), 1.0, atol=1e-12)
    np.testing.assert_array_equal(t.p_value.numpy(), 1 / 100)


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_rsa_test_p_uniform_on_null_data(method):
    """200 independent random RDM pairs: the permutation p-values are ~uniform."""
    a, b = rdm(_patterns(200, 8, 4, seed=16)), rdm(_patterns(200, 8, 4, seed=17))
    t = rsa_test(a, b, method=method, n_permutations=199, seed=2)
    p = t.p_value.numpy()
    assert scipy.stats.kstest(p, "uniform").pvalue > 1e-3
    assert 0.01 <= (p <= 0.05).mean() <= 0.11  # binomial(200, 0.05) +- 3 sd


def test_rsa_test_nan_where_undefined():
    flat = torch.ones(5, 5, dtype=torch.float64) - torch.eye(5, dtype=torch.float64)
    b = rdm(_patterns(5, 3, seed=18))
    t = rsa_test(torch.stack([flat, b]), b, n_permutations=9)
    assert t.observed[0].isnan() and t.p_value[0].isnan() and t.null[0].isnan().all()
    assert not t.p_value[1].isnan()


def test_rsa_test_result_round_trip_selection_rows(tmp_path):
    a, b = rdm(_patterns(2, 3, 6, 4, seed=19)), rdm(_patterns(6, 4, seed=20))
    axes = {"model": ("gpt2", "pythia"), "layer": ("L0", "L1", "L2")}
    t = rsa_test(a, b, n_permutations=19, axes=axes)
    assert isinstance(t, RSATest) and load(t.save(tmp_path / "r.json")) == t
    one = t["pythia", "L2"]
    assert one.observed.shape == () and torch.equal(one.null, t.null[1, 2])
    assert torch.equal(t["gpt2"].p_value, t.p_value[0])
    rows = t.rows()
    assert len(rows) == 6 and rows[5] == {
        "model": "pythia",
        "layer": "L2",
        "observed": float(t.observed[1, 2]),
        "p_value": float(t.p_value[1, 2]),
        "null_mean": float(t.null[1, 2].mean()),
        "null_q95": float(t.null[1, 2].quantile(0.95)),
    }


# -- noise ceiling -------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_noise_ceiling_equals_rsatoolbox(method):
    g = _gen(21)
    base = torch.randn(2, 1, 9, 6, generator=g, dtype=torch.float64)
    reps = rdm(base + 0.8 * torch.randn(2, 5, 9, 6, generator=g, dtype=torch.float64))  # [2, R, c, c]
    reps = reps * torch.rand(2, 5, 1, 1, generator=g, dtype=torch.float64).add(0.5)  # different scales
    nc = noise_ceiling(reps, method=method, axes={"layer": ("L0", "L1")})
    assert nc.n_repetitions == 5 and nc.lower.shape == (2,)
    for i in range(2):
        with np.testing.suppress_warnings() as sup:
            sup.filter(UserWarning)  # rsatoolbox: "Noise ceiling for tau based on averaged ranks!"
            lo, hi = boot_noise_ceiling(RsaRDMs(_rsa_vectors(reps[i])), method=RSATOOLBOX[method])
        assert abs(float(nc.lower[i]) - lo) < 1e-10 and abs(float(nc.upper[i]) - hi) < 1e-10
        assert float(nc.lower[i]) < float(nc.upper[i])


def test_noise_ceiling_round_trip_selection_rows(tmp_path):
    reps = rdm(_patterns(3, 4, 7, 5, seed=22))
    nc = noise_ceiling(reps, axes={"layer": ("L0", "L1", "L2")})
    assert isinstance(nc, NoiseCeiling) and load(nc.save(tmp_path / "r.json")) == nc
    assert float(nc["L1"].upper) == float(nc.upper[1])
    assert nc.rows()[2] == {
        "layer": "L2",
        "lower": float(nc.lower[2]),
        "upper": float(nc.upper[2]),
        "n_repetitions": 4,
    }


# -- category selectivity ------------------------------------------------------------------


def _grouped(lead=(2, 3), n_per=(5, 7, 6), features=9, seed=23, shift=1.5):
    g = _gen(seed)
    labels = [name for name, k in zip("abc", n_per) for _ in range(k)]
    x = torch.randn(*lead, sum(n_per), features, generator=g, dtype=torch.float64)
    x[..., : n_per[0], :3] += shift  # features 0..2 separate category "a"
    perm = torch.randperm(len(labels), generator=g)  # interleave the categories
    return x[..., perm, :], [labels[i] for i in perm.tolist()]


def test_selectivity_f_and_p_equal_scipy_f_oneway():
    x, labels = _grouped()
    s = category_selectivity(x, labels, n_permutations=5)
    groups = [x[..., [i for i, v in enumerate(labels) if v == c], :].numpy() for c in "abc"]
    ref = scipy.stats.f_oneway(*groups, axis=-2)
    np.testing.assert_allclose(s.f.numpy(), ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(s.p.numpy(), ref.pvalue, rtol=1e-9, atol=1e-300)
    assert (s.n_groups, s.n_samples, s.correction) == (3, 18, "fdr_bh")
    codes = torch.tensor(["abc".index(v) for v in labels])
    assert category_selectivity(x, codes, n_permutations=5) == s  # integer codes as a tensor: same groups


@pytest.mark.parametrize("correction", ["fdr_bh", "bonferroni", "none"])
def test_selectivity_corrections_equal_scipy(correction):
    x, labels = _grouped(lead=(4,), features=30, shift=1.0)
    s = category_selectivity(x, labels, correction=correction, alpha=0.1, n_permutations=5)
    p = s.p.numpy()
    if correction == "fdr_bh":
        adjusted = scipy.stats.false_discovery_control(p, axis=-1)
    elif correction == "bonferroni":
        adjusted = np.minimum(p * p.shape[-1], 1)
    else:
        adjusted = p
    np.testing.assert_array_equal(s.selective.numpy(), adjusted < 0.1)
    np.testing.assert_allclose(s.fraction.numpy(), (adjusted < 0.1).mean(-1))


def test_selectivity_undefined_features_left_out():
    """Constant feature: F NaN, not selective, out of the denominator and the BH family;
    constant within every group but not across: F inf, p 0 (scipy's conventions)."""
    x, labels = _grouped(lead=(), features=6)
    x[:, 4] = 2.0
    x[:, 5] = torch.tensor([float("abc".index(v)) for v in labels], dtype=torch.float64)
    s = category_selectivity(x, labels, n_permutations=20)
    groups = [x[[i for i, v in enumerate(labels) if v == c]].numpy() for c in "abc"]
    with np.errstate(all="ignore"), np.testing.suppress_warnings() as sup:
        sup.filter(RuntimeWarning)
        ref = scipy.stats.f_oneway(*groups, axis=0)
    assert np.isnan(ref.statistic[4]) and np.isinf(ref.statistic[5])
    assert s.f[4].isnan() and s.p[4].isnan() and not s.selective[4]
    assert s.f[5].isinf() and s.p[5] == 0 and s.selective[5]
    np.testing.assert_allclose(s.f[:4].numpy(), ref.statistic[:4], rtol=1e-10)
    adjusted = scipy.stats.false_discovery_control(np.delete(s.p.numpy(), 4))
    np.testing.assert_array_equal(np.delete(s.selective.numpy(), 4), adjusted < 0.05)
    assert float(s.fraction) == float(np.mean(adjusted < 0.05))  # 5 defined features
    everything_constant = category_selectivity(torch.ones(18, 3), labels, n_permutations=5)
    assert everything_constant.fraction.isnan() and everything_constant.p_value.isnan()


def test_selectivity_null_is_the_fraction_with_permuted_labels():
    x, labels = _grouped(lead=(2,), features=12)
    s = category_selectivity(x, labels, n_permutations=15, seed=4)
    g = _gen(4)
    for t in range(15):
        perm = torch.randperm(len(labels), generator=g).tolist()
        shuffled = [labels[i] for i in perm]
        again = category_selectivity(x, shuffled, n_permutations=1)
        np.testing.assert_array_equal(s.null_fraction[:, t].numpy(), again.fraction.numpy())
    count = (s.null_fraction >= s.fraction[:, None]).sum(-1)
    np.testing.assert_array_equal(s.p_value.numpy(), ((1 + count.double()) / 16).numpy())


def test_selectivity_tiles_and_seeds(monkeypatch):
    x, labels = _grouped(lead=(2,), features=8)
    whole = category_selectivity(x, labels, n_permutations=25, seed=7)
    assert whole == category_selectivity(x, labels, n_permutations=25, seed=7)
    assert not torch.equal(
        whole.null_fraction, category_selectivity(x, labels, n_permutations=25, seed=8).null_fraction
    )
    monkeypatch.setattr("tlprobe.analyses.geometry.TILE_CELLS", 100)
    assert category_selectivity(x, labels, n_permutations=25, seed=7) == whole


def test_selectivity_permutation_p_valid_on_null_data():
    """No category structure: the permutation p is (super-)uniform: P(p <= a) <= a, within binomial noise."""
    g = _gen(24)
    x = torch.randn(150, 24, 40, generator=g, dtype=torch.float64)
    s = category_selectivity(x, ["a", "b", "c"] * 8, correction="none", n_permutations=99, seed=3)
    p = s.p_value.numpy()
    for a in (0.05, 0.1, 0.25, 0.5):
        assert (p <= a).mean() <= a + 3 * np.sqrt(a * (1 - a) / 150)
    assert (p <= 0.5).mean() >= 0.25  # not degenerate (ties make it conservative, not useless)
    # the per-feature ANOVA p is uniform on null data
    assert scipy.stats.kstest(s.p.numpy().ravel()[:2000], "uniform").pvalue > 1e-3


def test_strong_selectivity_is_significant():
    x, labels = _grouped(lead=(), n_per=(10, 10, 10), features=20, shift=3.0)
    s = category_selectivity(x, labels, n_permutations=99)
    assert bool(s.selective[:3].all()) and float(s.p_value) <= 0.05


def test_selectivity_round_trip_selection_rows(tmp_path):
    x, labels = _grouped()
    axes = {"model": ("m0", "m1"), "layer": ("L0", "L1", "L2")}
    s = category_selectivity(x, labels, n_permutations=9, axes=axes)
    assert isinstance(s, Selectivity) and load(s.save(tmp_path / "r.json")) == s
    one = s["m1", "L0"]
    assert torch.equal(one.f, s.f[1, 0]) and torch.equal(one.selective, s.selective[1, 0])
    assert s.rows()[3] == {
        "model": "m1",
        "layer": "L0",
        "fraction": float(s.fraction[1, 0]),
        "null_mean": float(s.null_fraction[1, 0].mean()),
        "null_q95": float(s.null_fraction[1, 0].quantile(0.95)),
        "p_value": float(s.p_value[1, 0]),
    }


# -- bad input -----------------------------------------------------------------------------


def test_bad_inputs_raise():
    x = _patterns(5, 4)
    good = rdm(x)
    with pytest.raises(TlprobeError, match=r"condition 2 at leading index \(1,\) is constant"):
        bad = _patterns(2, 5, 4)
        bad[1, 2] = 7.0
        rdm(bad)
    with pytest.raises(TlprobeError, match="unknown RDM method"):
        rdm(x, method="cosine")  # type: ignore[arg-type]
    with pytest.raises(TlprobeError, match="at least 2 conditions"):
        rdm(x[:1])
    with pytest.raises(TlprobeError, match="non-finite"):
        rdm(torch.full((3, 4), float("nan")))
    with pytest.raises(TlprobeError, match="square"):
        rdm_vector(torch.zeros(3, 4))
    with pytest.raises(TlprobeError, match="sequence of labels"):
        category_rdm("abc")
    with pytest.raises(TlprobeError, match="unknown comparison method"):
        compare_rdms(good, good, method="tau-b")  # type: ignore[arg-type]
    with pytest.raises(TlprobeError, match="not symmetric"):
        compare_rdms(good + torch.triu(torch.ones(5, 5)), good)
    with pytest.raises(TlprobeError, match="same conditions"):
        compare_rdms(good, good[:4, :4])
    with pytest.raises(TlprobeError, match="at least 3"):
        compare_rdms(good[:2, :2], good[:2, :2])
    with pytest.raises(TlprobeError, match="do not broadcast"):
        compare_rdms(rdm(_patterns(2, 5, 4)), rdm(_patterns(3, 5, 4)))
    with pytest.raises(TlprobeError, match="n_permutations must be >= 1"):
        rsa_test(good, good, n_permutations=0)
    with pytest.raises(TlprobeError, match="one label per leading index"):
        rsa_test(rdm(_patterns(2, 5, 4)), good, n_permutations=3, axes={"layer": ("L0",)})
    with pytest.raises(TlprobeError, match="at least 2 repetitions"):
        noise_ceiling(rdm(_patterns(1, 5, 4)))
    xs, labels = _grouped(lead=())
    with pytest.raises(TlprobeError, match="one label per sample"):
        category_selectivity(xs, labels[:-1])
    with pytest.raises(TlprobeError, match="at least 2 categories"):
        category_selectivity(xs, ["a"] * len(labels))
    with pytest.raises(TlprobeError, match=r"\['z'\] have fewer than 2 samples"):
        category_selectivity(xs, ["z"] + labels[1:])
    with pytest.raises(TlprobeError, match="unknown correction"):
        category_selectivity(xs, labels, correction="holm")  # type: ignore[arg-type]
    with pytest.raises(TlprobeError, match="alpha must be"):
        category_selectivity(xs, labels, alpha=0.0)
