"""Helpers shared by recipes: common options, data files, and writing the outputs."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import importlib.metadata as md
import pathlib
import time
from importlib import resources

from tlprobe.access import find_token_positions, run_batch, sample_positions
from tlprobe.checks import check_min_samples
from tlprobe.errors import TlprobeError
from tlprobe.report.html import Report, human_size, write_results

#: Set by :func:`png_export` (the CLI's ``--png``): :func:`finish` then also writes PNGs.
_PNG = contextvars.ContextVar("tlprobe_png_export", default=False)


def add_common_arguments(parser: argparse.ArgumentParser, name: str, model: bool = True) -> None:
    """--model, --device, --seed, --out, --no-progress and --png.

    ``--png`` is handled by the ``tlprobe`` command (it wraps the run in :func:`png_export`), so a
    recipe's ``run()`` does not take it.
    """
    if model:
        parser.add_argument(
            "--model", default="minilm", help="'minilm' (bundled, offline), a hub id such as gpt2, or a local directory"
        )
        parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random draw")
    parser.add_argument("--out", default=f"tlprobe-out/{name}", help="output directory")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.add_argument(
        "--png",
        action="store_true",
        help="also save every figure as OUT/figures/*.png (needs kaleido and Chromium/Chrome)",
    )


@contextlib.contextmanager
def png_export(enabled: bool = True):
    """Within this block, :func:`finish` also exports every report figure as PNG.

    Example:
        >>> with png_export():
        ...     _PNG.get()
        True
        >>> _PNG.get()
        False
    """
    token = _PNG.set(bool(enabled))
    try:
        yield
    finally:
        _PNG.reset(token)


#: Fewest sentences a target-word recipe accepts (similarity across samples needs a spread).
MIN_SENTENCES = 10


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """--target and --sentences, for recipes about one word across many sentences."""
    parser.add_argument("--target", default="her", help="the target word")
    parser.add_argument(
        "--sentences",
        default=None,
        help="text file, one sentence per line, each containing the target (default: 48 bundled sentences for 'her')",
    )


def target_sentences(path: str | pathlib.Path | None, what: str) -> list[str]:
    """The sentences of ``--sentences`` (default: the bundled ones), at least :data:`MIN_SENTENCES`."""
    prompts = read_lines(path or data_path("her_sentences.txt"))
    check_min_samples(len(prompts), MIN_SENTENCES, what, "give more sentences containing the target (--sentences FILE)")
    return prompts


def run_targets(model, prompts: list[str], target: str, names, seed: int, progress: bool):
    """Run the sentences; find the target and draw a random earlier token in each.

    Returns ``(batch, target_positions, non_target_positions)``.
    """
    batch = run_batch(model, prompts, names=names, progress=progress)
    tpos = find_token_positions(model.tokenizer, batch.tokens, target, batch.attention_mask, prompts=prompts)
    npos = sample_positions(batch.attention_mask, tpos, batch.tokens, model.tokenizer, where="before", seed=seed)
    return batch, tpos, npos


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
    """Versions of the packages a result depends on (and of those that draw the report)."""
    import tlprobe

    out = {"tlprobe": tlprobe.__version__}
    for pkg in ("transformer-lens", "torch", "transformers", "plotly", "circuitsvis"):
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


def finish(
    report: Report, results: dict, out: str | pathlib.Path, quiet: bool = False, png: bool | None = None
) -> dict[str, pathlib.Path]:
    """Write ``report.html`` and ``results.json`` into ``out`` and say where they are.

    With ``png`` (default: inside :func:`png_export`, i.e. ``--png``) every figure is also
    written to ``out/figures/NAME.png``, all in one browser session; the paths come back under
    ``"figures"`` (the folder). The HTML and JSON are written first, so a missing browser costs
    only the PNGs (with a :class:`TlprobeError` saying what to install).
    """
    out = pathlib.Path(out)
    paths = {"report": report.write(out / "report.html"), "results": write_results(results, out / "results.json")}
    if not quiet:
        print(f"report: {paths['report']} ({human_size(paths['report'].stat().st_size)})")
        print(f"results: {paths['results']}")
    if _PNG.get() if png is None else png:
        from tlprobe.report.png import export_png

        figures = report.figures()
        export_png(figures, out / "figures")
        paths["figures"] = out / "figures"
        if not quiet:
            print(f"figures: {len(figures)} PNG in {paths['figures']}")
    return paths
