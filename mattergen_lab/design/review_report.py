"""Static figures (matplotlib PNG) and HTML for the synthesis-review export, so the zip reads without Python.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global backend state).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mattergen_lab.design.review import CandidateReview
    from mattergen_lab.design.xrd import XRDPattern
    from mattergen_lab.design.tables import HullData


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _sticks(ax: Any, pattern: XRDPattern, sign: float, color: str, label: str, label_peaks: int = 0) -> None:
    x, y = np.asarray(pattern.two_theta), np.asarray(pattern.intensity) * sign
    ax.vlines(x, 0, y, color=color, linewidth=1.2, label=label)
    for i in np.argsort(-np.abs(y))[:label_peaks]:
        ax.annotate(pattern.hkl[i].split("; ")[0], (x[i], y[i]), fontsize=7, ha="center",
                    va="bottom" if sign > 0 else "top", xytext=(0, 2 * sign), textcoords="offset points")


def xrd_png(review: CandidateReview) -> bytes | None:
    """The candidate's pattern up, the nearest known material's down (a mirror plot), or None without XRD."""
    from matplotlib.figure import Figure

    if review.xrd is None:
        return None
    fig = Figure(figsize=(7, 3.4))
    ax = fig.add_subplot()
    _sticks(ax, review.xrd, 1.0, "#c0392b", f"{review.id} {review.formula} ({review.structure_source})", 5)
    if review.known_xrd is not None:
        known = review.nearest.closest() if review.nearest else None
        name = f"{review.known_xrd_id} {known.formula if known else ''} (nearest known)"
        _sticks(ax, review.known_xrd, -1.0, "#2c3e50", name, 3)
    ax.axhline(0, color="#999", linewidth=0.6)
    ax.set_xlabel(f"2θ (degrees), {review.xrd.wavelength} λ = {review.xrd.wavelength_angstrom:g} Å")
    ax.set_ylabel("intensity (strongest = 100)")
    ax.set_ylim(-115 if review.known_xrd is not None else 0, 115)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"Simulated powder XRD: {review.id} {review.formula}", fontsize=9)
    return _png(fig)


def hull_png(data: HullData, selected: Sequence[str] = ()) -> bytes:
    """The hull of :func:`~mattergen_lab.design.hull_data` as a static image; exported candidates ringed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot()
    for lx, ly in data.lines:
        ax.plot(lx, ly, color="#7f8c8d", linewidth=0.8)
    ref = data.reference
    ax.scatter([r["x"] for r in ref], [r["y"] for r in ref], s=14, color="#2c3e50", label="MP-20 reference", zorder=2)
    cands = data.candidates
    sc = ax.scatter([c["x"] for c in cands], [c["y"] for c in cands], c=[c["e_hull"] for c in cands], cmap="viridis_r",
                    vmin=0, vmax=0.3, marker="D", s=40, label="candidates", zorder=3)
    for c in cands:
        if c["id"] in selected:
            ax.scatter([c["x"]], [c["y"]], s=160, facecolors="none", edgecolors="#111", zorder=4)
        ax.annotate(c["id"], (c["x"], c["y"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if cands:
        fig.colorbar(sc, ax=ax, label="E_hull (eV/atom)")
    system = "-".join(data.elements)
    if data.kind == "binary":
        ax.set_xlabel(f"x in {data.elements[0]}(1-x){data.elements[-1]}(x)")
        ax.set_ylabel("formation energy (eV/atom)")
    elif data.kind == "ternary":
        ax.set_axis_off()
        ax.set_aspect("equal")
        for (x, y), el in zip([(0, 0), (1, 0), (0.5, math.sqrt(3) / 2)], data.elements):
            ax.annotate(el, (x, y), fontsize=10, ha="center", xytext=(0, -12 if y == 0 else 6), textcoords="offset points")
    else:
        ax.set_xlabel("entry")
        ax.set_ylabel("E_hull (eV/atom)")
    ax.set_title(f"{system} convex hull (MP-20 reference)", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def pareto_png(table: pd.DataFrame, x: str, y: str, maximize: tuple[bool, bool] = (False, False)) -> bytes | None:
    """Two columns of the candidate table with the Pareto-optimal rows starred; None when fewer than 1 row has both."""
    from matplotlib.figure import Figure

    from mattergen_lab.design.tables import pareto_front

    if x not in table.columns or y not in table.columns:
        return None
    xs, ys = table[x].astype(float).to_numpy(), table[y].astype(float).to_numpy()
    ok = np.isfinite(xs) & np.isfinite(ys)
    if not ok.any():
        return None
    mask = pareto_front(table, x, y, maximize=maximize)
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot()
    ax.scatter(xs[ok & ~mask], ys[ok & ~mask], color="#95a5a6", s=30, label="dominated")
    order = np.argsort(xs[mask])
    ax.plot(xs[mask][order], ys[mask][order], "*-", color="#e74c3c", markersize=11, linewidth=0.8,
            drawstyle="steps-post", label="Pareto-optimal")
    for cid, xv, yv, good in zip(table["id"].astype(str), xs, ys, ok):
        if good:
            ax.annotate(cid, (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x + (" (max)" if maximize[0] else " (min)"))
    ax.set_ylabel(y + (" (max)" if maximize[1] else " (min)"))
    ax.set_title(f"Pareto front: {int(mask.sum())} of {int(ok.sum())} optimal", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return f"<p><i>{html.escape(alt)}: no image</i></p>"
    return f"<img alt='{html.escape(alt)}' style='max-width:100%' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _fmt(v: Any, fmt: str = "{:.3f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return str(v)


def known_table_html(materials: Sequence[Any], *, structure: bool) -> str:
    esc = html.escape
    head = "<tr><th>MP id</th><th>formula</th><th>E_hull (eV/atom)</th><th>space group</th><th>composition distance</th>"
    head += "<th>structure RMS</th><th>matcher</th><th>within novelty tolerance</th></tr>" if structure else "</tr>"
    rows = []
    for m in materials:
        cells = [esc(m.material_id), esc(m.formula), _fmt(m.e_above_hull), _fmt(m.space_group, "{}"),
                 _fmt(m.composition_distance)]
        if structure:
            cells += [_fmt(m.structure_distance), esc(m.matcher), "yes" if m.within_tolerance else "no"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>" if rows else "<p><i>none</i></p>"


def review_html(review: CandidateReview, files: dict[str, Any], xrd_image: bytes | None = None) -> str:
    """One candidate's section of ``report.html``: summary, XRD image and strongest peaks, nearest known materials."""
    esc = html.escape
    oxi = ", ".join(f"{el} {v:+g}" for el, v in review.oxidation_states.items()) if review.oxidation_states else "–"
    facts = [
        ("space group", f"{review.space_group_symbol} ({review.space_group})" if review.space_group else "–"),
        ("density (g/cm³)", f"{_fmt(review.density)} generated" + (f", {_fmt(review.density_relaxed)} relaxed"
                                                                     if review.density_relaxed is not None else "")),
        ("oxidation states", f"{oxi} <small>({esc(review.oxidation_note)})</small>"),
        ("structure described", esc(review.structure_source)),
        ("files", ", ".join(f"<code>{esc(str(v))}</code>" for v in files.values() if v)),
    ]
    parts = [f"<h3>{esc(review.id)}: {esc(review.formula)}</h3>",
             "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>"]
    if review.nearest is not None:
        parts.append(f"<p><b>Novelty:</b> {esc(review.nearest.note)}</p>")
        parts.append("<h4>Nearest known by structure</h4>" + known_table_html(review.nearest.by_structure, structure=True))
        parts.append("<h4>Nearest known by composition</h4>" + known_table_html(review.nearest.by_composition, structure=False))
    if review.xrd is not None:
        peaks = "".join(f"<tr><td>{p['two_theta']:.2f}</td><td>{p['intensity']:.1f}</td><td>{esc(p['hkl'])}</td>"
                        f"<td>{p['d_spacing']:.4f}</td></tr>" for p in review.xrd.strongest(8))
        parts.append(f"<h4>Simulated powder XRD ({esc(review.xrd.wavelength)})</h4>"
                     + _img(xrd_image, "XRD")
                     + "<table><tr><th>2θ (°)</th><th>intensity</th><th>hkl</th><th>d (Å)</th></tr>" + peaks + "</table>")
    else:
        parts.append(f"<p><i>No XRD: {esc(review.xrd_note)}</i></p>")
    return "<section>" + "".join(parts) + "</section>"


def figures_html(hull: bytes | None, pareto: bytes | None) -> str:
    out = []
    if hull:
        out.append("<h2>Convex hull</h2>" + _img(hull, "convex hull"))
    if pareto:
        out.append("<h2>Pareto front</h2>" + _img(pareto, "Pareto front"))
    return "".join(out)
