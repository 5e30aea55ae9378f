"""A recipe's output folder: checked before the run, written all at once at its end.

A run writes ``report.html``, ``results.json`` and (with ``png``) ``figures/`` into a staging
folder inside ``out`` and then moves them into place under a lock, with Ctrl-C held back for
those few renames. Interrupted at any moment, ``out`` holds the previous complete output or the
new one; two runs into one folder never mix. Both files carry the run id (a digest of the
results), so a report and its ``results.json`` can be matched.

tlprobe replaces only files it wrote itself: a ``report.html`` it did not write (it marks its
own with ``<meta name='generator' content='tlprobe'>``) or a ``results.json`` that is not a saved
``RecipeResult`` is refused unless ``force``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator

from tlprobe.errors import TlprobeError

REPORT, RESULTS, FIGURES = "report.html", "results.json", "figures"
_STAGING_PREFIX = ".tlprobe-staging-"
_LOCK = ".tlprobe.lock"
#: The marker a report written by tlprobe has in its first bytes.
REPORT_MARK = "<meta name='generator' content='tlprobe'>"


def _refuse(path: pathlib.Path, what: str) -> TlprobeError:
    return TlprobeError(
        f"{path} exists and was not written by tlprobe ({what}); choose another --out folder, "
        "or pass --force to replace it"
    )


def written_by_tlprobe(path: pathlib.Path) -> bool:
    """Whether ``path`` (a report, results file or figures folder) is tlprobe's own output."""
    try:
        if path.name == REPORT:
            with path.open("rb") as fh:
                return REPORT_MARK.encode() in fh.read(4096)
        if path.name == RESULTS:
            with path.open("rb") as fh:
                data = json.loads(fh.read().decode("utf-8"))
            return isinstance(data, dict) and data.get("_type") == "RecipeResult"
        if path.name == FIGURES:  # a figures folder of an earlier run holds PNGs only
            return path.is_dir() and all(p.is_file() and p.suffix == ".png" for p in path.iterdir())
    except (OSError, ValueError):
        return False
    return False


def check_out_dir(out: str | os.PathLike, *, force: bool = False) -> pathlib.Path:
    """Check ``out`` before any work: a folder that exists or can be made, writable, and not
    holding a ``report.html``, ``results.json`` or ``figures/`` that tlprobe did not write (unless
    ``force``; a run replaces or removes all three). Creates the folder.

    Raises:
        TlprobeError: ``out`` is a file, lies under a file, cannot be created or written, or holds
            files tlprobe would clobber.

    Example:
        >>> import tempfile
        >>> check_out_dir(pathlib.Path(tempfile.mkdtemp()) / "run").is_dir()
        True
    """
    if not isinstance(out, (str, os.PathLike)) or str(out) == "":
        raise TlprobeError(f"--out must be a folder path, got {out!r}")
    path = pathlib.Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise TlprobeError(f"--out {path} is a file, not a folder; choose a folder (it is created if missing)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise TlprobeError(f"--out {path} cannot be created: {parent} is a file; choose a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TlprobeError(f"--out {path} cannot be created ({exc.strerror or exc}); choose a writable folder") from exc
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise TlprobeError(f"--out {path} is not writable ({exc.strerror or exc}); choose a writable folder") from exc
    if not force:
        for name, what in ((REPORT, "no tlprobe mark"), (RESULTS, "not a tlprobe results file")):
            p = path / name
            if p.exists() and not written_by_tlprobe(p):
                raise _refuse(p, what)
        fig = path / FIGURES
        if fig.exists() and not written_by_tlprobe(fig):
            raise _refuse(fig, "it holds files other than PNGs")
    return path


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the duration (main thread only), then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, _frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in got:
            if s == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), s)


@contextlib.contextmanager
def _locked(folder: pathlib.Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (advisory, between tlprobe runs; a no-op where unsupported)."""
    try:
        import fcntl  # POSIX only: on other systems the lock is skipped
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(folder / _LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_outputs(
    out: pathlib.Path,
    write: Callable[[pathlib.Path], None],
    *,
    force: bool = False,
) -> dict[str, pathlib.Path]:
    """Run ``write(staging)`` (it writes ``report.html``, ``results.json`` and optionally
    ``figures/`` into ``staging``), then move them into ``out`` together.

    An earlier run's ``figures/`` is removed when this run makes none (stale PNGs would sit beside
    a report they do not belong to). Returns the paths written, by kind (``report``, ``results``,
    ``figures``).
    """
    out.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=out, prefix=_STAGING_PREFIX))
    trash = staging / ".old"
    try:
        write(staging)
        written = {n for n in (REPORT, RESULTS, FIGURES) if (staging / n).exists()}
        with _locked(out), _signals_held():
            if not force:  # checked again: another run or the user may have written meanwhile
                for name in (REPORT, RESULTS):
                    if (out / name).exists() and not written_by_tlprobe(out / name):
                        raise _refuse(out / name, "written during this run")
            trash.mkdir()
            if (out / FIGURES).exists() and (force or written_by_tlprobe(out / FIGURES)):
                os.replace(out / FIGURES, trash / FIGURES)
            for name in (FIGURES, RESULTS, REPORT):
                if name in written:
                    os.replace(staging / name, out / name)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TlprobeError(f"no space left to write into {out}; free some space or choose another --out") from exc
        raise TlprobeError(f"could not write into {out} ({exc.strerror or exc}); choose another --out") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    keys = {REPORT: "report", RESULTS: "results", FIGURES: "figures"}
    return {keys[n]: out / n for n in (REPORT, RESULTS, FIGURES) if n in written}
