"""Synthesis-review export: symmetrized and P1 CIFs, POSCARs, report CSV/JSON/HTML, in one atomic zip."""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.structure_io import check_structure_input, structure_to_cif
from mattergen_lab.fileio import atomic_write

from mattergen_lab.design.requests import EXPORT_ANGLE_TOLERANCE, EXPORT_SYMPREC
from mattergen_lab.design.review_export import write_review_files, write_review_summary
from mattergen_lab.design.runs import Candidate
from mattergen_lab.design.tables import candidate_table, structure_table

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pymatgen.core import Structure

    from mattergen_lab.design.review import CandidateReview
    from mattergen_lab.design.tables import HullData


log = logging.getLogger(__name__)
# ------------------------------------------------------------------------------------------- export
def design_report(candidates: Sequence[Candidate], *, evaluation_protocol: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report dict for :func:`export_candidates`: targets, checkpoint, guidance and evaluation protocol.

    Scalar fields hold one value when every candidate came from the same request, otherwise the list of
    distinct values; ``requests`` holds every request in full, keyed by candidate id.
    """
    def one_or_many(values: list[Any]) -> Any:
        distinct = []
        for v in values:
            if v not in distinct:
                distinct.append(v)
        return distinct[0] if len(distinct) == 1 else distinct

    reqs = [c.request for c in candidates]
    return {
        "targets": one_or_many([dict(r.targets) for r in reqs]) if reqs else {},
        "chemical_system": one_or_many([r.chemical_system for r in reqs]) if reqs else None,
        "checkpoint": one_or_many([r.checkpoint for r in reqs]) if reqs else None,
        "guidance_scale": one_or_many([r.guidance_scale for r in reqs]) if reqs else None,
        "evaluation_protocol": dict(evaluation_protocol) if evaluation_protocol else "not evaluated",
        "requests": {c.id: c.request.to_dict() for c in candidates},
    }


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "candidate"


def _member_stems(ids: Sequence[str], formulas: Sequence[str]) -> list[str]:
    """One file-name stem per candidate, distinct whatever the ids: ``{id}_{formula}`` made safe, and where two
    candidates' stems would collide (``x/1`` and ``x_1``) each gets a short hash of its own id, so no candidate's files
    replace another's in the zip. The same id twice is refused, naming it."""
    seen: dict[str, int] = {}
    for k, sid in enumerate(ids):
        if sid in seen:
            raise ValueError(f"candidate id {sid!r} is given twice (rows {seen[sid]} and {k}); ids must be distinct")
        seen[sid] = k
    stems = [_safe_name(f"{sid}_{formula}") for sid, formula in zip(ids, formulas)]
    counts = {stem: stems.count(stem) for stem in stems}
    return [f"{stem}_{hashlib.sha1(sid.encode()).hexdigest()[:8]}" if counts[stem] > 1 else stem
            for stem, sid in zip(stems, ids)]


def _symmetrized_cif(structure: Structure, symprec: float) -> tuple[str, int | None]:
    """``(CIF text, space group)`` symmetrized with spglib at ``symprec`` (:func:`structure_to_cif`: spglib's refined
    cell, checked on reading back); a comment states the tolerance."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=EXPORT_ANGLE_TOLERANCE)
    sg = int(sga.get_space_group_number())
    text = structure_to_cif(structure, symprec=symprec, angle_tolerance=EXPORT_ANGLE_TOLERANCE)
    head = (f"# symmetrized with spglib: symprec={symprec} Å, angle_tolerance={EXPORT_ANGLE_TOLERANCE}°; "
            f"space group {sga.get_space_group_symbol()} ({sg})\n")
    return head + text, sg


def _p1_cif(structure: Structure) -> str:
    return "# P1 cell as generated, Niggli-reduced (no symmetrization)\n" + structure_to_cif(structure)


def _poscar(structure: Structure, comment: str) -> str:
    from pymatgen.io.vasp import Poscar

    return Poscar(structure, comment=comment).get_str()


def _report_html(report: Mapping[str, Any], table: pd.DataFrame, extra: str = "") -> str:
    esc = html.escape
    items = "".join(
        f"<tr><th>{esc(k)}</th><td><code>{esc(json.dumps(report[k], default=str))}</code></td></tr>"
        for k in ("timestamp", "checkpoint", "chemical_system", "targets", "guidance_scale", "symprec",
                  "angle_tolerance", "evaluation_protocol", "num_candidates")
        if k in report
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mattergen-lab export</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        "<h1>Candidates for synthesis review</h1>"
        f"<table>{items}</table><h2>Candidates</h2>{table.to_html(index=False, na_rep='–', escape=True)}"
        "<p>Files per candidate: <code>*_sym_symprec*.cif</code> (symmetrized), <code>*_P1.cif</code>, "
        "<code>*_POSCAR</code>; when reviewed also <code>*_relaxed_P1.cif</code>, <code>*_xrd.csv</code>, "
        "<code>*_xrd.png</code>. Report: <code>report.csv</code>, <code>report.json</code>, "
        f"<code>nearest_known.csv</code>.</p>{extra}</body></html>"
    )


def export_candidates(
    structures: Sequence[Structure] | Sequence[Candidate],
    table: pd.DataFrame | None = None,
    path: str | os.PathLike | None = None,
    *,
    report: Mapping[str, Any] | None = None,
    evaluation: Any = None,
    ids: Sequence[str] | None = None,
    symprec: float = EXPORT_SYMPREC,
    relaxed: Sequence[Structure | None] | None = None,
    reviews: Sequence[CandidateReview | None] | None = None,
    hull: HullData | None = None,
    pareto: tuple[str, str, tuple[bool, bool]] | None = ("energy_above_hull", "hhi_score", (False, False)),
) -> Path:
    """Write a zip for synthesis review; atomically (temp file beside ``path``, then ``os.replace``).

    ``structures``: pymatgen structures (e.g. from :func:`mattergen_lab.sample`) or design
    :class:`~mattergen_lab.design.Candidate`\\ s. ``table``: one row per structure with ``id`` and ``formula``, such as
    :func:`~mattergen_lab.design.candidate_table`; without one it is built here (:func:`~mattergen_lab.design.candidate_table`
    or :func:`~mattergen_lab.design.structure_table`, with ``ids``), with ``evaluation`` merged by ``id``: an evaluation
    table, or a result with ``.table`` and ``.protocol`` (:func:`~mattergen_lab.evaluation.evaluate_structures`), whose
    protocol then goes into the report. ``report`` defaults to :func:`design_report` for candidates, else the
    evaluation protocol only. So ``export_candidates(sample(...), path="review.zip")`` works, as does
    ``export_candidates(structures, path="review.zip", evaluation=evaluate_structures(structures))``.

    For row ``i`` of ``table`` and ``structures[i]``: ``{id}_{formula}_sym_symprec{symprec}.cif``
    (spglib-symmetrized, tolerance in the name and a comment), ``{id}_{formula}_P1.cif`` and
    ``{id}_{formula}_POSCAR``. Plus ``report.csv`` (the table with the symmetrized space group and file
    names), ``report.json`` (``report`` + ``timestamp``, ``symprec``, ``angle_tolerance``, ``num_candidates``,
    ``candidates``) and ``report.html``. A failure leaves an existing ``path`` untouched. CIFs hold the
    Niggli-reduced cell (:func:`~mattergen_lab.structure_io.structure_to_cif`), so pymatgen and ASE read each back.

    For synthesis review, per candidate: ``relaxed[i]`` (when evaluated) becomes ``{stem}_relaxed_P1.cif``;
    ``reviews[i]`` (:func:`~mattergen_lab.design.review.review_candidate`) adds ``{stem}_xrd.csv`` (2θ, intensity,
    hkl, d), ``{stem}_xrd.png`` (against the nearest known material), its nearest known materials
    (``nearest_known.csv``), oxidation states and densities (``report.csv``/``report.json``). ``hull`` and the
    ``pareto`` columns add ``hull.png`` and ``pareto.png``. ``report.html`` shows all of it with the images
    inline, so it reads without Python.

    Member names are unique whatever the ids: where two candidates' ``{id}_{formula}`` stems collide (``x/1`` and
    ``x_1``), each gets a short hash of its id.

    Raises:
        ValueError: bad arguments, the same id twice, or a structure :func:`~mattergen_lab.structure_io.check_structure_input`
            refuses (no atoms, NaN or infinite values, a zero volume, a dummy element; any volume per atom is
            exported), a disordered one or one of more than ``MAX_EXPORT_ATOMS`` atoms, naming the candidate's id;
            a file system error, naming ``path``. Nothing is written then.
    """
    if path is None:
        raise ValueError("path=None: give the .zip file to write")
    structures, table, report = _export_inputs(structures, table, report, evaluation, ids)
    if len(structures) != len(table):
        raise ValueError(f"{len(structures)} structures for {len(table)} table rows")
    if not (isinstance(symprec, (int, float)) and math.isfinite(symprec) and symprec > 0):
        raise ValueError(f"{symprec=} must be a positive number (Å)")
    for col in ("id", "formula"):
        if col not in table.columns:
            raise ValueError(f"table needs an {col!r} column; it has {list(table.columns)}")
    path = Path(path)
    if path.suffix != ".zip":
        raise ValueError(f"export path {str(path)!r} must end in .zip")
    table = table.reset_index(drop=True).copy()
    for i, structure in enumerate(structures):  # before spglib sees any of them (NaN crashes it); any density is
        # written: the user chose the candidate, and report.csv carries its plausible_density flag
        _check_candidate(structure, f"candidate {str(table.iloc[i]['id'])!r}")
    stems = _member_stems([str(v) for v in table["id"]], [str(v) for v in table["formula"]])
    for name, extra in (("relaxed", relaxed), ("reviews", reviews)):
        if extra is not None and len(extra) != len(structures):
            raise ValueError(f"{len(extra)} {name} for {len(structures)} structures")
    for i, r in enumerate(relaxed or ()):
        if r is not None:
            _check_candidate(r, f"relaxed candidate {str(table.iloc[i]['id'])!r}")
    if path.is_dir():
        raise ValueError(f"export path {str(path)!r} is a folder; give a .zip file name")
    files: list[dict[str, Any]] = []
    def write(fh: Any) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for i, structure in enumerate(structures):
                row = table.iloc[i]
                stem = stems[i]
                sym_name = f"{stem}_sym_symprec{symprec:g}.cif"
                try:
                    sym_text, sg = _symmetrized_cif(structure, symprec)
                except Exception as exc:  # noqa: BLE001 - spglib can fail on odd cells: keep the P1 files and say so
                    log.warning("symmetrizing %s failed: %s", stem, exc)
                    sym_text, sg, sym_name = None, None, None
                if sym_text is not None:
                    zf.writestr(sym_name, sym_text)
                zf.writestr(f"{stem}_P1.cif", _p1_cif(structure))
                zf.writestr(f"{stem}_POSCAR", _poscar(structure, f"{row['id']} {row['formula']} (mattergen-lab)"))
                files.append({"id": str(row["id"]), "formula": str(row["formula"]), "symmetrized_space_group": sg,
                              "symmetrized_cif": sym_name, "p1_cif": f"{stem}_P1.cif", "poscar": f"{stem}_POSCAR"})
                files[-1].update(write_review_files(zf, stem, (relaxed or [None] * len(structures))[i],
                                                    (reviews or [None] * len(structures))[i]))
            table["symmetrized_space_group"] = [f["symmetrized_space_group"] for f in files]
            table["symmetrized_cif"] = [f["symmetrized_cif"] for f in files]
            figures = write_review_summary(zf, table, files, reviews, hull, pareto)
            full = dict(report)
            full.update({
                "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "symprec": float(symprec),
                "angle_tolerance": EXPORT_ANGLE_TOLERANCE,
                "symmetry_tool": "spglib via pymatgen SpacegroupAnalyzer / CifWriter",
                "num_candidates": len(files),
                "candidates": files,
            })
            csv = io.StringIO()
            table.to_csv(csv, index=False)
            zf.writestr("report.csv", csv.getvalue())
            zf.writestr("report.json", json.dumps(full, indent=2, default=_json_default))
            zf.writestr("report.html", _report_html(full, table, extra=figures))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)  # a temp file beside path, then a rename: never a half-written zip
    except OSError as exc:  # PermissionError, IsADirectoryError, a full disk: name the target, not a temp file
        raise ValueError(f"cannot write the export to {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _export_inputs(structures: Sequence[Any], table: pd.DataFrame | None, report: Mapping[str, Any] | None,
                   evaluation: Any, ids: Sequence[str] | None) -> tuple[list[Structure], pd.DataFrame, Mapping[str, Any]]:
    """``(structures, table, report)`` for :func:`export_candidates` from what it was given (see its docstring)."""
    items = list(structures)
    candidates = [s for s in items if isinstance(s, Candidate)]
    if candidates and len(candidates) != len(items):
        raise ValueError("structures mixes design Candidates and plain structures; give one kind")
    protocol = getattr(evaluation, "protocol", None)
    ev_table = getattr(evaluation, "table", evaluation)
    if table is not None and evaluation is not None:
        raise ValueError("give table= (already built) or evaluation= (merged into a table built here), not both")
    if table is not None and ids is not None:
        raise ValueError("ids= names the rows of a table built here; a given table has its own 'id' column")
    if candidates:
        if ids is not None:
            raise ValueError("ids= is for plain structures; candidates have their own ids")
        if table is None:
            table = candidate_table(candidates, ev_table)
        if report is None:
            report = design_report(candidates, evaluation_protocol=protocol)
        return [c.structure for c in candidates], table, report
    if table is None:
        table = structure_table(items, ids=ids, evaluation=ev_table)
    if report is None:
        report = {"evaluation_protocol": dict(protocol) if protocol else
                  ("not recorded (an evaluation table without its protocol)" if ev_table is not None else "not evaluated")}
    return items, table, report


def _check_candidate(structure: Structure, name: str) -> None:
    """What the writers cannot take: a bad structure (:func:`check_structure_input`), more than
    :data:`~mattergen_lab.limits.MAX_EXPORT_ATOMS` atoms (a 31,250-atom cell hung the export), a disordered one (the
    POSCAR writer fails on it)."""
    from mattergen_lab.limits import MAX_EXPORT_ATOMS

    check_structure_input(structure, name=name, volume_per_atom=None)
    if len(structure) > MAX_EXPORT_ATOMS:
        raise ValueError(f"{name}: {len(structure):,} atoms is more than MAX_EXPORT_ATOMS={MAX_EXPORT_ATOMS:,} "
                         "(mattergen_lab.limits); generated crystals have at most 200")
    if not structure.is_ordered:
        raise ValueError(f"{name} ({structure.composition.formula}) is disordered (partial occupancies); export "
                         "ordered crystals only")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (Path, _dt.datetime)):
        return str(obj)
    return repr(obj)
