"""The package's shape, checked: imports run one way, modules stay importable alone, functions stay short.

The import graph is read from the source (``ast``), every ``from .x import y`` and ``import hpm.x`` at any
depth, deferred imports inside functions included: a cycle through a deferred import is still a cycle.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpm"
MAX_FUNCTION_LINES = 60

# Each module may import only modules of its own layer or of layers listed before it.
LAYERS = [
    {"hpm.version", "hpm.errors", "hpm._compat", "hpm.units", "hpm.network", "hpm.devices", "hpm.rng", "hpm.progress",
     "hpm.memory", "hpm.callables"},
    {"hpm.heads", "hpm.data", "hpm.images", "hpm.sensitivity", "hpm.stages"},
    {"hpm.checkpoint", "hpm.model_card", "hpm.hub", "hpm.sources", "hpm.plots", "hpm.samples"},
    {"hpm.model", "hpm.mixed", "hpm.nuts", "hpm.defence"},
    {"hpm.attacks", "hpm.train"},
    {"hpm.evaluation"},
    {"hpm.publish", "hpm.interactive"},
    {"hpm.webapp"},
    {"hpm.cli", "hpm"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """The hpm modules ``name`` imports (resolved to the module, not the imported attribute)."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in modules().items()}


def layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer or any(name.startswith(group + ".") for group in layer if group != "hpm"):
            return i
    raise AssertionError(f"{name} is in no layer of LAYERS: place it")


def test_the_import_graph_has_no_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(g):
        if name not in state:
            visit(name, [name])


def test_imports_run_one_way_through_the_layers():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in graph().items() for b in targets
              if layer_of(b) > layer_of(a) and not (a.startswith(b + ".") or b == "hpm.version")]
    assert not upward, "\n".join(upward)


def test_every_module_imports_first_and_alone():
    """Each module imported into an interpreter with no hpm module loaded yet (third-party modules stay
    cached, so this takes seconds): an import-order dependency fails here."""
    script = ("import importlib, sys\n"
              "for name in sys.argv[1:]:\n"
              "    for loaded in [m for m in sys.modules if m == 'hpm' or m.startswith('hpm.')]:\n"
              "        del sys.modules[loaded]\n"
              "    importlib.import_module(name)\n")
    names = [n for n in sorted(modules()) if not n.endswith("__main__")]
    result = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)




def test_the_wheel_lists_every_subpackage_and_carries_the_shipped_checkpoints():
    import tomllib
    setuptools = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    subpackages = {module_name(p.parent) for p in PACKAGE.rglob("__init__.py")}
    assert set(setuptools["packages"]) == subpackages | {"hpm.checkpoints", "hpm.assets"}
    assert setuptools["package-dir"] == {"hpm.checkpoints": "checkpoints", "hpm.assets": "assets"}


def test_importing_the_app_writes_no_file_into_the_package():
    """Gradio writes a .pyi stub beside any module that subclasses one of its components; an installed package
    may be read-only, and a stub would shadow the module for type checkers."""
    subprocess.run([sys.executable, "-c", "import hpm.webapp"], check=True, capture_output=True,
                   cwd=PACKAGE.parent)
    assert sorted(PACKAGE.parent.glob("*.pyi")) + sorted(PACKAGE.rglob("*.pyi")) == []
