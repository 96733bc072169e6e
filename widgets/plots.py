"""Hull and Pareto plots (plotly ``FigureWidget``, updated in place with ``batch_update``).

The coordinates come from :func:`mattergen_lab.design.hull_data` and :func:`mattergen_lab.design.pareto_front`;
this module only draws them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import ipywidgets as w
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mattergen_lab import design

#: Numeric columns offered on the Pareto axes, with whether larger is better by default.
PARETO_COLUMNS: dict[str, bool] = {
    "energy_above_hull": False,
    "hhi_score": False,
    "space_group": True,
    "density": True,
    "volume_per_atom": False,
    "num_atoms": False,
    "energy_per_atom": False,
    "rmsd_from_relaxation": False,
}

_SELECTED = dict(size=18, color="rgba(0,0,0,0)", line=dict(color="#111", width=2))


class HullPlot(w.VBox):
    """Convex hull of the target chemical system: reference entries, and candidates coloured by E_hull."""

    def __init__(self, on_select: Callable[[str], None] | None = None) -> None:
        self.figure = go.FigureWidget(layout=go.Layout(
            title="Convex hull", height=360, width=460, margin=dict(l=50, r=10, t=40, b=40), showlegend=True,
            legend=dict(orientation="h", y=-0.15),
        ))
        for name in ("hull", "reference", "candidates", "selected"):
            self.figure.add_scatter(x=[], y=[], name=name, mode="markers")
        with self.figure.batch_update():
            hull, ref, cand, sel = self.figure.data
            hull.update(mode="lines", line=dict(color="#7f8c8d", width=1), hoverinfo="skip", showlegend=False)
            ref.update(marker=dict(color="#2c3e50", size=7, symbol="circle"), name="MP-20 reference")
            cand.update(marker=dict(size=11, symbol="diamond", color=[], colorscale="Viridis_r", cmin=0, cmax=0.3,
                                    colorbar=dict(title="E_hull", thickness=10)), name="candidates")
            sel.update(marker=_SELECTED, name="selected", hoverinfo="skip")
        self.figure.add_class("mgl-hull-plot")
        self.figure.data[2].on_click(self._on_click)
        self._on_select = on_select
        self.message = w.HTML()
        self.data: design.HullData | None = None
        super().__init__([self.figure, self.message])

    def update(self, data: design.HullData | None, *, selected: str | None = None, message: str = "") -> None:
        """Redraw in place from ``data`` (``None`` clears the plot and shows ``message``)."""
        self.data = data
        self.message.value = message
        hull, ref, cand, sel = self.figure.data
        with self.figure.batch_update():
            if data is None:
                for tr in (hull, ref, cand, sel):
                    tr.update(x=[], y=[])
                self.figure.layout.title = "Convex hull"
                return
            xs, ys = [], []
            for lx, ly in data.lines:
                xs += list(lx) + [None]
                ys += list(ly) + [None]
            hull.update(x=xs, y=ys)
            ref.update(x=[r["x"] for r in data.reference], y=[r["y"] for r in data.reference],
                       text=[f"{r['label']} {r['entry_id']}<br>E_hull {r['e_hull']:.3f} eV/atom" for r in data.reference],
                       hoverinfo="text")
            cand.update(x=[c["x"] for c in data.candidates], y=[c["y"] for c in data.candidates],
                        customdata=[c["id"] for c in data.candidates],
                        text=[f"{c['id']}: {c['label']}<br>E_hull {c['e_hull']:.3f} eV/atom" for c in data.candidates],
                        hoverinfo="text", marker=dict(color=[c["e_hull"] for c in data.candidates]))
            chosen = [c for c in data.candidates if c["id"] == selected]
            sel.update(x=[c["x"] for c in chosen], y=[c["y"] for c in chosen])
            system = "-".join(data.elements)
            ternary = data.kind == "ternary"  # triangle coordinates: axes carry no meaning, keep the aspect
            self.figure.layout.xaxis.visible = self.figure.layout.yaxis.visible = not ternary
            self.figure.layout.yaxis.scaleanchor = "x" if ternary else None
            if data.kind == "binary":
                self.figure.layout.title = f"{system} hull"
                self.figure.layout.xaxis.title = f"x in {data.elements[0]}(1-x){data.elements[-1]}(x)"
                self.figure.layout.yaxis.title = "formation energy (eV/atom)"
            elif data.kind == "ternary":
                self.figure.layout.title = f"{system} hull (corners {', '.join(data.elements)})"
                self.figure.layout.xaxis.title = ""
                self.figure.layout.yaxis.title = ""
            else:
                self.figure.layout.title = f"{system}: E_hull per entry"
                self.figure.layout.xaxis.title = "entry"
                self.figure.layout.yaxis.title = "E_hull (eV/atom)"

    def _on_click(self, trace: go.Scatter, points: object, _selector: object) -> None:
        idx = list(getattr(points, "point_inds", []))
        if idx and self._on_select is not None and trace.customdata is not None:
            self._on_select(str(trace.customdata[idx[0]]))


class ParetoPlot(w.VBox):
    """Two chosen properties of all candidates; Pareto-optimal ones highlighted; a click selects one."""

    def __init__(self, on_select: Callable[[str], None] | None = None) -> None:
        opts = list(PARETO_COLUMNS)
        self.x = w.Dropdown(options=opts, value="energy_above_hull", description="x", layout=w.Layout(width="220px"))
        self.y = w.Dropdown(options=opts, value="hhi_score", description="y", layout=w.Layout(width="220px"))
        self.x_max = w.Checkbox(value=PARETO_COLUMNS["energy_above_hull"], description="maximize x", indent=False)
        self.y_max = w.Checkbox(value=PARETO_COLUMNS["hhi_score"], description="maximize y", indent=False)
        self.figure = go.FigureWidget(layout=go.Layout(
            title="Pareto front", height=360, width=460, margin=dict(l=50, r=10, t=40, b=40),
            legend=dict(orientation="h", y=-0.15),
        ))
        for name in ("dominated", "Pareto-optimal", "selected"):
            self.figure.add_scatter(x=[], y=[], name=name, mode="markers")
        with self.figure.batch_update():
            dom, opt, sel = self.figure.data
            dom.update(marker=dict(color="#95a5a6", size=9))
            opt.update(mode="lines+markers", marker=dict(color="#e74c3c", size=12, symbol="star"),
                       line=dict(color="#e74c3c", width=1, shape="hv"))
            sel.update(marker=_SELECTED, hoverinfo="skip")
        self.figure.add_class("mgl-pareto-plot")
        for trace in self.figure.data[:2]:
            trace.on_click(self._on_click)
        self._on_select = on_select
        self.table: pd.DataFrame | None = None
        self.selected: str | None = None
        self.mask = np.zeros(0, dtype=bool)
        for control in (self.x, self.y, self.x_max, self.y_max):
            control.observe(lambda _: self.redraw(), "value")
        self.x.observe(lambda ch: setattr(self.x_max, "value", PARETO_COLUMNS[ch["new"]]), "value")
        self.y.observe(lambda ch: setattr(self.y_max, "value", PARETO_COLUMNS[ch["new"]]), "value")
        super().__init__([w.HBox([self.x, self.x_max]), w.HBox([self.y, self.y_max]), self.figure])

    def update(self, table: pd.DataFrame, *, selected: str | None = None) -> None:
        self.table, self.selected = table, selected
        self.redraw()

    def redraw(self) -> None:
        table = self.table
        dom, opt, sel = self.figure.data
        if table is None or not len(table):
            with self.figure.batch_update():
                for tr in (dom, opt, sel):
                    tr.update(x=[], y=[])
            return
        x, y = self.x.value, self.y.value
        self.mask = design.pareto_front(table, x, y, maximize=(self.x_max.value, self.y_max.value))
        xs, ys = table[x].astype(float).to_numpy(), table[y].astype(float).to_numpy()
        ids = table["id"].astype(str).to_numpy()
        labels = [f"{i}: {f}" for i, f in zip(ids, table["formula"])]
        order = np.argsort(xs[self.mask], kind="stable")
        with self.figure.batch_update():
            rest = ~self.mask & np.isfinite(xs) & np.isfinite(ys)
            dom.update(x=_clean(xs[rest]), y=_clean(ys[rest]), customdata=ids[rest].tolist(),
                       text=[labels[i] for i in np.flatnonzero(rest)], hoverinfo="text")
            opt.update(x=_clean(xs[self.mask][order]), y=_clean(ys[self.mask][order]),
                       customdata=ids[self.mask][order].tolist(),
                       text=[labels[i] for i in np.flatnonzero(self.mask)[order]], hoverinfo="text")
            chosen = ids == (selected := self.selected)
            sel.update(x=_clean(xs[chosen]) if selected else [], y=_clean(ys[chosen]) if selected else [])
            self.figure.layout.xaxis.title = x
            self.figure.layout.yaxis.title = y
            missing = int((~(np.isfinite(xs) & np.isfinite(ys))).sum())
            self.figure.layout.title = f"Pareto front: {int(self.mask.sum())} of {len(table)} optimal" + (
                f" ({missing} without values)" if missing else "")

    def _on_click(self, trace: go.Scatter, points: object, _selector: object) -> None:
        idx = list(getattr(points, "point_inds", []))
        if idx and self._on_select is not None and trace.customdata is not None:
            self._on_select(str(trace.customdata[idx[0]]))


def _clean(values: Sequence[float]) -> list[float | None]:
    return [float(v) if math.isfinite(float(v)) else None for v in values]
