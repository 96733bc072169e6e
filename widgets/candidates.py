"""Candidate table (one row per candidate: checkbox, formula, space group, oracle values, E_hull, S.U.N.) and export.

The table itself is the pandas frame from :func:`mattergen_lab.design.candidate_table`; this panel draws it
as rows of widgets so each row has a selection checkbox and a "view" button.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import pandas as pd

#: (column, header, format) shown in the table.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "id", "{}"),
    ("formula", "formula", "{}"),
    ("space_group", "SG", "{:.0f}"),
    ("wyckoff", "Wyckoff sites", "{}"),
    ("num_atoms", "atoms", "{:.0f}"),
    ("plausible_density", "density ok", "{}"),
    ("hhi_score", "HHI", "{:.0f}"),
    ("in_target_system", "in system", "{}"),
    ("energy_above_hull", "E_hull (eV/atom)", "{:.3f}"),
    ("stable", "S", "{}"),
    ("is_unique", "U", "{}"),
    ("is_novel", "N", "{}"),
    ("novel_unique_stable", "S.U.N.", "{}"),
    ("relax_status", "relax", "{}"),
)
_WIDTH = {"id": "70px", "formula": "110px", "relax": "80px", "Wyckoff sites": "150px"}


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or str(value) in ("True", "False"):
        return "✓" if str(value) == "True" else "✗"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _cell(text: str, header: str) -> w.HTML:
    return w.HTML(html.escape(text), layout=w.Layout(width=_WIDTH.get(header, "64px")))


class CandidateTable(w.VBox):
    """Rows of candidates with checkboxes, a selected-row highlight, and the export controls.

    ``on_select(id)`` runs when a row's "view" button is clicked; ``on_export(path)`` when Export is;
    ``on_vary(id, t0)`` when a row's "vary" button is (variations of that candidate at the strength in *vary t0*).
    """

    def __init__(self, on_select: Callable[[str], None] | None = None, on_export: Callable[[str], None] | None = None,
                 on_review: Callable[[str], None] | None = None,
                 on_vary: Callable[[str, float], None] | None = None) -> None:
        self._on_select, self._on_export, self._on_review = on_select, on_export, on_review
        self._on_vary = on_vary
        self.table = pd.DataFrame()
        self.checkboxes: dict[str, w.Checkbox] = {}
        self.rows: dict[str, w.HBox] = {}
        self.selected: str | None = None
        self.body = w.VBox()
        self.body.add_class("mgl-candidate-table")
        header = w.HBox([w.HTML("<b>✓</b>", layout=w.Layout(width="40px")), w.HTML("", layout=w.Layout(width="50px")),
                         w.HTML("", layout=w.Layout(width="64px")), w.HTML("", layout=w.Layout(width="50px"))]
                        + [w.HTML(f"<b>{html.escape(h)}</b>", layout=w.Layout(width=_WIDTH.get(h, "64px"))) for _, h, _ in COLUMNS])
        self.select_all = w.Button(description="Check all", layout=w.Layout(width="90px"))
        self.select_all.on_click(lambda _: self.check(list(self.checkboxes)))
        self.path = w.Text(value="candidates.zip", description="Export to")
        self.export_button = w.Button(description="Export for synthesis review", button_style="success",
                                      layout=w.Layout(width="230px"))
        self.export_button.add_class("mgl-export")
        self.export_button.on_click(lambda _: self._on_export and self._on_export(self.path.value))
        self.export_status = w.HTML()
        self.export_status.add_class("mgl-export-status")
        # variations of one candidate: noised to t0 and denoised again with the current targets
        self.vary_strength = w.BoundedFloatText(value=0.3, min=0.01, max=1.0, step=0.05, description="vary t0",
                                                tooltip="strength of a 'vary' run: small keeps the candidate nearly as "
                                                        "it is, 1 samples from scratch",
                                                layout=w.Layout(width="160px"))
        self.vary_strength.add_class("mgl-vary-strength")
        super().__init__([
            w.HTML("<b>Candidates</b>"), header, self.body,
            w.HBox([self.select_all, self.path, self.export_button, self.vary_strength]), self.export_status,
        ])
        self.add_class("mgl-candidates")

    def set_table(self, table: pd.DataFrame, *, selected: str | None = None) -> None:
        """Show ``table``; rows already shown keep their checkbox state."""
        self.table = table.reset_index(drop=True)
        checked = {cid for cid, cb in self.checkboxes.items() if cb.value}
        self.checkboxes, self.rows = {}, {}
        rows = []
        for rec in self.table.to_dict("records"):
            cid = str(rec["id"])
            cb = w.Checkbox(value=cid in checked, indent=False, layout=w.Layout(width="40px"))
            view = w.Button(description="view", layout=w.Layout(width="50px"))
            view.on_click(lambda _, cid=cid: self._on_select and self._on_select(cid))
            review = w.Button(description="review", layout=w.Layout(width="64px"), tooltip="structure, XRD, nearest known")
            review.add_class("mgl-review-button")
            review.on_click(lambda _, cid=cid: self._on_review and self._on_review(cid))
            vary = w.Button(description="vary", layout=w.Layout(width="50px"),
                            tooltip="variations of this crystal (strength: vary t0 below)")
            vary.add_class("mgl-vary-button")
            vary.on_click(lambda _, cid=cid: self._on_vary and self._on_vary(cid, float(self.vary_strength.value)))
            row = w.HBox([cb, view, review, vary] + [_cell(_fmt(rec.get(col), fmt), h) for col, h, fmt in COLUMNS])
            row.add_class("mgl-candidate-row")
            self.checkboxes[cid], self.rows[cid] = cb, row
            rows.append(row)
        self.body.children = rows
        self.highlight(selected if selected is not None else self.selected)

    def highlight(self, candidate_id: str | None) -> None:
        self.selected = candidate_id
        for cid, row in self.rows.items():
            if cid == candidate_id:
                row.add_class("mgl-selected")
                row.layout.border = "2px solid #2980b9"
            else:
                row.remove_class("mgl-selected")
                row.layout.border = None

    def check(self, ids: list[str], value: bool = True) -> None:
        for cid in ids:
            self.checkboxes[cid].value = value

    def checked_ids(self) -> list[str]:
        return [cid for cid, cb in self.checkboxes.items() if cb.value]
