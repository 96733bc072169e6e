"""Symmetric variations (#28 with #30): a parent's own space group and Wyckoff sites kept while it is varied.

The parent is symmetrised (pyxtal/spglib at 0.1 Å, primitive cell, atoms orbit after orbit), noised inside its
template where the constraint holds at t0, and denoised on the symmetric mode. Runs use the tiny random model
(exactness does not depend on the weights) and the bundled symmetric model with few steps.
"""

from __future__ import annotations

import json

import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from mattergen_lab import SamplingPipeline, SamplingRequest
from mattergen_lab.sampling.sampler import PredictorCorrectorSampler, SamplerConfig
from mattergen_lab.sampling.variation import Variation
from mattergen_lab.symmetry.constraint import SymmetryConstraint
from mattergen_lab.testing import tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def rutile_x2() -> Structure:
    """Rutile TiO2 (P4₂/mnm, 136: Ti 2a, O 4f with x = 0.305) as a 1x1x2 supercell of 12 atoms."""
    x = 0.305
    s = Structure(Lattice.tetragonal(4.594, 2.959), ["Ti", "Ti", "O", "O", "O", "O"],
                  [[0, 0, 0], [.5, .5, .5], [x, x, 0], [1 - x, 1 - x, 0], [.5 + x, .5 - x, .5], [.5 - x, .5 + x, .5]])
    s.make_supercell([1, 1, 2])
    return s


def _off_template(constraint: SymmetryConstraint, frac: torch.Tensor) -> float:
    """Largest fractional distance of any atom from the symmetric configuration nearest to it."""
    snapped = constraint.snap(frac.double()).to(torch.float64)
    return float((torch.remainder(snapped - frac.double() + 0.5, 1.0) - 0.5).abs().max())


def test_the_parent_is_written_in_its_own_template_and_the_request_records_it(rutile_x2):
    request = SamplingRequest(checkpoint="mgl_mp20_small_symmetric", num_samples=2, batch_size=2, parent=rutile_x2,
                              strength=0.2, symmetry="parent")
    v = request.variation
    assert str(request.symmetry) == "136:af" and str(v.template) == "136:af"
    assert request.num_atoms == 6 and v.parent.num_atoms == 12  # the supercell's primitive cell is sampled
    assert v.record()["template"] == "136:af" and v.record()["num_atoms"] == 12
    sym = v.symmetric
    assert sorted(sym.atom_types.tolist()) == [8, 8, 8, 8, 22, 22]
    assert _off_template(SymmetryConstraint(["136:af"]), sym.frac_coords) < 1e-9
    # re-checking the request (the pipeline replaces fields) keeps the same template
    import dataclasses

    again = dataclasses.replace(request, seed=3)
    assert str(again.symmetry) == "136:af" and again.num_atoms == 6


@pytest.mark.parametrize("strength, inside", [(0.3, True), (0.8, False)])
def test_every_frame_below_the_constraints_start_is_on_the_template_and_the_end_is_exact(rutile_x2, strength, inside):
    v = Variation.build(rutile_x2, strength, symmetric=True)
    sampler = PredictorCorrectorSampler(tiny_model(), config=SamplerConfig(num_steps=20))
    start = v.start().repeat(3)
    frames = list(sampler.iter_steps(num_atoms=torch.tensor([6, 6, 6]), generator=torch.Generator().manual_seed(0),
                                     every=1, dtype=torch.float32, start=start, symmetry=[v.template] * 3,
                                     symmetry_start=0.5))
    constraint = SymmetryConstraint([v.template] * 3)
    first = _off_template(constraint, frames[0].batch.frac_coords)
    assert (first < 1e-5) == inside  # noised inside the template only where the constraint holds at t0
    for f in frames:  # a frame is the state after a step; the step from the first time at or below 0.5 is constrained
        if f.t < 0.45:
            assert _off_template(constraint, f.batch.frac_coords) < 1e-5
    final = frames[-1].batch  # exactly on the template: coordinates and a tetragonal cell (the random model's cell
    assert _off_template(constraint, final.frac_coords) < 1e-5  # is huge, so spglib is asked on real models only)
    lattice = final.lattice.double()
    assert torch.allclose(constraint.lattice(lattice), lattice, rtol=1e-6, atol=1e-6 * float(lattice.abs().max()))


def test_a_small_strength_gives_the_symmetrised_parent_back_in_its_group(rutile_x2):
    request = SamplingRequest(checkpoint="mgl_mp20_small_symmetric", num_samples=3, batch_size=3, num_steps=40, seed=0,
                              parent=rutile_x2, strength=0.02, symmetry="parent")
    out = SamplingPipeline.for_request(request)(request)
    matcher = StructureMatcher()
    for s in out:
        assert s.composition.reduced_formula == "TiO2"
        assert SpacegroupAnalyzer(s, symprec=1e-3).get_space_group_number() == 136
        assert matcher.fit(s, rutile_x2)


def test_the_cli_keeps_the_parents_symmetry_on_the_symmetric_model(rutile_x2, tmp_path):
    from mattergen_lab.cli import main
    from mattergen_lab.sampling.api import read_samples

    cif = tmp_path / "rutile.cif"
    rutile_x2.to(filename=str(cif))
    out = tmp_path / "sym"
    assert main(["vary", "--structure", str(cif), "--keep-symmetry", "--strength", "0.3", "--num-samples", "2",
                 "--batch-size", "2", "--steps", "20", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "sampling.json").read_text())
    assert record["checkpoint"] == "mgl_mp20_small_symmetric" and record["parent"]["template"] == "136:af"
    for s in read_samples(out, 2):  # P4_2/mnm, or a supergroup when its two orbits take one element
        assert len(s) == 6
        assert SpacegroupAnalyzer(s, symprec=1e-3).get_space_group_number() in (136, 123, 139, 191, 221, 225, 229)


def test_a_start_off_its_template_is_refused(rutile_x2):
    v = Variation.build(rutile_x2, 0.3, symmetric=True)
    start = v.start()
    moved = start.batch.replace(frac_coords=torch.remainder(start.batch.frac_coords + 0.01 * torch.arange(18.).reshape(6, 3), 1))
    import dataclasses

    sampler = PredictorCorrectorSampler(tiny_model(), config=SamplerConfig(num_steps=5))
    with pytest.raises(ValueError, match="off their Wyckoff templates"):
        list(sampler.iter_steps(num_atoms=torch.tensor([6]), generator=torch.Generator().manual_seed(0),
                                start=dataclasses.replace(start, batch=moved), symmetry=[v.template]))
