"""circuitsvis views as data: a component name and its props, rendered by the report.

``circuitsvis``'s own HTML loads its JavaScript from a CDN and breaks when several views are
concatenated, so tlprobe keeps views as (component, props) and lets :mod:`tlprobe.report`
inline the bundle once.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

#: Components that insert token strings into the page as raw HTML: their tokens are escaped.
#: AttentionHeads and AttentionPattern draw tokens on a canvas and must NOT be escaped.
HTML_TOKEN_COMPONENTS = frozenset({"AttentionPatterns", "ColoredTokens", "ColoredTokensMulti", "TextNeuronActivations"})


@dataclass(frozen=True)
class CircuitsVisView:
    """A circuitsvis React component and its (camelCase) props."""

    component: str
    props: dict = field(default_factory=dict)


def _escape_tokens(tokens):
    if isinstance(tokens, str):
        return html.escape(tokens)
    return [_escape_tokens(t) for t in tokens]


def circuitsvis_view(component: str, token_keys: tuple[str, ...] = ("tokens",), **props) -> CircuitsVisView:
    """Build a view; token strings are HTML-escaped for components that insert them as HTML.

    Example:
        >>> circuitsvis_view("ColoredTokens", tokens=["<s>", "a"], values=[1, 2]).props["tokens"]
        ['&lt;s&gt;', 'a']
        >>> circuitsvis_view("AttentionHeads", tokens=["<s>"], attention=[[[1.0]]]).props["tokens"]
        ['<s>']
    """
    if component in HTML_TOKEN_COMPONENTS:
        props = {k: _escape_tokens(v) if k in token_keys else v for k, v in props.items()}
    return CircuitsVisView(component, props)
