"""Sampling from a known crystal (#28): variations (SDEdit), inpainting (RePaint) and guided substitution.

All runs use the bundled ``mgl_mp20_small`` on a CPU with few steps (a variation runs only the steps of the
schedule at or below its strength, so ``strength=0.01`` of 200 steps is 2 steps).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

import mattergen_lab
import mattergen_lab.constants
from mattergen_lab import SamplingPipeline, SamplingRequest
from mattergen_lab.constants import MASK_Z
from mattergen_lab.sampling.api import read_samples
from mattergen_lab.sampling.variation import ParentCrystal

BASE = "mgl_mp20_small"
pytestmark = pytest.mark.usefixtures("single_thread")  # bitwise equality needs one thread count everywhere


@pytest.fixture(scope="module")
def srtio3() -> Structure:
    """Cubic perovskite SrTiO3 (a = 3.905 Å, 5 atoms)."""
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.fixture(scope="module")
def srtio3_x2(srtio3) -> Structure:
    """Its 2x1x1 supercell (10 atoms, site order Sr Sr Ti Ti O x6)."""
    s = srtio3.copy()
    s.make_supercell([2, 1, 1])
    return s.get_sorted_structure(key=lambda site: ["Sr", "Ti", "O"].index(site.specie.symbol))


def _run(**kwargs):
    request = SamplingRequest(checkpoint=BASE, **kwargs)
    return request, SamplingPipeline.for_request(request)(request)


def _displacements(out: Structure, parent: Structure) -> np.ndarray:
    """Å each site moved, site by site (the order is kept), measured in the parent's cell."""
    d = (np.asarray(out.frac_coords) - np.asarray(parent.frac_coords) + 0.5) % 1.0 - 0.5
    return np.linalg.norm(d @ parent.lattice.matrix, axis=1)


def test_a_small_strength_gives_the_parent_back_and_a_large_one_does_not(srtio3):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    request, near = _run(num_samples=6, batch_size=6, seed=0, parent=srtio3, strength=0.01)
    assert request.num_atoms == 5 and request.parent.formula == "Sr1Ti1O3"
    for s in near:
        assert s.composition.reduced_formula == "SrTiO3" and matcher.fit(s, srtio3)
        assert _displacements(s, srtio3).max() < 0.15  # Å (the noise at t0 = 0.01 is ~0.01 Å; measured ≤ 0.1)
        assert np.allclose(s.lattice.abc, srtio3.lattice.abc, rtol=0.03)
        assert np.allclose(s.lattice.angles, 90, atol=2)
    _, far = _run(num_samples=6, batch_size=6, seed=0, parent=srtio3, strength=0.6)
    # at t0 = 0.6 the crystals are new ones (measured: none is SrTiO3 and the atoms moved by Å)
    assert sum(matcher.fit(s, srtio3) for s in far) <= 2
    assert np.mean([_displacements(s, srtio3).max() for s in far]) > 0.5


def test_the_loop_starts_at_the_strength_and_takes_the_schedules_steps_below_it(srtio3):
    request = SamplingRequest(checkpoint=BASE, num_samples=2, batch_size=2, num_steps=11, seed=1, parent=srtio3,
                              strength=0.35)
    pipe = SamplingPipeline.for_request(request)
    frames = [item.frame for item in pipe.frames(request, every=1)]
    below = [t for t in pipe.sampler.timesteps() if t < 0.35]  # of 1, 0.91, ..., 0.1818, 1/11: 0.2727, 0.1818, 1/11
    assert len(below) == 3
    assert frames[0].step == 0 and frames[0].t == 0.35
    assert [f.t for f in frames[1:-1]] == pytest.approx(below + [0.0])  # after each step: the next time
    assert [f.step for f in frames] == [0, 1, 2, 3, 4, 4] and frames[-1].final
    # below the grid's last time (1/11) one step goes from t0 to 0
    request = SamplingRequest(checkpoint=BASE, num_samples=2, batch_size=2, num_steps=11, seed=1, parent=srtio3,
                              strength=0.01)
    assert [(f.frame.step, f.frame.t) for f in pipe.frames(request, every=1)] == [(0, 0.01), (1, 0.0), (1, 0.0)]
    # at t0 = 1 the start is the prior: every type masked, the steps those of sampling from scratch
    request = SamplingRequest(checkpoint=BASE, num_samples=2, batch_size=2, num_steps=4, seed=1, parent=srtio3,
                              strength=1.0)
    prior = next(iter(SamplingPipeline.for_request(request).frames(request, every=1))).frame
    assert prior.step == 0 and prior.t == 1.0 and bool((prior.batch.atom_types == MASK_Z).all())


def test_fixed_sites_stay_fixed_in_every_frame_and_the_rest_is_generated(srtio3_x2, tmp_path):
    cif = tmp_path / "sto_x2.cif"
    srtio3_x2.to(filename=str(cif))
    request = SamplingRequest(checkpoint=BASE, num_samples=3, batch_size=3, num_steps=8, seed=2, parent=str(cif),
                              fix_sites="O")
    assert request.fix_sites == (4, 5, 6, 7, 8, 9) and request.strength == 1.0  # inpainting starts from scratch
    pipe = SamplingPipeline.for_request(request)
    parent = request.parent.batch()
    fixed = torch.tensor(request.fix_sites)
    f0, z0, lattice0 = parent.frac_coords[fixed], parent.atom_types[fixed], parent.lattice[0]
    checked = 0
    for item in pipe.frames(request, every=1):
        frame = item.frame
        exact = [frame.batch] if frame.final else [frame.mean] if frame.mean is not None else []
        for batch in exact:  # the denoised state of every step, and the final crystals
            for c in batch.split():
                d = (c.frac_coords[fixed].double() - f0 + 0.5) % 1.0 - 0.5
                assert d.abs().max() < 1e-6 and torch.equal(c.atom_types[fixed], z0)
                assert (c.lattice[0].double() - lattice0).abs().max() < 1e-5  # the parent's cell, in float32
                checked += 1
        for c in frame.batch.split():  # the noisy state: each known type either itself or masked (forward process)
            z = c.atom_types[fixed]
            assert bool(((z == z0) | (z == MASK_Z)).all())
    assert checked == 3 * 9  # 8 steps + the final frame, 3 crystals
    out = pipe(request)
    known = request.parent.structure
    for s in out:
        assert [str(s[i].specie) for i in request.fix_sites] == ["O"] * 6
        assert _displacements(s, known)[list(request.fix_sites)].max() < 1e-5
        assert np.allclose(s.lattice.abc, known.lattice.abc, atol=1e-4)
    assert len({tuple(s.atomic_numbers[:4]) for s in out}) > 1  # the free sites are generated, not copied


def test_inpainting_with_more_atoms_keeps_the_fixed_sites_and_generates_the_rest(srtio3_x2, tmp_path):
    from mattergen_lab.cli import main

    request = SamplingRequest(checkpoint=BASE, num_samples=2, batch_size=2, num_steps=8, seed=2, parent=srtio3_x2,
                              fix_sites="O", num_atoms=9)
    assert request.num_atoms == 9 and request.strength == 1.0 and request.variation.record()["generated_atoms"] == 3
    parent = request.parent.batch()
    fixed = torch.tensor(request.fix_sites)
    f0, lattice0 = parent.frac_coords[fixed], parent.lattice[0]
    pipe = SamplingPipeline.for_request(request)
    checked = 0
    for item in pipe.frames(request, every=1):
        frame = item.frame
        for batch in [frame.batch] if frame.final else [frame.mean] if frame.mean is not None else []:
            for c in batch.split():  # the six O sites first, exact in every denoised state
                assert c.num_atoms.tolist() == [9] and (c.atom_types[:6] == 8).all()
                assert ((c.frac_coords[:6].double() - f0 + 0.5) % 1 - 0.5).abs().max() < 1e-6
                assert (c.lattice[0].double() - lattice0).abs().max() < 1e-5
                checked += 1
    assert checked == 2 * 9
    out = pipe(request)
    assert [len(s) for s in out] == [9, 9]
    assert all(1 <= z <= 94 and z != 100 for s in out for z in s.atomic_numbers)  # the placeholder never survives
    cif = tmp_path / "sto.cif"
    srtio3_x2.to(filename=str(cif))
    assert main(["vary", "--structure", str(cif), "--fix-sites", "O", "--num-atoms", "9", "--num-samples", "2",
                 "--batch-size", "2", "--steps", "8", "--seed", "2", "--out", str(tmp_path / "more"), "--quiet"]) == 0
    record = json.loads((tmp_path / "more" / "sampling.json").read_text())["parent"]
    assert record["generated_atoms"] == 3 and record["fix_sites"] == list(request.fix_sites)


def test_a_substitution_keeps_the_framework_and_re_samples_the_chosen_sites(srtio3_x2):
    request, out = _run(num_samples=4, batch_size=4, num_steps=20, seed=3, parent=srtio3_x2, substitute="Ti=Mn,Fe")
    assert request.substitute == {"Ti": ("Fe", "Mn")} and request.strength == 0.2
    for s in out:
        species = [str(site.specie) for site in s]
        assert species[:2] == ["Sr", "Sr"] and species[4:] == ["O"] * 6
        assert set(species[2:4]) <= {"Mn", "Fe"}
        parent = request.parent.structure  # Niggli-reduced: the same sites in the same order, the cell's axes sorted
        assert _displacements(s, parent).max() < 1.0 and np.allclose(s.lattice.abc, parent.lattice.abc, rtol=0.1)
    # an element mask re-samples the parent's elements outside it: Ti has to become Zr here
    _, masked = _run(num_samples=2, batch_size=2, num_steps=20, seed=3, parent=srtio3_x2, strength=0.2,
                     elements="Sr-Zr-O")
    assert all({str(e) for e in s.composition} <= {"Sr", "Zr", "O"} for s in masked)


def test_each_site_may_stay_itself_unless_an_explicit_mask_or_a_substitution_says_otherwise():
    # ThO2 (fluorite): Th is outside the 76 elements the model generates from scratch, but MP-20 has it
    tho2 = Structure(Lattice.cubic(5.6), ["Th", "O", "O"], [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]])
    th, o = 90 - 1, 8 - 1  # classes
    free = SamplingRequest(parent=tho2, strength=0.3, num_samples=1, batch_size=1)
    start = free.variation.start(keep_own=True)
    default_mask = torch.zeros(101, dtype=torch.bool)
    default_mask[torch.tensor(mattergen_lab.constants.SELECTED_ATOMIC_NUMBERS) - 1] = True
    assert not default_mask[th]
    rows = start.site_allowed(default_mask)
    assert rows[0, th] and rows[1, o] and not rows[1, th] and int(rows[0].sum()) == int(default_mask.sum()) + 1
    # under an explicit mask the parent's Th is re-sampled within it, and starts masked
    masked = SamplingRequest(parent=tho2, strength=0.3, num_samples=1, batch_size=1, elements="Zr-Hf-O")
    mask = torch.zeros(101, dtype=torch.bool)
    mask[[40 - 1, 72 - 1, 8 - 1]] = True
    rows = masked.variation.start(keep_own=masked.mask is None).site_allowed(mask)
    assert not rows[0, th] and rows[0].nonzero().flatten().tolist() == [7, 39, 71]
    # a substituted site may only be one of its targets; fixed sites only themselves
    sub = SamplingRequest(parent=tho2, substitute="O=S,Se", num_samples=1, batch_size=1)
    rows = sub.variation.start().site_allowed(default_mask)
    assert rows[1].nonzero().flatten().tolist() == [16 - 1, 34 - 1] and rows[0].nonzero().flatten().tolist() == [th]
    fixed = SamplingRequest(parent=tho2, fix_sites=[0], num_samples=1, batch_size=1, elements="Zr-Hf-O")
    rows = fixed.variation.start(keep_own=False).site_allowed(mask)
    assert rows[0].nonzero().flatten().tolist() == [th] and rows[1].nonzero().flatten().tolist() == [7, 39, 71]


def test_same_seed_same_crystals_from_vary_the_pipeline_and_the_cli(srtio3, tmp_path):
    from mattergen_lab.cli import main

    kwargs = dict(num_samples=3, batch_size=2, num_steps=10, seed=4, parent=srtio3, strength=0.5)
    _, a = _run(**kwargs)
    _, b = _run(**kwargs)
    c = mattergen_lab.vary(srtio3, 3, strength=0.5, batch_size=2, num_steps=10, seed=4)
    _, other = _run(**{**kwargs, "seed": 5})
    key = [(tuple(s.atomic_numbers), np.asarray(s.frac_coords).round(7).tolist(), s.lattice.abc) for s in a]
    assert key == [(tuple(s.atomic_numbers), np.asarray(s.frac_coords).round(7).tolist(), s.lattice.abc) for s in b]
    assert key == [(tuple(s.atomic_numbers), np.asarray(s.frac_coords).round(7).tolist(), s.lattice.abc) for s in c]
    assert key != [(tuple(s.atomic_numbers), np.asarray(s.frac_coords).round(7).tolist(), s.lattice.abc) for s in other]

    poscar = tmp_path / "POSCAR"
    srtio3.to(filename=str(poscar), fmt="poscar")
    out = tmp_path / "vary"
    argv = ["vary", "--structure", str(poscar), "--strength", "0.5", "--num-samples", "3", "--batch-size", "2",
            "--steps", "10", "--seed", "4", "--out", str(out)]
    assert main(argv) == 0
    for x, y in zip(read_samples(out, 3), a):
        assert list(x.atomic_numbers) == list(y.atomic_numbers)
        assert np.abs((np.asarray(x.frac_coords) - np.asarray(y.frac_coords) + 0.5) % 1 - 0.5).max() < 1e-6
    record = json.loads((out / "sampling.json").read_text())["parent"]
    assert record == {"sha256": ParentCrystal.parse(srtio3).sha256, "formula": "Sr1Ti1O3", "num_atoms": 5,
                      "strength": 0.5}
    # the folder refuses variations of another parent, naming what differs
    other_parent = srtio3.copy()
    other_parent.replace_species({"Sr": "Ba"})
    other_poscar = tmp_path / "other.vasp"
    other_parent.to(filename=str(other_poscar), fmt="poscar")
    assert main([*argv[:2], str(other_poscar), *argv[3:]]) == 2


def _disordered() -> Structure:
    return Structure(Lattice.cubic(3.9), [{"Sr": 0.5, "Ba": 0.5}, "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.mark.parametrize("kwargs, message", [
    ({"parent": "DISORDERED"}, r"site 0 is disordered or partially occupied \(Sr0.5 \+ Ba0.5|Ba0.5 \+ Sr0.5\)"),
    ({"parent": "HUGE"}, "250 atoms is more than MAX_ATOMS_PER_CRYSTAL=200"),
    ({"strength": 0}, r"strength=0 must be a number in \(0, 1\]"),
    ({"strength": 1.5}, r"strength=1.5 must be"),
    ({"strength": float("nan")}, r"strength=nan must be"),
    ({"strength": -0.1}, r"strength=-0.1 must be"),
    ({"fix_sites": "Ca"}, "fix_sites='Ca': Ca matches no site of Sr1Ti1O3"),
    ({"fix_sites": [7]}, r"fix_sites=\[7\]: site 7 is not a site of Sr1Ti1O3 \(sites 0-4\)"),
    ({"fix_sites": "Sr,Ti,O"}, "fixes every site"),
    ({"fix_sites": " "}, "names no site"),
    ({"substitute": "Ti=Xe"}, "substitute Ti=Xe: the model cannot make Xe"),
    ({"substitute": "Ti=Mn,U"}, "the model cannot make U"),
    ({"substitute": "Fe=Mn"}, "the parent Sr1Ti1O3 has no Fe"),
    ({"substitute": "Ti"}, "substitute 'Ti' must look like 'Fe=Mn,Co'"),
    ({"substitute": "Ti=Qq"}, "'Qq' is not an element symbol"),
    ({"substitute": "Ti=Mn", "elements": "Sr-Ti-O"}, "substitute Ti=Mn: none of them is in the element mask O-Sr-Ti"),
    ({"substitute": "Ti=Mn", "fix_sites": [1]}, r"site 1 \(Ti\) is both fixed"),
    ({"substitute": "Ti=Zr", "elements": "Zr-O"}, "substitute keeps the parent's Sr, outside the element mask O-Zr"),
    ({"num_atoms": 8}, "num_atoms=8 conflicts with the parent Sr1Ti1O3"),
    ({"num_atoms": 3, "fix_sites": "O"}, "num_atoms=3 must be more than the 3 fixed sites of Sr1Ti1O3"),
    ({"num_atoms": 7, "fix_sites": "O", "strength": 0.5}, "the 4 generated atoms start from the prior, so the "
                                                          "strength must be 1"),
    ({"num_atoms": 7, "fix_sites": "O", "substitute": "Ti=Zr"}, "does not combine with substitute"),
    ({"num_atoms": 201, "fix_sites": "O"}, "num_atoms=201 is more than MAX_ATOMS_PER_CRYSTAL=200"),
    ({"composition": "SrTiO3"}, "composition= is not used with it"),
    ({"symmetry": 225}, r"symmetry='225' with parent SrTiO3: a variation keeps the parent's own symmetry, "
                        r"221:\w+ \(space group 221\); pass symmetry='parent'"),
    ({"symmetry": "parent", "fix_sites": "O"}, "fix_sites='O' does not combine with a symmetric variation yet"),
    ({"symmetry": "mp20"}, "a variation keeps the parent's own symmetry"),
])
def test_refusals_name_the_value_before_any_work(srtio3, kwargs, message, monkeypatch):
    calls = []
    monkeypatch.setattr(SamplingPipeline, "from_checkpoint", lambda *a, **k: calls.append(a))
    kwargs = dict(kwargs)
    parent = {"DISORDERED": _disordered(), "HUGE": srtio3 * (5, 5, 2)}.get(kwargs.pop("parent", None), srtio3)
    with pytest.raises(ValueError, match=message):
        SamplingRequest(checkpoint=BASE, num_samples=2, batch_size=2, parent=parent, **kwargs)
    assert not calls


def test_refusals_from_files_and_the_cli_are_one_line(srtio3, tmp_path, capsys):
    from mattergen_lab.cli import main

    with pytest.raises(ValueError, match="strength=0.3 needs a crystal to start from"):
        SamplingRequest(strength=0.3)
    with pytest.raises(FileNotFoundError, match="nope.cif"):
        SamplingRequest(parent=str(tmp_path / "nope.cif"))
    partial = tmp_path / "partial.cif"
    text = srtio3.to(fmt="cif")
    sr_row = next(line for line in text.splitlines() if line.strip().startswith("Sr "))
    partial.write_text(text.replace(sr_row, sr_row[:-1] + "0.5"))  # the last column is the occupancy
    out = tmp_path / "never"
    assert main(["vary", "--structure", str(partial), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "partially occupied (Sr0.5)" in err and "partial.cif" in err
    assert not out.exists()  # refused before any folder was made
    with pytest.raises(ValueError, match="is a crystal-structure-prediction"):
        request = SamplingRequest(checkpoint="mgl_mp20_small_csp", parent=srtio3, num_samples=1, batch_size=1)
        SamplingPipeline.for_request(request)(request)


def test_the_benchmark_helpers(srtio3):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_variations as bench

    assert bench.parse_strengths("0.1, 0.3,1") == [0.1, 0.3, 1.0]
    for bad, message in [("0", "0.0 is outside"), ("x", "'x' is not a number"), ("", "names no strength")]:
        with pytest.raises(ValueError, match=message):
            bench.parse_strengths(bad)
    moved = srtio3.copy()
    moved.translate_sites([1], [0.1, 0, 0])  # 0.3905 Å along a
    moved.translate_sites([0], [-0.02, 0, 0])  # across the cell boundary: 0.078 Å, not 3.8
    assert bench.max_displacement(moved, srtio3) == pytest.approx(0.3905)
    assert bench.space_group(srtio3) == 221 and bench.space_group(moved) != 221
    # the relaxer works on the Niggli-reduced cell: the move is measured there, whatever basis the generated one had
    flipped = Structure(Lattice(-srtio3.lattice.matrix), srtio3.species, -srtio3.frac_coords)  # axes reversed
    relaxed = flipped.get_reduced_structure("niggli").copy()
    relaxed.translate_sites([2], [0.01, 0, 0])  # an O site moves 0.039 Å
    assert bench.fixed_sites_move(flipped, relaxed, [2, 3, 4]) == pytest.approx(0.03905, abs=1e-6)
    assert bench.fixed_sites_move(flipped, relaxed, [3, 4]) < 1e-9
    rows = [{"strength": 0.1, "seconds": 2.0, "parent_space_group": 221, "variations": [
        {"same_formula": True, "match": True, "max_displacement": 0.2, "relaxed_match": True, "space_group": 221},
        {"same_formula": False, "match": False, "max_displacement": 3.0, "relaxed_match": False, "space_group": 1}]}]
    table = bench.summarize(rows, [0.1, 0.3], relax=True)
    assert table == [{"strength": 0.1, "parents": 1, "variations": 2, "same_formula_pct": 50.0, "match_pct": 50.0,
                      "median_max_displacement_A": 0.2, "seconds_per_crystal": 1.0, "kept_group_pct": 50.0,
                      "relaxed_match_pct": 50.0, "relaxed": 2}]
    assert "| 0.1 | 1 | 2 | 50 % | 50 % | 50 % (of 2) | 50 % | 0.20 Å | 1.00 |" in bench.markdown(table, relax=True)
    table[0].update(stable_pct=50.0, new_and_stable_pct=0.0, evaluated=2)  # what --evaluate adds
    text = bench.markdown(table, relax=False)
    assert "| stable | new and stable |" in text and text.rstrip().endswith("| 1.00 | 50 % | 0 % (of 2) |")


def test_strength_is_a_campaign_grid_axis_over_one_parent(srtio3, tmp_path):
    from mattergen_lab.campaign.spec import CampaignSpec

    cif = tmp_path / "SrTiO3.cif"
    srtio3.to(filename=str(cif))
    d = {"checkpoint": "mgl_mp20_small", "num_samples": 2, "batch_size": 2, "num_steps": 4, "evaluate": False,
         "parent": str(cif), "strength": [0.1, 0.3, 0.6], "guidance_scale": 0}
    spec = CampaignSpec.from_dict(d)
    arms = spec.arms()
    assert [a.strength for a in arms] == [0.1, 0.3, 0.6] and "t0=0.3" in arms[1].label
    request = spec.request(arms[2])
    assert request.strength == 0.6 and request.parent.num_atoms == len(srtio3)
    crystals = SamplingPipeline.for_request(request)(request)
    assert [len(c) for c in crystals] == [len(srtio3)] * 2  # variations keep the parent's atoms
    assert CampaignSpec.from_dict(spec.to_dict()).fingerprint() == spec.fingerprint()
    moved = srtio3.copy()
    moved.translate_sites([0], [0.01, 0, 0])
    moved.to(filename=str(cif))  # the same path, another crystal: another campaign
    assert CampaignSpec.from_dict(d).fingerprint() != spec.fingerprint()
    assert "parent" not in CampaignSpec(checkpoint="mgl_mp20_small").to_dict()  # older folders keep their fingerprint
    with pytest.raises(ValueError, match=r"strength=\[\] is an empty grid axis"):
        CampaignSpec.from_dict({**d, "strength": []})
    with pytest.raises(ValueError, match=r"arm a0 .*strength=0.3 needs a crystal to start from"):
        CampaignSpec.from_dict({"checkpoint": "mgl_mp20_small", "strength": 0.3, "evaluate": False})
    with pytest.raises(ValueError, match=r"arm a1 .*strength"):
        CampaignSpec.from_dict({**d, "strength": [0.3, 1.5]})
    # the parent's own symmetry as a grid axis beside the plain variations
    both = CampaignSpec.from_dict({**d, "strength": 0.3, "symmetry": [None, "parent"]})
    plain, symmetric = both.arms()
    assert both.request(plain).symmetry is None and both.request(symmetric).symmetry.templates[0].space_group == 221
    with pytest.raises(ValueError, match=r"arm a0 .*a variation keeps the parent's own symmetry, 221:"):
        CampaignSpec.from_dict({**d, "strength": 0.3, "symmetry": 225})


def test_variations_inpainting_and_substitution_run_on_the_official_architecture(srtio3_x2):
    """Random weights of the official preset (the nine official checkpoints' architecture): a variation, an
    inpainting and a substitution each start from the parent and keep what they promise."""
    from mattergen_lab.model.score_model import ScoreModel
    from mattergen_lab.noise.joint import JointDiffusion
    from mattergen_lab.sampling.sampler import PredictorCorrectorSampler, SamplerConfig
    from mattergen_lab.sampling.variation import Variation

    torch.manual_seed(0)
    sampler = PredictorCorrectorSampler(ScoreModel.from_preset("official").eval(), JointDiffusion(),
                                        SamplerConfig(num_steps=4))
    cases = {"vary": Variation.build(srtio3_x2, 0.3), "inpaint": Variation.build(srtio3_x2, fix_sites="O"),
             "substitute": Variation.build(srtio3_x2, substitute="Ti=Zr")}
    for name, v in cases.items():
        start = v.start().repeat(2)
        *_, final = sampler.iter_steps(torch.tensor([10, 10]), generator=torch.Generator().manual_seed(1), every=0,
                                       start=start)
        z = final.batch.atom_types.reshape(2, 10)
        assert bool(((z >= 1) & (z <= 100)).all()), name
        if name == "inpaint":  # the six O sites exactly where they were
            f0 = start.batch.frac_coords.reshape(2, 10, 3)[:, 4:]
            assert ((final.batch.frac_coords.reshape(2, 10, 3)[:, 4:].double() - f0 + 0.5) % 1 - 0.5).abs().max() < 1e-6
            assert (z[:, 4:] == 8).all()
        if name == "substitute":  # the Ti sites became Zr, the others stayed
            assert (z[:, 2:4] == 40).all() and (z[:, :2] == 38).all() and (z[:, 4:] == 8).all()
