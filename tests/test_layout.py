"""The house layout: layers import downward only, no cycles, no top-level ``recipes`` package,
``tlprobe ls`` without torch, every import inside a function says why."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tlprobe"

#: Layer of each part of the package: a module may import its own layer and the ones below.
LAYERS = {
    "tlprobe": 0,  # the lazy front door: it imports nothing when loaded (exports load on first use)
    "tlprobe.errors": 0,
    "tlprobe.checks": 0,
    "tlprobe.result": 0,
    "tlprobe.findings": 0,
    "tlprobe.access": 1,
    "tlprobe.testing": 2,
    "tlprobe.analyses": 2,
    "tlprobe.figures": 3,
    "tlprobe.report": 4,
    "tlprobe.recipes": 5,
    "tlprobe.cli": 6,
    "tlprobe.__main__": 7,
}


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = [p for p in path.relative_to(PACKAGE).with_suffix("").parts if p != "__init__"]
        found[".".join(["tlprobe", *parts])] = path
    return found


def layer(module: str) -> int:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return LAYERS[best]


def top_level_imports(path: pathlib.Path, module: str) -> set[str]:
    """tlprobe modules imported when ``module`` is imported (module level, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                out |= {a.name for a in sub.names if a.name.startswith("tlprobe")}
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - sub.level + 1] + ([base] if base else [])
                    )
                if base.startswith("tlprobe"):
                    out.add(base)
                    out |= {f"{base}.{a.name}" for a in sub.names if f"{base}.{a.name}" in MODULES}
    return {m for m in out if m in MODULES}


MODULES = modules()


def test_layers_import_downward_only():
    wrong = []
    for mod, path in MODULES.items():
        for dep in top_level_imports(path, mod):
            if layer(dep) > layer(mod):
                wrong.append(f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {mod: top_level_imports(path, mod) for mod, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d == m or (m.startswith(d + ".") and MODULES[d].name == "__init__.py"):
                continue  # a module importing its own package's __init__ is not a cycle of modules
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_imports_inside_functions_say_why():
    silent = []
    for path in MODULES.values():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    if not _says_why(lines, node.lineno - 1):
                        silent.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not silent, "imports inside functions need a comment saying why:\n" + "\n".join(silent)


def _says_why(lines: list[str], i: int) -> bool:
    """A comment on the import's line, on the line above, or on an import of the same block above it."""
    while i >= 0:
        line = lines[i].strip()
        if "#" in line:
            return True
        if i > 0 and lines[i - 1].strip().startswith(("from ", "import ", "#")):
            i -= 1
            continue
        return False
    return False


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_no_top_level_recipes_package_is_installed(tmp_path):
    code = "import importlib.util, tlprobe.recipes as r; print(importlib.util.find_spec('recipes'), r.RECIPES and 'ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "ok"]


def test_ls_does_not_import_torch(tmp_path):
    code = "import sys; from tlprobe.cli import main; main(['ls']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert "qkv-similarity" in out.stdout


@pytest.mark.parametrize("name", ["__version__"])
def test_version_in_one_place(name):
    import importlib.metadata

    import tlprobe

    assert getattr(tlprobe, name) == importlib.metadata.version("tlprobe")
    assert 'version = "' not in (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]
