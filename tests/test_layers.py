"""The layering of docs/architecture.md, read from the source with `ast` (nothing is imported):
no module imports from a layer above its own, the three method families do not import each other,
and no two modules import each other in a circle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ddkit"

# Layer of each top-level module or package of ddkit, from the ground (0) up.
LAYERS = {
    "errors": 0, "seeding": 0, "progress": 0, "lazy": 0,
    "fileio": 1, "h5safe": 1, "paths": 1, "records": 1, "workitems": 1, "registry": 1, "config": 1, "devices": 1, "datainfo": 1, "provenance": 1, "distributed": 1, "augment": 1, "index": 1,
    "data": 2, "training": 2,
    "models": 3, "store": 3,
    "pools": 4, "contamination": 4, "dbr": 4, "teachers": 4, "experts": 4, "share": 4,
    "synth": 5, "selectors": 5, "evaluate": 5,
    "cli": 6, "__main__": 6, "quickstart": 6, "registries": 6, "workflows": 6, "loading": 6, "explain": 6,
}
METHODS = {"synth", "selectors", "evaluate"}  # the same layer, but strangers to each other


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The ddkit modules `path` imports anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules and n != "ddkit"}
    return found


def _unit(module: str) -> str:
    return module.split(".")[1] if module != "ddkit" else "ddkit"


def test_every_module_has_a_layer():
    units = {_unit(m) for m in _modules() if m != "ddkit"}
    assert units <= set(LAYERS), f"give {sorted(units - set(LAYERS))} a layer here and in docs/architecture.md"


def test_no_import_runs_up_or_across_the_methods():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        if module == "ddkit":
            continue
        mine = _unit(module)
        for target in _imports(path, modules):
            theirs = _unit(target)
            if theirs == mine:
                continue
            if LAYERS[theirs] > LAYERS[mine] or (mine in METHODS and theirs in METHODS):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against docs/architecture.md: " + ", ".join(sorted(wrong))


def test_no_circle_between_modules():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    # A package's __init__ hands on names of its own modules; only module -> module circles count.
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "modules that import each other: " + "; ".join(" -> ".join(c) for c in circles)
