"""The layers below the drivers are pure: the consensus core (paxoskv.paxos),
the state machine (paxoskv.kv) and the node layer (paxoskv.replica) import
nothing that does I/O, keeps time, starts threads or draws global
randomness -- directly or through any paxoskv module they import."""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "pkg"
FORBIDDEN = {
    "asyncio", "concurrent", "grpc", "os", "plyvel", "select", "selectors", "signal",
    "socket", "subprocess", "threading", "time", "uuid", "zmq",
}
PURE = ("paxoskv.paxos", "paxoskv.kv", "paxoskv.replica")


def _module_path(name: str) -> pathlib.Path | None:
    base = PKG.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _imports(path: pathlib.Path) -> tuple[set[str], list[str]]:
    """(modules imported, uses of the global random module's functions)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    random_uses: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "random":
            if node.attr != "Random":
                random_uses.append(node.attr)
    return names, random_uses


def _closure(package: str) -> dict[str, set[str]]:
    """Every module of ``package``, and every paxoskv module they import
    (and their parents' ``__init__``), -> what it imports."""
    root = _module_path(package)
    assert root is not None and root.name == "__init__.py", package
    todo = [package, *(f"{package}.{p.stem}" for p in root.parent.glob("*.py") if p.stem != "__init__")]
    seen: dict[str, set[str]] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_path(name)
        if path is None:
            continue  # a name imported from a module, not a module
        imported, _ = _imports(path)
        seen[name] = imported
        parts = name.split(".")
        todo.extend(".".join(parts[:k]) for k in range(2, len(parts)))  # parent packages run too
        todo.extend(m for m in imported if m.startswith("paxoskv."))
    return seen


@pytest.mark.parametrize("package", PURE)
def test_a_pure_layer_reaches_no_io_time_threads_or_global_randomness(package: str) -> None:
    for module, imported in sorted(_closure(package).items()):
        bad = {m for m in imported if m.split(".")[0] in FORBIDDEN}
        assert not bad, f"{module} (reached from {package}) imports {sorted(bad)}"
        path = _module_path(module)
        assert path is not None
        _, random_uses = _imports(path)
        assert not random_uses, f"{module} uses random.{random_uses[0]} (inject a random.Random)"


def test_the_checker_sees_a_forbidden_import() -> None:
    """The walk follows imports into other paxoskv modules: the server is
    reached from its package and found impure."""
    found = {
        m for module, imported in _closure("paxoskv.server").items()
        for m in imported if m.split(".")[0] in FORBIDDEN
    }
    assert {"asyncio", "zmq"} <= {m.split(".")[0] for m in found}
