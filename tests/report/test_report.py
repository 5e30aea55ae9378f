"""The HTML report, circuitsvis views and PNG-export plumbing, without a browser.

``tests/test_browser.py`` checks the same pages in Chromium.
"""

from __future__ import annotations

import html
import json
import pathlib
import re
import types
from html.parser import HTMLParser

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tlprobe import cli
from tlprobe.errors import TlprobeError
from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.views import (
    CANVAS_TOKEN_COMPONENTS,
    COMPONENTS,
    HTML_TOKEN_COMPONENTS,
    TOKEN_PROPS,
    circuitsvis_view,
    defuse_html,
    plotly_text,
)
from tlprobe.report.html import Report, circuitsvis_js, human_size, plotly_js, read_figures
from tlprobe.result import write_json

HOSTILE = ['<img/src="x"/onerror="window.__pwned=1">', "</script>", "<s>", "<!--", "&amp;", "<b>b</b>"]


class _Tokens(HTMLParser):
    """An independent HTML tokenizer (the standard library's) recording what markup it sees."""

    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.tags: list[str] = []
        self.ends: list[str] = []
        self.markup: list[str] = []
        self.data: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        self.ends.append(tag)

    def handle_data(self, data):
        self.data.append(data)

    def handle_entityref(self, name):
        self.markup.append("&" + name)

    def handle_charref(self, name):
        self.markup.append("&#" + name)

    def handle_comment(self, data):
        self.markup.append("<!--")

    def handle_decl(self, decl):
        self.markup.append("<!" + decl)

    def handle_pi(self, data):
        self.markup.append("<?" + data)

    def unknown_decl(self, data):
        self.markup.append("<![" + data)


def _parse(text: str) -> _Tokens:
    p = _Tokens()
    p.feed(text)
    p.close()
    return p


# -- token defusing ----------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>&/!?;#sbimgx= \"'-\u2060")), max_size=30) | st.text(max_size=30))
def test_defused_token_is_plain_text_for_an_html_parser(token):
    d = defuse_html(token)
    p = _parse(d)
    assert p.tags == [] and p.ends == [] and p.markup == []
    assert "".join(p.data) == d
    assert d.replace("<\u2060", "<").replace("&\u2060", "&") == token  # only joiners were added


def test_undefused_hostile_tokens_are_markup():
    # the control: the same parser does see markup in the raw tokens
    for t in HOSTILE:
        p = _parse(t + " -->" if t == "<!--" else t)  # the parser drops an unterminated comment
        assert p.tags or p.ends or p.markup, t


def test_views_defuse_only_html_components():
    assert HTML_TOKEN_COMPONENTS.isdisjoint(CANVAS_TOKEN_COMPONENTS)
    assert COMPONENTS == HTML_TOKEN_COMPONENTS | CANVAS_TOKEN_COMPONENTS
    for comp in sorted(COMPONENTS):
        v = circuitsvis_view(comp, tokens=HOSTILE, prompt=HOSTILE, topKTokens=[HOSTILE], labels=HOSTILE)
        expected = [defuse_html(t) for t in HOSTILE] if comp in HTML_TOKEN_COMPONENTS else HOSTILE
        assert v.props["tokens"] == expected and v.props["prompt"] == expected
        assert v.props["topKTokens"] == [expected]
        assert v.props["labels"] == HOSTILE  # labels are rendered as text by every component
    assert set(TOKEN_PROPS) == {"tokens", "prompt", "topKTokens"}


def test_view_props_rounded_lists_and_none_dropped():
    x = torch.rand(3, 4, dtype=torch.float64)
    a = np.random.default_rng(0).random((2, 3)).astype(np.float32)
    v = circuitsvis_view(
        "ColoredTokensMulti", tokens=["a"], values=x, extra=a, ints=torch.arange(3), labels=None, nested={"t": x[0]}
    )
    assert v.props["values"] == np.round(x.numpy(), 4).tolist()
    assert v.props["extra"] == np.round(a.astype(np.float64), 4).tolist()
    assert v.props["ints"] == [0, 1, 2]
    assert v.props["nested"] == {"t": np.round(x[0].numpy(), 4).tolist()}
    assert "labels" not in v.props
    full = circuitsvis_view("ColoredTokens", decimals=None, tokens=["a"], values=x[0])
    assert full.props["values"] == x[0].tolist()
    with pytest.raises(TlprobeError, match="unknown circuitsvis component"):
        circuitsvis_view("NotAComponent", tokens=["a"])


def test_plotly_text_escapes_three_entities():
    assert plotly_text(HOSTILE) == [html.escape(t, quote=False) for t in HOSTILE]
    assert plotly_text([["<s>"]]) == [["&lt;s&gt;"]]


# -- attention view --------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_attention_heads_view_unpads_either_side(side):
    g = torch.Generator().manual_seed(1)
    real = torch.rand(3, 4, 4, generator=g).tril()
    padded = torch.zeros(3, 6, 6)
    sl = slice(2, 6) if side == "left" else slice(0, 4)
    padded[:, sl, sl] = real
    mask = torch.zeros(6, dtype=torch.long)
    mask[sl] = 1
    toks = ["<s>", "a", "b", "c"]
    v = attention_heads_view(padded, toks, layer=5, heads=[1, 4, 7], mask=mask)
    assert v.props == attention_heads_view(real, toks, layer=5, heads=[1, 4, 7]).props
    assert v.props["attention"] == real.double().round(decimals=4).tolist()
    assert v.props["attentionHeadNames"] == ["L5H1", "L5H4", "L5H7"]
    assert v.props["tokens"] == toks and v.props["maskUpperTri"] is True


def test_attention_heads_view_rejects_bad_shapes():
    with pytest.raises(TlprobeError, match="expected \\[head, n, n\\]"):
        attention_heads_view(torch.rand(2, 3, 3), ["a", "b"], layer=0)
    with pytest.raises(TlprobeError, match="mask has shape"):
        attention_heads_view(torch.rand(2, 3, 3), ["a"], layer=0, mask=torch.ones(4))
    with pytest.raises(TlprobeError, match="head indices"):
        attention_heads_view(torch.rand(2, 3, 3), ["a", "b", "c"], layer=0, heads=[0])


def test_attention_rounding_shrinks_the_report():
    att = torch.rand(12, 64, 64).softmax(-1)
    toks = [f"t{i}" for i in range(64)]
    small = len(json.dumps(attention_heads_view(att, toks, 0).props))
    full = len(json.dumps(attention_heads_view(att, toks, 0, decimals=None).props))
    assert small < 0.6 * full


# -- the page ----------------------------------------------------------------------------------
def _hostile_report() -> Report:
    r = Report(f"Title {HOSTILE[0]}", subtitle=HOSTILE[1])
    r.section("Section </script>", shows=HOSTILE[2], found=HOSTILE[3])
    r.heading("Second <s>")
    r.heading("Sub <b>", level=3)
    r.text("Para " + " ".join(HOSTILE) + "\n\nSecond paragraph")
    r.table([{"token": t, "x": 0.123456789, "n": i} for i, t in enumerate(HOSTILE)], caption=HOSTILE[0])
    r.params({HOSTILE[0]: HOSTILE[1], "seed": 0})
    r.figure(
        go.Figure(
            go.Bar(x=plotly_text(HOSTILE), y=np.arange(len(HOSTILE)) / 3, name=HOSTILE[1]),
            layout=dict(title=HOSTILE[1], width=1500, height=300),
        ),
        caption=HOSTILE[1],
    )
    r.figure(go.Figure(go.Heatmap(z=np.random.default_rng(0).random((5, 7)))))
    r.view(attention_heads_view(torch.eye(len(HOSTILE)).unsqueeze(0), HOSTILE, 0), caption=HOSTILE[0])
    r.view(circuitsvis_view("ColoredTokens", tokens=HOSTILE, values=torch.linspace(0, 1, len(HOSTILE))))
    return r


def _body(page: str) -> str:
    """The page without the two inlined library bundles."""
    return page.replace(plotly_js(), "").replace(circuitsvis_js(), "")


def test_page_structure_has_no_markup_from_content():
    page = _hostile_report().to_html()
    p = _parse(_body(page))
    allowed = {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "script",
        "body",
        "noscript",
        "p",
        "h1",
        "h2",
        "h3",
        "nav",
        "a",
        "figure",
        "div",
        "figcaption",
        "table",
        "caption",
        "tr",
        "th",
        "td",
        "footer",
        "b",
    }
    assert set(p.tags) <= allowed
    # every <script> closes where we closed it: 2 bundles + 2 per figure + 1 per view
    assert p.tags.count("script") == p.ends.count("script") == 2 + 2 * 2 + 2
    assert p.tags.count("b") == 2  # the two "What this ..." labels, not the <b> in the content
    assert p.tags.count("h2") == 2 and p.tags.count("h3") == 1
    assert 'href="#s1"' in page and 'href="#s2"' in page  # table of contents
    assert "Run parameters" in page and "0.1235" in page  # params table; floats formatted


def test_json_blocks_are_inert_and_round_trip(tmp_path):
    r = _hostile_report()
    path = r.write(tmp_path / "report.html")
    page = path.read_text(encoding="utf-8")
    for m in re.finditer(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S):
        assert "<" not in m.group(1)
    figs = read_figures(path)
    assert [n for n, _ in figs] == [n for n, _ in r.figures()] == ["fig01-script", "fig02"]
    for (_, got), (_, fig) in zip(figs, r.figures()):
        assert got == json.loads(fig.to_json())
        assert go.Figure(got).to_plotly_json() == fig.to_plotly_json()
    # view props come back exactly (tokens unchanged for the canvas view, defused for the HTML one)
    calls = re.findall(r'CircuitsVis\.render\("cv\d+",CircuitsVis\.(\w+),(.*?)\);\}catch', page)
    props = {comp: json.loads(text) for comp, text in calls}
    assert props["AttentionHeads"]["tokens"] == HOSTILE
    assert props["ColoredTokens"]["tokens"] == [defuse_html(t) for t in HOSTILE]


def test_fixed_width_figure_fills_the_column_but_keeps_its_export_width(tmp_path):
    r = _hostile_report()
    page = r.to_html()
    assert 'id="fig01" class="plot plotly-graph-div" style="height:300px;min-width:1125px"' in page
    assert "delete L.width" in page
    assert read_figures(r.write(tmp_path / "r.html"))[0][1]["layout"]["width"] == 1500


def test_report_bundles_only_what_it_uses():
    text_only = Report("t")
    text_only.text("x")
    page = text_only.to_html()
    assert plotly_js() not in page and circuitsvis_js() not in page
    for bundle in (plotly_js(), circuitsvis_js()):
        assert "</script" not in bundle.lower() and "<!--" not in bundle
    assert "sourceMappingURL" not in circuitsvis_js()


def test_report_rejects_wrong_objects(tmp_path):
    r = Report("t")
    with pytest.raises(TlprobeError, match="plotly Figure"):
        r.figure({"data": []})
    with pytest.raises(TlprobeError, match="CircuitsVisView"):
        r.view("<div>")
    with pytest.raises(TlprobeError, match="no tlprobe figures"):
        read_figures(r.write(tmp_path / "empty.html"))
    with pytest.raises(TlprobeError, match="not found"):
        read_figures(tmp_path / "missing.html")


def test_figure_names_unique_and_file_safe():
    r = Report("t")
    for cap in ["Same title!", "Same title!", None, "x" * 100]:
        r.figure(go.Figure(), caption=cap)
    names = [n for n, _ in r.figures()]
    assert len(set(names)) == 4 and all(re.fullmatch(r"[a-z0-9-]+", n) for n in names)
    assert names[2] == "fig03" and len(names[3]) == len("fig04-") + 40


def test_human_size():
    assert [human_size(n) for n in (0, 1000, 6_278_395, 2_500_000_000)] == ["0 B", "1.0 kB", "6.3 MB", "2.5 GB"]


def test_write_json_same_bytes_nan_as_null_refuses_infinity(tmp_path):
    res = {"a": torch.tensor([0.1, 0.2]), "b": np.arange(3), "c": {"d": (1, 2.5)}}
    p1 = write_json(res, tmp_path / "1.json").read_bytes()
    p2 = write_json(res, tmp_path / "2.json").read_bytes()
    assert p1 == p2 and json.loads(p1) == {"a": torch.tensor([0.1, 0.2]).tolist(), "b": [0, 1, 2], "c": {"d": [1, 2.5]}}
    assert json.loads(
        write_json({"x": float("nan"), "t": torch.tensor([1.0, float("nan")])}, tmp_path / "n.json").read_text()
    ) == {
        "x": None,
        "t": [1.0, None],
    }
    with pytest.raises(TlprobeError, match="infinity"):
        write_json({"x": float("inf")}, tmp_path / "3.json")
    assert not (tmp_path / "3.json").exists() and not list(tmp_path.glob(".3.json.*"))


# -- PNG plumbing (no browser) ---------------------------------------------------------------
def test_no_browser_is_a_clear_error(monkeypatch, tmp_path):
    from tlprobe.report import png

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    with pytest.raises(TlprobeError, match="apt-get install chromium"):
        png.find_browser()
    with pytest.raises(TlprobeError, match="apt-get install chromium"):
        png.export_png([("f", go.Figure())], tmp_path / "out")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "nope"))
    with pytest.raises(TlprobeError, match="BROWSER_PATH="):
        png.find_browser()
    assert png.export_png([], tmp_path / "out") == []


def _fake_recipe(seen: dict) -> types.ModuleType:
    """A recipe module shaped like the real ones (Options + run), with no model."""
    from dataclasses import dataclass

    from tlprobe.recipes.common import CommonOptions, option, resolve, setup

    mod = types.ModuleType("fake_recipe")
    mod.NAME, mod.DESCRIPTION = "fake", "a fake recipe"

    @dataclass(frozen=True)
    class Options(CommonOptions):
        k: int = option(3, doc="bars")

    def run(options=None, **overrides):
        o = resolve(Options, options, overrides)
        seen["options"] = o
        r = setup(mod.NAME, o)
        report = Report("fake")
        report.figure(go.Figure(go.Bar(y=list(range(o.k)))), caption="bars")
        return r.finish(report, results={})

    mod.Options, mod.run = Options, run
    return mod


@pytest.mark.parametrize("png", [False, True])
def test_cli_png_option_reaches_finish(monkeypatch, tmp_path, capsys, png):
    from tlprobe import recipes
    from tlprobe.report import png as png_mod

    seen: dict = {}
    monkeypatch.setattr(recipes, "get", lambda name: _fake_recipe(seen))
    monkeypatch.setattr(png_mod, "export_png", lambda figs, out, **kw: seen.setdefault("export", (figs, out)))
    argv = ["run", "fake", "--k", "2", "--out", str(tmp_path)] + (["--png"] if png else [])
    assert cli.main(argv) == 0
    o = seen["options"]
    assert (o.k, o.seed, o.out, o.png) == (2, 0, str(tmp_path), png)
    assert ("export" in seen) is png
    if png:
        figs, out = seen["export"]
        # exported into the run's staging folder inside --out, then moved into place
        assert [n for n, _ in figs] == ["fig01-bars"] and out.name == "figures" and out.parent.parent == tmp_path
    printed = capsys.readouterr().out
    assert re.search(r"report: .*report\.html \(\d+\.\d MB, run [0-9a-f]{16}\)", printed)
    assert json.loads((tmp_path / "results.json").read_text())["params"] == {"seed": 0, "k": 2}


def test_cli_export(monkeypatch, tmp_path, capsys):
    from tlprobe.report import png as png_mod

    r = Report("t")
    r.figure(go.Figure(go.Bar(y=[1])), caption="one")
    r.write(tmp_path / "report.html")
    calls = []

    def fake_export(figs, out, **kw):
        calls.append((figs, out, kw))
        return [pathlib.Path(out) / f"{n}.png" for n, _ in figs]

    monkeypatch.setattr(png_mod, "export_png", fake_export)
    assert cli.main(["export", str(tmp_path), "--scale", "1"]) == 0
    ((figs, out, kw),) = calls
    assert [n for n, _ in figs] == ["fig01-one"] and out == tmp_path / "figures" and kw["scale"] == 1
    assert "fig01-one.png" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    Report("e").write(tmp_path / "empty" / "report.html")
    assert cli.main(["export", str(tmp_path / "empty")]) == cli.EXIT_BAD_INPUT
    assert "no tlprobe figures" in capsys.readouterr().err


def test_common_options_include_png():
    from tlprobe.recipes.common import CommonOptions, build_parser, versions

    parser = build_parser(CommonOptions, "x", "x", "out")
    assert parser.parse_args(["--png"]).png is True and parser.parse_args([]).png is False
    assert versions()["plotly"] != "not installed"
