"""Relaxation of generated crystals with an ML force field, behind one small interface.

Protocol (spec §7.1, with the differences stated):

* Optimizer FIRE, ``fmax`` 0.05 eV/Å, positions and cell together through ASE's ``FrechetCellFilter``
  (MatterGen uses MatterSim's ``BatchRelaxer`` with ``ExpCellFilter``; both reach the same minima, the
  Fréchet filter is ASE's recommended successor).
* MatterGen runs to convergence (``max_n_steps`` = 10⁶). Here every structure has a **step cap**
  (default 500) and a **time cap** (default 120 s); a structure that hits either keeps its last frame and is
  reported with status ``max_steps`` or ``timeout``.
* Each cell is Niggli-reduced first (``RelaxConfig.niggli``), and a cell above ``RelaxConfig.max_atoms``
  (default 200) is refused with status ``failed`` and the reason, before any force call.
* Two engines: this module's ASE FIRE, one structure at a time (the reference), and torch-sim's batched FIRE
  with in-flight batching (:mod:`mattergen_lab.evaluation.batched_relax`), with the same caps and statuses.
* A structure whose volume leaves ``[V/5, 5V]`` of its start, whose energy or forces become non-finite, or
  whose calculator raises, is reported as ``exploded`` or ``failed`` with the reason. Nothing is dropped.

Which force field, and which energy convention (the correction scheme belongs to the relaxer):

* ``"mattersim"`` (the paper's choice, the default wherever its weights load): raw PBE-like energies, so
  MatterGen's MP2020 compatibility corrections are applied when an entry is made (:meth:`Relaxer.to_entry`).
* ``"chgnet"`` (weights in its wheel; works offline; what our machines and CI use): CHGNet 0.3.0 was trained
  on MPtrj energies that **already include** the MP2020 corrections, so they are used as they are. Applying
  MP2020 again was measured to raise the formation-energy error from 0.023 to 0.104 eV/atom on MP-20 test
  structures (``../shared/design/dependencies.md``, trap 3).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.constants import MIN_VOLUME_PER_ATOM
from mattergen_lab.structure_io import INPUT_VOLUME_PER_ATOM
from mattergen_lab.forcefields import (
    MATTERSIM_DEFAULT_WEIGHTS,
    cell_filter,
    get_calculator,
    mattersim_weights_available,
)
from mattergen_lab.forcefields import package_version as _package_version

if TYPE_CHECKING:  # pragma: no cover
    from ase.calculators.calculator import Calculator
    from pymatgen.core import Structure
    from pymatgen.entries.computed_entries import ComputedStructureEntry

log = logging.getLogger(__name__)

RELAXERS = ("auto", "chgnet", "mattersim")

#: Correction schemes, as recorded in the protocol.
NO_CORRECTION = "none (energies are already MP2020-compatible)"
MP2020 = "MP2020"

STATUSES = ("converged", "max_steps", "timeout", "exploded", "failed")


@dataclass(frozen=True)
class RelaxConfig:
    """Relaxation settings; part of every protocol record."""

    fmax: float = 0.05  # eV/Å
    max_steps: int = 500
    max_seconds: float = 120.0  # per structure
    max_volume_factor: float = 5.0  # the volume may change by at most this factor either way
    # A floor on the volume per atom (Å³): the densest MP-20 crystal has 5.8 Å³/atom. Below the floor a crystal
    # is collapsing, and the force field's neighbour graph grows without bound (one 7-atom O cell at 1.4 Å³/atom
    # took CHGNet to 4.8 GB of memory), so the relaxation stops with status "exploded".
    min_volume_per_atom: float = MIN_VOLUME_PER_ATOM
    optimizer: str = "FIRE"
    cell_filter: str = "FrechetCellFilter"
    # Cells above this many atoms are refused (status "failed", with the reason) instead of exhausting memory in
    # the force field's graph; MP-20 crystals have at most 20. Raise it on a GPU box.
    max_atoms: int = 200
    # Niggli-reduce each cell before relaxing it: a generated cell with angles near 160° stalls CHGNet's FIRE.
    niggli: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.fmax, (int, float)) and self.fmax > 0):
            raise ValueError(f"RelaxConfig: fmax={self.fmax!r} must be a positive number (eV/Å)")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 0):
            raise ValueError(f"RelaxConfig: max_steps={self.max_steps!r} must be an integer >= 0")
        if not (isinstance(self.max_seconds, (int, float)) and self.max_seconds > 0):
            raise ValueError(f"RelaxConfig: max_seconds={self.max_seconds!r} must be a positive number")
        if not self.max_volume_factor > 1:
            raise ValueError(f"RelaxConfig: max_volume_factor={self.max_volume_factor!r} must be > 1")
        if not (isinstance(self.min_volume_per_atom, (int, float)) and self.min_volume_per_atom >= 0):
            raise ValueError(f"RelaxConfig: min_volume_per_atom={self.min_volume_per_atom!r} must be a number >= 0 (Å³)")
        if not (isinstance(self.max_atoms, int) and self.max_atoms >= 1):
            raise ValueError(f"RelaxConfig: max_atoms={self.max_atoms!r} must be an integer >= 1")
        if self.optimizer != "FIRE":
            raise ValueError(f"RelaxConfig: optimizer={self.optimizer!r}; only 'FIRE' is supported")
        if self.cell_filter not in ("FrechetCellFilter", "ExpCellFilter"):
            raise ValueError(f"RelaxConfig: cell_filter={self.cell_filter!r}; use FrechetCellFilter or ExpCellFilter")


@dataclass
class RelaxResult:
    """The outcome of one relaxation. ``structure`` is the last frame (``None`` only if none was computed).

    ``energy`` is the total energy in eV of the last frame in the relaxer's own convention (see
    :attr:`Relaxer.correction_scheme`); NaN when it could not be computed.
    """

    status: str
    structure: Structure | None
    energy: float
    steps: int
    seconds: float
    max_force: float = math.nan
    message: str = ""

    @property
    def ok(self) -> bool:
        """A usable energy and structure (converged, or stopped at a cap with finite values)."""
        return self.status in ("converged", "max_steps", "timeout") and math.isfinite(self.energy)


def prepare_structure(structure: Structure, config: RelaxConfig) -> tuple[Structure, RelaxResult | None]:
    """The cell both engines relax (Niggli-reduced when ``config.niggli``), or a refusal before any force call.

    Refused (second item not ``None``): more atoms than ``config.max_atoms`` (status ``failed``), a start
    denser than ``config.min_volume_per_atom`` (status ``exploded``), or one sparser than any physical density
    (over :data:`~mattergen_lab.structure_io.INPUT_VOLUME_PER_ATOM`'s 1e5 Å³/atom, status ``failed``).
    """
    n = len(structure)
    if n > config.max_atoms:
        return structure, RelaxResult(
            "failed", structure.copy(), math.nan, 0, 0.0,
            message=f"refused: {n} atoms is above the {config.max_atoms}-atom cap (RelaxConfig.max_atoms); "
            "raise it with `mattergen-lab evaluate --max-atoms N` or RelaxConfig(max_atoms=N) (memory grows with the "
            "atom count: ~10 GB for 500 atoms on CPU)",
        )
    per_atom = structure.volume / max(n, 1)
    if per_atom < config.min_volume_per_atom:
        return structure, RelaxResult("exploded", structure.copy(), math.nan, 0, 0.0, math.nan, _collapse_message(per_atom, config))
    if per_atom > INPUT_VOLUME_PER_ATOM[1]:  # gas-like: no force field or hull can say anything about it
        return structure, RelaxResult(
            "failed", structure.copy(), math.nan, 0, 0.0,
            message=f"refused: {per_atom:.3g} Å³/atom is beyond any physical density (over "
            f"{INPUT_VOLUME_PER_ATOM[1]:g} Å³/atom; MP-20's sparsest crystal has 202)",
        )
    if config.niggli:
        try:
            structure = structure.get_reduced_structure("niggli")
        except Exception as exc:  # noqa: BLE001 - a degenerate cell relaxes as it is
            log.debug("Niggli reduction failed (%s); relaxing the cell as given", exc)
    return structure, None


def _collapse_message(per_atom: float, config: RelaxConfig) -> str:
    return (f"collapsed: {per_atom:.2g} Å³/atom is below the {config.min_volume_per_atom:g} Å³/atom floor "
            "(denser than any known solid at ambient pressure)")


class _Stop(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Relaxer:
    """An ASE calculator plus the protocol that goes with it.

    Build one with :func:`get_relaxer`. ``relax`` handles one structure; ``relax_many`` a list, calling
    ``progress(done, total)`` after each. ASE optimizers work on one cell at a time, so structures are relaxed
    one after the other (CHGNet's relaxer is not batched either); MatterSim's ``BatchRelaxer`` is not used
    because it has no per-structure step or time cap.
    """

    name: str
    calculator: Calculator
    correction_scheme: str
    version: str
    weights: str = ""
    config: RelaxConfig = field(default_factory=RelaxConfig)

    def protocol(self) -> dict[str, Any]:
        return {
            "relaxer": self.name,
            "relaxer_version": self.version,
            "weights": self.weights,
            "correction_scheme": self.correction_scheme,
            **asdict(self.config),
        }

    # -------------------------------------------------------------- relaxation
    def relax(self, structure: Structure) -> RelaxResult:
        from ase.optimize import FIRE
        from pymatgen.io.ase import AseAtomsAdaptor

        start = time.perf_counter()
        structure, refused = prepare_structure(structure, self.config)
        if refused is not None:
            return refused
        try:
            atoms = AseAtomsAdaptor.get_atoms(structure)
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            return RelaxResult("failed", None, math.nan, 0, 0.0, message=f"cannot convert to ASE: {exc}")
        atoms.calc = self.calculator
        cfg = self.config
        v_start = float(atoms.get_volume())
        deadline = start + cfg.max_seconds
        last_good: dict[str, Any] = {}

        def too_dense(volume: float) -> str:
            per_atom = volume / max(len(atoms), 1)
            return _collapse_message(per_atom, cfg) if per_atom < cfg.min_volume_per_atom else ""

        def guard() -> None:
            volume = float(atoms.get_volume())
            ratio = volume / v_start if v_start > 0 else math.inf
            if not (1 / cfg.max_volume_factor <= ratio <= cfg.max_volume_factor):
                raise _Stop("exploded", f"volume changed by a factor {ratio:.3g} (from {v_start:.3g} Å³)")
            if reason := too_dense(volume):
                raise _Stop("exploded", reason)
            energy = float(atoms.get_potential_energy())
            if not math.isfinite(energy) or not np.all(np.isfinite(atoms.get_positions())):
                raise _Stop("exploded", "non-finite energy or positions")
            last_good.update(energy=energy, atoms=atoms.copy())
            if time.perf_counter() > deadline:
                raise _Stop("timeout", f"stopped after {cfg.max_seconds:g} s")

        optimizer = FIRE(cell_filter(atoms, cfg.cell_filter), logfile=None)
        optimizer.attach(guard, interval=1)
        status, message = "converged", ""
        try:
            converged = bool(optimizer.run(fmax=cfg.fmax, steps=cfg.max_steps))
            if not converged:
                status, message = "max_steps", f"not converged to fmax {cfg.fmax} eV/Å in {cfg.max_steps} steps"
        except _Stop as stop:
            status, message = stop.status, stop.message
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            status, message = "failed", f"{type(exc).__name__}: {exc}"
        steps = int(optimizer.nsteps)
        seconds = time.perf_counter() - start
        if status in ("converged", "max_steps"):
            final, energy = atoms, float(atoms.get_potential_energy())
        elif status == "timeout" and last_good:
            final, energy = last_good["atoms"], last_good["energy"]
        else:  # exploded or failed: keep the last frame for inspection, but no energy
            final, energy = atoms, math.nan
        try:
            relaxed = AseAtomsAdaptor.get_structure(final)
            if "magmom" in relaxed.site_properties:
                relaxed.remove_site_property("magmom")
        except Exception:  # noqa: BLE001 - reported, never raised
            relaxed = None
        max_force = math.nan
        if math.isfinite(energy):
            try:
                max_force = float(np.linalg.norm(final.get_forces(), axis=1).max()) if final.calc else math.nan
            except Exception:  # noqa: BLE001 - reported, never raised
                max_force = math.nan
        atoms.calc = None
        return RelaxResult(status, relaxed, energy, steps, seconds, max_force, message)

    def relax_many(
        self, structures: Sequence[Structure], *, progress: Callable[[int, int], None] | None = None
    ) -> list[RelaxResult]:
        results = []
        for i, structure in enumerate(structures):
            results.append(self.relax(structure))
            if progress is not None:
                progress(i + 1, len(structures))
        return results

    # -------------------------------------------------------------- energies → entries
    def to_entry(self, structure: Structure, energy: float, *, entry_id: str | None = None) -> ComputedStructureEntry:
        """A ``ComputedStructureEntry`` in the MP2020-compatible energy convention.

        The relaxer's :attr:`correction_scheme` decides: CHGNet energies are used as they are (no second
        correction); MatterSim energies get :func:`mp2020_corrected_entry`.
        """
        from pymatgen.entries.computed_entries import ComputedStructureEntry

        if self.correction_scheme == MP2020:
            return mp2020_corrected_entry(structure, energy, entry_id=entry_id)
        return ComputedStructureEntry(
            structure, float(energy), entry_id=entry_id, parameters={"correction_scheme": self.correction_scheme}
        )


def mp2020_corrected_entry(structure: Structure, energy: float, *, entry_id: str | None = None) -> ComputedStructureEntry:
    """An entry for a raw (uncorrected) PBE-like energy, with ``MaterialsProject2020Compatibility`` applied.

    The entry mimics an MP relaxation: GGA+U with MP's U values when the structure has O or F together with
    one of Co, Cr, Fe, Mn, Mo, Ni, V, W (pymatgen's ``MPRelaxSet``), GGA otherwise. POTCARs are not checked
    (there are none). Raises ``ValueError`` when pymatgen cannot correct the entry (it names the formula).
    """
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry
    from pymatgen.io.vasp.sets import MPRelaxSet

    u_values = MPRelaxSet.CONFIG["INCAR"]["LDAUU"]
    symbols = {el.symbol for el in structure.composition.elements}
    anion = next((a for a in ("F", "O") if a in symbols), None)  # MP: fluorides take precedence
    hubbards = {}
    if anion is not None and symbols & set(u_values[anion]):
        hubbards = {s: float(u_values[anion].get(s, 0.0)) for s in symbols}
    parameters = {
        "run_type": "GGA+U" if hubbards else "GGA",
        "is_hubbard": bool(hubbards),
        "hubbards": hubbards,
        "potcar_spec": [{"titel": f"PAW_PBE {MPRelaxSet.CONFIG['POTCAR'].get(s, s)}", "hash": None} for s in sorted(symbols)],
        "correction_scheme": MP2020,
    }
    entry = ComputedStructureEntry(structure, float(energy), entry_id=entry_id, parameters=parameters)
    processed = MaterialsProject2020Compatibility(check_potcar=False).process_entry(entry, clean=True)
    if processed is None:
        raise ValueError(f"MP2020 compatibility rejected the entry for {structure.composition.reduced_formula}")
    return processed


# ====================================================================== factory


def get_relaxer(
    name: str = "auto",
    *,
    device: str = "cpu",
    load_path: str | None = None,
    config: RelaxConfig | None = None,
) -> Relaxer:
    """A :class:`Relaxer`.

    Args:
        name: ``"mattersim"``, ``"chgnet"``, or ``"auto"``: MatterSim when it imports and its weights are on
            this machine and load, CHGNet otherwise (logged, and recorded in the protocol).
        load_path: weights file (MatterSim: path or file name in ``~/.local/mattersim/pretrained_models``).
    """
    key = str(name).lower()
    if key not in RELAXERS:
        raise ValueError(f"unknown relaxer {name!r}; expected one of {list(RELAXERS)}")
    config = config or RelaxConfig()
    calculator = None
    if key == "auto":
        key = "chgnet"
        if not mattersim_weights_available(load_path):
            log.info("relaxer 'auto': MatterSim or its weights are not available here, so CHGNet is used")
        else:
            try:
                calculator = get_calculator("mattersim", device=device, load_path=load_path)
                key = "mattersim"
            except (ImportError, ValueError) as exc:  # the file is there but does not load
                log.warning("relaxer 'auto': MatterSim's weights did not load, so CHGNet is used: %s", exc)
        if key == "chgnet":
            load_path = None  # (a MatterSim file)
    if calculator is None:
        calculator = get_calculator(key, device=device, load_path=load_path)
    if key == "chgnet":
        return Relaxer(
            name="chgnet",
            calculator=calculator,
            correction_scheme=NO_CORRECTION,
            version=f"chgnet {_package_version('chgnet')}",
            weights=str(load_path or "CHGNet 0.3.0 (bundled in the wheel)"),
            config=config,
        )
    return Relaxer(
        name="mattersim",
        calculator=calculator,
        correction_scheme=MP2020,
        version=f"mattersim {_package_version('mattersim')}",
        weights=str(load_path or MATTERSIM_DEFAULT_WEIGHTS),
        config=config,
    )
