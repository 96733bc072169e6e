"""Structure matching, uniqueness and novelty (spec §7.3–7.4), with pymatgen's ``StructureMatcher``.

* ``ordered``: ltol 0.2, stol 0.3, angle_tol 5°, primitive cell, scaled volumes, no supercells or subsets.
* ``disordered`` (MatterGen's CLI default): for two ordered structures, the reduced formulas must agree and the
  ordered matcher is tried first; if it fails, structure 1 becomes an alloy (its mutually substitutable
  elements, relative atomic-radius difference ≤ 0.3 **and** Pauling electronegativity difference ≤ 1.0, share
  their sites as partial occupancies) and is matched with ``OrderDisorderElementComparator``, supercells and
  subsets allowed. When either structure is already disordered, the fractional compositions must agree
  (atol 0.01, rtol 0.1) before the disordered matcher runs.

Groups: unique/novel comparisons only happen within the same chemical system (``disordered``) or reduced
formula (``ordered``).

Novelty reference (``"mp20"``): the MP-20 structures with coordinates (val, test and the 6,041 train rows that
have them). For the 21,095 train entries without coordinates (``train_no_positions.csv``: composition and
primitive Niggli lattice) a **proxy** applies: same reduced formula and number of atoms, and Niggli lattices
that agree after scaling to the same volume (lengths within ``ltol``, angles within ``angle_tol``). A
structure matched only by the proxy is not novel, and its ``novelty_match`` says ``proxy:<id>``.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.caches import registered

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

LTOL, STOL, ANGLE_TOL = 0.2, 0.3, 5.0
MAX_RADIUS_DIFF = 0.3  # relative atomic-radius difference for substitutable elements
MAX_EN_DIFF = 1.0  # Pauling electronegativity difference
MATCHERS = ("disordered", "ordered")


@lru_cache(maxsize=1)
def _ordered_matcher() -> Any:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(
        ltol=LTOL, stol=STOL, angle_tol=ANGLE_TOL, primitive_cell=True, scale=True,
        attempt_supercell=False, allow_subset=False,
    )


@lru_cache(maxsize=1)
def _disordered_matcher() -> Any:
    from pymatgen.analysis.structure_matcher import (
        OrderDisorderElementComparator,
        StructureMatcher,
    )

    return StructureMatcher(
        ltol=LTOL, stol=STOL, angle_tol=ANGLE_TOL, primitive_cell=True, scale=True,
        attempt_supercell=True, allow_subset=True, comparator=OrderDisorderElementComparator(),
    )


def _substitutable(a: Any, b: Any) -> bool:
    ra, rb = a.atomic_radius, b.atomic_radius
    if ra is None or rb is None or a.X is None or b.X is None or not np.isfinite([a.X, b.X]).all():
        return False
    return abs(float(ra) - float(rb)) / max(float(ra), float(rb)) <= MAX_RADIUS_DIFF and abs(a.X - b.X) <= MAX_EN_DIFF


def as_alloy(structure: Structure) -> Structure:
    """Merge mutually substitutable elements (cliques) into shared partial occupancies."""
    comp = structure.composition.element_composition
    elements = sorted(comp.elements, key=lambda e: e.symbol)
    groups: list[list[Any]] = []
    for el in elements:  # greedy cliques: an element joins the first group it is substitutable with entirely
        for group in groups:
            if all(_substitutable(el, other) for other in group):
                group.append(el)
                break
        else:
            groups.append([el])
    mapping: dict[str, dict[str, float]] = {}
    for group in groups:
        if len(group) < 2:
            continue
        total = sum(comp[e] for e in group)
        occupancy = {e.symbol: comp[e] / total for e in group}
        for e in group:
            mapping[e.symbol] = occupancy
    if not mapping:
        return structure
    alloy = structure.copy()
    alloy.replace_species(mapping)
    return alloy


def structures_match(s1: Structure, s2: Structure, *, matcher: str = "disordered") -> bool:
    """Whether two structures are the same crystal under MatterGen's ordered or disordered rules."""
    if matcher not in MATCHERS:
        raise ValueError(f"matcher={matcher!r}; expected one of {list(MATCHERS)}")
    s1, s2 = s1.copy(), s2.copy()
    s1.remove_oxidation_states()
    s2.remove_oxidation_states()
    if s1.is_ordered and s2.is_ordered:
        if s1.composition.reduced_formula != s2.composition.reduced_formula:
            return False
        if _ordered_matcher().fit(s1, s2):
            return True
        if matcher == "ordered":
            return False
        return bool(_disordered_matcher().fit(as_alloy(s1), s2))
    if matcher == "ordered":
        return False
    c1, c2 = s1.composition.fractional_composition, s2.composition.fractional_composition
    if not c1.almost_equals(c2, atol=1e-2, rtol=1e-1):
        return False
    return bool(_disordered_matcher().fit(s1, s2))


def group_key(structure: Structure, matcher: str = "disordered") -> str:
    comp = structure.composition
    return comp.chemical_system if matcher == "disordered" else comp.reduced_formula


def unique_flags(structures: Sequence[Structure | None], *, matcher: str = "disordered") -> list[bool]:
    """Greedy uniqueness: a structure is unique if it matches none of the earlier unique ones in its group.

    ``None`` entries (no structure) are not unique.
    """
    kept: dict[str, list[Structure]] = defaultdict(list)
    flags = []
    for s in structures:
        if s is None:
            flags.append(False)
            continue
        group = kept[group_key(s, matcher)]
        duplicate = any(structures_match(s, other, matcher=matcher) for other in group)
        if not duplicate:
            group.append(s)
        flags.append(not duplicate)
    return flags


# ====================================================================== novelty reference


@dataclass
class _ProxyEntry:
    material_id: str
    num_atoms: int
    lattice: np.ndarray  # (3, 3) rows are lattice vectors


def _scaled_niggli(lattice_matrix: np.ndarray, num_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Lengths (scaled to 1 Å³ per atom) and angles of the Niggli-reduced lattice."""
    from pymatgen.core import Lattice

    lat = Lattice(lattice_matrix).get_niggli_reduced_lattice()
    scale = (lat.volume / num_atoms) ** (1 / 3)
    return np.array(lat.abc) / scale, np.array(lat.angles)


class NoveltyReference:
    """Known structures grouped for matching, plus composition+lattice proxies for entries without coordinates."""

    def __init__(self, structures: Sequence[Structure], ids: Sequence[str], *, name: str,
                 proxies: Sequence[_ProxyEntry] = (), description: str = "") -> None:
        self.name = name
        self.description = description
        self._by_formula: dict[str, list[tuple[str, Structure]]] = defaultdict(list)
        self._by_system: dict[str, list[tuple[str, Structure]]] = defaultdict(list)
        for sid, s in zip(ids, structures):
            self._by_formula[s.composition.reduced_formula].append((sid, s))
            self._by_system[s.composition.chemical_system].append((sid, s))
        self._proxies: dict[str, list[_ProxyEntry]] = defaultdict(list)
        self._num_structures = len(structures)
        self._num_proxies = 0
        for p in proxies:
            self.add_proxy(p)

    def add_proxy(self, proxy: _ProxyEntry, formula: str | None = None) -> None:
        self._proxies[formula or ""].append(proxy)
        self._num_proxies += 1

    def __len__(self) -> int:
        return self._num_structures + self._num_proxies

    def has_system(self, chemical_system: str) -> bool:
        """Whether any known structure (with coordinates) has this chemical system, e.g. ``"Li-O"``."""
        return chemical_system in self._by_system

    def known(self, *, reduced_formula: str | None = None) -> list[tuple[str, Structure]]:
        """``(id, structure)`` of the known structures with coordinates: all, or those of one reduced formula."""
        if reduced_formula is not None:
            return list(self._by_formula.get(reduced_formula, ()))
        return [item for group in self._by_formula.values() for item in group]

    def protocol(self) -> dict[str, Any]:
        return {
            "novelty_reference": self.name,
            "novelty_reference_structures": self._num_structures,
            "novelty_reference_proxies": self._num_proxies,
            "novelty_reference_source": self.description,
        }

    def find(self, structure: Structure, *, matcher: str = "disordered") -> str | None:
        """The id of a known structure matching ``structure`` (``"proxy:<id>"`` for a proxy match), or None."""
        candidates = (
            self._by_system.get(structure.composition.chemical_system, [])
            if matcher == "disordered"
            else self._by_formula.get(structure.composition.reduced_formula, [])
        )
        for sid, known in candidates:
            if structures_match(structure, known, matcher=matcher):
                return sid
        proxy = self._proxy_match(structure)
        return f"proxy:{proxy}" if proxy else None

    def _proxy_match(self, structure: Structure) -> str | None:
        entries = self._proxies.get(structure.composition.reduced_formula)
        if not entries:
            return None
        prim = structure.get_primitive_structure()
        n = len(prim)
        abc, angles = _scaled_niggli(prim.lattice.matrix, n)
        for p in entries:
            if p.num_atoms != n:
                continue
            p_abc, p_angles = _scaled_niggli(p.lattice, p.num_atoms)
            if np.all(np.abs(p_abc / abc - 1) <= LTOL) and np.all(np.abs(p_angles - angles) <= ANGLE_TOL):
                return p.material_id
        return None


@registered
@lru_cache(maxsize=2)
def _mp20_novelty_reference(data_dir: str) -> NoveltyReference:
    import pandas as pd
    from pymatgen.core import Composition, Lattice, Structure

    from mattergen_lab.data.mp20 import load_mp20

    structures, ids = [], []
    for split in ("train", "val", "test"):
        ds = load_mp20(split, data_dir=data_dir)
        for i in range(len(ds)):
            a, b = ds.ptr[i], ds.ptr[i + 1]
            structures.append(
                Structure(Lattice(ds.lattice[i]), ds.atom_types[a:b].tolist(), ds.frac_coords[a:b], coords_are_cartesian=False)
            )
            ids.append(str(ds.ids[i]))
    ref = NoveltyReference(structures, ids, name="mp20")
    table = pd.read_csv(os.path.join(data_dir, "mp_20", "train_no_positions.csv"))
    table = table[table["has_structure_in_train_partial"] == 0]
    cols = [f"lattice_{v}{c}" for v in "abc" for c in "xyz"]
    lattices = table[cols].to_numpy(dtype=float).reshape(-1, 3, 3)
    for mid, numbers, n, lat in zip(table["material_id"], table["atomic_numbers"], table["num_atoms"], lattices):
        z = [int(x) for x in str(numbers).split()]
        formula = Composition(dict(zip(*np.unique(z, return_counts=True)))).reduced_formula if z else ""
        ref.add_proxy(_ProxyEntry(str(mid), int(n), lat), formula)
    ref.description = (
        f"MP-20 structures with coordinates ({ref._num_structures}: val, test, partial train) + "
        f"{ref._num_proxies} train entries without coordinates matched by a composition+lattice proxy"
    )
    return ref


def load_novelty_reference(source: Any = "mp20", *, data_dir: str | os.PathLike | None = None) -> NoveltyReference | None:
    """``"mp20"``, ``None`` (no novelty), a :class:`NoveltyReference`, or a list of structures."""
    if source is None or isinstance(source, NoveltyReference):
        return source
    if isinstance(source, str) and source == "mp20":
        from mattergen_lab.data.paths import resolve_data_dir

        return _mp20_novelty_reference(str(resolve_data_dir(data_dir)))
    if isinstance(source, (list, tuple)):
        return NoveltyReference(list(source), [f"ref-{i}" for i in range(len(source))], name="user structures",
                                description=f"{len(source)} structures given by the caller")
    raise ValueError(f"novelty reference {source!r}: expected 'mp20', None or a list of structures")
