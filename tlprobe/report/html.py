"""One self-contained HTML report: plotly.js and the circuitsvis bundle inlined once.

No request leaves the page: it opens from ``file://`` with no network (checked in Chromium by
``tests/test_browser.py``). Text, headings, captions and table cells are HTML-escaped; token
strings go through :func:`tlprobe.figures.views.circuitsvis_view`, which defuses them for the
components that insert them as HTML.

Each plotly figure is stored once, as a JSON block (``<script type="application/json"
class="tlprobe-figure">``) that a one-line script draws; :func:`read_figures` reads them back,
so ``tlprobe export report.html`` can make PNGs of a report after the fact.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import pathlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from plotly.offline import get_plotlyjs

from tlprobe.errors import TlprobeError
from tlprobe.figures.views import COMPONENTS, CircuitsVisView, to_lists
from tlprobe.findings import Finding, summary
from tlprobe.result import fmt_cell, write_text_atomic

#: The report's styles. Every rule is scoped to the report's root element (``.tlprobe-report``)
#: by :func:`scoped_css`, so a report shown inside a notebook leaves the host page's styles alone.
_CSS = """
:root{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1400px;margin:1.5em auto;padding:0 1.2em;color:#222;line-height:1.4}
h1{margin-bottom:.2em;font-size:1.7em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}p.note{color:#333;max-width:62em}p.sub{color:#555;margin-top:0}
p.lead b{color:#222}nav.toc{font-size:.92em;margin:.8em 0 1.2em}nav.toc a{margin-right:1.2em;white-space:nowrap}
figure{margin:1.2em 0}figcaption{color:#555;font-size:.92em;max-width:62em;margin-top:.3em}
.plotbox{overflow-x:auto}.plot{width:100%}.cv{margin:8px 0;min-height:80px;max-width:980px}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}caption{text-align:left;color:#555;padding:.2em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}td.s,th.s{text-align:left}
.params td{text-align:left;font-family:ui-monospace,monospace}.err{color:#b00;font-weight:bold}
footer{color:#666;font-size:.85em;margin-top:2em;border-top:1px solid #ddd;padding-top:.5em}
table.findings td{text-align:left;vertical-align:top;max-width:34em}table.findings td.v{white-space:nowrap;font-weight:bold}
.crit{display:block;color:#666;font-size:.9em;margin-top:.2em}.v-holds{color:#1a7f37}.v-differs{color:#b35900}.v-inconclusive{color:#555}
details{margin:.6em 0}summary{cursor:pointer;color:#333}
"""
#: The root element's class; inline (notebook) copies also get ``tlprobe-inline``.
ROOT_CLASS = "tlprobe-report"
#: Inline, the root fills the output area instead of centring a page-wide column.
_INLINE_CSS = ".tlprobe-report.tlprobe-inline{max-width:none;margin:0;padding:0}"


@lru_cache(maxsize=1)
def scoped_css() -> str:
    """The report's CSS with every selector inside ``.tlprobe-report`` (``:root`` is the root itself).

    Example:
        >>> all(rule.startswith(".tlprobe-report") for rule in scoped_css().split("}") if rule)
        True
    """
    out = []
    for rule in _CSS.replace("\n", "").split("}"):
        if not rule.strip():
            continue
        selectors, decls = rule.split("{", 1)
        scoped = [
            f".{ROOT_CLASS}" if sel.strip() == ":root" else f".{ROOT_CLASS} {sel.strip()}"
            for sel in selectors.split(",")
        ]
        out.append(",".join(scoped) + "{" + decls + "}")
    return "".join(out) + _INLINE_CSS


#: plotly's modebar camera button downloads a 2x PNG; no plotly logo link.
PLOTLY_CONFIG = {"responsive": True, "displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
DEFAULT_HEIGHT = 450
_FIGURE_BLOCK = re.compile(
    r'<script type="application/json" class="tlprobe-figure" id="([\w-]+)-spec" data-name="([\w-]+)">(.*?)</script>',
    re.S,
)


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The installed plotly.js bundle, safe to inline in a classic ``<script>``."""
    return _script_safe(get_plotlyjs())


@lru_cache(maxsize=1)
def circuitsvis_js() -> str:
    """The installed circuitsvis IIFE bundle, safe to inline in a classic ``<script>``."""
    src = resources.files("circuitsvis").joinpath("dist/cdn/iife.js").read_text(encoding="utf-8")
    src = re.sub(r"^//# sourceMappingURL=.*$", "", src, flags=re.M)
    return _script_safe(src)


def _script_safe(text: str) -> str:
    """Make JavaScript safe inside ``<script>``: no closing tag or HTML comment opener can end it."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _json_in_html(obj) -> str:
    """JSON that is inert inside ``<script>`` and still valid JSON and JavaScript.

    ``<``, ``>`` and ``&`` only occur inside JSON strings, where ``\\u003c`` etc. mean the same.
    """
    text = json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:n].rstrip("-")


def human_size(n_bytes: int) -> str:
    """``1234567 -> '1.2 MB'`` (decimal units).

    Example:
        >>> human_size(999), human_size(1_234_567)
        ('999 B', '1.2 MB')
    """
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= k:
            return f"{n_bytes / k:.1f} {unit}"
    return f"{n_bytes} B"


@dataclass
class _Item:
    kind: str
    payload: Any
    caption: str | None = None


class Report:
    """Collects headings, text, figures, tables and circuitsvis views; writes one HTML file.

    Example:
        >>> import plotly.graph_objects as go
        >>> r = Report("Demo")
        >>> r.section("Section", shows="What the figure shows.", found="What the lesson found.")
        >>> r.text("Tokens like <s> are escaped.")
        >>> r.figure(go.Figure(go.Scatter(y=[1, 3, 2])), caption="A line")
        >>> page = r.to_html()
        >>> "Tokens like &lt;s&gt; are escaped." in page and page.count('class="tlprobe-figure"') == 1
        True
        >>> [name for name, fig in r.figures()]
        ['fig01-a-line']
    """

    def __init__(self, title: str, subtitle: str | None = None):
        self.title = title
        self.subtitle = subtitle
        #: The run id of the results this report shows (set by a recipe; also in results.json).
        self.run_id: str | None = None
        self._items: list[_Item] = []
        self._findings: list = []

    def findings(self, findings) -> None:
        """This run's findings (:class:`tlprobe.findings.Finding`): shown first, as a table, before
        any other section (whenever this is called)."""
        for f in findings:
            if not isinstance(f, Finding):
                raise TlprobeError(f"Report.findings takes tlprobe.findings.Finding objects, got {type(f).__name__}")
        self._findings = list(findings)

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading (level 2, listed in the table of contents, or 3)."""
        self._items.append(_Item("heading", (text, 3 if level >= 3 else 2)))

    def section(self, title: str, shows: str | None = None, found: str | None = None) -> None:
        """A level-2 heading with "What this shows" and "What the lesson found" paragraphs."""
        self.heading(title)
        for label, text in (("What this shows", shows), ("What the lesson found", found)):
            if text:
                self._items.append(_Item("lead", (label, text)))

    def text(self, text: str) -> None:
        """A paragraph of plain text (escaped); blank lines start new paragraphs."""
        self._items.append(_Item("text", text))

    def figure(self, fig, caption: str | None = None) -> None:
        """A plotly figure, drawn with the page's single inlined plotly.js."""
        if not hasattr(fig, "to_plotly_json"):
            raise TlprobeError(f"Report.figure takes a plotly Figure, got {type(fig).__name__}")
        self._items.append(_Item("figure", fig, caption))

    def view(self, view: CircuitsVisView, caption: str | None = None) -> None:
        """A circuitsvis view (see :mod:`tlprobe.figures.views`)."""
        if not isinstance(view, CircuitsVisView):
            raise TlprobeError("Report.view takes a CircuitsVisView (see tlprobe.figures.views.circuitsvis_view)")
        if view.component not in COMPONENTS:
            raise TlprobeError(f"unknown circuitsvis component {view.component!r}")
        self._items.append(_Item("view", view, caption))

    def table(self, rows: list[dict], caption: str | None = None, float_fmt: str = "{:.4g}") -> None:
        """A table from a list of dicts (columns from the first row's keys); cells escaped."""
        self._items.append(_Item("table", (rows, float_fmt), caption))

    def params(self, params: dict, caption: str = "Run parameters") -> None:
        """A two-column key/value table (model, layers, seed, versions, timings, ...)."""
        self._items.append(_Item("params", params, caption))

    def figures(self) -> list[tuple[str, object]]:
        """``(name, figure)`` for every plotly figure, in order; names are file-name safe and unique.

        The name is ``fig{NN}`` plus a slug of the figure's title or caption.
        """
        out = []
        for n, item in enumerate((i for i in self._items if i.kind == "figure"), 1):
            fig = item.payload
            title = fig.layout.title.text if fig.layout.title and fig.layout.title.text else ""
            slug = _slug(title or item.caption or "")
            out.append((f"fig{n:02d}" + (f"-{slug}" if slug else ""), fig))
        return out

    # -- rendering ---------------------------------------------------------------------------
    def to_html(self) -> str:
        """The whole page as a string (one self-contained file)."""
        body, needs_plotly, needs_cv = self.body()
        head = [
            "<meta charset='utf-8'><meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<meta name='generator' content='tlprobe'><title>{html.escape(self.title)}</title>"
            f"<style>body{{margin:0}}{scoped_css()}</style>"
        ]
        if self.run_id:
            head.append(f"<meta name='tlprobe-run-id' content='{html.escape(self.run_id)}'>")
        if needs_plotly:
            head.append(f"<script>{plotly_js()}</script>")
        if needs_cv:
            head.append(f"<script>{circuitsvis_js()}</script>")
        return (
            "<!DOCTYPE html><html lang='en'><head>" + "".join(head) + "</head><body>"
            "<noscript><p class='err'>This report draws its figures with JavaScript; enable it to see them.</p></noscript>"
            f"<div class='{ROOT_CLASS}'>{body}</div></body></html>\n"
        )

    def body(self, prefix: str = "") -> tuple[str, bool, bool]:
        """The report's content (inside its root element), and whether it needs plotly.js and circuitsvis.

        Args:
            prefix: put before every element id, so that several reports can share a page.
        """
        body: list[str] = []
        toc: list[tuple[str, str]] = []
        if self._findings:
            toc.append((f"{prefix}findings", "Findings"))
            body.append(f'<h2 id="{prefix}findings">Findings</h2>' + findings_table(self._findings))
        names = iter(self.figures())
        n_view = 0
        for item in self._items:
            if item.kind == "heading":
                text, level = item.payload
                anchor = f"{prefix}s{len(toc) + 1}"
                if level == 2:
                    toc.append((anchor, text))
                    body.append(f'<h2 id="{anchor}">{html.escape(text)}</h2>')
                else:
                    body.append(f"<h3>{html.escape(text)}</h3>")
            elif item.kind == "lead":
                label, text = item.payload
                body.append(f'<p class="note lead"><b>{html.escape(label)}:</b> {html.escape(text)}</p>')
            elif item.kind == "text":
                for para in str(item.payload).split("\n\n"):
                    if para.strip():
                        body.append(f'<p class="note">{html.escape(para.strip())}</p>')
            elif item.kind == "figure":
                name, fig = next(names)
                body.append(figure_block(prefix + name.split("-", 1)[0], name, fig, item.caption))
            elif item.kind == "view":
                n_view += 1
                body.append(view_block(f"{prefix}cv{n_view}", item.payload, item.caption))
            elif item.kind == "table":
                rows, float_fmt = item.payload
                body.append(self._table(rows, float_fmt, item.caption))
            elif item.kind == "params":
                rows = "".join(
                    f"<tr><th class='s'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in item.payload.items()
                )
                body.append(f"<table class='params'><caption>{html.escape(item.caption or '')}</caption>{rows}</table>")
        run = f" Run {html.escape(self.run_id)} (the run_id of its results.json)." if self.run_id else ""
        sub = f"<p class='sub'>{html.escape(self.subtitle)}</p>" if self.subtitle else ""
        nav = ""
        if len(toc) >= 2:
            links = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in toc)
            nav = f'<nav class="toc">{links}</nav>'
        stamp = _dt.date.today().isoformat()
        page = (
            f"<h1>{html.escape(self.title)}</h1>{sub}{nav}\n"
            + "\n".join(body)
            + f"\n<footer>Made by tlprobe on {stamp}.{run} Self-contained: opens offline, no network requests.</footer>"
        )
        return page, any(i.kind == "figure" for i in self._items), n_view > 0

    def _repr_html_(self) -> str:
        """The report inline in a notebook (styles scoped to it; see :mod:`tlprobe.report.notebook`)."""
        from tlprobe.report.notebook import report_html  # notebook display builds on this module

        return report_html(self)

    def write(self, path: str | pathlib.Path) -> pathlib.Path:
        """Write the page; returns the path."""
        path = pathlib.Path(path)
        write_text_atomic(path, self.to_html())
        return path

    @staticmethod
    def _table(rows: list[dict], float_fmt: str, caption: str | None) -> str:
        """A table; one longer than :data:`OPEN_ROWS` rows is collapsed under its caption."""
        if not rows:
            return "<p class='note'>(empty table)</p>"
        cols = list(rows[0])
        head = "".join(f"<th class='s'>{html.escape(str(c))}</th>" for c in cols)
        body = []
        for r in rows:
            cells = "".join(
                f"<td{'' if isinstance(r.get(c), (int, float)) else ' class=s'}>{html.escape(fmt_cell(r.get(c, ''), float_fmt))}</td>"
                for c in cols
            )
            body.append(f"<tr>{cells}</tr>")
        if len(rows) > OPEN_ROWS:
            label = html.escape(f"{caption or 'Table'} ({len(rows)} rows; click to show)")
            return f"<details><summary>{label}</summary><table><tr>{head}</tr>{''.join(body)}</table></details>"
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        return f"<table>{cap}<tr>{head}</tr>{''.join(body)}</table>"


#: Tables with more rows than this are collapsed (``<details>``) so they do not push the figures down.
OPEN_ROWS = 12


def findings_table(findings) -> str:
    """The findings as an HTML table: claim (with its criterion), this run's numbers, verdict, meaning."""
    rows = []
    for f in findings:
        lesson = f"{f.lesson}: " if f.lesson else ""
        claim = f"{html.escape(lesson + f.claim)}<span class='crit'>criterion: {html.escape(f.criterion)}</span>"
        rows.append(
            f"<tr><td>{claim}</td><td>{html.escape(f.numbers_text())}</td>"
            f"<td class='v v-{f.verdict}'>{html.escape(f.verdict)}</td><td>{html.escape(f.why)}</td></tr>"
        )
    cap = html.escape(f"What this run found, claim by claim ({summary(findings)}); also in results.json's findings.")
    head = "<tr><th class='s'>Claim</th><th class='s'>This run</th><th class='s'>Verdict</th><th class='s'>What it means</th></tr>"
    return f"<table class='findings'><caption>{cap}</caption>{head}{''.join(rows)}</table>"


def _caption(caption: str | None) -> str:
    return f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""


#: Shown in place of a figure or view whose library is not on the page (in a notebook: the output
#: that carried it was deleted).
_MISSING = (
    "{lib} is not on this page: the notebook output that carried it was cleared or deleted. Run "
    "tlprobe.report.notebook.reset() and this cell again."
)


def _draw_script(el_id: str, lib: str, lib_name: str, what: str, body: str) -> str:
    """JavaScript running ``body`` (with ``d`` the element) once the global ``lib`` is there; a
    failure is written into the element instead of leaving it blank."""
    missing = json.dumps(_MISSING.format(lib=lib_name))
    return (
        f'(function(){{var d=document.getElementById("{el_id}");try{{'
        f"if(!window.{lib})throw new Error({missing});{body}"
        f'}}catch(e){{d.className+=" err";d.textContent="This {what} failed to draw: "+e.message;throw e;}}}})();'
    )


def figure_block(fid: str, name: str, fig, caption: str | None) -> str:
    """A plotly figure as HTML: its spec stored once as JSON (read back by :func:`read_figures`) and a
    one-line script that draws it with the page's ``Plotly``.

    Args:
        fid: the element id (unique on the page).
        name: the figure's file-name-safe name (``data-name``, the PNG name on export).
        fig: a plotly figure.
        caption: shown under the figure (escaped).
    """
    spec = json.loads(fig.to_json())  # plotly's encoder: numpy arrays as typed-array base64
    height = fig.layout.height or DEFAULT_HEIGHT
    # On the page a figure fills the column (a fixed layout width would overflow it), but not
    # below 3/4 of its designed width (the box scrolls sideways instead). The stored spec
    # keeps the designed width for PNG export.
    min_width = int(0.75 * fig.layout.width) if fig.layout.width else 0
    draw = _draw_script(
        fid,
        "Plotly",
        "plotly.js",
        "figure",
        f'var s=JSON.parse(document.getElementById("{fid}-spec").textContent);'
        "var L=Object.assign({},s.layout);delete L.width;L.autosize=true;"
        f"Plotly.newPlot(d,s.data,L,{json.dumps(PLOTLY_CONFIG)});",
    )
    return (
        f'<figure><div class="plotbox"><div id="{fid}" class="plot plotly-graph-div" style="height:{height}px;min-width:{min_width}px">'
        f'</div></div><script type="application/json" class="tlprobe-figure" id="{fid}-spec" data-name="{name}">'
        f"{_json_in_html(spec)}</script><script>{draw}</script>{_caption(caption)}</figure>"
    )


def view_block(vid: str, view: CircuitsVisView, caption: str | None) -> str:
    """A circuitsvis view as HTML, drawn with the page's ``CircuitsVis`` (props inert in ``<script>``)."""
    if not isinstance(view, CircuitsVisView) or view.component not in COMPONENTS:
        raise TlprobeError("a view must be a CircuitsVisView of a known component (see tlprobe.figures.views)")
    props = _json_in_html(to_lists(view.props))
    draw = _draw_script(
        vid,
        "CircuitsVis",
        "The circuitsvis bundle",
        "view",
        f'CircuitsVis.render("{vid}",CircuitsVis.{view.component},{props});',
    )
    return (
        f'<figure><div id="{vid}" class="cv" data-component="{view.component}"></div>'
        f"<script>{draw}</script>{_caption(caption)}</figure>"
    )


def read_figures(path: str | pathlib.Path) -> list[tuple[str, dict]]:
    """``(name, figure dict)`` for every plotly figure in a report written by :class:`Report`.

    Example:
        >>> import plotly.graph_objects as go, tempfile, pathlib
        >>> r = Report("Demo"); r.figure(go.Figure(go.Bar(y=[1, 2])), caption="Bars </script>")
        >>> p = r.write(pathlib.Path(tempfile.mkdtemp()) / "report.html")
        >>> [(name, fig["data"][0]["type"]) for name, fig in read_figures(p)]
        [('fig01-bars-script', 'bar')]
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise TlprobeError(f"report not found: {path}")
    found = [(name, json.loads(text)) for _fid, name, text in _FIGURE_BLOCK.findall(path.read_text(encoding="utf-8"))]
    if not found:
        raise TlprobeError(f"{path} has no tlprobe figures (is it a report written by tlprobe?)")
    return found
