"""Structural validity of a crystal (spec §7.4): every interatomic distance ≥ 0.5 Å, volume ≥ 0.1 Å³.

MatterGen's validity says nothing about density: a 6,905 Å³/atom cell with atoms far apart is "valid". So
:class:`StructureCheck` also says whether the density is *plausible*: within a factor of 3 of MP-20's range of
volume per atom (5.77-201.6 Å³/atom over the 18,093 val + test crystals; median 18.3, 0.07 % above 100). It is a
flag shown beside validity, not a change of MatterGen's metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_DISTANCE = 0.5  # Å
MIN_VOLUME = 0.1  # Å^3
#: MP-20's extreme volumes per atom (Å³/atom; val + test, the MatterGen cache) and the allowed factor beyond them.
MP20_VOLUME_PER_ATOM = (5.77, 201.6)
DENSITY_FACTOR = 3.0
_GRID = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
_IMAGES = _GRID[np.any(_GRID != 0, axis=1)]  # non-zero lattice translations, for periodic self-distances


def min_interatomic_distance(structure) -> float:
    """Shortest distance between two sites, periodic images included (``inf`` for one isolated atom)."""
    lattice = structure.lattice
    if not np.all(np.isfinite(lattice.matrix)) or abs(lattice.volume) < 1e-12:
        return float("nan")
    # Periodic self-distances are the shortest lattice vectors; pairs come from the distance matrix,
    # which pymatgen computes with the minimum-image convention over neighbouring images.
    best = float(np.linalg.norm(lattice.get_cartesian_coords(_IMAGES), axis=-1).min())
    if len(structure) > 1:
        d = structure.distance_matrix
        best = min(best, float(d[~np.eye(len(structure), dtype=bool)].min()))
    return best


@dataclass(frozen=True)
class StructureCheck:
    valid: bool
    min_distance: float
    volume_per_atom: float
    finite: bool
    reason: str
    #: volume per atom within DENSITY_FACTOR of MP-20's range (False for non-finite cells)
    plausible_density: bool = True
    density_note: str = ""


def check_structure(structure, *, min_distance: float = MIN_DISTANCE, min_volume: float = MIN_VOLUME) -> StructureCheck:
    """Structural validity with the reason it fails, if it does."""
    finite = bool(np.all(np.isfinite(structure.lattice.matrix)) and np.all(np.isfinite(structure.frac_coords)))
    volume = float(structure.volume) if finite else float("nan")
    dmin = min_interatomic_distance(structure) if finite else float("nan")
    reason = ""
    if len(structure) == 0:
        reason = "no atoms"
    elif not finite:
        reason = "non-finite lattice or coordinates"
    elif not volume >= min_volume:
        reason = f"volume {volume:.3g} Å³ < {min_volume}"
    elif not dmin >= min_distance:
        reason = f"atoms {dmin:.3f} Å apart (< {min_distance} Å)"
    vpa = volume / len(structure) if finite and len(structure) else math.nan
    plausible, note = density_plausibility(vpa)
    return StructureCheck(
        valid=not reason,
        min_distance=dmin,
        volume_per_atom=vpa,
        finite=finite,
        reason=reason,
        plausible_density=plausible,
        density_note=note,
    )


def density_plausibility(volume_per_atom: float) -> tuple[bool, str]:
    """``(plausible, note)``: is ``volume_per_atom`` (Å³/atom) within a factor 3 of MP-20's range?"""
    lo, hi = MP20_VOLUME_PER_ATOM[0] / DENSITY_FACTOR, MP20_VOLUME_PER_ATOM[1] * DENSITY_FACTOR
    if not math.isfinite(volume_per_atom):
        return False, "no finite volume"
    if volume_per_atom > hi:
        return False, f"{volume_per_atom:.0f} Å³/atom: far less dense than any MP-20 crystal (max {MP20_VOLUME_PER_ATOM[1]:.0f})"
    if volume_per_atom < lo:
        return False, f"{volume_per_atom:.2f} Å³/atom: far denser than any MP-20 crystal (min {MP20_VOLUME_PER_ATOM[0]:.2f})"
    return True, ""
