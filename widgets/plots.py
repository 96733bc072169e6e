"""Hull and Pareto plots (plotly ``FigureWidget``, updated in place with ``batch_update``).

The coordinates come from :func:`mattergen_lab.design.hull_data` and :func:`mattergen_lab.design.pareto_front`;
this module only draws them. An empty plot hides its axes and says what will appear there and when (an annotation
in the middle of the frame). The title sits in its own row under plotly's mode bar, which holds only the download,
zoom, pan and reset buttons, so the buttons never cover it.
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

#: Height of the figures (px); the top margin holds two rows: plotly's mode bar (about 30 px, at the top right)
#: and, below it, the title, anchored to the top of the plot area.
FIGURE_HEIGHT = 380
TOP_MARGIN = 70
TITLE_FONT_SIZE = 15
TITLE_PAD = 8  # px between the title and the plot area
#: Mode bar buttons left out (box/lasso select, zoom in/out, autoscale, and "Share chart", which uploads the data
#: to Plotly Cloud): download, zoom, pan and reset remain.
MODEBAR_REMOVE = ("select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d", "sendChartToCloud")

#: What an empty plot says (plotly annotation text; ``<br>`` breaks a line).
HULL_EMPTY = "The convex hull of the target chemistry<br>appears after Generate"
HULL_NOT_DRAWN = "No hull drawn: see the note below"
PARETO_EMPTY = "The Pareto front of the candidates<br>appears after Generate{evaluate}"
PARETO_AFTER_EVALUATE = "The Pareto front appears after Evaluate<br>(which computes {columns})"
PARETO_NO_VALUES = "No candidate has values of both<br>{x} and {y}"

_SELECTED = dict(size=18, color="rgba(0,0,0,0)", line=dict(color="#111", width=2))

# Full style of every trace. In the browser, a batched update resets trace properties that the batch does not
# set (seen with plotly 7 + anywidget: ``mode`` and ``name`` came through as null), so the traces are created
# fully styled and every update re-sends the whole style together with the data.
_HULL_STYLES = (
    dict(name="hull", mode="lines", line=dict(color="#7f8c8d", width=1), hoverinfo="skip", showlegend=False),
    dict(name="MP-20 reference", mode="markers", marker=dict(color="#2c3e50", size=7, symbol="circle"), hoverinfo="text"),
    dict(name="candidates", mode="markers", hoverinfo="text"),
    dict(name="selected", mode="markers", marker=_SELECTED, hoverinfo="skip"),
)
_CANDIDATE_MARKER = dict(size=11, symbol="diamond", colorscale="Viridis_r", cmin=0, cmax=0.3,
                         colorbar=dict(title="E_hull", thickness=10))
_PARETO_STYLES = (
    dict(name="dominated", mode="markers", marker=dict(color="#95a5a6", size=9), hoverinfo="text"),
    dict(name="Pareto-optimal", mode="lines+markers", marker=dict(color="#e74c3c", size=12, symbol="star"),
         line=dict(color="#e74c3c", width=1, shape="hv"), hoverinfo="text"),
    dict(name="selected", mode="markers", marker=_SELECTED, hoverinfo="skip"),
)


def figure_layout(title: str) -> go.Layout:
    """The layout both plots start from: the title in its own row above the plot area and under the mode bar."""
    return go.Layout(
        title=dict(text=title, x=0, xref="paper", xanchor="left", y=1, yref="paper", yanchor="bottom",
                   pad=dict(b=TITLE_PAD), font=dict(size=TITLE_FONT_SIZE)),
        height=FIGURE_HEIGHT, width=460, margin=dict(l=50, r=10, t=TOP_MARGIN, b=40),
        legend=dict(orientation="h", y=-0.15), modebar=dict(remove=list(MODEBAR_REMOVE)),
    )


def show_placeholder(figure: go.FigureWidget, text: str | None) -> None:
    """``text`` in the middle of an empty ``figure`` with its axes hidden; ``None`` removes it and shows the axes."""
    if text is None:
        figure.layout.annotations = []
    else:
        figure.layout.annotations = [dict(text=text, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                                          font=dict(size=14, color="#7f8c8d"))]
    figure.layout.xaxis.visible = figure.layout.yaxis.visible = text is None


class HullPlot(w.VBox):
    """Convex hull of the target chemical system: reference entries, and candidates coloured by E_hull."""

    def __init__(self, on_select: Callable[[str], None] | None = None) -> None:
        self.figure = go.FigureWidget(
            data=[go.Scatter(x=[], y=[], **style) for style in _HULL_STYLES[:2]]
            + [go.Scatter(x=[], y=[], marker=dict(_CANDIDATE_MARKER, color=[]), **_HULL_STYLES[2]),
               go.Scatter(x=[], y=[], **_HULL_STYLES[3])],
            layout=figure_layout("Convex hull"),
        )
        self.figure.layout.showlegend = True
        show_placeholder(self.figure, HULL_EMPTY)
        self.figure.add_class("mgl-hull-plot")
        self.figure.data[2].on_click(self._on_click)
        self._on_select = on_select
        self.message = w.HTML()
        self.data: design.HullData | None = None
        super().__init__([self.figure, self.message])

    def update(self, data: design.HullData | None, *, selected: str | None = None, message: str = "",
               placeholder: str | None = None) -> None:
        """Redraw in place from ``data``.

        ``None`` clears the plot, shows ``message`` (HTML) under it and ``placeholder`` in the empty frame (default:
        :data:`HULL_EMPTY`, or :data:`HULL_NOT_DRAWN` when there is a message).
        """
        self.data = data
        self.message.value = message
        hull, ref, cand, sel = self.figure.data
        with self.figure.batch_update():
            if data is None:
                for tr, style in zip((hull, ref, cand, sel), _HULL_STYLES):
                    tr.update(x=[], y=[], **style)
                self.figure.layout.title.text = "Convex hull"
                self.figure.layout.yaxis.scaleanchor = None
                show_placeholder(self.figure, placeholder or (HULL_NOT_DRAWN if message else HULL_EMPTY))
                return
            show_placeholder(self.figure, None)
            xs, ys = [], []
            for lx, ly in data.lines:
                xs += list(lx) + [None]
                ys += list(ly) + [None]
            hull.update(x=xs, y=ys, **_HULL_STYLES[0])
            ref.update(x=[r["x"] for r in data.reference], y=[r["y"] for r in data.reference],
                       text=[f"{r['label']} {r['entry_id']}<br>E_hull {r['e_hull']:.3f} eV/atom" for r in data.reference],
                       **_HULL_STYLES[1])
            cand.update(x=[c["x"] for c in data.candidates], y=[c["y"] for c in data.candidates],
                        customdata=[c["id"] for c in data.candidates],
                        text=[f"{c['id']}: {c['label']}<br>E_hull {c['e_hull']:.3f} eV/atom" for c in data.candidates],
                        marker=dict(_CANDIDATE_MARKER, color=[c["e_hull"] for c in data.candidates]), **_HULL_STYLES[2])
            chosen = [c for c in data.candidates if c["id"] == selected]
            sel.update(x=[c["x"] for c in chosen], y=[c["y"] for c in chosen], **_HULL_STYLES[3])
            system = "-".join(data.elements)
            ternary = data.kind == "ternary"  # triangle coordinates: axes carry no meaning, keep the aspect
            self.figure.layout.xaxis.visible = self.figure.layout.yaxis.visible = not ternary
            self.figure.layout.yaxis.scaleanchor = "x" if ternary else None
            if data.kind == "binary":
                self.figure.layout.title.text = f"{system} hull"
                self.figure.layout.xaxis.title = f"x in {data.elements[0]}(1-x){data.elements[-1]}(x)"
                self.figure.layout.yaxis.title = "formation energy (eV/atom)"
            elif data.kind == "ternary":
                self.figure.layout.title.text = f"{system} hull (corners {', '.join(data.elements)})"
                self.figure.layout.xaxis.title = ""
                self.figure.layout.yaxis.title = ""
            else:
                self.figure.layout.title.text = f"{system}: E_hull per entry"
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
        self.x.add_class("mgl-pareto-x")
        self.y.add_class("mgl-pareto-y")
        self.x_max = w.Checkbox(value=PARETO_COLUMNS["energy_above_hull"], description="maximize x", indent=False)
        self.y_max = w.Checkbox(value=PARETO_COLUMNS["hhi_score"], description="maximize y", indent=False)
        self.figure = go.FigureWidget(
            data=[go.Scatter(x=[], y=[], **style) for style in _PARETO_STYLES],
            layout=figure_layout("Pareto front"),
        )
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
        self.redraw()

    def update(self, table: pd.DataFrame, *, selected: str | None = None) -> None:
        self.table, self.selected = table, selected
        self.redraw()

    def redraw(self) -> None:
        """Draw the table on the chosen axes; an empty frame says what is missing (see :meth:`placeholder`)."""
        table = self.table
        dom, opt, sel = self.figure.data
        x, y = self.x.value, self.y.value
        if table is None or not len(table):
            self.mask = np.zeros(0, dtype=bool)
            with self.figure.batch_update():
                for tr, style in zip((dom, opt, sel), _PARETO_STYLES):
                    tr.update(x=[], y=[], **style)
                self.figure.layout.title.text = "Pareto front"
                show_placeholder(self.figure, self.placeholder())
            return
        self.mask = design.pareto_front(table, x, y, maximize=(self.x_max.value, self.y_max.value))
        xs, ys = table[x].astype(float).to_numpy(), table[y].astype(float).to_numpy()
        ids = table["id"].astype(str).to_numpy()
        labels = [f"{i}: {f}" for i, f in zip(ids, table["formula"])]
        order = np.argsort(xs[self.mask], kind="stable")
        with self.figure.batch_update():
            rest = ~self.mask & np.isfinite(xs) & np.isfinite(ys)
            dom.update(x=_clean(xs[rest]), y=_clean(ys[rest]), customdata=ids[rest].tolist(),
                       text=[labels[i] for i in np.flatnonzero(rest)], **_PARETO_STYLES[0])
            opt.update(x=_clean(xs[self.mask][order]), y=_clean(ys[self.mask][order]),
                       customdata=ids[self.mask][order].tolist(),
                       text=[labels[i] for i in np.flatnonzero(self.mask)[order]], **_PARETO_STYLES[1])
            chosen = ids == (selected := self.selected)
            sel.update(x=_clean(xs[chosen]) if selected else [], y=_clean(ys[chosen]) if selected else [],
                       **_PARETO_STYLES[2])
            self.figure.layout.xaxis.title = x
            self.figure.layout.yaxis.title = y
            missing = int((~(np.isfinite(xs) & np.isfinite(ys))).sum())
            self.figure.layout.title.text = f"Pareto front: {int(self.mask.sum())} of {len(table)} optimal" + (
                f" ({missing} without values)" if missing else "")
            show_placeholder(self.figure, self.placeholder() if missing == len(table) else None)

    def placeholder(self) -> str | None:
        """What the empty frame says, or ``None`` when some candidate has values of both chosen columns.

        Before any candidate: that the front appears after Generate (and Evaluate, for an evaluation column such as
        ``energy_above_hull``); with candidates but no values: after Evaluate when the missing columns come from the
        evaluation (:data:`mattergen_lab.design.EVALUATION_COLUMNS`), else that no candidate has both values.
        """
        x, y = self.x.value, self.y.value
        evaluated = [c for c in dict.fromkeys((x, y)) if c in design.EVALUATION_COLUMNS]
        table = self.table
        if table is None or not len(table):
            return PARETO_EMPTY.format(evaluate=" and Evaluate" if evaluated else "")
        finite = {c: np.isfinite(pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float))
                  if c in table.columns else np.zeros(len(table), dtype=bool) for c in (x, y)}
        if (finite[x] & finite[y]).any():
            return None
        empty = [c for c in dict.fromkeys((x, y)) if not finite[c].any()]
        if empty and set(empty) <= set(design.EVALUATION_COLUMNS):
            return PARETO_AFTER_EVALUATE.format(columns=" and ".join(empty))
        return PARETO_NO_VALUES.format(x=x, y=y)

    def _on_click(self, trace: go.Scatter, points: object, _selector: object) -> None:
        idx = list(getattr(points, "point_inds", []))
        if idx and self._on_select is not None and trace.customdata is not None:
            self._on_select(str(trace.customdata[idx[0]]))


def _clean(values: Sequence[float]) -> list[float | None]:
    return [float(v) if math.isfinite(float(v)) else None for v in values]
