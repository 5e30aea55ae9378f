"""circuitsvis views as data: a component name and its props, rendered by the report.

``circuitsvis``'s own HTML loads its JavaScript from a CDN and breaks when several views are
concatenated, so tlprobe keeps views as (component, props) and lets :mod:`tlprobe.report`
inline the bundle once.

Token safety (checked in Chromium with circuitsvis 1.43.3, see ``tests/test_browser.py``): the
components in :data:`HTML_TOKEN_COMPONENTS` put token strings into the page with
``innerHTML`` (a token ``<img/src="x"/onerror=...>`` ran its handler in every one of them), and
four of them (ColoredTokens, TextNeuronActivations, TopkTokens, TopkSamples) *also* show the
same token as plain text in a hover tooltip. HTML-escaping would be safe but shows
``&lt;s&gt;`` in those tooltips, so tokens are defused instead: an invisible U+2060 WORD JOINER
goes after every ``<`` and ``&``. No tag, comment or character reference can start (HTML
needs a letter, ``/``, ``!`` or ``?`` right after ``<``), and both the HTML and the text
rendering show the token as written. AttentionHeads and AttentionPattern draw tokens on a
canvas and get them unchanged.

plotly reads a few HTML-like tags in any text it draws (``<b>``, ``<br>``, ``<s>``, ``<sub>``...)
and decodes ``&amp;`` and ``&lt;``: a token ``<s>`` on an axis vanished and ``<br>x`` broke the
line. It ran no handler. Pass token strings that go into plotly text (tick labels, hover text,
trace names) through :func:`plotly_text`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from tlprobe.errors import TlprobeError
from tlprobe.result import Result

#: Components that insert token strings into the page as HTML: their tokens are defused.
HTML_TOKEN_COMPONENTS = frozenset(
    {
        "AttentionPatterns",
        "ColoredTokens",
        "ColoredTokensMulti",
        "TextNeuronActivations",
        "TokenLogProbs",
        "TopkSamples",
        "TopkTokens",
    }
)
#: Components that draw token strings on a canvas: tokens pass unchanged (no ``&lt;``).
CANVAS_TOKEN_COMPONENTS = frozenset({"AttentionHeads", "AttentionPattern"})
#: Every component of the circuitsvis bundle that :func:`circuitsvis_view` accepts.
COMPONENTS = HTML_TOKEN_COMPONENTS | CANVAS_TOKEN_COMPONENTS
#: Props that hold token strings (labels and names are rendered as text by every component).
TOKEN_PROPS = ("tokens", "prompt", "topKTokens")

_JOINER = "\u2060"


@dataclass(frozen=True)
class CircuitsVisView:
    """A circuitsvis React component and its (camelCase, JSON-ready) props."""

    component: str
    props: dict = field(default_factory=dict)

    def _repr_html_(self) -> str:
        """The view inline in a notebook, offline (see :mod:`tlprobe.report.notebook`)."""
        from tlprobe.report.notebook import view_html  # notebook display lives in the report layer, above this one

        return view_html(self)


def defuse_html(token: str) -> str:
    """``token`` with a U+2060 WORD JOINER after every ``<`` and ``&``: inert as HTML, same text.

    Example:
        >>> defuse_html("<s>") == "<\\u2060s>"
        True
        >>> defuse_html("plain")
        'plain'
    """
    return token.replace("&", "&" + _JOINER).replace("<", "<" + _JOINER)


def plotly_text(text):
    """A string (or nested lists of strings) that plotly shows literally.

    plotly renders text as pseudo-HTML and ``$...$`` as LaTeX: ``&``, ``<``, ``>`` are escaped
    (plotly decodes these entities, not ``&quot;``, so quotes stay), ``$`` becomes ``&#36;`` and
    control characters are shown as ``\\n``, ``\\r``, ``\\t``.

    Example:
        >>> plotly_text(["<s>", "a&b", '"q"'])
        ['&lt;s&gt;', 'a&amp;b', '"q"']
        >>> plotly_text("<br> $x$")
        '&lt;br&gt; &#36;x&#36;'
    """
    if isinstance(text, str):
        out = html.escape(text, quote=False).replace("$", "&#36;")
        return out.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return [plotly_text(t) for t in text]


def _defuse_tokens(tokens):
    if isinstance(tokens, str):
        return defuse_html(tokens)
    return [_defuse_tokens(t) for t in tokens]


def to_lists(value, decimals: int | None = None):
    """Tensors and arrays to nested lists, recursively through dicts, lists and tuples.

    Floats are rounded to ``decimals`` when given; anything else is returned as it is. Used for
    circuitsvis props and for ``results.json``.

    Example:
        >>> import torch
        >>> to_lists({"a": torch.tensor([0.123456, 1.0]), "b": (1, "x")}, decimals=3)
        {'a': [0.123, 1.0], 'b': [1, 'x']}
    """
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu()
        if value.is_floating_point() and decimals is not None:
            value = value.double().round(decimals=decimals)
        return value.tolist()
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy array or scalar
        if np.issubdtype(value.dtype, np.floating) and decimals is not None:
            value = np.round(value.astype(np.float64), decimals)
        return value.tolist()
    if isinstance(value, dict):
        return {k: to_lists(v, decimals) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_lists(v, decimals) for v in value]
    return value


def circuitsvis_view(
    component: str, *, token_keys: tuple[str, ...] = TOKEN_PROPS, decimals: int | None = 4, **props
) -> CircuitsVisView:
    """Build a view; token strings are defused for components that insert them as HTML.

    Args:
        component: a circuitsvis component name (see :data:`COMPONENTS`).
        token_keys: the props that hold token strings.
        decimals: float tensors and arrays are rounded to this many decimals (keeps the report
            small; ``None`` keeps full precision).
        **props: the component's camelCase props; ``None`` values are dropped so that the
            component's defaults apply (as ``circuitsvis.utils.convert_props`` does).

    Example:
        >>> v = circuitsvis_view("ColoredTokens", tokens=["<s>", "a"], values=[1, 2], maxValue=None)
        >>> v.props["tokens"] == ["<\\u2060s>", "a"], "maxValue" in v.props
        (True, False)
        >>> circuitsvis_view("AttentionHeads", tokens=["<s>"], attention=[[[1.0]]]).props["tokens"]
        ['<s>']
    """
    if component not in COMPONENTS:
        raise TlprobeError(f"unknown circuitsvis component {component!r}; one of: {', '.join(sorted(COMPONENTS))}")
    props = {k: to_lists(v, decimals) for k, v in props.items() if v is not None}
    if component in HTML_TOKEN_COMPONENTS:
        props = {k: _defuse_tokens(v) if k in token_keys else v for k, v in props.items()}
    return CircuitsVisView(component, props)


# -- panels and labels shared by the figures -----------------------------------------------

R = TypeVar("R", bound=Result)


def panels(results: R | Mapping[str, R], name: str = "") -> dict[str, R]:
    """One result, or a mapping panel name -> result, as a mapping (a lone result is named ``name``)."""
    return dict(results) if isinstance(results, Mapping) else {name: results}


def index_labels(result: Result, lead: tuple[int, ...], start: int = 0) -> list[str]:
    """One label per index of the leading dimensions ``start, start + 1, ...`` of sizes ``lead``.

    Flattened row-major, read from the result's axes: labels of several axes are joined with a
    space, except a layer and a head, which join into their TransformerLens name ("L3H7"); axes
    without labels are numbered.

    Example:
        >>> r = Result(axes={"layer": ("L0", "L1"), "head": ("H0", "H1")})
        >>> index_labels(r, (2, 2)), index_labels(r, (2,), start=1)
        (['L0H0', 'L0H1', 'L1H0', 'L1H1'], ['H0', 'H1'])
    """
    axes = list(result.axes.items())
    out = []
    for idx in np.ndindex(*lead):
        text = ""
        for d, i in enumerate(idx, start=start):
            name, label = (axes[d][0], str(axes[d][1][i])) if d < len(axes) else ("", str(i))
            glue = "" if not text or (name == "head" and axes[d - 1][0] == "layer") else " "
            text += glue + label
        out.append(text)
    return out
