"""``clear_caches()`` reaches every heavy cache: each registers itself where it is defined (mattergen_lab/caches.py).

*Heavy* here means a module-level ``functools.lru_cache`` that is not in :data:`SMALL_PURE` below: a list, with
reasons, of the caches over small pure functions (of packaged tables, element symbols or space-group numbers) whose
results are a few kB at most and which nothing needs to free. A new ``lru_cache`` is heavy until someone adds it
there with a reason, so one that holds a model, a force field or a data table cannot be forgotten.
"""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

import pytest

import mattergen_lab
from mattergen_lab import caches

ROOT = Path(__file__).resolve().parents[1]

#: "module.function" -> why it needs no clearing
SMALL_PURE = {
    "mattergen_lab.chemistry._symbols": "element symbols by Z (100 strings)",
    "mattergen_lab.data.container._element_symbols": "element symbols by Z (100 strings)",
    "mattergen_lab.model.property_embeddings._system_numbers": "atomic numbers of a chemical-system string",
    "mattergen_lab.properties.hhi.hhi_production_table": "pymatgen's HHI table (about 80 floats)",
    "mattergen_lab.properties.hhi._lookup_arrays": "two arrays of 101 floats",
    "mattergen_lab.design.requests._allowed_symbols": "symbols of the selected elements",
    "mattergen_lab.evaluation.matching._ordered_matcher": "a StructureMatcher with fixed tolerances (no data)",
    "mattergen_lab.evaluation.matching._disordered_matcher": "a StructureMatcher with fixed tolerances (no data)",
    "mattergen_lab.design.review._loose_matcher": "a StructureMatcher with fixed tolerances (no data)",
    "mattergen_lab.checkpoints.catalog._registry_cached": "checkpoints.yaml parsed (a few kB), keyed by its mtime",
    "mattergen_lab.symmetry.groups.lattice_basis": "a (K, 3, 3) basis per crystal system (7 at most)",
    **{f"mattergen_lab.symmetry.groups.{name}": "a space group's tables (operations, orbits), 230 groups at most"
       for name in ("_group", "wyckoff_letters", "general_operations", "centring_matrix", "primitive_operations",
                    "orbit_geometry", "subgroup_types")},
    "mattergen_lab.symmetry.templates.mp20_table": "the packaged template table (114 kB)",
    "mattergen_lab.symmetry.templates._mp20_templates": "templates parsed from that table, per max_atoms and patterns",
    "mattergen_lab.symmetry.templates.reachable_counts": "a frozenset of atom counts per space group",
    "mattergen_lab.symmetry.fit.fitting_templates": "template indices and weights per (spec, amounts), 256 at most",
}


def _is_lru_cache(decorator: ast.expr) -> bool:
    node = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name in ("lru_cache", "cache")


def _module_level_caches() -> list[tuple[str, str]]:
    """``(module, function)`` of every module-level function under an ``lru_cache`` in the package and the widgets."""
    found = []
    for folder, package in ((ROOT / "mattergen_lab", "mattergen_lab"), (ROOT / "widgets", "mattergen_lab.widgets")):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            module = ".".join((package, *parts)).removesuffix(".__init__")
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.FunctionDef) and any(_is_lru_cache(d) for d in node.decorator_list):
                    found.append((module, node.name))
    return found


def test_the_scan_finds_the_known_caches():
    found = {f"{m}.{n}" for m, n in _module_level_caches()}
    # heavy ones (registered) and small ones (allowed): the scan sees both kinds
    assert {"mattergen_lab.design.review._mp20_known", "mattergen_lab.forcefields.load_chgnet",
            "mattergen_lab.sampling.pipeline.cached_checkpoint", "mattergen_lab.campaign.tasks._relaxer",
            "mattergen_lab.chemistry._symbols"} <= found
    assert len([f for f in found if f.startswith("mattergen_lab.symmetry.groups.")]) == 8
    stale = set(SMALL_PURE) - found
    assert not stale, f"SMALL_PURE names caches that no longer exist: {stale}"


def test_every_heavy_lru_cache_is_registered():
    heavy = [(m, n) for m, n in _module_level_caches() if f"{m}.{n}" not in SMALL_PURE]
    assert len(heavy) >= 8  # checkpoints, CHGNet, hull, elemental refs, novelty, slider ranges, known, relaxer
    missing = []
    for module, name in heavy:
        fn = getattr(importlib.import_module(module), name)
        if fn not in caches.registered_functions():
            missing.append(f"{module}.{name}")
    assert not missing, (f"lru_caches that clear_caches() does not empty: {missing}; register each where it is "
                         "defined (@caches.registered above @functools.lru_cache), or add it to SMALL_PURE with a reason")


def test_registered_empties_a_cache_and_reports_it_once():
    @functools.lru_cache(maxsize=4)
    def square(x: int) -> int:
        return x * x

    square.__module__, square.__qualname__ = "tests.test_caches", "square"
    try:
        assert caches.registered(square) is square and square in caches.registered_functions()
        assert [square(n) for n in (2, 3, 3)] == [4, 9, 9] and square.cache_info().currsize == 2
        cleared = mattergen_lab.clear_caches()
        assert "tests.test_caches.square" in cleared and square.cache_info().currsize == 0
        assert "tests.test_caches.square" not in mattergen_lab.clear_caches()  # empty: not reported again
    finally:
        caches._REGISTERED.pop("tests.test_caches.square", None)
        caches._FUNCTIONS.pop("tests.test_caches.square", None)


def test_registered_refuses_a_function_without_a_cache():
    with pytest.raises(TypeError, match="goes above @functools.lru_cache"):
        caches.registered(lambda x: x)


def test_the_cache_registry_names_no_module_of_the_package():
    text = (ROOT / "mattergen_lab" / "caches.py").read_text()
    assert "mattergen_lab." not in text.replace("mattergen_lab.clear_caches", "")
