"""L03 analyses across depth and per head: equal to independent numpy code, to L02, and to head slices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tlprobe.access.hooks import fused_qkv
from tlprobe.analyses.depth import (
    DepthBlockStats,
    HeadMaps,
    depth_block_similarity,
    head_labels,
    head_maps,
    sample_moments,
    split_heads,
)
from tlprobe.analyses.similarity import BLOCKS, block_stats, feature_similarity, qkv_block_codes


def qkv_block_similarity(x, method, bins):
    """Independent reference: the full similarity matrix, then the general block_stats."""
    return block_stats(feature_similarity(x, method), qkv_block_codes(x.shape[-1] // 3), method=method, bins=bins)


from tlprobe.errors import TlprobeError

SUMMARIES = ("mean", "std", "mean_abs", "frac_extreme")


def _data(lead=(4,), samples=25, n=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # A per-feature mean offset, as in real activations, so cosine and correlation differ.
    x = torch.randn(*lead, samples, 3 * n, generator=g, dtype=dtype)
    return x + 1.5 * torch.randn(*lead, 1, 3 * n, generator=g, dtype=dtype)


def _numpy_layer(x: np.ndarray, method: str, bins: int, extreme: float) -> dict:
    """The straightforward per-layer computation: full matrix, boolean masks, np.histogram."""
    if method == "cosine":
        xn = x / np.linalg.norm(x, axis=0, keepdims=True)
        sim = xn.T @ xn
    else:
        sim = np.corrcoef(x, rowvar=False)
    sim = np.clip(sim, -1, 1)
    n = x.shape[1] // 3
    lab = np.repeat([1, 2, 3], n)
    codes = np.triu(np.outer(lab, lab), k=1)
    out = {k: [] for k in ("prob", *SUMMARIES)}
    for code in BLOCKS.values():
        v = sim[codes == code]
        hist, _ = np.histogram(v, bins=bins, range=(-1, 1))
        out["prob"].append(hist / v.size)
        out["mean"].append(v.mean())
        out["std"].append(v.std())
        out["mean_abs"].append(np.abs(v).mean())
        out["frac_extreme"].append(np.mean(np.abs(v) > extreme))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("method", ["cosine", "correlation"])
@pytest.mark.parametrize("bins", [20, 17])  # 20: +-0.9 are bin edges (fast path); 17: they are not
def test_per_layer_equals_numpy(method, bins):
    x = _data((4,))
    st = depth_block_similarity(x, method, bins=bins)
    assert st.blocks == tuple(BLOCKS)
    for layer in range(4):
        ref = _numpy_layer(x[layer].numpy(), method, bins, 0.9)
        np.testing.assert_array_equal(st.prob[layer].numpy(), ref["prob"])
        for k in SUMMARIES:
            np.testing.assert_allclose(getattr(st, k)[layer].numpy(), ref[k], atol=1e-12, err_msg=k)


def test_histograms_are_densities():
    st = depth_block_similarity(_data((2, 3)), "correlation", bins=30)
    assert st.prob.shape == (2, 3, 6, 30)
    torch.testing.assert_close(st.prob.sum(-1), torch.ones(2, 3, 6, dtype=torch.float64))
    widths = st.edges[1:] - st.edges[:-1]
    torch.testing.assert_close((st.density * widths).sum(-1), torch.ones(2, 3, 6, dtype=torch.float64))
    n = 8
    assert st.count.tolist() == [n * (n - 1) // 2, n * n, n * n, n * (n - 1) // 2, n * n, n * (n - 1) // 2]


@pytest.mark.parametrize("method", ["cosine", "correlation"])
def test_l02_single_layer_equals_l03_at_that_layer(method):
    x = _data((5,), seed=3)
    st = depth_block_similarity(x, method, bins=40)
    for layer in (0, 2, 4):
        one = qkv_block_similarity(x[layer], method, bins=40)
        torch.testing.assert_close(st[layer].prob, one.prob, rtol=0, atol=0)
        for k in ("mean", "std", "frac_extreme"):
            torch.testing.assert_close(getattr(st[layer], k), getattr(one, k), rtol=0, atol=1e-12)


def test_float32_matches_l02_and_is_float32():
    x = _data((3,), samples=40, n=30, seed=1, dtype=torch.float32)
    st = depth_block_similarity(x, "cosine", bins=100)
    one = qkv_block_similarity(x, "cosine", bins=100)
    assert st.prob.dtype == torch.float32
    # Bin counts may differ only by values within float32 rounding of a bin edge.
    assert float(((st.prob - one.prob).abs() * st.count[:, None]).max()) <= 2
    torch.testing.assert_close(st.mean, one.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(st.std, one.std, rtol=0, atol=1e-5)
    torch.testing.assert_close(st.frac_extreme, one.frac_extreme, rtol=0, atol=2 / 900)


@pytest.mark.parametrize("method", ["cosine", "correlation"])
def test_chunked_and_tiled_equal_unchunked(monkeypatch, method):
    from tlprobe.analyses import depth

    x = _data((7,), n=10, seed=2)
    full = depth_block_similarity(x, method, bins=25, chunk=7)  # one chunk, one tile per block
    ref = [_numpy_layer(x[layer].numpy(), method, 25, 0.9) for layer in range(7)]
    # Tiles of a few rows (a partial last one) and chunks of 1 or 3 layers, the bench's code path.
    monkeypatch.setattr(depth, "TILE_CELLS", 45)
    for chunk in (1, 3, None):
        part = depth_block_similarity(x, method, bins=25, chunk=chunk)
        for k in ("prob", "frac_extreme", "mean", "std"):
            assert torch.equal(getattr(part, k), getattr(full, k)), (chunk, k)
        torch.testing.assert_close(part.mean_abs, full.mean_abs, rtol=1e-14, atol=0)
        np.testing.assert_allclose(part.mean_abs.numpy(), np.stack([r["mean_abs"] for r in ref]), atol=1e-12)


def test_range_outside_values_go_to_edge_bins():
    x = _data((2,), seed=4)
    st = depth_block_similarity(x, "cosine", bins=10, range=(-0.5, 0.5))
    for layer in range(2):
        xn = x[layer] / x[layer].norm(dim=0)
        sim = (xn.T @ xn).numpy()
        v = sim[:8, 8:16].ravel()  # the QK block
        idx = np.clip(np.floor((v + 0.5) / 1.0 * 10), 0, 9).astype(int)
        np.testing.assert_array_equal(st.prob[layer, 1].numpy(), np.bincount(idx, minlength=10) / v.size)
    # +-0.9 are the range ends here: values beyond them sit in the edge bins, so they must still count.
    y = x + 3 * x.mean(-2, keepdim=True)  # larger mean offsets: many |cosine| > 0.9
    clipped = depth_block_similarity(y, "cosine", bins=18, range=(-0.9, 0.9))
    full = depth_block_similarity(y, "cosine", bins=20)
    torch.testing.assert_close(clipped.frac_extreme, full.frac_extreme, rtol=0, atol=0)
    assert float(full.frac_extreme.min()) > 0


def test_rank_one_samples_closed_form():
    # Every sample is the same vector v (up to a positive scale): cosine(a, b) = sign(v_a v_b).
    g = torch.Generator().manual_seed(5)
    v = torch.randn(12, generator=g, dtype=torch.float64)
    x = torch.rand(9, 1, generator=g, dtype=torch.float64).add(0.5) * v
    st = depth_block_similarity(x, "cosine", bins=4)
    sign = torch.sign(v)
    expect_qk = float((sign[:4, None] * sign[None, 4:8]).mean())
    assert float(st.mean[1]) == pytest.approx(expect_qk, abs=1e-12)
    torch.testing.assert_close(st.frac_extreme, torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(st.mean_abs, torch.ones(6, dtype=torch.float64))
    assert float(st.prob[:, 1:3].sum()) == 0  # nothing in the middle bins


def test_sample_moments_equal_numpy():
    x = _data((2, 3), samples=11, n=5, seed=6)
    m = sample_moments(x)
    xs = x.numpy()
    var, mean = xs.var(axis=-2), xs.mean(axis=-2)
    np.testing.assert_allclose(m.var.numpy(), var.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(m.mean.numpy(), mean.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(m.mean_abs.numpy(), np.abs(mean).mean(-1), rtol=1e-12)
    np.testing.assert_allclose(m.rel_var.numpy(), var.sum(-1) / (xs**2).mean(-2).sum(-1), rtol=1e-12)
    one = m[1]
    assert one.var.shape == (3,) and torch.equal(one.var, m.var[1])
    json.dumps(m.to_dict())


def test_constant_token_has_zero_variance():
    x = torch.randn(1, 6, dtype=torch.float64).expand(10, 6)
    m = sample_moments(x)
    assert float(m.var) == 0 and float(m.rel_var) == 0


@pytest.fixture(scope="module")
def tiny_qkv():
    from tlprobe.testing import tiny_model

    model = tiny_model("gpt2", n_layers=2, d_model=64, n_heads=4)
    text = "She gave her the book and then her friend read it to her sister after the long dinner at home"
    _, cache = model.run_with_cache(text)
    return cache


def test_split_heads_equals_fused_qkv_head(tiny_qkv):
    for layer in (0, 1):
        full = fused_qkv(tiny_qkv, layer)[0]  # [pos, 3 * H * dh]
        split = split_heads(full, 4)  # [H, pos, 3 * dh]
        for h in range(4):
            assert torch.equal(split[h], fused_qkv(tiny_qkv, layer, head=h)[0])


def test_split_heads_grouped_query():
    from tlprobe.testing import tiny_model

    _, cache = tiny_model("llama", n_layers=1).run_with_cache("her cat sat on her mat")
    split = split_heads(fused_qkv(cache, 0)[0], 4)
    assert torch.equal(split[3], fused_qkv(cache, 0, head=3)[0])


@pytest.mark.parametrize("method", ["cosine", "correlation"])
def test_per_head_equals_head_slice(tiny_qkv, method):
    stacked = torch.stack([fused_qkv(tiny_qkv, layer)[0] for layer in (0, 1)])  # [layer, pos, 3n]
    heads = split_heads(stacked, 4)  # [layer, head, pos, 3 * dh]
    st = depth_block_similarity(heads, method, bins=12)
    mo = sample_moments(heads)
    maps = head_maps(st, mo, summaries=("mean", "frac_extreme", "mean_abs"))
    for layer in (0, 1):
        for h in range(4):
            one_head = fused_qkv(tiny_qkv, layer, head=h)[0]
            ref = qkv_block_similarity(one_head, method, bins=12)
            torch.testing.assert_close(st.prob[layer, h], ref.prob, rtol=0, atol=0)
            torch.testing.assert_close(st.frac_extreme[layer, h], ref.frac_extreme, rtol=0, atol=0)
            torch.testing.assert_close(st.mean[layer, h], ref.mean, rtol=0, atol=1e-5)
            for b, blk in enumerate(st.blocks):
                assert float(maps[f"{method} {blk} frac_extreme"][layer, h]) == float(ref.frac_extreme[b])
            assert float(maps["var"][layer, h]) == pytest.approx(float(one_head.var(0, correction=0).mean()), rel=1e-5)
    assert maps.labels[1][3] == "L1H3"


def test_head_maps_top_and_labels():
    vals = torch.tensor([[[0.1, 0.9], [0.5, 0.2]]], dtype=torch.float64)
    maps = HeadMaps(("x",), vals, (4, 7))
    assert maps.labels == [["L4H0", "L4H1"], ["L7H0", "L7H1"]]
    assert [r["head"] for r in maps.top("x", 2)] == ["L4H1", "L7H0"]
    assert head_labels(1, 2, [3]) == [["L3H0", "L3H1"]]
    d = maps.to_dict()
    assert d["maps"]["x"] == [[0.1, 0.9], [0.5, 0.2]] and d["labels"][1][0] == "L7H0"
    with pytest.raises(TlprobeError, match="no head map"):
        maps["y"]


def test_bad_input_raises():
    x = _data((2,))
    with pytest.raises(TlprobeError, match="3 \\* n"):
        depth_block_similarity(x[..., :-1])
    with pytest.raises(TlprobeError, match="chunk"):
        depth_block_similarity(x, chunk=0)
    with pytest.raises(TlprobeError, match="bins"):
        depth_block_similarity(x, bins=0)
    with pytest.raises(TlprobeError, match="too few samples"):
        depth_block_similarity(x[:, :2], "correlation")
    with pytest.raises(TlprobeError, match="all-zero"):
        depth_block_similarity(torch.cat([torch.zeros(2, 25, 3, dtype=x.dtype), x[..., 3:]], -1))
    with pytest.raises(TlprobeError, match="split"):
        split_heads(x, 5)
    with pytest.raises(TlprobeError, match="method"):
        depth_block_similarity(x, "covariance")


def test_getitem_keeps_type():
    st = depth_block_similarity(_data((2, 3)), bins=8)
    sub = st[1]
    assert isinstance(sub, DepthBlockStats) and sub.prob.shape == (3, 6, 8) and sub.mean_abs.shape == (3, 6)
    rows = sub[2].table()
    assert len(rows) == 6 and rows[0]["block"] == "QQ"
    json.dumps(st.to_dict())


def test_figures_show_the_numbers():
    from tlprobe.figures.depth import (
        block_summary_curves_figure,
        depth_histogram_figure,
        head_heatmap_figure,
        moment_curves_figure,
    )

    x = _data((2, 3), n=6)
    stats = {m: depth_block_similarity(x, m, bins=10) for m in ("cosine", "correlation")}
    labels = ["L0", "L1", "L2"]
    fig = depth_histogram_figure({m: st[0] for m, st in stats.items()}, labels)
    assert len(fig.data) == 12
    np.testing.assert_allclose(np.array(fig.data[0].z), stats["cosine"][0].density[:, 0].numpy())
    fig = block_summary_curves_figure(stats, ["target", "non-target"], labels)
    assert len(fig.data) == 2 * 3 * 2 * 6
    fig = moment_curves_figure({"Q|K|V": sample_moments(x)}, ["target", "non-target"], {"Q|K|V": labels})
    assert list(fig.data[0].y) == sample_moments(x).var[0].tolist()
    heads = split_heads(x[0], 2)  # [layer, head, s, 3 * dh]
    maps = head_maps(depth_block_similarity(heads, bins=10), sample_moments(heads))
    fig = head_heatmap_figure(maps, ["cosine QQ frac_extreme", "rel_var"])
    assert fig.data[1].text[2][1] == "L2H1"
    assert np.array(fig.data[1].z).tolist() == maps["rel_var"].tolist()
    with pytest.raises(TlprobeError):
        depth_histogram_figure({"cosine": stats["cosine"][0]}, ["L0"])


def _few_sentences(tmp_path, n=14):
    from recipes._common import data_path, read_lines

    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(read_lines(data_path("her_sentences.txt"))[:n]) + "\n", encoding="utf-8")
    return str(path)


def test_recipe_writes_per_layer_results(tmp_path):
    from recipes import layer_similarity

    paths = layer_similarity.run(
        out=str(tmp_path), sentences=_few_sentences(tmp_path), bins=10, progress=False, quiet=True
    )
    res = json.loads(paths["results"].read_text())
    assert res["recipe"] == "layer-similarity" and res["params"]["n_sentences"] == 14
    n_layers = res["model"]["n_layers"]
    n_heads = res["model"]["n_heads"]
    hist = res["histograms"]["cosine"]
    prob = np.array(hist["prob"])
    assert prob.shape == (2, n_layers, 6, 10)
    np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-6)
    assert len(res["moments"]["residual stream"]["var"][0]) == n_layers + 1
    assert np.array(res["head_maps"]["maps"]["target cosine QK frac_extreme"]).shape == (n_layers, n_heads)
    assert res["head_maps"]["labels"][n_layers - 1][n_heads - 1] == f"L{n_layers - 1}H{n_heads - 1}"
    # The summary table repeats the per-layer numbers of the histograms.
    row = next(
        r
        for r in res["summary"]
        if r["method"] == "cosine" and r["population"] == "target" and r["layer"] == n_layers - 1 and r["block"] == "VV"
    )
    assert row["std"] == hist["std"][0][n_layers - 1][5]
    from tlprobe.report import read_figures

    assert len(read_figures(paths["report"])) >= 7


def test_qkv_similarity_per_head_summary_matches_head_drill_down(tmp_path):
    from recipes import qkv_similarity

    sentences = _few_sentences(tmp_path)
    full = json.loads(
        qkv_similarity.run(out=str(tmp_path / "all"), sentences=sentences, bins=10, progress=False, quiet=True)[
            "results"
        ].read_text()
    )
    one = json.loads(
        qkv_similarity.run(out=str(tmp_path / "h5"), sentences=sentences, bins=10, head=5, progress=False, quiet=True)[
            "results"
        ].read_text()
    )
    per_head = full["per_head"]
    assert per_head["heads"][5] == f"L{full['params']['layer']}H5"
    for meth in ("cosine", "correlation"):
        target = one["histograms"][meth]  # population 0 = target
        np.testing.assert_allclose(per_head[meth]["frac_extreme"][5], target["frac_extreme"][0], atol=1e-6)
        np.testing.assert_allclose(per_head[meth]["mean"][5], target["mean"][0], atol=1e-5)
