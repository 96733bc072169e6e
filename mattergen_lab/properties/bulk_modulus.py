"""Bulk modulus from an equation-of-state fit on energies of an ML force field.

Protocol (stated so that every number carries it):

1. Optionally relax positions and cell (FIRE, ``fmax`` 0.05 eV/Å, at most 200 steps, ASE's
   ``FrechetCellFilter``, the same filter as the evaluation relaxer).
2. Scale the cell isotropically to ``n_points`` volumes ``V_i = V_ref · (1 + s_i)`` with
   ``s_i = linspace(-strain, +strain, n_points)``: **``strain`` is a volume strain** (0.04 = ±4 % in volume,
   about ±1.3 % in lattice length). Fractional coordinates are kept; with ``relax=True`` the positions are
   relaxed again at each volume (fixed cell), so crystals with free internal parameters get their
   relaxed-ion response.
3. Least-squares fit of E(V) with ASE's equation-of-state forms (``ase.eos.birchmurnaghan`` by default; the
   same functions ``ase.eos.EquationOfState`` fits, but seeded from an exact quadratic fit, see
   :func:`_fit_eos`), and report ``B0 = V d²E/dV²`` at the minimum, converted from eV/Å³ to GPa with
   ``ase.units.GPa``. A fit without a minimum inside the sampled volumes is an error, never a NaN.

The cell shape is not relaxed under strain, so for anisotropic crystals this is the fixed-shape (Voigt-like)
response rather than the hydrostatic one.

Treat an ML bulk modulus as a screening oracle, not as DFT. Measured with CHGNet 0.3.0 and the defaults
here (``relax=True``): Si (diamond) 78 GPa (DFT-PBE ≈ 88), Al (fcc) 52 GPa (≈ 77), Cu (fcc) 165 GPa
(≈ 140), MgO (rock salt) 126 GPa (≈ 150): errors of 10–35 %, mostly too soft. B0' is poorly determined
from ±4 % in volume (it scattered from 2 to 19 in those runs); B0 is the robust number.

Many structures: :func:`~mattergen_lab.evaluation.bulk_moduli` (module
:mod:`~mattergen_lab.evaluation.batched_eos`) runs this protocol on torch-sim's batched FIRE (about 3x faster on
a CPU) and returns one result or error per structure; :func:`bulk_modulus` here is the ASE reference path.

Energies come from :func:`~mattergen_lab.forcefields.get_calculator`: ``"chgnet"`` (weights ship in its wheel; works offline) or
``"mattersim"`` (weights download on first use; offline, pass ``load_path``).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.forcefields import cell_filter, resolve_calculator

if TYPE_CHECKING:  # pragma: no cover
    from ase import Atoms
    from ase.calculators.calculator import Calculator
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

#: Equations of state of the form ``E(V; E0, B0, B0', V0)`` that ASE fits.
SUPPORTED_EOS = ("birchmurnaghan", "murnaghan", "birch", "vinet", "pouriertarantola")

#: A relaxation that changes the volume by more than this factor (either way) is stopped: the potential
#: is collapsing or exploding the cell.
_MAX_VOLUME_FACTOR = 2.0


class BulkModulusError(RuntimeError):
    """The bulk modulus could not be determined (failed relaxation or equation-of-state fit); says why."""


@dataclass(frozen=True)
class BulkModulusResult:
    """Outcome of :func:`bulk_modulus`.

    Attributes:
        value_gpa: bulk modulus B0 in GPa.
        volumes: ``(n_points,)`` cell volumes in Å³ at which energies were computed.
        energies: ``(n_points,)`` total energies in eV (of the whole cell).
        eos_name: the fitted equation of state (ASE name, e.g. ``"birchmurnaghan"``).
        converged: ``False`` if any relaxation stopped at the step cap before reaching ``fmax``; ``True``
            otherwise, including when no relaxation was asked for (``relax=False``).
        v0: fitted equilibrium volume in Å³.
        e0: fitted minimum energy in eV.
        b_prime: fitted pressure derivative dB/dP (dimensionless).
        rms_residual_ev: root-mean-square residual of the fit in eV.
        relaxed: whether positions/cell were relaxed.
        calculator: the calculator's class name (for the protocol record).
        warnings: why the value is poorly constrained, if it is (V0 near the edge of the sampled volumes, a
            poor fit, a bulk modulus below 1 GPa); empty for a clean fit. Treat a value with warnings with care.
        engine: ``"ase"`` (ASE's FIRE, one structure at a time) or ``"torchsim"`` (batched).
    """

    value_gpa: float
    volumes: np.ndarray
    energies: np.ndarray
    eos_name: str
    converged: bool
    v0: float
    e0: float
    b_prime: float
    rms_residual_ev: float
    relaxed: bool
    calculator: str
    warnings: tuple[str, ...] = ()
    engine: str = "ase"


# ====================================================================== relaxation


def _check_not_collapsed(atoms: Atoms) -> None:
    """``BulkModulusError`` below the collapse floor (:data:`~mattergen_lab.constants.MIN_VOLUME_PER_ATOM`)."""
    from mattergen_lab.constants import MIN_VOLUME_PER_ATOM

    per_atom = atoms.get_volume() / max(len(atoms), 1)
    if not per_atom >= MIN_VOLUME_PER_ATOM:
        raise BulkModulusError(
            f"{atoms.get_chemical_formula()}: {per_atom:.2f} Å³/atom is below the collapse floor of {MIN_VOLUME_PER_ATOM} "
            "Å³/atom (MP-20's densest crystal has 5.8); the force field would need unbounded memory here"
        )


def _relax(atoms: Atoms, *, cell: bool, fmax: float, max_steps: int) -> tuple[bool, int]:
    """Relax ``atoms`` in place with FIRE (positions, and the cell if ``cell``); returns ``(converged, steps)``.

    Raises:
        BulkModulusError: the volume left ``[V/2, 2V]`` of the start (a collapsing or exploding potential).
    """
    from ase.optimize import FIRE

    v_start = atoms.get_volume()

    def guard() -> None:
        _check_not_collapsed(atoms)
        ratio = atoms.get_volume() / v_start
        if not (1 / _MAX_VOLUME_FACTOR <= ratio <= _MAX_VOLUME_FACTOR):
            raise BulkModulusError(
                f"relaxation changed the volume by a factor {ratio:.2f} (from {v_start:.2f} Å³); the potential "
                "is unreliable for this structure"
            )

    optimizer = FIRE(cell_filter(atoms) if cell else atoms, logfile=None)
    optimizer.attach(guard, interval=1)
    converged = bool(optimizer.run(fmax=fmax, steps=max_steps))
    return converged, int(optimizer.nsteps)


def _eos_function(eos: str) -> Any:
    """ASE's ``E(V; E0, B0, B0', V0)`` function of that name (``ase.eos.birchmurnaghan``, ...)."""
    import ase.eos

    return getattr(ase.eos, eos)


def _fit_eos(volumes: np.ndarray, energies: np.ndarray, eos: str, formula: str) -> tuple[float, float, float, float]:
    """Least-squares fit of ASE's ``eos`` form; returns ``(E0 eV, B0 eV/Å³, B0', V0 Å³)``, all finite.

    ASE's ``EquationOfState.fit`` seeds its fit from a fixed guess and can stop without converging on
    clean data (seen for energies near 0 eV), so the seed here comes from an exact quadratic least-squares
    fit instead: ``V0 = -c1 / 2c2``, ``B0 = 2 c2 V0``, ``B0' = 4``. Energies are centred for conditioning.
    """
    from scipy.optimize import curve_fit

    reference = float(energies.mean())
    centred = energies - reference  # (n_points,) eV
    c2, c1, c0 = np.polyfit(volumes, centred, 2)
    if not c2 > 0:
        raise BulkModulusError(
            f"{formula}: E(V) is not convex over the sampled volumes (quadratic coefficient {c2:.3g} eV/Å⁶), "
            "so it has no minimum there; relax the structure first or check the calculator"
        )
    v_guess = -c1 / (2 * c2)
    seed = [float(np.polyval([c2, c1, c0], v_guess)), float(2 * c2 * v_guess), 4.0, float(v_guess)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow inside trial steps; the result is checked below
            params, _ = curve_fit(_eos_function(eos), volumes, centred, p0=seed, maxfev=10000)
    except Exception as exc:  # scipy raises RuntimeError/ValueError/LinAlgError
        raise BulkModulusError(f"{formula}: the {eos} fit failed: {type(exc).__name__}: {exc}") from exc
    e0, b0, b_prime, v0 = (float(x) for x in params)
    if not all(math.isfinite(x) for x in (e0, b0, b_prime, v0)):
        raise BulkModulusError(
            f"{formula}: the {eos} fit gave non-finite parameters (V0={v0}, B0={b0}, B0'={b_prime})"
        )
    return e0 + reference, b0, b_prime, v0


# ====================================================================== bulk modulus


def _to_atoms(structure: Structure | Atoms) -> Atoms:
    from ase import Atoms

    if isinstance(structure, Atoms):
        atoms = structure.copy()
    elif hasattr(structure, "lattice"):
        from pymatgen.io.ase import AseAtomsAdaptor

        if not structure.is_ordered:
            raise ValueError(f"structure {structure.composition.formula} is disordered; an ordered crystal is needed")
        atoms = AseAtomsAdaptor.get_atoms(structure)
    else:
        raise ValueError(f"expected a pymatgen Structure or an ASE Atoms, got {type(structure).__name__}")
    atoms.calc = None
    atoms.set_constraint()
    formula = atoms.get_chemical_formula() or "structure"
    if len(atoms) == 0:  # these ended inside numpy, scipy or pymatgen (issue 26)
        raise ValueError("the structure has no atoms")
    if not (np.isfinite(atoms.cell.array).all() and np.isfinite(atoms.positions).all()):
        raise ValueError(f"{formula}: the cell or the positions are not finite (NaN or inf)")
    if not all(atoms.pbc) or atoms.cell.rank != 3:
        raise ValueError("the structure must be periodic in three dimensions")
    if len(atoms) > 1:
        d = atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), k=1)]
        if d.min() < MIN_DISTANCE:
            raise ValueError(f"{formula}: two atoms are {d.min():.3g} Å apart (overlapping; at least {MIN_DISTANCE} Å "
                             "is needed for a force field)")
    return atoms


#: Closest two atoms may be for the oracle (Å): the structural-validity threshold of the evaluation.
MIN_DISTANCE = 0.5


def check_arguments(strain: float, n_points: int, fmax: float, max_steps: int, eos: str) -> None:
    """``ValueError`` for arguments outside the protocol (shared by both engines)."""
    if not (isinstance(strain, (int, float)) and math.isfinite(strain) and 0 < strain < 0.5):
        raise ValueError(f"{strain=} must be a volume strain in (0, 0.5)")
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 5:
        raise ValueError(f"{n_points=} must be an integer >= 5")
    if not (isinstance(fmax, (int, float)) and fmax > 0):
        raise ValueError(f"{fmax=} must be positive (eV/Å)")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"{max_steps=} must be a positive integer")
    if eos not in SUPPORTED_EOS:
        raise ValueError(f"{eos=} is not supported; expected one of {list(SUPPORTED_EOS)}")


def volume_strains(strain: float, n_points: int) -> np.ndarray:
    """``(n_points,)`` volume strains ``s_i``; the strained cells are ``cell · (1 + s_i)^(1/3)``."""
    return np.linspace(-strain, strain, n_points)


def bulk_modulus(
    structure: Structure | Atoms,
    *,
    calculator: Calculator | str | None = None,
    strain: float = 0.04,
    n_points: int = 7,
    relax: bool = True,
    fmax: float = 0.05,
    max_steps: int = 200,
    eos: str = "birchmurnaghan",
) -> BulkModulusResult:
    """Bulk modulus (GPa) from an E(V) fit on isotropically scaled cells (protocol in the module docstring).

    One structure with ASE's FIRE (the reference path); for many, :func:`~mattergen_lab.evaluation.bulk_moduli`
    batches them on torch-sim.

    Args:
        structure: a pymatgen ``Structure`` or ASE ``Atoms`` (not modified).
        calculator: an ASE calculator, ``"chgnet"``/``"mattersim"``, or ``None`` for CHGNet.
        strain: maximum **volume** strain (0.04 = volumes from 0.96 V to 1.04 V), in ``(0, 0.5)``.
        n_points: number of volumes (≥ 5; the EOS has 4 parameters).
        relax: relax positions and cell first, and positions at each volume.
        fmax: force threshold in eV/Å for the relaxations.
        max_steps: step cap per relaxation.
        eos: one of :data:`SUPPORTED_EOS`.

    Raises:
        ValueError: bad arguments.
        BulkModulusError: a relaxation blew up, an energy was not finite, or the fit failed or is not
            physical (no minimum inside the sampled volumes, B0 ≤ 0); the message says which and what to try.
    """
    check_arguments(strain, n_points, fmax, max_steps, eos)
    atoms = _to_atoms(structure)
    _check_not_collapsed(atoms)  # before the first force call, and at every relaxation step
    calc = resolve_calculator(calculator)
    return _bulk_modulus_ase(atoms, calc, strain=strain, n_points=n_points, relax=relax, fmax=fmax,
                             max_steps=max_steps, eos=eos)


def _bulk_modulus_ase(atoms: Atoms, calc: Calculator, *, strain: float, n_points: int, relax: bool, fmax: float,
                      max_steps: int, eos: str) -> BulkModulusResult:
    atoms.calc = calc
    formula = atoms.get_chemical_formula()
    converged = True
    if relax:
        converged, steps = _relax(atoms, cell=True, fmax=fmax, max_steps=max_steps)
        log.info("%s: cell relaxation %s after %d steps", formula, "converged" if converged else "stopped", steps)

    reference_cell = atoms.cell.array.copy()  # (3, 3)
    volumes, energies = [], []
    for s in volume_strains(strain, n_points):
        strained = atoms.copy()
        strained.set_cell(reference_cell * (1.0 + s) ** (1.0 / 3.0), scale_atoms=True)
        strained.calc = calc
        if relax and len(strained) > 1:
            ok, _ = _relax(strained, cell=False, fmax=fmax, max_steps=max_steps)
            converged = converged and ok
        volumes.append(strained.get_volume())
        energies.append(float(strained.get_potential_energy()))
    return fit_result(np.array(volumes), np.array(energies), eos=eos, formula=formula, converged=converged,
                      relaxed=relax, calculator=type(calc).__name__, engine="ase")


def fit_result(volumes_arr: np.ndarray, energies_arr: np.ndarray, *, eos: str, formula: str, converged: bool,
               relaxed: bool, calculator: str, engine: str) -> BulkModulusResult:
    """Fit E(V) (``(n_points,)`` Å³ and eV) and check it (shared by both engines); ``BulkModulusError`` if unphysical."""
    from ase.units import GPa

    if not np.all(np.isfinite(energies_arr)):
        raise BulkModulusError(f"{formula}: the calculator returned non-finite energies {energies_arr.tolist()}")

    e0, b0, b_prime, v0 = _fit_eos(volumes_arr, energies_arr, eos, formula)
    if not volumes_arr.min() <= v0 <= volumes_arr.max():
        raise BulkModulusError(
            f"{formula}: the fitted equilibrium volume {v0:.3f} Å³ lies outside the sampled volumes "
            f"[{volumes_arr.min():.3f}, {volumes_arr.max():.3f}] Å³, so E(V) has no minimum there; "
            "relax the structure first (relax=True) or use a larger strain"
        )
    if b0 <= 0:
        raise BulkModulusError(f"{formula}: the {eos} fit gave a non-positive bulk modulus ({b0 / GPa:.3g} GPa)")
    notes: list[str] = []
    low_v, high_v = float(volumes_arr.min()), float(volumes_arr.max())
    if not low_v + 0.25 * (high_v - low_v) <= v0 <= high_v - 0.25 * (high_v - low_v):
        notes.append(f"the fitted V0 = {v0:.3f} Å³ lies near the edge of the sampled volumes [{low_v:.3f}, {high_v:.3f}] Å³; "
                     "B0 is poorly constrained there (relax first or widen the strain)")
    residual = _eos_function(eos)(volumes_arr, e0, b0, b_prime, v0) - energies_arr  # (n_points,) eV
    rms = float(np.sqrt(np.mean(residual**2)))
    span = float(energies_arr.max() - energies_arr.min())
    if rms > 0.1 * span:
        notes.append(f"the {eos} fit is poor (rms residual {rms:.3g} eV for an energy span of {span:.3g} eV)")
    if b0 / GPa < 1.0:
        notes.append(f"the bulk modulus {b0 / GPa:.3g} GPa is below 1 GPa: not a solid this calculator can describe")
    for note in notes:
        log.warning("%s: %s", formula, note)
    return BulkModulusResult(
        value_gpa=b0 / GPa,
        volumes=volumes_arr,
        energies=energies_arr,
        eos_name=eos,
        converged=converged,
        v0=v0,
        e0=e0,
        b_prime=b_prime,
        rms_residual_ev=rms,
        relaxed=bool(relaxed),
        calculator=calculator,
        warnings=tuple(notes),
        engine=engine,
    )
