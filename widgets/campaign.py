"""``CampaignPanel``: follow a running (or finished) campaign folder: counts, hull and Pareto plots, selection.

In a notebook, next to the design app (``refresh_s`` re-reads the folder every so many seconds until the
campaign is finished or the panel is closed; :meth:`CampaignPanel.refresh` and :meth:`CampaignPanel.stop`
do the same by hand)::

    from mattergen_lab.widgets import CampaignPanel, DesignApp
    app = DesignApp()
    panel = CampaignPanel("campaigns/li-fe-o", app=app, refresh_s=10); panel
    panel.send_to_app(["a0-3", "a1-7"])       # or tick them and press "Send to app", then export from the app
    panel.export("review.zip", ["a0-3"])       # or the synthesis-review zip directly

Each crystal becomes a :class:`~mattergen_lab.design.Candidate` (relaxed structure where there is one, else
the generated one; its trajectory is that one frame), so the table, plots and export are the design app's.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np
import pandas as pd
from mattergen_lab.console import silence_library_warnings
from mattergen_lab.widgets.plots import HullPlot, ParetoPlot
from mattergen_lab.widgets.targets import ERROR_STYLE

from mattergen_lab import design
from mattergen_lab.campaign import CampaignFolder

log = logging.getLogger(__name__)


class CampaignPanel(w.VBox):
    """Counts, hull and Pareto plots of a campaign folder's results so far, and a selection to send or export.

    Args:
        folder: a campaign folder (``campaign.json`` inside); ``FileNotFoundError``/``ValueError`` otherwise.
        app: a :class:`~mattergen_lab.widgets.DesignApp` that "Send to app" adds the selected crystals to.
        refresh_s: re-read the folder every ``refresh_s`` seconds on a background thread (None: by hand).
        reference: an object with ``.phase_diagram(elements)`` for the hull; default the MP-20 hull.
        structures: ``"relaxed"`` (where evaluated) or ``"generated"``: what a candidate holds and exports.
    """

    def __init__(self, folder: str | os.PathLike, *, app: Any = None, refresh_s: float | None = None,
                 reference: Any = None, structures: str = "relaxed", data_dir: str | os.PathLike | None = None) -> None:
        path = Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(f"campaign folder {path} does not exist")
        if structures not in ("relaxed", "generated"):
            raise ValueError(f"structures={structures!r}; expected 'relaxed' or 'generated'")
        silence_library_warnings()  # as the app does: spglib's deprecations on every symmetry call are not the user's
        self.folder = CampaignFolder(path)
        try:
            self.spec = self.folder.spec()  # FileNotFoundError names the folder
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a readable campaign folder: {exc}") from None
        self.app, self.structures, self._reference, self._data_dir = app, structures, reference, data_dir
        self.protocol = ({"source": f"campaign {path}", **dataclasses.asdict(self.spec.evaluate)}
                         if self.spec.evaluate is not None else None)
        self.arms = {a.name: a for a in self.spec.arms()}
        self.candidates: list[design.Candidate] = []
        self.evaluations, self.table = pd.DataFrame(), design.candidate_table([])
        self.status: dict[str, Any] = {}
        self.focus: str | None = None  # the crystal last clicked in a plot
        self._cache: dict[str, tuple[bool, design.Candidate]] = {}  # id -> (relaxed?, candidate)
        self._done: frozenset[str] | None = None
        self._phase_diagrams: dict[str, Any] = {}
        self._lock, self._stop, self._thread = threading.RLock(), threading.Event(), None

        self.counts = w.HTML()
        self.counts.add_class("mgl-campaign-counts")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.system = w.Dropdown(options=[], description="hull of", layout=w.Layout(width="220px"))
        self.system.observe(lambda _: self._draw_hull(), "value")
        self.hull = HullPlot(on_select=self._focus)
        self.pareto = ParetoPlot(on_select=self._focus)
        self.selection = w.SelectMultiple(options=[], rows=8, description="crystals", layout=w.Layout(width="420px"))
        self.selection.add_class("mgl-campaign-selection")
        self.send_button = w.Button(description="Send to app", icon="share", disabled=app is None)
        self.send_button.on_click(lambda _: self._clicked(self.send_to_app))
        self.path = w.Text(value="campaign_candidates.zip", description="Export to")
        self.export_button = w.Button(description="Export selected", button_style="success")
        self.export_button.on_click(lambda _: self._clicked(lambda: self.export(self.path.value)))
        self.message = w.HTML()
        super().__init__([
            w.HBox([self.refresh_button, self.system]), self.counts, w.HBox([self.hull, self.pareto]),
            self.selection, w.HBox([self.send_button, self.path, self.export_button]), self.message,
        ])
        self.add_class("mgl-campaign")
        self.refresh()
        if refresh_s is not None:
            self.start(refresh_s)

    # ------------------------------------------------------------------ reading the folder
    def refresh(self) -> dict[str, Any]:
        """Re-read the folder (results only when the manifest's done tasks changed) and redraw; returns the status."""
        with self._lock:
            self.status = self.folder.status()
            done = frozenset(self.folder.done())
            if done != self._done:
                self._reload()
                self._done = done
            self.counts.value = self._counts_html()
        return self.status

    def _candidate(self, sid: str, generated: Any) -> design.Candidate:
        from pymatgen.core import Structure

        cif = self.folder.path / "relaxed" / f"{sid}.cif"
        relaxed = self.structures == "relaxed" and cif.is_file()
        if sid in self._cache and self._cache[sid][0] == relaxed:
            return self._cache[sid][1]
        s = Structure.from_file(cif) if relaxed else generated
        arm = self.arms[sid.partition("-")[0]]
        cs = arm.conditions.get("chemical_system", self.spec.elements)
        req = design.DesignRequest(
            checkpoint=self.spec.checkpoint, chemical_system=cs if isinstance(cs, str) else None,
            targets={k: v for k, v in arm.conditions.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            guidance_scale=arm.guidance_scale, num_samples=self.spec.num_samples, num_steps=self.spec.num_steps,
            seed=self.spec.seed + arm.index, batch_size=self.spec.batch_size, num_atoms=self.spec.num_atoms)
        snap = design.CrystalSnapshot(self.spec.num_steps or 0, 0.0, np.array(s.lattice.matrix), np.array(s.frac_coords),
                                      np.array(s.atomic_numbers))
        cand = design.Candidate(sid, s, [snap], req, design.candidate_oracles(s))
        self._cache[sid] = (relaxed, cand)
        return cand

    def _reload(self) -> None:
        self.candidates = [self._candidate(sid, s) for sid, s in self.folder.samples()]
        self.evaluations = self.folder.table()
        table = design.candidate_table(self.candidates, self.evaluations if len(self.evaluations) else None)
        table["arm"] = [i.partition("-")[0] for i in table["id"]]
        self.table = table
        systems = ["-".join(design.validate_chemical_system(a.conditions["chemical_system"]))
                   for a in self.arms.values() if isinstance(a.conditions.get("chemical_system"), str)]
        evaluated = table[table["energy_above_hull"].notna()]
        for cs in evaluated["chemical_system"].value_counts().index:
            if not any(set(cs.split("-")) <= set(o.split("-")) for o in systems):
                systems.append(cs)
        systems = list(dict.fromkeys(systems))
        if tuple(systems) != tuple(self.system.options):
            old = self.system.value
            self.system.options = systems
            self.system.value = old if old in systems else (systems[0] if systems else None)
        chosen = set(self.selection.value)
        self.selection.options = [(self._label(r), str(r["id"])) for r in table.to_dict("records")]
        self.selection.value = tuple(i for _, i in self.selection.options if i in chosen)
        self.pareto.update(self.table, selected=self.focus)
        self._draw_hull()

    @staticmethod
    def _label(r: dict[str, Any]) -> str:
        e = r.get("energy_above_hull")
        e_text = f"E_hull {e:.3f} eV/atom" if e is not None and math.isfinite(e) else "not evaluated"
        return f"{r['id']}  {r['formula']}  {e_text}" + ("  S.U.N." if str(r.get("novel_unique_stable")) == "True" else "")

    def _counts_html(self) -> str:
        from mattergen_lab.evaluation.results import compute_metrics

        st, ev = self.status, self.evaluations
        lines = [(f"<b>{'finished' if st['finished'] else 'running'}</b>: sampling {st['sample_tasks_done']}/"
                  f"{st['sample_tasks']} tasks, evaluation {st['evaluate_tasks_done']}/{st['evaluate_tasks']} tasks; "
                  f"{st['sampled_crystals']}/{st['planned_crystals']} crystals sampled, {st['evaluated_crystals']} "
                  f"evaluated; {len(st['failed_tasks'])} failed tasks")]
        groups = [("all arms", ev)] + (list(ev.groupby("arm", sort=False)) if len(self.arms) > 1 else []) if len(ev) else []
        for name, sub in groups:
            m = {k: v["value"] for k, v in compute_metrics(sub).items()}
            pct = {k: "–" if not math.isfinite(v) else f"{v:.0%}" for k, v in m.items() if k.startswith("frac_")}
            label = name if name == "all arms" else f"{name} ({self.arms[name].label})"
            lines.append(f"{html.escape(label)}: {len(sub)} evaluated, stable {pct['frac_stable_structures']}, "
                         f"S.U.N. {pct['frac_novel_unique_stable_structures']}")
        for key, error in st["failed_tasks"].items():
            last = (error.strip().splitlines() or [""])[-1]
            lines.append(f"<span style='{ERROR_STYLE}'>{html.escape(key)} failed: {html.escape(last)}</span>")
        return "<br>".join(lines)

    # ------------------------------------------------------------------ drawing
    def _draw_hull(self) -> None:
        system = self.system.value
        if not system:
            self.hull.update(None, message="No evaluated crystals yet.",
                             placeholder="The convex hull appears once crystals are evaluated")
            return
        if len(system.split("-")) > 4:
            self.hull.update(None, message=f"The hull is drawn for up to 4 elements; {html.escape(system)} has more.")
            return
        try:
            if system not in self._phase_diagrams:
                if self._reference is None:
                    from mattergen_lab.evaluation import load_reference

                    self._reference = load_reference("mp20", data_dir=self._data_dir)
                self._phase_diagrams[system] = self._reference.phase_diagram(system.split("-"))
            rows = self.table[["id", "formula", "energy_above_hull"]].to_dict("records")
            self.hull.update(design.hull_data(self._phase_diagrams[system], rows), selected=self.focus)
        except Exception as exc:  # noqa: BLE001 - no reference data, an element without entries, ...
            self.hull.update(None, message=f"<span style='{ERROR_STYLE}'>hull for {html.escape(system)} unavailable: "
                                           f"{html.escape(f'{type(exc).__name__}: {exc}')}</span>")

    def _focus(self, sid: str) -> None:
        """A click on a plot point: mark it in both plots and add it to the selection."""
        with self._lock:
            self.focus = sid
            self.selection.value = tuple(dict.fromkeys([*self.selection.value, sid]))
            self.pareto.update(self.table, selected=sid)
            self._draw_hull()

    # ------------------------------------------------------------------ selection: send and export
    def selected_ids(self) -> list[str]:
        return list(self.selection.value)

    def _chosen(self, ids: Sequence[str] | None) -> list[design.Candidate]:
        ids = list(ids) if ids is not None else self.selected_ids()
        if not ids:
            raise ValueError("no crystals selected; pick them in the list first")
        by_id = {c.id: c for c in self.candidates}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"unknown crystal ids {unknown} (not sampled yet in {self.folder.path})")
        return [by_id[i] for i in ids]

    def send_to_app(self, ids: Sequence[str] | None = None) -> list[str]:
        """Add the selected crystals (or ``ids``) to the app's candidate table; returns the ids added."""
        if self.app is None:
            raise ValueError("no design app to send to; make the panel with CampaignPanel(folder, app=app)")
        added = self.app.add_candidates(self._chosen(ids), self.evaluations, protocol=self.protocol)
        self.message.value = html.escape(f"Sent {len(added)} crystals to the design app.")
        return added

    def export(self, path: str | os.PathLike, ids: Sequence[str] | None = None, *,
               symprec: float = design.EXPORT_SYMPREC) -> Path:
        """The synthesis-review zip of the selected crystals (or ``ids``): :func:`mattergen_lab.design.export_candidates`."""
        chosen = self._chosen(ids)
        table = self.table.set_index("id").loc[[c.id for c in chosen]].reset_index()
        report = {**design.design_report(chosen, evaluation_protocol=self.protocol), "campaign": str(self.folder.path),
                  "campaign_spec": self.spec.to_dict()}
        out = design.export_candidates([c.structure for c in chosen], table, path, report=report, symprec=symprec)
        self.message.value = f"Wrote {html.escape(str(out))}"
        return out

    def _clicked(self, action: Any) -> None:
        try:
            action()
        except (ValueError, OSError) as exc:
            self.message.value = f"<span style='{ERROR_STYLE}'>{html.escape(str(exc))}</span>"

    # ------------------------------------------------------------------ auto-refresh
    def start(self, refresh_s: float) -> None:
        """Refresh every ``refresh_s`` seconds on a daemon thread until the campaign is finished or :meth:`stop`."""
        if not (isinstance(refresh_s, (int, float)) and math.isfinite(refresh_s) and refresh_s > 0):
            raise ValueError(f"refresh_s={refresh_s!r} must be a positive number of seconds")
        self.stop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(float(refresh_s), self._stop), daemon=True,
                                        name="mgl-campaign-refresh")
        self._thread.start()

    def _loop(self, every: float, stop: threading.Event) -> None:
        while not self.status.get("finished") and not stop.wait(every):
            try:
                self.refresh()
            except Exception as exc:  # shown in the panel; the next tick tries again
                log.exception("campaign refresh failed")
                self.message.value = f"<span style='{ERROR_STYLE}'>{html.escape(f'{type(exc).__name__}: {exc}')}</span>"

    @property
    def following(self) -> bool:  # the auto-refresh thread runs
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the auto-refresh (waits for a refresh in progress)."""
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
        t = getattr(self, "_thread", None)
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def close(self) -> None:
        self.stop()
        super().close()
