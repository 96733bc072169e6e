"""The candidate review (mattergen_lab.design.review): XRD, nearest known materials, oxidation states, the export."""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pandas as pd
import pytest

from mattergen_lab import design
from mattergen_lab.design.review import KnownMaterials, guess_oxidation_states, review_candidate, xrd_pattern

CU_KA = 1.54184  # Å, pymatgen's weighted Cu Kα


def _mp20_structure(split: str, material_id: str, data_dir):
    from pymatgen.core import Lattice, Structure

    from mattergen_lab.data import load_mp20

    ds = load_mp20(split, data_dir=data_dir)
    i = list(ds.ids).index(material_id)
    a, b = ds.ptr[i], ds.ptr[i + 1]
    return Structure(Lattice(ds.lattice[i]), ds.atom_types[a:b].tolist(), ds.frac_coords[a:b])


def _bragg(a: float, hkl: tuple[int, int, int]) -> float:
    d = a / math.sqrt(sum(h * h for h in hkl))
    return math.degrees(2 * math.asin(CU_KA / (2 * d)))


@pytest.fixture(scope="module")
def known(data_dir) -> KnownMaterials:
    return KnownMaterials.mp20(data_dir)


# ------------------------------------------------------------------------------------------------ XRD
@pytest.mark.parametrize("material_id, a, peaks, absent", [
    # MP (PBE) lattice constants of the MP-20 cells; experiment (5.640 and 5.431 Å) puts the peaks ~0.2° higher
    ("mp-22862", 5.6917, {(1, 1, 1): 27.136, (2, 0, 0): 31.435, (2, 2, 0): 45.052, (2, 2, 2): 55.965}, [(1, 0, 0), (2, 1, 0)]),
    ("mp-149", 5.4687, {(1, 1, 1): 28.265, (2, 2, 0): 46.996, (3, 1, 1): 55.750, (4, 0, 0): 68.648}, [(2, 0, 0), (2, 2, 2)]),
])
def test_xrd_peaks_of_mp20_nacl_and_si_at_their_bragg_angles(data_dir, material_id, a, peaks, absent):
    s = _mp20_structure("val", material_id, data_dir)
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    conv_a = SpacegroupAnalyzer(s).get_conventional_standard_structure().lattice.a
    assert conv_a == pytest.approx(a, abs=1e-3)
    p = xrd_pattern(s)
    assert p.wavelength == "CuKa" and p.wavelength_angstrom == CU_KA
    by_hkl = {h.split("; ")[0]: (t, i) for t, i, h in zip(p.two_theta, p.intensity, p.hkl)}
    for hkl, two_theta in peaks.items():
        assert two_theta == pytest.approx(_bragg(conv_a, hkl), abs=2e-3)  # the table above is Bragg's law
        assert by_hkl["(%d %d %d)" % hkl][0] == pytest.approx(two_theta, abs=0.05), (hkl, by_hkl)
    for hkl in absent:  # extinct reflections (fcc; diamond glide for Si 200 and 222)
        assert "(%d %d %d)" % hkl not in by_hkl
    strongest = max(by_hkl, key=lambda h: by_hkl[h][1])
    assert strongest == ("(2 0 0)" if material_id == "mp-22862" else "(1 1 1)")
    assert max(p.intensity) == pytest.approx(100.0)
    if material_id == "mp-22862":
        assert by_hkl["(1 1 1)"][1] < 15  # Na and Cl scatter out of phase for odd hkl
    # another line moves the peaks as Bragg's law says
    mo = xrd_pattern(s, wavelength="MoKa")
    first = next(t for t, h in zip(mo.two_theta, mo.hkl) if h.startswith("(1 1 1)"))
    d111 = conv_a / math.sqrt(3)
    assert first == pytest.approx(math.degrees(2 * math.asin(0.71073 / (2 * d111))), abs=0.01)


def test_xrd_refuses_bad_wavelengths_and_ranges_naming_the_value():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"wavelength='CuKalpha' is not a known X-ray line.*CuKa"):
        xrd_pattern(s, wavelength="CuKalpha")
    with pytest.raises(ValueError, match=r"wavelength=-1\.0"):
        xrd_pattern(s, wavelength=-1.0)
    with pytest.raises(ValueError, match=r"two_theta_range=\(90, 10\)"):
        xrd_pattern(s, two_theta_range=(90, 10))
    with pytest.raises(ValueError, match="wavelength='Cu'"):
        review_candidate(s, id="c1", wavelength="Cu")
    assert xrd_pattern(s, wavelength=1.5406).wavelength_angstrom == 1.5406


def test_oxidation_states_where_bond_valence_succeeds():
    from pymatgen.core import Lattice, Structure

    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert guess_oxidation_states(rocksalt)[0] == {"Na": 1.0, "Cl": -1.0}
    states, why = guess_oxidation_states(Structure(Lattice.cubic(2.9), ["Fe", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    assert states is None and "no charge-balanced assignment" in why


# ---------------------------------------------------------------------------------- nearest known
def test_nearest_known_of_an_mp20_test_crystal_is_itself(data_dir, known):
    from mattergen_lab.data import load_mp20

    ds = load_mp20("test", data_dir=data_dir)
    for i in (0, 1234):
        mid = str(ds.ids[i])
        s = _mp20_structure("test", mid, data_dir)
        n = known.nearest(s)
        top = n.by_structure[0]
        assert (top.material_id, top.within_tolerance, top.matcher) == (mid, True, "novelty")
        assert top.structure_distance == pytest.approx(0.0, abs=1e-6)
        assert n.match == mid and not n.is_novel and n.note.startswith(f"not novel: matches {mid}")
        assert n.by_composition[0].composition_distance == 0.0
        assert mid in [m.material_id for m in n.by_composition if m.composition_distance == 0.0] or \
            len([m for m in n.by_composition if m.composition_distance == 0.0]) == len(n.by_composition)
        assert top.space_group == design.candidate_oracles(s)["space_group"]
        assert top.e_above_hull is not None and -1e-6 <= top.e_above_hull < 1.0
    gate = known.nearest(_mp20_structure("test", str(ds.ids[0]), data_dir)).by_structure[0]
    assert (gate.formula, gate.space_group, gate.e_above_hull) == ("GaTe", 194, pytest.approx(0.0, abs=1e-9))


def test_a_novel_candidate_says_why_and_what_came_closest(known):
    from pymatgen.core import Lattice, Structure

    cscl_type_nacl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    n = known.nearest(cscl_type_nacl, k=3)
    assert n.is_novel and n.match is None
    assert n.note.startswith("novel: none of the 1 known NaCl structures in mp20 matches within the novelty "
                             "matcher's tolerances (ltol 0.2, stol 0.3, angle_tol 5°")
    top = n.by_structure[0]
    assert top.matcher == "loose, prototype" and top.space_group == 221 and top.structure_distance < 1e-6
    assert f"closest structure: {top.material_id} ({top.formula}" in n.note
    exact = {m.material_id: m for m in n.by_composition if m.composition_distance == 0.0}
    assert set(exact) == {"mp-22862", "mp-1120767"}  # MP-20's two NaCl entries (the second without coordinates)
    assert exact["mp-22862"].space_group == 225 and exact["mp-1120767"].space_group is None
    assert not exact["mp-1120767"].has_structure
    assert len(n.by_structure) == 3 and n.compared > 3


def test_nearest_needs_a_positive_k(known):
    from pymatgen.core import Lattice, Structure

    with pytest.raises(ValueError, match="k=0"):
        known.nearest(Structure(Lattice.cubic(3.3), ["Na"], [[0, 0, 0]]), k=0)


# ---------------------------------------------------------------------------------------- export
def test_export_of_three_reviewed_candidates(tmp_path, data_dir, known):
    from mattergen_lab.evaluation import load_reference

    nacl, si = _mp20_structure("val", "mp-22862", data_dir), _mp20_structure("val", "mp-149", data_dir)
    licl = nacl.copy()
    licl.replace_species({"Na": "Li"})
    structures = [nacl, si, licl]
    relaxed_nacl = nacl.copy()
    relaxed_nacl.scale_lattice(nacl.volume * 0.97)
    relaxed = [relaxed_nacl, None, None]
    reviews = [review_candidate(s, id=f"c{i}", relaxed=r, known=known) for i, (s, r) in enumerate(zip(structures, relaxed))]
    assert reviews[0].structure_source == "relaxed" and reviews[0].density_relaxed == pytest.approx(nacl.density / 0.97)
    table = pd.DataFrame({"id": ["c0", "c1", "c2"], "formula": ["NaCl", "Si", "LiCl"],
                          "energy_above_hull": [0.0, 0.0, 0.05], "hhi_score": [1000.0, 4600.0, 2000.0]})
    hull = design.hull_data(load_reference("mp20", data_dir=data_dir).phase_diagram(["Na", "Cl"]),
                            [{"id": "c0", "formula": "NaCl", "energy_above_hull": 0.0}])
    out = design.export_candidates(structures, table, tmp_path / "review.zip", report={"note": "t"},
                                   relaxed=relaxed, reviews=reviews, hull=hull)
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        for stem in ("c0_NaCl", "c1_Si", "c2_LiCl"):
            assert {f"{stem}_xrd.csv", f"{stem}_xrd.png", f"{stem}_P1.cif"} <= names
            assert zf.read(f"{stem}_xrd.png")[:8] == b"\x89PNG\r\n\x1a\n"
        assert "c0_NaCl_relaxed_P1.cif" in names and "c1_Si_relaxed_P1.cif" not in names
        assert {"hull.png", "pareto.png", "nearest_known.csv", "report.html"} <= names
        xrd = pd.read_csv(io.StringIO(zf.read("c1_Si_xrd.csv").decode()), comment="#")
        near = pd.read_csv(zf.open("nearest_known.csv"))
        csv = pd.read_csv(zf.open("report.csv"))
        rep = json.loads(zf.read("report.json"))
        page = zf.read("report.html").decode()
        relaxed_cif = zf.read("c0_NaCl_relaxed_P1.cif").decode()
    assert list(xrd.columns) == ["two_theta", "intensity", "hkl", "d_spacing"]
    assert xrd["two_theta"].tolist() == pytest.approx(list(reviews[1].xrd.two_theta))
    assert xrd.loc[xrd["intensity"].idxmax(), "hkl"] == "(1 1 1)"
    si_rows = near[(near["candidate_id"] == "c1") & (near["by"] == "structure")]
    assert si_rows.iloc[0]["material_id"] == "mp-149" and bool(si_rows.iloc[0]["within_novelty_tolerance"])
    assert csv["oxidation_states"].tolist()[0] == "Na+1, Cl-1" and pd.isna(csv["oxidation_states"][1])
    assert csv["nearest_known_structure"].tolist()[:2] == ["mp-22862", "mp-149"]
    assert csv["relaxed_cif"].tolist()[0] == "c0_NaCl_relaxed_P1.cif"
    assert csv["density_relaxed"].tolist()[0] == pytest.approx(nacl.density / 0.97, rel=1e-6)
    assert rep["candidates"][1]["review"]["nearest_known"]["match"] == "mp-149"
    assert rep["candidates"][0]["review"]["xrd_wavelength"] == {"name": "CuKa", "angstrom": 1.54184}
    assert "_xrd_image" not in rep["candidates"][0]
    assert page.count("data:image/png;base64,") == 5  # hull, Pareto and three XRD plots, inline
    for text in ("mp-22862", "mp-149", "Na +1", "Nearest known by structure", "Fm-3m", "Novelty:"):
        assert text in page, text
    from pymatgen.core import Structure

    back = Structure.from_str(relaxed_cif, fmt="cif")
    assert back.volume / len(back) == pytest.approx(relaxed_nacl.volume / len(relaxed_nacl), rel=1e-4)


def test_export_refuses_mismatched_review_lists(tmp_path):
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    table = pd.DataFrame({"id": ["a"], "formula": ["NaCl"]})
    with pytest.raises(ValueError, match="2 relaxed for 1 structures"):
        design.export_candidates([s], table, tmp_path / "x.zip", report={}, relaxed=[None, None])
    assert not (tmp_path / "x.zip").exists()
    np.testing.assert_equal(len(list(tmp_path.iterdir())), 0)


def test_clear_caches_frees_the_mp20_known_materials(data_dir, known):
    """Last in this module on purpose: it empties the cache the ``known`` fixture filled."""
    import mattergen_lab
    from mattergen_lab.design.review import _mp20_known

    assert KnownMaterials.mp20(data_dir) is known and _mp20_known.cache_info().currsize == 1  # loaded once
    cleared = mattergen_lab.clear_caches()
    assert "mattergen_lab.design.review._mp20_known" in cleared
    assert "mattergen_lab.evaluation.reference._mp20_hull" in cleared  # the review's E_hull loaded the hull too
    assert _mp20_known.cache_info().currsize == 0 and mattergen_lab.clear_caches() == []  # nothing left to clear
