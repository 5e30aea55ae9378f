"""The Result protocol: exact round trips, labelled selection, rows, display, errors."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import torch
from jaxtyping import Float, Int

import tlprobe
from tlprobe.errors import TlprobeError
from tlprobe.result import Result, register_figure


@dataclass(frozen=True, eq=False)
class _Stats(Result):
    value: Float[torch.Tensor, "... block"]
    count: Int[torch.Tensor, " block"]
    blocks: tuple[str, ...]
    method: str
    extreme: float
    note: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class _Bundle(Result):
    parts: dict[str, _Stats]
    by_name: dict[str, torch.Tensor]
    threshold: float


def _stats(seed: int = 0, dtype=torch.float32) -> _Stats:
    g = torch.Generator().manual_seed(seed)
    return _Stats(
        value=torch.randn(2, 3, 4, generator=g).to(dtype),
        count=torch.tensor([5, 6, 7, 8]),
        blocks=("QQ", "QK", "KK", "VV"),
        method="cosine",
        extreme=0.9,
        axes={"layer": ("L0", "L1"), "head": ("H0", "H1", "H2")},
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_round_trip_is_exact_through_json(tmp_path, dtype):
    r = _stats(dtype=dtype)
    back = tlprobe.load(r.save(tmp_path / "r.json"))
    assert back == r and back.value.dtype == dtype and back.blocks == r.blocks and isinstance(back.blocks, tuple)
    assert torch.equal(back.value, r.value)
    assert _Stats.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_nan_is_null_in_json_and_nan_again_after_loading(tmp_path):
    value = torch.tensor([[1.0, math.nan, 3.0, 4.0]])
    r = _Stats(
        value=value,
        count=torch.ones(4, dtype=torch.long),
        blocks=("a", "b", "c", "d"),
        method="m",
        extreme=math.nan,
        axes={"layer": ("L0",)},
    )
    data = json.loads(r.save(tmp_path / "r.json").read_text())
    assert data["value"] == [[1.0, None, 3.0, 4.0]] and data["extreme"] is None
    back = tlprobe.load(tmp_path / "r.json")
    assert back == r and math.isnan(back.extreme) and bool(back.value[0, 1].isnan())


def test_nested_results_and_tensor_dicts_round_trip(tmp_path):
    b = _Bundle(
        parts={"cosine": _stats(0), "correlation": _stats(1)},
        by_name={"x": torch.arange(3), "y": torch.zeros(0, 2)},
        threshold=0.5,
    )
    back = tlprobe.load(b.save(tmp_path / "b.json"))
    assert back == b and back.by_name["y"].shape == (0, 2) and back.by_name["x"].dtype == torch.long


def test_equality_is_by_value():
    assert _stats(0) == _stats(0) and _stats(0) != _stats(1)
    other = _stats(0)
    assert other != _Stats(
        **{
            **{f: getattr(other, f) for f in ("value", "count", "blocks", "extreme")},
            "method": "correlation",
            "axes": other.axes,
        }
    )


def test_selection_by_index_label_and_joined_head_name():
    r = _stats()
    assert r["L1"] == r[1] and r[1].axes == {"head": ("H0", "H1", "H2")}
    assert torch.equal(r["L1H2"].value, r.value[1, 2]) and r["L1H2"].axes == {}
    assert torch.equal(r["L1", "H2"].value, r.value[1, 2]) and torch.equal(r[1, -1].value, r.value[1, 2])
    assert torch.equal(r["L1H2"].count, r.count)  # fields without leading axes are kept whole
    sliced = r[0:1]
    assert sliced.axes["layer"] == ("L0",) and sliced.value.shape == (1, 3, 4)
    assert torch.equal(r[torch.tensor(1)].value, r.value[1])  # integer-like scalars index too


@pytest.mark.parametrize("key,message", [("L7", "no layer labelled 'L7'"), (5, "out of range"), (1.5, "integer")])
def test_bad_selection_is_a_clear_error(key, message):
    with pytest.raises(TlprobeError, match=message):
        _stats()[key]


def test_axes_must_match_the_leading_shape():
    with pytest.raises(TlprobeError, match="give one label per leading index"):
        _Stats(
            value=torch.zeros(2, 4),
            count=torch.zeros(4),
            blocks=(),
            method="m",
            extreme=0.0,
            axes={"layer": ("L0", "L1", "L2")},
        )


def test_default_rows_label_each_leading_index():
    @dataclass(frozen=True, eq=False)
    class _PerLayer(Result):
        mean: Float[torch.Tensor, "..."]
        std: Float[torch.Tensor, "..."]

    r = _PerLayer(mean=torch.tensor([1.0, 2.0]), std=torch.tensor([0.5, 0.25]), axes={"layer": ("L0", "L1")})
    assert r.rows() == [{"layer": "L0", "mean": 1.0, "std": 0.5}, {"layer": "L1", "mean": 2.0, "std": 0.25}]


def test_notebook_summary_is_escaped_html():
    @dataclass(frozen=True, eq=False)
    class _Tokens(Result):
        score: Float[torch.Tensor, "..."]

    page = _Tokens(score=torch.tensor([1.0]), axes={"token": ("<img src=x onerror=alert(1)>",)})._repr_html_()
    assert "<img" not in page and "&lt;img" in page and "_Tokens" in page


def test_figure_dispatch_and_clear_error_without_one():
    @dataclass(frozen=True, eq=False)
    class _Drawn(Result):
        y: Float[torch.Tensor, "..."]

    with pytest.raises(TlprobeError, match="has no figure"):
        _Drawn(y=torch.ones(1)).figure()

    @register_figure(_Drawn)
    def _draw(result, **options):
        return ("drawn", tuple(result.y.tolist()), options)

    assert _Drawn(y=torch.ones(2)).figure(title="t") == ("drawn", (1.0, 1.0), {"title": "t"})


def test_load_refuses_what_tlprobe_did_not_write(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    (tmp_path / "y.json").write_text("not json")
    (tmp_path / "z.json").write_text('{"_type": "NoSuchResult"}')
    with pytest.raises(TlprobeError, match="not a tlprobe result"):
        tlprobe.load(tmp_path / "x.json")
    with pytest.raises(TlprobeError, match="not a JSON file"):
        tlprobe.load(tmp_path / "y.json")
    with pytest.raises(TlprobeError, match="unknown result type 'NoSuchResult'"):
        tlprobe.load(tmp_path / "z.json")
    with pytest.raises(TlprobeError, match="file not found"):
        tlprobe.load(tmp_path / "missing.json")


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    _stats(0).save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tlprobe.result.os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        _stats(1).save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_optional_tensor_fields_carry_the_leading_axes_too():
    @dataclass(frozen=True, eq=False)
    class _Maybe(Result):
        raw: Float[torch.Tensor, "... pairs"]
        null: Float[torch.Tensor, "... pairs"] | None = None

    r = _Maybe(raw=torch.zeros(2, 3), null=torch.arange(6.0).reshape(2, 3), axes={"layer": ("L0", "L1")})
    assert torch.equal(r["L1"].null, torch.tensor([3.0, 4.0, 5.0])) and r["L1"].raw.shape == (3,)
    assert _Maybe(raw=torch.zeros(2, 3), axes={"layer": ("L0", "L1")})["L0"].null is None
    with pytest.raises(TlprobeError, match="give one label per leading index"):
        _Maybe(raw=torch.zeros(2, 3), null=torch.zeros(5, 3), axes={"layer": ("L0", "L1")})
