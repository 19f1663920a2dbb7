"""The package's layers point one way: nothing outside the interfaces (`siso.cli`, `siso.app`) and the harnesses
(`siso.eval`, `siso.bench`) imports them at module level, and no modules import each other in a cycle."""

import ast
from pathlib import Path

import siso

PACKAGE = Path(siso.__path__[0])
TOP = ("siso.eval", "siso.bench", "siso.app", "siso.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports() -> dict[str, set[str]]:
    """Module -> the siso modules it imports when it is imported (function bodies and TYPE_CHECKING blocks aside)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        imported = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            for stmt in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
                if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.module.startswith("siso"):
                    imported.add(stmt.module)
                    imported.update(f"{stmt.module}.{alias.name}" for alias in stmt.names)
                elif isinstance(stmt, ast.Import):
                    imported.update(alias.name for alias in stmt.names if alias.name.startswith("siso"))
        modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_lower_layers_never_import_the_interfaces_or_the_harnesses():
    wrong = [
        (module, imported)
        for module, imports in _module_level_imports().items()
        if not any(_inside(module, top) for top in TOP) and module != "siso.__main__"  # (the command itself)
        for imported in imports
        if any(_inside(imported, top) for top in TOP)
    ]
    assert wrong == []


def test_no_import_cycle():
    graph = _module_level_imports()
    state: dict[str, str] = {}
    cycles = []

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # A package's __init__ importing its own modules is not a cycle of concern: each module's own imports are.
    cycles = [c for c in cycles if not all(_inside(m, c[0]) or _inside(c[0], m) for m in c)]
    assert cycles == []
