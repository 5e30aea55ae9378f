"""One self-contained HTML report: plotly.js and the circuitsvis bundle inlined once.

No request leaves the page: it opens from ``file://`` with no network. Text and table cells
are escaped; token strings go through :func:`tlprobe.figures.circuitsvis_view`, which escapes
them for the components that insert them as HTML.
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

from tlprobe.errors import TlprobeError
from tlprobe.figures.views import CircuitsVisView

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1560px;margin:1.5em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
p.note{color:#444;max-width:60em}figure{margin:1em 0}figcaption{color:#555;font-size:.92em;max-width:60em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.s,th.s{text-align:left}.params td{text-align:left}
.cv{margin:12px 0;min-height:80px}
"""


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The installed plotly.js bundle."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


@lru_cache(maxsize=1)
def circuitsvis_js() -> str:
    """The installed circuitsvis IIFE bundle, safe to inline in a classic ``<script>``."""
    src = resources.files("circuitsvis").joinpath("dist/cdn/iife.js").read_text(encoding="utf-8")
    src = re.sub(r"^//# sourceMappingURL=.*$", "", src, flags=re.M)
    return _script_safe(src)


def _script_safe(text: str) -> str:
    """Make text safe inside ``<script>``: no closing tag or HTML comment opener can end it."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _fmt(v, float_fmt: str) -> str:
    if isinstance(v, float):
        return float_fmt.format(v)
    return str(v)


@dataclass
class _Item:
    kind: str
    payload: object
    caption: str | None = None


class Report:
    """Collects headings, text, figures, tables and circuitsvis views; writes one HTML file.

    Example:
        >>> import plotly.graph_objects as go
        >>> r = Report("Demo")
        >>> r.heading("Section")
        >>> r.text("Tokens like <s> are escaped.")
        >>> r.figure(go.Figure(go.Scatter(y=[1, 3, 2])), caption="A line")
        >>> page = r.to_html()
        >>> "&lt;s&gt;" in page and page.count("<script") >= 2
        True
    """

    def __init__(self, title: str, subtitle: str | None = None):
        self.title = title
        self.subtitle = subtitle
        self._items: list[_Item] = []

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading (level 2 or 3)."""
        self._items.append(_Item("heading", (text, 3 if level >= 3 else 2)))

    def text(self, text: str) -> None:
        """A paragraph of plain text (escaped); blank lines start new paragraphs."""
        self._items.append(_Item("text", text))

    def figure(self, fig, caption: str | None = None) -> None:
        """A plotly figure, drawn with the page's single inlined plotly.js."""
        self._items.append(_Item("figure", fig, caption))

    def view(self, view: CircuitsVisView, caption: str | None = None) -> None:
        """A circuitsvis view (see :mod:`tlprobe.figures.views`)."""
        if not isinstance(view, CircuitsVisView):
            raise TlprobeError("Report.view takes a CircuitsVisView (see tlprobe.figures.circuitsvis_view)")
        self._items.append(_Item("view", view, caption))

    def table(self, rows: list[dict], caption: str | None = None, float_fmt: str = "{:.4g}") -> None:
        """A table from a list of dicts (columns from the first row's keys); cells escaped."""
        self._items.append(_Item("table", (rows, float_fmt), caption))

    def params(self, params: dict, caption: str = "Run parameters") -> None:
        """A two-column key/value table (model, layers, seed, versions, timings, ...)."""
        self._items.append(_Item("params", params, caption))

    # -- rendering ---------------------------------------------------------------------------
    def to_html(self) -> str:
        """The whole page as a string."""
        body: list[str] = []
        n_fig = n_view = 0
        for item in self._items:
            if item.kind == "heading":
                text, level = item.payload
                body.append(f"<h{level}>{html.escape(text)}</h{level}>")
            elif item.kind == "text":
                for para in str(item.payload).split("\n\n"):
                    body.append(f'<p class="note">{html.escape(para.strip())}</p>')
            elif item.kind == "figure":
                import plotly.io as pio

                n_fig += 1
                div = pio.to_html(item.payload, full_html=False, include_plotlyjs=False,
                                  div_id=f"fig-{n_fig}", config={"responsive": True})
                body.append(f"<figure>{div}{self._caption(item.caption)}</figure>")
            elif item.kind == "view":
                n_view += 1
                vid = f"cv-{n_view}"
                props = _script_safe(json.dumps(_jsonable(item.payload.props), allow_nan=False))
                comp = item.payload.component
                if not re.fullmatch(r"[A-Za-z]+", comp):
                    raise TlprobeError(f"bad circuitsvis component name {comp!r}")
                body.append(
                    f'<figure><div id="{vid}" class="cv"></div>'
                    f'<script>CircuitsVis.render("{vid}", CircuitsVis.{comp}, {props});</script>'
                    f"{self._caption(item.caption)}</figure>"
                )
            elif item.kind == "table":
                rows, float_fmt = item.payload
                body.append(self._table(rows, float_fmt, item.caption))
            elif item.kind == "params":
                rows = "".join(
                    f"<tr><th class='s'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in item.payload.items()
                )
                body.append(f"<table class='params'><caption>{html.escape(item.caption)}</caption>{rows}</table>")
        head = [f"<meta charset='utf-8'><title>{html.escape(self.title)}</title><style>{_CSS}</style>"]
        if n_fig:
            head.append(f"<script>{_script_safe(plotly_js())}</script>")
        if n_view:
            head.append(f"<script>{circuitsvis_js()}</script>")
        sub = f"<p class='note'>{html.escape(self.subtitle)}</p>" if self.subtitle else ""
        stamp = _dt.date.today().isoformat()
        return (
            "<!DOCTYPE html><html lang='en'><head>" + "".join(head) + "</head><body>"
            f"<h1>{html.escape(self.title)}</h1>{sub}" + "\n".join(body)
            + f"<hr><p class='note'>Made by tlprobe on {stamp}.</p></body></html>"
        )

    def write(self, path: str | pathlib.Path) -> pathlib.Path:
        """Write the page; returns the path."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(), encoding="utf-8")
        return path

    @staticmethod
    def _caption(caption: str | None) -> str:
        return f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""

    @staticmethod
    def _table(rows: list[dict], float_fmt: str, caption: str | None) -> str:
        if not rows:
            return "<p class='note'>(empty table)</p>"
        cols = list(rows[0])
        head = "".join(f"<th class='s'>{html.escape(str(c))}</th>" for c in cols)
        body = []
        for r in rows:
            cells = "".join(
                f"<td{'' if isinstance(r.get(c), (int, float)) else ' class=s'}>{html.escape(_fmt(r.get(c, ''), float_fmt))}</td>"
                for c in cols
            )
            body.append(f"<tr>{cells}</tr>")
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        return f"<table>{cap}<tr>{head}</tr>{''.join(body)}</table>"


def _jsonable(obj):
    """Tensors and arrays to lists, recursively."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_results(results: dict, path: str | pathlib.Path) -> pathlib.Path:
    """Write ``results.json``: tensors/arrays become lists; the same input gives the same bytes.

    Non-finite floats are refused (JSON has no NaN): a result holding one is a bug to fix
    upstream, not a number to ship.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(_jsonable(results), indent=1, allow_nan=False)
    except ValueError as exc:
        raise TlprobeError(f"results contain NaN or infinity, refusing to write {path}: {exc}") from exc
    path.write_text(text + "\n", encoding="utf-8")
    return path
