"""Exceptions raised by tlprobe.

Every error tlprobe raises for bad input is a :class:`TlprobeError` (a ``ValueError``), whose
message names the problem and the fix. The CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

#: Exit code of the command line for bad input (the message names the problem and the fix).
EXIT_BAD_INPUT = 2


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


def guarded(fn: Callable[[], int], debug: bool = False) -> int:
    """Run ``fn`` for the command line: a :class:`TlprobeError` becomes one line on stderr and
    exit code 2 (``debug`` re-raises it for the traceback); Ctrl-C exits with 130."""
    try:
        return fn()
    except TlprobeError as exc:
        if debug:
            raise
        print(f"tlprobe: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("tlprobe: interrupted", file=sys.stderr)
        return 130
