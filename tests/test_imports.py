"""The package's imports run one way (issue 14): no cycle among the modules of ``core/`` or of
``server/``, core imports nothing above it, and no module of the package imports another's
private (``_underscore``) names.

Every import counts, also one inside a function (those run late, often only on a failure path,
so a cycle through them breaks only there) and one under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lib_mlx

ROOT = Path(lib_mlx.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(module imported, names taken from it)`` for every import statement in ``path``;
    ``from pkg import sub`` where ``sub`` is a module counts as importing ``pkg.sub``."""
    is_package = path.name == "__init__.py"
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            plain = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:
                    found.append((sub, []))
                else:
                    plain.append(alias.name)
            if plain:
                found.append((target, plain))
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def edges(prefix: str) -> dict[str, set[str]]:
    inside = {m for m in MODULES if m.startswith(prefix + ".")}
    return {m: {t for t, _ in GRAPH[m] if t in inside and t != m} for m in inside}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("package", ["lib_mlx.core", "lib_mlx.server"])
def test_no_import_cycle_inside(package: str) -> None:
    cycle = find_cycle(edges(package))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_core_imports_nothing_of_the_server_or_the_runtime() -> None:
    wrong = {
        (m, t)
        for m in MODULES
        if m.startswith("lib_mlx.core")
        for t, _ in GRAPH[m]
        if t.startswith(("lib_mlx.server", "lib_mlx.runtime", "lib_mlx.abi", "lib_mlx.cli"))
    }
    assert not wrong


def test_no_module_imports_another_modules_private_names() -> None:
    taken = sorted(
        f"{m} imports {n} from {t}"
        for m in MODULES
        for t, names in GRAPH[m]
        for n in names
        if n.startswith("_") and not n.startswith("__") and t != m and t.startswith("lib_mlx")
    )
    assert not taken, "\n".join(taken)


def test_the_checks_see_a_cycle_and_a_private_import() -> None:
    """The walker itself: a made-up cycle is found, and relative imports resolve."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    engine = {t for t, _ in GRAPH["lib_mlx.core.engine"]}
    assert {"lib_mlx.core.batching", "lib_mlx.core.single", "lib_mlx.errors"} <= engine
