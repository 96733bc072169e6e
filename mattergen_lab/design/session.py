"""``DesignSession``: what a design session holds, without widgets: candidates, their evaluations by id, the candidate
table, the evaluation protocol, relaxed structures and reviews, the hull, and the export::

    from mattergen_lab.design import DesignRequest, DesignSession

    session = DesignSession()   # evaluator: mattergen_lab.evaluation.evaluate_structures (CHGNet/MatterSim relaxation)
    session.generate(DesignRequest(checkpoint="mgl_mp20_small", num_samples=4, num_steps=50, seed=0))
    session.evaluate()          # the candidates not evaluated yet (ids="1-0", ...: run 1, sample 0)
    session.table               # one row per candidate, evaluation columns merged by id
    session.export("review.zip", ids=["1-0", "1-2"])

The design app (``mattergen_lab.widgets.DesignApp``) draws one session: its buttons call these methods on a worker
thread and redraw from :attr:`DesignSession.table`. A session's lists are changed under its lock, so the app may
read them while its worker adds to them.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mattergen_lab.chemistry import ChemicalSystem
from mattergen_lab.console import silence_library_warnings
from mattergen_lab.design.export import design_report, export_candidates
from mattergen_lab.design.requests import EXPORT_SYMPREC, DesignRequest
from mattergen_lab.design.review import KnownMaterials, review_candidate
from mattergen_lab.design.runs import Candidate, DesignFrame, DesignRun, run_design
from mattergen_lab.design.tables import HullData, candidate_table, hull_data

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pymatgen.core import Structure

    from mattergen_lab.design.review import CandidateReview

log = logging.getLogger(__name__)

#: ``f(structures, *, ids, progress) -> result`` with ``.table`` (one row per structure, ``id`` and E_hull/S.U.N.
#: columns), ``.protocol`` and optionally ``.relaxed`` (one structure or None per input).
Evaluator = Callable[..., Any]
#: The hull is drawn for chemical systems of up to this many elements.
MAX_HULL_ELEMENTS = 4


def default_evaluator(structures: list[Structure], *, ids: list[str] | None = None, progress: Callable | None = None,
                      data_dir: Any = None) -> Any:
    """:func:`mattergen_lab.evaluation.evaluate_structures` (relaxation, E_hull against MP-20, S.U.N.)."""
    from mattergen_lab.evaluation import evaluate_structures

    return evaluate_structures(structures, ids=ids, progress=progress, data_dir=data_dir)


class DesignSession:
    """Candidates from design runs (or added from elsewhere) and everything known about them.

    Args:
        evaluator: see :data:`Evaluator`; default :func:`default_evaluator` (~3 s per crystal on a CPU).
        reference: an object with ``.phase_diagram(elements)`` for the hull; default the MP-20 reference
            (``mattergen_lab.evaluation.load_reference("mp20", data_dir)``), loaded on first use.
        known: known materials for reviews (:class:`~mattergen_lab.design.KnownMaterials`; default MP-20, on first use).
        data_dir: the data directory of the defaults (``None``: ``$MATTERGEN_LAB_DATA`` or the default location).

    Attributes:
        candidates: every candidate, in the order they came; ids are unique (``"<run>-<sample>"`` for runs).
        evaluations: evaluation rows, one per evaluated id (a later evaluation of an id replaces its row).
        protocol: the last evaluation's protocol (``None`` before any); it goes into the export's report.
        relaxed: relaxed structures by id, from the evaluator's ``.relaxed``.
        reviews: reviews by id (:meth:`review`), dropped when their candidate is evaluated again.
        last_run: the last :meth:`generate`'s :class:`~mattergen_lab.design.DesignRun`.
    """

    def __init__(self, *, evaluator: Evaluator | None = None, reference: Any = None, known: Any = None,
                 data_dir: str | os.PathLike | None = None) -> None:
        import pandas as pd

        silence_library_warnings()  # as the app does: pymatgen's "No Pauling electronegativity for Ne" is not the user's business
        self.evaluator = evaluator or functools.partial(default_evaluator, data_dir=data_dir)
        self.data_dir = data_dir
        self.candidates: list[Candidate] = []
        self.evaluations = pd.DataFrame(columns=["id"])
        self.protocol: dict[str, Any] | None = None
        self.relaxed: dict[str, Structure] = {}
        self.reviews: dict[str, CandidateReview] = {}
        self.last_run: DesignRun | None = None
        self.runs = 0
        self.lock = threading.RLock()
        self._reference, self._known = reference, known
        self._phase_diagrams: dict[ChemicalSystem, Any] = {}
        self._table: pd.DataFrame | None = None  # rebuilt on the next read after a change
        self._review_lock = threading.Lock()

    # ------------------------------------------------------------------ candidates
    @property
    def ids(self) -> list[str]:
        with self.lock:
            return [c.id for c in self.candidates]

    def candidate(self, candidate_id: str) -> Candidate:
        """The candidate with this id; ``ValueError`` names an id not in the session."""
        with self.lock:
            for c in self.candidates:
                if c.id == candidate_id:
                    return c
            known = [c.id for c in self.candidates]
        raise ValueError(f"candidate {candidate_id!r} is not in this session; its ids: {known[:10]}"
                         + (f" and {len(known) - 10} more" if len(known) > 10 else ""))

    @property
    def table(self) -> pd.DataFrame:
        """One row per candidate (:func:`~mattergen_lab.design.candidate_table`) with the evaluations merged by id."""
        with self.lock:
            if self._table is None:
                self._table = candidate_table(self.candidates, self.evaluations)
            return self._table

    def generate(self, request: DesignRequest, *, on_frame: Callable[[DesignFrame], None] | None = None,
                 cancel: threading.Event | None = None) -> DesignRun:
        """Run ``request`` (:func:`~mattergen_lab.design.run_design`); each finished batch's candidates join the session
        before ``on_frame`` sees its final frame. Ids are ``"<run>-<sample>"``, run counting from 1 in this session."""
        if not isinstance(request, DesignRequest):
            raise ValueError(f"request={request!r:.80} must be a DesignRequest")
        with self.lock:
            self.runs += 1
            prefix = f"{self.runs}-"

        def frame(f: DesignFrame) -> None:
            if f.final and f.candidates:
                self.add_candidates(f.candidates)
            if on_frame is not None:
                on_frame(f)

        run = run_design(request, on_frame=frame, cancel=cancel, id_prefix=prefix)
        self.last_run = run
        return run

    def add_candidates(self, candidates: Sequence[Candidate], evaluations: pd.DataFrame | None = None,
                       *, protocol: dict[str, Any] | None = None) -> list[str]:
        """Add candidates made elsewhere (e.g. a campaign's crystals) with their evaluation rows (by ``id``).

        Ids already in the session are skipped; ``protocol`` becomes the session's evaluation protocol when it
        has none yet. Returns the ids added.
        """
        import pandas as pd

        with self.lock:
            known = {c.id for c in self.candidates}
            new = [c for c in candidates if c.id not in known]
            self.candidates.extend(new)
            ids = {c.id for c in new}
            rows = evaluations[evaluations["id"].astype(str).isin(ids)] if evaluations is not None and len(evaluations) else None
            if rows is not None and len(rows):
                self.evaluations = pd.concat([self.evaluations, rows], ignore_index=True) if len(self.evaluations) else rows.reset_index(drop=True)
            if self.protocol is None and protocol:
                self.protocol = dict(protocol)
            self._table = None
        return [c.id for c in new]

    # ------------------------------------------------------------------ evaluation
    def pending(self, ids: Sequence[str] | None = None) -> list[Candidate]:
        """What :meth:`evaluate` would evaluate: the candidates ``ids`` (``ValueError`` names unknown ones), or those
        not evaluated yet."""
        with self.lock:
            if ids is not None:
                ids = [str(i) for i in ids]
                by_id = {c.id: c for c in self.candidates}
                unknown = [i for i in ids if i not in by_id]
                if unknown:
                    raise ValueError(f"unknown candidate ids {unknown}")
                return [by_id[i] for i in dict.fromkeys(ids)]
            done = set(self.evaluations["id"].astype(str)) if len(self.evaluations) else set()
            return [c for c in self.candidates if c.id not in done]

    def evaluate(self, ids: Sequence[str] | None = None, *, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
        """Evaluate :meth:`pending` ``(ids)`` with the evaluator (the candidates ``ids``, or those not evaluated yet);
        merge the rows by id.

        Returns the new rows (empty when there was nothing to evaluate); a later evaluation of an id replaces its
        row, relaxed structure and review. ``progress(done, total)`` is handed to the evaluator.
        """
        import pandas as pd

        todo = self.pending(ids)
        if not todo:
            return pd.DataFrame(columns=["id"])
        todo_ids = [c.id for c in todo]
        result = self.evaluator([c.structure for c in todo], ids=todo_ids, progress=progress)
        table = result.table.copy()
        if "id" not in table.columns or len(table) != len(todo):
            raise ValueError(f"the evaluator returned {len(table)} rows for {len(todo)} structures (need one per input, with 'id')")
        table["id"] = todo_ids
        relaxed = getattr(result, "relaxed", None) or [None] * len(todo)
        with self.lock:
            for cid, r in zip(todo_ids, relaxed):
                self.reviews.pop(cid, None)  # reviewed before relaxation: review again
                if r is not None:
                    self.relaxed[cid] = r
                else:
                    self.relaxed.pop(cid, None)
            old = self.evaluations[~self.evaluations["id"].isin(table["id"])] if len(self.evaluations) else None
            self.evaluations = pd.concat([old, table], ignore_index=True) if old is not None and len(old) else table
            self.protocol = dict(getattr(result, "protocol", {}) or {})
            self._table = None
        return table

    # ------------------------------------------------------------------ hull and review
    def hull_system(self, candidate_id: str | None = None) -> ChemicalSystem | None:
        """The chemical system whose hull shows ``candidate_id`` (default: the last candidate): its request's target
        system, else its own; ``None`` in an empty session."""
        with self.lock:
            by_id = {c.id: c for c in self.candidates}
            cand = by_id.get(candidate_id or "") or (self.candidates[-1] if self.candidates else None)
        if cand is None:
            return None
        return ChemicalSystem.parse(cand.request.chemical_system or cand.oracles.get("chemical_system")
                                    or cand.structure.composition.chemical_system)

    def phase_diagram(self, system: str | ChemicalSystem) -> Any:
        """The reference's phase diagram of ``system`` (cached per system)."""
        system = ChemicalSystem.parse(system)
        if system not in self._phase_diagrams:
            if self._reference is None:
                from mattergen_lab.evaluation import load_reference

                self._reference = load_reference("mp20", data_dir=self.data_dir)
            self._phase_diagrams[system] = self._reference.phase_diagram(list(system.symbols))
        return self._phase_diagrams[system]

    def hull_data(self, system: str | ChemicalSystem | None = None) -> HullData | None:
        """Hull plot data of ``system`` (default :meth:`hull_system`) with the evaluated candidates on it; ``None`` in an
        empty session. ``ValueError`` for more than :data:`MAX_HULL_ELEMENTS` elements; the reference's errors
        (no data, an element without entries) pass through."""
        system = ChemicalSystem.parse(system) if system is not None else self.hull_system()
        if system is None:
            return None
        if len(system) > MAX_HULL_ELEMENTS:
            raise ValueError(f"The hull is drawn for systems of up to {MAX_HULL_ELEMENTS} elements; {system} has {len(system)}.")
        rows = self.table[["id", "formula", "energy_above_hull"]].to_dict("records")
        return hull_data(self.phase_diagram(system), rows)

    def known(self) -> Any:
        """The known materials reviews compare with (default MP-20, loaded on first use)."""
        if self._known is None:
            self._known = KnownMaterials.mp20(self.data_dir)
        return self._known

    def review(self, candidate_id: str) -> CandidateReview:
        """The (cached) review of one candidate: XRD, nearest known materials, oxidation states (a few seconds)."""
        cand = self.candidate(candidate_id)
        with self._review_lock:
            if candidate_id not in self.reviews:
                self.reviews[candidate_id] = review_candidate(cand.structure, id=candidate_id,
                                                              relaxed=self.relaxed.get(candidate_id), known=self.known())
            return self.reviews[candidate_id]

    # ------------------------------------------------------------------ export
    def export(self, path: str | os.PathLike, ids: Sequence[str] | None = None, *, symprec: float = EXPORT_SYMPREC,
               review: bool = True, hull: HullData | None | str = "auto") -> Path:
        """Zip candidates ``ids`` (default: all) for synthesis review (:func:`~mattergen_lab.design.export_candidates`).

        ``review`` adds each one's XRD, nearest known materials and oxidation states (a few seconds each). ``hull``:
        the hull figure's data; ``"auto"`` draws the hull of the first exported candidate's system when the reference
        has it (otherwise the zip has no hull figure), ``None`` none.
        """
        ids = list(self.ids if ids is None else ids)
        if not ids:
            raise ValueError("no candidates selected for export")
        chosen = [self.candidate(i) for i in ids]  # ValueError names an unknown id (export_candidates a repeated one)
        table = self.table.set_index("id").loc[ids].reset_index()
        if isinstance(hull, str):
            if hull != "auto":
                raise ValueError(f"hull={hull!r} must be 'auto', None or HullData")
            try:
                hull = self.hull_data(self.hull_system(ids[0]))
            except Exception as exc:  # noqa: BLE001 - no reference data, too many elements: no hull figure, said why
                log.info("export without a hull figure: %s: %s", type(exc).__name__, exc)
                hull = None
        reviews = [self.review(i) for i in ids] if review else None
        return export_candidates(chosen, table, path, report=design_report(chosen, evaluation_protocol=self.protocol),
                                 symprec=symprec, relaxed=[self.relaxed.get(i) for i in ids], reviews=reviews, hull=hull)
