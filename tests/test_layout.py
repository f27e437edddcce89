"""The package's structure as a user of the code relies on it: one import direction, no
circles, a configuration that loads without torch, numpydoc on every public object, and
functions short enough to read (or a reason in their docstring)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pausdenoise"
MAX_BODY_LINES = 60
LONG_REASON = "Kept as one function:"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_public_module(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


def _imports(name: str, path: Path) -> set[str]:
    """Package modules that ``name`` imports, at any level of its code."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t in MODULES and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    return {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_config_imports_without_torch():
    """Reading the configuration classes needs no torch, GalSim or dask-cuda; only the
    chunking check of a loaded configuration builds the networks to derive their halos."""
    code = (
        "import sys, pausdenoise.config as c; "
        "c.PipelineConfig.model_fields; "
        "bad = [m for m in ('torch', 'galsim', 'dask_cuda') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _public_functions(tree: ast.Module):
    """(qualified name, node) of public module-level functions and public-class methods."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if not node.name.startswith("_"):
                yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and not (
                    sub.name.startswith("_")
                ):
                    decos = {ast.unparse(d).split("(")[0] for d in sub.decorator_list}
                    if decos & {"property", "cached_property", "functools.cached_property"}:
                        continue
                    if any(d.endswith("setter") for d in decos):
                        continue
                    yield f"{node.name}.{sub.name}", sub


def _arguments(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
    if a.vararg:
        names.append(a.vararg.arg)
    if a.kwarg:
        names.append(a.kwarg.arg)
    return [n for n in names if n not in ("self", "cls")]


def _docstring_problems(name: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    problems = []
    if not ast.get_docstring(tree):
        problems.append(f"{name}: no module docstring")
    for qual, fn in _public_functions(tree):
        doc = ast.get_docstring(fn) or ""
        if not doc:
            problems.append(f"{name}.{qual}: no docstring")
            continue
        if _arguments(fn) and "Parameters\n----------" not in doc:
            problems.append(f"{name}.{qual}: no Parameters section")
    return problems


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _is_public_module(n)))
def test_public_functions_have_numpydoc_parameters(name):
    assert _docstring_problems(name, MODULES[name]) == []


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body
        doc = ast.get_docstring(node) or ""
        if doc and isinstance(body[0], ast.Expr):
            body = body[1:]
        if not body:
            continue
        n = body[-1].end_lineno - body[0].lineno + 1
        if n > MAX_BODY_LINES and LONG_REASON not in doc:
            out.append(f"{node.name} ({n} lines)")
    return out


@pytest.mark.parametrize("name", sorted(MODULES))
def test_functions_are_short_or_say_why(name):
    assert _long_functions(MODULES[name]) == []


def _uncommented_local_imports(path: Path) -> list[str]:
    """Function-local imports without a comment (same or previous line) saying why."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import | ast.ImportFrom):
                line, prev = lines[sub.lineno - 1], lines[sub.lineno - 2]
                if "#" not in line and not prev.strip().startswith("#"):
                    out.append(f"line {sub.lineno}: {line.strip()}")
    return sorted(set(out))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_function_local_imports_say_why(name):
    """Imports belong at the top of a module; one inside a function is for an optional or
    heavy dependency kept off a light import path, and a comment says which."""
    assert _uncommented_local_imports(MODULES[name]) == []
