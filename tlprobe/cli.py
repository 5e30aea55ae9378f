"""The ``tlprobe`` command: ``ls``, ``run NAME [options]``, ``cp NAME PATH``, ``export REPORT``.

Errors from bad input print one line (``tlprobe: error: ...``) and exit with code 2;
``--debug`` shows the traceback instead. ``tlprobe ls`` imports no recipe (and no torch).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pathlib
import shutil
import sys

from tlprobe import recipes
from tlprobe.errors import (
    EXIT_BAD_INPUT as EXIT_BAD_INPUT,  # re-exported: the exit code for bad input
    ArgumentParser,
    TlprobeError,
    guarded,
)


def cmd_ls(_args) -> int:
    width = max(len(n) for n in recipes.RECIPES)
    for name, (_module, description) in recipes.RECIPES.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_cp(args) -> int:
    src = pathlib.Path(inspect.getfile(recipes.get(args.name)))
    dst = pathlib.Path(args.path)
    if dst.is_dir():
        dst = dst / src.name
    if dst.exists() and not args.force:
        raise TlprobeError(f"{dst} exists; pass --force to overwrite")
    shutil.copyfile(src, dst)
    print(f"copied {args.name} to {dst}; run it with: python {dst} --help")
    return 0


def cmd_run(args, rest: list[str]) -> int:
    common = _common()
    common.main(recipes.get(args.name), rest, prog=f"tlprobe run {args.name}")
    return 0


def _common():
    # The recipe framework imports torch; loaded only by the commands that run something.
    return importlib.import_module("tlprobe.recipes.common")


def cmd_export(args) -> int:
    from tlprobe.checks import as_float, as_int  # imports torch: only for this command, not for `tlprobe ls`
    from tlprobe.report.html import read_figures  # plotly and kaleido: only for this command
    from tlprobe.report.png import export_png

    scale = as_float(args.scale, "--scale", positive=True, maximum=16)
    width = None if args.width is None else as_int(args.width, "--width", minimum=1, maximum=20000)
    height = None if args.height is None else as_int(args.height, "--height", minimum=1, maximum=20000)
    report = pathlib.Path(args.report)
    if report.is_dir():
        report = report / "report.html"
    figures = read_figures(report)
    out = pathlib.Path(args.out) if args.out else report.parent / "figures"
    paths = export_png(figures, out, scale=scale, width=width, height=height)
    for p in paths:
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tlprobe",
        description="Measure what happens inside a transformer's layers (TransformerLens).",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    sub.add_parser("ls", help="list recipes")
    p_run = sub.add_parser("run", help="run a recipe (options: tlprobe run NAME --help)", add_help=False)
    p_run.add_argument("name", help="recipe name (see tlprobe ls)")
    p_cp = sub.add_parser("cp", help="copy a recipe's source to edit it")
    p_cp.add_argument("name")
    p_cp.add_argument("path")
    p_cp.add_argument("--force", action="store_true", help="overwrite an existing file")
    p_ex = sub.add_parser(
        "export",
        help="save a report's figures as PNG (needs kaleido and Chromium/Chrome)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p_ex.add_argument("report", help="a report.html written by tlprobe, or the folder holding it")
    p_ex.add_argument("--out", default=None, help="output folder (default: figures/ next to the report)")
    p_ex.add_argument("--scale", type=float, default=2, help="pixels per CSS pixel")
    p_ex.add_argument("--width", type=int, default=None, help="width in CSS pixels (default: the figure's, else 1100)")
    p_ex.add_argument("--height", type=int, default=None, help="height in CSS pixels (default: the figure's, else 450)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["run"] and len(argv) >= 2 and argv[1] in ("-h", "--help"):
        parser.parse_args(["run", "--help"])
    args, rest = parser.parse_known_args(argv)
    if args.command != "run" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    debug = args.debug or "--debug" in rest
    rest = [a for a in rest if a != "--debug"]
    commands = {"ls": cmd_ls, "cp": cmd_cp, "export": cmd_export}
    if args.command in commands:
        return guarded(lambda: commands[args.command](args), debug)
    return guarded(lambda: cmd_run(args, rest), debug)


if __name__ == "__main__":
    sys.exit(main())
