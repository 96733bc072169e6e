"""A candidate review for synthesis: simulated powder XRD, nearest known materials, oxidation states, density.

* :func:`~mattergen_lab.design.xrd.xrd_pattern`: pymatgen's ``XRDCalculator`` (Cu Kα, 1.54184 Å, by default), peaks
  with their hkl (in :mod:`mattergen_lab.design.xrd`).
* :class:`KnownMaterials`: the novelty reference (the MP-20 structures we have, :mod:`mattergen_lab.evaluation.matching`)
  with each material's composition, E_hull (against the MP-20 hull) and space group. :meth:`KnownMaterials.nearest`
  finds the closest materials **by composition** (all 45,229 MP-20 entries) and **by structure** (StructureMatcher
  RMS distance with the novelty check's settings: ltol 0.2, stol 0.3, angle_tol 5°). When nothing matches within
  those tolerances (the candidate is novel), a loose matcher (ltol 0.5, stol 0.5, 10°; the RMSD settings of the
  evaluation) over the same formula and the same prototype (anonymous formula) says what came closest.
* :func:`review_candidate`: all of it for one candidate, as a :class:`CandidateReview` (what the export writes).

Distances: composition distance is half the L1 distance of the atomic fractions (0 = same stoichiometry,
1 = no element in common); structure distance is StructureMatcher's RMS displacement normalised by
(V/n)^(1/3) (dimensionless; 0 = the same crystal).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.caches import registered
from mattergen_lab.design.xrd import DEFAULT_WAVELENGTH, XRDPattern, resolve_wavelength, xrd_pattern
from mattergen_lab.structure_io import check_structure_input

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from mattergen_lab.evaluation.matching import NoveltyReference

log = logging.getLogger(__name__)

LOOSE_MATCHER = {"ltol": 0.5, "stol": 0.5, "angle_tol": 10.0}
MAX_LOOSE_COMPARISONS = 40


# ------------------------------------------------------------------------------------ oxidation states
def guess_oxidation_states(structure: Structure) -> tuple[dict[str, float] | None, str]:
    """``({element: mean oxidation state}, note)`` from pymatgen's ``BVAnalyzer``; ``(None, why)`` where it fails."""
    from pymatgen.analysis.bond_valence import BVAnalyzer

    try:
        valences = BVAnalyzer().get_valences(structure)
    except Exception as exc:  # noqa: BLE001 - BVAnalyzer raises ValueError and others for unusual bonding
        return None, f"bond-valence analysis found no charge-balanced assignment ({type(exc).__name__}: {exc})"
    per_element: dict[str, list[float]] = {}
    for site, v in zip(structure, valences):
        per_element.setdefault(site.specie.symbol, []).append(float(v))
    states = {el: round(float(np.mean(v)), 3) for el, v in per_element.items()}
    return states, "pymatgen BVAnalyzer (bond valence, charge-balanced)"


# ---------------------------------------------------------------------------------- known materials
@dataclass(frozen=True)
class KnownMaterial:
    """One known material near a candidate."""

    material_id: str
    formula: str
    e_above_hull: float | None  # eV/atom against the MP-20 hull (None without a formation energy)
    space_group: int | None  # spglib, symprec 0.1 (None without coordinates)
    composition_distance: float
    structure_distance: float | None = None  # normalised RMS (None: not compared or no fit)
    within_tolerance: bool = False  # matches under the novelty check's rules
    matcher: str = ""  # "novelty", "loose", "loose, prototype" or "" (composition only)
    has_structure: bool = True


@dataclass(frozen=True)
class NearestKnown:
    """The nearest known materials of a candidate and the novelty verdict against the same reference."""

    by_composition: tuple[KnownMaterial, ...]
    by_structure: tuple[KnownMaterial, ...]
    match: str | None  # id within the novelty tolerances ("proxy:<id>" for a proxy match), None if novel
    note: str
    reference: str
    structure_source: str  # "relaxed" or "generated"
    compared: int  # structures compared by StructureMatcher

    @property
    def is_novel(self) -> bool:
        return self.match is None

    def closest(self) -> KnownMaterial | None:
        """The nearest material with coordinates: by structure if any fits, else by composition."""
        for m in (*self.by_structure, *self.by_composition):
            if m.has_structure:
                return m
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"by_composition": [asdict(m) for m in self.by_composition],
                "by_structure": [asdict(m) for m in self.by_structure], "match": self.match, "note": self.note,
                "reference": self.reference, "structure_source": self.structure_source, "compared": self.compared,
                "is_novel": self.is_novel}


def _composition_vector(comp: Any) -> np.ndarray:
    vec = np.zeros(119, dtype=np.float32)
    for el, frac in comp.fractional_composition.items():
        vec[el.Z] = frac
    return vec


class KnownMaterials:
    """The novelty reference plus per-material composition, formation energy (E_hull) and space group.

    Args:
        novelty: a :class:`~mattergen_lab.evaluation.matching.NoveltyReference` (the structures compared).
        compositions: ``{material_id: composition string}`` for the composition search (every entry, with or
            without coordinates); default: the novelty reference's structures.
        e_above_hull: ``{material_id: E_hull in eV/atom}`` or a function ``id -> E_hull | None`` (computed on
            demand and cached; missing ids show no E_hull).
    """

    def __init__(self, novelty: NoveltyReference, *, compositions: dict[str, str] | None = None,
                 e_above_hull: dict[str, float] | Callable[[str], float | None] | None = None) -> None:
        from pymatgen.core import Composition

        self.novelty = novelty
        self._structures = dict(novelty.known())
        if compositions is None:
            compositions = {sid: s.composition.formula for sid, s in self._structures.items()}
        self.ids = list(compositions)
        comps = [Composition(compositions[i]) for i in self.ids]
        self.formulas = [c.reduced_formula for c in comps]
        self._matrix = np.stack([_composition_vector(c) for c in comps]) if comps else np.zeros((0, 119), np.float32)
        self._e_hull_fn = e_above_hull if callable(e_above_hull) else (e_above_hull or {}).get
        self._e_hull: dict[str, float | None] = {}
        self._space_groups: dict[str, int | None] = {}
        self._prototypes: dict[str, list[str]] = {}
        for sid, s in self._structures.items():
            self._prototypes.setdefault(s.composition.anonymized_formula, []).append(sid)

    @classmethod
    def from_structures(cls, structures: Sequence[Structure], ids: Sequence[str], *, name: str = "user structures",
                        e_above_hull: dict[str, float] | None = None) -> KnownMaterials:
        from mattergen_lab.evaluation.matching import NoveltyReference

        return cls(NoveltyReference(list(structures), list(ids), name=name), e_above_hull=e_above_hull)

    @classmethod
    def mp20(cls, data_dir: str | os.PathLike | None = None) -> KnownMaterials:
        """The MP-20 reference: structures as in the novelty check, compositions and E_hull of all 45,229 entries."""
        from mattergen_lab.data.paths import resolve_data_dir

        return _mp20_known(str(resolve_data_dir(data_dir)))

    def structure(self, material_id: str) -> Structure | None:
        return self._structures.get(material_id)

    def e_above_hull(self, material_id: str) -> float | None:
        if material_id not in self._e_hull:
            v = self._e_hull_fn(material_id)
            self._e_hull[material_id] = None if v is None or not math.isfinite(v) else float(v)
        return self._e_hull[material_id]

    def space_group(self, material_id: str) -> int | None:
        if material_id not in self._space_groups:
            from mattergen_lab.properties import space_group

            s = self._structures.get(material_id)
            try:
                self._space_groups[material_id] = int(space_group(s)) if s is not None else None
            except ValueError:
                self._space_groups[material_id] = None
        return self._space_groups[material_id]

    def _material(self, mid: str, formula: str, comp_dist: float, **kw: Any) -> KnownMaterial:
        return KnownMaterial(mid, formula, self.e_above_hull(mid), self.space_group(mid), float(comp_dist),
                             has_structure=mid in self._structures, **kw)

    def composition_distances(self, composition: Any) -> np.ndarray:
        """Half the L1 distance of atomic fractions to every entry, ``(n_entries,)``."""
        return 0.5 * np.abs(self._matrix - _composition_vector(composition)[None, :]).sum(axis=1)

    def nearest(self, structure: Structure, *, k: int = 5, matcher: str = "disordered",
                structure_source: str = "generated") -> NearestKnown:
        """The ``k`` nearest known materials by composition and by structure, and why the candidate is (not) novel."""
        from mattergen_lab.evaluation.matching import ANGLE_TOL, LTOL, STOL, _ordered_matcher, structures_match

        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"{k=} must be a positive integer")
        check_structure_input(structure, name="structure", volume_per_atom=None)
        s = structure.copy()
        s.remove_oxidation_states()
        comp = s.composition
        dist = self.composition_distances(comp)
        order = np.argsort(dist, kind="stable")[:k]
        by_comp = tuple(self._material(self.ids[i], self.formulas[i], dist[i]) for i in order)
        comp_dist = dict(zip(self.ids, dist.tolist()))

        strict = []
        for mid, known in self.novelty.known(reduced_formula=comp.reduced_formula):
            fit = _ordered_matcher().get_rms_dist(s, known)
            ok = structures_match(s, known, matcher=matcher)
            strict.append(self._material(mid, comp.reduced_formula, comp_dist.get(mid, 0.0),
                                         structure_distance=None if fit is None else float(fit[0]),
                                         within_tolerance=ok, matcher="novelty"))
        match = self.novelty.find(s, matcher=matcher)  # the same verdict as the evaluation's novelty check
        compared = len(strict)
        found = sorted((m for m in strict if m.within_tolerance or m.structure_distance is not None),
                       key=lambda m: (not m.within_tolerance, m.structure_distance if m.structure_distance is not None else 9))
        tol = f"ltol {LTOL}, stol {STOL}, angle_tol {ANGLE_TOL:g}°, {matcher} rules"
        if match is not None and match.startswith("proxy:"):
            note = (f"not novel: {match[6:]} has the same formula and lattice (composition+lattice proxy; "
                    f"no coordinates for it in {self.novelty.name})")
        elif match is not None:
            note = f"not novel: matches {match} within the novelty matcher's tolerances ({tol})"
        else:
            loose = self._loose(s, comp, comp_dist, exclude={m.material_id for m in found})
            compared += len(loose[1])
            found = (found + loose[0])[:k]
            closest = found[0] if found else None
            head = (f"novel: none of the {len(strict)} known {comp.reduced_formula} structures in {self.novelty.name} "
                    f"matches within the novelty matcher's tolerances ({tol})")
            if closest is not None:
                note = (f"{head}; closest structure: {closest.material_id} ({closest.formula}, {closest.matcher} "
                        f"matcher, RMS {closest.structure_distance:.3f})")
            else:
                note = f"{head}; no known structure of this formula or prototype fits even a loose matcher " \
                       f"({LOOSE_MATCHER['ltol']}/{LOOSE_MATCHER['stol']}/{LOOSE_MATCHER['angle_tol']:g}°)"
                if by_comp:
                    note += f"; closest by composition: {by_comp[0].material_id} ({by_comp[0].formula})"
        return NearestKnown(by_comp, tuple(found[:k]), match, note, self.novelty.name, structure_source, compared)

    def _loose(self, s: Structure, comp: Any, comp_dist: dict[str, float], exclude: set[str]) -> tuple[list[KnownMaterial], list[str]]:
        """Closest structures under the loose matcher: same formula, then the same prototype (anonymous formula)."""
        pool = [mid for mid, _ in self.novelty.known(reduced_formula=comp.reduced_formula) if mid not in exclude]
        proto = [m for m in self._prototypes.get(comp.anonymized_formula, []) if m not in exclude and m not in pool]
        proto.sort(key=lambda m: comp_dist.get(m, 1.0))
        pool = (pool + proto)[:MAX_LOOSE_COMPARISONS]
        out = []
        for mid in pool:
            known = self._structures[mid]
            same = known.composition.reduced_formula == comp.reduced_formula
            if same:
                fit = _loose_matcher().get_rms_dist(s, known)
                rms = None if fit is None else fit[0]
            else:
                rms = _loose_matcher().get_rms_anonymous(s, known)[0]
            if rms is not None:
                out.append(self._material(mid, known.composition.reduced_formula, comp_dist.get(mid, 1.0),
                                          structure_distance=float(rms), matcher="loose" if same else "loose, prototype"))
        out.sort(key=lambda m: m.structure_distance)
        return out, pool


@lru_cache(maxsize=1)
def _loose_matcher() -> Any:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**LOOSE_MATCHER, primitive_cell=True, scale=True, attempt_supercell=False, allow_subset=False)


@registered
@lru_cache(maxsize=2)
def _mp20_known(data_dir: str) -> KnownMaterials:
    import pandas as pd
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    from mattergen_lab.evaluation.matching import load_novelty_reference
    from mattergen_lab.evaluation.reference import MP20_FORMATION_ENERGIES, load_reference
    from mattergen_lab.evaluation.reference_files import elemental_references

    table = pd.read_csv(os.path.join(data_dir, MP20_FORMATION_ENERGIES))
    refs, hull = elemental_references(data_dir), load_reference("mp20", data_dir=data_dir)
    compositions = dict(zip(table["material_id"].astype(str), table["composition"]))
    formation = dict(zip(table["material_id"].astype(str), table["formation_energy_per_atom"].astype(float)))

    def e_hull(mid: str) -> float | None:  # the entry's MP formation energy against the MP-20 hull
        ef, comp = formation.get(mid), Composition(compositions.get(mid, ""))
        if ef is None or not math.isfinite(ef) or not all(el.symbol in refs for el in comp.elements):
            return None
        energy = ef * comp.num_atoms + sum(n * refs[el.symbol].energy_per_atom for el, n in comp.items())
        return hull.e_above_hull(PDEntry(comp, energy))

    return KnownMaterials(load_novelty_reference("mp20", data_dir=data_dir), compositions=compositions, e_above_hull=e_hull)


# ---------------------------------------------------------------------------------------- the review
@dataclass(frozen=True)
class CandidateReview:
    """Everything a synthesis chemist reads about one candidate (see :func:`review_candidate`)."""

    id: str
    formula: str
    structure_source: str  # the structure XRD, oxidation states and nearest materials describe
    xrd: XRDPattern | None
    xrd_note: str
    nearest: NearestKnown | None
    known_xrd: XRDPattern | None  # of nearest.closest()
    known_xrd_id: str | None
    oxidation_states: dict[str, float] | None
    oxidation_note: str
    density: float  # g/cm³, generated structure
    density_relaxed: float | None
    space_group: int | None
    space_group_symbol: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("id", "formula", "structure_source", "xrd_note", "known_xrd_id",
                                           "oxidation_states", "oxidation_note", "density", "density_relaxed",
                                           "space_group", "space_group_symbol")}
        d["xrd_strongest_peaks"] = self.xrd.strongest() if self.xrd else []
        d["xrd_wavelength"] = {"name": self.xrd.wavelength, "angstrom": self.xrd.wavelength_angstrom} if self.xrd else None
        d["nearest_known"] = self.nearest.to_dict() if self.nearest else None
        return d


def review_candidate(structure: Structure, *, id: str, relaxed: Structure | None = None,
                     known: KnownMaterials | None = None, wavelength: str | float = DEFAULT_WAVELENGTH,
                     k: int = 5) -> CandidateReview:
    """Review one candidate: XRD, nearest known materials (``known``; None skips them), oxidation states, density.

    The relaxed structure, when given, is what XRD, oxidation states, symmetry and the nearest-known search
    describe (novelty is judged on it, as in the evaluation); otherwise the generated one.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    resolve_wavelength(wavelength)  # a bad name fails here, before any work
    check_structure_input(structure, name=f"candidate {id!r}", volume_per_atom=None)
    if relaxed is not None:
        check_structure_input(relaxed, name=f"relaxed candidate {id!r}", volume_per_atom=None)
    target, source = (relaxed, "relaxed") if relaxed is not None else (structure, "generated")
    try:
        xrd, xrd_note = xrd_pattern(target, wavelength=wavelength), f"{source} structure, pymatgen XRDCalculator"
    except ValueError as exc:
        xrd, xrd_note = None, str(exc)
    nearest = known.nearest(target, k=k, structure_source=source) if known is not None else None
    known_xrd, known_id = None, None
    closest = nearest.closest() if nearest is not None else None
    if closest is not None and known is not None:
        with np.errstate(all="ignore"):
            try:
                known_xrd, known_id = xrd_pattern(known.structure(closest.material_id), wavelength=wavelength), closest.material_id
            except ValueError as exc:
                log.warning("no XRD for %s: %s", closest.material_id, exc)
    oxi, oxi_note = guess_oxidation_states(target)
    try:
        sga = SpacegroupAnalyzer(target, symprec=0.1, angle_tolerance=5.0)
        sg, symbol = int(sga.get_space_group_number()), str(sga.get_space_group_symbol())
    except Exception:  # noqa: BLE001 - spglib fails on odd cells; the review still shows everything else
        sg, symbol = None, None
    return CandidateReview(str(id), target.composition.reduced_formula, source, xrd, xrd_note, nearest, known_xrd,
                           known_id, oxi, oxi_note, float(structure.density),
                           float(relaxed.density) if relaxed is not None else None, sg, symbol)
