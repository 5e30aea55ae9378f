"""Reports in a real browser: self-contained, drawn, and safe with hostile tokens.

Drives the system Chromium (Debian package ``chromium``) through Playwright's sync API; no
browser is downloaded. Without Chromium or Playwright these tests skip, except under ``CI=true``,
where a missing browser fails them: CI must prove the reports render.

Setup: ``apt-get install -y --no-install-recommends chromium`` and ``pip install playwright kaleido``
(no ``playwright install``).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
import time

import plotly.graph_objects as go
import pytest
import torch

from tests.browser import HOSTILE, PWN, PWN_SPACED, inspect_page, problems, unavailable, views_with_tokens
from tlprobe import recipes
from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.views import CANVAS_TOKEN_COMPONENTS, HTML_TOKEN_COMPONENTS, plotly_text
from tlprobe.report.html import Report, read_figures

MAX_REPORT_BYTES = 10_000_000


# -- every recipe's report (runs shared with the other recipe tests, see conftest) -----------
@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_recipe_report_renders_offline(browser, name, recipe_output, record_property):
    report = recipe_output(name).paths["report"]
    size = report.stat().st_size
    record_property("report_bytes", size)
    print(f"\n{name}: report {size / 1e6:.2f} MB")
    t = time.perf_counter()
    state = inspect_page(browser, report)
    print(
        f"{name}: rendered in {time.perf_counter() - t:.1f} s; {len(state['plots'])} figures, {len(state['views'])} views"
    )
    page = state["page"]
    first = page.evaluate(_FIRST_SCREEN_JS)
    shots = os.environ.get("TLPROBE_SCREENSHOTS")  # a folder: keep what a reader sees, to look at
    if shots:
        page.screenshot(path=str(pathlib.Path(shots) / f"{name}-first-screen.png"))
        page.screenshot(path=str(pathlib.Path(shots) / f"{name}-full.png"), full_page=True)
    page.close()
    assert problems(state) == []  # includes any console warning (plotly logs bad colours there)
    # The reader meets this run's findings first: the first section, above every figure and view.
    assert first["headings"][:1] == ["Findings"], first
    assert first["findings_rows"] >= 1 and first["findings_top"] < first["first_figure_top"], first
    assert size < MAX_REPORT_BYTES, (
        f"{name} report is {size / 1e6:.1f} MB; keep it under {MAX_REPORT_BYTES / 1e6:.0f} MB"
    )


_FIRST_SCREEN_JS = """() => {
  const top = el => el ? el.getBoundingClientRect().top + window.scrollY : Infinity;
  const table = document.querySelector('table.findings');
  return {
    headings: [...document.querySelectorAll('h2')].map(h => h.innerText.trim()),
    findings_rows: table ? table.querySelectorAll('tr').length - 1 : 0,
    findings_top: top(table),
    first_figure_top: top(document.querySelector('figure')),
  };
}"""


# -- the checker can fail --------------------------------------------------------------------
def _demo_report() -> Report:
    r = Report("Checker demo")
    r.figure(go.Figure(go.Bar(y=[1, 3, 2])), caption="bars")
    r.view(attention_heads_view(torch.tensor([[[1.0, 0.0], [0.4, 0.6]]]), ["a", "b"], layer=0))
    return r


def test_checker_passes_self_contained_report(browser, tmp_path):
    state = inspect_page(browser, _demo_report().write(tmp_path / "ok.html"))
    state["page"].close()
    assert problems(state) == []
    assert len(state["plots"]) == 1 and len(state["views"]) == 1


def test_checker_fails_on_console_warnings(browser, tmp_path):
    r = Report("Bad colour")
    r.figure(go.Figure(go.Scatter(y=[1, 2], mode="markers", marker_color=["#abcdef"] * 2)), caption="bad")
    page = tmp_path / "bad.html"
    # plotly's Python validator refuses bad colours, so put one into the page as a stored spec could
    # hold it; plotly.js then logs "WARN: Invalid color specifier" (console.trace) and draws black
    r.write(page)
    page.write_text(page.read_text(encoding="utf-8").replace("#abcdef", "#abcdefgh"), encoding="utf-8")
    state = inspect_page(browser, page)
    state["page"].close()
    found = problems(state)
    assert any(p.startswith("console trace: WARN: Invalid color specifier") for p in found), found


def test_checker_fails_cdn_pages(browser, tmp_path):
    # plotly's own CDN output.
    cdn_plotly = tmp_path / "plotly-cdn.html"
    go.Figure(go.Bar(y=[1, 2])).write_html(cdn_plotly, include_plotlyjs="cdn")
    state = inspect_page(browser, cdn_plotly, draw_timeout_ms=3000)
    state["page"].close()
    found = problems(state)
    assert any("network request: https://cdn.plot.ly" in p for p in found), found
    assert any(re.fullmatch(r"plotly figure .* not drawn", p) for p in found), found

    # Our report with both bundles swapped for CDN script tags, as circuitsvis and plotly do by default.
    from tlprobe.report.html import circuitsvis_js, plotly_js

    page = _demo_report().to_html()
    page = page.replace(
        f"<script>{plotly_js()}</script>", '<script src="https://cdn.plot.ly/plotly-3.0.1.min.js"></script>'
    )
    page = page.replace(
        f"<script>{circuitsvis_js()}</script>",
        '<script src="https://unpkg.com/circuitsvis@1.43.3/dist/cdn/iife.js"></script>',
    )
    assert "cdn.plot.ly" in page and "unpkg.com" in page
    cdn_ours = tmp_path / "ours-cdn.html"
    cdn_ours.write_text(page, encoding="utf-8")
    state = inspect_page(browser, cdn_ours, draw_timeout_ms=3000)
    state["page"].close()
    found = problems(state)
    assert {u.split("/")[2] for u in state["external"]} == {"cdn.plot.ly", "unpkg.com"}
    assert any("page error" in p for p in found), found
    assert any("plotly figure" in p and "not drawn" in p for p in found), found
    assert any("circuitsvis AttentionHeads view" in p and "not drawn" in p for p in found), found


# -- hostile tokens --------------------------------------------------------------------------


# Record what canvases draw, to check the canvas components show tokens unescaped.
_CANVAS_SPY = """
window.__canvasText = [];
const _fillText = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (t, ...rest) {
  window.__canvasText.push(String(t)); return _fillText.call(this, t, ...rest);
};
"""
# Hover every element of the HTML-token views (tooltips show tokens as text), collecting the text.
_HOVER_JS = """() => {
  const seen = [];
  for (const v of document.querySelectorAll('[data-component]')) {
    if (v.querySelector('canvas')) continue;
    for (const el of [...v.querySelectorAll('span, td, div')].slice(0, 400)) {
      for (const type of ['mouseover', 'mouseenter', 'mousemove'])
        el.dispatchEvent(new MouseEvent(type, {bubbles: type !== 'mouseenter'}));
      seen.push(v.dataset.component + '\\u0000' + v.innerText);
      el.dispatchEvent(new MouseEvent('mouseout', {bubbles: true}));
    }
  }
  return seen;
}"""


def _norm(text: str) -> str:
    return text.replace("\u2060", "").replace("\u00a0", " ")


def test_hostile_tokens_are_inert_and_literal(browser, tmp_path):
    assert HTML_TOKEN_COMPONENTS | CANVAS_TOKEN_COMPONENTS == {v.component for v in views_with_tokens(HOSTILE)}
    r = Report(f"Hostile {PWN}", subtitle=PWN_SPACED)
    r.heading("Tokens </script> <s>")
    r.text("A paragraph: " + " | ".join(HOSTILE))
    r.table([{"token": t, "value": i} for i, t in enumerate(HOSTILE)], caption=PWN)
    r.params({PWN: "</script>"})
    r.figure(go.Figure(go.Bar(x=plotly_text(HOSTILE), y=list(range(len(HOSTILE))))), caption="</script><s>")
    for v in views_with_tokens(HOSTILE):
        r.view(v, caption=f"{v.component} <s>")
    path = r.write(tmp_path / "hostile.html")

    state = inspect_page(browser, path, init_script=_CANVAS_SPY)
    page = state["page"]
    hovered = page.evaluate(_HOVER_JS)
    page.wait_for_timeout(200)
    pwned = page.evaluate("window.__pwned || 0")
    injected = page.evaluate("document.querySelectorAll('img, s').length")
    body_text = _norm(page.inner_text("body"))
    view_text = {v["component"]: _norm(page.inner_text(f"#{v['id']}")) for v in state["views"]}
    canvas_text = page.evaluate("window.__canvasText")
    ticks = page.evaluate("[...document.querySelectorAll('#fig01 .xtick text')].map(e => e.textContent)")
    page.close()

    assert problems(state) == []
    assert pwned == 0 and injected == 0
    # text, headings, table cells, captions and parameters show the strings as written
    for t in HOSTILE:
        assert t in body_text
    assert f"Hostile {PWN}" in body_text and "Tokens </script> <s>" in body_text
    # plotly tick labels (through plotly_text) as written
    assert ticks == HOSTILE
    # HTML components: every token shown as written, also in tooltips: never an entity on screen
    for comp in HTML_TOKEN_COMPONENTS:
        shown = view_text[comp] + "".join(_norm(h) for h in hovered if h.startswith(comp + "\u0000"))
        for t in {t for t in HOSTILE} if comp != "TokenLogProbs" else set(HOSTILE[1:]):  # the first is the BOS
            assert t.replace(" ", "") in shown.replace(" ", ""), (comp, t)
        assert "&lt;" not in shown and "&amp;amp;" not in shown, comp
    assert len(hovered) > 0
    # canvas components: tokens drawn as written (circuitsvis drops spaces in canvas labels)
    drawn = "\n".join(canvas_text)
    for t in HOSTILE:
        assert t.replace(" ", "") in drawn, t
    assert "&lt;" not in drawn


# -- PNG export ------------------------------------------------------------------------------
def _png_size(path: pathlib.Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_png_export_one_session(chromium_path, tmp_path):
    try:
        import kaleido  # noqa: F401
    except ImportError:
        unavailable("kaleido is not installed (pip install kaleido)")
    from tlprobe.report.png import DEFAULT_HEIGHT, DEFAULT_WIDTH, export_png

    r = Report("PNG")
    r.figure(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]), layout=dict(width=640, height=360, title="heat $x$")))
    r.figure(go.Figure(go.Scatter(y=[1, 3, 2])), caption="no size")
    written = r.write(tmp_path / "report.html")
    # one figure as a Figure (the --png path), one as read back from the HTML (tlprobe export)
    figures = [r.figures()[0], read_figures(written)[1]]
    t = time.perf_counter()
    paths = export_png(figures, tmp_path / "figures", scale=1.5, browser=chromium_path)
    print(f"\nPNG export of {len(paths)} figures: {time.perf_counter() - t:.1f} s")
    assert [p.name for p in paths] == ["fig01-heat-x.png", "fig02-no-size.png"]
    assert _png_size(paths[0]) == (960, 540)
    assert _png_size(paths[1]) == (int(DEFAULT_WIDTH * 1.5), int(DEFAULT_HEIGHT * 1.5))
    assert json.loads(json.dumps(read_figures(written)[0][1]))["layout"]["width"] == 640
