"""Notebook display (tlprobe.report.notebook): bundles inlined once per session, scoped styles,
unique ids, hostile tokens inert, and the same outputs drawn in Chromium."""

from __future__ import annotations

import re
import sys

import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

import tlprobe
from tests.browser import HOSTILE, PWN, inspect_page, problems, views_with_tokens
from tlprobe import recipes
from tlprobe.analyses.moments import sample_moments
from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.views import circuitsvis_view
from tlprobe.report import notebook
from tlprobe.report.html import Report

PLOTLY_MARK, CIRCUITSVIS_MARK = "* plotly.js v", "var CircuitsVis="


@pytest.fixture(autouse=True)
def fresh_session(monkeypatch):
    """Each test starts as a new kernel session would: nothing inlined yet, outside any cell."""
    notebook.reset()
    notebook.embed("auto")
    monkeypatch.setattr(notebook, "_cell", lambda: (None, None))
    yield
    notebook.reset()
    notebook.embed("auto")


def _fig(y=(1, 2, 3)):
    return go.Figure(go.Bar(y=list(y)))


def _report(title="Demo") -> Report:
    r = Report(title, subtitle="<b>not bold</b>")
    r.section("One", shows="What it shows.", found="What was found.")
    r.figure(_fig(), caption="bars")
    r.heading("Two")
    r.view(attention_heads_view(torch.full((2, 3, 3), 1 / 3), ["a", "<s>", "c"], layer=1, causal=False))
    r.table([{"token": "<s>", "x": 1.5}])
    return r


def test_each_bundle_goes_with_the_first_output_that_needs_it():
    first, second = notebook.figure_html(_fig()), notebook.figure_html(_fig())
    assert first.count(PLOTLY_MARK) == 1 and PLOTLY_MARK not in second
    view = circuitsvis_view("ColoredTokens", tokens=["a"], values=[1.0])
    assert view._repr_html_().count(CIRCUITSVIS_MARK) == 1 and CIRCUITSVIS_MARK not in view._repr_html_()
    assert PLOTLY_MARK not in view._repr_html_()  # a view needs no plotly.js
    notebook.reset()
    assert PLOTLY_MARK in notebook.figure_html(_fig())


def test_every_output_carries_its_bundles_on_colab_or_when_asked(monkeypatch):
    notebook.embed("every")
    assert all(PLOTLY_MARK in notebook.figure_html(_fig()) for _ in range(2))
    notebook.embed("auto")
    monkeypatch.setitem(sys.modules, "google.colab", object())  # Colab: one frame per output
    assert all(PLOTLY_MARK in notebook.figure_html(_fig()) for _ in range(2))
    with pytest.raises(Exception, match="mode"):
        notebook.embed("sometimes")  # type: ignore[arg-type]


def test_rerunning_the_cell_that_carried_the_bundle_carries_it_again(monkeypatch):
    cell = {"now": ("cell-a", 1)}
    monkeypatch.setattr(notebook, "_cell", lambda: cell["now"])
    assert PLOTLY_MARK in notebook.figure_html(_fig())
    assert PLOTLY_MARK not in notebook.figure_html(_fig())  # a second output of the same run
    cell["now"] = ("cell-b", 2)
    assert PLOTLY_MARK not in notebook.figure_html(_fig())
    cell["now"] = ("cell-a", 3)  # the carrier runs again: its old output (and bundle) is replaced
    assert PLOTLY_MARK in notebook.figure_html(_fig())
    cell["now"] = ("cell-b", 4)
    assert PLOTLY_MARK not in notebook.figure_html(_fig())


def test_report_inline_is_scoped_and_its_ids_unique_per_display():
    r = _report()
    page = r._repr_html_() + r._repr_html_()
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert styles and all(
        sel.strip().startswith(".tlprobe-report")
        for css in styles
        for rule in css.split("}")
        if rule.strip()
        for sel in rule.split("{")[0].split(",")
    )
    markup = re.sub(r"<script>.*?</script>", "", page, flags=re.S)  # not the bundles' own code
    ids = re.findall(r'\bid="([^"]+)"', markup)
    assert len(ids) == len(set(ids)) >= 6
    hrefs = re.findall(r'href="#([^"]+)"', page)
    assert hrefs and set(hrefs) <= set(ids)  # the table of contents points into its own copy
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page and "<b>not bold</b>" not in page
    # the file keeps its plain ids and one copy of each bundle in <head>
    file = r.to_html()
    assert 'id="fig01"' in file and file.count(PLOTLY_MARK) == 1 and file.count(CIRCUITSVIS_MARK) == 1


def test_result_display_has_its_table_and_main_figure():
    m = sample_moments(
        torch.randn(3, 50, 4, generator=torch.Generator().manual_seed(0)), axes={"layer": ("a", "b", "c")}
    )
    page = m._repr_html_()
    assert "<b>Moments</b> over layer (3)" in page and "<td>a</td>" in page
    assert page.count('class="tlprobe-figure"') == 1 and PLOTLY_MARK in page


def test_notebook_mode_makes_plotly_figures_offline_html():
    before = pio.renderers.default
    try:
        notebook.notebook_mode()
        assert pio.renderers.default == "tlprobe"
        bundle = pio.renderers._build_mime_bundle(_fig().to_dict())
        assert set(bundle) == {"text/html"}
        assert PLOTLY_MARK in bundle["text/html"] and "cdn" not in bundle["text/html"].split(PLOTLY_MARK)[0]
    finally:
        pio.renderers.default = before


def test_notebook_outputs_on_one_page_draw_offline_and_hostile_tokens_stay_inert(browser, tmp_path):
    views = views_with_tokens(HOSTILE)
    outputs = [notebook.figure_html(_fig()), *(v._repr_html_() for v in views), _report(title=PWN)._repr_html_()]
    outputs.append(notebook.figure_html(_fig((3, 1))))
    page = tmp_path / "page.html"
    host = "<h1>My notebook</h1><p>Some text.</p>"
    page.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{host}{''.join(outputs)}</body></html>"
    )
    state = inspect_page(browser, page)
    try:
        assert problems(state) == []
        assert len(state["plots"]) == 3 and len(state["views"]) == len(views) + 1
        assert state["page"].evaluate("window.__pwned") is None
        body = state["page"].evaluate("getComputedStyle(document.body).maxWidth")
        assert body == "none"  # the report's column width stays inside the report
    finally:
        state["page"].close()


def test_a_figure_whose_bundle_is_missing_says_how_to_fix_it(browser, tmp_path):
    notebook.figure_html(_fig())  # the carrier, then deleted from the page
    page = tmp_path / "page.html"
    page.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{notebook.figure_html(_fig())}</body></html>"
    )
    state = inspect_page(browser, page, draw_timeout_ms=2000)
    try:
        text = state["page"].inner_text("body")
        assert "plotly.js is not on this page" in text and "tlprobe.report.notebook.reset()" in text
    finally:
        state["page"].close()


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_every_recipe_result_and_its_results_display(name, recipe_output):
    run = recipe_output(name)
    page = run._repr_html_()
    assert f"<b>{name}</b>" in page and run.run_id in page and str(run.paths["report"]) in page
    assert page.count('class="tlprobe-figure"') == 1  # the report's first figure
    for key, result in run.results.items():
        shown = result._repr_html_()
        assert f"<b>{type(result).__name__}</b>" in shown, key
    loaded = tlprobe.load(run.paths["results"])
    assert loaded.report is None and f"<b>{name}</b>" in loaded._repr_html_()


def test_recipe_figures_are_copies_to_restyle(recipe_output):
    run = recipe_output("qkv-similarity")
    fig = run.figures()[0]
    fig.update_layout(title="mine")
    assert run.figures()[0].layout.title.text != "mine"
    assert isinstance(fig, go.Figure)
