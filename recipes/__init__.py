"""tlprobe recipes: one module per lesson, each a thin script over tlprobe's analyses.

A recipe module defines ``NAME`` (the CLI name), ``DESCRIPTION`` (one line),
``add_arguments(parser)`` and ``run(**options) -> dict`` (the paths it wrote). ``tlprobe ls``
lists them, ``tlprobe run NAME`` runs one, ``tlprobe cp NAME PATH`` copies one to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def available() -> dict[str, ModuleType]:
    """Recipe name -> module, for every module in this package that defines ``NAME``."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(mod, "NAME", None)
        if name:
            found[name] = mod
    return dict(sorted(found.items()))
