"""Evaluate generated crystals: relax, energy above hull, stable / unique / novel / S.U.N., RMSD, validity.

The per-structure table is the primary result; aggregates are computed from it, with the key names of
MatterGen's metrics JSON (spec §7.5). Every result carries a protocol record.

With ``out_dir`` the evaluation is resumable: each finished structure is appended to ``results.jsonl`` (its
relaxed structure to ``relaxed/<id>.cif`` first), so a run that is killed and started again skips what was
finished and loses nothing. Uniqueness needs the whole set, so it is computed at the end.

This module holds the run: :func:`evaluate_structures`/:func:`evaluate_path`, the protocol record and the
resume bookkeeping of ``out_dir``. The rest lives in

* :mod:`~mattergen_lab.evaluation.inputs`: :func:`read_structures` and the input checks;
* :mod:`~mattergen_lab.evaluation.per_structure`: one structure's row (``_evaluate_one``),
  :func:`rmsd_from_relaxation`, :func:`composition_valid`, the resume fingerprint;
* :mod:`~mattergen_lab.evaluation.results`: :data:`COLUMNS`, :func:`finalize_table`, :func:`compute_metrics`,
  :class:`EvaluationResult`, :func:`write_result`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mattergen_lab.structure_io import check_structure_input, structure_to_cif
from mattergen_lab.evaluation.inputs import _INPUT_CHECK, read_structures
from mattergen_lab.evaluation.matching import MATCHERS, load_novelty_reference
from mattergen_lab.evaluation.per_structure import _evaluate_one, _fingerprint, _legacy_fingerprint
from mattergen_lab.evaluation.reference import ReferenceHull, load_reference
from mattergen_lab.evaluation.relax import RelaxConfig, Relaxer, RelaxResult, get_relaxer
from mattergen_lab.evaluation.results import COLUMNS, EvaluationResult, compute_metrics, finalize_table, write_result
from mattergen_lab.fileio import FolderLock, append_jsonl, atomic_write_text, check_writable_dir, read_jsonl

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

#: MatterGen's ``DEFAULT_STABILITY_THRESHOLD`` (eV/atom).
STABILITY_THRESHOLD = 0.1


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
            :func:`~mattergen_lab.structure_io.check_structure_input`: one with no atoms, a NaN or infinite value, a
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
    # one writer per folder (two runs relaxed everything twice and wrote every row twice), before the hull is loaded
    with FolderLock(out_dir, "evaluate") if out_dir is not None else contextlib.nullcontext():
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
                raise ValueError(f"{out}: the finished result for {sid!r} belongs to a different structure; "
                                 "use a new --out")

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
        result = EvaluationResult(table.drop(columns=["input_fingerprint"], errors="ignore"), metrics, protocol,
                                  relaxed_list)
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
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
            if not isinstance(previous, dict):
                raise ValueError(f"a JSON {type(previous).__name__}, not an object")
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{marker} is unreadable ({exc}); it records the protocol of the results in {out}: "
                             "restore it or use a new --out folder") from None
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


def evaluate_path(structures: str | os.PathLike, **kwargs: Any) -> EvaluationResult:
    """:func:`evaluate_structures` on the structures of a folder, zip or extxyz file (ids from file names)."""
    items = read_structures(structures)
    return evaluate_structures([s for _, s in items], ids=[i for i, _ in items], **kwargs)
