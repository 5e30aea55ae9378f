"""Helpers shared by recipes: common options, data files, and writing the outputs."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import pathlib
import time
from importlib import resources

from tlprobe.errors import TlprobeError
from tlprobe.report import Report, write_results


def add_common_arguments(parser: argparse.ArgumentParser, name: str, model: bool = True) -> None:
    """--model, --device, --seed, --out (and --no-progress)."""
    if model:
        parser.add_argument("--model", default="minilm",
                            help="'minilm' (bundled, offline), a hub id such as gpt2, or a local directory")
        parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random draw")
    parser.add_argument("--out", default=f"tlprobe-out/{name}", help="output directory")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def data_path(filename: str) -> pathlib.Path:
    """A data file shipped with the recipes."""
    return pathlib.Path(str(resources.files("recipes").joinpath("data", filename)))


def read_lines(path: str | pathlib.Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file, skipping ``#`` comments."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise TlprobeError(f"file not found: {p}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    out = {}
    for pkg in ("tlprobe", "transformer-lens", "torch", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class Timer:
    """Named wall-clock timings, for the report (not results.json, which must be reproducible)."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self._t, 2)
        self._t = now

    def as_params(self) -> dict[str, str]:
        return {f"time: {k}": f"{v:.2f} s" for k, v in self.times.items()}


def finish(report: Report, results: dict, out: str | pathlib.Path, quiet: bool = False) -> dict[str, pathlib.Path]:
    """Write ``report.html`` and ``results.json`` into ``out`` and say where they are."""
    out = pathlib.Path(out)
    paths = {"report": report.write(out / "report.html"), "results": write_results(results, out / "results.json")}
    if not quiet:
        for kind, p in paths.items():
            print(f"{kind}: {p}")
    return paths
