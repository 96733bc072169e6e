"""Issue 12: a fuzz suite for structure files. Seeded random mutations of a CIF, an extxyz and a POSCAR (numbers
replaced by NaN, inf, huge, tiny, negative or garbage; element symbols by dummies; lines dropped, doubled or cut)
go through the readers and, when accepted, through every consumer that once crashed on bad cells: the validity
check, the space-group oracle (spglib), the CIF writer (read back with pymatgen and ASE), evaluate_structures and
the synthesis-review export.

Every outcome is classified: refused (ValueError or FileNotFoundError with a message), or accepted (then the
structure must be finite, have a positive volume and real elements, and every consumer must finish). The cases
run in one fresh interpreter, so a segfault (spglib on NaN did that) or a hang fails the test naming the case
instead of killing pytest; any other exception fails it with the case's name and the exception.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CIF = """data_NaCl
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   5.6
_cell_length_b   5.7
_cell_length_c   5.8
_cell_angle_alpha   90
_cell_angle_beta   91
_cell_angle_gamma   92
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
  Na  Na2  1  0.5  0.5  0.0  1
  Cl  Cl3  1  0.0  0.0  0.5  1
"""
EXTXYZ = """3
Lattice="4.1 0.0 0.0 0.3 4.2 0.0 0.1 0.2 4.3" Properties=species:S:1:pos:R:3 pbc="T T T"
Li 0.0 0.0 0.0
Fe 2.0 2.1 2.2
O 1.0 3.0 0.5
"""
POSCAR = """LiFeO
1.0
4.1 0.0 0.0
0.3 4.2 0.0
0.1 0.2 4.3
Li Fe O
1 1 1
direct
0.0 0.0 0.0
0.5 0.5 0.5
0.25 0.75 0.1
"""
TEMPLATES = {"cif": CIF, "extxyz": EXTXYZ, "vasp": POSCAR}
NUMBERS = ["nan", "NaN", "inf", "-inf", "-5.6", "0", "0.0", "1e308", "1e-300", "1e400", "-0", "abc", "", "1e5",
           "0.001", "179.99", "180", "1e-8", "3e2"]
ELEMENTS = ["Xx", "X", "D", "Uuo", "Og", "H", "Na1+", "Q", "", "na", "Zz9", "Fe"]
NUMBER = re.compile(r"(?<![A-Za-z_])-?\d+(?:\.\d+)?(?:e-?\d+)?")
SYMBOL = re.compile(r"\b(Na|Cl|Li|Fe|O)\b")


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["number", "number", "number", "element", "drop", "double", "cut"])
        lines = text.splitlines()
        if kind in ("number", "element"):
            spans = list((NUMBER if kind == "number" else SYMBOL).finditer(text))
            if spans:
                m = rng.choice(spans)
                text = text[: m.start()] + rng.choice(NUMBERS if kind == "number" else ELEMENTS) + text[m.end():]
        elif kind == "drop" and len(lines) > 1:
            del lines[rng.randrange(len(lines))]
            text = "\n".join(lines) + "\n"
        elif kind == "double":
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            text = "\n".join(lines) + "\n"
        elif kind == "cut":
            text = text[: rng.randrange(len(text))]
    return text


#: Runs in the fresh interpreter: one line per case on stdout ("START name", then "DONE name outcome").
RUNNER = """
import json, math, sys, warnings, zipfile
warnings.simplefilter("ignore")
import numpy as np
import pandas as pd
from ase.calculators.calculator import Calculator, all_changes
from ase.io import read as ase_read
from pymatgen.core import Element, Structure
from mattergen_lab.structure_io import structure_from_cif, structure_to_cif
from mattergen_lab.design import export_candidates
from mattergen_lab.evaluation import evaluate_structures
from mattergen_lab.evaluation.evaluate import read_structures
from mattergen_lab.evaluation.reference import load_reference
from mattergen_lab.evaluation.relax import NO_CORRECTION, Relaxer
from mattergen_lab.evaluation.validity import check_structure
from mattergen_lab.properties import space_group

class Flat(Calculator):
    implemented_properties = ["energy", "forces", "stress"]
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": -3.0 * len(atoms), "forces": np.zeros((len(atoms), 3)), "stress": np.zeros(6)}

relaxer = Relaxer("flat", Flat(), NO_CORRECTION, "x")
pd.DataFrame({"composition": ["Na", "Cl", "NaCl", "Li", "Fe", "O", "Li2O"],
              "energy_per_atom": [-1.3, -1.8, -3.4, -1.9, -8.3, -4.9, -4.8]}).to_csv(DIR + "/ref.csv", index=False)
hull = load_reference(DIR + "/ref.csv")

def sane(s, label):
    m = np.asarray(s.lattice.matrix)
    assert len(s) > 0 and np.isfinite(m).all() and np.isfinite(s.frac_coords).all(), label + ": non-finite accepted"
    assert abs(np.linalg.det(m)) > 0, label + ": zero volume accepted"
    for site in s:
        for sp in site.species:
            assert isinstance(sp.element if hasattr(sp, "element") else sp, Element), label + f": {sp} accepted"

def consume(s, label):
    sane(s, label)
    check_structure(s)
    sg = space_group(s)
    assert 1 <= sg <= 230, (label, sg)
    text = structure_to_cif(s)
    back = Structure.from_str(text, fmt="cif")
    assert back.composition.reduced_composition == s.composition.reduced_composition, (label, back.composition)
    open(DIR + "/back.cif", "w").write(text)
    assert len(ase_read(DIR + "/back.cif", format="cif")) == len(back), label
    r = evaluate_structures([s], ids=["x"], relaxer=relaxer, reference=hull, novelty_reference=None,
                            allow_missing_reference=True, relax_engine="ase")
    assert len(r.table) == 1, label

accepted = []
for name in json.loads(sys.argv[1]):
    print("START", name, flush=True)
    path = DIR + "/" + name
    outcome = "refused"
    try:
        items = read_structures(path)
        for sid, s in items:
            consume(s, name)
            accepted.append(s)
        if name.endswith(".cif"):
            consume(structure_from_cif(open(path).read(), name=name), name)
        outcome = "accepted"
    except (ValueError, FileNotFoundError) as exc:
        if not str(exc):
            outcome = "error: a refusal without a message"
    except Exception as exc:
        outcome = f"error: {type(exc).__name__}: {exc}"[:300]
    print("DONE", name, outcome, flush=True)
if accepted:  # the export of every accepted structure, each CIF read back
    out = export_candidates(accepted, pd.DataFrame({"id": [f"c{i}" for i in range(len(accepted))],
                            "formula": [s.composition.reduced_formula for s in accepted]}), DIR + "/export.zip", report={})
    with zipfile.ZipFile(out) as zf:
        for n in zf.namelist():
            if n.endswith(".cif"):
                Structure.from_str(zf.read(n).decode(), fmt="cif")
    print("EXPORTED", len(accepted), flush=True)
"""


def test_fuzz_structure_files(tmp_path):
    rng = random.Random(12)
    names = []
    for i in range(180):
        fmt = rng.choice(sorted(TEMPLATES))
        name = f"case{i:03d}.{fmt}"
        (tmp_path / name).write_text(mutate(TEMPLATES[fmt], rng))
        names.append(name)
    for fmt, text in TEMPLATES.items():  # the unmutated templates must be accepted (the runner works)
        (tmp_path / f"good.{fmt}").write_text(text)
        names.append(f"good.{fmt}")
    code = f"DIR = {str(tmp_path)!r}\n" + textwrap.dedent(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(names)], capture_output=True, text=True,
                              timeout=600, env=env, cwd=ROOT)
        stdout, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, rc = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "hang"
    started = [ln.split()[1] for ln in stdout.splitlines() if ln.startswith("START ")]
    done = {ln.split()[1]: ln.split(" ", 2)[2] for ln in stdout.splitlines() if ln.startswith("DONE ")}
    last = started[-1] if started else None
    assert rc == 0, (f"the interpreter ended with {rc} (-11: segfault) in case {last}:\n"
                     f"{(tmp_path / last).read_text() if last else ''}\n{proc.stderr[-3000:] if rc != 'hang' else ''}")
    errors = {n: o for n, o in done.items() if o.startswith("error")}
    assert not errors, {n: (o, (tmp_path / n).read_text()) for n, o in list(errors.items())[:3]}
    assert all(done[f"good.{fmt}"] == "accepted" for fmt in TEMPLATES), {f: done[f"good.{f}"] for f in TEMPLATES}
    outcomes = [done[n] for n in names]
    assert len(outcomes) == len(names) and outcomes.count("refused") >= 60 and outcomes.count("accepted") >= 20, (
        outcomes.count("refused"), outcomes.count("accepted"))
    assert any(ln.startswith("EXPORTED ") for ln in stdout.splitlines())
