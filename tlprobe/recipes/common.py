"""What every recipe shares: its options, its set-up, and writing its outputs.

A recipe is a module with ``NAME``, ``DESCRIPTION``, an ``Options`` dataclass and
``run(options=None, **overrides) -> RecipeResult``. The options are declared once, as dataclass
fields made with :func:`option`; the command line (``tlprobe run NAME --help``), the report's
parameter table and ``results.json``'s ``params`` are all derived from them, under the same keys.

A recipe's ``run()`` reads top to bottom::

    @dataclass(frozen=True)
    class Options(ModelOptions):
        bins: int = option(60, doc="histogram bins over [-1, 1]")

    def run(options: Options | None = None, **overrides) -> RecipeResult:
        o = resolve(Options, options, overrides)
        r = setup(NAME, o)                       # model, model info, seed, timer, output check
        ...                                      # data, analyses (r.lap("analysis"))
        report = Report(...)                     # figures and text
        findings = [check(...), ...]             # the lesson's claims, measured (tlprobe.findings)
        return r.finish(report, results={"cosine": stats}, facts={"n_sentences": 48}, findings=findings)

``tlprobe cp NAME my_recipe.py`` copies a recipe; the copy imports public names only and runs as
``python my_recipe.py`` (its default output folder is ``tlprobe-out/my_recipe``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata as md
import json
import os
import pathlib
import sys
import time
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, TypeVar

import plotly.graph_objects as go
import torch

from tlprobe.access import ModelInfo, find_token_positions, load_model, model_info, run_batch, sample_positions
from tlprobe.access.corpus import init_distributed, is_rank_zero, local_device
from tlprobe.access.models import check_device
from tlprobe.access.run import Batch, forward_cache, tokenize_prompts
from tlprobe.access.tokens import Positions
from tlprobe.checks import as_float, as_int, check_min_samples
from tlprobe.errors import ArgumentParser, TlprobeError, guarded
from tlprobe.findings import Finding, summary
from tlprobe.report.html import Report, human_size
from tlprobe.report.notebook import recipe_html
from tlprobe.report.outputs import check_out_dir, write_outputs
from tlprobe.result import Result, jsonable

OptionsT = TypeVar("OptionsT", bound="CommonOptions")


def option(default: Any, doc: str, *, cli: bool = True, record: bool = True, flag: str | None = None, **argparse_kw):
    """A recipe option: a dataclass field with its help text.

    Args:
        default: the default value (shown by ``--help``).
        doc: one line for ``--help``.
        cli: offered on the command line (``False``: Python callers only, e.g. ``quiet``).
        record: written to the report's parameter table and ``results.json``'s ``params``
            (``False`` for options that do not change the numbers: output folder, progress bars).
        flag: the command-line flag (default ``--name-with-dashes``).
        argparse_kw: passed to ``add_argument`` (e.g. ``nargs``, ``metavar``); the type, choices
            and bool flags are derived from the annotation.
    """
    meta = {"help": doc, "cli": cli, "record": record, "flag": flag, "argparse": argparse_kw}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CommonOptions:
    """Options of every recipe."""

    seed: int = option(0, doc="seed for every random draw")
    out: str | None = option(None, doc="output directory (from Python, None writes nothing)", record=False)
    progress: bool = option(True, doc="show progress bars", record=False)
    png: bool = option(
        False, doc="also save every figure as OUT/figures/*.png (needs kaleido and Chromium/Chrome)", record=False
    )
    force: bool = option(
        False, doc="replace a report.html / results.json in OUT that tlprobe did not write", record=False
    )
    quiet: bool = option(False, doc="print nothing", cli=False, record=False)

    def __post_init__(self):
        # Every option is checked where it is set (command line or Python), before any work:
        # integer-like numpy/torch scalars become ints, floats must be finite, the seed must fit.
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fixed = _checked_option(f, hints[f.name], value)
            if fixed is not value:
                object.__setattr__(self, f.name, fixed)
        as_int(self.seed, "--seed", minimum=0, maximum=MAX_SEED)

    def record(self) -> dict[str, Any]:
        """The options that shape the results, by name (the ``params`` of ``results.json``)."""
        return {
            f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.metadata.get("record", True)
        }


@dataclass(frozen=True)
class ModelOptions(CommonOptions):
    """Options of every recipe that runs a model."""

    model: Any = option(
        "minilm",
        doc="'minilm' (bundled, offline), a hub id such as gpt2, or a local directory (from Python: a loaded model too)",
    )
    device: str | None = option(None, doc="cpu, cuda, ... (default: cuda if available)%(default).0s")
    device_map: str | None = option(
        None,
        doc="'auto' splits a model too large for one GPU over every GPU (TransformerLens' device_map, or "
        "n_devices on 2.x/3.x); not with --device",
    )

    def record(self) -> dict[str, Any]:
        out = super().record()
        if not isinstance(self.model, str):  # a loaded model: record its name, not its repr
            out["model"] = model_info(self.model).name
        return out


#: Largest seed (torch and numpy generators take seeds below 2**63 on every platform).
MAX_SEED = 2**63 - 1


def _checked_option(f: dataclasses.Field, hint, value):
    """``value`` for option ``f``: integer-like scalars as ints, numbers finite, as annotated."""
    if value is None or isinstance(value, (str, bool)):
        return value
    args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    if int in args and not (float in args and isinstance(value, float)):
        return as_int(value, _flag(f))
    if float in args:
        return as_float(value, _flag(f))
    return value


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def resolve(kind: type[OptionsT], options: OptionsT | None, overrides: Mapping[str, Any]) -> OptionsT:
    """``options`` (default ``kind()``) with ``overrides`` applied; unknown names are refused."""
    base = kind() if options is None else options
    if not isinstance(base, kind):
        raise TlprobeError(f"options must be a {kind.__qualname__}, got {type(base).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TlprobeError(f"unknown option(s) {', '.join(unknown)}; options: {', '.join(sorted(names))}")
    return dataclasses.replace(base, **overrides)


# -- the command line ------------------------------------------------------------------------


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _int_or_name(text: str) -> int | str:
    """``"10"`` -> 10, ``"sqrt"`` -> ``"sqrt"`` (for options such as ``--bins 10 | sqrt``)."""
    return int(text) if text.strip().lstrip("-").isdigit() else text


def _argument(f: dataclasses.Field, hint) -> tuple[list[str], dict]:
    """``add_argument`` args for one option, from its annotation and metadata."""
    kw: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"], **f.metadata.get("argparse", {})}
    flag = _flag(f)
    args = typing.get_args(hint)
    if _is_union(hint):
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
        if int in rest and all(a is int or a is str or typing.get_origin(a) is Literal for a in rest):
            kw.setdefault("type", _int_or_name)  # e.g. --bins 10 | sqrt
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        # "%(default).0s" prints nothing: "(default: True)" would misread for a --no-... flag.
        kw["help"] += "%(default).0s"
        if f.default is True:
            return ["--no-" + flag[2:]], {
                **kw,
                "action": "store_false",
                "help": "do not " + kw["help"][0].lower() + kw["help"][1:],
            }
        return [flag], {**kw, "action": "store_true"}
    if origin in (list, tuple):
        kw.setdefault("nargs", "+")
        kw.setdefault("type", args[0] if args and args[0] in (int, float, str) else str)
    elif origin is Literal:
        kw.setdefault("choices", args)
    elif hint in (int, float, str):
        kw.setdefault("type", hint)
    kw["default"] = f.default
    return [flag], kw


def build_parser(kind: type[CommonOptions], prog: str, description: str, default_out: str) -> argparse.ArgumentParser:
    """The command-line parser of an ``Options`` class: the recipe's own options first."""
    parser = ArgumentParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(kind)
    model = {f.name for f in dataclasses.fields(ModelOptions)} - {f.name for f in dataclasses.fields(CommonOptions)}
    common = {f.name for f in dataclasses.fields(CommonOptions)}
    fields = [f for f in dataclasses.fields(kind) if f.metadata.get("cli", True)]
    # the recipe's own options first, then --model/--device, then --seed/--out/... (sorted is stable)
    for f in sorted(fields, key=lambda f: 2 if f.name in common else 1 if f.name in model else 0):
        flags, kw = _argument(f, hints[f.name])
        if f.name == "out":
            kw["default"] = default_out
        parser.add_argument(*flags, **kw)
    return parser


def parse_options(kind: type[OptionsT], argv: list[str], prog: str, description: str, default_out: str) -> OptionsT:
    """Options from a command line (``--help`` prints every option with its default)."""
    ns = build_parser(kind, prog, description, default_out).parse_args(argv)
    values = vars(ns)
    for f in dataclasses.fields(kind):
        if isinstance(f.default, tuple) and isinstance(values.get(f.name), list):
            values[f.name] = tuple(values[f.name])
    return kind(**values)


def main(module, argv: list[str], prog: str, default_out: str | None = None) -> RecipeResult:
    """Parse ``argv`` into ``module.Options`` and run ``module.run``."""
    out = default_out or f"tlprobe-out/{module.NAME}"
    return module.run(parse_options(module.Options, argv, prog, module.DESCRIPTION, out))


def script_main(module, argv: list[str] | None = None) -> int:
    """Entry point of a recipe file run as a script (``python my_recipe.py --help``).

    Recipes end with::

        if __name__ == "__main__":
            raise SystemExit(script_main(sys.modules[__name__]))

    A copy's default output folder is ``tlprobe-out/<file name>``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    script = pathlib.Path(sys.argv[0])

    def go() -> int:
        main(module, argv, prog=script.name, default_out=f"tlprobe-out/{script.stem}")
        return 0

    return guarded(go, debug)


# -- set-up and outputs ----------------------------------------------------------------------


class Timer:
    """Named wall-clock timings, for the report (not ``results.json``, which must be reproducible)."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self._t, 2)
        self._t = now

    def as_params(self) -> dict[str, str]:
        return {f"time: {k}": f"{v:.2f} s" for k, v in self.times.items()}


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on (and of those that draw the report)."""
    out = {}
    for pkg in ("tlprobe", "transformer-lens", "torch", "transformers", "plotly", "circuitsvis"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass(frozen=True, eq=False)
class RecipeResult(Result):
    """What a recipe run gives back: its results, options and facts, and the report.

    ``results.json`` is :meth:`~tlprobe.result.Result.save` of this object, so
    ``tlprobe.load("results.json")`` gives it back (without the report and paths).

    Attributes:
        recipe: the recipe's name.
        params: the options that shape the numbers (the same keys as the report's table).
        facts: what the run found about its inputs (model, sample counts, positions, ...).
        results: the analyses' results by name.
        findings: the lesson's claims checked on this run (:class:`~tlprobe.findings.Finding`),
            in the order the report's Findings table shows them.
        report: the report (not saved in ``results.json``).
        run_id: a digest of the results (:meth:`digest`), shown in the report too, so a report and
            its ``results.json`` can be matched.
        paths: the files written (``report``, ``results``, ``figures``); empty with ``out=None``.
    """

    recipe: str
    params: dict[str, Any]
    facts: dict[str, Any]
    results: dict[str, Result]
    findings: list[Finding] = field(default_factory=list)
    run_id: str = ""
    report: Report | None = field(default=None, metadata={"save": False})
    paths: dict[str, pathlib.Path] = field(default_factory=dict, metadata={"save": False})

    def digest(self) -> str:
        """A digest of the saved content (without ``run_id``): the run id that the report and
        ``results.json`` both show. Runs with the same options and model give the same id."""
        data = {k: v for k, v in self.to_dict().items() if k != "run_id"}
        text = json.dumps(jsonable(data), sort_keys=True, allow_nan=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def figures(self) -> list:
        """The report's plotly figures, in order: copies, so restyling one leaves the report as it is."""
        return [go.Figure(fig) for _name, fig in self.report.figures()] if self.report is not None else []

    def rows(self) -> list[dict]:
        return [{"result": k, "type": type(v).__name__} for k, v in self.results.items()]

    def _repr_html_(self) -> str:
        """In a notebook: recipe, model and run id, its results, the files written, the main figure."""
        return recipe_html(self)


class Run:
    """One recipe run under way: the loaded model (if any), the options, a timer.

    Made by :func:`setup`; :meth:`finish` writes the outputs and returns the :class:`RecipeResult`.
    """

    def __init__(self, name: str, options: CommonOptions):
        self.name = name
        self.options = options
        self._model: Any = None
        self._info: ModelInfo | None = None
        self.timer = Timer()

    @property
    def model(self) -> Any:
        """The model (a TransformerLens model)."""
        if self._model is None:
            raise TlprobeError(f"recipe {self.name} runs no model (its options are not ModelOptions)")
        return self._model

    @property
    def info(self) -> ModelInfo:
        """What tlprobe knows about the model (family, layers, heads, ...)."""
        if self._info is None:
            raise TlprobeError(f"recipe {self.name} runs no model (its options are not ModelOptions)")
        return self._info

    def lap(self, name: str) -> None:
        """Record the time since the previous lap under ``name`` (shown in the report)."""
        self.timer.lap(name)

    def finish(
        self,
        report: Report,
        results: Mapping[str, Result],
        facts: Mapping[str, Any] | None = None,
        findings: list[Finding] | None = None,
    ) -> RecipeResult:
        """Add the findings and parameter tables to the report, write ``report.html`` and ``results.json``.

        The findings open the report; on the terminal (unless ``quiet``) one line each follows
        the paths of the files written.

        Both files go to the options' ``out`` folder (nothing is written when it is ``None`` and
        the recipe was called from Python with ``out=None``); with ``png``, every figure is also
        written to ``out/figures/NAME.png`` in one browser session.
        """
        found: dict[str, Any] = dict(facts or {})
        if self._info is not None:
            found = {"model": self._info.to_dict(), **found}
        found = jsonable(found)  # plain data, so the loaded results.json equals this result
        params = self.options.record()
        report.params(params, caption="Options (as in results.json's params)")
        shown = {k: v for k, v in found.items() if k != "model"}
        if self._info is not None:  # the model in three lines; all its fields are in results.json
            info = self._info
            shown = {"model": info.name, "family": info.family, "numerics": info.numerics, **shown}
        report.params({**_flat_facts(shown), **versions(), **self.timer.as_params()}, caption="Run facts")
        findings = list(findings or [])
        report.findings(findings)
        result = RecipeResult(
            recipe=self.name, params=params, facts=found, results=dict(results), findings=findings, report=report
        )
        result = dataclasses.replace(result, run_id=result.digest())
        report.run_id = result.run_id
        out = self.options.out
        if out is None or not is_rank_zero():  # under torch.distributed only rank 0 writes
            return result
        quiet, png = self.options.quiet, self.options.png
        figures = report.figures() if png else []

        def write(staging: pathlib.Path) -> None:
            result.save(staging / "results.json")
            report.write(staging / "report.html")
            if figures:
                from tlprobe.report.png import export_png  # needs kaleido, an optional dependency

                export_png(figures, staging / "figures")

        paths = write_outputs(pathlib.Path(out), write, force=self.options.force)
        if not quiet:
            print(f"report: {paths['report']} ({human_size(paths['report'].stat().st_size)}, run {result.run_id})")
            print(f"results: {paths['results']}")
            if figures:
                print(f"figures: {len(figures)} PNG in {pathlib.Path(out) / 'figures'}")
            if findings:
                print(f"findings ({summary(findings)}):")
                for f in findings:
                    print("  " + f.line())
        return dataclasses.replace(result, paths=paths)


def _flat_facts(facts: Mapping[str, Any]) -> dict[str, Any]:
    """Facts for the report's table: nested dicts flattened (``model: name``), long lists counted."""
    out: dict[str, Any] = {}
    for k, v in facts.items():
        if isinstance(v, Mapping):
            out.update({f"{k}: {kk}": vv for kk, vv in _flat_facts(v).items()})
        elif isinstance(v, (list, tuple)) and len(v) > 12:
            out[k] = f"{len(v)} values (see results.json)"
        else:
            out[k] = v
    return out


def setup(name: str, options: CommonOptions) -> Run:
    """Start a run: seed torch's global generator with ``options.seed`` (which also fixes any
    randomly initialised weights of a model loaded here), then load the model (a name, a
    directory or a loaded model) and its info. Every random draw of a recipe still takes its own
    seeded generator; the global seed is a guard, not the source of its randomness."""
    rank, _ = init_distributed()  # under torchrun: join the process group; rank 0 writes the outputs
    if options.out is not None and rank == 0:  # before the model loads: a bad folder fails now
        check_out_dir(options.out, force=options.force)
    torch.manual_seed(options.seed)
    run = Run(name, options)
    if isinstance(options, ModelOptions):
        model = options.model
        if not isinstance(model, str) and options.device is not None:
            _check_loaded_device(model, options.device)
        if isinstance(model, str):
            kwargs: dict[str, Any] = {} if options.device_map is None else {"device_map": options.device_map}
            device = options.device if options.device is not None or options.device_map else local_device()
            model = load_model(model, device=device, **kwargs)
        elif options.device_map is not None:
            raise TlprobeError("--device-map places a model while it loads; a loaded model stays where it is")
        run._model = model
        run._info = model_info(run._model)
        run.lap("load model")
    return run


def _check_loaded_device(model, device: str) -> None:
    """A loaded model stays where it is: ``device=`` must name its device (or be left out)."""
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if params is None:
        return  # not a torch model: model_info refuses it with its own message
    want, here = check_device(device), params.device
    assert want is not None
    if want.type != here.type or (want.index is not None and want.index != here.index):
        raise TlprobeError(
            f"device={device!r} but the loaded model is on {here}; a recipe does not move your model: "
            f"leave device out, or move it first (model.to({device!r}))"
        )


# -- data shipped with the recipes -----------------------------------------------------------


def data_path(filename: str) -> pathlib.Path:
    """A data file shipped with the recipes (``tlprobe/recipes/data/``)."""
    return pathlib.Path(str(resources.files("tlprobe.recipes").joinpath("data", filename)))


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a UTF-8 text file (a byte-order mark is dropped), skipping ``#`` comments.

    Raises:
        TlprobeError: the file is missing, a folder, unreadable, or not UTF-8 (the message names
            the file, the offending byte and how to convert it).
    """
    p = pathlib.Path(path).expanduser()
    if p.is_dir():
        raise TlprobeError(f"{p} is a folder; pass a text file with one sentence per line")
    if not p.is_file():
        raise TlprobeError(f"file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1].hex()
        raise TlprobeError(
            f"{p} is not UTF-8 text (byte 0x{bad} at offset {exc.start}); save it as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {p} > {p.stem}-utf8{p.suffix}"
        ) from None
    except OSError as exc:
        raise TlprobeError(f"cannot read {p} ({exc.strerror or exc}); check the path and its permissions") from exc
    lines = [ln.strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def prose(name: str) -> dict[str, str]:
    """A recipe's lesson text (``tlprobe/recipes/data/<module>.toml``): what each section shows, what the lesson found.

    Values are templates for ``str.format`` (``{target}``, ``{n_sentences}``, ...).
    """
    path = data_path(name.replace("-", "_") + ".toml")
    if not path.is_file():
        raise TlprobeError(f"no lesson text for recipe {name!r} ({path})")
    with path.open("rb") as fh:
        return {k: str(v).strip() for k, v in tomllib.load(fh).items()}


@dataclass(frozen=True)
class TargetOptions(ModelOptions):
    """Options of the recipes about one word across many sentences."""

    target: str = option("her", doc="the target word")
    sentences: str | None = option(
        None,
        doc="text file, one sentence per line, each containing the target (default: 48 bundled sentences for 'her')",
    )


#: Fewest sentences a target-word recipe accepts (similarity across samples needs a spread).
MIN_SENTENCES = 10


def target_sentences(path: str | os.PathLike | None, what: str) -> list[str]:
    """The sentences of ``--sentences`` (default: the bundled ones), at least :data:`MIN_SENTENCES`."""
    prompts = read_lines(path or data_path("her_sentences.txt"))
    check_min_samples(len(prompts), MIN_SENTENCES, what, "give more sentences containing the target (--sentences FILE)")
    distinct = len(set(prompts))
    if distinct < MIN_SENTENCES:
        raise TlprobeError(
            f"only {distinct} distinct sentences among the {len(prompts)} given ({len(prompts) - distinct} are "
            f"repeats): a repeated sentence gives the target the same vectors again, so {what} needs at least "
            f"{MIN_SENTENCES} different sentences; add different sentences containing the target"
        )
    return prompts


def target_positions(model, tokens, mask, prompts: list[str], target: str, seed: int) -> tuple[Positions, Positions]:
    """The target in each sentence, and one random earlier token (seeded): ``(target, non-target)``."""
    tpos = find_token_positions(model.tokenizer, tokens, target, mask, prompts=prompts)
    npos = sample_positions(mask, tpos, tokens, model.tokenizer, where="before", seed=seed)
    return tpos, npos


@dataclass
class TargetActivations:
    """A target-word run's activations at two positions of every sentence, gathered batch by batch.

    Only ``[n, 1, ...]`` rows are kept (the target, and one random earlier token), never the
    ``[sentences, pos, ...]`` activations of the whole run, so memory grows with the number of
    sentences, not with sentences x tokens x hooks.

    Attributes:
        tokens: ``[batch, pos]`` token ids of every sentence (right-padded).
        attention_mask: ``[batch, pos]``.
        target_positions, non_target_positions: where the rows were taken.
        target, non_target: ``ActivationCache`` objects whose hooks are ``[n, 1, ...]`` (the
            position axis kept, of length 1), so ``fused_qkv(acts.target, layer)[:, 0]`` works.
        first: a :class:`~tlprobe.access.run.Batch` of the first sentence with ``view_names``
            (e.g. attention patterns for a circuitsvis view).
    """

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    target_positions: Positions
    non_target_positions: Positions
    target: Any
    non_target: Any
    first: Batch


def gather_targets(
    model,
    prompts: list[str],
    target: str,
    names: list[str],
    seed: int,
    progress: bool,
    *,
    view_names: list[str] | None = None,
    batch_size: int = 32,
) -> TargetActivations:
    """Run the sentences; keep the hooks in ``names`` at the target and at a random earlier token.

    ``names`` are hooks with a position axis after the batch axis (q, k, v, residual stream, ...);
    attention patterns go in ``view_names``, cached for the first sentence only.
    """
    tokens, mask = tokenize_prompts(model, prompts)
    tpos, npos = target_positions(model, tokens, mask, prompts, target, seed)  # before any forward pass
    kept = gather_rows(
        model, tokens, mask, {"target": tpos, "non_target": npos}, names, progress=progress, batch_size=batch_size
    )
    first = run_batch(model, prompts[:1], names=view_names or [])
    return TargetActivations(
        tokens=tokens,
        attention_mask=mask,
        target_positions=tpos,
        non_target_positions=npos,
        target=kept["target"],
        non_target=kept["non_target"],
        first=first,
    )


def gather_rows(
    model,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    positions: Mapping[str, Positions],
    names: list[str],
    *,
    progress: bool = False,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Run ``tokens`` batch by batch and keep the hooks in ``names`` at each set of positions only.

    Args:
        model: a TransformerLens model.
        tokens, mask: ``[batch, pos]`` token ids and attention mask of every prompt.
        positions: name -> :class:`~tlprobe.access.tokens.Positions` (prompt, position) pairs.
        names: hooks with a position axis after the batch axis (q, k, v, residual stream, ...).
        progress: a progress bar over the batches (when there are several).
        batch_size: prompts per forward pass.

    Returns:
        name -> ``ActivationCache`` whose hooks are ``[n, 1, ...]`` (the rows of that set, in its
        order, the position axis kept with length 1), so the hook getters work on it. Memory
        grows with the rows kept, not with prompts x tokens x hooks.
    """
    from transformer_lens import ActivationCache  # ~3 s to import: only when a model runs

    kept: dict[str, dict[str, torch.Tensor]] = {which: {} for which in positions}
    starts = range(0, int(tokens.shape[0]), batch_size)
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm  # only for multi-batch runs with a progress bar

        starts = tqdm(starts, desc="forward", unit="batch")
    with torch.no_grad():
        for s in starts:
            e = min(int(tokens.shape[0]), s + batch_size)
            cache = forward_cache(model, tokens[s:e], mask[s:e], names=list(names))
            for which, pos in positions.items():
                rows = ((pos.batch >= s) & (pos.batch < e)).nonzero().flatten()
                for k in cache.keys():
                    x = cache[k]
                    if k not in kept[which]:
                        kept[which][k] = x.new_empty((len(pos), 1, *x.shape[2:]))
                    got = x[pos.batch[rows].to(x.device) - s, pos.pos[rows].to(x.device)]
                    kept[which][k][rows.to(x.device)] = got.unsqueeze(1)
            del cache
    return {which: ActivationCache(rows, model) for which, rows in kept.items()}
