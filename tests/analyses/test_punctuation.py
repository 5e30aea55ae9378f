"""L13 punctuation analysis: occurrence sampling, covariance/MI in windows, cluster panels."""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np
import pytest
import torch

import tlprobe
from tests.helpers import punctuation_inputs
from tlprobe.access.punctuation import char_classes, token_classes
from tlprobe.access.text import cut_windows, run_windows, tokenize_text
from tlprobe.analyses.mi import resolve_bins
from tlprobe.analyses.punctuation import (
    MAKEUP_KINDS,
    SIMPSON_OUTCOME_NAMES,
    DependenceAccumulator,
    PanelResult,
    PunctuationClusters,
    bins_from_counts,
    cluster_depth,
    cluster_makeup,
    cluster_panels,
    depth_label,
    makeup_kind,
    punctuation_dependence,
    rule_bin_counts,
    sample_occurrences,
    window_dependence,
    window_dependence_bytes,
)
from tlprobe.errors import TlprobeError
from tlprobe.result import Result
from tlprobe.testing import tiny_model, tiny_tokenizer


def test_sampling_skips_edges_is_seeded_and_warns_when_short():
    cls = torch.zeros(200, dtype=torch.long)
    cls[[0, 1, 5, 51, 61, 71, 81, 91, 101, 195, 199]] = 1  # 0, 1, 5 and 195, 199 lack room
    cls[torch.arange(30, 190, 4)] = 2  # 40 terminal marks, all with room
    occ = sample_occurrences(cls, 5, before=10, after=8, seed=3, min_count=3)
    assert occ.available == {"internal": 6, "terminal": 40}
    assert occ.class_counts == {"none": 149, "internal": 11, "terminal": 40}
    assert ((occ.pos >= 10) & (occ.pos < 192)).all()
    assert (cls[occ.pos] == occ.cls).all()
    again = sample_occurrences(cls, 5, before=10, after=8, seed=3, min_count=3)
    assert torch.equal(occ.pos, again.pos)
    other = sample_occurrences(cls, 5, before=10, after=8, seed=4, min_count=3)
    assert not torch.equal(occ.pos[occ.cls == 2], other.pos[other.cls == 2])
    with pytest.warns(UserWarning, match="only 6 internal"):
        big = sample_occurrences(cls, 10, before=10, after=8, seed=0, min_count=3)
    assert int((big.cls == 1).sum()) == 6 and int((big.cls == 2).sum()) == 10
    assert occ.rows() == [
        {"class": "none", "tokens": 149, "with room for a window": "", "sampled": ""},
        {"class": "internal", "tokens": 11, "with room for a window": 6, "sampled": 5},
        {"class": "terminal", "tokens": 40, "with room for a window": 40, "sampled": 5},
    ]
    with pytest.raises(TlprobeError, match="n must be >= 0, got -1"):
        sample_occurrences(cls, -1, before=10, after=8)


def test_n_0_takes_every_mark_with_room_for_a_window_in_text_order():
    g = torch.Generator().manual_seed(1)
    cls = torch.randint(0, 3, (500,), generator=g)
    before, after = 12, 7
    occ = sample_occurrences(cls, 0, before=before, after=after, seed=5, min_count=1)
    pos = torch.arange(cls.numel())
    room = (pos >= before) & (pos < cls.numel() - after)
    for c in (1, 2):
        expected = pos[(cls == c) & room]
        assert torch.equal(occ.pos[occ.cls == c], expected)
        assert occ.available[{1: "internal", 2: "terminal"}[c]] == expected.numel()
    assert occ.cls.tolist() == sorted(occ.cls.tolist())  # class 1 first
    # the same sample as any n at least the number of marks (which warns), whatever the seed
    with pytest.warns(UserWarning, match="using all of them"):
        big = sample_occurrences(cls, 10_000, before=before, after=after, seed=5, min_count=1)
    assert torch.equal(big.pos, occ.pos) and torch.equal(big.cls, occ.cls)
    other = sample_occurrences(cls, 0, before=before, after=after, seed=6, min_count=1)
    assert torch.equal(other.pos, occ.pos)


def test_too_few_punctuation_marks_is_a_clear_error():
    tok = tiny_tokenizer("wordpiece")
    tt = tokenize_text(tok, "A short text, with a comma. And one more sentence, ok. " * 3)
    cls = token_classes(tt.text, tt.offsets)
    with pytest.raises(TlprobeError, match=r"too few punctuation marks.*internal: \d+.*longer text"):
        sample_occurrences(cls, 250, before=20, after=10)


def _numpy_mi(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    p = joint / joint.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (px @ py)[nz])).sum())


def test_window_dependence_equals_numpy():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 3, 7, 48, generator=g, dtype=torch.float64)
    h[0, 1, 5] = 0.5 * h[0, 1, 2] ** 2 + 0.1 * h[0, 1, 5]  # a non-linear neighbour
    cov, mi = window_dependence(h, centre=2, bins=6)
    assert cov.shape == mi.shape == (2, 3, 7)
    hn = h.numpy()
    for layer in range(2):
        for w in range(3):
            for t in range(7):
                a, b = hn[layer, w, 2], hn[layer, w, t]
                assert cov[layer, w, t].item() == pytest.approx(np.cov(a, b)[0, 1], abs=1e-10)
                assert mi[layer, w, t].item() == pytest.approx(_numpy_mi(a, b, 6), abs=1e-6)
    assert mi[0, 1, 5] > mi[0, 1, 4]
    with pytest.raises(TlprobeError, match="centre"):
        window_dependence(h, centre=7)
    with pytest.raises(TlprobeError, match=r"chunk_size \(windows per MI call\) must be >= 1, got 0"):
        window_dependence(h, centre=1, chunk_size=0)


def test_window_dependence_does_not_depend_on_chunking():
    h = torch.randn(2, 9, 5, 40, generator=torch.Generator().manual_seed(3))
    cov, mi = window_dependence(h, centre=1, bins="sqrt", chunk_size=1000)
    cov2, mi2 = window_dependence(h, centre=1, bins="sqrt", chunk_size=4)
    assert torch.equal(cov, cov2) and torch.equal(mi, mi2)


@pytest.fixture(scope="module")
def dep():
    text_cls, occ, windows, hidden = punctuation_inputs()
    out = punctuation_dependence(
        hidden, windows, text_cls, occ, before=4, depth=[1, 2], bins=5, axes={"layer": ("L0", "L1")}
    )
    assert out.slot_class[:, 4].tolist() == occ.cls.tolist()
    assert bool(out.same_token[:, 4].all())
    return out


def test_punctuation_dependence_shapes_labels_and_errors(dep):
    assert dep.covariance.shape == dep.mi.shape == (2, 24, 8)
    assert dep.depth.tolist() == [1, 2] and dep.rel.tolist() == list(range(-4, 4))
    assert dep["L1"].covariance.shape == (24, 8) and int(dep["L1"].depth) == 2
    points = dep.points(1, 2)
    assert points["x"].shape == (12 * 7,) and bool((points["rel"] != 0).all())
    with pytest.raises(TlprobeError, match="no windows of class 3"):
        dep.points(0, 3)
    text_cls = torch.zeros(100, dtype=torch.long)
    text_cls[[20, 40, 60]] = 1
    occ = sample_occurrences(text_cls, 3, before=4, after=3, class_ids=(1,), min_count=1)
    windows = torch.zeros(3, 8, dtype=torch.long)
    with pytest.raises(TlprobeError, match="do not match"):
        punctuation_dependence(torch.randn(1, 5, 8, 16), windows, text_cls, occ, before=4, depth=[1])
    with pytest.raises(TlprobeError, match="2 depth indices for 1 layers"):
        punctuation_dependence(torch.randn(1, 3, 8, 16), windows, text_cls, occ, before=4, depth=[1, 2])
    single = punctuation_dependence(torch.randn(1, 3, 8, 16), windows, text_cls, occ, before=4, depth=[1])
    assert Result.from_dict(occ.to_dict()) == occ and Result.from_dict(single.to_dict()) == single


def test_cluster_panels_end_to_end_and_deterministic(dep, tmp_path):
    a = cluster_panels(dep, seed=0)
    b = cluster_panels(dep, seed=0)
    assert isinstance(a, PunctuationClusters) and a == b
    assert [p.name for p in a.panels] == [
        "depth 1, internal",
        "depth 1, terminal",
        "depth 2, internal",
        "depth 2, terminal",
    ]
    for p in a.panels:
        assert isinstance(p, PanelResult)
        assert p.covariance.numel() == 12 * 7 and int(p.simpson.sizes.sum()) == 12 * 7
        assert p.rel_counts.shape == (p.clustering.k, 7) and int(p.rel_counts.sum()) == 12 * 7
        rows = p.rows()
        assert [r["cluster"] for r in rows] == list(range(p.clustering.k))
        assert rows[0]["layer (depth)"] == p.depth and rows[0]["class"] == p.class_name
        for j, row in enumerate(rows):
            sel = p.clustering.labels == j
            assert row["mean_covariance"] == pytest.approx(float(p.covariance[sel].double().mean()))
    summary = a.rows()
    assert [(r["layer (depth)"], r["class"], r["points"]) for r in summary] == [
        (1, "internal", 84),
        (1, "terminal", 84),
        (2, "internal", 84),
        (2, "terminal", 84),
    ]
    assert tlprobe.load(a.save(tmp_path / "clusters.json")) == a
    assert Result.from_dict(dep.to_dict()) == dep


def test_gmm_panels(dep):
    panels = cluster_panels(dep, "gmm", k_max=2, seed=0).panels
    assert all(p.clustering.method == "gmm" and p.clustering.k_tried == (1, 2) for p in panels)


def test_integer_knobs_accept_numpy_and_torch_integers_and_huge_bins_are_refused():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 3, 5, 32, generator=g)
    cov, mi = window_dependence(h, centre=2, bins=4, chunk_size=2)
    cov2, mi2 = window_dependence(h, centre=np.int64(2), bins=np.int64(4), chunk_size=torch.tensor(2))  # pyright: ignore[reportArgumentType]
    assert torch.equal(cov, cov2) and torch.equal(mi, mi2)
    with pytest.raises(TlprobeError, match="histogram MI with bins=100000000.*GiB.*lower bins"):
        window_dependence(h, centre=2, bins=100_000_000)
    assert window_dependence_bytes(500, 31, 384, bins=10) < 2**30
    assert window_dependence_bytes(1, 2, 2, bins=100_000_000) >= 100_000_000**2
    cls = torch.tensor([0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 2, 0])
    want = sample_occurrences(cls, 2, before=1, after=1, min_count=1, seed=3)
    got = sample_occurrences(cls, np.int64(2), before=np.int32(1), after=torch.tensor(1), min_count=1, seed=np.int64(3))  # pyright: ignore[reportArgumentType]
    assert torch.equal(want.pos, got.pos)
    with pytest.raises(TlprobeError, match="before must be >= 0, got -1"):
        sample_occurrences(cls, 2, before=-1, after=1)


def test_one_abbreviation_string_is_one_word():
    text = "He met Foo. Then he left."
    assert int(char_classes(text)[10]) == 2  # a sentence end by default
    assert int(char_classes(text, abbreviations="foo")[10]) == 0  # was the letters {"f", "o"}
    assert int(char_classes(text, abbreviations=["foo"])[10]) == 0


def test_panels_carry_p_values_and_say_what_their_clusters_are(dep):
    clusters = cluster_panels(dep, seed=0, alpha=0.01)
    for p in clusters.panels:
        assert p.simpson.alpha == 0.01 and p.simpson.within_p.shape == p.simpson.within_r.shape
        row = clusters.rows()[clusters.panels.index(p)]
        assert row["Simpson check"] == p.simpson.outcome and "pooled p" in row and "within p" in row
        assert [r["p"] for r in p.rows()] == [
            "n/a" if v != v else ("< 1e-4" if v < 1e-4 else float(f"{v:.4g}")) for v in p.simpson.within_p.tolist()
        ]
        text = p.describe()
        assert text.startswith(p.name)
        if p.clustering.k == 1:
            assert text == f"{p.name}: one cluster of {p.covariance.numel()} points"
        else:
            assert text.count("points)") == p.clustering.k
    with pytest.raises(TlprobeError, match="alpha must be < 1"):
        cluster_panels(dep, seed=0, alpha=1.0)


def test_cluster_makeup_names_the_window_s_other_marks_from_the_fractions():
    assert cluster_makeup(0.5, 0.6, 3.0).startswith("the window's other marks of the same kind (50% the mark's own")
    assert cluster_makeup(0.49, 0.5, 3.0).startswith("mostly punctuation (49% the mark's own token, 50% punctuation")
    assert (
        cluster_makeup(0.0, 0.2, 12.5)
        == "mostly other tokens (0% the mark's own token, 20% punctuation, median distance 12.5)"
    )
    assert cluster_makeup(0.0, 0.6, 1.0, brief=True) == "mostly punctuation (60% punctuation)"


# -- batch by batch: the same PunctuationDependence as all windows at once ------------------------
def _fold(hidden, windows, text_cls, occ, batch, **kw) -> object:
    acc = DependenceAccumulator(text_cls, occ, **kw)
    for s in range(0, len(occ), batch):
        acc.update(hidden[:, s : s + batch], windows[s : s + batch])
    return acc.result()


def _assert_same(a, b) -> None:
    for f in ("depth", "covariance", "mi", "cls", "pos", "rel", "same_token", "slot_class"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.bins == b.bins and dict(a.axes) == dict(b.axes)
    assert Result.from_dict(a.to_dict()) == Result.from_dict(b.to_dict())


@pytest.mark.parametrize("batch", [1, 7, 24])
def test_batches_fold_into_the_all_at_once_dependence(batch):
    text_cls, occ, windows, hidden = punctuation_inputs()
    kw = dict(before=4, depth=[1, 2], bins=5, axes={"layer": ("L0", "L1")})
    whole = punctuation_dependence(hidden, windows, text_cls, occ, **kw)
    _assert_same(_fold(hidden, windows, text_cls, occ, batch, **kw), whole)
    # a bin rule: one count from all windows, collected batch by batch in a first pass
    for rule in ("sqrt", "scott", "fd"):
        whole = punctuation_dependence(hidden, windows, text_cls, occ, before=4, depth=[1, 2], bins=rule)
        counts = [rule_bin_counts(hidden[:, s : s + batch], rule) for s in range(0, len(occ), batch)]
        resolved = bins_from_counts(counts, rule)
        assert resolved == resolve_bins(hidden.mT, rule)
        folded = _fold(hidden, windows, text_cls, occ, batch, before=4, depth=[1, 2], bins=rule, resolved_bins=resolved)
        _assert_same(folded, whole)


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_model_run_batch_by_batch_equals_all_windows_at_once(batch):
    model = tiny_model("gpt2")
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 200, (300,), generator=g)
    text_cls = torch.zeros(300, dtype=torch.long)
    text_cls[torch.arange(10, 295, 7)] = 1
    text_cls[torch.arange(13, 295, 11)] = 2
    occ = sample_occurrences(text_cls, 0, before=5, after=3, seed=0, min_count=5)
    depth = [0, 2]
    windows = cut_windows(ids, occ.pos, before=5, after=3)
    # all windows at once (the forward passes in the same batches of windows)
    hidden = run_windows(model, windows, depth, batch_size=batch)
    whole = punctuation_dependence(hidden, windows, text_cls, occ, before=5, depth=depth, bins=6)
    acc = DependenceAccumulator(text_cls, occ, before=5, depth=depth, bins=6)
    for s in range(0, len(occ), batch):
        part = cut_windows(ids, occ.pos[s : s + batch], before=5, after=3)
        acc.update(run_windows(model, part, depth, batch_size=batch), part)
    _assert_same(acc.result(), whole)


def test_accumulator_refuses_what_does_not_fold():
    text_cls, occ, windows, hidden = punctuation_inputs()
    acc = DependenceAccumulator(text_cls, occ, before=4, depth=[1, 2], bins=5)
    with pytest.raises(TlprobeError, match="windows for 24 occurrences"):
        acc.result()
    with pytest.raises(TlprobeError, match="do not match"):
        acc.update(hidden[:, :3], windows[:4])
    with pytest.raises(TlprobeError, match="2 depth indices for 1 layers"):
        acc.update(hidden[:1, :3], windows[:3])
    acc.update(hidden[:, :20], windows[:20])
    with pytest.raises(TlprobeError, match="windows of 7 tokens after windows of 8"):
        acc.update(hidden[:, 20:, :7], windows[20:, :7])
    with pytest.raises(TlprobeError, match="25 windows for 24 occurrences"):
        acc.update(torch.cat([hidden[:, 20:], hidden[:, :1]], 1), torch.cat([windows[20:], windows[:1]]))
    rule = DependenceAccumulator(text_cls, occ, before=4, depth=[1, 2], bins="sqrt")
    rule.update(hidden[:, :3], windows[:3])
    with pytest.raises(TlprobeError, match="pass resolved_bins"):
        rule.update(hidden[:, 3:], windows[3:])
    with pytest.raises(TlprobeError, match="undefined"):
        bins_from_counts([rule_bin_counts(torch.ones(1, 2, 3, 8), "sqrt")], "sqrt")


# -- L14: the clusters of every class at every depth, summarised (ClusterDepth) ------------------
@pytest.fixture(scope="module")
def depth_panels():
    """Three depths of the synthetic windows; one slot copies the mark (a cluster of its own)."""
    text_cls, occ, windows, hidden = punctuation_inputs()
    hidden = torch.cat([hidden, torch.randn(1, *hidden.shape[1:], generator=torch.Generator().manual_seed(5))])
    hidden[:2, :, 5] = hidden[:2, :, 4] * 3  # depths 0 and 2 split, depth 5 does not
    windows = windows.clone()
    windows[::3, 5] = windows[::3, 4]  # a third of the copies are the mark's own token
    dep = punctuation_dependence(hidden, windows, text_cls, occ, before=4, depth=[0, 2, 5], bins=5)
    return dep, cluster_panels(dep, k_max=3, seed=0)


def _direct_summary(dep, p, layer: int, class_id: int) -> dict:
    """One panel's ClusterDepth numbers, by numpy loops over its points."""
    pts = {k: v.numpy() for k, v in dep.points(layer, class_id).items()}
    lab = p.clustering.labels.numpy()
    sizes = np.bincount(lab, minlength=p.clustering.k)
    main = int(np.argmax(sizes))
    out = {"k": p.clustering.k, "points": lab.size, "main": main}
    for part, sel in (("main", lab == main), ("minor", lab != main)):
        if not sel.any():
            out |= {f"{part}_{f}": np.nan for f in ("frac_punctuation", "frac_same_token", "median_distance")}
            continue
        dist = np.sort(np.abs(pts["rel"][sel]))
        out[f"{part}_frac_punctuation"] = float(np.mean(pts["slot_class"][sel] > 0))
        out[f"{part}_frac_same_token"] = float(np.mean(pts["same_token"][sel]))
        out[f"{part}_median_distance"] = float(dist[(dist.size - 1) // 2])  # torch's median: the lower one
    out["minor_share"] = max([s / lab.size for j, s in enumerate(sizes) if j != main], default=0.0)
    return out


def test_cluster_depth_equals_a_direct_computation_from_the_points(depth_panels):
    dep, clusters = depth_panels
    s = cluster_depth(clusters)
    assert s.axes == {"class": ("internal", "terminal"), "depth": ("embed", "L1", "L4")}
    assert s.depth.tolist() == [0, 2, 5] and tuple(s.k.shape) == (2, 3)
    assert s.k.tolist() == [[2, 2, 1], [2, 2, 1]]  # the copied slot splits depths 0 and 2 only
    panel = {(p.class_name, p.depth): p for p in clusters.panels}
    for ci, (name, class_id) in enumerate((("internal", 1), ("terminal", 2))):
        for li, d in enumerate([0, 2, 5]):
            p, want = panel[name, d], _direct_summary(dep, panel[name, d], li, class_id)
            assert int(s.k[ci, li]) == want["k"] and int(s.points[ci, li]) == want["points"]
            for f in (
                "minor_share",
                *(
                    f"{a}_{b}"
                    for a in ("main", "minor")
                    for b in ("frac_punctuation", "frac_same_token", "median_distance")
                ),
            ):
                np.testing.assert_allclose(float(getattr(s, f)[ci, li]), want[f], rtol=1e-12, equal_nan=True, err_msg=f)
            scores = p.clustering.scores
            assert float(s.silhouette[ci, li]) == max(scores)
            assert float(s.pooled_r[ci, li]) == p.simpson.pooled_r and bool(s.simpson_flag[ci, li]) == p.simpson.flag
            assert SIMPSON_OUTCOME_NAMES[int(s.simpson_outcome[ci, li])] == p.simpson.outcome
            for part in ("main", "minor"):
                kind = int(getattr(s, f"{part}_kind")[ci, li])
                if want["k"] == 1 and part == "minor":
                    assert kind == -1
                else:  # the kind cluster_makeup names from the same fractions
                    words = cluster_makeup(want[f"{part}_frac_same_token"], want[f"{part}_frac_punctuation"], 0.0)
                    assert words.startswith(MAKEUP_KINDS[kind])
    # The minor cluster at the split depths is the copied slot: rel +1, a third the mark's own token.
    assert s.minor_median_distance[:, :2].eq(1).all() and s.minor_frac_same_token[:, :2].gt(0.2).all()
    rows = s.rows()
    assert len(rows) == 6 and rows[0]["class"] == "internal" and rows[0]["depth"] == "embed"
    assert rows[2]["minor kind"] == "" and rows[2]["minor: punctuation"] is None and rows[2]["clusters"] == 1
    assert tlprobe.load(s.save(pathlib.Path(tempfile.mkdtemp()) / "s.json")) == s


def test_makeup_kind_agrees_with_cluster_makeup_on_a_grid():
    fracs = torch.linspace(0, 1, 21, dtype=torch.float64)
    same, punct = torch.meshgrid(fracs, fracs, indexing="ij")
    codes = makeup_kind(same, punct)
    for a, b, c in zip(same.flatten().tolist(), punct.flatten().tolist(), codes.flatten().tolist()):
        assert cluster_makeup(a, b, 0.0).startswith(MAKEUP_KINDS[c])


def test_cluster_depth_refuses_an_incomplete_grid(depth_panels):
    _, clusters = depth_panels
    with pytest.raises(TlprobeError, match=r"5 panels for 2 classes x 3 depths: pass the clusters of every class"):
        cluster_depth(PunctuationClusters(panels=clusters.panels[:-1]))
    with pytest.raises(TlprobeError, match="no panels to summarise"):
        cluster_depth(PunctuationClusters(panels=()))
    assert depth_label(0) == "embed" and depth_label(7) == "L6"
