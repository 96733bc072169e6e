"""Magnetic density: |total magnetic moment| per volume.

``magnetic_density = |Σ_i m_i| / V`` in μB/Å³, with ``m_i`` the site magnetic moments (μB) and ``V`` the cell
volume (Å³). This is the Materials Project's ``total_magnetization / volume``
(``total_magnetization_normalized_vol``), the quantity MatterGen calls ``dft_mag_density`` and quotes in
"Å⁻³" (paper target 0.20).

**There is no offline oracle for magnetic density.** The moments must come from the user, normally from a
spin-polarised DFT calculation of the (relaxed) crystal. CHGNet predicts per-site moment *magnitudes*
(unsigned, trained on MP), which say nothing about ferro- vs antiferromagnetic order; their sum is only
an upper bound (the ferromagnetic case). :func:`magnetic_density_upper_bound` computes that bound as a
clearly named **proxy** for ranking candidates (notebook 04, ``benchmarks/bench_adapters.py``); it is never
reported as the magnetic density.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure


def magnetic_density(structure: Structure, magmoms: Sequence[float] | np.ndarray | None = None) -> float:
    """``|Σ magnetic moments| / volume`` in μB/Å³ (MP's ``total_magnetization / volume``).

    Args:
        structure: a pymatgen ``Structure`` (its cell volume in Å³ is used).
        magmoms: one moment per site in μB: scalars (collinear, signed) or 3-vectors (non-collinear; the
            norm of their sum is used). ``None`` reads the ``magmom`` site property.

    Raises:
        ValueError: no moments given or stored, a count or shape that does not match the sites (the message
            names both), non-finite moments, or a cell without volume.
    """
    n_sites = len(structure)
    if magmoms is None:
        if "magmom" not in structure.site_properties:
            raise ValueError(
                "no magnetic moments: pass magmoms= (μB per site, e.g. from DFT) or set the 'magmom' site property"
            )
        magmoms = structure.site_properties["magmom"]
    moments = np.asarray(magmoms, dtype=np.float64)
    if moments.ndim == 0 or moments.shape[0] != n_sites:
        got = "a scalar" if moments.ndim == 0 else f"{moments.shape[0]} moments"
        raise ValueError(f"got {got} for a structure with {n_sites} sites; give one moment per site")
    if moments.ndim > 2 or (moments.ndim == 2 and moments.shape[1] != 3):
        raise ValueError(f"magmoms has shape {moments.shape}; expected ({n_sites},) or ({n_sites}, 3)")
    if not np.all(np.isfinite(moments)):
        raise ValueError("magmoms contains non-finite values")
    volume = float(structure.volume)
    if not (math.isfinite(volume) and volume > 0):
        raise ValueError(f"the cell volume {volume} Å³ is not positive")
    total = float(np.linalg.norm(moments.sum(axis=0)))  # μB; abs() for collinear moments
    return total / volume


def chgnet_site_moments(structure: Structure, *, load_path: str | None = None) -> np.ndarray:
    """CHGNet's predicted site magnetic moments (μB, **unsigned** magnitudes), one per site.

    CHGNet was trained on MP's DFT moments but predicts only their magnitudes, so this says nothing about
    ferro- versus antiferromagnetic order. Raises whatever CHGNet raises (e.g. for isolated atoms).
    """
    import contextlib
    import io

    from mattergen_lab.forcefields import load_chgnet

    model = load_chgnet(load_path)
    with contextlib.redirect_stdout(io.StringIO()):
        prediction = model.predict_structure(structure, task="em")  # energy + moments ("m" alone is refused)
    return np.abs(np.asarray(prediction["m"], dtype=np.float64)).reshape(len(structure))


def magnetic_density_upper_bound(structure: Structure, *, load_path: str | None = None) -> float:
    """A **proxy**, not an oracle: ``Σ|m_i| / V`` (μB/Å³) with CHGNet's unsigned site moments.

    It equals the magnetic density of the ferromagnetic arrangement of CHGNet's moments, an upper bound on
    MP's ``total_magnetization / volume`` for those moments; antiferromagnets come out far too high. Use it to
    rank candidates for DFT follow-up, label it as a proxy, and prefer relaxed structures.
    """
    return magnetic_density(structure, magmoms=chgnet_site_moments(structure, load_path=load_path))
