"""Static PNG export of plotly figures with kaleido, driving a locally installed Chromium.

One browser session renders every figure (starting Chromium costs seconds; each figure then
takes a fraction of one). MathJax is off: kaleido would otherwise load it from a CDN, and on a
network that accepts connections but never answers, the export hangs for minutes. The browser
is never downloaded: install one (Debian/Ubuntu ``apt-get install chromium``) or point
``BROWSER_PATH`` at it.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import threading
from collections.abc import Sequence

from tlprobe.errors import TlprobeError

#: Executable names tried on ``PATH`` after ``BROWSER_PATH``.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
DEFAULT_WIDTH = 1100
DEFAULT_HEIGHT = 450

_NO_BROWSER = (
    "PNG export needs Chromium or Google Chrome and none was found (looked for BROWSER_PATH, then "
    + ", ".join(BROWSER_NAMES)
    + " on PATH). Install one (Debian/Ubuntu: 'apt-get install chromium'; macOS/Windows: Google Chrome) "
    "or set BROWSER_PATH to its executable. The HTML report does not need it."
)


def find_browser() -> str:
    """The Chromium/Chrome executable: ``$BROWSER_PATH``, else the first of :data:`BROWSER_NAMES` on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        p = shutil.which(env)
        if not p:
            raise TlprobeError(f"BROWSER_PATH={env!r} is not an executable; unset it or point it at Chromium/Chrome")
        return p
    for name in BROWSER_NAMES:
        p = shutil.which(name)
        if p:
            return p
    raise TlprobeError(_NO_BROWSER)


def _in_thread(make_coro):
    """Run a coroutine to completion in a fresh event loop on a helper thread.

    Works inside Jupyter (whose loop is already running) and leaves no global state behind.
    """
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(make_coro())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="tlprobe-png-export")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _size(fig, key: str, default: int) -> int:
    layout = fig.get("layout", {}) if isinstance(fig, dict) else fig.layout.to_plotly_json()
    value = layout.get(key)
    return int(value) if value else default


def export_png(
    figures: Sequence[tuple[str, object]],
    out_dir: str | pathlib.Path,
    scale: float = 2,
    width: int | None = None,
    height: int | None = None,
    browser: str | None = None,
    timeout: float = 90,
) -> list[pathlib.Path]:
    """Write ``out_dir/NAME.png`` for every ``(name, figure)``, in one browser session.

    Args:
        figures: ``(name, plotly Figure or figure dict)`` pairs, e.g. ``Report.figures()`` or
            :func:`tlprobe.report.html.read_figures`.
        out_dir: the folder to write into (created).
        scale: pixel density; the PNG is ``width * scale`` by ``height * scale`` pixels.
        width, height: CSS pixels; default the figure's layout size, else 1100 x 450.
        browser: the Chromium/Chrome executable (default :func:`find_browser`).
        timeout: seconds allowed per figure.

    Returns:
        The paths written, in order.
    """
    if not figures:
        return []
    path = browser or find_browser()
    try:
        import kaleido  # optional dependency (pip install tlprobe[png])
    except ImportError as exc:
        raise TlprobeError("PNG export needs kaleido >= 1.0: pip install 'kaleido>=1.5'") from exc
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, paths = [], []
    for name, fig in figures:
        p = out_dir / f"{name}.png"
        opts = {
            "format": "png",
            "width": width or _size(fig, "width", DEFAULT_WIDTH),
            "height": height or _size(fig, "height", DEFAULT_HEIGHT),
            "scale": scale,
        }
        jobs.append({"fig": fig, "path": p, "opts": opts})
        paths.append(p)

    async def render():
        async with kaleido.Kaleido(n=1, mathjax=False, timeout=timeout, path=path) as k:
            await k.write_fig_from_object(jobs, cancel_on_error=True)

    try:
        _in_thread(render)
    except TlprobeError:
        raise
    except Exception as exc:  # browser failed to start or a figure failed to render
        raise TlprobeError(f"PNG export with {path} failed: {type(exc).__name__}: {exc}") from exc
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TlprobeError(f"PNG export wrote no file for: {', '.join(missing)}")
    return paths
