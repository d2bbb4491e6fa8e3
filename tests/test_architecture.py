"""The house keeps its shape: file sizes, no import cycles, the layers of common/, the wings, and the backend seam.

Every import counts as an edge, at the top of a file or inside a function, and so does a name imported from a
package's `__init__.py` (a re-export). The checks read the source with `ast`; nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("common", "backends", "recipes")
MAX_LINES = 400

# common/'s floors, lowest first: a module may import its own floor and the ones below, never one above
GROUND = {"errors", "atomic", "fmt", "messages", "telemetry", "flags", "config", "import_guard", "rundir",
          "checkpoint_files", "console"}
FLOORS = ("ground", "data", "model", "quality", "training")
WINGS = ("bench", "embedded")  # they may import the core; nothing in the core imports them


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for top in CHECKED for p in sorted((REPO / top).rglob("*.py"))
            if "__pycache__" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, anywhere in the file (absolute and relative)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            # importing a.b.c also runs a and a.b: every package on the way is an edge too
            parts = target.split(".")
            out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
    out.discard(name)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = source_files()
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def floor_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "common" or len(parts) < 2:
        return None
    return "ground" if parts[1] in GROUND else parts[1]


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in source_files().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_there_is_no_import_cycle(graph):
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_nothing_outside_recipes_imports_recipes(graph):
    bad = {m: sorted(d for d in deps if d.split(".")[0] == "recipes")
           for m, deps in graph.items() if m.split(".")[0] != "recipes"}
    assert not {m: d for m, d in bad.items() if d}


def test_the_floors_of_common_only_look_down(graph):
    bad = []
    for module, deps in graph.items():
        floor = floor_of(module)
        if floor not in FLOORS:
            continue
        for dep in deps:
            dep_floor = floor_of(dep)
            if dep_floor is None:
                if dep.split(".")[0] == "backends" and dep not in ("backends", "backends.registry"):
                    bad.append(f"{module} -> {dep} (the core reaches backends through the registry only)")
                continue
            if dep_floor in WINGS:
                bad.append(f"{module} -> {dep} (a wing)")
            elif FLOORS.index(dep_floor) > FLOORS.index(floor):
                bad.append(f"{module} ({floor}) -> {dep} ({dep_floor})")
    assert not bad, "\n".join(bad)


def test_the_wings_are_there_and_nothing_in_the_core_imports_them(graph):
    for wing in WINGS:
        assert (REPO / "common" / wing / "__init__.py").is_file(), wing
    users = {m for m, deps in graph.items() for d in deps
             if floor_of(d) in WINGS and floor_of(m) not in WINGS and m.split(".")[0] != "recipes"}
    assert not users, sorted(users)


def test_backends_never_import_each_other(graph):
    bad = []
    for module, deps in graph.items():
        parts = module.split(".")
        if parts[0] != "backends" or len(parts) < 2 or parts[1] == "registry":
            continue
        for dep in deps:
            dparts = dep.split(".")
            if dparts[0] == "backends" and len(dparts) > 1 and dparts[1] not in (parts[1], "registry"):
                bad.append(f"{module} -> {dep}")
            if dparts[0] == "common" and len(dparts) > 1 and floor_of(dep) != "ground":
                bad.append(f"{module} -> {dep} (a backend may use only common's ground floor)")
    assert not bad, bad


def _names_a_backend(node: ast.AST, names: set[str]) -> bool:
    """A backend named in code: compared with (`backend == "x"`, `in ("x", "y")`), handed to the registry
    (`registry.get("x")`), or listed (a tuple, list or set made only of backend names). A backend's name can also be
    a word of its own elsewhere (the --nemo flag, the learning-rate schedule `linear`): that is not naming it."""
    def literal(n):
        return isinstance(n, ast.Constant) and n.value in names

    if isinstance(node, ast.Compare):
        sides = [node.left, *node.comparators]
        return any(literal(s) or (isinstance(s, (ast.Tuple, ast.List, ast.Set)) and s.elts and all(map(literal, s.elts)))
                   for s in sides)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
            "get", "registration", "options_class", "is_portable", "same_method"):
        return any(literal(a) for a in node.args)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1:
        return all(literal(e) for e in node.elts)
    return False


def test_no_backend_is_named_in_common():
    from backends import registry

    names = set(registry.names())
    found = []
    for path in sorted((REPO / "common").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if _names_a_backend(node, names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not found, found


def test_every_backend_has_the_same_shape():
    from backends import registry

    for name in registry.names():
        folder = REPO / "backends" / name
        assert {p.name for p in folder.glob("*.py")} >= {"__init__.py", "config.py", "layer.py", "model.py"}, name
