"""Every CIF the package writes reads back with pymatgen and with ASE (issue #12, item 8).

The writers: ``sample_to_dir``'s ``cifs/gen_*.cif`` (:func:`mattergen_lab.sampling.writers.write_cif`), the relaxed
CIFs of a resumable evaluation (``relaxed/<id>.cif``), a campaign folder's ``cifs/`` and ``relaxed/``, and the
symmetrized and P1 CIFs of a synthesis-review export. They all go through
:func:`mattergen_lab.structure_io.structure_to_cif`, which writes the Niggli-reduced cell: pymatgen's reader refuses
a cell whose lattice planes are closer than 0.01 Å, which generated cells can be (one of 16 samples of the
bundled model below was 94 Å long and 0.017 Å thin); the reduced cell of the same crystal is not.
"""

from __future__ import annotations

import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: The lattice of that flat sample (a, b, c in Å; α, β, γ in degrees): 3.46 Å³ for 4 atoms.
FLAT_CELL = (8.070869914175919, 93.96110745722119, 2.603010951469826, 54.35309437278569, 20.968260232430094, 33.3853851512314)


def awkward_cells() -> dict[str, Structure]:
    rng = np.random.default_rng(0)
    return {
        "oblique_gamma160_c160": Structure(Lattice.from_parameters(4.0, 5.0, 160.0, 100.0, 95.0, 160.0),
                                           ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "oblique_alpha160_c160": Structure(Lattice.from_parameters(3.0, 3.2, 160.0, 160.0, 95.0, 100.0),
                                           ["Li", "O"], [[0, 0, 0], [0.3, 0.6, 0.5]]),
        "one_atom": Structure(Lattice.from_parameters(2.9, 3.1, 3.3, 70, 80, 100), ["Cu"], [[0.1, 0.2, 0.3]]),
        "20_atoms_5_elements": Structure(Lattice.from_parameters(7.1, 8.3, 9.2, 95, 103, 111),
                                         ["Li", "Fe", "O", "P", "Mn"] * 4, rng.random((20, 3))),
        "flat_94A_by_0.017A": Structure(Lattice.from_parameters(*FLAT_CELL), ["Li", "Lu", "Re", "O"],
                                        [[0.1, 0.2, 0.3], [0.6, 0.4, 0.8], [0.3, 0.9, 0.1], [0.8, 0.7, 0.5]]),
    }


@pytest.fixture(scope="module")
def cells() -> dict[str, Structure]:
    from mattergen_lab.sampling.api import sample

    out = awkward_cells()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, s in enumerate(sample("mgl_mp20_small", 16, num_steps=20, seed=0)):
            out[f"bundled_{i}"] = s
    return out


def assert_reads_back(path: Path, original: Structure, *, same_cell_size: bool = True) -> None:
    """``path`` reads with pymatgen and with ASE, with ``original``'s composition and volume."""
    from ase.io import read

    label = f"{path.name} ({original.composition.reduced_formula}, {np.round(original.lattice.parameters, 2).tolist()})"
    try:
        pmg = Structure.from_file(path)
    except Exception as exc:  # noqa: BLE001 - the failure is the test's message
        pytest.fail(f"pymatgen cannot read {label}: {type(exc).__name__}: {exc}")
    try:
        atoms = read(path, format="cif")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"ASE cannot read {label}: {type(exc).__name__}: {exc}")
    want = original.composition
    ase_counts = Counter(atoms.get_chemical_symbols())
    ase_volume = float(atoms.get_volume())
    if same_cell_size:
        assert pmg.composition == want, (label, pmg.composition, want)
        assert ase_counts == {el.symbol: int(n) for el, n in want.items()}, (label, ase_counts)
        assert pmg.volume == pytest.approx(original.volume, rel=1e-5), label
        assert ase_volume == pytest.approx(original.volume, rel=1e-5), label
    else:  # a symmetrized CIF holds the conventional cell: compare per atom
        assert pmg.composition.reduced_composition == want.reduced_composition, (label, pmg.composition)
        assert sorted(ase_counts) == sorted(el.symbol for el in want), (label, ase_counts)
        assert pmg.volume / len(pmg) == pytest.approx(original.volume / len(original), rel=1e-3), label
        assert ase_volume / len(atoms) == pytest.approx(original.volume / len(original), rel=1e-3), label


def test_structure_to_cif_writes_the_reduced_cell_of_a_flat_one(tmp_path):
    """pymatgen refuses the CIF of the flat cell as it is (what the writers wrote before); structure_to_cif reads back."""
    from pymatgen.io.cif import CifWriter

    from mattergen_lab.structure_io import structure_to_cif

    flat = awkward_cells()["flat_94A_by_0.017A"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no structures"):
            Structure.from_str(str(CifWriter(flat)), fmt="cif")
    (tmp_path / "flat.cif").write_text(structure_to_cif(flat))
    assert_reads_back(tmp_path / "flat.cif", flat)
    reduced = Structure.from_file(tmp_path / "flat.cif")
    assert reduced.lattice.abc == pytest.approx(flat.get_reduced_structure().lattice.abc, abs=1e-6)
    assert max(reduced.lattice.abc) < 2.0  # the same crystal in a 1.4 x 1.5 x 1.9 Å cell


def test_sample_writer_cifs_read_back(cells, tmp_path):
    from mattergen_lab.sampling.writers import write_cif

    for name, s in cells.items():
        write_cif(tmp_path / f"{name}.cif", s)
        assert_reads_back(tmp_path / f"{name}.cif", s)


def test_campaign_folder_cifs_read_back(cells, tmp_path):
    from mattergen_lab.campaign.store import CampaignFolder

    folder = CampaignFolder(tmp_path / "campaign")
    ids = [f"a0-{i}" for i in range(len(cells))]
    dicts = [s.as_dict() for s in cells.values()]
    folder.write_sample({"key": "sample/a0/c0", "ids": ids, "structures": dicts, "seconds": 0.0, "worker": "test"})
    folder.write_evaluation({"key": "evaluate/a0/c0/b0", "rows": [{"id": i} for i in ids], "relaxed": dicts,
                             "protocol": {}, "seconds": 0.0, "worker": "test"})
    for sid, s in zip(ids, cells.values()):
        assert_reads_back(folder.path / "cifs" / f"{sid}.cif", s)
        assert_reads_back(folder.path / "relaxed" / f"{sid}.cif", s)


def test_evaluation_relaxed_cifs_read_back_and_resume(cells, tmp_path):
    from mattergen_lab.evaluation import evaluate_structures
    from mattergen_lab.evaluation.relax import NO_CORRECTION, Relaxer, RelaxResult

    class Identity(Relaxer):  # "relaxes" to the structure itself: the written CIF is the input cell
        def relax(self, structure):
            return RelaxResult("converged", structure.copy(), -1.0 * len(structure), 0, 0.0, 0.0, "")

    ref = tmp_path / "ref.csv"
    pd.DataFrame({"composition": ["Na", "Cl"], "energy_per_atom": [-1.3, -1.8]}).to_csv(ref, index=False)
    kw = {"relaxer": Identity("identity", None, NO_CORRECTION, "x"), "reference": ref, "novelty_reference": None,
          "allow_missing_reference": True, "out_dir": tmp_path / "eval"}
    ids, structures = list(cells), list(cells.values())
    first = evaluate_structures(structures, ids=ids, **kw)
    for sid, s in cells.items():
        assert_reads_back(tmp_path / "eval" / "relaxed" / f"{sid}.cif", s)
    again = evaluate_structures(structures, ids=ids, **kw)  # a resumed run reads every relaxed CIF back
    assert list(again.table["is_unique"]) == list(first.table["is_unique"])


def test_export_cifs_read_back(cells, tmp_path):
    from mattergen_lab.design import export_candidates

    names = list(cells)
    table = pd.DataFrame({"id": [f"c{i}" for i in range(len(names))],
                          "formula": [cells[n].composition.reduced_formula for n in names]})
    path = export_candidates(list(cells.values()), table, tmp_path / "review.zip", report={}, symprec=0.1)
    out = tmp_path / "unzipped"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(out)
        listed = set(zf.namelist())
    n_sym = 0
    for (cid, formula), s in zip(table[["id", "formula"]].itertuples(index=False), cells.values()):
        p1 = [f for f in listed if f.startswith(f"{cid}_") and f.endswith("_P1.cif")]
        sym = [f for f in listed if f.startswith(f"{cid}_") and "_sym_symprec" in f]
        assert len(p1) == 1, (cid, formula, sorted(listed))
        assert_reads_back(out / p1[0], s)
        for f in sym:
            assert_reads_back(out / f, s, same_cell_size=False)
            n_sym += 1
    assert n_sym >= len(cells) - 2  # spglib may refuse a cell or two; the P1 CIF is there for every one


def test_a_cell_symmetric_only_within_symprec_exports_a_symmetrized_cif_with_its_composition(tmp_path):
    """A CaAl2 the bundled model generated (Cm at 0.1 Å): pymatgen's CifWriter, given it straight, wrote a CIF
    that reads back as Ca6Al16; the export writes spglib's refined cell, which reads back as CaAl2."""
    from pymatgen.io.cif import CifWriter

    from mattergen_lab.design import export_candidates

    lattice = [[5.79001555, 0.0, -1.23266056], [1.54837548, 3.93958169, -1.85757128], [0.0, 0.0, 5.92281935]]
    frac = [[0.33264482, 0.51560706, 0.13379984], [0.78648484, 0.51681376, 0.58645624], [0.73201609, 0.83874089, 0.18406875],
            [0.21392149, 0.85608619, 0.69950789], [0.63109100, 0.17799880, 0.76642758], [0.14257731, 0.17712745, 0.27912253]]
    s = Structure(lattice, ["Al", "Al", "Ca", "Ca", "Al", "Al"], frac)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = Structure.from_str(str(CifWriter(s.get_reduced_structure(), symprec=0.1, angle_tolerance=5.0)), fmt="cif")
    assert naive.composition.reduced_formula != "CaAl2"  # the writer's inconsistency this guards against
    table = pd.DataFrame({"id": ["c0"], "formula": ["CaAl2"]})
    path = export_candidates([s], table, tmp_path / "review.zip", report={}, symprec=0.1)
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "out")
        names = zf.namelist()
    assert "c0_CaAl2_sym_symprec0.1.cif" in names
    text = (tmp_path / "out" / "c0_CaAl2_sym_symprec0.1.cif").read_text()
    assert "space group Cm (8)" in text
    assert_reads_back(tmp_path / "out" / "c0_CaAl2_sym_symprec0.1.cif", s, same_cell_size=False)


def test_export_relaxed_cifs_read_back(tmp_path):
    """The review export's ``*_relaxed_P1.cif`` (written when relaxed structures are passed) reads back too."""
    from mattergen_lab.design import export_candidates

    cells = awkward_cells()
    generated = list(cells.values())
    relaxed = [s.copy() for s in generated]
    for s in relaxed:
        s.scale_lattice(s.volume * 1.05)  # a relaxed cell differs from the generated one
    table = pd.DataFrame({"id": [f"r{i}" for i in range(len(cells))], "formula": [s.composition.reduced_formula for s in generated]})
    path = export_candidates(generated, table, tmp_path / "review.zip", report={}, relaxed=relaxed)
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith("_relaxed_P1.cif"))
        zf.extractall(tmp_path / "unzipped")
    assert len(names) == len(cells), names
    for name in names:
        i = int(name.split("_", 1)[0][1:])
        assert_reads_back(tmp_path / "unzipped" / name, relaxed[i])
