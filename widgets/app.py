"""``DesignApp``: the target, trajectory, hull, Pareto and candidate panels in one layout.

One line in a notebook::

    from mattergen_lab.widgets import DesignApp; DesignApp(checkpoint="runs/magnets/best")

Generation and evaluation run on a worker thread (one at a time); the buttons call :meth:`DesignApp.generate`,
:meth:`DesignApp.cancel`, :meth:`DesignApp.evaluate` and :meth:`DesignApp.export`, which notebooks and tests
can call directly (``wait=True`` blocks until the worker is done).
"""

from __future__ import annotations

import dataclasses
import functools
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

log = logging.getLogger(__name__)

Evaluator = Callable[..., Any]

#: The checkpoint a formula in the app's "Formula" field switches to (crystal-structure prediction).
CSP_CHECKPOINT = "mgl_mp20_small_csp"
#: suggestions of the symmetry control (any space group 1-230 or template such as 225:ab may be typed)
SYMMETRY_CHOICES = ("off", "mp20 (MP-20's space groups)", "cubic", "hexagonal", "trigonal", "tetragonal",
                    "orthorhombic", "monoclinic", "triclinic", "225 (Fm-3m)", "221 (Pm-3m)", "194 (P6_3/mmc)",
                    "62 (Pnma)", "14 (P2_1/c)")


def _default_evaluator(
    structures: list, *, ids: list[str] | None = None, progress: Callable | None = None, data_dir: Any = None
) -> Any:
    from mattergen_lab.evaluation import evaluate_structures

    return evaluate_structures(structures, ids=ids, progress=progress, data_dir=data_dir)


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
    ) -> None:
        silence_library_warnings()  # pymatgen's "No Pauling electronegativity for Ne" is not the user's business
        self.evaluator = evaluator or functools.partial(_default_evaluator, data_dir=data_dir)
        self._reference = reference
        self._data_dir = data_dir
        self.candidates: list[design.Candidate] = []
        self.evaluations = pd.DataFrame(columns=["id"])
        self.protocol: dict[str, Any] | None = None
        self.table = design.candidate_table([])
        self.selected: str | None = None
        self.frames_received = 0
        self.error: BaseException | None = None
        self.last_run: design.DesignRun | None = None
        self._runs = 0
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._lock = threading.RLock()
        self._phase_diagrams: dict[str, Any] = {}

        self.targets = TargetPanel(checkpoint, ranges=ranges, online=online, registry_path=registry_path)
        self.trajectory = TrajectoryPanel(on_select=self.select)
        self.hull = HullPlot(on_select=self.open_review)
        self.pareto = ParetoPlot(on_select=self.open_review)
        self.candidate_panel = CandidateTable(on_select=self.select, on_export=self._export_clicked, on_review=self.open_review)
        # the candidate detail view (Crystal Toolkit, XRD, nearest known materials): widgets/review.py
        self.reviewer = ReviewController(lambda: {c.id: c for c in self.candidates}, known=known, viewer=review_viewer,
                                         data_dir=data_dir)

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

    # ------------------------------------------------------------------ public actions
    def generate(self, wait: bool = True) -> design.DesignRequest | None:
        """Sample with the current controls on a worker thread; returns the request (None if invalid)."""
        try:
            request = self._with_symmetry(self._with_composition(self.targets.request()))
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

    def _with_symmetry(self, request: design.DesignRequest) -> design.DesignRequest:
        """The symmetry control: empty or ``off`` samples as usual; otherwise the symmetric mode (``ValueError``
        names a bad value before any work, e.g. ``231``)."""
        text = self.symmetry.value.strip()
        if not text or text.lower() == "off":
            return request
        return dataclasses.replace(request, symmetry=text.split(" ")[0])

    def cancel(self) -> None:
        """Stop after the current step; every finished batch is kept."""
        self._cancel.set()
        self._set_status("Cancelling…")

    def evaluate(self, wait: bool = True, ids: Sequence[str] | None = None) -> None:
        """Evaluate (relax, E_hull, S.U.N.) the candidates not evaluated yet, or ``ids``, on the worker thread."""
        done = set(self.evaluations["id"].astype(str)) if len(self.evaluations) else set()
        todo = [c for c in self.candidates if (c.id in ids if ids is not None else c.id not in done)]
        if not todo:
            self._set_status(f"Nothing to evaluate; {len(self.candidates)} candidates in this session.")
            return
        if self._start(self._evaluate_worker, todo) and wait:
            self.wait()

    def export(self, path: str | os.PathLike, ids: Sequence[str] | None = None, *, symprec: float = design.EXPORT_SYMPREC,
               review: bool = True) -> Path:
        """Zip the checked candidates (or ``ids``) for synthesis review; see :func:`mattergen_lab.design.export_candidates`.

        ``review`` adds each candidate's XRD, nearest known materials and oxidation states (a few seconds each).
        """
        ids = list(ids) if ids is not None else self.candidate_panel.checked_ids()
        if not ids:
            raise ValueError("no candidates selected for export; tick their checkboxes first")
        by_id = {c.id: c for c in self.candidates}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"unknown candidate ids {unknown}")
        chosen = [by_id[i] for i in ids]
        table = self.table.set_index("id").loc[ids].reset_index()
        report = design.design_report(chosen, evaluation_protocol=self.protocol)
        reviews = [self.reviewer.review(i) for i in ids] if review else None  # XRD, nearest known, oxidation states
        return design.export_candidates([c.structure for c in chosen], table, path, report=report, symprec=symprec,
                                        relaxed=[self.reviewer.relaxed.get(i) for i in ids], reviews=reviews,
                                        hull=self.hull.data)

    def open_review(self, candidate_id: str, wait: bool = False) -> None:
        """Select ``candidate_id`` and open its detail view (structure, XRD, nearest known materials)."""
        if candidate_id not in {c.id for c in self.candidates}:
            raise ValueError(f"candidate {candidate_id!r} is not in this session")
        self.select(candidate_id)  # an open review follows the selection
        if self.reviewer.shown != candidate_id:
            self.reviewer.open(candidate_id, wait=wait)
        elif wait:
            self.reviewer.wait()

    def add_candidates(self, candidates: Sequence[design.Candidate], evaluations: pd.DataFrame | None = None,
                       *, protocol: dict[str, Any] | None = None) -> list[str]:
        """Add candidates made elsewhere (e.g. a campaign's crystals) with their evaluation rows (by ``id``).

        Ids already in the session are skipped; ``protocol`` becomes the session's evaluation protocol when it
        has none yet (it goes into the export's report). Returns the ids added.
        """
        with self._lock:
            known = {c.id for c in self.candidates}
            new = [c for c in candidates if c.id not in known]
            self.candidates.extend(new)
            ids = {c.id for c in new}
            rows = evaluations[evaluations["id"].astype(str).isin(ids)] if evaluations is not None and len(evaluations) else None
            if rows is not None and len(rows):
                self.evaluations = pd.concat([self.evaluations, rows], ignore_index=True) if len(self.evaluations) else rows.reset_index(drop=True)
            if self.protocol is None and protocol:
                self.protocol = dict(protocol)
        self.refresh()
        return [c.id for c in new]

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
        if candidate_id not in {c.id for c in self.candidates}:
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
        self._runs += 1
        self.progress.value = 0  # the maximum arrives with the first frame (the step count may be the checkpoint's)
        self._set_status(f"Loading {request.checkpoint}…")
        run = design.run_design(request, on_frame=self._on_frame, cancel=self._cancel, id_prefix=f"{self._runs}-")
        self.last_run = run
        if self.selected is not None:
            self.select(self.selected)  # back from the live view to the selected candidate's trajectory
        word = "Cancelled" if run.cancelled else "Done"
        self._set_status(f"{word}: {len(run.candidates)} new; {len(self.candidates)} candidates in this session.")
        if run.candidates and self.auto_evaluate.value and not run.cancelled:
            self._evaluate_worker(run.candidates)

    def _on_frame(self, frame: design.DesignFrame) -> None:
        self.frames_received += 1
        self.progress.max, self.progress.value = frame.total, frame.done
        self.trajectory.live_frame(frame)
        if frame.final:
            with self._lock:
                self.candidates.extend(frame.candidates)
            self.refresh()
            if self.selected is None and frame.candidates:
                self.select(frame.candidates[0].id)
        self._set_status(f"Sampling: batch {frame.batch + 1}, step {frame.step}; {len(self.candidates)} candidates so far.")

    def _evaluate_worker(self, todo: list[design.Candidate]) -> None:
        self.progress.value, self.progress.max = 0, len(todo)
        self._set_status(f"Evaluating {len(todo)} candidates…")

        def progress(done: int, total: int) -> None:
            self.progress.max, self.progress.value = max(total, 1), done

        result = self.evaluator([c.structure for c in todo], ids=[c.id for c in todo], progress=progress)
        table = result.table.copy()
        if "id" not in table.columns or len(table) != len(todo):
            raise ValueError(f"the evaluator returned {len(table)} rows for {len(todo)} structures (need one per input, with 'id')")
        table["id"] = [c.id for c in todo]
        self.reviewer.add_relaxed([c.id for c in todo], getattr(result, "relaxed", None))
        with self._lock:
            old = self.evaluations[~self.evaluations["id"].isin(table["id"])] if len(self.evaluations) else None
            self.evaluations = pd.concat([old, table], ignore_index=True) if old is not None and len(old) else table
            self.protocol = dict(getattr(result, "protocol", {}) or {})
        self.refresh()
        self.progress.value = self.progress.max
        sun = int(pd.Series(table.get("novel_unique_stable", [])).fillna(False).astype(bool).sum())
        self._set_status(f"Evaluated {len(todo)} ({sun} S.U.N.); {len(self.candidates)} candidates in this session.")

    # ------------------------------------------------------------------ rendering
    def refresh(self) -> None:
        """Rebuild the table from the candidates and evaluations, and redraw every panel from it."""
        with self._lock:
            self.table = design.candidate_table(self.candidates, self.evaluations)
            candidates = list(self.candidates)
        self.candidate_panel.set_table(self.table, selected=self.selected)
        self.trajectory.set_candidates(candidates)
        self.pareto.update(self.table, selected=self.selected)
        self._update_hull()

    def _hull_system(self) -> str | None:
        by_id = {c.id: c for c in self.candidates}
        cand = by_id.get(self.selected or "") or (self.candidates[-1] if self.candidates else None)
        if cand is None:
            return None
        return cand.request.chemical_system or cand.oracles.get("chemical_system")

    def _phase_diagram(self, system: str) -> Any:
        if system not in self._phase_diagrams:
            if self._reference is None:
                from mattergen_lab.evaluation import load_reference

                self._reference = load_reference("mp20", data_dir=self._data_dir)
            self._phase_diagrams[system] = self._reference.phase_diagram(system.split("-"))
        return self._phase_diagrams[system]

    def _update_hull(self) -> None:
        system = self._hull_system()
        if system is None:
            self.hull.update(None)
            return
        n_elements = len(system.split("-"))
        if n_elements > 4:
            self.hull.update(None, message=f"The hull is drawn for systems of up to 4 elements; {html.escape(system)} has "
                                           f"{n_elements}. Set a target chemistry to explore one system.")
            return
        try:
            pd_ = self._phase_diagram(system)
            rows = self.table[["id", "formula", "energy_above_hull"]].to_dict("records")
            self.hull.update(design.hull_data(pd_, rows), selected=self.selected)
        except Exception as exc:  # no reference data, an element without entries, ...
            self.hull.update(None, message=f"<span style='{ERROR_STYLE}'>hull for {html.escape(system)} unavailable: "
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
