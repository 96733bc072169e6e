"""The review part of the synthesis-review zip (called by :func:`mattergen_lab.design.export_candidates`)."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mattergen_lab.structure_io import structure_to_cif

if TYPE_CHECKING:  # pragma: no cover
    import zipfile

    import pandas as pd
    from pymatgen.core import Structure

    from mattergen_lab.design.review import CandidateReview
    from mattergen_lab.design.tables import HullData

log = logging.getLogger(__name__)


def write_review_files(zf: zipfile.ZipFile, stem: str, relaxed: Structure | None,
                       review: CandidateReview | None) -> dict[str, Any]:
    """Write one candidate's relaxed CIF, XRD table and XRD plot; return their names (and the review) for the report."""
    from mattergen_lab.design.xrd import xrd_table
    from mattergen_lab.design.review_report import xrd_png

    out: dict[str, Any] = {"relaxed_cif": None, "xrd_csv": None, "xrd_png": None}
    if relaxed is not None:
        out["relaxed_cif"] = f"{stem}_relaxed_P1.cif"
        zf.writestr(out["relaxed_cif"], "# relaxed structure (the evaluation's relaxer), Niggli-reduced P1 cell\n"
                    + structure_to_cif(relaxed))
    if review is None:
        return out
    if review.xrd is not None:
        buf = io.StringIO()
        buf.write(f"# simulated powder XRD of the {review.structure_source} structure; pymatgen XRDCalculator, "
                  f"{review.xrd.wavelength} ({review.xrd.wavelength_angstrom:g} Å); intensity scaled to 100; "
                  "hkl of the conventional standard cell\n")
        xrd_table(review.xrd).to_csv(buf, index=False)
        out["xrd_csv"] = f"{stem}_xrd.csv"
        zf.writestr(out["xrd_csv"], buf.getvalue())
        png = xrd_png(review)
        if png:
            out["xrd_png"] = f"{stem}_xrd.png"
            out["_xrd_image"] = png  # for report.html; removed before report.json
            zf.writestr(out["xrd_png"], png)
    out["review"] = review.to_dict()
    return out


def _nearest_rows(review: CandidateReview) -> list[dict[str, Any]]:
    rows = []
    if review.nearest is None:
        return rows
    for kind, materials in (("structure", review.nearest.by_structure), ("composition", review.nearest.by_composition)):
        for rank, m in enumerate(materials, start=1):
            rows.append({"candidate_id": review.id, "candidate_formula": review.formula, "by": kind, "rank": rank,
                         "material_id": m.material_id, "formula": m.formula, "e_above_hull": m.e_above_hull,
                         "space_group": m.space_group, "composition_distance": m.composition_distance,
                         "structure_rms": m.structure_distance, "matcher": m.matcher,
                         "within_novelty_tolerance": m.within_tolerance, "has_structure": m.has_structure})
    return rows


def write_review_summary(zf: zipfile.ZipFile, table: pd.DataFrame, files: list[dict[str, Any]],
                         reviews: Sequence[CandidateReview | None] | None, hull: HullData | None,
                         pareto: tuple[str, str, tuple[bool, bool]] | None) -> str:
    """Add review columns to ``table`` (in place), write ``nearest_known.csv``, ``hull.png``, ``pareto.png``;
    return the HTML for ``report.html``."""
    import pandas as pd

    from mattergen_lab.design import review_report as rr

    html_parts = []
    table["relaxed_cif"] = [f.get("relaxed_cif") for f in files]
    if reviews is not None:
        def col(fn: Any) -> list[Any]:
            return [fn(r) if r is not None else None for r in reviews]

        table["density_relaxed"] = col(lambda r: r.density_relaxed)
        table["oxidation_states"] = col(lambda r: ", ".join(f"{k}{v:+g}" for k, v in r.oxidation_states.items())
                                        if r.oxidation_states else None)
        table["reviewed_structure"] = col(lambda r: r.structure_source)
        table["nearest_known_structure"] = col(lambda r: (r.nearest.by_structure[0].material_id
                                                          if r.nearest and r.nearest.by_structure else None))
        table["nearest_known_composition"] = col(lambda r: (r.nearest.by_composition[0].material_id
                                                            if r.nearest and r.nearest.by_composition else None))
        table["novelty_note"] = col(lambda r: r.nearest.note if r.nearest else None)
        table["xrd_csv"] = [f.get("xrd_csv") for f in files]
        rows = [row for r in reviews if r is not None for row in _nearest_rows(r)]
        buf = io.StringIO()
        pd.DataFrame(rows, columns=["candidate_id", "candidate_formula", "by", "rank", "material_id", "formula",
                                    "e_above_hull", "space_group", "composition_distance", "structure_rms", "matcher",
                                    "within_novelty_tolerance", "has_structure"]).to_csv(buf, index=False)
        zf.writestr("nearest_known.csv", buf.getvalue())
    hull_img = pareto_img = None
    try:
        if hull is not None:
            hull_img = rr.hull_png(hull, selected=[str(i) for i in table["id"]])
            zf.writestr("hull.png", hull_img)
        if pareto is not None:
            pareto_img = rr.pareto_png(table, *pareto)
            if pareto_img:
                zf.writestr("pareto.png", pareto_img)
    except Exception as exc:  # noqa: BLE001 - a figure must never cost the CIFs; the report says it is missing
        log.warning("a review figure failed: %s", exc)
    html_parts.append(rr.figures_html(hull_img, pareto_img))
    images = [f.pop("_xrd_image", None) for f in files]
    if reviews is not None:
        html_parts.append("<h2>Candidate reviews</h2>")
        for f, r, image in zip(files, reviews, images):
            if r is None:
                continue
            names = {k: f.get(k) for k in ("symmetrized_cif", "p1_cif", "poscar", "relaxed_cif", "xrd_csv", "xrd_png")}
            html_parts.append(rr.review_html(r, names, image))
    return "".join(html_parts)
