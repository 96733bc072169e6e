"""Evaluation: CHGNet relaxation, E_hull against MP-20, S.U.N. flags, RMSD, resumable runs, input errors."""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import types
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Composition, Lattice, Structure
from must_run import importorskip

from mattergen_lab.evaluation import (
    MissingReferenceError,
    ReferenceHull,
    elemental_references,
    evaluate_structures,
    get_relaxer,
    load_reference,
    mp2020_corrected_entry,
    read_structures,
    rmsd_from_relaxation,
    structures_match,
    unique_flags,
)
from mattergen_lab.evaluation import relax as relax_module
from mattergen_lab.evaluation.relax import MP2020, NO_CORRECTION, RelaxConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def mp20_test_structures(data_dir) -> tuple[list[str], list[Structure]]:
    """Four small MP-20 test crystals: GaTe (8 atoms), SmThCN (4), CuNi (2), NaTiVS4 (7)."""
    from mattergen_lab.data import load_mp20

    ds = load_mp20("test", data_dir=data_dir)
    batch = ds.get_batch(list(range(4)), dtype=torch.float64)
    return [str(i) for i in ds.ids[:4]], batch.to_structures()


@pytest.fixture(scope="module")
def chgnet():
    torch.set_num_threads(2)
    return get_relaxer("chgnet")


@pytest.fixture(scope="module")
def mp20_run(mp20_test_structures, chgnet, data_dir):
    """The four MP-20 structures plus a translated, supercell copy of the first one, fully evaluated."""
    ids, structures = mp20_test_structures
    duplicate = structures[0].copy()
    duplicate.translate_sites(list(range(len(duplicate))), [0.13, 0.27, 0.41])
    duplicate.make_supercell([1, 1, 2])
    return evaluate_structures(
        [*structures, duplicate], ids=[*ids, "dup-of-first"], relaxer=chgnet, data_dir=data_dir
    )


# ====================================================================== real MP-20 structures


def test_mp20_structures_relax_stable_and_not_novel(mp20_run, mp20_test_structures):
    table = mp20_run.table
    ids, _ = mp20_test_structures
    first4 = table.iloc[:4]
    assert list(first4["id"]) == ids
    assert (first4["relax_status"] == "converged").all()
    assert (first4["energy_above_hull"] < 0.1).all(), first4[["formula", "energy_above_hull"]]
    assert first4["stable"].all()
    # each is found in MP-20 itself: not novel, matched to its own material id
    assert not first4["is_novel"].any()
    assert list(first4["novelty_match"]) == ids
    assert not first4["novel_unique_stable"].any()
    # CHGNet energies are used as they are: no second MP2020 correction
    assert (table["energy_correction"] == 0).all()
    assert mp20_run.protocol["correction_scheme"] == NO_CORRECTION
    # MP relaxed structures barely move under CHGNet
    assert (first4["rmsd_from_relaxation"] < 0.15).all()
    assert first4["comp_valid"].all() and first4["structure_valid"].all()
    assert (first4["space_group"] > 0).all()


def test_duplicate_is_caught_by_uniqueness(mp20_run):
    assert list(mp20_run.table["is_unique"]) == [True, True, True, True, False]
    metrics = {k: v["value"] for k, v in mp20_run.metrics.items()}
    assert metrics["frac_unique_structures"] == pytest.approx(4 / 5)
    assert metrics["frac_stable_structures"] == pytest.approx(1.0)
    assert metrics["frac_novel_unique_stable_structures"] == 0.0
    assert metrics["frac_successful_jobs"] == 1.0
    assert metrics["avg_energy_above_hull_per_atom"] == pytest.approx(mp20_run.table["energy_above_hull"].mean())


def test_protocol_record_names_everything(mp20_run):
    p = mp20_run.protocol
    assert p["relaxer"] == "chgnet" and p["fmax"] == 0.05 and p["optimizer"] == "FIRE"
    assert p["reference_hull"] == "mp20" and p["reference_hull_entries"] == 45229 + 89
    assert p["stability_threshold"] == 0.1
    assert p["novelty_reference"] == "mp20"
    assert p["novelty_reference_structures"] == 9046 + 9047 + 6041
    assert p["novelty_reference_proxies"] == 27136 - 6041
    assert p["num_structures"] == 5 and p["structure_matcher"] == "disordered"


def test_already_relaxed_structure_has_zero_rmsd(mp20_run, chgnet, data_dir):
    relaxed = [s for s in mp20_run.relaxed[:2]]
    again = evaluate_structures(relaxed, relaxer=chgnet, novelty_reference=None, data_dir=data_dir)
    assert (again.table["rmsd_from_relaxation"] < 0.01).all(), again.table["rmsd_from_relaxation"]
    assert np.allclose(again.table["energy_per_atom"], mp20_run.table["energy_per_atom"][:2], atol=2e-3)
    assert rmsd_from_relaxation(relaxed[0], relaxed[0]) == pytest.approx(0.0, abs=1e-4)  # symmetry refinement moves atoms ~1e-6 Å


def test_nonsense_positions_are_unstable_or_invalid(mp20_test_structures, chgnet, data_dir):
    _, structures = mp20_test_structures
    rng = np.random.default_rng(0)
    nonsense = []
    for s in structures:  # every atom squeezed into 4 % of the cell: atoms sit on top of each other
        frac = 0.5 + 0.04 * rng.random((len(s), 3))
        nonsense.append(Structure(s.lattice, s.species, frac))
    quick = get_relaxer("chgnet", config=RelaxConfig(max_steps=40))
    result = evaluate_structures(nonsense, relaxer=quick, novelty_reference=None, data_dir=data_dir)
    table = result.table
    assert len(table) == len(structures)  # nothing dropped
    assert not table["structure_valid"].any()
    assert not (table["stable"] & table["structure_valid"]).any()
    assert table["error"].str.contains("invalid structure").all()
    assert result.metrics["avg_structure_validity"]["value"] == 0.0


# ====================================================================== hull, corrections


def test_mp20_hull_agrees_with_materials_project_e_above_hull(data_dir):
    """Rows of MP-20 test with MP's E_hull: on-hull rows give 0; others never exceed MP's (a subset hull)."""
    hull = load_reference("mp20", data_dir=data_dir)
    refs = elemental_references(data_dir)
    rows = pd.read_csv(data_dir / "mp_20" / "test.csv").dropna(subset=["e_above_hull"]).head(200)
    ours, theirs = [], rows["e_above_hull"].to_numpy()
    for formula, e_form in zip(rows["formula"], rows["formation_energy_per_atom"]):
        comp = Composition(formula)
        energy = e_form * comp.num_atoms + sum(n * refs[el.symbol].energy_per_atom for el, n in comp.items())
        ours.append(hull.e_above_hull(PDEntry(comp, energy)))
    ours = np.array(ours)
    assert (theirs == 0).sum() > 50 and (theirs > 0).sum() > 50
    assert np.abs(ours[theirs == 0]).max() < 1e-8
    assert (ours[theirs > 0] <= theirs[theirs > 0] + 1e-8).all()
    assert np.abs(ours - theirs).mean() < 0.01


def test_mp2020_correction_is_applied_once_and_only_for_raw_energies():
    fe2o3 = Structure.from_spacegroup("R-3c", Lattice.hexagonal(5.03, 13.7), ["Fe", "O"], [[0, 0, 0.355], [0.306, 0, 0.25]])
    n_fe, n_o = fe2o3.composition["Fe"], fe2o3.composition["O"]
    corrected = mp2020_corrected_entry(fe2o3, -100.0)
    # MP2020: -0.687 eV per oxide O, -2.256 eV per Fe (GGA/GGA+U mixing), as pymatgen's table gives them
    assert corrected.correction == pytest.approx(-0.687 * n_o - 2.2583 * n_fe, abs=0.05)
    assert corrected.energy == pytest.approx(-100.0 + corrected.correction)

    chgnet_like = relax_module.Relaxer("chgnet", calculator=None, correction_scheme=NO_CORRECTION, version="x")
    mattersim_like = relax_module.Relaxer("mattersim", calculator=None, correction_scheme=MP2020, version="x")
    assert chgnet_like.to_entry(fe2o3, -100.0).energy == -100.0
    assert mattersim_like.to_entry(fe2o3, -100.0).energy == pytest.approx(corrected.energy)


def test_auto_relaxer_uses_mattersim_when_its_weights_load(monkeypatch, tmp_path):
    from ase.calculators.emt import EMT

    monkeypatch.setattr(relax_module, "mattersim_weights_available", lambda load_path=None: False)
    assert get_relaxer("auto").name == "chgnet"

    fake = types.ModuleType("mattersim.forcefield")
    fake.MatterSimCalculator = lambda **kw: EMT()
    monkeypatch.setitem(sys.modules, "mattersim", types.ModuleType("mattersim"))
    monkeypatch.setitem(sys.modules, "mattersim.forcefield", fake)
    weights = tmp_path / "stand-in.pth"
    torch.save({"model_name": "m3gnet", "model_args": {}, "model": {}}, weights)  # MatterSim's layout (read first)
    monkeypatch.setattr(relax_module, "mattersim_weights_available", lambda load_path=None: True)
    relaxer = get_relaxer("auto", load_path=str(weights))
    assert relaxer.name == "mattersim" and relaxer.correction_scheme == MP2020
    cu = Structure(Lattice.cubic(3.7), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    result = relaxer.relax(cu)
    assert result.status == "converged" and result.steps > 0
    assert 3.55 < result.structure.lattice.a < 3.65  # EMT's Cu lattice constant is 3.59 Å
    with pytest.raises(ValueError, match="unknown relaxer 'mace'"):
        get_relaxer("mace")


def test_relaxation_step_cap_and_explosion_are_reported(chgnet):
    from ase.calculators.calculator import Calculator, all_changes

    class Exploding(Calculator):  # pushes atoms apart and grows the cell without bound
        implemented_properties = ("energy", "forces", "stress")

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results = {
                "energy": -float(atoms.get_volume()),
                "forces": np.ones((len(atoms), 3)) * [1, -1, 0.5],
                "stress": np.array([-5.0, -5.0, -5.0, 0, 0, 0]),
            }

    relaxer = relax_module.Relaxer("test", Exploding(), NO_CORRECTION, "x", config=RelaxConfig(max_steps=200))
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    result = relaxer.relax(nacl)
    assert result.status == "exploded" and "volume changed by a factor" in result.message
    assert math.isnan(result.energy) and not result.ok

    class Collapsing(Exploding):  # pulls the cell in without bound (positive pressure)
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results["energy"] = float(atoms.get_volume())
            self.results["stress"] = np.array([5.0, 5.0, 5.0, 0, 0, 0])
            self.calls = getattr(self, "calls", 0) + 1

    collapsing = Collapsing()
    relaxer = relax_module.Relaxer("test", collapsing, NO_CORRECTION, "x", config=RelaxConfig(max_steps=500, max_volume_factor=50))
    result = relaxer.relax(nacl)  # 22.4 Å³/atom, shrinking
    assert result.status == "exploded" and "collapsed" in result.message and "below the 3 Å³/atom floor" in result.message
    assert result.structure.volume / len(result.structure) < 3.0 < nacl.volume / len(nacl) and not result.ok
    # a crystal that starts below the floor is refused before the force field is called at all
    dense = nacl.copy()
    dense.scale_lattice(2.5 * len(dense))
    calls_before = collapsing.calls
    refused = relaxer.relax(dense)
    assert refused.status == "exploded" and refused.steps == 0 and "2.5 Å³/atom" in refused.message
    assert collapsing.calls == calls_before

    capped = relax_module.Relaxer("chgnet", chgnet.calculator, NO_CORRECTION, "x", config=RelaxConfig(max_steps=1))
    rattled = nacl.copy()
    rattled.perturb(0.2, min_distance=0.1)
    out = capped.relax(rattled)
    assert out.status == "max_steps" and out.steps == 1 and out.ok


# ====================================================================== matching


def test_structure_matching_rules(mp20_test_structures):
    _, structures = mp20_test_structures
    gate = structures[0]
    rotated = gate.copy()
    rotated.apply_operation(__import__("pymatgen.core.operations", fromlist=["SymmOp"]).SymmOp.from_axis_angle_and_translation([0, 0, 1], 30))
    strained = gate.copy()
    strained.scale_lattice(gate.volume * 1.08)
    assert structures_match(gate, rotated) and structures_match(gate, strained)
    assert not structures_match(gate, structures[1])
    # two orderings of the Cu4Ni4 fcc alloy: different ordered crystals, the same alloy for the disordered rule
    base = Structure(Lattice.cubic(3.6), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    base.make_supercell([1, 1, 2])
    layered, other = base.copy(), base.copy()
    for i, site in enumerate(base):
        x, y, z = site.frac_coords
        layered.replace(i, "Cu" if round(4 * z) % 2 == 0 else "Ni")
        other.replace(i, "Cu" if round(2 * x + 2 * y + 4 * z) % 4 in (0, 1) else "Ni")
    assert layered.composition == other.composition
    assert not structures_match(layered, other, matcher="ordered")
    assert structures_match(layered, other, matcher="disordered")
    assert unique_flags([gate, rotated, structures[1], None]) == [True, False, True, False]


# ====================================================================== resumable runs and input errors


def _write_cifs(folder, structures, names):
    folder.mkdir(parents=True, exist_ok=True)
    for s, n in zip(structures, names):
        s.to(filename=str(folder / f"{n}.cif"))


class CountingRelaxer(relax_module.Relaxer):
    calls: list

    def relax(self, structure):
        self.calls.append(structure.composition.reduced_formula)
        return super().relax(structure)


def test_interrupted_evaluation_resumes_without_redoing_work(mp20_test_structures, chgnet, tmp_path, data_dir):
    ids, structures = mp20_test_structures
    relaxer = CountingRelaxer(chgnet.name, chgnet.calculator, chgnet.correction_scheme, chgnet.version, chgnet.weights)
    relaxer.calls = []
    out = tmp_path / "run"
    cancel = threading.Event()

    def stop_after_two(done, total):
        if done == 2:
            cancel.set()

    partial = evaluate_structures(structures, ids=ids, relaxer=relaxer, novelty_reference=None, data_dir=data_dir,
                                  out_dir=out, progress=stop_after_two, cancel=cancel)
    assert len(partial.table) == 2 and len(relaxer.calls) == 2
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and sorted(p.name for p in (out / "relaxed").iterdir()) == sorted(f"{i}.cif" for i in ids[:2])
    # a run killed while writing leaves half a line: it is ignored, and that structure is redone
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"id": "' + ids[2] + '", "energy": -1')
    relaxer.calls = []
    full = evaluate_structures(structures, ids=ids, relaxer=relaxer, novelty_reference=None, data_dir=data_dir, out_dir=out)
    assert relaxer.calls == [s.composition.reduced_formula for s in structures[2:]]
    assert list(full.table["id"]) == ids
    pd.testing.assert_frame_equal(full.table.iloc[:2][["id", "energy", "energy_above_hull"]],
                                  partial.table[["id", "energy", "energy_above_hull"]])
    saved = pd.read_csv(out / "per_structure.csv")
    assert list(saved["id"]) == ids and np.allclose(saved["energy"], full.table["energy"])
    assert json.loads((out / "metrics.json").read_text())["frac_stable_structures"]["value"] == 1.0
    # a different protocol in the same folder is refused, not mixed
    other = relax_module.Relaxer("chgnet", chgnet.calculator, NO_CORRECTION, "x", config=RelaxConfig(fmax=0.1))
    with pytest.raises(ValueError, match="different protocol.*fmax"):
        evaluate_structures(structures, ids=ids, relaxer=other, novelty_reference=None, data_dir=data_dir, out_dir=out)


def test_killed_cli_run_resumes(mp20_test_structures, tmp_path, data_dir):
    ids, structures = mp20_test_structures
    _write_cifs(tmp_path / "gen", structures, ids)
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "mattergen_lab.cli", "evaluate", "--structures", str(tmp_path / "gen"),
           "--relaxer", "chgnet", "--novelty-reference", "none", "--out", str(out), "--data-dir", str(data_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and len(results.read_text().splitlines()) >= 1:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [json.loads(x)["id"] for x in results.read_text().splitlines()]
    assert 1 <= len(finished) < len(ids), "the kill should land mid-run"
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(x)["id"] for x in results.read_text().splitlines()]
    assert lines[: len(finished)] == finished and sorted(lines) == sorted(ids)  # nothing redone, nothing lost
    assert "S.U.N." in done.stdout
    assert len(pd.read_csv(out / "per_structure.csv")) == len(ids)


def test_bad_inputs_name_the_offender(mp20_test_structures, tmp_path, data_dir, capsys):
    from mattergen_lab.cli import main

    ids, structures = mp20_test_structures
    good = tmp_path / "good"
    _write_cifs(good, structures[:1], ids[:1])
    (good / "broken.cif").write_text("data_x\n_cell_length_a 3\nthis is not a CIF loop\n")
    with pytest.raises(ValueError, match="broken.cif"):
        read_structures(good)
    assert main(["evaluate", "--structures", str(good), "--out", str(tmp_path / "o"), "--relaxer", "chgnet"]) == 2
    assert "broken.cif" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no structures found"):
        read_structures(empty)
    with pytest.raises(ValueError, match="empty"):
        evaluate_structures([], relaxer="chgnet")

    # a reference hull of the Cu-Ni system only: GaTe's elements are missing, and the error names the structure
    ref = tmp_path / "cu_ni.csv"
    pd.DataFrame({"composition": ["Cu", "Ni", "CuNi"], "energy_per_atom": [-4.1, -5.8, -4.95]}).to_csv(ref, index=False)
    with pytest.raises(MissingReferenceError, match=r"structure 'mp-10009'.*Ga, Te"):
        evaluate_structures(structures[:1], ids=ids[:1], relaxer="chgnet", reference=ref, novelty_reference=None)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_reference(tmp_path / "nope.json")


# ====================================================================== reference formats


def test_reference_formats_json_csv_and_mattergen_lmdb(tmp_path):
    lmdb = importorskip("lmdb")
    from pymatgen.entries.computed_entries import ComputedEntry

    entries = [ComputedEntry("Cu", -4.1, entry_id="cu"), ComputedEntry("Ni", -5.8, entry_id="ni"),
               ComputedEntry("CuNi", -10.2, entry_id="cuni"), ComputedEntry("Cu3Ni", -18.0, entry_id="cu3ni")]
    probe = PDEntry(Composition("CuNi3"), -22.0)
    # JSON
    path_json = tmp_path / "ref.json.gz"
    with gzip.open(path_json, "wt") as fh:
        json.dump([e.as_dict() for e in entries], fh)
    from_json = load_reference(path_json)
    # hand computed: CuNi3 against the Cu/CuNi/Ni hull: 0.5·E(CuNi)/2… use pymatgen's own diagram as the truth
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    expected = PhaseDiagram(entries).get_e_above_hull(probe, allow_negative=True)
    assert from_json.e_above_hull(probe) == pytest.approx(expected)
    assert len(from_json) == 4
    # MatterGen's gzipped LMDB layout
    db = tmp_path / "reference_test.lmdb"
    env = lmdb.open(str(db), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        put = lambda k, v: txn.put(k.encode("ascii"), pickle.dumps(v))
        put("name", "test")
        put("chemical_systems", ["Cu", "Ni", "Cu-Ni"])
        for system, group in (("Cu", entries[:1]), ("Ni", entries[1:2]), ("Cu-Ni", entries[2:])):
            formulas = sorted({e.composition.reduced_formula for e in group})
            put(f"{system}.reduced_formulas", formulas)
            for f in formulas:
                members = [e for e in group if e.composition.reduced_formula == f]
                put(f"{system}.{f}.length", len(members))
                for i, e in enumerate(members):
                    put(f"{system}.{f}.{i}", e.as_dict())
    env.close()
    gz = tmp_path / "reference_test.gz"
    with open(db, "rb") as src, gzip.open(gz, "wb") as dst:
        dst.write(src.read())
    from_lmdb = load_reference(gz)
    assert len(from_lmdb) == 4 and from_lmdb.e_above_hull(probe) == pytest.approx(expected)
    # a value that references code is refused, never executed
    env = lmdb.open(str(db), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"Cu.Cu.0", pickle.dumps(os.system))
    env.close()
    with open(db, "rb") as src, gzip.open(gz, "wb") as dst:
        dst.write(src.read())
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_reference(gz)


def test_reference_hull_rejects_unknown_elements_with_a_clear_message():
    hull = ReferenceHull([PDEntry(Composition("Cu"), -4.0)], name="tiny")
    with pytest.raises(MissingReferenceError, match="element\\(s\\) O have no entry in the reference hull 'tiny'"):
        hull.e_above_hull(PDEntry(Composition("CuO"), -10.0))


def test_evaluate_path_reads_extxyz_and_zip(mp20_test_structures, tmp_path):
    import zipfile

    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    ids, structures = mp20_test_structures
    xyz = tmp_path / "gen.extxyz"
    write(str(xyz), [AseAtomsAdaptor.get_atoms(s) for s in structures[:3]], format="extxyz")
    items = read_structures(xyz)
    assert [i for i, _ in items] == ["gen-0", "gen-1", "gen-2"]
    assert [s.composition.reduced_formula for _, s in items] == [s.composition.reduced_formula for s in structures[:3]]
    zpath = tmp_path / "gen.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i, s in zip(ids[:2], structures[:2]):
            zf.writestr(f"cifs/{i}.cif", s.to(fmt="cif"))
    assert [i for i, _ in read_structures(zpath)] == ids[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isclose(rmsd_from_relaxation(structures[0], structures[0]), 0.0, atol=1e-6)


def test_lp_hull_equals_pymatgen_phase_diagram_and_handles_many_elements(data_dir):
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    hull = load_reference("mp20", data_dir=data_dir)
    rng = np.random.default_rng(1)
    for system in (["Li", "Fe", "O"], ["Na", "Ti", "V", "S"], ["Cu", "Ni"], ["Ba", "Ti", "O"]):
        diagram = PhaseDiagram(hull.entries_in(system))
        for _ in range(5):  # random compositions at random energies around the hull
            amounts = rng.integers(1, 5, len(system))
            comp = Composition(dict(zip(system, amounts.tolist())))
            probe = PDEntry(comp, float(diagram.get_hull_energy_per_atom(comp) + rng.normal(0, 0.2)) * comp.num_atoms)
            assert hull.e_above_hull(probe) == pytest.approx(diagram.get_e_above_hull(probe, allow_negative=True), abs=1e-7)
            assert hull.formation_energy_per_atom(probe) == pytest.approx(diagram.get_form_energy_per_atom(probe), abs=1e-7)
    # a 12-element composition (what an untrained model makes): a PhaseDiagram in 11 dimensions takes
    # minutes; the linear programme takes well under a second and still matches the terminal phases
    comp = Composition("CsCaHoErTaMnGeRhPbBrO5F3")
    start = time.perf_counter()
    e_hull = hull.e_above_hull(PDEntry(comp, -5.0 * comp.num_atoms))
    assert time.perf_counter() - start < 5.0
    assert math.isfinite(e_hull)


def test_many_element_compositions_stay_fast_and_say_why():
    from mattergen_lab.evaluation import composition_valid
    from mattergen_lab.evaluation.per_structure import MAX_SMACT_ELEMENTS

    many = Composition("Li2TbTmVCuReNiAgGeSb2IrSeO")  # 13 elements: SMACT alone ran for minutes
    start = time.perf_counter()
    assert composition_valid(many) is False
    assert time.perf_counter() - start < 1.0
    assert len(many.elements) > MAX_SMACT_ELEMENTS
    assert composition_valid(Composition("Fe2O3")) is True and composition_valid(Composition("NaCl2")) is False
    hull = ReferenceHull([PDEntry(Composition({el: 1}), -1.0) for el in many.elements], name="elements")
    with pytest.raises(ValueError, match="13-element system .* too costly"):
        hull.phase_diagram(many.elements)
    assert hull.e_above_hull(PDEntry(many, -0.5 * many.num_atoms)) == pytest.approx(0.5)


# ------------------------------------------------------------------- issue 26: one writer, a named bad record
def _flat_relaxer():
    from ase.calculators.calculator import Calculator, all_changes

    from mattergen_lab.evaluation.relax import Relaxer

    class Flat(Calculator):
        implemented_properties = ["energy", "forces", "stress"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": -3.4 * len(atoms), "forces": np.zeros((len(atoms), 3)), "stress": np.zeros(6)}

    return Relaxer("stub", Flat(), NO_CORRECTION, "x", config=RelaxConfig())


def test_two_evaluations_into_one_folder_are_refused_and_a_corrupt_protocol_is_named(tmp_path):
    """Two evaluate runs into one folder relaxed everything twice and wrote every row twice."""
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ref = tmp_path / "ref.csv"
    ref.write_text("composition,energy_per_atom\nNa,-1.3\nCl,-1.8\nNaCl,-3.4\n")
    kw = dict(reference=ref, novelty_reference=None, relax_engine="ase", out_dir=tmp_path / "e")
    code = ("from mattergen_lab.fileio import FolderLock\n"
            f"lock = FolderLock({str(tmp_path / 'e')!r}, 'evaluate').acquire()\nprint('held', flush=True)\n"
            "import time\ntime.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"e is being written by process {holder.pid} "):
            evaluate_structures([nacl], relaxer=_flat_relaxer(), **kw)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "e" / "results.jsonl").exists()
    evaluate_structures([nacl], relaxer=_flat_relaxer(), **kw)  # the killed holder's lock is taken over
    assert len((tmp_path / "e" / "results.jsonl").read_text().splitlines()) == 1
    (tmp_path / "e" / "protocol.json").write_text('{"relaxer": "stub", ')  # corrupted
    with pytest.raises(ValueError, match=r"protocol.json is unreadable \(.*\); it records the protocol"):
        evaluate_structures([nacl], relaxer=_flat_relaxer(), **kw)
