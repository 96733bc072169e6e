"""Structural validity of a crystal (spec §7.4): every interatomic distance ≥ 0.5 Å, volume ≥ 0.1 Å³."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_DISTANCE = 0.5  # Å
MIN_VOLUME = 0.1  # Å^3
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


def check_structure(structure, *, min_distance: float = MIN_DISTANCE, min_volume: float = MIN_VOLUME) -> StructureCheck:
    """Structural validity with the reason it fails, if it does."""
    finite = bool(np.all(np.isfinite(structure.lattice.matrix)) and np.all(np.isfinite(structure.frac_coords)))
    volume = float(structure.volume) if finite else float("nan")
    dmin = min_interatomic_distance(structure) if finite else float("nan")
    reason = ""
    if not finite:
        reason = "non-finite lattice or coordinates"
    elif not volume >= min_volume:
        reason = f"volume {volume:.3g} Å³ < {min_volume}"
    elif not dmin >= min_distance:
        reason = f"atoms {dmin:.3f} Å apart (< {min_distance} Å)"
    return StructureCheck(
        valid=not reason,
        min_distance=dmin,
        volume_per_atom=volume / len(structure) if finite and len(structure) else math.nan,
        finite=finite,
        reason=reason,
    )
