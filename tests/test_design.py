"""mattergen_lab.design: requests, checkpoint introspection, streamed runs, Pareto fronts, hull data, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mattergen_lab import design
from mattergen_lab.constants import MASK_Z


def make_checkpoint(folder: Path, conditions: tuple[str, ...] = ()) -> str:
    """A randomly initialised tiny model saved as a checkpoint (enough for streaming and UI tests)."""
    from mattergen_lab.model.io import save_checkpoint
    from mattergen_lab.model.score_model import ScoreModel

    torch.manual_seed(0)
    model = ScoreModel.from_preset("tiny", condition_on_adapt=conditions)
    return str(save_checkpoint(folder, model, {"note": "test"}))


@pytest.fixture(scope="module")
def mag_ckpt(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "mag", ("dft_mag_density", "chemical_system"))


# ------------------------------------------------------------------------------------- validation
def test_validate_chemical_system_normalises_and_names_bad_elements():
    assert design.validate_chemical_system("Li-Fe-O") == ["Fe", "Li", "O"]
    assert design.validate_chemical_system(" li, fe  O-O ") == ["Fe", "Li", "O"]
    with pytest.raises(ValueError, match="'Qq' is not an element symbol"):
        design.validate_chemical_system("Li-Qq-O")
    with pytest.raises(ValueError, match="He is an element MatterGen cannot generate"):
        design.validate_chemical_system("He-O")
    with pytest.raises(ValueError, match="empty"):
        design.validate_chemical_system("  ")
    assert len(design.allowed_elements()) == 76


def test_design_request_validation_names_the_value():
    req = design.DesignRequest(checkpoint="x", chemical_system="O-Li-Fe", targets={"hhi_score": 1250}, guidance_scale=2)
    assert req.chemical_system == "Fe-Li-O"
    assert req.targets == {"hhi_score": 1250.0} and req.guidance_scale == 2.0
    assert req.conditions(["hhi_score"]) == {"hhi_score": 1250.0}  # chemical system: mask only
    assert req.conditions(["hhi_score", "chemical_system"]) == {"hhi_score": 1250.0, "chemical_system": "Fe-Li-O"}
    assert req.to_dict()["targets"] == {"hhi_score": 1250.0}
    symmetric = design.DesignRequest(checkpoint="x", symmetry="cubic")  # a space-group adapter: each template's group
    assert symmetric.conditions(["space_group"]) == {"space_group": "template"} and symmetric.conditions([]) == {}
    for kwargs, message in [
        ({"guidance_scale": -1.0}, "guidance_scale=-1.0"),
        ({"num_samples": 0}, "num_samples=0"),
        ({"num_steps": 2.5}, "num_steps=2.5"),
        ({"seed": -3}, "seed=-3"),
        ({"targets": {"dft_band_gap": float("nan")}}, "dft_band_gap=nan"),
        ({"targets": {"dft_band_gap": "high"}}, "dft_band_gap='high'"),
        ({"chemical_system": "Li-Zz"}, "'Zz'"),
        ({"checkpoint": " "}, "checkpoint"),
    ]:
        with pytest.raises(ValueError, match=message):
            design.DesignRequest(**{"checkpoint": "x", **kwargs})


def test_property_ranges_from_mp20(data_dir):
    ranges = design.property_ranges(data_dir)
    assert set(ranges) == set(design.DESIGN_PROPERTIES)
    mag, hhi, gap, bulk = (ranges[k] for k in ("dft_mag_density", "hhi_score", "dft_band_gap", "dft_bulk_modulus"))
    assert mag.low == 0 and mag.high == pytest.approx(0.1551, abs=2e-4) and mag.unit == "μB/Å³"
    assert gap.high == pytest.approx(6.75, abs=0.01) and gap.unit == "eV"
    assert bulk.high == pytest.approx(327, abs=1) and bulk.unit == "GPa"
    assert 900 <= hhi.low <= 930 and hhi.high == pytest.approx(9500, abs=10)
    assert hhi.default == 1250 and "MP-20 val" in mag.source


def test_property_ranges_fall_back_without_data(tmp_path):
    assert design.property_ranges(tmp_path) == design.FALLBACK_RANGES


# ------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_options_say_why_unavailable(mag_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("MATTERGEN_LAB_CHECKPOINTS", str(tmp_path / "empty-cache"))
    assert design.checkpoint_properties(mag_ckpt) == ("dft_mag_density", "chemical_system")
    assert design.checkpoint_properties("dft_mag_density_hhi_score") == ("dft_mag_density", "hhi_score")
    with pytest.raises(ValueError, match="'no-such-checkpoint' is not a registry name"):
        design.checkpoint_properties("no-such-checkpoint")

    opts = {o.value: o for o in design.checkpoint_options(["dft_band_gap"], paths=[mag_ckpt], online=False)}
    assert not opts[mag_ckpt].available
    assert opts[mag_ckpt].reason.startswith("dft_band_gap: not a conditioning property of this checkpoint")
    assert opts["dft_band_gap"].reason == "official weights not downloaded and no internet"
    assert "not a conditioning property" in opts["mattergen_base"].reason
    # offline, only the bundled band-gap adapter can take a band-gap target
    assert {v for v, o in opts.items() if o.available} == {"mgl_mp20_small_dft_band_gap"}

    online = {o.value: o for o in design.checkpoint_options(["dft_mag_density"], paths=[mag_ckpt], online=True)}
    assert {v for v, o in online.items() if o.available} == {
        mag_ckpt, "dft_mag_density", "dft_mag_density_hhi_score",
        "mgl_mp20_small_dft_mag_density", "mgl_mp20_small_dft_mag_density_hhi_score"}
    assert online["dft_mag_density"].note == "downloads 512 MB on first use"
    # no targets: every checkpoint can be used unconditionally (a chemical system is a mask for any model)
    assert all(o.available for o in design.checkpoint_options([], paths=[mag_ckpt], online=True))
    bad = design.checkpoint_options([], paths=[str(tmp_path)], online=True)[0]
    assert not bad.available and bad.reason.startswith("cannot read checkpoint")


# ------------------------------------------------------------------------------------- streamed runs
def test_run_design_streams_frames_and_applies_the_hard_mask(mag_ckpt):
    req = design.DesignRequest(checkpoint=mag_ckpt, chemical_system="Li-Fe-O", targets={"dft_mag_density": 0.1},
                               guidance_scale=1.0, num_samples=3, num_steps=6, every=2, batch_size=2, seed=1)
    frames: list[design.DesignFrame] = []
    run = design.run_design(req, on_frame=frames.append, id_prefix="a-")
    # per batch: steps 0, 2, 4, 6 and the final frame
    assert [(f.batch, f.step, f.final) for f in frames] == [
        (0, 0, False), (0, 2, False), (0, 4, False), (0, 6, False), (0, 6, True),
        (1, 0, False), (1, 2, False), (1, 4, False), (1, 6, False), (1, 6, True),
    ]
    assert [f.done for f in frames] == [0, 2, 4, 6, 6, 6, 8, 10, 12, 12] and frames[0].total == 12
    assert [len(f.snapshots) for f in frames] == [2] * 5 + [1] * 5
    assert not run.cancelled and [c.id for c in run.candidates] == ["a-0", "a-1", "a-2"]
    assert run.checkpoint_properties == ("dft_mag_density", "chemical_system")
    allowed = {3, 8, 26, MASK_Z}  # Li, O, Fe and the mask token
    for cand in run.candidates:
        traj = cand.trajectory
        assert [s.step for s in traj] == [0, 2, 4, 6, 6]
        n = len(cand.structure)
        assert traj[0].num_masked == n and traj[-1].num_masked == 0  # the prior is all MASK
        assert all(set(s.atomic_numbers.tolist()) <= allowed for s in traj)
        assert set(cand.structure.composition.chemical_system.split("-")) <= {"Fe", "Li", "O"}
        assert cand.oracles["formula"] == cand.structure.composition.reduced_formula
        assert 1 <= cand.oracles["space_group"] <= 230
        placeholder = traj[0].to_structure()
        assert placeholder.composition.reduced_formula == "He" and len(placeholder) == n

    table = design.candidate_table(run.candidates)
    assert list(table["id"]) == ["a-0", "a-1", "a-2"] and table["in_target_system"].all()
    assert (table["guidance_scale"] == 1.0).all() and set(table["targets"]) == {"dft_mag_density=0.1"}
    assert table["energy_above_hull"].isna().all()


def test_run_design_cancel_keeps_finished_batches(mag_ckpt):
    req = design.DesignRequest(checkpoint=mag_ckpt, num_samples=4, num_steps=4, every=1, batch_size=2)
    cancel = threading.Event()

    def on_frame(frame):
        if frame.batch == 1 and frame.step == 2:
            cancel.set()

    run = design.run_design(req, on_frame=on_frame, cancel=cancel)
    assert run.cancelled and [c.id for c in run.candidates] == ["0", "1"]


def test_run_design_rejects_targets_the_checkpoint_cannot_condition_on(mag_ckpt):
    req = design.DesignRequest(checkpoint=mag_ckpt, targets={"dft_band_gap": 2.0}, num_samples=1, num_steps=2)
    with pytest.raises(ValueError, match="'dft_band_gap' is not supported"):
        design.run_design(req)


# ------------------------------------------------------------------------------------- Pareto and hull
def test_pareto_front_known_answer():
    df = pd.DataFrame({
        "id": list("abcdefg"),
        "e_hull": [0.00, 0.10, 0.05, 0.20, 0.05, np.nan, 0.00],
        "hhi": [3000, 1000, 2000, 900, 2500, 100, 3000],
    })
    # minimise both: a (0, 3000) tied with g; c (0.05, 2000) dominates e; b, d on the front; f has NaN
    assert design.pareto_front(df, "e_hull", "hhi").tolist() == [True, True, True, True, False, False, True]
    # maximise hhi, minimise e_hull: a and g (0, 3000) dominate everything else
    assert design.pareto_front(df, "e_hull", "hhi", maximize=(False, True)).tolist() == [True, False, False, False, False, False, True]
    with pytest.raises(ValueError, match="'nope'"):
        design.pareto_front(df, "nope", "hhi")


def _li_o_diagram():
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    entries = [PDEntry(Composition(f), e, name=f) for f, e in [("Li", -1.9), ("O", -4.9), ("Li2O", -14.3), ("Li2O2", -19.0)]]
    return PhaseDiagram(entries)


def test_hull_data_places_candidates_at_hull_plus_e_hull():
    pd_ = _li_o_diagram()
    data = design.hull_data(pd_, [
        {"id": "c1", "formula": "Li2O", "energy_above_hull": 0.1},
        {"id": "c2", "formula": "FeO", "energy_above_hull": 0.0},  # outside Li-O: left out
        {"id": "c3", "formula": "LiO", "energy_above_hull": float("nan")},  # not evaluated: left out
    ])
    assert data.kind == "binary" and data.elements == ("Li", "O")
    ref = {r["label"]: r for r in data.reference}
    # Li2O: -14.3/3 - (2/3 (-1.9) + 1/3 (-4.9)) = -1.8667 eV/atom at x_O = 1/3
    assert ref["Li2O"]["x"] == pytest.approx(1 / 3) and ref["Li2O"]["y"] == pytest.approx(-14.3 / 3 + 2.9)
    assert ref["Li"]["y"] == pytest.approx(0.0) and ref["Li2O"]["stable"]
    assert [c["id"] for c in data.candidates] == ["c1"]
    assert data.candidates[0]["y"] == pytest.approx(-14.3 / 3 + 2.9 + 0.1)
    assert data.lines[0][0][0] == 0.0 and data.lines[0][0][-1] == 1.0


# ------------------------------------------------------------------------------------- export
def _structures():
    from pymatgen.core import Lattice, Structure

    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.2), ["Li", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    p1 = Structure(Lattice.orthorhombic(3.1, 4.0, 5.2), ["Fe", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.1], [0.2, 0.7, 0.6]])
    return [rocksalt, p1]


def _candidates():
    req = design.DesignRequest(checkpoint="runs/magnets/best", chemical_system="Li-Fe-O",
                               targets={"dft_mag_density": 0.12}, guidance_scale=2.0, num_samples=2)
    return [design.Candidate(f"1-{i}", s, [], req, design.candidate_oracles(s)) for i, s in enumerate(_structures())]


def test_export_candidates_contents(tmp_path):
    from pymatgen.core import Structure
    from pymatgen.io.vasp import Poscar

    cands = _candidates()
    table = design.candidate_table(cands)
    protocol = {"relaxer": "CHGNet 0.3.0", "stability_threshold": 0.1, "reference": "mp20", "N": 2}
    report = design.design_report(cands, evaluation_protocol=protocol)
    out = design.export_candidates([c.structure for c in cands], table, tmp_path / "review.zip", report=report, symprec=0.1)
    assert out == tmp_path / "review.zip"
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        assert names == {
            "1-0_Li2O2_sym_symprec0.1.cif", "1-0_Li2O2_P1.cif", "1-0_Li2O2_POSCAR",
            "1-1_FeO2_sym_symprec0.1.cif", "1-1_FeO2_P1.cif", "1-1_FeO2_POSCAR",
            "report.csv", "report.json", "report.html",
        }
        sym_text = zf.read("1-0_Li2O2_sym_symprec0.1.cif").decode()
        assert sym_text.startswith("# symmetrized with spglib: symprec=0.1 Å") and "(225)" in sym_text.splitlines()[0]
        sym = Structure.from_str(sym_text, fmt="cif")
        assert sym.composition.reduced_formula == "Li2O2" and len(sym) == 8  # conventional rock-salt cell
        p1 = Structure.from_str(zf.read("1-1_FeO2_P1.cif").decode(), fmt="cif")
        assert p1.composition == cands[1].structure.composition
        assert np.allclose(p1.lattice.abc, (3.1, 4.0, 5.2))
        poscar = Poscar.from_str(zf.read("1-0_Li2O2_POSCAR").decode())
        assert poscar.structure.composition == cands[0].structure.composition
        rep = json.loads(zf.read("report.json"))
        csv = pd.read_csv(zf.open("report.csv"))
        page = zf.read("report.html").decode()
    assert rep["symprec"] == 0.1 and rep["angle_tolerance"] == 5.0
    assert rep["targets"] == {"dft_mag_density": 0.12} and rep["chemical_system"] == "Fe-Li-O"
    assert rep["checkpoint"] == "runs/magnets/best" and rep["guidance_scale"] == 2.0
    assert rep["evaluation_protocol"] == protocol and rep["num_candidates"] == 2
    assert datetime.fromisoformat(rep["timestamp"]).tzinfo is not None
    assert [c["symmetrized_space_group"] for c in rep["candidates"]] == [225, cands[1].oracles["space_group"]]
    assert rep["requests"]["1-1"]["guidance_scale"] == 2.0
    assert list(csv["id"]) == ["1-0", "1-1"] and list(csv["symmetrized_space_group"]) == [225, cands[1].oracles["space_group"]]
    assert "Candidates for synthesis review" in page and "FeO2" in page and "CHGNet 0.3.0" in page


def test_export_is_atomic(tmp_path, monkeypatch):
    cands = _candidates()
    table = design.candidate_table(cands)
    target = tmp_path / "review.zip"
    target.write_bytes(b"previous export")
    calls = []

    def failing_poscar(structure, comment):
        calls.append(comment)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return "poscar"

    monkeypatch.setattr(design.export, "_poscar", failing_poscar)
    with pytest.raises(RuntimeError, match="disk full"):
        design.export_candidates([c.structure for c in cands], table, target, report={})
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["review.zip"]  # no temp file left behind
    with pytest.raises(ValueError, match="must end in .zip"):
        design.export_candidates([c.structure for c in cands], table, tmp_path / "x.tar", report={})
    with pytest.raises(ValueError, match="2 structures for 1 table rows"):
        design.export_candidates([c.structure for c in cands], table.iloc[:1], target, report={})


# ------------------------------------------------------------------------------------- architecture
def test_core_never_imports_ui_libraries():
    """Import every core module in a fresh interpreter; no UI library may be loaded."""
    code = r"""
import importlib, pkgutil, sys
import mattergen_lab
names = [m.name for m in pkgutil.walk_packages(mattergen_lab.__path__, "mattergen_lab.")
         if not m.name.startswith("mattergen_lab.widgets")]
for name in names:
    importlib.import_module(name)
ui = sorted(m for m in sys.modules if m.split(".")[0] in ("ipywidgets", "nglview", "plotly", "anywidget", "IPython"))
print(len(names), "modules;", "UI:", ui)
assert "mattergen_lab.design" in names, names
assert not ui, ui
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "UI: []" in res.stdout


def test_bulk_modulus_target_drives_the_official_ml_bulk_modulus_adapter():
    from mattergen_lab.design import DesignRequest, property_for

    assert property_for("dft_bulk_modulus", ("ml_bulk_modulus",)) == "ml_bulk_modulus"
    assert property_for("dft_bulk_modulus", ("dft_bulk_modulus", "ml_bulk_modulus")) == "dft_bulk_modulus"
    assert property_for("dft_band_gap", ("ml_bulk_modulus",)) is None
    request = DesignRequest(checkpoint="x", targets={"dft_bulk_modulus": 250.0})
    assert request.conditions(("ml_bulk_modulus",)) == {"ml_bulk_modulus": 250.0}


def test_request_device_is_validated_and_resolved():
    import torch

    from mattergen_lab.design import DesignRequest

    assert DesignRequest(checkpoint="x", device="cpu").resolved_device() == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert DesignRequest(checkpoint="x").resolved_device() == expected
    with pytest.raises(ValueError, match="device='gpu0' is not a torch device"):
        DesignRequest(checkpoint="x", device="gpu0")


# ------------------------------------------------------------------- issue 26: the export overwrites nothing
def _nacl(scale: float = 1.0):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(5.64 * scale), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_export_member_names_are_unique_whatever_the_ids(tmp_path):
    """Candidate ids x/1 and x_1 became the same member names: one candidate's files replaced the other's."""
    table = pd.DataFrame({"id": ["x/1", "x_1", "y"], "formula": ["NaCl"] * 3})
    path = design.export_candidates([_nacl(), _nacl(1.1), _nacl(1.2)], table, tmp_path / "r.zip", report={})
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        p1 = [n for n in names if n.endswith("_P1.cif")]
        report = json.loads(zf.read("report.json"))
    assert len(names) == len(set(names)) and len(p1) == 3
    assert "y_NaCl_P1.cif" in p1  # no collision, no hash
    assert [c["id"] for c in report["candidates"]] == ["x/1", "x_1", "y"]
    assert len({c["p1_cif"] for c in report["candidates"]}) == 3
    with pytest.raises(ValueError, match=r"candidate id 'y' is given twice \(rows 0 and 1\)"):
        design.export_candidates([_nacl(), _nacl()], pd.DataFrame({"id": ["y", "y"], "formula": ["NaCl"] * 2}),
                                 tmp_path / "d.zip", report={})


def test_export_refuses_disordered_and_oversized_candidates_and_names_the_target_of_a_file_system_error(tmp_path):
    from pymatgen.core import Lattice, Structure

    table = pd.DataFrame({"id": ["good", "bad"], "formula": ["NaCl", "NaKCl"]})
    mixed = Structure(Lattice.cubic(5.64), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"candidate 'bad' \(.*Na0.5.*\) is disordered"):
        design.export_candidates([_nacl(), mixed], table, tmp_path / "r.zip", report={})
    big = _nacl(8.0).make_supercell([8, 8, 8], in_place=False)  # 1,024 atoms
    with pytest.raises(ValueError, match=r"candidate 'bad': 1,024 atoms is more than MAX_EXPORT_ATOMS=1,000"):
        design.export_candidates([_nacl(), big], table, tmp_path / "r.zip", report={})
    (tmp_path / "folder.zip").mkdir()
    with pytest.raises(ValueError, match=r"export path '.*folder.zip' is a folder"):
        design.export_candidates([_nacl()], table[:1], tmp_path / "folder.zip", report={})
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    target = locked / "r.zip" if not os.access(locked, os.W_OK) else Path("/sys/mattergen-lab-test/r.zip")  # root
    try:
        with pytest.raises(ValueError, match=rf"cannot write the export to '{target}': "):
            design.export_candidates([_nacl()], table[:1], target, report={})
    finally:
        locked.chmod(0o755)
    assert not (tmp_path / "r.zip").exists()


def test_design_request_targets_must_be_a_mapping():
    with pytest.raises(ValueError, match=r"targets='dft_band_gap=3' must be a mapping of property to value"):
        design.DesignRequest(checkpoint="x", targets="dft_band_gap=3")


def test_the_checkpoint_chooser_trusts_the_models_config_over_the_registry(tmp_path):
    """Issue 26: an entry of checkpoints.yaml that claims a property its model does not condition on was offered."""
    from mattergen_lab.checkpoints import registry

    band_gap = registry()["mgl_mp20_small_dft_band_gap"]
    reg = tmp_path / "checkpoints.yaml"
    reg.write_text("checkpoints:\n  liar:\n    kind: bundled\n    description: x\n    properties: [hhi_score]\n"
                   f"    training_data: y\n    path: {band_gap.path}\n    sha256: '{band_gap.sha256}'\n")
    (liar,) = design.checkpoint_options(["hhi_score"], registry_path=reg, online=False)
    assert not liar.available and "the registry entry is wrong" in liar.reason


def test_every_candidate_has_its_density_flag_before_any_evaluation():
    """The app's "density ok" column used to show "–" until an evaluation ran, though the flag needs only the cell."""
    from pymatgen.core import Lattice, Structure

    request = design.DesignRequest(checkpoint="mgl_mp20_small", num_samples=2)
    sites = (["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    salt = Structure(Lattice.cubic(3.53), *sites)  # 22 Å³/atom (CsCl-like cell): MP-20-like
    balloon = Structure(Lattice.cubic(60.0), *sites)  # 108,000 Å³/atom: far outside MP-20's 5.8-202
    cands = [design.Candidate("0", salt, [], request, None),
             design.Candidate("1", balloon, [], request, {**design.candidate_oracles(balloon)})]
    del cands[1].oracles["plausible_density"]  # oracles of an older run, without the flag: computed from the cell
    table = design.candidate_table(cands)
    assert table["plausible_density"].tolist() == [True, False]
    assert table["volume_per_atom"].round(0).tolist() == [22.0, 108000.0]
    evaluated = design.candidate_table(cands, pd.DataFrame({"id": ["0"], "energy_above_hull": [0.05]}))
    assert evaluated["plausible_density"].tolist() == [True, False] and evaluated["energy_above_hull"].iloc[0] == 0.05
