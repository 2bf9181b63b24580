"""Which part of rain may import which, read from the source with ast (imports inside functions count too).

The stages stack up: rain.data and rain.model at the bottom, rain.train on them, rain.eval, rain.posttrain and
rain.export above, and rain.cli only on top, so a stage can be used, tested and changed without the ones above it.
Each failure lists every offending import as `file:line imports module`."""

import ast
from pathlib import Path

import networkx  # a dependency of torch

SRC = Path(__file__).resolve().parents[1] / "src"
STAGES = ("rain.data", "rain.model", "rain.train", "rain.eval", "rain.posttrain", "rain.export")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "rain").rglob("*.py"))}


def is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return isinstance(test, (ast.Name, ast.Attribute)) and ast.unparse(test).endswith("TYPE_CHECKING")


def imported_names(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The modules an import statement loads: `from rain.train import checkpoint` names rain.train.checkpoint
    when that is a module, else rain.train; relative imports are resolved against the importing module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = module if MODULES.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(max(node.level - 1, 0)):
        package = package.rpartition(".")[0]
    base = ".".join(filter(None, [package if node.level else "", node.module or ""]))
    return list(dict.fromkeys(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names))


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at import time) for every import in the module: at import time means not inside
    a function and not under `if TYPE_CHECKING:`."""
    found = []

    def visit(node: ast.AST, runs_on_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((name, child.lineno, runs_on_import) for name in imported_names(child, module))
            inside_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, runs_on_import and not inside_function and not is_type_checking_block(child))

    visit(ast.parse(MODULES[module].read_text(), str(MODULES[module])), True)
    return found


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def violations(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{MODULES[m].relative_to(SRC)}:{line} imports {name}"
            for m in MODULES if within(m, *importers)
            for name, line, _ in imports(m) if within(name, *forbidden)]


def assert_none(found: list[str]) -> None:
    assert not found, "\n".join(found)


def test_no_stage_imports_the_cli():
    # The CLI builds its parser from the stages (rain.cli.COMMANDS); shared options live in rain.commands_common.
    assert_none(violations(STAGES, ("rain.cli",)))


def test_train_imports_neither_eval_nor_export():
    assert_none(violations(("rain.train",), ("rain.eval", "rain.export")))


def test_model_and_data_import_no_later_stage():
    assert_none(violations(("rain.model", "rain.data"), ("rain.train", "rain.eval", "rain.posttrain", "rain.export")))


def import_time_cycles() -> list[str]:
    """One circle through each group of modules that import one another at import time."""
    graph = networkx.DiGraph()
    for module in MODULES:
        graph.add_edges_from((module, name) for name, _, on_import in imports(module) if on_import and name in MODULES)
    graph.remove_edges_from(list(networkx.selfloop_edges(graph)))
    circles = [networkx.find_cycle(graph.subgraph(group))
               for group in networkx.strongly_connected_components(graph) if len(group) > 1]
    return [" -> ".join([a for a, _ in edges] + [edges[0][0]]) for edges in circles]


def test_no_modules_import_each_other_in_a_circle():
    # At import time (module level): such a circle breaks whichever of the modules is imported first.
    assert_none(import_time_cycles())
