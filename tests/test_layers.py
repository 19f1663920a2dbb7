"""The package's layers point one way (STYLE.md, "Where things go"): nothing outside the interfaces (`siso.cli`,
`siso.app`) and the harnesses (`siso.eval`, `siso.bench`) imports them, `siso.config` imports nothing of siso but
itself and `siso.io`, and no modules import each other in a cycle.

Every import counts, at module level or inside a function (a lazy import is a cycle all the same when it reaches
up); only ``if TYPE_CHECKING:`` blocks, which never run, are left aside.
"""

import ast
from pathlib import Path

import siso

PACKAGE = Path(siso.__path__[0])
TOP = ("siso.eval", "siso.bench", "siso.app", "siso.cli")
LEAF = "siso.config"
LEAF_MAY_IMPORT = ("siso.config", "siso.io")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.AST) -> set[str]:
    """The siso modules (and ``module.name`` for each name taken from one) imported anywhere in ``tree``, the
    bodies of ``if TYPE_CHECKING:`` aside."""
    imported = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("siso") and not node.level:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name.startswith("siso"))
        stack.extend(ast.iter_child_nodes(node))
    return imported


def _imports() -> dict[str, set[str]]:
    """Module -> the siso modules it imports, at module level or inside a function."""
    paths = list(PACKAGE.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    graph = {}
    for path in paths:
        name = _module_name(path)
        imported = _imported_names(ast.parse(path.read_text()))
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_imports_inside_functions_are_read():
    tree = ast.parse(
        "import siso.devices\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from siso.cli import main\n"
        "def f():\n    from siso.app.studio import Studio\n"
        "class C:\n    def g(self):\n        if True:\n            import siso.eval.score\n"
    )
    assert _imported_names(tree) == {"siso.devices", "siso.app.studio", "siso.app.studio.Studio", "siso.eval.score"}


def test_lower_layers_never_import_the_interfaces_or_the_harnesses():
    wrong = [
        (module, imported)
        for module, imports in _imports().items()
        if not any(_inside(module, top) for top in TOP) and module != "siso.__main__"  # (the command itself)
        for imported in imports
        if any(_inside(imported, top) for top in TOP)
    ]
    assert wrong == []


def test_config_is_a_leaf():
    wrong = [
        (module, imported)
        for module, imports in _imports().items()
        if _inside(module, LEAF)
        for imported in imports
        if not any(_inside(imported, allowed) for allowed in LEAF_MAY_IMPORT)
    ]
    assert wrong == []


def test_no_import_cycle():
    """No import leads back to the module that makes it, except along one package's own line (a package's
    ``__init__`` importing its modules, and they it): each module's own imports are what count."""
    graph = _imports()

    def path_between(start: str, goal: str) -> list[str] | None:
        seen, stack = {start}, [[start]]
        while stack:
            path = stack.pop()
            if path[-1] == goal:
                return path
            for imported in sorted(graph.get(path[-1], ()), reverse=True):
                if imported not in seen:
                    seen.add(imported)
                    stack.append([*path, imported])
        return None

    cycles = []
    for module in sorted(graph):
        for imported in sorted(graph[module]):
            if _inside(module, imported) or _inside(imported, module):
                continue  # a package and its own module: a cycle of concern has another edge
            back = path_between(imported, module)
            if back is not None:
                cycles.append([module, *back])
    assert cycles == []
