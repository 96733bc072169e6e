"""Evaluate generated crystals: relax, energy above hull, stable / unique / novel / S.U.N., RMSD, validity.

The per-structure table is the primary result; aggregates are computed from it, with the key names of
MatterGen's metrics JSON (spec §7.5). Every result carries a protocol record.

With ``out_dir`` the evaluation is resumable: each finished structure is appended to ``results.jsonl`` (its
relaxed structure to ``relaxed/<id>.cif`` first), so a run that is killed and started again skips what was
finished and loses nothing. Uniqueness needs the whole set, so it is computed at the end.

Length: the per-structure pipeline, its resumable results file and the whole-set metrics are one protocol;
they are kept together so the protocol record and the columns cannot drift apart.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import math
import os
import re
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.crystal import (
    check_cif_cell,
    check_structure_input,
    structure_to_cif,
)
from mattergen_lab.evaluation.matching import (
    MATCHERS,
    NoveltyReference,
    load_novelty_reference,
    unique_flags,
)
from mattergen_lab.evaluation.reference import (
    MissingReferenceError,
    ReferenceHull,
    load_reference,
)
from mattergen_lab.evaluation.relax import RelaxConfig, Relaxer, RelaxResult, get_relaxer
from mattergen_lab.evaluation.validity import check_structure
from mattergen_lab.fileio import append_jsonl, atomic_write_text, check_writable_dir, read_jsonl

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

#: MatterGen's ``DEFAULT_STABILITY_THRESHOLD`` (eV/atom).
STABILITY_THRESHOLD = 0.1
RMSD_LTOL, RMSD_STOL, RMSD_ANGLE_TOL = 0.5, 0.5, 10.0
STRUCTURE_SUFFIXES = (".cif", ".extxyz", ".xyz", ".vasp", ".poscar")
#: What :func:`~mattergen_lab.crystal.check_structure_input` checks of evaluated structures: everything but the
#: volume per atom. Generated crystals are evaluated whatever their density (the ``plausible_density`` column
#: flags it): a lightly trained model's samples reach 1e6 Å³/atom (the bundled chemical-system adapter at 4
#: steps: 1 in 32), and refusing them would stop a whole run or campaign task and change the metrics'
#: denominators. The relaxer reports a cell denser than its floor (status "exploded") before its force field
#: builds a graph.
_INPUT_CHECK = {"volume_per_atom": None}

#: Columns of the per-structure table, in order.
COLUMNS = (
    "id", "formula", "chemical_system", "num_atoms", "space_group", "volume_per_atom",
    "energy", "energy_per_atom", "energy_correction", "formation_energy_per_atom", "energy_above_hull",
    "stable", "is_unique", "is_novel", "novel_unique", "novel_unique_stable", "novelty_match",
    "novel_system", "rmsd_from_relaxation", "comp_valid", "structure_valid", "structure_comp_valid", "min_distance", "plausible_density",
    "relax_status", "relax_steps", "relax_seconds", "max_force", "error",
)

METRIC_DESCRIPTIONS = {
    "avg_energy_above_hull_per_atom": "Mean energy above the reference hull of the relaxed structures (eV/atom)",
    "avg_rmsd_from_relaxation": "Mean RMSD between generated and relaxed structures (Å)",
    "frac_novel_unique_stable_structures": "Fraction of submitted structures that are novel, unique and stable (S.U.N.)",
    "frac_stable_structures": "Fraction of submitted structures with E_hull <= the stability threshold",
    "frac_successful_jobs": "Fraction of submitted structures whose relaxation gave an energy",
    "avg_comp_validity": "Fraction of structures whose composition passes SMACT charge neutrality + Pauling test",
    "avg_structure_comp_validity": "Fraction of structures valid both structurally and compositionally",
    "avg_structure_validity": "Fraction of structures with all distances >= 0.5 Å and volume >= 0.1 Å³",
    "frac_novel_structures": "Fraction of structures not matching the novelty reference",
    "frac_novel_systems": "Fraction of structures whose chemical system is absent from the novelty reference",
    "frac_novel_unique_structures": "Fraction of structures that are novel and unique",
    "frac_unique_structures": "Fraction of structures not matching an earlier structure of the set",
    "frac_unique_systems": "Number of distinct chemical systems divided by the number of structures",
}


# ====================================================================== inputs


def _structure_from_text(text: str, fmt: str, label: str) -> Structure:
    """One structure from CIF or POSCAR text; ``ValueError`` starting with ``label`` for anything
    :func:`~mattergen_lab.crystal.check_structure_input` (or, for a CIF, ``check_cif_cell``) refuses."""
    from pymatgen.core import Structure

    if fmt == "cif":
        check_cif_cell(text, name=label)
    try:
        structure = Structure.from_str(text, fmt=fmt)
    except Exception as exc:  # noqa: BLE001 - turned into a clear message or a recorded failure
        raise ValueError(f"{label}: not a readable {fmt.upper()} ({type(exc).__name__}: {exc})") from None
    check_structure_input(structure, name=label, **_INPUT_CHECK)
    return structure


def _read_ase_file(path: Path) -> list[tuple[str, Structure]]:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        frames = read(str(path), index=":")
    except Exception as exc:  # noqa: BLE001 - turned into a clear message or a recorded failure
        raise ValueError(f"{path}: not a readable structure file ({type(exc).__name__}: {exc})") from None
    out = []
    for i, atoms in enumerate(frames):
        label = f"{path}, frame {i}"
        if len(atoms) == 0:
            raise ValueError(f"{label}: the structure has no atoms")
        try:
            structure = AseAtomsAdaptor.get_structure(atoms)
        except Exception as exc:  # noqa: BLE001 - e.g. a frame without a cell
            raise ValueError(f"{label}: not a periodic structure ({type(exc).__name__}: {exc})") from None
        check_structure_input(structure, name=label, **_INPUT_CHECK)
        out.append((f"{path.stem}-{i}", structure))
    return out


def _natural_key(path: Path) -> list:
    """Sort ``gen_2`` before ``gen_10`` (generation order, which uniqueness depends on)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def read_structures(path: str | os.PathLike) -> list[tuple[str, Structure]]:
    """``(id, structure)`` pairs from a folder (CIF, extxyz, POSCAR), a zip of CIFs, or an extxyz/CIF file.

    Ids are file stems (``gen_0.cif`` → ``gen_0``) or ``<stem>-<frame>`` for multi-frame files. Raises
    ``ValueError`` naming the offending file (and frame) for an unreadable file, for a structure
    :func:`~mattergen_lab.crystal.check_structure_input` refuses (no atoms, NaN or infinite coordinates or lattice,
    a zero volume, a dummy element; any volume per atom is read), for bad CIF cell parameters, and for an input
    with no structures.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"structures {str(path)!r} do not exist")
    items: list[tuple[str, Structure]] = []
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in STRUCTURE_SUFFIXES), key=_natural_key)
        for p in files:
            items.extend(_read_file(p))
    elif path.suffix.lower() == ".zip":
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"{path} is not a readable zip archive ({exc}); expected a .zip of CIFs") from None
        with zf:
            for name in sorted(zf.namelist()):
                if name.lower().endswith(".cif") and not name.startswith("__MACOSX"):
                    text = zf.read(name).decode("utf-8", errors="replace")
                    items.append((Path(name).stem, _structure_from_text(text, "cif", f"{path}:{name}")))
    elif path.suffix.lower() in STRUCTURE_SUFFIXES:
        items.extend(_read_file(path))
    else:
        raise ValueError(f"{path}: expected a folder, a .zip of CIFs, or a {'/'.join(STRUCTURE_SUFFIXES)} file")
    if not items:
        raise ValueError(f"{path}: no structures found (looked for {', '.join(STRUCTURE_SUFFIXES)} files)")
    ids = [i for i, _ in items]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate structure ids {duplicates[:5]} (two files with the same stem?)")
    return items


def _read_file(path: Path) -> list[tuple[str, Structure]]:
    suffix = path.suffix.lower()
    if suffix == ".cif":
        return [(path.stem, _structure_from_text(path.read_text(errors="replace"), "cif", str(path)))]
    if suffix in (".vasp", ".poscar"):
        return [(path.stem, _structure_from_text(path.read_text(errors="replace"), "poscar", str(path)))]
    return _read_ase_file(path)


# ====================================================================== per-structure metrics


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


# ====================================================================== aggregation


def _frac(values: Any, n: int) -> float:
    return float(np.sum(np.asarray(values, dtype=bool)) / n) if n else math.nan


def compute_metrics(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """MatterGen-style ``{name: {"value", "description"}}`` aggregates of a per-structure table."""
    n = len(table)
    has_novelty = bool(table["is_novel"].notna().any())
    values = {
        "avg_energy_above_hull_per_atom": float(np.nanmean(table["energy_above_hull"])) if table["energy_above_hull"].notna().any() else math.nan,
        "avg_rmsd_from_relaxation": float(np.nanmean(table["rmsd_from_relaxation"])) if table["rmsd_from_relaxation"].notna().any() else math.nan,
        "frac_novel_unique_stable_structures": _frac(table["novel_unique_stable"], n) if has_novelty else math.nan,
        "frac_stable_structures": _frac(table["stable"], n),
        "frac_successful_jobs": _frac(table["energy"].notna(), n),
        "avg_comp_validity": _frac(table["comp_valid"], n),
        "avg_structure_comp_validity": _frac(table["structure_comp_valid"], n),
        "avg_structure_validity": _frac(table["structure_valid"], n),
        "frac_novel_structures": _frac(table["is_novel"].fillna(False), n) if has_novelty else math.nan,
        "frac_novel_systems": _frac(table["novel_system"].fillna(False), n) if has_novelty else math.nan,
        "frac_novel_unique_structures": _frac(table["novel_unique"], n) if has_novelty else math.nan,
        "frac_unique_structures": _frac(table["is_unique"], n),
        "frac_unique_systems": float(table["chemical_system"].nunique() / n) if n else math.nan,
    }
    return {k: {"value": v, "description": METRIC_DESCRIPTIONS[k]} for k, v in values.items()}


@dataclass
class EvaluationResult:
    """Per-structure ``table`` (pandas), aggregate ``metrics``, the ``protocol`` record, relaxed structures."""

    table: pd.DataFrame
    metrics: dict[str, dict[str, Any]]
    protocol: dict[str, Any]
    relaxed: list[Structure | None] = field(default_factory=list)

    def summary(self) -> str:
        m = {k: v["value"] for k, v in self.metrics.items()}
        p = self.protocol
        return (
            f"{p['num_structures']} structures | relaxer {p['relaxer']} (fmax {p['fmax']} eV/Å) | hull "
            f"{p['reference_hull']} ({p['reference_hull_entries']} entries) | stable ≤ {p['stability_threshold']} eV/atom\n"
            f"stable {m['frac_stable_structures']:.1%}  unique {m['frac_unique_structures']:.1%}  "
            f"novel {m['frac_novel_structures']:.1%}  S.U.N. {m['frac_novel_unique_stable_structures']:.1%}  "
            f"mean RMSD {m['avg_rmsd_from_relaxation']:.3f} Å  mean E_hull {m['avg_energy_above_hull_per_atom']:.3f} eV/atom"
        )


#: Columns that depend on the whole set of structures, recomputed by :func:`finalize_table`.
WHOLE_SET_COLUMNS = ("is_unique", "novel_unique", "novel_unique_stable")


def finalize_table(rows: Sequence[dict[str, Any]], relaxed: Sequence[Structure | None], matcher: str = "disordered") -> pd.DataFrame:
    """The per-structure table from per-structure rows (in generation order) and their relaxed structures.

    Uniqueness depends on the whole set, so ``is_unique`` (and with it ``novel_unique`` and the S.U.N. column
    ``novel_unique_stable``) is computed here over all ``relaxed`` structures; values already in the rows (e.g.
    from separately evaluated shards) are replaced.
    """
    import pandas as pd

    if len(rows) != len(relaxed):
        raise ValueError(f"{len(rows)} rows for {len(relaxed)} relaxed structures")
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in WHOLE_SET_COLUMNS} for r in rows])
    table["is_unique"] = unique_flags(list(relaxed), matcher=matcher)
    novel = table["is_novel"].fillna(False).astype(bool)
    table["novel_unique"] = novel & table["is_unique"]
    table["novel_unique_stable"] = table["novel_unique"] & table["stable"].astype(bool)
    extra = [c for c in table.columns if c not in COLUMNS]
    return table[[c for c in COLUMNS if c in table.columns] + extra]


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("mattergen-lab", "pymatgen", "smact", "ase"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def evaluate_structures(
    structures: Sequence[Structure],
    *,
    ids: Sequence[str] | None = None,
    relaxer: str | Relaxer = "auto",
    reference: str | os.PathLike | ReferenceHull = "mp20",
    novelty_reference: Any = "mp20",
    matcher: str = "disordered",
    stability_threshold: float = STABILITY_THRESHOLD,
    relax_config: RelaxConfig | None = None,
    data_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    out_dir: str | os.PathLike | None = None,
    allow_missing_reference: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    relax_engine: str = "auto",
) -> EvaluationResult:
    """Relax and score structures; returns the per-structure table, the aggregates and the protocol.

    Args:
        structures: pymatgen structures (ordered). Each must pass
            :func:`~mattergen_lab.crystal.check_structure_input`: one with no atoms, a NaN or infinite value, a
            zero volume or a dummy element stops the run before anything is loaded or relaxed (``ValueError``
            naming it). Any density is evaluated (see ``plausible_density``).
        ids: one name per structure (default ``"0"``, ``"1"``, ...).
        relaxer: ``"auto"`` (MatterSim where its weights load, else CHGNet), ``"chgnet"``, ``"mattersim"`` or
            a :class:`~mattergen_lab.evaluation.relax.Relaxer`.
        reference: reference hull, see :func:`~mattergen_lab.evaluation.reference.load_reference`.
        novelty_reference: ``"mp20"``, ``None`` (skip novelty) or a list of known structures.
        matcher: ``"disordered"`` (MatterGen's default) or ``"ordered"``.
        stability_threshold: stable ⇔ E_hull ≤ this (eV/atom).
        out_dir: write ``results.jsonl``, ``relaxed/``, ``per_structure.csv``, ``metrics.json`` and
            ``protocol.json`` here, and resume from what is already there.
        allow_missing_reference: with ``False`` (default) a structure with an element that has no entry in
            the reference hull stops the run *before* any relaxation, naming it; with ``True`` its energy
            metrics are left empty and the ``error`` column says why.
        progress: called as ``progress(done, total)`` after each structure.
        cancel: when set, stop after the current structure (batched engine: after the current step); finished
            ones are kept (and on disk).
        relax_engine: ``"torchsim"`` (batched FIRE, :mod:`~mattergen_lab.evaluation.batched_relax`; results are
            written as each structure finishes), ``"ase"`` (one at a time, the reference) or ``"auto"``: torch-sim
            where it imports and the relaxer is a name or a plain CHGNet/MatterSim :class:`Relaxer`.
    """
    if matcher not in MATCHERS:
        raise ValueError(f"matcher={matcher!r}; expected one of {list(MATCHERS)}")
    if not (isinstance(stability_threshold, (int, float)) and math.isfinite(stability_threshold)):
        raise ValueError(f"stability_threshold={stability_threshold!r} must be a finite number (eV/atom)")
    structures = list(structures)
    if not structures:
        raise ValueError("no structures to evaluate (the input is empty)")
    ids = [str(i) for i in (ids if ids is not None else range(len(structures)))]
    if len(ids) != len(structures):
        raise ValueError(f"{len(ids)} ids for {len(structures)} structures")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    for sid, s in zip(ids, structures):  # before the hull, spglib, the matcher or a force field sees any of them
        check_structure_input(s, name=f"structure {sid!r}", **_INPUT_CHECK)
        if not s.is_ordered:
            raise ValueError(f"structure {sid!r} ({s.composition.formula}) is disordered; generated crystals are ordered")

    if isinstance(device, str) or device is None:  # before the hull or a force field is loaded
        from mattergen_lab.sampling.request import validate_device

        device = validate_device(device if device is not None else "cpu")
    if out_dir is not None:
        check_writable_dir(out_dir, "out_dir")
    hull = load_reference(reference, data_dir=data_dir)
    if not allow_missing_reference:
        from mattergen_lab.evaluation.reference import check_elements

        check_elements(hull, [(f"structure {sid!r}", s.composition.elements) for sid, s in zip(ids, structures)])
    novelty = load_novelty_reference(novelty_reference, data_dir=data_dir)
    from mattergen_lab.evaluation.batched_relax import BatchedRelaxer, get_batched_relaxer, resolve_engine

    engine = resolve_engine(relax_engine, relaxer)
    if not isinstance(relaxer, Relaxer):
        relaxer = get_relaxer(relaxer, device=device, config=relax_config)
    if engine == "torchsim":
        relaxer = get_batched_relaxer(relaxer, device=device)
    protocol: dict[str, Any] = {
        "relax_engine": "ASE FIRE, one structure at a time",
        **relaxer.protocol(),
        **hull.protocol(),
        **(novelty.protocol() if novelty else {"novelty_reference": None}),
        "stability_threshold": float(stability_threshold),
        "structure_matcher": matcher,
        "uniqueness_and_novelty_on": "relaxed structures",
        "space_group_tolerance": "spglib symprec 0.1 Å, angle 5°",
        "structure_validity": "all distances >= 0.5 Å and volume >= 0.1 Å³ (generated structure)",
        "composition_validity": "smact_validity (charge neutrality + Pauling test; alloys and elements valid)",
        "rmsd": "refined+primitive+LLL generated vs relaxed; StructureMatcher ltol 0.5 stol 0.5 10°; Å",
        "num_structures": len(structures),
        "versions": _versions(),
    }

    done: dict[str, dict[str, Any]] = {}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        done = _prepare_out_dir(out, protocol)
    rows: list[dict[str, Any]] = []
    relaxed_list: list[Structure | None] = []
    score = functools.partial(_evaluate_one, relaxer=relaxer, hull=hull, novelty=novelty, matcher=matcher,
                              threshold=float(stability_threshold))

    def keep(sid: str, row: dict[str, Any], relaxed: Structure | None) -> None:
        if out is not None:
            if relaxed is not None:
                atomic_write_text(out / "relaxed" / f"{_SAFE_ID.sub('_', sid)}.cif", structure_to_cif(relaxed))
            append_jsonl(out / "results.jsonl", row)

    def check_done(sid: str, structure: Structure) -> None:
        stored = str(done[sid].get("input_fingerprint"))
        legacy = len(stored) == 12  # folders written before the whole-structure key: formula + lengths
        if stored != (_legacy_fingerprint(structure) if legacy else _fingerprint(structure)):
            raise ValueError(f"{out}: the finished result for {sid!r} belongs to a different structure; use a new --out")

    batched = isinstance(relaxer, BatchedRelaxer)
    fresh: dict[str, tuple[dict[str, Any], Structure | None]] = {}
    if batched:  # relax all that are not done in one batched run, and keep each as it finishes
        for sid, structure in zip(ids, structures):
            if sid in done:
                check_done(sid, structure)
        todo = [k for k, sid in enumerate(ids) if sid not in done]

        def finished(j: int, result: RelaxResult) -> None:
            k = todo[j]
            fresh[ids[k]] = score(ids[k], structures[k], result=result)
            keep(ids[k], *fresh[ids[k]])
            if progress is not None:
                progress(len(done) + len(fresh), len(structures))

        relaxer.relax_many([structures[k] for k in todo], on_result=finished, cancel=cancel)
        if cancel is not None and cancel.is_set():
            log.info("evaluation cancelled: %d of %d structures finished", len(done) + len(fresh), len(structures))
    for k, (sid, structure) in enumerate(zip(ids, structures)):
        if batched:
            if sid in fresh:
                row, relaxed = fresh[sid]
            elif sid in done:
                row, relaxed = done[sid], _read_relaxed(out, sid)
            else:
                continue  # cancelled before it finished
            rows.append(row)
            relaxed_list.append(relaxed)
            continue
        if cancel is not None and cancel.is_set():
            log.info("evaluation cancelled after %d of %d structures", k, len(structures))
            break
        if sid in done:
            check_done(sid, structure)
            row, relaxed = done[sid], _read_relaxed(out, sid)
        else:
            row, relaxed = score(sid, structure)
            keep(sid, row, relaxed)
        rows.append(row)
        relaxed_list.append(relaxed)
        if progress is not None:
            progress(k + 1, len(structures))
    protocol["num_evaluated"] = len(rows)
    protocol["finished_at"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if not rows:
        import pandas as pd

        return EvaluationResult(pd.DataFrame(columns=list(COLUMNS)), {}, protocol, [])
    table = finalize_table(rows, relaxed_list, matcher)
    metrics = compute_metrics(table)
    result = EvaluationResult(table.drop(columns=["input_fingerprint"], errors="ignore"), metrics, protocol, relaxed_list)
    if out is not None:
        write_result(result, out)
    return result


_PROTOCOL_KEYS = ("relaxer", "weights", "correction_scheme", "fmax", "max_steps", "reference_hull",
                  "reference_hull_entries", "novelty_reference", "stability_threshold", "structure_matcher")


def _prepare_out_dir(out: Path, protocol: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "relaxed").mkdir(exist_ok=True)
    marker = out / "protocol.json"
    if marker.is_file():
        previous = json.loads(marker.read_text())
        changed = {k: (previous.get(k), protocol.get(k)) for k in _PROTOCOL_KEYS if previous.get(k) != protocol.get(k)}
        if changed:
            details = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"{out} holds results of a different protocol ({details}); use a new --out folder")
    else:
        atomic_write_text(marker, json.dumps(protocol, indent=2, default=str))
    done = {str(r["id"]): r for r in read_jsonl(out / "results.jsonl")}
    if done:
        log.info("resuming: %d structures already evaluated in %s", len(done), out)
    return done


def _read_relaxed(out: Path | None, sid: str) -> Structure | None:
    if out is None:
        return None
    path = out / "relaxed" / f"{_SAFE_ID.sub('_', sid)}.cif"
    if not path.is_file():
        return None
    from pymatgen.core import Structure

    return Structure.from_file(path)


def write_result(result: EvaluationResult, out: str | os.PathLike) -> None:
    """Write ``per_structure.csv``, ``metrics.json`` and ``protocol.json`` (each atomically)."""
    out = Path(out)
    atomic_write_text(out / "per_structure.csv", result.table.to_csv(index=False))
    atomic_write_text(out / "metrics.json", json.dumps(result.metrics, indent=2, default=float))
    atomic_write_text(out / "protocol.json", json.dumps(result.protocol, indent=2, default=str))


def evaluate_path(structures: str | os.PathLike, **kwargs: Any) -> EvaluationResult:
    """:func:`evaluate_structures` on the structures of a folder, zip or extxyz file (ids from file names)."""
    items = read_structures(structures)
    return evaluate_structures([s for _, s in items], ids=[i for i, _ in items], **kwargs)
