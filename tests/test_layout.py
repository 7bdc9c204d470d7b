"""The package layout stays a DAG with one home per job.

* every module of `specfair` and `specfair_kernels` imports alone in a fresh interpreter,
  and all of them import together in shuffled orders (a cycle hidden behind a late import
  fails one of these);
* the import graph, read from the source (imports inside functions included), has no cycle,
  and no module takes a private name (``_x``) from another module;
* no module is over 500 lines (but the Triton op files, see LONG_MODULES_ALLOWED), and no
  function of `specfair` over 80 lines of code.
"""
from __future__ import annotations

import ast
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"specfair": ROOT / "python" / "specfair", "specfair_kernels": ROOT / "specfair_kernels"}
MAX_MODULE_LINES = 500
# One Triton op per file, in DESIGN.md's fixed order (constants, @triton.jit kernels and the
# device helpers only they call, the launcher, its work model, the thin API): a kernel file is
# one job however long its device code is, and splitting it would separate a kernel from the
# helpers it inlines.
LONG_MODULES_ALLOWED = {"specfair_kernels.ops.verify", "specfair_kernels.ops.divergence"}
MAX_FUNCTION_LINES = 80
FUNCTION_LIMIT_PACKAGES = ("specfair",)
# Entry points run as scripts (importing them runs them), so they are not imported alone.
SCRIPTS = {"specfair.__main__"}
# Compiled extension modules (private by PyTorch's `_C` convention): importing one is
# importing a module, not taking a private name from one.
EXTENSIONS = {"specfair_kernels._C"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name an ImportFrom refers to, from inside ``module``."""
    if node.level == 0:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                # `from . import corpus` imports a module; `from .x import name` takes a name.
                out.append((sub, []) if sub in MODULES or sub in EXTENSIONS else (target, [a.name]))
    return out


def _internal(name: str) -> str | None:
    """The project module an imported name lives in (a parent package for a submodule
    attribute), or None for third-party modules."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _ in _imports(m):
            t = _internal(target)
            if t is not None and t != m:
                graph[m].add(t)
    return graph


def test_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            # a module may import its own package (__init__), which never imports it back eagerly
            if m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(n) is None:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_private_names_taken_across_modules():
    bad = []
    for m in MODULES:
        tree = ast.parse(MODULES[m].read_text(encoding="utf-8"))
        aliases = {}
        for target, names in _imports(m):
            t = _internal(target)
            if t is None or t == m:
                continue
            bad += [f"{m}: from {t} import {n}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
        for node in ast.walk(tree):   # `import pkg.mod as x` / `from pkg import mod as x`, then x._private
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    full = a.name if isinstance(node, ast.Import) else f"{_resolve(m, node)}.{a.name}"
                    if full in MODULES and full != m:
                        aliases[a.asname or a.name.split(".")[0]] = full
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{m}: {aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(sorted(set(bad)))


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=_env())


def _env():
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'python'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def test_every_module_imports_alone_in_a_fresh_interpreter():
    mods = [m for m in MODULES if m not in SCRIPTS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda m: (m, _run(f"import {m}")), mods))
    failed = [f"{m}:\n{r.stderr[-1500:]}" for m, r in results if r.returncode != 0]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("seed", [0, 1])
def test_all_modules_import_in_shuffled_order(seed):
    mods = sorted(m for m in MODULES if m not in SCRIPTS)
    random.Random(seed).shuffle(mods)
    r = _run("import importlib\nfor m in %r:\n    importlib.import_module(m)" % mods)
    assert r.returncode == 0, r.stderr[-3000:]


def test_no_module_over_500_lines():
    long = {m: n for m, p in MODULES.items() if m not in LONG_MODULES_ALLOWED
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function from its ``def`` to its end, without its docstring."""
    n = fn.end_lineno - fn.lineno + 1
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        n -= body[0].end_lineno - body[0].lineno + 1
    return n


def test_no_function_over_80_lines():
    long = []
    for m, p in MODULES.items():
        if m.split(".")[0] not in FUNCTION_LIMIT_PACKAGES:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{m}.{node.name}: {_code_lines(node)} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines of code (docstrings excluded):\n" + "\n".join(long)


def test_the_checks_see_the_project():
    """The checks above are not vacuous: they find the modules and the edges between them."""
    assert {"specfair.cli", "specfair.models", "specfair_kernels.api", "specfair_kernels.ops.verify"} <= set(MODULES)
    graph = _graph()
    assert "specfair.models" in graph["specfair.generator"]
    assert "specfair_kernels.backends" in graph["specfair_kernels.api"]
