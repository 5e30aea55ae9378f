"""Exceptions raised by tlprobe.

Every error tlprobe raises for bad input is a :class:`TlprobeError` (a ``ValueError``), whose
message names the problem and the fix. The CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

#: Exit code of the command line for bad input (the message names the problem and the fix).
EXIT_BAD_INPUT = 2
#: Exit code of the command line for an unexpected internal error (a bug in tlprobe).
EXIT_BUG = 1


class TlprobeError(ValueError):
    """Bad input or an unsupported situation; the message says what to do."""


class HookNotFoundError(TlprobeError, KeyError):
    """A hook an analysis needs is not in the cache (or the model never fires it)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TokenNotFoundError(TlprobeError):
    """A target token or word does not occur in a prompt."""


class ModelLoadError(TlprobeError):
    """A model could not be loaded (unknown name, no hub access, bad directory)."""


class UnsupportedModelError(TlprobeError):
    """The model lacks something the analysis needs (e.g. an encoder given to a decoder-only lens)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with one-line errors (``PROG: error: ...; see PROG --help``), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())}; see {self.prog} --help\n")


def guarded(fn: Callable[[], int], debug: bool = False) -> int:
    """Run ``fn`` for the command line, so that every failure is one line on stderr.

    A :class:`TlprobeError` (bad input; the message names the fix) and running out of memory exit
    with code 2; any other exception is a bug in tlprobe: one line saying so, exit code 1. With
    ``debug`` the exception is re-raised for its traceback. Ctrl-C exits with 130.
    """
    try:
        return fn()
    except KeyboardInterrupt:
        print("tlprobe: interrupted", file=sys.stderr)
        return 130
    except TlprobeError as exc:
        if debug:
            raise
        print(f"tlprobe: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, MemoryError) or _is_oom(exc):  # torch.OutOfMemoryError is a RuntimeError
            print(
                f"tlprobe: error: out of memory ({_one_line(exc)[:200] or type(exc).__name__}); "
                "use fewer sentences or a smaller model, or run on a device with more memory",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        print(
            f"tlprobe: internal error: {type(exc).__name__}: {_one_line(exc)[:300]}. This is a bug in tlprobe; "
            "rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return EXIT_BUG


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _is_oom(exc: BaseException) -> bool:
    """torch's out-of-memory errors (``torch.OutOfMemoryError`` is a ``RuntimeError``)."""
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text
