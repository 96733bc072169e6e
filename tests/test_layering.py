"""The layering rules of ``mattergen_lab/__init__.py``: no module imports from a layer above its own."""

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
    "cli_progress": 8, "cli_lab": 8,
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
