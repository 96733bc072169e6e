"""The design panels (mattergen_lab.widgets), driven from Python without a browser.

A randomly initialised tiny checkpoint, a fake evaluator and a fake hull reference keep these fast; the
real evaluation and the browser rendering are tested elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from must_run import importorskip

from mattergen_lab.checkpoints import registry
import torch

importorskip("ipywidgets")
importorskip("nglview")
importorskip("plotly")

from mattergen_lab import design  # noqa: I001 (after the importorskip calls on purpose)
from mattergen_lab.widgets import DesignApp, HullPlot, ParetoPlot, plots, snapshot_to_pdb, trajectory


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


@functools.lru_cache(maxsize=1)
def _small_known():
    """Three known Li-Fe-O crystals for the review (the MP-20 reference is tested in test_review.py)."""
    from pymatgen.core import Lattice, Structure

    rocksalt = [[0, 0, 0], [0.5, 0.5, 0.5]]
    structures = [Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [el, "O"], rocksalt)
                  for el, a in (("Li", 4.1), ("Fe", 4.3))] + [Structure(Lattice.cubic(2.87), ["Fe", "Fe"], rocksalt)]
    return design.KnownMaterials.from_structures(structures, ["k-LiO", "k-FeO", "k-Fe"], name="test",
                                                 e_above_hull={"k-LiO": 0.5, "k-FeO": 0.02, "k-Fe": 0.0})


@pytest.fixture
def app(ckpts, tmp_path, monkeypatch):
    monkeypatch.setenv("MATTERGEN_LAB_CHECKPOINTS", str(tmp_path / "no-cache"))
    a = DesignApp(ckpts["mag"], evaluator=FakeEvaluator(), reference=FakeReference(),
                  ranges=dict(design.FALLBACK_RANGES), online=False, known=_small_known(), review_viewer="nglview")
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
    # the viewer fills its box, and every frame drawn is followed by a camera fit on the new atoms and cell
    view = app.trajectory.view
    assert (view.layout.width, view.layout.height) == (trajectory.VIEW_WIDTH, trajectory.VIEW_HEIGHT) == ("420px", "360px")
    sent = [(cb._method_name, cb._ngl_msg.get("args")) for cb in view._callbacks_before_loaded]  # no browser: queued
    assert ("setParameters", [{"clipDist": 0}]) in sent
    draws = [(name, args) for name, args in sent if name in ("loadFile", "replaceStructure", "executeCode")]
    replaced = app.trajectory.frames_shown - 1
    assert [name for name, _ in draws] == ["loadFile", "executeCode"] + ["replaceStructure", "executeCode"] * replaced
    assert draws[1][1] == [trajectory.FIRST_FIT_VIEW_JS] and {tuple(a) for n, a in draws[3::2]} == {(trajectory.FIT_VIEW_JS,)}
    assert draws[-2][1][0]["data"] == app.trajectory.last_pdb  # the last replacement is the frame shown now
    # not evaluated: the Pareto plot (E_hull on x) waits for Evaluate; the hull shows the Li-Fe-O reference
    assert _notes(app.pareto.figure) == ["The Pareto front appears after Evaluate<br>(which computes energy_above_hull)"]
    assert app.pareto.figure.layout.xaxis.visible is False
    assert _notes(app.hull.figure) == [] and len(app.hull.figure.data[1].x) == 6
    app.pareto.x.value = "volume_per_atom"  # known without an evaluation
    assert _notes(app.pareto.figure) == [] and app.pareto.figure.layout.xaxis.visible is True
    assert _points(app.pareto.figure, 0) + _points(app.pareto.figure, 1) == 4


def test_the_symmetry_control_generates_symmetric_crystals_and_the_table_shows_their_sites(app):
    app.symmetry.value = "bogus"
    assert app.generate(wait=True) is None and "bogus" in app.status.value  # named before any work
    app.symmetry.value = "221 (Pm-3m)"  # a suggestion: the number is what counts
    req = app.generate(wait=True)
    assert app.error is None, app.error
    assert req.symmetry == "221" and req.sampling.symmetry.space_group == 221
    assert len(app.candidates) == 4
    for cand in app.candidates:  # exactly symmetric from the sampler: spglib at 0.1 finds 221 or a supergroup
        assert cand.oracles["space_group"] in (221, 225, 229), cand.oracles
        assert cand.oracles["wyckoff"] and all(w[0].isdigit() for w in cand.oracles["wyckoff"].split(", "))
    assert list(app.table["wyckoff"]) == [c.oracles["wyckoff"] for c in app.candidates]
    row = app.candidate_panel.rows[app.candidates[0].id]
    assert any(getattr(c, "value", None) == app.candidates[0].oracles["wyckoff"] for c in row.children)
    base = dataclasses.replace(app.targets.request(), checkpoint="mgl_mp20_small", targets={})
    assert app._with_symmetry(base).checkpoint == "mgl_mp20_small_symmetric"  # the base's symmetric fine-tune
    app.formula.value = "SrTiO3"  # a formula on the symmetric mode: the CSP model's symmetric fine-tune
    assert app._with_symmetry(app._with_composition(base)).checkpoint == "mgl_mp20_small_csp_symmetric"
    app.formula.value = ""
    app.symmetry.value = "off"
    assert app._with_symmetry(base).checkpoint == "mgl_mp20_small"
    assert app.generate(wait=True).symmetry is None


def test_the_vary_button_samples_variations_of_its_candidate(app):
    from pymatgen.core import Lattice, Structure

    from mattergen_lab.design.runs import candidate_oracles

    crystal = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.2), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    request = app.targets.request()
    app.add_candidates([design.Candidate("known-0", crystal, [], request, candidate_oracles(crystal))])
    app.generate(wait=True)  # four more rows: the parent is one candidate among others
    parent = app.candidates[0]
    app.select(parent.id)  # a crystal without a trajectory shows itself as its one frame
    assert app.trajectory.scrub.max == 0 and len(app.trajectory.trajectory) == 1
    row = app.candidate_panel.rows[parent.id]
    button = next(c for c in row.children if "mgl-vary-button" in getattr(c, "_dom_classes", ()))
    app.candidate_panel.vary_strength.value = 0.1
    button.click()  # on the worker thread, as from the browser
    app.wait()
    assert app.error is None, app.status.value
    new = app.candidates[5:]
    assert len(new) == 4 and all(len(c.structure) == len(parent.structure) for c in new), app.status.value
    request = app.last_run.request
    assert request.strength == 0.1 and request.parent.num_atoms == len(parent.structure)
    assert request.to_dict()["parent"]["sha256"] == request.parent.sha256  # recorded by its hash, not the crystal
    named = app.table.set_index("id")["parent"]
    assert named[parent.id] == "" and all(named[c.id].startswith(f"{request.parent.formula} (sha256 "
                                                                 f"{request.parent.sha256[:12]}, t0=0.1)") for c in new)
    assert app.vary(parent.id, 1.5) is None and "strength=1.5" in app.status.value  # named, before any work
    assert len(app.candidates) == 9
    # with the symmetry control set, a variation keeps the parent's own group and sites (its primitive cell)
    app.symmetry.value = "mp20"
    request = app.vary(parent.id, 0.1)
    assert app.error is None, app.status.value
    assert request.symmetry == "225:ab" and request.sampling.num_atoms == 2
    assert len(app.candidates) == 13 and all(len(c.structure) == 2 for c in app.candidates[9:])
    app.symmetry.value = ""


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
    assert app.hull.figure.layout.title.yanchor == "bottom"  # a new title text keeps its row under the mode bar
    assert _notes(app.hull.figure) == [] and _notes(app.pareto.figure) == [] and app.pareto.figure.layout.yaxis.visible

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
    per_candidate = {n for n in names if n.startswith(("1-1_", "1-3_"))}
    for cid, f in formulas.items():  # the random tiny model makes huge cells: no powder pattern, and the review says why
        rev = app.reviewer.reviews[cid]
        has_xrd = {f"{cid}_{f}_xrd.csv", f"{cid}_{f}_xrd.png"} <= per_candidate
        assert has_xrd == (rev.xrd is not None), rev.xrd_note
        assert rev.xrd is not None or rev.xrd_note.startswith("a cell of ")
        assert len([n for n in per_candidate if n.startswith(f"{cid}_")]) in (2 + 2 * has_xrd, 3 + 2 * has_xrd)  # CIF, POSCAR, XRD csv+png; symmetrized CIF unless spglib fails
    assert {"report.csv", "report.json", "report.html", "nearest_known.csv"} <= set(names)
    assert list(csv["id"]) == ["1-1", "1-3"] and csv["energy_above_hull"].tolist() == pytest.approx([0.05, 0.15])
    assert rep["checkpoint"] == ckpts["mag"] and rep["guidance_scale"] == 2.0
    assert rep["targets"] == {"dft_mag_density": 0.12} and rep["chemical_system"] == "Fe-Li-O"
    assert rep["evaluation_protocol"]["relaxer"] == "fake" and rep["symprec"] == 0.1 and rep["timestamp"]


def _notes(figure) -> list[str]:
    return [a.text for a in figure.layout.annotations]


def test_plot_titles_have_a_row_of_their_own_under_the_mode_bar():
    for plot in (HullPlot(), ParetoPlot()):
        layout = plot.figure.layout
        # the title's box sits on the plot area's top edge and grows upwards: [t - pad - 1.3 x font size, t - pad]
        # px from the top of the figure; plotly's mode bar (22 px buttons, 2 px from the top) ends at 24 px
        assert (layout.title.yref, layout.title.y, layout.title.yanchor) == ("paper", 1, "bottom")
        title_top = layout.margin.t - layout.title.pad.b - 1.3 * layout.title.font.size
        assert title_top == pytest.approx(42.5) and title_top >= 24 + 10
        assert layout.height - layout.margin.t - layout.margin.b == 270  # the plot area keeps 270 px
        # what is left: download, zoom, pan, reset ("Share chart" would upload the data to Plotly Cloud)
        assert {"select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d", "sendChartToCloud"} == set(layout.modebar.remove)


def test_empty_plots_say_what_will_appear_and_when():
    hull, pareto = HullPlot(), ParetoPlot()
    assert _notes(hull.figure) == ["The convex hull of the target chemistry<br>appears after Generate"]
    assert hull.figure.layout.xaxis.visible is False and hull.figure.layout.yaxis.visible is False
    assert _notes(pareto.figure) == ["The Pareto front of the candidates<br>appears after Generate and Evaluate"]
    assert pareto.figure.layout.xaxis.visible is False and pareto.figure.layout.yaxis.visible is False
    pareto.x.value = "volume_per_atom"  # neither axis needs an evaluation
    assert _notes(pareto.figure) == ["The Pareto front of the candidates<br>appears after Generate"]

    # candidates without evaluation: E_hull and density missing, volume and HHI known
    pareto.x.value = "energy_above_hull"
    pareto.update(pd.DataFrame({"id": ["a", "b"], "formula": ["Li2O", "LiO2"], "energy_above_hull": [np.nan, np.nan],
                                "hhi_score": [1600.0, 1800.0], "density": [np.nan, np.nan], "volume_per_atom": [12.5, 9.0]}))
    assert _notes(pareto.figure) == ["The Pareto front appears after Evaluate<br>(which computes energy_above_hull)"]
    assert pareto.figure.layout.title.text == "Pareto front: 0 of 2 optimal (2 without values)"
    pareto.x.value = "density"  # not an evaluation column: nothing to wait for
    assert _notes(pareto.figure) == ["No candidate has values of both<br>density and hhi_score"]
    pareto.x.value = "volume_per_atom"  # both minimised: a (12.5, 1600) and b (9.0, 1800) are both optimal
    assert _notes(pareto.figure) == [] and pareto.figure.layout.xaxis.visible and pareto.figure.layout.yaxis.visible
    assert sorted(pareto.figure.data[1].x) == [9.0, 12.5] and pareto.figure.layout.title.text == "Pareto front: 2 of 2 optimal"
    pareto.update(pareto.table.iloc[:0])  # emptied again
    assert _notes(pareto.figure) == ["The Pareto front of the candidates<br>appears after Generate"]

    hull.update(None, message="hull for Li-O unavailable: no reference data")
    assert _notes(hull.figure) == [plots.HULL_NOT_DRAWN] and "unavailable" in hull.message.value
    hull.update(None, placeholder="The convex hull appears once crystals are evaluated")
    assert _notes(hull.figure) == ["The convex hull appears once crystals are evaluated"] and hull.message.value == ""


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


# ------------------------------------------------------------------------------------ campaign panel
# A campaign folder written by hand, as the Ray driver would: CampaignFolder.prepare, then write_sample and
# write_evaluation with results in the format of mattergen_lab.campaign.tasks (no Ray, no model, no relaxer).

CAMPAIGN = {
    "checkpoint": "mgl_mp20_small_chemical_system", "num_samples": 2, "batch_size": 2, "num_steps": 4, "seed": 0,
    "conditions": {"chemical_system": ["Li-O", "Na-Cl"]}, "guidance_scale": 1.0,
    "evaluate": {"relaxer": "chgnet", "batch_size": 2},
}


@functools.lru_cache(maxsize=2)  # read only (as_dict); from_spacegroup takes 0.15 s per crystal
def _crystals(relaxed: bool = False) -> dict[str, object]:
    """Two crystals per arm: a0 = Li2O (antifluorite), LiO (rock salt); a1 = NaCl (rock salt), NaCl (CsCl type)."""
    from pymatgen.core import Lattice, Structure

    d = 0.02 if relaxed else 0.0  # relaxation makes every cell 0.02 Å larger
    fcc = "Fm-3m"
    return {
        "a0-0": Structure.from_spacegroup(fcc, Lattice.cubic(4.61 + d), ["Li", "O"], [[0.25, 0.25, 0.25], [0, 0, 0]]),
        "a0-1": Structure.from_spacegroup(fcc, Lattice.cubic(4.10 + d), ["Li", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "a1-0": Structure.from_spacegroup(fcc, Lattice.cubic(5.64 + d), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "a1-1": Structure(Lattice.cubic(3.30 + d), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    }


#: (E_hull eV/atom, novel) per crystal: stable = E_hull <= 0.1; S.U.N. = a1-0 only (a0-0 is known Li2O)
CAMPAIGN_RESULTS = {"a0-0": (0.0, False), "a0-1": (0.25, True), "a1-0": (0.02, True), "a1-1": (0.30, True)}


def _write_sample(folder, arm: str) -> None:
    ids = [f"{arm}-0", f"{arm}-1"]
    folder.write_sample({"key": f"sample/{arm}/c0", "ids": ids, "structures": [_crystals()[i].as_dict() for i in ids],
                         "seconds": 1.0, "worker": "test:1"})


def _write_evaluation(folder, arm: str) -> None:
    ids, relaxed = [f"{arm}-0", f"{arm}-1"], _crystals(relaxed=True)
    rows = []
    for i in ids:
        s, (e_hull, novel) = relaxed[i], CAMPAIGN_RESULTS[i]
        rows.append({"id": i, "formula": s.composition.reduced_formula, "chemical_system": s.composition.chemical_system,
                     "num_atoms": len(s), "energy": -4.0 * len(s), "energy_per_atom": -4.0,
                     "formation_energy_per_atom": -1.0 + e_hull, "energy_above_hull": e_hull, "stable": e_hull <= 0.1,
                     "is_novel": novel, "novel_system": False, "rmsd_from_relaxation": 0.01, "comp_valid": True,
                     "structure_valid": True, "structure_comp_valid": True, "relax_status": "converged", "error": None})
    folder.write_evaluation({"key": f"evaluate/{arm}/c0/b0", "rows": rows, "relaxed": [relaxed[i].as_dict() for i in ids],
                             "protocol": {"relaxer": "chgnet"}, "seconds": 2.0, "worker": "test:2"})


@pytest.fixture
def campaign(tmp_path):
    from mattergen_lab.campaign import CampaignFolder, CampaignSpec

    folder = CampaignFolder(tmp_path / "campaign")
    folder.prepare(CampaignSpec.from_dict(CAMPAIGN))
    _write_sample(folder, "a0")
    _write_evaluation(folder, "a0")
    return folder


def _points(figure, trace: int) -> int:
    return len(figure.data[trace].x or ())


def test_campaign_panel_follows_the_folder_as_tasks_finish(campaign):
    from mattergen_lab.widgets import CampaignPanel

    panel = CampaignPanel(campaign.path, reference=FakeReference())
    text = panel.counts.value
    assert text.startswith("<b>running</b>: sampling 1/2 tasks, evaluation 1/2 tasks; 2/4 crystals sampled, 2 evaluated; 0 failed tasks")
    assert "all arms: 2 evaluated, stable 50%, S.U.N. 0%" in text and "a1 (" not in text  # one arm evaluated so far
    assert "a0 (chemical_system=Li-O, γ=1): 2 evaluated, stable 50%, S.U.N. 0%" in text
    assert [c.id for c in panel.candidates] == ["a0-0", "a0-1"]
    assert panel.candidates[0].structure.lattice.a == pytest.approx(4.63)  # the relaxed crystal, not the generated one
    assert panel.candidates[0].request.chemical_system == "Li-O" and panel.candidates[0].trajectory[0].step == 4
    # hull of Li-O (the first arm's target): Li, O, Li2O reference entries and both crystals, coloured by E_hull
    assert panel.system.options == ("Li-O", "Cl-Na") and panel.system.value == "Li-O"
    assert panel.hull.data.kind == "binary" and _points(panel.hull.figure, 1) == 3
    assert list(panel.hull.figure.data[2].customdata) == ["a0-0", "a0-1"]
    assert list(panel.hull.figure.data[2].marker.color) == pytest.approx([0.0, 0.25])
    assert _points(panel.pareto.figure, 0) + _points(panel.pareto.figure, 1) == 2

    _write_sample(campaign, "a1")  # the second sampling task lands: nothing changes until a refresh
    assert "sampling 1/2 tasks" in panel.counts.value
    status = panel.refresh()
    assert status["sample_tasks_done"] == 2 and "sampling 2/2 tasks" in panel.counts.value
    assert "4/4 crystals sampled, 2 evaluated" in panel.counts.value
    assert [label for label, _ in panel.selection.options][2:] == ["a1-0  NaCl  not evaluated", "a1-1  NaCl  not evaluated"]
    assert _points(panel.pareto.figure, 0) + _points(panel.pareto.figure, 1) == 2  # not evaluated: no point
    assert "(2 without values)" in panel.pareto.figure.layout.title.text

    campaign.record_failure("evaluate/a1/c0/b0", "Traceback ...\nRuntimeError: relaxer died")
    panel.refresh()
    assert "1 failed tasks" in panel.counts.value and "evaluate/a1/c0/b0 failed: RuntimeError: relaxer died" in panel.counts.value
    _write_evaluation(campaign, "a1")  # the retry succeeds
    panel.refresh()
    text = panel.counts.value
    assert text.startswith("<b>finished</b>: sampling 2/2 tasks, evaluation 2/2 tasks; 4/4 crystals sampled, 4 evaluated; 0 failed")
    assert "all arms: 4 evaluated, stable 50%, S.U.N. 25%" in text
    assert "a0 (chemical_system=Li-O, γ=1): 2 evaluated, stable 50%, S.U.N. 0%" in text
    assert "a1 (chemical_system=Na-Cl, γ=1): 2 evaluated, stable 50%, S.U.N. 50%" in text
    assert panel.table.set_index("id")["energy_above_hull"].to_dict() == pytest.approx(
        {k: v[0] for k, v in CAMPAIGN_RESULTS.items()})
    assert _points(panel.pareto.figure, 0) + _points(panel.pareto.figure, 1) == 4
    mask = design.pareto_front(panel.table, "energy_above_hull", "hhi_score")
    assert sorted(panel.pareto.figure.data[1].customdata) == sorted(panel.table["id"][mask])
    assert _points(panel.hull.figure, 2) == 2  # the Na-Cl crystals are not in the Li-O hull
    panel.system.value = "Cl-Na"  # the fake reference has no Na or Cl entries: said inline, no exception
    assert panel.hull.data is None and "hull for Cl-Na unavailable" in panel.hull.message.value
    assert _notes(panel.hull.figure) == [plots.HULL_NOT_DRAWN]


def test_campaign_panel_sends_the_selection_to_the_app_and_exports_it(campaign, app, tmp_path):
    from mattergen_lab.widgets import CampaignPanel

    _write_sample(campaign, "a1")
    _write_evaluation(campaign, "a1")
    panel = CampaignPanel(campaign.path, app=app, reference=FakeReference())
    panel.send_button.click()  # nothing selected: said inline
    assert "no crystals selected" in panel.message.value and app.candidates == []
    panel.selection.value = ("a0-1", "a1-0")
    panel.send_button.click()
    assert panel.message.value == "Sent 2 crystals to the design app."
    assert [c.id for c in app.candidates] == ["a0-1", "a1-0"] and list(app.table["id"]) == ["a0-1", "a1-0"]
    assert app.table["energy_above_hull"].tolist() == pytest.approx([0.25, 0.02])
    assert app.table["novel_unique_stable"].tolist() == [False, True]
    assert len(app.candidate_panel.body.children) == 2 and app.protocol["relaxer"] == "chgnet"
    assert panel.send_to_app(["a1-0"]) == [] and len(app.candidates) == 2  # already there: not added twice
    app.select("a1-0")
    assert app.trajectory.shown.step == 4 and len(app.trajectory.shown.atomic_numbers) == 8
    with pytest.raises(ValueError, match=r"unknown crystal ids \['a9-0'\]"):
        panel.send_to_app(["a9-0"])

    out = app.export(tmp_path / "app.zip", ["a1-0"])  # the app's own export of a campaign crystal
    with zipfile.ZipFile(out) as zf:
        assert "a1-0_NaCl_P1.cif" in zf.namelist()
        assert pd.read_csv(zf.open("report.csv"))["energy_above_hull"].tolist() == pytest.approx([0.02])
    panel.path.value = str(tmp_path / "panel.zip")
    panel.export_button.click()  # the panel's export: the same selection, straight from the folder
    assert panel.message.value.startswith("Wrote ")
    with zipfile.ZipFile(tmp_path / "panel.zip") as zf:
        rep = json.loads(zf.read("report.json"))
        csv = pd.read_csv(zf.open("report.csv"))
    assert list(csv["id"]) == ["a0-1", "a1-0"] and csv["energy_above_hull"].tolist() == pytest.approx([0.25, 0.02])
    assert rep["campaign"] == str(campaign.path) and rep["chemical_system"] == ["Li-O", "Cl-Na"]
    assert rep["evaluation_protocol"]["relaxer"] == "chgnet" and rep["guidance_scale"] == 1.0


def test_campaign_panel_auto_refresh_stops_when_finished_or_closed(campaign):
    import time

    from mattergen_lab.widgets import CampaignPanel

    panel = CampaignPanel(campaign.path, refresh_s=0.05, reference=FakeReference())
    assert panel.following
    _write_sample(campaign, "a1")
    _write_evaluation(campaign, "a1")
    deadline = time.monotonic() + 20
    while panel.following and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not panel.following and panel.status["finished"] and panel.counts.value.startswith("<b>finished</b>")
    assert len(panel.candidates) == 4

    other = CampaignPanel(campaign.path.parent / "campaign", reference=FakeReference())
    assert not other.following  # no refresh_s: by hand only
    running = campaign.path.parent / "second"
    from mattergen_lab.campaign import CampaignFolder, CampaignSpec

    CampaignFolder(running).prepare(CampaignSpec.from_dict(CAMPAIGN))
    panel = CampaignPanel(running, refresh_s=0.05, reference=FakeReference())
    time.sleep(0.2)
    assert panel.following and panel.counts.value.startswith("<b>running</b>: sampling 0/2 tasks")
    panel.close()
    assert not panel.following


def test_campaign_panel_refuses_a_folder_that_is_not_a_campaign(tmp_path):
    from mattergen_lab.widgets import CampaignPanel

    with pytest.raises(FileNotFoundError, match=f"campaign folder {tmp_path / 'nowhere'} does not exist"):
        CampaignPanel(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a campaign folder"):
        CampaignPanel(tmp_path)
    (tmp_path / "campaign.json").write_text('{"spec": {"num_samples": 2}}')
    with pytest.raises(ValueError, match=f"{tmp_path} is not a readable campaign folder: a campaign spec needs a checkpoint"):
        CampaignPanel(tmp_path)


def test_review_opens_from_the_table_and_follows_plot_clicks(app, tmp_path):
    app.auto_evaluate.value = True
    app.generate()
    review_buttons = [r.children[2] for r in app.candidate_panel.rows.values()]
    assert all("mgl-review-button" in b._dom_classes for b in review_buttons)
    assert app.reviewer.panel.layout.display == "none"  # closed until asked for
    review_buttons[1].click()
    assert app.reviewer.wait(120) and app.reviewer.error is None
    cid = list(app.candidate_panel.rows)[1]
    panel, review = app.reviewer.panel, app.reviewer.reviews[cid]
    assert app.selected == cid and panel.layout.display is None and panel.review is review
    assert panel.mode == "nglview" and "nglview chosen (viewer=&#x27;nglview&#x27;)" in panel.viewer_note.value
    assert review.nearest.reference == "test" and review.nearest.by_composition[0].material_id in {"k-LiO", "k-FeO", "k-Fe"}
    assert "Novelty:" in panel.facts.value and "Nearest known by composition" in panel.known.value
    # the XRD image (an Image widget: the review is drawn from a worker thread), or the reason there is none
    assert (panel.xrd_image.value[:8] == b"\x89PNG\r\n\x1a\n") == (review.xrd is not None)
    assert review.xrd is not None or f"No XRD: {review.xrd_note}" in panel.xrd_note.value
    assert review.density == pytest.approx(app.table.set_index("id").loc[cid, "density"])
    # a click on the Pareto plot moves the open review to that candidate
    optimal = app.pareto.figure.data[1]
    target = next(c for c in optimal.customdata if c != cid)
    app.pareto._on_click(optimal, types.SimpleNamespace(point_inds=[list(optimal.customdata).index(target)]), None)
    assert app.reviewer.wait(120) and app.selected == target and panel.review.id == target
    with pytest.raises(ValueError, match="'nope' is not in this session"):
        app.open_review("nope")
    panel.close_button.click()
    assert panel.layout.display == "none" and app.reviewer.shown is None


CTK_ADDRESSING = '''
import http.server, json, os, re, threading, urllib.request
from pymatgen.core import Lattice, Structure
from mattergen_lab.widgets import review

class NotFound(http.server.BaseHTTPRequestHandler):  # a Jupyter server without jupyter-server-proxy
    def do_GET(self):
        self.send_response(404); self.end_headers()
    def log_message(self, *a): pass

jupyter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
threading.Thread(target=jupyter.serve_forever, daemon=True).start()
nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
out = {}
srv = review.CrystalToolkitServer()
u = srv.url(nacl)
page = urllib.request.urlopen(u, timeout=20).read().decode()
asset = re.findall(r'<script src="([^"]+)"', page)[0]
out["direct"] = dict(proxied=srv.proxied, how=srv.how, url=u, port=srv.port, asset=asset,
                     asset_status=urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{asset}", timeout=20).status)
review._jupyter_server = lambda: {"url": f"http://127.0.0.1:{jupyter.server_port}/", "base_url": "/", "token": ""}
srv = review.CrystalToolkitServer()
out["no_proxy"] = dict(proxied=srv.proxied, how=srv.how)
os.environ["JUPYTERHUB_SERVICE_PREFIX"] = "/user/x/"
try:
    review.CrystalToolkitServer()
    out["hub"] = "started"
except RuntimeError as exc:
    out["hub"] = str(exc)
print("RESULT " + json.dumps(out))
'''


def test_crystal_toolkit_server_addressing(tmp_path):
    """Without a proxying Jupyter server the Dash pages load on 127.0.0.1 under the same prefix, and the view
    says why; on a hub that does not proxy, the server refuses with the fix (the view then falls back to
    nglview with that reason). Through a real proxy: tests/test_browser_review.py. A subprocess, because
    importing Crystal Toolkit changes how pymatgen objects display."""
    import os
    import subprocess
    import sys

    importorskip("crystal_toolkit")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), OMP_NUM_THREADS="1")  # no running Jupyter server
    proc = subprocess.run([sys.executable, "-c", CTK_ADDRESSING], env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    d, port = out["direct"], out["direct"]["port"]
    assert d["proxied"] is False and d["how"] == "directly on 127.0.0.1: no Jupyter server found for this kernel"
    assert d["url"].startswith(f"http://127.0.0.1:{port}/proxy/{port}/?s=") and d["asset"].startswith(f"/proxy/{port}/")
    assert d["asset_status"] == 200
    assert out["no_proxy"]["proxied"] is False and "enable the extension: jupyter server extension enable jupyter_server_proxy" in out["no_proxy"]["how"]
    assert out["hub"].startswith("on JupyterHub/Binder the Dash server is reachable only through jupyter-server-proxy: "
                                 "the Jupyter server does not serve")
