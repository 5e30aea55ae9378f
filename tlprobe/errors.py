"""Exceptions raised by tlprobe.

Every error tlprobe raises for bad input is a :class:`TlprobeError` (a ``ValueError``), whose
message names the problem and the fix. The CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations


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
