"""Bad structures are refused at the boundary, naming the structure and the value (issue #12, items 2 and 5).

NaN or infinite coordinates or lattices used to reach spglib, which crashes the interpreter (SIGSEGV), so every
case that could get there runs in a fresh interpreter: a crash shows up as a failed test (return code -11)
instead of killing pytest. Each case must end in a ``ValueError`` whose message is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mattergen_lab.structure_io import structure_from_cif
from mattergen_lab.evaluation.validity import check_structure

ROOT = Path(__file__).resolve().parents[1]

GOOD_CIF = """data_NaCl
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   5.6
_cell_length_b   5.6
_cell_length_c   5.6
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
_symmetry_Int_Tables_number   1
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na  Na0  1  0.0  0.0  0.0  1
  Cl  Cl1  1  0.5  0.5  0.5  1
"""

#: name -> (CIF text, regex the error must match besides the structure's name)
BAD_CIFS = {
    "nan_length": (GOOD_CIF.replace("_cell_length_a   5.6", "_cell_length_a   nan"), r"_cell_length_a = nan"),
    "negative_length": (GOOD_CIF.replace("_cell_length_b   5.6", "_cell_length_b   -5.6"), r"_cell_length_b = -5.6"),
    "inf_angle": (GOOD_CIF.replace("_cell_angle_beta   90", "_cell_angle_beta   inf"), r"_cell_angle_beta = inf"),
    "angle_200": (GOOD_CIF.replace("_cell_angle_gamma   90", "_cell_angle_gamma   200"), r"_cell_angle_gamma = 200"),
    "element_Xx": (GOOD_CIF.replace("  Cl  Cl1", "  Xx  Xx1"), r"'Xx'.*not a chemical element"),
}

NAN_EXTXYZ = """1
Lattice="5.0 0.0 0.0 0.0 5.0 0.0 0.0 0.0 5.0" Properties=species:S:1:pos:R:3 pbc="T T T"
Cl nan nan nan
"""
INF_LATTICE_EXTXYZ = """2
Lattice="inf 0.0 0.0 0.0 5.0 0.0 0.0 0.0 5.0" Properties=species:S:1:pos:R:3 pbc="T T T"
Na 0.0 0.0 0.0
Cl 2.5 2.5 2.5
"""
NAN_POSCAR = """NaCl
1.0
5.6 0.0 0.0
0.0 5.6 0.0
0.0 0.0 5.6
Na Cl
1 1
direct
0.0 0.0 0.0
nan 0.5 0.5
"""

#: Code run before the cases in the subprocess: a relaxer that fails the test if a relaxation starts, a tiny
#: Na-Cl reference hull, and the bad structures built in memory.
PRELUDE = """
import json, math, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
import pandas as pd
from pymatgen.core import Lattice, Structure
from mattergen_lab.evaluation.relax import NO_CORRECTION, Relaxer

class NoRelaxer(Relaxer):
    def relax(self, structure):
        print("RELAXATION STARTED", flush=True)
        sys.exit(3)

relaxer = NoRelaxer("stub", calculator=None, correction_scheme=NO_CORRECTION, version="x")

def report(value):  # hands a case's result back, as the ValueError message the test reads
    raise ValueError("result: " + json.dumps(value))
pd.DataFrame({"composition": ["Na", "Cl", "NaCl"], "energy_per_atom": [-1.3, -1.8, -3.4]}).to_csv(REF, index=False)
EVAL = dict(relaxer=relaxer, reference=REF, novelty_reference=None)
nan_coords = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [math.nan, 0.5, 0.5]])
inf_lattice = Structure(Lattice(np.diag([math.inf, 5.0, 5.0])), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
nan_lattice = Structure(Lattice(np.diag([math.nan, 5.0, 5.0])), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
empty = Structure(Lattice.cubic(5.0), [], [])
good = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
"""


def refusals(tmp_path: Path, cases: dict[str, str]) -> dict[str, str]:
    """Run each case (one expression or statement) in one fresh interpreter; return its ``ValueError`` messages.

    Fails the test when the interpreter crashes (e.g. -11, a segfault in spglib), when a case raises anything but
    ``ValueError`` or when it is accepted.
    """
    lines = [f"REF = {str(tmp_path / 'ref.csv')!r}", textwrap.dedent(PRELUDE), "results = {}"]
    for name, code in cases.items():
        lines += [
            "try:",
            f"    {code}",
            f"    results[{name!r}] = 'ACCEPTED'",
            "except ValueError as exc:",
            f"    results[{name!r}] = 'ValueError: ' + str(exc)",
            f"print('CASE', {name!r}, flush=True)",
        ]
    lines.append("print('RESULTS', json.dumps(results))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=ROOT, check=False)
    reached = [ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("CASE ")]
    assert proc.returncode == 0, (
        f"the interpreter died with return code {proc.returncode} (-11: a segfault; 3: a relaxation started) "
        f"after cases {reached}:\n"
        f"{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    )
    results = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS "))[8:])
    accepted = [k for k, v in results.items() if not v.startswith("ValueError: ")]
    assert not accepted, f"accepted instead of refused: {accepted}"
    return {k: v.removeprefix("ValueError: ") for k, v in results.items()}


# ------------------------------------------------------------------------------------------- readers
def test_nan_and_inf_files_are_refused_by_the_readers_and_evaluate_path(tmp_path):
    (tmp_path / "nan.extxyz").write_text(NAN_EXTXYZ)
    (tmp_path / "inf_lattice.extxyz").write_text(INF_LATTICE_EXTXYZ)
    (tmp_path / "nan.vasp").write_text(NAN_POSCAR)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "gen_0.cif").write_text(GOOD_CIF)
    (folder / "gen_1.extxyz").write_text(NAN_EXTXYZ)

    p = {k: str(tmp_path / k) for k in ("nan.extxyz", "inf_lattice.extxyz", "nan.vasp")}
    out = refusals(tmp_path, {
        "read_nan_xyz": f"from mattergen_lab.evaluation import read_structures; read_structures({p['nan.extxyz']!r})",
        "eval_nan_xyz": f"from mattergen_lab.evaluation import evaluate_path; evaluate_path({p['nan.extxyz']!r}, **EVAL)",
        "read_inf_xyz": f"from mattergen_lab.evaluation import read_structures; read_structures({p['inf_lattice.extxyz']!r})",
        "eval_inf_xyz": f"from mattergen_lab.evaluation import evaluate_path; evaluate_path({p['inf_lattice.extxyz']!r}, **EVAL)",
        "read_nan_poscar": f"from mattergen_lab.evaluation import read_structures; read_structures({p['nan.vasp']!r})",
        "eval_folder": f"from mattergen_lab.evaluation import evaluate_path; evaluate_path({str(folder)!r}, **EVAL)",
    })
    for key in ("read_nan_xyz", "eval_nan_xyz"):
        assert "nan.extxyz, frame 0" in out[key] and "non-finite fractional coordinates [nan, nan, nan]" in out[key], out[key]
        assert "site 0 (Cl)" in out[key]
    for key in ("read_inf_xyz", "eval_inf_xyz"):
        assert "inf_lattice.extxyz, frame 0" in out[key] and "non-finite lattice" in out[key] and "inf" in out[key], out[key]
    assert "nan.vasp" in out["read_nan_poscar"] and "site 1 (Cl)" in out["read_nan_poscar"], out["read_nan_poscar"]
    assert "non-finite fractional coordinates [nan, 0.5, 0.5]" in out["read_nan_poscar"], out["read_nan_poscar"]
    assert "gen_1.extxyz, frame 0" in out["eval_folder"] and "non-finite" in out["eval_folder"], out["eval_folder"]


@pytest.mark.parametrize("case", sorted(BAD_CIFS))
def test_bad_cifs_are_refused_naming_the_value(case, tmp_path):
    text, pattern = BAD_CIFS[case]
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / f"{case}.cif").write_text(text)
    import zipfile

    with zipfile.ZipFile(tmp_path / "cifs.zip", "w") as zf:
        zf.writestr(f"cifs/{case}.cif", text)
    out = refusals(tmp_path, {
        "structure_from_cif": f"from mattergen_lab.structure_io import structure_from_cif; structure_from_cif({text!r}, name='row 3')",
        "read_structures": f"from mattergen_lab.evaluation import read_structures; read_structures({str(folder)!r})",
        "read_zip": f"from mattergen_lab.evaluation import read_structures; read_structures({str(tmp_path / 'cifs.zip')!r})",
        "evaluate_path": f"from mattergen_lab.evaluation import evaluate_path; evaluate_path({str(folder)!r}, **EVAL)",
    })
    import re

    assert out["structure_from_cif"].startswith("CIF row 3: ") and re.search(pattern, out["structure_from_cif"]), out
    for key in ("read_structures", "evaluate_path"):
        assert f"{case}.cif" in out[key] and re.search(pattern, out[key]), out[key]
    assert f"cifs.zip:cifs/{case}.cif" in out["read_zip"] and re.search(pattern, out["read_zip"]), out["read_zip"]


def test_structure_from_cif_in_process_for_the_cases_that_never_crashed():
    """Negative length and a dummy element were silently accepted (no crash), so they can be checked here too."""
    for case in ("negative_length", "element_Xx"):
        text, pattern = BAD_CIFS[case]
        with pytest.raises(ValueError, match=pattern):
            structure_from_cif(text, name="row 5")
    good = structure_from_cif(GOOD_CIF, name="row 6")  # still a primitive cell: rock salt's 2 atoms
    assert good.composition.reduced_formula == "NaCl" and len(good) == 2


# ------------------------------------------------------------------------------------------- evaluation, export, oracle
def test_evaluate_structures_refuses_before_anything_runs(tmp_path):
    out = refusals(tmp_path, {
        "nan_coords": "from mattergen_lab.evaluation import evaluate_structures; evaluate_structures([good, nan_coords], ids=['ok', 'bad'], **EVAL)",
        "inf_lattice": "from mattergen_lab.evaluation import evaluate_structures; evaluate_structures([inf_lattice], ids=['g7'], **EVAL)",
        "nan_lattice": "from mattergen_lab.evaluation import evaluate_structures; evaluate_structures([nan_lattice], ids=['g8'], **EVAL)",
        "empty": "from mattergen_lab.evaluation import evaluate_structures; evaluate_structures([good, empty], ids=['ok', 'g9'], **EVAL)",
        # the mp20 hull is not even loaded: a reference that does not exist is never looked at
        "before_hull": "from mattergen_lab.evaluation import evaluate_structures; evaluate_structures([nan_coords], ids=['g10'], relaxer=relaxer, reference='/nonexistent.csv', novelty_reference=None)",
    })
    assert out["nan_coords"].startswith("structure 'bad': site 1 (Cl) has non-finite fractional coordinates [nan, 0.5, 0.5]"), out
    assert out["inf_lattice"].startswith("structure 'g7': non-finite lattice") and "inf" in out["inf_lattice"], out
    assert out["nan_lattice"].startswith("structure 'g8': non-finite lattice") and "nan" in out["nan_lattice"], out
    assert out["empty"] == "structure 'g9': the structure has no atoms", out
    assert out["before_hull"].startswith("structure 'g10': site 1 (Cl) has non-finite"), out


def test_zero_volume_and_dummy_species_are_refused_by_evaluate_structures_any_density_is_evaluated(tmp_path):
    import pandas as pd

    from mattergen_lab.evaluation import evaluate_structures
    from mattergen_lab.evaluation.relax import NO_CORRECTION, Relaxer, RelaxResult

    class NoRelaxer(Relaxer):
        def relax(self, structure):
            raise AssertionError("a relaxation started")

    class Identity(Relaxer):
        def relax(self, structure):
            return RelaxResult("converged", structure.copy(), -1.0, 0, 0.0, 0.0, "")

    ref = tmp_path / "ref.csv"
    pd.DataFrame({"composition": ["Na", "Cl", "NaCl"], "energy_per_atom": [-1.3, -1.8, -3.4]}).to_csv(ref, index=False)
    kw = {"reference": ref, "novelty_reference": None}
    flat = Structure(Lattice([[5, 0, 0], [0, 5, 0], [5, 5, 0]]), ["Na"], [[0, 0, 0]])  # volume 0
    dummy = Structure(Lattice.cubic(5.6), ["Na", "X0+"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"structure 'f': the lattice volume is 0 Å³"):
        evaluate_structures([flat], ids=["f"], relaxer=NoRelaxer("stub", None, NO_CORRECTION, "x"), **kw)
    with pytest.raises(ValueError, match=r"structure 'x': site 1 is 'X' \(X0\+\), not a chemical element"):
        evaluate_structures([dummy], ids=["x"], relaxer=NoRelaxer("stub", None, NO_CORRECTION, "x"), **kw)
    # a generated crystal of absurd density is evaluated and flagged, not refused (samples of a lightly trained
    # model reach 1e6 Å³/atom): refusing it would stop the whole run
    sparse = Structure(Lattice.cubic(50.0), ["Na"], [[0, 0, 0]])  # 125,000 Å³/atom
    table = evaluate_structures([sparse], ids=["s"], relaxer=Identity("identity", None, NO_CORRECTION, "x"), **kw).table
    assert table["volume_per_atom"][0] == pytest.approx(125000) and not table["plausible_density"][0]


def test_structure_from_cif_refuses_an_absurd_volume_per_atom():
    one_atom = GOOD_CIF.replace("  Cl  Cl1  1  0.5  0.5  0.5  1\n", "")
    dense = one_atom.replace("5.6", "0.6")  # 0.216 Å³/atom
    sparse = one_atom.replace("5.6", "50.0")  # 125,000 Å³/atom
    with pytest.raises(ValueError, match=r"CIF row 1: 0\.216 Å³/atom is outside the physical range 0\.5-100000 Å³/atom \(volume 0\.216 Å³, 1 atom\)"):
        structure_from_cif(dense, name="row 1")
    with pytest.raises(ValueError, match=r"CIF row 2: 1\.25e\+05 Å³/atom is outside the physical range"):
        structure_from_cif(sparse, name="row 2")
    assert len(structure_from_cif(one_atom.replace("5.6", "3.0"), name="row 3")) == 1


def test_export_candidates_refuses_bad_structures_and_writes_nothing(tmp_path):
    target = tmp_path / "review.zip"
    table = "pd.DataFrame({'id': ['1-0', '1-1'], 'formula': ['NaCl', 'NaCl']})"
    out = refusals(tmp_path, {
        "nan_coords": f"from mattergen_lab.design import export_candidates; export_candidates([good, nan_coords], {table}, {str(target)!r}, report={{}})",
        "inf_lattice": f"from mattergen_lab.design import export_candidates; export_candidates([good, inf_lattice], {table}, {str(target)!r}, report={{}})",
        "empty": f"from mattergen_lab.design import export_candidates; export_candidates([good, empty], {table}, {str(target)!r}, report={{}})",
    })
    assert out["nan_coords"].startswith("candidate '1-1': site 1 (Cl) has non-finite fractional coordinates"), out
    assert out["inf_lattice"].startswith("candidate '1-1': non-finite lattice"), out
    assert out["empty"] == "candidate '1-1': the structure has no atoms", out
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ref.csv"]  # no zip, no temp file


def test_space_group_oracle_never_hands_spglib_a_nan(tmp_path):
    out = refusals(tmp_path, {
        "nan_coords": "from mattergen_lab.properties import space_group; space_group(nan_coords)",
        "nan_lattice": "from mattergen_lab.properties import space_group; space_group(nan_lattice)",
        "inf_lattice": "from mattergen_lab.properties import space_group; space_group(inf_lattice)",
        "empty": "from mattergen_lab.properties import space_group; space_group(empty)",
        "ase_nan": (
            "from ase import Atoms; from mattergen_lab.properties import space_group; "
            "space_group(Atoms('NaCl', positions=[[0, 0, 0], [np.nan, 1, 1]], cell=[5, 5, 5], pbc=True))"
        ),
        # the dataset path (spglib on raw arrays) gives NaN for such a crystal instead of crashing
        "dataset": (
            "from mattergen_lab.data import CrystalDataset; from mattergen_lab.properties.symmetry import space_groups\n"
            "    ds = CrystalDataset(np.array([11, 17, 11, 17]), np.array([[0, 0, 0], [np.nan, .5, .5], [0, 0, 0], [.5, .5, .5]]),"
            " np.stack([np.eye(3) * 5.6, np.eye(3) * 5.6]), np.array([2, 2]), ['bad', 'good'], {})\n"
            "    sg = space_groups(ds, num_workers=1)\n"
            "    report([None if np.isnan(x) else x for x in sg.tolist()])"
        ),
    })
    assert "NaCl" in out["nan_coords"] and "non-finite fractional coordinates [nan, 0.5, 0.5]" in out["nan_coords"], out
    assert "non-finite lattice" in out["nan_lattice"] and "non-finite lattice" in out["inf_lattice"], out
    assert "the structure has no atoms" in out["empty"], out
    assert "non-finite" in out["ase_nan"], out
    assert out["dataset"] == "result: [null, 221.0]", out
    from mattergen_lab.properties import space_group

    assert space_group(Structure(Lattice.cubic(1e4), ["Fe"], [[0, 0, 0]])) == 221  # any density is analysed


def test_a_relaxation_that_ends_in_nan_keeps_no_relaxed_structure(tmp_path):
    """An exploded relaxation's last frame can be NaN: it is dropped (not analysed by spglib, not written)."""
    out_dir = tmp_path / "eval"
    code = (
        "from mattergen_lab.evaluation import evaluate_structures; from mattergen_lab.evaluation.relax import RelaxResult\n"
        "    class NanRelaxer(Relaxer):\n"
        "        def relax(self, s):\n"
        "            return RelaxResult('exploded', Structure(s.lattice, s.species, np.full((len(s), 3), np.nan)), math.nan, 3, 0.0,"
        " math.nan, 'non-finite energy or positions')\n"
        f"    r = evaluate_structures([good], ids=['g'], relaxer=NanRelaxer('nan', None, NO_CORRECTION, 'x'), reference=REF,"
        f" novelty_reference=None, out_dir={str(out_dir)!r})\n"
        "    report({'error': r.table['error'][0], 'space_group': int(r.table['space_group'][0]), 'relaxed': repr(r.relaxed),"
        " 'status': r.table['relax_status'][0]})"
    )
    out = refusals(tmp_path, {"nan_relaxation": code})
    result = json.loads(out["nan_relaxation"].removeprefix("result: "))
    assert result["status"] == "exploded" and result["relaxed"] == "[None]", result
    assert "the relaxed structure has non-finite values and is not kept" in result["error"], result
    assert result["space_group"] == 221, result  # from the input structure
    assert list((out_dir / "relaxed").iterdir()) == []


# ------------------------------------------------------------------------------------------- the check itself
def test_check_structure_input_accepts_real_cells_and_names_each_problem():
    from mattergen_lab.structure_io import check_structure_input

    good = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    check_structure_input(good, name="rock salt")
    left_handed = Structure(Lattice(np.diag([-5.6, 5.6, 5.6])), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    check_structure_input(left_handed, name="mirror image")  # a left-handed basis is still a crystal
    check_structure_input(Structure(Lattice.cubic(1.0), ["H"], [[0, 0, 0]]), name="1 Å³/atom")
    for structure, message in [
        (Structure(Lattice.cubic(5.0), [], []), "s: the structure has no atoms"),
        (Structure(Lattice.cubic(5.0), ["Na"], [[0, np.inf, 0]]), "s: site 0 (Na) has non-finite fractional coordinates [0.0, inf, 0.0]"),
        (Structure(Lattice(np.diag([np.nan, 5, 5])), ["Na"], [[0, 0, 0]]), "s: non-finite lattice [[nan, 0.0, 0.0]"),
        (Structure(Lattice([[1, 0, 0], [2, 0, 0], [0, 0, 1]]), ["Na"], [[0, 0, 0]]), "s: the lattice volume is 0 Å³"),
        (Structure(Lattice.cubic(5.0), ["Xx"], [[0, 0, 0]]), "s: site 0 is 'Xx' (Xx0+), not a chemical element"),
        (Structure(Lattice.cubic(0.7), ["Na"], [[0, 0, 0]]), "s: 0.343 Å³/atom is outside the physical range"),
        (Structure(Lattice.cubic(47.0), ["Na"], [[0, 0, 0]]), "s: 1.04e+05 Å³/atom is outside the physical range"),
    ]:
        with pytest.raises(ValueError) as info:
            check_structure_input(structure, name="s")
        assert str(info.value).startswith(message), (str(info.value), message)
    with pytest.raises(ValueError, match="expected a pymatgen Structure, got str"):
        check_structure_input("NaCl", name="s")


def test_an_empty_structure_is_not_structurally_valid():
    check = check_structure(Structure(Lattice.cubic(5.0), [], []))
    assert not check.valid and check.reason == "no atoms"
    assert check_structure(Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])).valid


# ------------------------------------------------------------------- issue 26: occupancies, file sizes
_NA = "  Na  Na0  1  0.0  0.0  0.0  1\n"


@pytest.mark.parametrize("occupancy", ["0", "-0.5", "nan", "NaN", ".", "1.5", "x"])
def test_non_physical_occupancies_are_refused_naming_the_file_and_site(occupancy, tmp_path):
    """pymatgen dropped a site of occupancy <= 0, NaN or '.' without a word: NaCl was scored as elemental Cl."""
    from mattergen_lab.evaluation.inputs import read_structures

    text = GOOD_CIF.replace(_NA, _NA.replace("0.0  1\n", f"0.0  {occupancy}\n"))
    message = rf"atom site 'Na0' has occupancy '{occupancy}'; it must be a number in \(0, 1\]"
    with pytest.raises(ValueError, match=rf"^CIF nacl.cif: {message}"):
        structure_from_cif(text, name="nacl.cif")
    (tmp_path / "NaCl.cif").write_text(text)
    with pytest.raises(ValueError, match=rf"NaCl.cif: {message}"):
        read_structures(tmp_path)


def test_occupancies_summing_above_one_at_a_site_are_refused_and_partial_ones_read():
    from pymatgen.core import Composition

    shared = GOOD_CIF.replace(_NA, _NA.replace("0.0  1\n", "0.0  0.6\n") + "  K  K1  1  0.0  0.0  0.0  0.7\n")
    with pytest.raises(ValueError, match=r"CIF s.cif: the occupancies of atom sites \['Na0', 'K1'\] at one position "
                                         r"sum to 1.3 > 1"):
        structure_from_cif(shared, name="s.cif")
    ok = GOOD_CIF.replace(_NA, _NA.replace("0.0  1\n", "0.0  0.6(2)\n") + "  K  K1  1  0.0  0.0  0.0  0.4\n")
    assert structure_from_cif(ok, name="ok.cif", primitive=False).composition == Composition("Na0.6K0.4Cl")
    assert structure_from_cif(GOOD_CIF.replace(_NA, _NA.replace("0.0  1\n", "0.0  ?\n"))).composition.formula == "Na1 Cl1"


def test_a_structure_with_a_non_physical_occupancy_is_refused():
    from mattergen_lab.structure_io import check_structure_input

    from pymatgen.core import Composition

    bad = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    bad.sites[0]._species = Composition({"Na": 0.7, "K": 0.6})  # pymatgen's constructor refuses this; other code may not
    with pytest.raises(ValueError, match=r"mine: the occupancies of site 0 \(.*\) sum to 1.3 > 1"):
        check_structure_input(bad, name="mine")
    bad.sites[0]._species = Composition({"Na": -0.5}, allow_negative=True)
    with pytest.raises(ValueError, match=r"mine: site 0 \(Na\) has occupancy -0.5; it must be in \(0, 1\]"):
        check_structure_input(bad, name="mine")


def test_an_oversized_cif_is_refused_before_it_is_parsed(tmp_path):
    """A 40 MB CIF of 10**6 sites was parsed for minutes before the 200-atom cap could refuse it."""
    import zipfile

    from mattergen_lab.evaluation.inputs import read_structures

    big = GOOD_CIF + "#" * (3 << 20)
    with pytest.raises(ValueError, match=r"CIF big.cif: 3,14\d,\d{3} bytes is more than MAX_CIF_BYTES=2,097,152"):
        structure_from_cif(big, name="big.cif")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.cif").write_text(big)
    with pytest.raises(ValueError, match=r"big.cif: 3,14\d,\d{3} bytes is more than MAX_CIF_BYTES"):
        read_structures(tmp_path / "in")
    with zipfile.ZipFile(tmp_path / "cifs.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.cif", big)  # a few kB compressed: refused from its header, before decompression
    with pytest.raises(ValueError, match=r"cifs.zip:big.cif: 3,14\d,\d{3} bytes is more than MAX_CIF_BYTES"):
        read_structures(tmp_path / "cifs.zip")
