"""Composition-derived properties: the Herfindahl–Hirschman index (HHI) and the chemical system.

**What ``hhi_score`` means here.** MatterGen lists ``hhi_score`` among its conditioning properties (the
Alex-MP-20 data carry it; the paper's joint target is HHI 1250 with magnetic density 0.2). The official
code only reads the value from the dataset, it does not compute it. We use the table shipped with pymatgen
(``pymatgen.analysis.hhi.HHIModel``, data of Gaultois et al., *Chem. Mater.* 25, 2911 (2013)) and its
**production** HHI, averaged over the elements weighted by **mass fraction**, exactly as
``HHIModel().get_hhi_production`` does. The scale is 0–10,000 (dimensionless); by the US DoJ/FTC
convention pymatgen quotes, < 1500 is "low" supply-chain concentration and > 2500 "high".

The table has no value for H, the noble gases except He, Tc, Pm and everything heavier than Bi. An
element without a value raises ``ValueError`` naming it (pymatgen silently returns ``None``); over a
dataset such crystals get NaN (= missing label).
"""

from __future__ import annotations

import math

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Composition, Structure

log = logging.getLogger(__name__)

#: Where the HHI numbers come from (for reports next to the values).
HHI_SOURCE = "pymatgen HHIModel production HHI (Gaultois et al. 2013), mass-fraction weighted"

#: Largest atomic number covered by the lookup arrays.
_MAX_Z = 118

CompositionLike = Union["Composition", "Structure", str]


@functools.lru_cache(maxsize=1)
def hhi_production_table() -> dict[str, float]:
    """``{element symbol: production HHI}`` from pymatgen's table (0–10,000)."""
    from pymatgen.analysis.hhi import HHIModel

    return {symbol: float(production) for symbol, (production, _reserve) in HHIModel().symbol_hhip_hhir.items()}


@functools.lru_cache(maxsize=1)
def _lookup_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(hhi[Z], mass[Z])`` for Z = 0.._MAX_Z: production HHI (NaN where the table has none), atomic mass (amu)."""
    from pymatgen.core.periodic_table import Element

    table = hhi_production_table()
    hhi = np.full(_MAX_Z + 1, np.nan)
    mass = np.full(_MAX_Z + 1, np.nan)
    for z in range(1, _MAX_Z + 1):
        el = Element.from_Z(z)
        mass[z] = float(el.atomic_mass)
        hhi[z] = table.get(el.symbol, np.nan)
    return hhi, mass


def _as_composition(x: Any) -> Composition:
    """A Composition (oxidation states dropped) from a Composition, a formula string or a structure."""
    from pymatgen.core import Composition

    if isinstance(x, str):
        try:
            comp = Composition(x)
        except Exception as exc:  # pymatgen raises several types for bad formulas
            raise ValueError(f"could not read the formula {x!r}: {exc}") from exc
    elif isinstance(x, Composition):
        comp = x
    elif hasattr(x, "composition"):  # Structure, IStructure, Molecule
        comp = x.composition
    else:
        raise ValueError(f"expected a pymatgen Composition, Structure or formula string, got {type(x).__name__}")
    if comp.num_atoms <= 0:
        raise ValueError(f"composition {x!r} is empty")
    from pymatgen.core.periodic_table import Element

    try:
        elements = comp.element_composition
    except Exception as exc:
        raise ValueError(f"composition {comp.formula!r} has species that are not elements: {exc}") from exc
    not_elements = sorted(str(e) for e in elements if not isinstance(e, Element))
    if not_elements:  # pymatgen reads unknown symbols such as "Qq" as dummy species
        raise ValueError(f"formula {comp.formula!r}: {', '.join(not_elements)} is not an element")
    return elements


def hhi_score(composition_or_structure: CompositionLike) -> float:
    """Production HHI of a composition, mass-fraction weighted (0–10,000, dimensionless).

    ``HHI = Σ_e w_e · HHI_production(e)`` with ``w_e`` the mass fraction of element ``e``; the same number as
    pymatgen's ``HHIModel().get_hhi_production`` (see the module docstring for the source and meaning).

    Args:
        composition_or_structure: a pymatgen ``Composition``, ``Structure`` or formula string (``"Fe2O3"``).

    Raises:
        ValueError: an element has no HHI value in the table (the message names it), or the input is not a
            composition.
    """
    comp = _as_composition(composition_or_structure)
    table = hhi_production_table()
    missing = sorted({el.symbol for el in comp.elements if el.symbol not in table}, key=str)
    if missing:
        raise ValueError(
            f"no HHI value for element(s) {', '.join(missing)} (in {comp.reduced_formula}): "
            f"pymatgen's HHI table covers {len(table)} elements and not these"
        )
    bad = {el.symbol: amount for el, amount in comp.items() if not (math.isfinite(amount) and amount >= 0)}
    if bad or not comp.num_atoms > 0:
        raise ValueError(f"composition {composition_or_structure!r} has amounts that are not finite and positive: {bad or 'no atoms'}")
    weights = {el.symbol: amount * float(el.atomic_mass) for el, amount in comp.items()}  # amu per formula
    total = sum(weights.values())
    return float(sum(w * table[symbol] for symbol, w in weights.items()) / total)


def hhi_scores(atom_types: np.ndarray | Sequence[int], num_atoms: np.ndarray | Sequence[int]) -> np.ndarray:
    """Vectorised :func:`hhi_score` over crystals stored as flat arrays.

    Args:
        atom_types: ``(N,)`` atomic numbers of all atoms, crystal after crystal.
        num_atoms: ``(B,)`` atoms per crystal (each ≥ 1; they sum to ``N``).

    Returns:
        ``(B,)`` float64 production HHI; NaN for a crystal that holds an element without an HHI value.
    """
    z = np.asarray(atom_types, dtype=np.int64).reshape(-1)  # (N,)
    counts = np.asarray(num_atoms, dtype=np.int64).reshape(-1)  # (B,)
    if int(counts.sum()) != len(z):
        raise ValueError(f"num_atoms sums to {int(counts.sum())} but there are {len(z)} atom types")
    if len(counts) and int(counts.min()) < 1:
        raise ValueError("every crystal needs at least one atom")
    if len(z) and (int(z.min()) < 1 or int(z.max()) > _MAX_Z):
        bad = sorted(set(z[(z < 1) | (z > _MAX_Z)].tolist()))
        raise ValueError(f"atomic numbers must be in 1..{_MAX_Z}, got {bad}")
    hhi, mass = _lookup_arrays()
    crystal = np.repeat(np.arange(len(counts)), counts)  # (N,) crystal index of each atom
    atom_mass = mass[z]  # (N,)
    # Mass-weighted mean over atoms = mass-fraction-weighted mean over elements; NaN propagates.
    weighted = np.bincount(crystal, weights=atom_mass * hhi[z], minlength=len(counts))  # (B,)
    total_mass = np.bincount(crystal, weights=atom_mass, minlength=len(counts))  # (B,)
    return weighted / total_mass


def chemical_system(composition_or_structure: CompositionLike) -> str:
    """Sorted element symbols joined by ``-`` (``"Fe-Li-O"``), as pymatgen ``Composition.chemical_system``."""
    return _as_composition(composition_or_structure).chemical_system
