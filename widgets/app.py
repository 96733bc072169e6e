"""``DesignApp``: the target, trajectory, hull, Pareto and candidate panels in one layout.

One line in a notebook::

    from mattergen_lab.widgets import DesignApp; DesignApp(checkpoint="runs/magnets/best")

The app draws a :class:`mattergen_lab.design.DesignSession` (candidates, evaluations by id, the table, the protocol,
relaxed structures and reviews, the hull, the export): ``DesignApp(session=...)`` draws one a notebook already has,
and ``app.session`` is the app's. Generation and evaluation run on a worker thread (one at a time); the buttons call
:meth:`DesignApp.generate`, :meth:`DesignApp.cancel`, :meth:`DesignApp.evaluate` and :meth:`DesignApp.export`, which
notebooks and tests can call directly (``wait=True`` blocks until the worker is done).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd
from mattergen_lab.widgets.candidates import CandidateTable
from mattergen_lab.widgets.plots import HullPlot, ParetoPlot
from mattergen_lab.widgets.review import ReviewController
from mattergen_lab.widgets.targets import ERROR_STYLE, TargetPanel
from mattergen_lab.widgets.trajectory import TrajectoryPanel

from mattergen_lab import design
from mattergen_lab.console import silence_library_warnings
from mattergen_lab.sampling.variation import SYMMETRIC_FINE_TUNES

log = logging.getLogger(__name__)

Evaluator = Callable[..., Any]

#: The checkpoint a formula in the app's "Formula" field switches to (crystal-structure prediction).
CSP_CHECKPOINT = "mgl_mp20_small_csp"
#: With a symmetry set, the bundled base gives way to its fine-tune on symmetric noise (its crystals keep their group
#: after relaxation more often at the same S.U.N.; docs/quality.md), as a formula gives way to the CSP model, and the
#: CSP model to its own symmetric fine-tune (15 of 20 held-out structures found against 11; docs/quality.md):
#: ``SYMMETRIC_FINE_TUNES`` (mattergen_lab.sampling.variation).
#: suggestions of the symmetry control (any space group 1-230 or template such as 225:ab may be typed)
SYMMETRY_CHOICES = ("off", "mp20 (MP-20's space groups)", "cubic", "hexagonal", "trigonal", "tetragonal",
                    "orthorhombic", "monoclinic", "triclinic", "225 (Fm-3m)", "221 (Pm-3m)", "194 (P6_3/mmc)",
                    "62 (Pnma)", "14 (P2_1/c)")


class DesignApp(w.VBox):
    """The design environment.

    Args:
        checkpoint: registry name or path selected at start (a path is added to the chooser).
        evaluator: ``f(structures, *, ids, progress) -> result`` with ``.table`` (one row per structure,
            ``id`` and E_hull/S.U.N. columns) and ``.protocol``; default
            :func:`mattergen_lab.evaluation.evaluate_structures` (CHGNet relaxation, ~3 s per crystal on CPU).
        reference: an object with ``.phase_diagram(elements)`` for the hull plot; default
            ``mattergen_lab.evaluation.load_reference("mp20", data_dir)``, loaded on first use.
        auto_evaluate: evaluate new candidates right after each run.
        ranges, online, registry_path: passed to :class:`~mattergen_lab.widgets.targets.TargetPanel`.
        known: known materials for the review (:class:`~mattergen_lab.design.KnownMaterials`; default MP-20).
        review_viewer: ``"auto"`` (Crystal Toolkit, nglview where it cannot start) or ``"nglview"``.
        session: a :class:`~mattergen_lab.design.DesignSession` to draw (its candidates are shown at once); it brings
            its own evaluator, reference, known materials and data directory, so those arguments go with a new one only.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        evaluator: Evaluator | None = None,
        reference: Any = None,
        auto_evaluate: bool = False,
        ranges: dict[str, design.PropertyRange] | None = None,
        online: bool | None = None,
        registry_path: str | os.PathLike | None = None,
        data_dir: str | os.PathLike | None = None,
        known: Any = None,
        review_viewer: str = "auto",
        session: design.DesignSession | None = None,
    ) -> None:
        silence_library_warnings()  # pymatgen's "No Pauling electronegativity for Ne" is not the user's business
        if session is not None:
            given = [name for name, v in (("evaluator", evaluator), ("reference", reference), ("known", known),
                                          ("data_dir", data_dir)) if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: give these to the DesignSession, not next to session=")
        self.session = session or design.DesignSession(evaluator=evaluator, reference=reference, known=known,
                                                       data_dir=data_dir)
        self.selected: str | None = None
        self.frames_received = 0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()

        self.targets = TargetPanel(checkpoint, ranges=ranges, online=online, registry_path=registry_path)
        self.trajectory = TrajectoryPanel(on_select=self.select)
        self.hull = HullPlot(on_select=self.open_review)
        self.pareto = ParetoPlot(on_select=self.open_review)
        self.candidate_panel = CandidateTable(on_select=self.select, on_export=self._export_clicked, on_review=self.open_review,
                                              on_vary=lambda cid, t0: self.vary(cid, t0, wait=False))
        # the candidate detail view (Crystal Toolkit, XRD, nearest known materials): widgets/review.py
        self.reviewer = ReviewController(self.session, viewer=review_viewer)

        self.generate_button = w.Button(description="Generate", button_style="primary", icon="play")
        self.generate_button.add_class("mgl-generate")
        self.cancel_button = w.Button(description="Cancel", button_style="warning", icon="stop", disabled=True)
        self.cancel_button.add_class("mgl-cancel")
        self.evaluate_button = w.Button(description="Evaluate", icon="check")
        self.evaluate_button.add_class("mgl-evaluate")
        self.auto_evaluate = w.Checkbox(value=auto_evaluate, description="evaluate after generating", indent=False)
        self.auto_evaluate.add_class("mgl-auto-evaluate")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Progress")
        self.progress.add_class("mgl-progress")
        self.status = w.HTML("Ready.")
        self.status.add_class("mgl-status")
        # crystal-structure prediction: a formula switches generation to the CSP model, with exactly these atoms
        self.formula = w.Text(value="", placeholder="e.g. Li2MnO3 (CSP)", description="Formula")
        self.formula.add_class("mgl-formula")
        self.formula_units = w.BoundedIntText(value=1, min=1, max=20, description="× units")
        self.formula_units.add_class("mgl-formula-units")
        # the symmetric mode: every crystal keeps a Wyckoff template of the chosen space group / system / MP-20's
        self.symmetry = w.Combobox(value="", placeholder="off · mp20 · cubic · 225", options=SYMMETRY_CHOICES,
                                   description="Symmetry", ensure_option=False)
        self.symmetry.add_class("mgl-symmetry")
        self.generate_button.on_click(lambda _: self.generate(wait=False))
        self.cancel_button.on_click(lambda _: self.cancel())
        self.evaluate_button.on_click(lambda _: self.evaluate(wait=False))

        super().__init__([
            w.HBox([self.generate_button, self.cancel_button, self.evaluate_button, self.auto_evaluate, self.progress]),
            w.HBox([self.formula, self.formula_units, self.symmetry]),
            self.status,
            w.HBox([self.targets, self.trajectory]),
            w.HBox([self.hull, self.pareto]),
            self.candidate_panel,
            self.reviewer.panel,
        ])
        self.add_class("mgl-design-app")
        if self.session.candidates:
            self.refresh()

    # ------------------------------------------------------------------ the session's state, for notebooks and tests
    @property
    def candidates(self) -> list[design.Candidate]:
        return self.session.candidates

    @property
    def evaluations(self) -> pd.DataFrame:
        return self.session.evaluations

    @property
    def protocol(self) -> dict[str, Any] | None:
        return self.session.protocol

    @property
    def table(self) -> pd.DataFrame:
        return self.session.table

    @property
    def evaluator(self) -> Evaluator:
        return self.session.evaluator

    @property
    def last_run(self) -> design.DesignRun | None:
        return self.session.last_run

    # ------------------------------------------------------------------ public actions
    def generate(self, wait: bool = True) -> design.DesignRequest | None:
        """Sample with the current controls on a worker thread; returns the request (None if invalid)."""
        return self._sample(lambda: self._with_symmetry(self._with_composition(self.targets.request())), wait)

    def vary(self, candidate_id: str, strength: float = 0.3, wait: bool = True) -> design.DesignRequest | None:
        """Variations of one candidate (the row's "vary" button): its crystal noised to t0 = ``strength`` and denoised
        with the current targets, guidance, samples and seed (no formula: a parent brings its own atoms and cell).
        With the symmetry control set, every variation keeps the candidate's own space group and Wyckoff sites
        (``symmetry="parent"``, on the symmetric model). Returns the request (None if invalid: the status names it)."""
        def build() -> design.DesignRequest:
            request = dataclasses.replace(self.targets.request(), num_atoms=None, strength=strength,
                                          parent=self.session.candidate(candidate_id).structure)
            return self._with_symmetry(request, keep_parent=True)

        return self._sample(build, wait)

    def _sample(self, build: Callable[[], design.DesignRequest], wait: bool) -> design.DesignRequest | None:
        """Build the request (a ``ValueError`` goes to the status line, before any work) and sample it on the worker."""
        try:
            request = build()
        except ValueError as exc:
            self._set_status(str(exc), error=True)
            return None
        if self._start(self._generate_worker, request) and wait:
            self.wait()
        return request

    def _with_composition(self, request: design.DesignRequest) -> design.DesignRequest:
        """With a formula: the CSP model samples exactly that composition (targets and chemistry do not apply)."""
        formula = self.formula.value.strip()
        if not formula:
            return request
        return dataclasses.replace(request, checkpoint=CSP_CHECKPOINT, composition=formula, formula_units=int(self.formula_units.value),
                                   chemical_system=None, targets={}, guidance_scale=0.0, num_atoms=None)

    def _with_symmetry(self, request: design.DesignRequest, keep_parent: bool = False) -> design.DesignRequest:
        """The symmetry control: empty or ``off`` samples as usual; otherwise the symmetric mode (``ValueError``
        names a bad value before any work, e.g. ``231``), or with ``keep_parent`` the parent's own symmetry."""
        text = self.symmetry.value.strip()
        if not text or text.lower() == "off":
            return request
        checkpoint = SYMMETRIC_FINE_TUNES.get(request.checkpoint, request.checkpoint)
        symmetry = "parent" if keep_parent else text.split(" ")[0]
        return dataclasses.replace(request, symmetry=symmetry, checkpoint=checkpoint)

    def cancel(self) -> None:
        """Stop after the current step; every finished batch is kept."""
        self._cancel.set()
        self._set_status("Cancelling…")

    def evaluate(self, wait: bool = True, ids: Sequence[str] | None = None) -> None:
        """Evaluate (relax, E_hull, S.U.N.) the candidates not evaluated yet, or ``ids``, on the worker thread
        (:meth:`mattergen_lab.design.DesignSession.evaluate`)."""
        try:
            todo = self.session.pending(ids)
        except ValueError as exc:  # an id not in the session
            self._set_status(str(exc), error=True)
            return
        if not todo:
            self._set_status(f"Nothing to evaluate; {len(self.candidates)} candidates in this session.")
            return
        if self._start(self._evaluate_worker, todo) and wait:
            self.wait()

    def export(self, path: str | os.PathLike, ids: Sequence[str] | None = None, *, symprec: float = design.EXPORT_SYMPREC,
               review: bool = True) -> Path:
        """Zip the checked candidates (or ``ids``) for synthesis review, with the hull as drawn
        (:meth:`mattergen_lab.design.DesignSession.export`).

        ``review`` adds each candidate's XRD, nearest known materials and oxidation states (a few seconds each).
        """
        ids = list(ids) if ids is not None else self.candidate_panel.checked_ids()
        if not ids:
            raise ValueError("no candidates selected for export; tick their checkboxes first")
        return self.session.export(path, ids, symprec=symprec, review=review, hull=self.hull.data)

    def open_review(self, candidate_id: str, wait: bool = False) -> None:
        """Select ``candidate_id`` and open its detail view (structure, XRD, nearest known materials)."""
        self.session.candidate(candidate_id)  # ValueError names an id not in the session
        self.select(candidate_id)  # an open review follows the selection
        if self.reviewer.shown != candidate_id:
            self.reviewer.open(candidate_id, wait=wait)
        elif wait:
            self.reviewer.wait()

    def add_candidates(self, candidates: Sequence[design.Candidate], evaluations: pd.DataFrame | None = None,
                       *, protocol: dict[str, Any] | None = None) -> list[str]:
        """Add candidates made elsewhere (e.g. a campaign's crystals) with their evaluation rows (by ``id``); see
        :meth:`mattergen_lab.design.DesignSession.add_candidates`. Returns the ids added."""
        added = self.session.add_candidates(candidates, evaluations, protocol=protocol)
        self.refresh()
        return added

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker finishes; True when it has."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def select(self, candidate_id: str) -> None:
        """Show one candidate everywhere: viewer + scrubber, table row, Pareto and hull markers."""
        if candidate_id not in self.session.ids:
            return
        self.selected = candidate_id
        self.trajectory.select(candidate_id)
        self.candidate_panel.highlight(candidate_id)
        self.pareto.update(self.table, selected=candidate_id)
        self._update_hull()
        self.reviewer.follow(candidate_id)

    # ------------------------------------------------------------------ workers
    def _start(self, target: Callable[..., None], *args: Any) -> bool:
        if self.busy:
            self._set_status("Busy: wait for the current run or cancel it.", error=True)
            return False
        self._cancel.clear()
        self.error = None
        self.generate_button.disabled = self.evaluate_button.disabled = True
        self.cancel_button.disabled = False
        self._thread = threading.Thread(target=self._guarded, args=(target, *args), daemon=True, name="mgl-design")
        self._thread.start()
        return True

    def _guarded(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # shown in the panel, never raised into the notebook
            log.exception("design worker failed")
            self.error = exc
            self._set_status(f"{type(exc).__name__}: {exc}", error=True)
        finally:
            self.generate_button.disabled = self.evaluate_button.disabled = False
            self.cancel_button.disabled = True

    def _generate_worker(self, request: design.DesignRequest) -> None:
        self.progress.value = 0  # the maximum arrives with the first frame (the step count may be the checkpoint's)
        self._set_status(f"Loading {request.checkpoint}…")
        run = self.session.generate(request, on_frame=self._on_frame, cancel=self._cancel)
        if self.selected is not None:
            self.select(self.selected)  # back from the live view to the selected candidate's trajectory
        word = "Cancelled" if run.cancelled else "Done"
        self._set_status(f"{word}: {len(run.candidates)} new; {len(self.candidates)} candidates in this session.")
        if run.candidates and self.auto_evaluate.value and not run.cancelled:
            self._evaluate_worker(list(run.candidates))

    def _on_frame(self, frame: design.DesignFrame) -> None:
        self.frames_received += 1
        self.progress.max, self.progress.value = frame.total, frame.done
        self.trajectory.live_frame(frame)
        if frame.final:  # the session has added the batch's candidates
            self.refresh()
            if self.selected is None and frame.candidates:
                self.select(frame.candidates[0].id)
        self._set_status(f"Sampling: batch {frame.batch + 1}, step {frame.step}; {len(self.candidates)} candidates so far.")

    def _evaluate_worker(self, todo: list[design.Candidate]) -> None:
        self.progress.value, self.progress.max = 0, len(todo)
        self._set_status(f"Evaluating {len(todo)} candidates…")

        def progress(done: int, total: int) -> None:
            self.progress.max, self.progress.value = max(total, 1), done

        table = self.session.evaluate([c.id for c in todo], progress=progress)
        self.refresh()
        self.progress.value = self.progress.max
        sun = int(pd.Series(table.get("novel_unique_stable", [])).fillna(False).astype(bool).sum())
        self._set_status(f"Evaluated {len(todo)} ({sun} S.U.N.); {len(self.candidates)} candidates in this session.")

    # ------------------------------------------------------------------ rendering
    def refresh(self) -> None:
        """Redraw every panel from the session's table and candidates."""
        with self.session.lock:
            table, candidates = self.session.table, list(self.session.candidates)
        self.candidate_panel.set_table(table, selected=self.selected)
        self.trajectory.set_candidates(candidates)
        self.pareto.update(table, selected=self.selected)
        self._update_hull()

    def _update_hull(self) -> None:
        system = self.session.hull_system(self.selected)
        if system is None:
            self.hull.update(None)
            return
        if len(system) > design.MAX_HULL_ELEMENTS:
            self.hull.update(None, message=f"The hull is drawn for systems of up to {design.MAX_HULL_ELEMENTS} elements; "
                                           f"{html.escape(str(system))} has {len(system)}. Set a target chemistry to explore one system.")
            return
        try:
            self.hull.update(self.session.hull_data(system), selected=self.selected)
        except Exception as exc:  # no reference data, an element without entries, ...
            self.hull.update(None, message=f"<span style='{ERROR_STYLE}'>hull for {html.escape(str(system))} unavailable: "
                                           f"{html.escape(f'{type(exc).__name__}: {exc}')}</span>")

    def _export_clicked(self, path: str) -> None:
        try:
            out = self.export(path)
        except (ValueError, OSError) as exc:
            self.candidate_panel.export_status.value = f"<span style='{ERROR_STYLE}'>{html.escape(str(exc))}</span>"
            return
        self.candidate_panel.export_status.value = f"Wrote {html.escape(str(out))}"

    def _set_status(self, message: str, *, error: bool = False) -> None:
        text = html.escape(message)
        self.status.value = f"<span style='{ERROR_STYLE}'>{text}</span>" if error else text
