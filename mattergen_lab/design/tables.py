"""Candidate tables, Pareto fronts and convex-hull plot data."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np


from mattergen_lab.design.requests import EVALUATION_COLUMNS
from mattergen_lab.design.runs import Candidate, candidate_oracles

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Structure


log = logging.getLogger(__name__)
# ------------------------------------------------------------------------------------------- tables
#: The columns of :func:`candidate_table` and :func:`structure_table`, before :data:`EVALUATION_COLUMNS`.
CANDIDATE_COLUMNS = (
    "id", "formula", "chemical_system", "in_target_system", "num_atoms", "space_group", "wyckoff", "hhi_score",
    "density", "volume_per_atom", "plausible_density", "checkpoint", "guidance_scale", "targets", "parent",
)


def _row(cid: str, o: Mapping[str, Any], request: Any) -> dict[str, Any]:
    """One table row from a candidate's oracle values and its request (``None`` for a plain structure)."""
    from mattergen_lab.evaluation.validity import density_plausibility

    target = request.chemical_system if request is not None else None
    return {
        "id": cid,
        "formula": o["formula"],
        "chemical_system": o["chemical_system"],
        "in_target_system": (set(o["chemical_system"].split("-")) <= set(target.split("-"))) if target else None,
        "num_atoms": o["num_atoms"],
        "space_group": o["space_group"],
        "wyckoff": o.get("wyckoff", ""),
        "hhi_score": o["hhi_score"],
        "density": o["density"],
        "volume_per_atom": o["volume_per_atom"],
        # the cell's plausibility is known at generation (no evaluation needed): every candidate gets its flag
        "plausible_density": o["plausible_density"] if "plausible_density" in o
        else density_plausibility(o["volume_per_atom"])[0],
        "checkpoint": request.checkpoint if request is not None else None,
        "guidance_scale": request.guidance_scale if request is not None else np.nan,
        "targets": ", ".join(f"{k}={v:g}" for k, v in request.targets.items()) if request is not None else "",
        "parent": _parent_label(request),
    }


def _parent_label(request: Any) -> str:
    """A variation's parent as the table and the export name it: formula, sha256 prefix and strength; ``""`` for
    a crystal sampled from noise."""
    parent = getattr(request, "parent", None)
    if parent is None:
        return ""
    return f"{parent.formula} (sha256 {parent.sha256[:12]}, t0={request.strength:g})"


def _with_evaluation(rows: list[dict[str, Any]], evaluation: pd.DataFrame | None) -> pd.DataFrame:
    """The rows as a table, with the :data:`EVALUATION_COLUMNS` of ``evaluation`` merged by ``id`` (the last row of an id
    wins; NaN where an id was not evaluated)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))
    ev = evaluation[[c for c in ("id", *EVALUATION_COLUMNS) if c in evaluation.columns]] if evaluation is not None and len(evaluation) else None
    if ev is not None and "id" in ev.columns:
        ev = ev.assign(id=ev["id"].astype(str))
        df = df.merge(ev.drop_duplicates("id", keep="last"), on="id", how="left")
    for col in EVALUATION_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    return df


def candidate_table(candidates: Sequence[Candidate], evaluation: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per candidate: request, oracle values, and evaluation columns (by ``id``) when given.

    Columns: :data:`CANDIDATE_COLUMNS` (``id, formula, chemical_system, in_target_system, num_atoms, space_group, wyckoff,
    hhi_score, density, volume_per_atom, plausible_density, checkpoint, guidance_scale, targets, parent``) and
    :data:`EVALUATION_COLUMNS` (NaN/None when not evaluated). ``in_target_system`` is None without a target chemical system.
    """
    return _with_evaluation([_row(c.id, c.oracles or candidate_oracles(c.structure), c.request) for c in candidates],
                            evaluation)


def structure_table(structures: Sequence[Structure], *, ids: Sequence[str] | None = None,
                    evaluation: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`candidate_table` for plain structures (e.g. from :func:`mattergen_lab.sample`): the same columns, the
    request's (``checkpoint``, ``guidance_scale``, ``targets``, ``in_target_system``) empty.

    ``ids``: one per structure; default the ``id`` column of ``evaluation`` when it has one row per structure (as
    :func:`~mattergen_lab.evaluation.evaluate_structures` returns, in input order), else ``"0"``, ``"1"``, ...
    ``evaluation``'s rows are merged by ``id``.
    """
    structures = list(structures)
    if ids is None:
        has_ids = evaluation is not None and "id" in evaluation.columns and len(evaluation) == len(structures)
        ids = [str(i) for i in evaluation["id"]] if has_ids else [str(i) for i in range(len(structures))]
    ids = [str(i) for i in ids]
    if len(ids) != len(structures):
        raise ValueError(f"{len(ids)} ids for {len(structures)} structures")
    if evaluation is not None and len(evaluation) and "id" not in evaluation.columns:
        raise ValueError(f"the evaluation table needs an 'id' column to be merged; it has {list(evaluation.columns)}")
    return _with_evaluation([_row(i, candidate_oracles(s), None) for i, s in zip(ids, structures)], evaluation)


def pareto_front(df: pd.DataFrame, x: str, y: str, maximize: tuple[bool, bool] = (False, False)) -> np.ndarray:
    """Boolean mask of the rows not dominated in ``(x, y)``; rows with a missing value are never optimal.

    Row ``i`` is dominated when some row ``j`` is at least as good in both and strictly better in one
    (better = larger where ``maximize`` is True, smaller otherwise). Ties are all kept.
    """
    for col in (x, y):
        if col not in df.columns:
            raise ValueError(f"column {col!r} is not in the table; it has {list(df.columns)}")
    pts = np.stack([
        np.asarray(df[x], dtype=float) * (-1.0 if maximize[0] else 1.0),
        np.asarray(df[y], dtype=float) * (-1.0 if maximize[1] else 1.0),
    ], axis=1)  # (n, 2), smaller is better
    ok = np.isfinite(pts).all(axis=1)
    p = pts[ok]
    le = (p[None, :, :] <= p[:, None, :]).all(-1)  # (n, n): j at least as good as i
    lt = (p[None, :, :] < p[:, None, :]).any(-1)  # j strictly better somewhere
    dominated = (le & lt).any(axis=1)
    mask = np.zeros(len(df), dtype=bool)
    mask[np.flatnonzero(ok)] = ~dominated
    return mask


# ---------------------------------------------------------------------------------------- hull data
@dataclass(frozen=True)
class HullData:
    """Plain coordinates for a hull plot (no plotting library involved).

    ``kind`` is ``"binary"`` (x = fraction of ``elements[1]``, y = formation energy, eV/atom),
    ``"ternary"`` (x, y in an equilateral triangle with ``elements`` at its corners; z = formation energy)
    or ``"list"`` (one element or 4+: x = index, y = E_hull). ``reference`` and ``candidates`` are lists of
    dicts with ``x, y, label, e_hull`` (+ ``id`` for candidates); ``lines`` are polylines of the hull.
    """

    kind: str
    elements: tuple[str, ...]
    reference: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    lines: list[tuple[list[float], list[float]]]


def _coords(kind: str, elements: Sequence[str], comp: Any) -> tuple[float, float]:
    fr = [comp.get_atomic_fraction(e) for e in elements]
    if kind == "binary":
        return float(fr[1]), 0.0
    # ternary: corners (0,0), (1,0), (0.5, sqrt(3)/2)
    return float(fr[1] + 0.5 * fr[2]), float(fr[2] * math.sqrt(3) / 2)


def hull_data(phase_diagram: PhaseDiagram, candidates: Sequence[Mapping[str, Any]]) -> HullData:
    """Plot coordinates of a phase diagram's entries and of evaluated candidates.

    ``candidates``: dicts with ``id``, ``formula`` (or ``composition``) and ``energy_above_hull`` (eV/atom).
    A candidate's formation energy is placed at hull energy + E_hull, so the plot agrees with the E_hull
    the evaluation reported whatever its energy corrections. Candidates outside the diagram's elements or
    without E_hull are left out.
    """
    from pymatgen.core import Composition

    pd_ = phase_diagram
    elements = tuple(sorted(str(e) for e in pd_.elements))
    kind = {2: "binary", 3: "ternary"}.get(len(elements), "list")
    el_refs = {str(e): entry.energy_per_atom for e, entry in pd_.el_refs.items()}

    def form_energy(comp: Any, energy_per_atom: float) -> float:
        return float(energy_per_atom - sum(comp.get_atomic_fraction(e) * el_refs[e] for e in elements))

    reference, lines = [], []
    for entry in pd_.all_entries:
        comp = entry.composition
        e_hull = float(pd_.get_e_above_hull(entry))
        x, y = _coords(kind, elements, comp) if kind != "list" else (len(reference), e_hull)
        row = {"x": x, "y": y, "label": comp.reduced_formula, "e_hull": e_hull, "stable": e_hull < 1e-8,
               "entry_id": str(getattr(entry, "entry_id", "") or ""),
               "formation_energy": form_energy(comp, entry.energy_per_atom)}
        if kind == "binary":
            row["y"] = row["formation_energy"]
        elif kind == "ternary":
            row["z"] = row["formation_energy"]
        reference.append(row)
    if kind == "binary":
        stable = sorted((r for r in reference if r["stable"]), key=lambda r: r["x"])
        lines.append(([r["x"] for r in stable], [r["y"] for r in stable]))
    elif kind == "ternary":
        for facet in pd_.facets:
            pts = [_coords(kind, elements, pd_.qhull_entries[i].composition) for i in facet]
            pts.append(pts[0])
            lines.append(([p[0] for p in pts], [p[1] for p in pts]))
    cands = []
    for c in candidates:
        e_hull = c.get("energy_above_hull")
        if e_hull is None or not np.isfinite(float(e_hull)):
            continue
        comp = Composition(c["composition"]) if "composition" in c else Composition(c["formula"])
        if not {str(e) for e in comp.elements} <= set(elements):
            continue
        hull_e = float(pd_.get_hull_energy_per_atom(comp))
        form = form_energy(comp, hull_e) + float(e_hull)
        if kind == "list":
            x, y = len(reference) + len(cands), float(e_hull)
        else:
            x, y = _coords(kind, elements, comp)
        row = {"x": x, "y": form if kind == "binary" else y, "label": comp.reduced_formula, "e_hull": float(e_hull),
               "id": str(c["id"]), "formation_energy": form}
        if kind == "ternary":
            row["z"] = form
        cands.append(row)
    return HullData(kind, elements, reference, cands, lines)
