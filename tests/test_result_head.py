"""Result.head: one head's values from per-head results, whatever their axes, checked against indexing."""

import pytest
import torch

from tlprobe.access import head_label, head_labels, layer_labels, parse_head_label
from tlprobe.analyses import qkv_block_similarity
from tlprobe.errors import TlprobeError
from tlprobe.result import Result

N_LAYERS, N_HEADS = 6, 12


def block_stats(axes: dict, seed: int = 0):
    """A real BlockStats over ``axes`` (random samples of a 3 x 3 Q|K|V vector)."""
    sizes = tuple(len(v) for v in axes.values())
    x = torch.randn(*sizes, 20, 9, generator=torch.Generator().manual_seed(seed))
    return qkv_block_similarity(x, "cosine", bins=4, axes=axes)


@pytest.fixture(scope="module")
def by_layer_head():
    return block_stats({"layer": layer_labels(N_LAYERS), "head": head_labels(N_HEADS)})


@pytest.fixture(scope="module")
def by_population_layer_head():
    return block_stats(
        {"population": ("target", "non-target"), "layer": layer_labels(N_LAYERS), "head": head_labels(N_HEADS)}
    )


def same_tensors(a: Result, b: Result) -> bool:
    return a.axes == b.axes and a == b


@pytest.mark.parametrize("layer,head", [(0, 0), (3, 7), (5, 11)])
def test_layer_head_axes(by_layer_head, layer, head):
    r = by_layer_head
    got = r.head(head_label(head, layer))
    assert got.axes == {}
    assert same_tensors(got, r[f"L{layer}"][f"H{head}"])
    assert same_tensors(got, r[f"L{layer}H{head}"])
    assert same_tensors(got, r.head((layer, head)))
    for name in ("prob", "mean", "std", "mean_abs", "frac_extreme"):
        assert torch.equal(getattr(got, name), getattr(r, name)[layer, head])
    assert torch.equal(got.count, r.count) and torch.equal(got.edges, r.edges)  # per-block fields untouched
    assert Result.from_dict(got.to_dict()) == got


def test_axes_before_layer_and_head_are_kept(by_population_layer_head):
    r = by_population_layer_head
    got = r.head("L3H7")
    assert got.axes == {"population": ("target", "non-target")}
    assert torch.equal(got.prob, r.prob[:, 3, 7]) and torch.equal(got.mean, r.mean[:, 3, 7])
    for population in ("target", "non-target"):
        assert same_tensors(got[population], r[population]["L3"]["H7"])
    assert same_tensors(got, r.head((3, 7)))


def test_head_axes_anywhere_among_leading_axes():
    """Layer, population, head: the head axes are not adjacent and not first."""
    axes = {"layer": layer_labels(3), "population": ("a", "b"), "head": head_labels(4)}
    r = block_stats(axes, seed=1)
    got = r.head("L2H1")
    assert got.axes == {"population": ("a", "b")}
    assert torch.equal(got.mean, r.mean[2, :, 1]) and torch.equal(got.prob, r.prob[2, :, 1])


def test_head_axis_labelled_with_its_layer():
    r = block_stats({"head": head_labels(N_HEADS, layer=3)})
    expected = r["L3H7"]
    assert torch.equal(expected.mean, r.mean[7])
    for key in ("L3H7", (3, 7), "H7", 7):
        assert same_tensors(r.head(key), expected), key


def test_head_number_is_not_a_position():
    """An int names head 7, as "H7" does, also when the axis holds only some heads."""
    r = block_stats({"head": ("L2H3", "L2H7", "L2H9")})
    assert torch.equal(r.head(7).mean, r.mean[1])
    assert torch.equal(r.head("H9").mean, r.mean[2])
    with pytest.raises(TlprobeError, match="no head L2H0: heads are L2H3, L2H7, L2H9"):
        r.head(0)


def test_head_axis_of_several_layers():
    r = block_stats({"head": ("L0H0", "L0H1", "L1H0", "L1H1")})
    assert torch.equal(r.head("L1H0").mean, r.mean[2])
    assert torch.equal(r.head((0, 1)).mean, r.mean[1])
    with pytest.raises(TlprobeError, match="'H1' is ambiguous: the head axis holds heads of several layers"):
        r.head("H1")


def test_bare_head_axis():
    r = block_stats({"population": ("a", "b"), "head": head_labels(4)})
    got = r.head("H2")
    assert got.axes == {"population": ("a", "b")}
    assert torch.equal(got.mean, r.mean[:, 2])
    assert same_tensors(r.head(2), got)
    for key in ("L3H2", (3, 2)):
        with pytest.raises(TlprobeError, match="carry no layer") as err:
            r.head(key)
        assert "select with 'H2' or 2" in str(err.value)


def test_qkv_similarity_per_head(recipe_output):
    """The recipe's per-head stats: a head axis labelled L{layer}H0..."""
    r = recipe_output("qkv-similarity").results["per_head cosine"]
    assert list(r.axes) == ["head"]
    layer, _ = parse_head_label(r.axes["head"][0])
    assert layer is not None
    for h in (0, 7):
        got = r.head(head_label(h, layer))
        assert same_tensors(got, r[head_label(h, layer)])
        assert torch.equal(got.mean, r.mean[h]) and torch.equal(got.prob, r.prob[h])
        assert same_tensors(r.head(h), got) and same_tensors(r.head((layer, h)), got)
    with pytest.raises(TlprobeError, match=f"no head L{layer + 1}H0: this result's heads are from layer L{layer} only"):
        r.head((layer + 1, 0))
    with pytest.raises(TlprobeError, match=f"no head L{layer}H12: heads are L{layer}H0..L{layer}H11"):
        r.head((layer, 12))


def test_layer_similarity_per_head(recipe_output):
    """population, layer, head (the layer-similarity recipe): population kept."""
    r = recipe_output("layer-similarity").results["per_head cosine"]
    assert list(r.axes) == ["population", "layer", "head"]
    got = r.head("L4H2")
    assert list(got.axes) == ["population"]
    assert torch.equal(got.mean, r.mean[:, 4, 2])
    assert same_tensors(got["target"], r["target"]["L4H2"])


@pytest.mark.parametrize(
    "key,fragment",
    [
        ("L9H0", "no head L9H0: layers are L0..L5"),
        ((9, 0), "no head L9H0: layers are L0..L5"),
        ("L3H12", "no head L3H12: heads are H0..H11"),
        ("H7", "'H7' does not say which layer, and this result has layers L0..L5; give one, e.g. 'L0H7' or (0, 7)"),
        (7, "does not say which layer"),
        ("L3 H7", "not a head label: 'L3 H7'; write 'L3H7'"),
        ("l3h7", "not a head label"),
        ("L3", "not a head label"),
        ((3,), "a head tuple is (layer, head)"),
        ((3, 7, 1), "a head tuple is (layer, head)"),
        ((3, -1), "head must be >= 0"),
        ((-1, 3), "layer must be >= 0"),
        (2.0, "head must be an integer"),
        (True, "head must be an integer"),
        (None, "head must be an integer"),
    ],
)
def test_errors(by_layer_head, key, fragment):
    with pytest.raises(TlprobeError) as err:
        by_layer_head.head(key)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_error_without_head_axis():
    r = block_stats({"population": ("a", "b"), "block_set": ("x", "y")})
    with pytest.raises(TlprobeError, match=r"this result has no head axis \(axes: population, block_set\)"):
        r.head("L0H0")
    no_axes = block_stats({})
    with pytest.raises(TlprobeError, match=r"no head axis \(axes: none\)"):
        no_axes.head(0)


def test_error_head_axis_not_head_names():
    r = block_stats({"head": ("first", "second")})
    with pytest.raises(TlprobeError, match="the head axis is labelled first, second, not with head names"):
        r.head(0)


@pytest.mark.parametrize("layer,head", [(0, 0), (3, 7), (12, 31), (100, 2)])
def test_parse_head_label_inverts_head_label(layer, head):
    assert parse_head_label(head_label(head, layer)) == (layer, head)
    assert parse_head_label(head_label(head)) == (None, head)


@pytest.mark.parametrize(
    "label", ["", "L3", "H", "L3H", "LH7", "h7", "L3h7", "L3H7 ", "L-1H7", "H-1", "L3H7H8", "L٣H7"]
)
def test_parse_head_label_refuses(label):
    with pytest.raises(TlprobeError, match="not a head label"):
        parse_head_label(label)
