"""Minimum or saddle: relax a crystal again after small random displacements and see whether its energy falls.

Forces that respect a crystal's symmetry have no component that breaks it, so an exactly symmetric crystal placed at
a *saddle* of the energy relaxes to that saddle and stays in its group, while the minimum beside it has lower
symmetry and lower energy. Structure searches guard against this by displacing every atom a little before relaxing
(AIRSS: Pickard & Needs, J. Phys.: Condens. Matter 23, 053201, 2011). :func:`saddle_check` does that for one
crystal: relax it as it is (the reference), relax it again after Gaussian displacements, and report the energy change
per atom and the space group before and after. A crystal whose energy falls by more than :data:`SADDLE_FALL` is at a
saddle: as a candidate for synthesis it would not keep its symmetry.

The symmetric sampling mode makes such crystals far more often than the default sampler (19–45 % against 5 %,
``benchmarks/bench_saddles.py``; docs/quality.md, *Minima or saddles*). The evaluation protocol itself
(:mod:`~mattergen_lab.evaluation.evaluate`) relaxes without displacements, as MatterGen's does; this is a separate
check, costing one extra relaxation per crystal.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Structure

#: A fall of the energy (eV/atom) after displacements that marks a saddle: well above what the relaxation's own
#: convergence (fmax 0.05 eV/Å) moves energies by (under 1 meV/atom).
SADDLE_FALL = 0.010
#: Falls reported by :func:`saddle_summary` (eV/atom).
FALLS = (SADDLE_FALL, 0.050)
#: Default displacement: Gaussian, per Cartesian component (Å).
RATTLE = 0.05


@dataclass(frozen=True)
class SaddleCheck:
    """One crystal's check: ``de_per_atom`` (displaced minus reference relaxation, eV/atom; NaN unless both
    relaxations converged: one stopped at a step or time cap would pass for a fall), the space groups of the two
    relaxed crystals (:func:`~mattergen_lab.properties.symmetry.space_group`, 0.1 Å and 5°; 1 where spglib finds
    none; 0 without a result), the relaxations' statuses and the displaced relaxation's crystal."""

    de_per_atom: float
    group_before: int
    group_after: int
    structure: Structure | None
    status_before: str = ""
    status_after: str = ""

    @property
    def at_saddle(self) -> bool:
        return bool(self.de_per_atom < -SADDLE_FALL)


def space_group_number(structure: Structure | None) -> int:
    """The project's space group of ``structure`` (1 where spglib finds none, 0 for no structure)."""
    from mattergen_lab.properties.symmetry import space_group

    if structure is None:
        return 0
    try:
        return int(space_group(structure))
    except ValueError:
        return 1


def rattled(structure: Structure, amplitude: float, rng: np.random.Generator) -> Structure:
    """A copy with every site moved by Gaussian displacements of ``amplitude`` Å per Cartesian component (ASE's
    ``Atoms.rattle`` with ``rng``), wrapped into the cell."""
    from pymatgen.io.ase import AseAtomsAdaptor

    if not (isinstance(amplitude, (int, float)) and 0 < amplitude <= 0.5):
        raise ValueError(f"rattle amplitude={amplitude!r} must be in (0, 0.5] Å")
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.rattle(stdev=amplitude, rng=rng)
    atoms.wrap()
    return AseAtomsAdaptor.get_structure(atoms)


def saddle_check(structure: Structure, relaxer: Any, *, rattle: float = RATTLE, seed: int = 0,
                 rng: np.random.Generator | None = None) -> SaddleCheck:
    """Relax ``structure`` as it is and after :func:`rattled` displacements (from ``rng``, else a generator seeded
    with ``seed``), with ``relaxer`` (a :class:`~mattergen_lab.evaluation.relax.Relaxer`, e.g.
    ``get_relaxer("chgnet")``); see the module docstring."""
    moved = rattled(structure, rattle, rng if rng is not None else np.random.default_rng(seed))
    ref = relaxer.relax(structure)
    again = relaxer.relax(moved)
    converged = ref.status == again.status == "converged" and math.isfinite(ref.energy) and math.isfinite(again.energy)
    de = (again.energy - ref.energy) / len(structure) if converged else math.nan
    return SaddleCheck(de, space_group_number(ref.structure), space_group_number(again.structure), again.structure,
                       ref.status, again.status)


def saddle_summary(rows: Sequence[dict[str, Any]], *, threshold: float = 0.1) -> dict[str, Any]:
    """Shares from rows with ``de`` (eV/atom, displaced minus reference; NaN rows, where a relaxation did not
    converge, are left out and counted as ``not_converged``), ``e_above_hull`` (eV/atom, without displacements),
    ``group_before`` and ``group_after``; ``threshold``: the stability threshold (eV/atom). ``unstable_made_stable``
    adds the fall to E_hull: an estimate (the hull is not recomputed)."""
    skipped = sum(not math.isfinite(r["de"]) for r in rows)
    rows = [r for r in rows if math.isfinite(r["de"])]
    n = len(rows)

    def pct(k: int, m: int) -> float:
        return round(100.0 * k / m, 1) if m else math.nan

    stable = [r for r in rows if r["e_above_hull"] <= threshold]
    unstable = [r for r in rows if r["e_above_hull"] > threshold]
    out: dict[str, Any] = {"n": n, "not_converged": skipped, "n_stable": len(stable), "n_unstable": len(unstable)}
    for fall in FALLS:
        key = f"{round(fall * 1000)}meV"
        out[f"falls_over_{key}_pct"] = pct(sum(r["de"] < -fall for r in rows), n)
        out[f"stable_falls_over_{key}_pct"] = pct(sum(r["de"] < -fall for r in stable), len(stable))
        out[f"unstable_falls_over_{key}_pct"] = pct(sum(r["de"] < -fall for r in unstable), len(unstable))
    out["unstable_made_stable"] = sum(r["e_above_hull"] + r["de"] <= threshold for r in unstable)
    fallen = [r for r in rows if r["de"] < -SADDLE_FALL]
    out["fallen_keep_group_pct"] = pct(sum(r["group_after"] == r["group_before"] for r in fallen), len(fallen))
    out["fallen_p1_pct"] = pct(sum(r["group_after"] == 1 for r in fallen), len(fallen))
    out["median_de_mev"] = round(1000 * statistics.median(r["de"] for r in rows), 2) if n else math.nan
    out["largest_fall_mev"] = round(-1000 * min(r["de"] for r in rows), 1) if n else math.nan
    return out
