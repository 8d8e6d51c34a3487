"""The package tree is the architecture: a layer imports only the layers below it, and no module imports
itself back through a cycle (docs/architecture.md lists the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nonsingular"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: Lower number = lower layer. A package may import packages of a strictly lower layer, and itself.
LAYERS = {
    "_version": 0,
    "threat": 0,
    "errors": 0,
    "formatting": 0,
    "runtime": 1,
    "datasets": 1,
    "properties": 1,
    "models": 2,
    "check": 3,
    "attacks": 4,
    "bounds": 5,
    "complete": 6,
    "evaluation": 6,
    "deployment": 7,
    "training": 7,
    "verification": 8,
    "study": 9,
    "cli": 10,
    "__init__": 11,
    "__main__": 11,
}


def _module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = SRC) -> set[str]:
    """Absolute names of the modules of `root`'s package that `path` imports, TYPE_CHECKING blocks included."""
    tree = ast.parse(path.read_text(), str(path))
    name = _module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    modules = _MODULES if root == SRC else _modules(root)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            for alias in node.names:  # `from . import x` may name a module rather than an attribute
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == root.name)
    return found


def _modules(root: Path = SRC) -> dict[str, Path]:
    return {_module_name(p, root): p for p in root.rglob("*.py")}


_MODULES = _modules()


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_top_level_part_has_a_layer():
    tops = {
        p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert tops <= set(LAYERS), f"add {sorted(tops - set(LAYERS))} to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_a_layer_imports_only_layers_below_it(module):
    path = _modules()[module]
    own = _top(module)
    for target in _imports(path):
        other = _top(target)
        if other == own or target == "nonsingular":
            continue
        if other not in LAYERS:  # `from .. import x` resolved to an attribute of the root, not a package
            continue
        assert LAYERS[other] < LAYERS[own], f"{module} (layer {own}) imports {target} (layer {other})"


@pytest.mark.parametrize("root", [SRC, BENCHMARKS], ids=["src", "benchmarks"])
def test_no_import_cycles_between_modules(root):
    modules = _modules(root)
    graph = {m: {t for t in _imports(p, root) if t in modules and t != m} for m, p in modules.items()}
    # A package __init__ re-exporting its submodules is not an edge back from them.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t]
                if not any(modules[c].name == "__init__.py" and t.startswith(c + ".") for c in cycle):
                    raise AssertionError("import cycle: " + " -> ".join(cycle))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_root_holds_few_modules():
    root = [p.stem for p in SRC.glob("*.py") if p.stem not in {"__init__", "__main__", "_version"}]
    assert len(root) <= 6, f"root modules: {sorted(root)}"
