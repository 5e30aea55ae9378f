"""The example notebook (examples/tour.ipynb), executed headless as a researcher would run it,
exported to HTML by nbconvert and opened in Chromium with every non-file request aborted."""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys

import pytest

from tests.browser import inspect_page, problems

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOUR = ROOT / "examples" / "tour.ipynb"
#: Markers of the two bundles tlprobe inlines (the plotly.js licence header, circuitsvis' global).
PLOTLY_MARK, CIRCUITSVIS_MARK = "* plotly.js v", "var CircuitsVis="
#: A tag that would fetch from the network: src/href to http(s) or a protocol-relative URL.
NETWORK_TAG = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)
#: Computed styles of the host page compared with and without tlprobe's style elements.
STYLE_PROPS = ["max-width", "margin-left", "margin-top", "padding-left", "font-family", "color", "line-height"]


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """The tour, executed in a fresh kernel of this interpreter (cwd: an empty folder)."""
    tmp = tmp_path_factory.mktemp("tour")
    spec = tmp / "kernels" / "tlprobe-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "tlprobe test", "language": "python"}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(tmp) + (os.pathsep + old if old else "")
    try:
        nb = nbformat.read(TOUR, as_version=4)
        work = tmp / "cwd"
        work.mkdir()
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="tlprobe-test", resources={"metadata": {"path": str(work)}}
        )
        client.execute()
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
    return nb, work


def _html_outputs(nb) -> list[tuple[int, str]]:
    return [
        (i, out["data"]["text/html"])
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "text/html" in out.get("data", {})
    ]


def _cell_with(nb, text: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source)


def test_tour_runs_without_errors_and_writes_nothing(tour):
    nb, work = tour
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == []
    assert list(work.iterdir()) == []  # out=None: the recipe ran in memory


def test_tour_shows_tlprobe_objects_as_html(tour):
    nb, _ = tour
    html_cells = {i for i, _ in _html_outputs(nb)}
    for marker in (
        "stats  #",  # a result
        'stats.head("L3H7")',  # one head
        "r = qkv_similarity.run",  # a RecipeResult
        "\nfig",  # a plotly figure through tlprobe.notebook_mode()'s renderer
        "attention_heads_view(",  # a circuitsvis view
        "r.report",  # the report inline
    ):
        assert _cell_with(nb, marker) in html_cells, marker
    view = dict(_html_outputs(nb))[_cell_with(nb, "attention_heads_view(")]
    assert 'data-component="AttentionHeads"' in view and "CircuitsVis.render(" in view


def test_tour_inlines_each_bundle_once_and_links_nothing(tour):
    nb, _ = tour
    outputs = [h for _, h in _html_outputs(nb)]
    assert sum(h.count(PLOTLY_MARK) for h in outputs) == 1
    assert sum(h.count(CIRCUITSVIS_MARK) for h in outputs) == 1
    for h in outputs:
        # the bundles themselves are not scanned: only the markup tlprobe writes around them
        markup = re.sub(r"<script>[^<]*(?:<(?!/script>)[^<]*)*</script>", "<script></script>", h)
        assert not NETWORK_TAG.search(markup), NETWORK_TAG.search(markup)


_HOST_STYLE_JS = """(props) => {
  const read = (el) => { const cs = getComputedStyle(el); return Object.fromEntries(props.map(p => [p, cs.getPropertyValue(p)])); };
  const hostEls = () => [document.body, ...[...document.querySelectorAll('h1, h2, p, table')].filter(e => !e.closest('.tlprobe-report')).slice(0, 20)];
  const sheets = [...document.querySelectorAll('style')].filter(s => s.textContent.includes('.tlprobe-report'));
  const selectors = sheets.flatMap(s => [...s.sheet.cssRules].map(r => r.selectorText || ''));
  const before = hostEls().map(read);
  sheets.forEach(s => s.remove());
  const after = hostEls().map(read);
  return {before, after, n_sheets: sheets.length, selectors};
}"""


def test_tour_exported_to_html_draws_offline_and_leaves_the_host_page_alone(tour, browser, tmp_path):
    from nbconvert import HTMLExporter

    nb, _ = tour
    # nbconvert's own template loads MathJax and require.js from a CDN: point both at an empty
    # local file, so every request left is one that an output makes.
    (tmp_path / "stub.js").write_text("")
    exporter = HTMLExporter(template_name="lab", mathjax_url="stub.js", require_js_url="stub.js")
    body, _ = exporter.from_notebook_node(nb)
    page = tmp_path / "tour.html"
    page.write_text(body, encoding="utf-8")
    state = inspect_page(browser, page)
    try:
        assert problems(state) == []
        assert len(state["plots"]) >= 5 and len(state["views"]) >= 2  # notebook figures, the report's, two views
        host = state["page"].evaluate(_HOST_STYLE_JS, STYLE_PROPS)
        assert host["n_sheets"] >= 1
        assert all(s.strip().startswith(".tlprobe-report") for sel in host["selectors"] for s in sel.split(","))
        assert host["before"] == host["after"]  # removing tlprobe's styles changes nothing outside its outputs
    finally:
        state["page"].close()
