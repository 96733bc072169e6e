"""One structure's evaluation: relax it, score it against the hull and the novelty reference, check validity.

:func:`_evaluate_one` makes one row of the per-structure table (spec §7.4) with :func:`rmsd_from_relaxation`
and :func:`composition_valid`; :func:`_fingerprint` is the key by which a resumed run knows a finished row
belongs to the same structure.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.evaluation.matching import NoveltyReference
from mattergen_lab.evaluation.reference import MissingReferenceError, ReferenceHull
from mattergen_lab.evaluation.relax import Relaxer, RelaxResult
from mattergen_lab.evaluation.validity import check_structure

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

log = logging.getLogger("mattergen_lab.evaluation.evaluate")  # the logger these messages had before the module was split

RMSD_LTOL, RMSD_STOL, RMSD_ANGLE_TOL = 0.5, 0.5, 10.0


def rmsd_from_relaxation(generated: Structure, relaxed: Structure) -> float:
    """RMSD in Å between a generated structure and its relaxed form (spec §7.4).

    The generated structure is refined, made primitive and LLL-reduced; pymatgen's ``get_rms_dist`` with the
    RMSD matcher (ltol 0.5, stol 0.5, 10°, no scaling, supercells allowed) is converted to Å with
    ``(V_avg / n)^(1/3)``. Without a match the value is ``0.5 · (V/n)^(1/3)``.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        ref = SpacegroupAnalyzer(generated, symprec=0.1, angle_tolerance=5).get_refined_structure()
        ref = ref.get_primitive_structure().get_reduced_structure(reduction_algo="LLL")
    except Exception:  # noqa: BLE001 - turned into a clear message or a recorded failure
        ref = generated
    matcher = StructureMatcher(
        ltol=RMSD_LTOL, stol=RMSD_STOL, angle_tol=RMSD_ANGLE_TOL, primitive_cell=True, scale=False,
        attempt_supercell=True, allow_subset=False,
    )
    try:
        result = matcher.get_rms_dist(ref, relaxed)
    except Exception:  # noqa: BLE001 - turned into a clear message or a recorded failure
        result = None
    if result is None:
        return float(0.5 * (generated.volume / len(generated)) ** (1 / 3))
    v_avg = 0.5 * (ref.volume / len(ref) + relaxed.volume / len(relaxed))
    return float(result[0] * v_avg ** (1 / 3))


#: SMACT enumerates every combination of oxidation states, which grows exponentially with the number of
#: elements (a 14-element composition from an untrained model ran for minutes). MP-20 has at most 7 elements
#: per crystal; compositions with more than this count as not valid without running SMACT.
MAX_SMACT_ELEMENTS = 8


def composition_valid(composition: Any) -> bool:
    """SMACT charge neutrality + Pauling electronegativity test; single elements and pure-metal alloys pass.

    Compositions with more than :data:`MAX_SMACT_ELEMENTS` elements are reported invalid without running SMACT
    (see :func:`_evaluate_one`, which says so in the ``error`` column).
    """
    from smact.screening import smact_validity

    if len(composition.elements) == 1:
        return True
    if len(composition.elements) > MAX_SMACT_ELEMENTS:
        return False
    try:
        return bool(smact_validity(composition, use_pauling_test=True, include_alloys=True))
    except Exception as exc:  # noqa: BLE001 - turned into a clear message or a recorded failure
        log.debug("smact_validity failed for %s: %s", composition, exc)
        return False


def _fingerprint(structure: Structure) -> str:
    """The resume key of a structure: a hash of every site (species and fractional coordinates, 1e-6) and the
    lattice matrix (1e-6 Å), so moving one atom makes a finished result stale."""
    species = ",".join(str(site.species) for site in structure)
    frac = np.round(np.asarray(structure.frac_coords, dtype=float), 6) + 0.0  # + 0.0: -0.0 -> 0.0
    lattice = np.round(np.asarray(structure.lattice.matrix, dtype=float), 6) + 0.0
    text = f"{species}|{frac.tolist()}|{lattice.tolist()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _legacy_fingerprint(structure: Structure) -> str:
    text = f"{structure.composition.formula}|{np.round(structure.lattice.abc, 4).tolist()}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _evaluate_one(
    sid: str,
    structure: Structure,
    *,
    relaxer: Relaxer,
    hull: ReferenceHull,
    novelty: NoveltyReference | None,
    matcher: str,
    threshold: float,
    result: RelaxResult | None = None,
) -> tuple[dict[str, Any], Structure | None]:
    from mattergen_lab.properties.symmetry import space_group

    comp = structure.composition
    check = check_structure(structure)
    comp_ok = composition_valid(comp)
    row: dict[str, Any] = {
        "id": sid,
        "formula": comp.reduced_formula,
        "chemical_system": comp.chemical_system,
        "num_atoms": len(structure),
        "comp_valid": comp_ok,
        "structure_valid": check.valid,
        "structure_comp_valid": comp_ok and check.valid,
        "min_distance": check.min_distance,
        "plausible_density": check.plausible_density,
        "input_fingerprint": _fingerprint(structure),
    }
    errors = [f"invalid structure: {check.reason}"] if check.reason else []
    if len(comp.elements) > MAX_SMACT_ELEMENTS:
        errors.append(f"composition counted invalid: {len(comp.elements)} elements > {MAX_SMACT_ELEMENTS} (SMACT not run)")
    if result is None:  # else relaxed already (batched engine)
        result = relaxer.relax(structure)
    relaxed = result.structure
    if relaxed is not None and not (np.all(np.isfinite(relaxed.lattice.matrix)) and np.all(np.isfinite(relaxed.frac_coords))):
        relaxed = None  # an exploded relaxation's last frame: NaN must not reach spglib, the matcher or a CIF
        errors.append("the relaxed structure has non-finite values and is not kept")
    row.update(
        relax_status=result.status,
        relax_steps=result.steps,
        relax_seconds=round(result.seconds, 3),
        max_force=result.max_force,
    )
    if result.message and result.status != "converged":
        errors.append(f"relaxation {result.status}: {result.message}")
    final = relaxed if relaxed is not None else structure
    row["volume_per_atom"] = float(final.volume / len(final)) if len(final) else math.nan
    try:
        row["space_group"] = int(space_group(final))
    except Exception:  # noqa: BLE001 - turned into a clear message or a recorded failure
        row["space_group"] = -1
    row.update(energy=math.nan, energy_per_atom=math.nan, energy_correction=math.nan,
               formation_energy_per_atom=math.nan, energy_above_hull=math.nan)
    if result.ok and relaxed is not None:
        entry = relaxer.to_entry(relaxed, result.energy, entry_id=sid)
        row.update(energy=float(entry.energy), energy_per_atom=float(entry.energy_per_atom),
                   energy_correction=float(entry.correction))
        try:
            row["energy_above_hull"] = hull.e_above_hull(entry)
            row["formation_energy_per_atom"] = hull.formation_energy_per_atom(entry)
        except MissingReferenceError as exc:
            errors.append(str(exc))
    row["stable"] = bool(row["energy_above_hull"] <= threshold)  # NaN compares False
    row["rmsd_from_relaxation"] = rmsd_from_relaxation(structure, relaxed) if result.ok and relaxed is not None else math.nan
    if novelty is not None and relaxed is not None:
        match = novelty.find(relaxed, matcher=matcher)
        row["is_novel"], row["novelty_match"] = match is None, match or ""
        row["novel_system"] = not novelty.has_system(comp.chemical_system)
    else:  # no novelty reference (None: unknown), or no relaxed structure to compare (not novel)
        row["is_novel"] = None if novelty is None else False
        row["novelty_match"], row["novel_system"] = "", None if novelty is None else False
    row["error"] = "; ".join(errors)
    return row, relaxed
