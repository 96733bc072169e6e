"""The design panels (mattergen_lab.widgets), driven from Python without a browser.

A randomly initialised tiny checkpoint, a fake evaluator and a fake hull reference keep these fast; the
real evaluation and the browser rendering are tested elsewhere.
"""

from __future__ import annotations

import json
import types
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mattergen_lab.checkpoints import registry
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("nglview")
pytest.importorskip("plotly")

from mattergen_lab import design  # noqa: I001 (after the importorskip calls on purpose)
from mattergen_lab.widgets import DesignApp, snapshot_to_pdb


def _save(folder: Path, conditions: tuple[str, ...]) -> str:
    from mattergen_lab.model.io import save_checkpoint
    from mattergen_lab.model.score_model import ScoreModel

    torch.manual_seed(0)
    return str(save_checkpoint(folder, ScoreModel.from_preset("tiny", condition_on_adapt=conditions), {}))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpts")
    return {"mag": _save(root / "mag", ("dft_mag_density", "chemical_system")), "plain": _save(root / "plain", ())}


class FakeReference:
    """Li-Fe-O reference entries with made-up total energies (eV per formula unit)."""

    name = "fake"

    def phase_diagram(self, elements):
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core import Composition

        data = [("Li", -1.9), ("Fe", -8.3), ("O", -4.9), ("Li2O", -14.3), ("Fe2O3", -38.0), ("LiFeO2", -26.0)]
        entries = [PDEntry(Composition(f), e, name=f) for f, e in data]
        return PhaseDiagram([e for e in entries if {str(x) for x in e.composition.elements} <= set(elements)])


class FakeEvaluator:
    """E_hull = 0.05 × position in the call; the first structure of each call is S.U.N."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.progress: list[tuple[int, int]] = []

    def __call__(self, structures, *, ids=None, progress=None):
        self.calls.append(list(ids))
        rows = []
        for i, (s, cid) in enumerate(zip(structures, ids)):
            rows.append({"id": cid, "formula": s.composition.reduced_formula, "energy_per_atom": -5.0 + i,
                         "energy_above_hull": 0.05 * i, "stable": i == 0, "is_unique": True, "is_novel": True,
                         "novel_unique_stable": i == 0, "relax_status": "ok"})
            if progress is not None:
                progress(i + 1, len(structures))
                self.progress.append((i + 1, len(structures)))
        protocol = {"relaxer": "fake", "stability_threshold": 0.1, "reference": "fake", "N": len(rows)}
        return types.SimpleNamespace(table=pd.DataFrame(rows), protocol=protocol, metrics={}, relaxed=[None] * len(rows))


@pytest.fixture
def app(ckpts, tmp_path, monkeypatch):
    monkeypatch.setenv("MATTERGEN_LAB_CHECKPOINTS", str(tmp_path / "no-cache"))
    a = DesignApp(ckpts["mag"], evaluator=FakeEvaluator(), reference=FakeReference(),
                  ranges=dict(design.FALLBACK_RANGES), online=False)
    a.targets.add_checkpoint_path(ckpts["plain"])
    a.targets.checkpoint.value = ckpts["mag"]
    t = a.targets
    t.chemsys.value = "Li-Fe-O"
    t.set_targets({"dft_mag_density": 0.12})
    t.steps.value, t.num_samples.value, t.batch_size.value, t.every.value, t.seed.value = 6, 4, 2, 2, 3
    return a


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()) or ():
        yield from _walk(child)


def _classes(app) -> set[str]:
    return {c for wdg in _walk(app) for c in getattr(wdg, "_dom_classes", ())}


def test_dom_contract_classes_exist(app):
    expected = {
        "mgl-design-app", "mgl-generate", "mgl-cancel", "mgl-evaluate", "mgl-progress", "mgl-status",
        "mgl-steps", "mgl-num-samples", "mgl-seed", "mgl-guidance", "mgl-chemsys", "mgl-checkpoint",
        "mgl-viewer", "mgl-scrub", "mgl-gallery", "mgl-hull-plot", "mgl-pareto-plot", "mgl-candidate-table", "mgl-export",
    } | {f"mgl-{kind}-{p}" for p in design.DESIGN_PROPERTIES for kind in ("slider", "toggle")}
    assert expected <= _classes(app), expected - _classes(app)
    assert "mgl-design-app" in app._dom_classes and app.generate_button.description == "Generate"


def test_controls_build_the_request(app, ckpts):
    t = app.targets
    t.sliders["hhi_score"].value = 1500
    t.toggles["hhi_score"].value = True  # mag ckpt has no hhi adapter; the bundled joint adapter has both
    t.guidance.value = 1.5
    assert [v for _, v in t.checkpoint.options] == ["mgl_mp20_small_dft_mag_density_hhi_score"]
    assert t.request().targets == {"dft_mag_density": 0.12, "hhi_score": 1500}
    t.toggles["dft_band_gap"].value = True
    assert t.checkpoint.value is None  # no checkpoint conditions on all three -> nothing offered
    with pytest.raises(ValueError, match="no checkpoint can condition on"):
        t.request()
    t.toggles["dft_band_gap"].value = t.toggles["hhi_score"].value = False
    t.checkpoint.value = ckpts["mag"]
    req = t.request()
    assert (req.checkpoint, req.chemical_system, req.targets, req.guidance_scale) == (ckpts["mag"], "Fe-Li-O", {"dft_mag_density": 0.12}, 1.5)
    assert (req.num_samples, req.num_steps, req.seed, req.every, req.batch_size) == (4, 6, 3, 2, 2)
    assert t.sliders["dft_band_gap"].disabled and not t.sliders["dft_mag_density"].disabled
    r = design.FALLBACK_RANGES["dft_bulk_modulus"]
    assert (t.sliders["dft_bulk_modulus"].min, t.sliders["dft_bulk_modulus"].max) == (r.low, r.high)


def test_invalid_element_is_shown_inline(app):
    app.targets.chemsys.value = "Li-Qq-O"
    err = app.targets.chemsys_error.value
    assert "&#x27;Qq&#x27; is not an element symbol" in err and "color:#c0392b" in err
    assert app.generate() is None and not app.busy  # no thread, no traceback
    assert "Qq" in app.status.value and "color:#c0392b" in app.status.value
    app.targets.chemsys.value = "O-Li"
    assert app.targets.chemsys_error.value == "" and list(app.targets.picker.value) == ["Li", "O"]
    app.targets.picker.value = ["Fe", "Li", "O"]
    assert app.targets.chemsys.value == "Fe-Li-O"


def test_checkpoint_chooser_offers_only_usable_checkpoints(app, ckpts):
    t = app.targets
    mag_models = {ckpts["mag"], "mgl_mp20_small_dft_mag_density", "mgl_mp20_small_dft_mag_density_hhi_score"}
    assert {v for _, v in t.checkpoint.options} == mag_models  # mag density on: the plain models are out
    reasons = t.unavailable_reasons
    assert reasons[ckpts["plain"]].startswith("dft_mag_density: not a conditioning property of this checkpoint")
    assert reasons["dft_mag_density"] == "official weights not downloaded and no internet"
    assert "Unavailable checkpoints" in t.unavailable.value and "no internet" in t.unavailable.value
    t.set_targets({"dft_band_gap": 2.0})
    assert [v for _, v in t.checkpoint.options] == ["mgl_mp20_small_dft_band_gap"]
    assert t.unavailable_reasons[ckpts["mag"]].startswith("dft_band_gap: not a conditioning property of this checkpoint")
    t.set_targets({"dft_band_gap": 2.0, "dft_bulk_modulus": 150.0})
    assert t.checkpoint.options == () and t.checkpoint.value is None
    assert app.generate() is None and "no checkpoint can condition on" in app.status.value
    t.set_targets({})
    bundled = {name for name, record in registry().items() if record.kind == "bundled"}  # with no targets, every bundled model is usable
    assert {v for _, v in t.checkpoint.options} == {ckpts["mag"], ckpts["plain"]} | bundled


def test_generate_streams_into_viewer_progress_gallery_and_table(app):
    req = app.generate(wait=True)
    assert app.error is None, app.error
    assert req.targets == {"dft_mag_density": 0.12}
    # 2 batches x (steps 0, 2, 4, 6 + final)
    assert app.frames_received == 10
    assert (app.progress.value, app.progress.max) == (12, 12)
    assert "Done: 4 new; 4 candidates in this session." == app.status.value
    assert len(app.candidates) == 4 and [c.id for c in app.candidates] == ["1-0", "1-1", "1-2", "1-3"]
    # live view: prior frame drawn with every atom as the grey He placeholder
    prior = app.trajectory.live_trajectory[0]
    assert prior.step == 0 and prior.num_masked == len(prior.atomic_numbers)
    pdb = snapshot_to_pdb(prior)
    assert pdb.startswith("CRYST1") and pdb.count("HETATM") == len(prior.atomic_numbers) and pdb.count(" HE\n") == len(prior.atomic_numbers)
    assert app.trajectory.frames_shown >= 10
    # afterwards: first candidate selected, scrubber over its whole trajectory (5 frames)
    assert app.selected == "1-0" and app.trajectory.gallery.value == "1-0"
    assert (app.trajectory.scrub.max, app.trajectory.scrub.value, app.trajectory.scrub.disabled) == (4, 4, False)
    app.trajectory.scrub.value = 0
    assert app.trajectory.shown.step == 0 and app.trajectory.shown.num_masked > 0
    assert [label for label, _ in app.trajectory.gallery.options][0].startswith("1-0: ")
    # table: one row per candidate, each with its formula
    rows = app.candidate_panel.body.children
    assert len(rows) == 4 and all("mgl-candidate-row" in r._dom_classes for r in rows)
    for row, cand in zip(rows, app.candidates):
        assert any(getattr(c, "value", None) == cand.oracles["formula"] for c in row.children)
        assert set(cand.oracles["chemical_system"].split("-")) <= {"Fe", "Li", "O"}  # hard mask
    assert list(app.table["id"]) == [c.id for c in app.candidates] and app.table["in_target_system"].all()


def test_cancel_keeps_finished_samples_and_results_accumulate(app):
    app.generate()
    assert len(app.candidates) == 4
    live = app.trajectory.live_frame

    def cancel_in_second_batch(frame):
        live(frame)
        if frame.batch == 1 and frame.step == 2:
            app.cancel()

    app.trajectory.live_frame = cancel_in_second_batch
    app.targets.seed.value = 4
    app.generate()
    assert app.error is None
    assert app.status.value == "Cancelled: 2 new; 6 candidates in this session."
    assert [c.id for c in app.candidates] == ["1-0", "1-1", "1-2", "1-3", "2-0", "2-1"]
    assert app.last_run.cancelled and app.progress.value == 8  # 6 steps of batch 0 + 2 of batch 1
    assert len(app.candidate_panel.body.children) == 6 and len(app.trajectory.gallery.options) == 6
    app.trajectory.live_frame = live
    app.generate()
    assert app.status.value == "Done: 4 new; 10 candidates in this session." and len(app.table) == 10
    assert app.table["id"].is_unique


def test_evaluate_fills_table_hull_and_pareto_and_clicks_select(app):
    app.auto_evaluate.value = True
    app.generate()  # evaluates right after sampling
    ev = app.evaluator
    assert app.error is None and ev.calls == [["1-0", "1-1", "1-2", "1-3"]]
    assert ev.progress[-1] == (4, 4) and (app.progress.value, app.progress.max) == (4, 4)
    assert app.status.value == "Evaluated 4 (1 S.U.N.); 4 candidates in this session."
    assert app.table["energy_above_hull"].tolist() == pytest.approx([0.0, 0.05, 0.10, 0.15])
    assert app.table["novel_unique_stable"].tolist() == [True, False, False, False]
    assert app.protocol["relaxer"] == "fake"
    app.evaluate()  # nothing new
    assert len(ev.calls) == 1 and "Nothing to evaluate" in app.status.value

    # hull: ternary Li-Fe-O, 6 reference entries, candidates highlighted with their E_hull
    hull = app.hull.figure.data
    assert len(hull[1].x) == 6 and list(hull[2].customdata) == ["1-0", "1-1", "1-2", "1-3"]
    assert list(hull[2].marker.color) == pytest.approx([0.0, 0.05, 0.10, 0.15])
    assert app.hull.data.kind == "ternary" and "Fe-Li-O" in app.hull.figure.layout.title.text

    # Pareto (E_hull vs HHI, both minimised) equals the library's mask
    mask = design.pareto_front(app.table, "energy_above_hull", "hhi_score")
    assert app.pareto.mask.tolist() == mask.tolist() and mask[0]
    optimal = app.pareto.figure.data[1]
    assert sorted(optimal.customdata) == sorted(app.table["id"][mask])
    app.pareto.y.value = "density"  # density is maximised by default
    assert app.pareto.y_max.value and app.pareto.mask.tolist() == design.pareto_front(
        app.table, "energy_above_hull", "density", maximize=(False, True)).tolist()

    # clicking a point selects it in table, viewer, and both plots
    target = optimal.customdata[-1]
    app.pareto._on_click(optimal, types.SimpleNamespace(point_inds=[len(optimal.customdata) - 1]), None)
    assert app.selected == target and app.trajectory.gallery.value == target
    assert "mgl-selected" in app.candidate_panel.rows[target]._dom_classes
    assert list(app.pareto.figure.data[2].x) == pytest.approx([float(app.table.set_index("id").loc[target, "energy_above_hull"])])
    assert len(app.hull.figure.data[3].x) == 1


def test_export_from_the_app(app, tmp_path, ckpts):
    app.generate()
    app.evaluate()
    app.candidate_panel.export_button.click()  # nothing checked: inline message, no file
    assert "no candidates selected" in app.candidate_panel.export_status.value
    app.candidate_panel.checkboxes["1-1"].value = True
    app.candidate_panel.checkboxes["1-3"].value = True
    app.candidate_panel.path.value = str(tmp_path / "out" / "review.zip")
    app.candidate_panel.export_button.click()
    assert app.candidate_panel.export_status.value.startswith("Wrote ")
    with zipfile.ZipFile(tmp_path / "out" / "review.zip") as zf:
        names = zf.namelist()
        rep = json.loads(zf.read("report.json"))
        csv = pd.read_csv(zf.open("report.csv"))
    formulas = {i: app.table.set_index("id").loc[i, "formula"] for i in ("1-1", "1-3")}
    for cid, formula in formulas.items():
        assert f"{cid}_{formula}_P1.cif" in names and f"{cid}_{formula}_POSCAR" in names
    assert len(names) == 3 + 3 * 2 or len(names) == 3 + 2 * 2  # symmetrized CIF may be skipped if spglib fails
    assert list(csv["id"]) == ["1-1", "1-3"] and csv["energy_above_hull"].tolist() == pytest.approx([0.05, 0.15])
    assert rep["checkpoint"] == ckpts["mag"] and rep["guidance_scale"] == 2.0
    assert rep["targets"] == {"dft_mag_density": 0.12} and rep["chemical_system"] == "Fe-Li-O"
    assert rep["evaluation_protocol"]["relaxer"] == "fake" and rep["symprec"] == 0.1 and rep["timestamp"]


def test_snapshot_to_pdb_orthorhombic_cell_and_mask_placeholder():
    snap = design.CrystalSnapshot(
        step=3, t=0.5, lattice=np.diag([3.0, 4.0, 5.0]), frac_coords=np.array([[0.5, 0.25, 0.2], [0.0, 0.0, 0.0]]),
        atomic_numbers=np.array([26, 101]),
    )
    lines = snapshot_to_pdb(snap).splitlines()
    assert lines[0] == "CRYST1    3.000    4.000    5.000  90.00  90.00  90.00 P 1           1"
    assert lines[1][30:54] == "   1.500   1.000   1.000" and lines[1][76:78] == "FE"
    assert lines[2][76:78] == "HE" and lines[-1] == "END"
    assert snap.num_masked == 1
