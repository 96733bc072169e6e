"""Reference convex hulls for energy above hull (spec §7.2).

A :class:`ReferenceHull` holds pymatgen ``PDEntry`` objects with **total energies in the MP2020-compatible
convention** (the convention of Materials Project entries, of CHGNet energies, and of MatterSim energies after
the MP2020 correction), indexed by chemical system. For a structure it builds a ``PhaseDiagram`` from all
entries in every sub-system of its chemical system and returns
``get_e_above_hull(entry, allow_negative=True)``, as MatterGen does (computed as a linear programme over the entries, which gives the same number and stays
fast for compositions with many elements).

Sources (:func:`load_reference`):

* ``"mp20"`` (default): the MP formation energies of all 45,229 MP-20 entries
  (``mp_20/mp20_all_compositions_formation_energies.csv``) turned into total energies with the MP elemental
  reference entries (``reference/2023-02-07-mp-elemental-reference-entries.json.gz``, 89 elements):
  ``E = N·E_f + Σ_i n_i·μ_i``. This is far smaller than MatterGen's Alex-MP reference (845,997 entries), so
  E_hull here is relative to the MP-20 hull (stated in every protocol record).
* a JSON file (``.json`` / ``.json.gz``) of pymatgen entries (``ComputedEntry``, ``ComputedStructureEntry`` or
  ``PDEntry`` dicts, as a list or a ``{id: entry}`` mapping), in the MP2020 convention;
* a CSV with a ``composition`` (or ``formula``) column and one of ``energy`` (total, eV),
  ``energy_per_atom`` or ``formation_energy_per_atom`` (the latter uses the MP elemental references);
* MatterGen's Alex-MP reference file (``reference_MP2020correction.gz``: a gzipped LMDB; needs ``pip install
  lmdb``); its values are read as plain data, never as arbitrary pickled objects;
* ``"mp-api"``: the Materials Project through ``mp-api`` with ``MP_API_KEY`` set, fetched per chemical system.

The file and service readers, the MP elemental references and the formation-energy conversion are in
:mod:`~mattergen_lab.evaluation.reference_files`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.caches import registered
from mattergen_lab.data.paths import resolve_data_dir
from mattergen_lab.evaluation import reference_files
from mattergen_lab.evaluation.reference_files import (
    MP_ELEMENTAL_REFERENCES,
    entries_from_formation_energies,
    read_elemental_references,
)

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

MP20_FORMATION_ENERGIES = "mp_20/mp20_all_compositions_formation_energies.csv"


#: ``PhaseDiagram`` builds a convex hull in as many dimensions as elements; beyond this it takes minutes to
#: hours, so :meth:`ReferenceHull.phase_diagram` refuses (E_hull itself never needs one, see
#: :meth:`ReferenceHull.hull_energy_per_atom`).
MAX_PHASE_DIAGRAM_ELEMENTS = 6


class MissingReferenceError(ValueError):
    """An element of a structure has no reference entry, so no hull can be built for it."""


def _system_key(elements: Iterable[Any]) -> frozenset[str]:
    return frozenset(str(getattr(e, "symbol", e)) for e in elements)


class ReferenceHull:
    """Reference entries by chemical system, and energy above hull against them.

    Args:
        entries: ``PDEntry``-like objects (``composition``, ``energy``) in the MP2020-compatible convention.
        name: short name for the protocol record (``"mp20"``, a file name, ...).
        description: one line for reports.
        fetch: optional ``fetch(elements) -> entries`` called once per chemical system not yet seen
            (the ``mp-api`` source uses it).
    """

    def __init__(
        self,
        entries: Iterable[PDEntry],
        *,
        name: str,
        description: str = "",
        fetch: Callable[[list[str]], list[PDEntry]] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self._fetch = fetch
        self._fetched: set[frozenset[str]] = set()
        self._by_system: dict[frozenset[str], list[PDEntry]] = defaultdict(list)
        self._size = 0
        for entry in entries:
            self._add(entry)
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}

    def _add(self, entry: PDEntry) -> None:
        if not math.isfinite(float(entry.energy)):
            return  # MatterGen skips NaN energies
        self._by_system[_system_key(entry.composition.elements)].append(entry)
        self._size += 1

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"ReferenceHull({self.name!r}, {self._size} entries, {len(self.elements)} elements)"

    @property
    def elements(self) -> set[str]:
        """Elements with a reference entry of their own (the hull's terminal phases)."""
        return {next(iter(k)) for k in self._by_system if len(k) == 1}

    def protocol(self) -> dict[str, Any]:
        return {"reference_hull": self.name, "reference_hull_entries": self._size, "reference_hull_source": self.description}

    def entries_in(self, elements: Iterable[Any]) -> list[PDEntry]:
        """All entries whose elements are a subset of ``elements``."""
        system = _system_key(elements)
        if self._fetch is not None and system not in self._fetched:
            for entry in self._fetch(sorted(system)):
                self._add(entry)
            self._fetched.add(system)
            self._diagrams = {k: v for k, v in self._diagrams.items() if not k <= system}
        out: list[PDEntry] = []
        for r in range(1, len(system) + 1):
            for sub in itertools.combinations(sorted(system), r):
                out.extend(self._by_system.get(frozenset(sub), ()))
        return out

    def phase_diagram(self, elements: Iterable[Any]) -> PhaseDiagram:
        """The ``PhaseDiagram`` of a chemical system (cached). Raises :class:`MissingReferenceError`."""
        from pymatgen.analysis.phase_diagram import PhaseDiagram

        system = _system_key(elements)
        if len(system) > MAX_PHASE_DIAGRAM_ELEMENTS:
            raise ValueError(
                f"a phase diagram of the {len(system)}-element system {'-'.join(sorted(system))} is too costly "
                f"(more than {MAX_PHASE_DIAGRAM_ELEMENTS} elements); E_hull is still available through e_above_hull"
            )
        if system not in self._diagrams:
            entries = self.entries_in(system)
            have = {next(iter(_system_key(e.composition.elements))) for e in entries if len(e.composition.elements) == 1}
            missing = sorted(system - have)
            if missing:
                raise MissingReferenceError(
                    f"element(s) {', '.join(missing)} have no entry in the reference hull {self.name!r} "
                    f"({self._size} entries), so no energy above hull can be computed for the "
                    f"{'-'.join(sorted(system))} system"
                )
            self._diagrams[system] = PhaseDiagram(entries)
        return self._diagrams[system]

    def _terminal_energies(self, system: frozenset[str]) -> dict[str, float]:
        """Lowest energy per atom of each element of ``system`` (its terminal phase)."""
        best: dict[str, float] = {}
        for el in system:
            for e in self._by_system.get(frozenset([el]), ()):
                best[el] = min(best.get(el, math.inf), float(e.energy_per_atom))
        missing = sorted(system - set(best))
        if missing:
            raise MissingReferenceError(
                f"element(s) {', '.join(missing)} have no entry in the reference hull {self.name!r} "
                f"({self._size} entries), so no energy above hull can be computed for the "
                f"{'-'.join(sorted(system))} system"
            )
        return best

    def hull_energy_per_atom(self, composition: Any) -> float:
        """Energy per atom of the reference hull at ``composition`` (eV/atom).

        The lower convex envelope is found as a linear programme: the cheapest mixture of reference entries
        (fractions ``x_i ≥ 0`` of atoms) with exactly this composition. This equals pymatgen's
        ``PhaseDiagram`` decomposition energy (a test checks it), and, unlike a ``PhaseDiagram`` (a convex hull
        in as many dimensions as elements), stays fast for the 8–12-element compositions an untrained model
        produces.
        """
        from scipy.optimize import linprog

        comp = composition.fractional_composition
        system = _system_key(comp.elements)
        self._terminal_energies(system)  # raises MissingReferenceError naming the element
        entries = self.entries_in(system)
        elements = sorted(system)
        a_eq = np.array([[e.composition.get_atomic_fraction(el) for e in entries] for el in elements])  # (n_el, n_entries)
        b_eq = np.array([comp.get_atomic_fraction(el) for el in elements])  # (n_el,)
        cost = np.array([float(e.energy_per_atom) for e in entries])  # (n_entries,)
        result = linprog(cost, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
        if not result.success:  # cannot happen when every element has a terminal entry
            raise RuntimeError(f"hull energy of {composition.reduced_formula}: {result.message}")
        return float(result.fun)

    def e_above_hull(self, entry: Any) -> float:
        """Energy above the reference hull in eV/atom (negative below it), MatterGen's ``allow_negative=True``."""
        return float(entry.energy_per_atom) - self.hull_energy_per_atom(entry.composition)

    def formation_energy_per_atom(self, entry: Any) -> float:
        """Formation energy in eV/atom relative to the reference's lowest-energy elemental phases."""
        comp = entry.composition.fractional_composition
        mu = self._terminal_energies(_system_key(comp.elements))
        return float(entry.energy_per_atom) - sum(comp.get_atomic_fraction(el) * mu[el.symbol] for el in comp.elements)


# ====================================================================== sources


@registered
@lru_cache(maxsize=2)
def _mp20_hull(path: str, refs_path: str) -> ReferenceHull:
    import pandas as pd

    table = pd.read_csv(path)
    refs = read_elemental_references(refs_path)
    rows = zip(table["material_id"], table["composition"], table["formation_energy_per_atom"])
    entries = entries_from_formation_energies(rows, refs, source=Path(path).name)
    return ReferenceHull(
        entries,
        name="mp20",
        description=(
            f"MP-20 formation energies ({len(table)} entries, {Path(path).name}) + MP elemental references "
            f"({len(refs)} elements, {Path(refs_path).name}); MP2020-compatible total energies"
        ),
    )


def load_reference(
    source: str | os.PathLike | ReferenceHull = "mp20", *, data_dir: str | os.PathLike | None = None
) -> ReferenceHull:
    """A :class:`ReferenceHull` from a name or a file (see the module docstring for the formats)."""
    if isinstance(source, ReferenceHull):
        return source
    text = str(source)
    if text == "mp20":
        root = resolve_data_dir(data_dir)
        csv_path, refs_path = root / MP20_FORMATION_ENERGIES, root / MP_ELEMENTAL_REFERENCES
        for p in (csv_path, refs_path):
            if not p.is_file():
                raise FileNotFoundError(f"reference 'mp20' needs {p}; set --data-dir or MATTERGEN_LAB_DATA")
        return _mp20_hull(str(csv_path), str(refs_path))
    if text == "mp-api":
        key = os.environ.get("MP_API_KEY")
        if not key:
            raise ValueError("reference 'mp-api' needs a Materials Project API key in the MP_API_KEY environment variable")
        return ReferenceHull([], name="mp-api", description="Materials Project (mp-api, per chemical system)", fetch=reference_files.mp_api_fetch(key))
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reference {text!r} is neither 'mp20', 'mp-api' nor an existing file")
    name = path.name.lower()
    if name.endswith((".json", ".json.gz")):
        entries = reference_files.read_entries_json(path)
    elif name.endswith(".csv"):
        entries = reference_files.read_entries_csv(path, data_dir)
    elif name.endswith(".gz"):
        entries = reference_files.read_lmdb_reference(path)
    else:
        raise ValueError(f"reference file {path}: unknown format; use .json[.gz], .csv or MatterGen's LMDB .gz")
    if not entries:
        raise ValueError(f"reference file {path} has no entries")
    return ReferenceHull(entries, name=path.name, description=f"{len(entries)} entries from {path}")


def check_elements(hull: ReferenceHull, items: Sequence[tuple[str, Iterable[Any]]]) -> None:
    """Raise :class:`MissingReferenceError` naming the first item (e.g. a file) with an unknown element."""
    known = hull.elements if hull._fetch is None else None
    if known is None:
        return
    for label, elements in items:
        missing = sorted(_system_key(elements) - known)
        if missing:
            raise MissingReferenceError(
                f"{label}: element(s) {', '.join(missing)} are not in the reference hull {hull.name!r}"
            )
