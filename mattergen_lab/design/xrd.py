"""Simulated powder XRD for the candidate review: pymatgen's ``XRDCalculator`` (Cu Kα by default), the peaks indexed
in the conventional standard cell, as a table (:func:`xrd_table`). Split from :mod:`mattergen_lab.design.review`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mattergen_lab.structure_io import check_structure_input

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pymatgen.core import Structure

DEFAULT_WAVELENGTH = "CuKa"
TWO_THETA_RANGE = (10.0, 90.0)
#: A powder pattern of a larger cell has too many reflections to compute interactively (only broken samples).
MAX_XRD_VOLUME = 20_000.0  # Å³


@dataclass(frozen=True)
class XRDPattern:
    """A simulated powder pattern: peaks at ``two_theta`` (degrees) with ``intensity`` (strongest = 100)."""

    two_theta: tuple[float, ...]
    intensity: tuple[float, ...]
    hkl: tuple[str, ...]  # conventional standard cell, e.g. "(1 1 1)"; families of one peak joined with "; "
    d_spacing: tuple[float, ...]  # Å
    wavelength: str  # the name given, or the number in Å
    wavelength_angstrom: float

    def rows(self) -> list[dict[str, Any]]:
        return [{"two_theta": t, "intensity": i, "hkl": h, "d_spacing": d}
                for t, i, h, d in zip(self.two_theta, self.intensity, self.hkl, self.d_spacing)]

    def strongest(self, n: int = 5) -> list[dict[str, Any]]:
        return sorted(self.rows(), key=lambda r: -r["intensity"])[:n]


def resolve_wavelength(wavelength: str | float) -> tuple[str, float]:
    """``(name, Å)`` of a pymatgen wavelength name (``"CuKa"``, ``"MoKa1"``, ...) or a positive number in Å."""
    from pymatgen.analysis.diffraction.xrd import WAVELENGTHS

    if isinstance(wavelength, str):
        if wavelength not in WAVELENGTHS:
            raise ValueError(f"wavelength={wavelength!r} is not a known X-ray line; use one of {sorted(WAVELENGTHS)} "
                             "or a number in Å")
        return wavelength, float(WAVELENGTHS[wavelength])
    if isinstance(wavelength, bool) or not isinstance(wavelength, (int, float)) or not (0.1 <= float(wavelength) <= 5.0):
        raise ValueError(f"wavelength={wavelength!r} must be an X-ray line name or a number of Å in [0.1, 5]")
    return f"{float(wavelength):g} Å", float(wavelength)


def xrd_pattern(structure: Structure, *, wavelength: str | float = DEFAULT_WAVELENGTH,
                two_theta_range: tuple[float, float] = TWO_THETA_RANGE) -> XRDPattern:
    """The powder pattern of ``structure`` (pymatgen ``XRDCalculator``, no Debye-Waller factors).

    Raises:
        ValueError: an unknown wavelength, a bad 2θ range, a structure the pipeline refuses, or a cell above
            :data:`MAX_XRD_VOLUME` (the message names the value).
    """
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    name, angstrom = resolve_wavelength(wavelength)
    lo, hi = (float(x) for x in two_theta_range)
    if not (0 <= lo < hi <= 180):
        raise ValueError(f"two_theta_range={two_theta_range!r} must satisfy 0 <= low < high <= 180 (degrees)")
    check_structure_input(structure, name="structure for XRD", volume_per_atom=None)
    if structure.volume > MAX_XRD_VOLUME:
        raise ValueError(f"a cell of {structure.volume:.0f} Å³ is too large for a powder pattern here "
                         f"(limit {MAX_XRD_VOLUME:.0f} Å³)")
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:  # hkl of the conventional standard cell, as a diffractionist indexes them (peaks do not depend on the cell)
        cell = SpacegroupAnalyzer(structure, symprec=0.1, angle_tolerance=5.0).get_conventional_standard_structure()
    except Exception:  # noqa: BLE001 - spglib fails on odd cells: index in the given cell
        cell = structure
    calc = XRDCalculator(wavelength=angstrom if isinstance(wavelength, (int, float)) else name)
    p = calc.get_pattern(cell, scaled=True, two_theta_range=(lo, hi))
    hkls = ["; ".join("(" + " ".join(str(int(x)) for x in fam["hkl"]) + ")" for fam in peak) for peak in p.hkls]
    return XRDPattern(tuple(float(x) for x in p.x), tuple(float(y) for y in p.y), tuple(hkls),
                      tuple(float(d) for d in p.d_hkls), name, angstrom)


def xrd_table(pattern: XRDPattern) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(pattern.rows(), columns=["two_theta", "intensity", "hkl", "d_spacing"])
