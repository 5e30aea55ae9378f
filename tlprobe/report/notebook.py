"""tlprobe in a notebook: results, reports, figures and circuitsvis views displayed inline, offline.

Every :class:`~tlprobe.result.Result`, :class:`~tlprobe.recipes.common.RecipeResult`,
:class:`~tlprobe.report.Report` and :class:`~tlprobe.figures.views.CircuitsVisView` has a
``_repr_html_`` built here, so the last expression of a cell shows it in JupyterLab, classic
Notebook, VS Code and in a notebook exported to HTML (``jupyter nbconvert --to html``).

**How the JavaScript gets there.** No output loads anything from the network. plotly.js (4.8 MB)
and the circuitsvis bundle (1.3 MB) are inlined *once per kernel session*, in the first output
that needs each, and every later figure or view draws with the page's global ``Plotly`` /
``CircuitsVis``. This is the strategy of plotly's own offline ``notebook`` renderer (which
``init_notebook_mode(connected=False)`` selects), without its CDN MathJax tag, and unlike
circuitsvis' ``_repr_html_``, which inlines its bundle in every view and asks google.com first.
A notebook saved with its outputs keeps the bundles in those first outputs; the one case this
cannot see is the carrier output being deleted: the figures after it then say so, and
:func:`reset` (and re-running the cell) inlines the bundles again. When the cell that carried a
bundle is run again, the bundle goes with its new output (the front end tells the kernel the cell
id: JupyterLab, Notebook 7, VS Code). Google Colab shows every output in its own frame: there
each output carries its bundles (``embed("every")``, chosen automatically).

plotly figures returned by ``.figure()`` / ``.figures()`` are plain
``plotly.graph_objects.Figure`` objects, displayed by plotly's renderer of choice. plotly's
default in a notebook (``plotly_mimetype+notebook``) draws offline in JupyterLab and VS Code, but
every figure's HTML loads MathJax from a CDN; :func:`notebook_mode` registers a ``"tlprobe"``
plotly renderer (this module's offline HTML) and makes it the default, so a notebook exported to
HTML makes no request.

Example:
    >>> import plotly.graph_objects as go
    >>> reset()
    >>> first = figure_html(go.Figure(go.Bar(y=[1, 2])))
    >>> second = figure_html(go.Figure(go.Bar(y=[3, 4])))
    >>> len(first) > 4_000_000 > 100_000 > len(second)  # plotly.js went with the first only
    True
"""

from __future__ import annotations

import html
import itertools
import sys
from typing import Any, Literal

import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer

from tlprobe.checks import check_choice
from tlprobe.errors import TlprobeError
from tlprobe.figures.views import CircuitsVisView
from tlprobe.report.html import (
    Report,
    circuitsvis_js,
    figure_block,
    findings_table,
    plotly_js,
    scoped_css,
    view_block,
)
from tlprobe.result import rows_html

#: Bundles inlined so far in this kernel session, with the cell (id, execution count) that carried each.
_SENT: dict[str, tuple[str | None, int | None]] = {}
_MODE: dict[str, str] = {"embed": "auto"}
_IDS = itertools.count(1)
#: Figures a result's or recipe's notebook summary draws (the rest: ``.figures()``).
SUMMARY_FIGURES = 1


def embed(mode: Literal["auto", "once", "every"] = "auto") -> None:
    """Where the plotly.js and circuitsvis bundles go.

    Args:
        mode: ``"once"``: in the first output of the session that needs each (smallest
            notebook); ``"every"``: in every output that needs them (each output stands alone,
            as Colab's separate frames need); ``"auto"`` (default): ``"every"`` on Colab,
            ``"once"`` elsewhere.
    """
    check_choice(mode, ("auto", "once", "every"), "mode")
    _MODE["embed"] = mode


def reset() -> None:
    """Forget which bundles were inlined: the next output that needs one carries it again.

    Use it when the output that carried the bundles was deleted (the figures after it say so).
    """
    _SENT.clear()


def notebook_mode() -> None:
    """Show every plotly figure in this notebook with tlprobe's offline HTML (no CDN request).

    Registers the plotly renderer ``"tlprobe"`` and makes it ``plotly.io.renderers.default``;
    plotly.js is then inlined once per session, as for tlprobe's own outputs. Undo it with
    ``plotly.io.renderers.default = "plotly_mimetype+notebook"``.
    """
    pio.renderers["tlprobe"] = PlotlyRenderer()
    pio.renderers.default = "tlprobe"


class PlotlyRenderer(MimetypeRenderer):
    """plotly's renderer protocol (``to_mimebundle``): figures as this module's offline HTML."""

    def to_mimebundle(self, fig_dict: dict) -> dict[str, str]:
        return {"text/html": figure_html(go.Figure(fig_dict))}


# -- the pieces ---------------------------------------------------------------------------


def _cell() -> tuple[str | None, int | None]:
    """The running cell: its id (sent by JupyterLab, Notebook 7 and VS Code) and execution count."""
    try:
        from IPython import get_ipython  # only inside IPython; None elsewhere

        ip = get_ipython()
    except ImportError:
        return None, None
    if ip is None:
        return None, None
    count = getattr(ip, "execution_count", None)
    try:
        cell_id = ip.kernel.get_parent()["metadata"].get("cellId")  # type: ignore[union-attr]
    except Exception:  # no kernel (plain IPython) or an older ipykernel: no cell id
        cell_id = None
    return cell_id, count


def _every() -> bool:
    mode = _MODE["embed"]
    return mode == "every" or (mode == "auto" and "google.colab" in sys.modules)


def _bundle(name: str) -> str:
    """The ``<script>`` of bundle ``name`` if this output must carry it, else ``""``."""
    cell = _cell()
    carrier = _SENT.get(name)
    again = carrier is not None and cell[0] is not None and carrier[0] == cell[0] and carrier[1] != cell[1]
    if carrier is not None and not again and not _every():
        return ""
    _SENT[name] = cell
    js = plotly_js() if name == "plotly" else circuitsvis_js()
    return f"<script>{js}</script>"


def _uid() -> str:
    return f"tlp{next(_IDS)}"


def _wrap(inner: str, *, plotly: bool = False, circuitsvis: bool = False) -> str:
    """``inner`` in a scoped ``.tlprobe-report`` root, after the bundles it needs."""
    bundles = (_bundle("plotly") if plotly else "") + (_bundle("circuitsvis") if circuitsvis else "")
    return f"{bundles}<style>{scoped_css()}</style><div class='tlprobe-report tlprobe-inline'>{inner}</div>"


def figure_html(fig, caption: str | None = None) -> str:
    """One plotly figure as notebook HTML (plotly.js inlined if this output must carry it)."""
    uid = _uid()
    return _wrap(figure_block(f"{uid}-fig01", f"{uid}-fig01", fig, caption), plotly=True)


def view_html(view: CircuitsVisView, caption: str | None = None) -> str:
    """One circuitsvis view as notebook HTML (tokens defused as in the report)."""
    return _wrap(view_block(f"{_uid()}-cv1", view, caption), circuitsvis=True)


def report_html(report: Report) -> str:
    """A whole report, inline: its styles scoped to its own root, its ids unique on the page."""
    body, needs_plotly, needs_cv = report.body(prefix=_uid() + "-")
    return _wrap(body, plotly=needs_plotly, circuitsvis=needs_cv)


def summary_html(
    title: str, rows: list[dict], figures: list, notes: list[str] | None = None, findings: list | None = None
) -> str:
    """A compact summary: a title (HTML), the findings, a table (escaped), one-line notes, the figures."""
    uid = _uid()
    parts = [f"<p>{title}</p>"]
    if findings:
        parts.append(findings_table(findings))
    parts.append(rows_html(rows))
    parts += [f"<p class='sub'>{html.escape(n)}</p>" for n in notes or []]
    parts += [figure_block(f"{uid}-fig{i:02d}", f"{uid}-fig{i:02d}", fig, None) for i, fig in enumerate(figures, 1)]
    return _wrap("".join(parts), plotly=bool(figures))


def result_html(result: Any, max_rows: int) -> str:
    """A result: its type and axes, its first ``max_rows`` rows, and its main figure."""
    rows = result.rows()
    axes = ", ".join(f"{k} ({len(v)})" for k, v in result.axes.items())
    title = f"<b>{html.escape(type(result).__name__)}</b>" + (f" over {html.escape(axes)}" if axes else "")
    notes = [f"{len(rows) - max_rows} more rows: .rows()"] if len(rows) > max_rows else []
    figures = []
    try:
        figures = [result.figure()]
        notes.append(".figure(): this figure as a plotly Figure")
    except TlprobeError as exc:  # no figure for this type, or not for this shape: say which
        if any(k in _figure_types() for k in type(result).__mro__):
            notes.append(f"no figure here: {exc}")
    return summary_html(title, rows[:max_rows], figures, notes)


def _figure_types() -> set:
    from tlprobe.result import _FIGURES  # the registry of main figures (filled by tlprobe.figures)

    return set(_FIGURES)


def recipe_html(run: Any) -> str:
    """A recipe run: what ran on which model, its results, where its files went, its main figure."""
    model = run.facts.get("model", {})
    name = model.get("name") if isinstance(model, dict) else None
    title = f"<b>{html.escape(run.recipe)}</b>" + (f" on <b>{html.escape(str(name))}</b>" if name else "")
    title += f", run {html.escape(run.run_id)}" if run.run_id else ""
    rows = [
        {"result": k, "type": type(v).__name__, "axes": ", ".join(f"{a} ({len(lab)})" for a, lab in v.axes.items())}
        for k, v in run.results.items()
    ]
    notes = [f"{k}: {p}" for k, p in run.paths.items()]
    if run.report is not None:
        figures = run.figures()
        notes.append(f".results[name]: a result; .figures(): the report's {len(figures)} figures; .report: the report")
        figures = figures[:SUMMARY_FIGURES]
    else:  # loaded from results.json: no report, the first result's own figure if it has one
        notes.append(".results[name]: a result (loaded from results.json: no report)")
        figures = []
        for result in run.results.values():
            try:
                figures = [result.figure()]
                break
            except TlprobeError:  # this result type has no main figure; try the next
                continue
    return summary_html(title, rows, figures, notes, findings=list(getattr(run, "findings", [])))
