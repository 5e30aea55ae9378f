"""Pages in a real browser: the checker shared by the report and notebook tests.

Drives the system Chromium (Debian package ``chromium``) through Playwright's sync API; no browser
is downloaded. The fixtures ``chromium_path`` and ``browser`` live in ``tests/conftest.py``.
Without Chromium or Playwright the browser tests skip, except under ``CI=true``, where a missing
browser fails them: CI must prove the pages render.
"""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

from tlprobe.figures.attention import attention_heads_view
from tlprobe.figures.views import circuitsvis_view

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
#: Flags that keep a root, offline, GPU-less Chromium quiet (no calls home, no GPU, no /dev/shm).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DRAW_TIMEOUT_MS = 30_000
#: Console message types a page must not log (plotly.js logs its warnings, e.g. "WARN: Invalid color
#: specifier", through console.trace).
CONSOLE_BAD = {"warning", "error", "assert", "trace"}
#: Chromium's own software-GL diagnostics (a canvas read back under --disable-gpu): the browser's,
#: not the page's, so they are not counted.
_GL_DRIVER = "GL Driver Message"


def _bad_console(msg) -> bool:
    return msg.type in CONSOLE_BAD and not (msg.text.startswith("[.WebGL-") and _GL_DRIVER in msg.text)


def unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true but {reason}: CI must run the browser tests", pytrace=False)
    pytest.skip(reason)


# -- the checker -------------------------------------------------------------------------------
_STATE_JS = """() => {
  const plots = [...document.querySelectorAll('div.plotly-graph-div')];
  const views = [...document.querySelectorAll('[data-component]')].map(v => {
    const cs = [...v.querySelectorAll('canvas')];
    const drawn = cs.length ? cs.every(c => c.width > 0 && c.height > 0 && !(c.width === 300 && c.height === 150))
                            : v.children.length > 0 && v.innerText.trim().length > 0;
    return {id: v.id, component: v.dataset.component, canvases: cs.length, drawn};
  });
  return {plots: plots.map(p => ({id: p.id, drawn: !!p.querySelector('.main-svg')})), views};
}"""
_ALL_DRAWN_JS = (
    "() => { const s = (" + _STATE_JS + ")(); return s.plots.every(p => p.drawn) && s.views.every(v => v.drawn); }"
)


def inspect_page(
    browser,
    path: pathlib.Path,
    init_script: str | None = None,
    settle_ms: int = 300,
    draw_timeout_ms: int = DRAW_TIMEOUT_MS,
) -> dict:
    """Open ``path`` with every non-file request aborted; report errors, requests and what was drawn."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    external: list[str] = []
    console: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}") if _bad_console(msg) else None)

    def guard(route):
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            external.append(url)
            route.abort()

    page.route("**/*", guard)
    if init_script:
        page.add_init_script(init_script)
    page.goto(pathlib.Path(path).resolve().as_uri(), wait_until="load")
    try:
        page.wait_for_function(_ALL_DRAWN_JS, timeout=draw_timeout_ms)
    except Exception:  # not drawn in time: the state below says what is missing
        pass
    page.wait_for_timeout(settle_ms)
    state = page.evaluate(_STATE_JS)
    state.update(errors=errors, external=external, console=console, page=page)
    return state


def problems(state: dict) -> list[str]:
    """Everything that makes a page not self-contained or not fully drawn."""
    out = [f"page error: {e}" for e in state["errors"]]
    out += [f"console {m}" for m in state.get("console", [])]
    out += [f"network request: {u}" for u in state["external"]]
    out += [f"plotly figure {p['id']} not drawn" for p in state["plots"] if not p["drawn"]]
    out += [f"circuitsvis {v['component']} view {v['id']} not drawn" for v in state["views"] if not v["drawn"]]
    if not state["plots"] and not state["views"]:
        out.append("no figure or view on the page")
    return out


# -- hostile tokens ----------------------------------------------------------------------------
PWN = '<img/src="x"/onerror="window.__pwned=(window.__pwned||0)+1">'
PWN_SPACED = "<img src=x onerror=window.__pwned=(window.__pwned||0)+1>"
HOSTILE = [PWN, "</script>", "<s>", "<b>bold</b>", "&amp;", "<!--", PWN_SPACED]


def views_with_tokens(tokens: list[str]) -> list:
    """One view of every circuitsvis component tlprobe accepts, showing ``tokens``."""
    n = len(tokens)
    g = torch.Generator().manual_seed(0)
    att = torch.rand(2, n, n, generator=g).tril()
    att = att / att.sum(-1, keepdim=True)
    idx = list(range(n))
    return [
        attention_heads_view(att, tokens, layer=1),
        circuitsvis_view("AttentionPattern", tokens=tokens, attention=att[0]),
        circuitsvis_view("AttentionPatterns", tokens=tokens, attention=att),
        circuitsvis_view("ColoredTokens", tokens=tokens, values=torch.linspace(-1, 1, n)),
        circuitsvis_view("ColoredTokensMulti", tokens=tokens, values=torch.rand(n, 2, generator=g), labels=["a", "b"]),
        circuitsvis_view("TextNeuronActivations", tokens=tokens, activations=torch.rand(n, 1, 2, generator=g)),
        # every token is among the top k, so every one is shown
        circuitsvis_view(
            "TopkTokens",
            tokens=[tokens],
            topkVals=[[[[1.0 - i / n] * 2 for i in range(n)]]],
            topkIdxs=[[[[i, i] for i in idx]]],
            bottomkVals=[[[[0.0] * 2 for _ in idx]]],
            bottomkIdxs=[[[[i, i] for i in idx]]],
        ),
        circuitsvis_view("TopkSamples", tokens=[[[tokens]]], activations=[[[torch.linspace(0, 1, n).tolist()]]]),
        circuitsvis_view(
            "TokenLogProbs",
            prompt=tokens,
            topKLogProbs=[[-0.1, -2.0]] * (n - 1),
            topKTokens=[[tokens[(i + 1) % n], tokens[(i + 2) % n]] for i in range(n - 1)],
            correctTokenRank=[0] * (n - 1),
            correctTokenLogProb=[-0.1] * (n - 1),
        ),
    ]
