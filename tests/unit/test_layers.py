"""The import graph of the package shows its layers.

- ``paxoskv.client`` and ``paxoskv.server`` never import each other, by any
  chain of imports inside the package: they meet in ``paxoskv.wire``.
- The pure layers (``PURE``) and everything they import inside the package
  import nothing that does I/O, keeps time, runs threads or draws global
  randomness (only ``random.Random``, seeded and passed in).

The graph is read from the source (``ast``), every import statement counted,
at module level or inside a function; importing ``a.b.c`` also runs ``a.b``.
"""

from __future__ import annotations

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[2] / "pkg"

PURE = ("paxoskv.paxos", "paxoskv.kv", "paxoskv.replica")
FORBIDDEN_IN_PURE = frozenset(
    {
        "asyncio", "concurrent", "grpc", "os", "plyvel", "select", "selectors", "signal",
        "socket", "subprocess", "threading", "time", "uuid", "zmq",
    }
)


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parse_all() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted((PKG / "paxoskv").rglob("*.py"))}


MODULES = _parse_all()


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imports_of(module: str) -> set[str]:
    """Every module ``module`` imports (absolute names, parents included)."""
    is_package = (PKG / module.replace(".", "/") / "__init__.py").exists()
    out: set[str] = set()
    for node in ast.walk(MODULES[module]):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            out.update(n for n in _with_parents(name) if n)
    return out


def internal_closure(module: str) -> set[str]:
    """``module`` and every module of the package it reaches by imports."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or m not in MODULES:
            continue
        seen.add(m)
        todo.extend(imports_of(m))
    return seen


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_is_read_right():
    """The reader finds imports at module level, in functions, relative ones
    and parents (so the checks below can fail)."""
    assert {"paxoskv.client", "paxoskv.client.client", "paxoskv.wire"} <= imports_of("paxoskv.client.cli")
    assert "paxoskv.server.node" in imports_of("paxoskv.server.cli")  # imported inside _serve
    assert "paxoskv.paxos.types" in internal_closure("paxoskv.paxos.core")
    assert "random" in imports_of("paxoskv.paxos.core")


def test_client_and_server_do_not_import_each_other():
    for name in MODULES:
        for other, this in (("paxoskv.server", "paxoskv.client"), ("paxoskv.client", "paxoskv.server")):
            if under(name, this):
                reached = sorted(m for m in internal_closure(name) if under(m, other))
                assert not reached, f"{name} reaches {reached}"


def test_the_pure_layers_do_no_io_keep_no_time_and_draw_no_global_randomness():
    pure = [m for m in MODULES if any(under(m, p) for p in PURE)]
    assert len(pure) >= 5
    for name in pure:
        for reached in sorted(internal_closure(name)):
            external = {n.split(".")[0] for n in imports_of(reached)} & FORBIDDEN_IN_PURE
            assert not external, f"{name} reaches {reached}, which imports {sorted(external)}"
            for node in ast.walk(MODULES[reached]):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "random":
                    assert node.attr == "Random", f"{reached} uses random.{node.attr}"
                if isinstance(node, ast.ImportFrom) and node.module == "random":
                    assert [a.name for a in node.names] == ["Random"], f"{reached} imports {ast.dump(node)}"
