"""The layering rules of ``mattergen_lab/__init__.py``: no module imports from a layer above its own, and no import cycle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: top-level module or package -> layer (as in the package docstring and docs/architecture.md)
LAYERS = {
    "constants": 0, "config": 0, "fileio": 0, "caches": 0, "limits": 0, "console": 0, "threads": 0,
    "crystal": 1, "chemistry": 1, "structure_io": 1,
    "noise": 2, "data": 2, "forcefields": 2,
    "model": 3, "symmetry": 3,
    "checkpoints": 4, "training": 4, "testing": 4,
    "sampling": 5,
    "properties": 6,
    "evaluation": 7,
    "design": 8, "campaign": 8,
    "cli_progress": 6, "cli_lab": 8, "cli_train": 8,
    "cli": 9, "widgets": 9,
}


def _imports(path: Path) -> set[str]:
    """Top-level mattergen_lab modules imported anywhere in ``path`` (lazy imports inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mattergen_lab" and len(parts) > 1:
                out.add(parts[1])
    return out


def _modules():
    for path in sorted((ROOT / "mattergen_lab").rglob("*.py")):
        rel = path.relative_to(ROOT / "mattergen_lab").parts
        if rel == ("__init__.py",):
            continue
        yield rel[0].removesuffix(".py"), path
    for path in sorted((ROOT / "widgets").rglob("*.py")):
        yield "widgets", path


def test_every_module_has_a_layer():
    assert {top for top, _ in _modules()} <= set(LAYERS), {top for top, _ in _modules()} - set(LAYERS)


def test_no_module_imports_from_a_higher_layer():
    violations = []
    for top, path in _modules():
        for target in _imports(path) - {top}:
            if target not in LAYERS:
                violations.append(f"{path.relative_to(ROOT)} imports unknown module {target}")
            elif LAYERS[target] >= LAYERS[top]:
                violations.append(f"{path.relative_to(ROOT)} (layer {LAYERS[top]}) imports {target} (layer {LAYERS[target]})")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mattergen_lab.design import run_design\n")
    assert _imports(bad) == {"design"}


# ---------------------------------------------------------------------------------------------- import cycles
#
# The layer rule forbids every arrow between packages of the same or a lower layer, so a cycle can only run inside
# one package (trainer -> recipe -> trainer). Each module is a node here; an import of a name from a package is an
# arrow to the submodule of that name when there is one (``from mattergen_lab.evaluation import reference_files``),
# otherwise to the package's ``__init__``. Lazy imports inside functions and imports under ``TYPE_CHECKING`` count:
# a cycle that only a lazy import hides still hands names back and forth.


def _module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: file}`` of the package and the widgets (installed as ``mattergen_lab.widgets``)."""
    out = {}
    for folder, package in ((root / "mattergen_lab", "mattergen_lab"), (root / "widgets", "mattergen_lab.widgets")):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            out[".".join((package, *parts)).removesuffix(".__init__")] = path
    return out


def _import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules of ``files`` it imports anywhere in its text}`` (absolute and relative imports)."""
    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for a in node.names:
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base)
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    graph = _import_graph(_module_files())
    cycles = _cycles(graph)
    assert not cycles, "import cycles (move the piece both sides need into one module below them):\n" + "\n".join(
        " <-> ".join(c) + ": " + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c) for c in cycles)


def test_the_cycle_checker_sees_a_lazy_cycle_and_a_package_facade(tmp_path):
    pkg = tmp_path / "mattergen_lab" / "pkg"
    pkg.mkdir(parents=True)
    (tmp_path / "widgets").mkdir()
    (tmp_path / "mattergen_lab" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from mattergen_lab.pkg.c import C\n")
    (pkg / "a.py").write_text("from mattergen_lab.pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")  # lazy and relative: still an arrow
    (pkg / "c.py").write_text("from mattergen_lab.pkg import b\n")
    (pkg / "d.py").write_text("from mattergen_lab.pkg import C\n")  # through the package: an arrow to __init__
    (pkg / "e.py").write_text("from mattergen_lab.pkg.c import C\n")
    graph = _import_graph(_module_files(tmp_path))
    assert graph["mattergen_lab.pkg.d"] == {"mattergen_lab.pkg"} and graph["mattergen_lab.pkg.b"] == {"mattergen_lab.pkg.a"}
    assert _cycles(graph) == [["mattergen_lab.pkg.a", "mattergen_lab.pkg.b"]]
    (pkg / "c.py").write_text("from mattergen_lab.pkg import d\n")  # c -> d -> pkg -> c
    assert _cycles(_import_graph(_module_files(tmp_path))) == [
        ["mattergen_lab.pkg", "mattergen_lab.pkg.c", "mattergen_lab.pkg.d"], ["mattergen_lab.pkg.a", "mattergen_lab.pkg.b"]]


# ------------------------------------------------------------------------------------------------ facades


def test_no_module_passes_on_a_private_name_it_does_not_use():
    """A ``_name`` imported from another module and never used is a re-export of a private name (the facades a split
    module left behind); whoever needs it imports it from where it is defined."""
    found = []
    for module, path in _module_files().items():
        tree = ast.parse(path.read_text())
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mattergen_lab"):
                found += [f"{module} re-exports {node.module}.{a.name}" for a in node.names
                          if (a.asname or a.name).startswith("_") and (a.asname or a.name) not in used]
    assert not found, "\n".join(found)


def test_every_name_a_package_exports_exists():
    import importlib

    missing = []
    for module, path in _module_files().items():
        if path.name == "__init__.py" and "__all__" in path.read_text() and not module.startswith("mattergen_lab.widgets"):
            package = importlib.import_module(module)
            missing += [f"{module}.{name}" for name in package.__all__ if not hasattr(package, name)]
    assert not missing, missing
