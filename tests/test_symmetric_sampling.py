"""The symmetric mode from the front door: requests, the pipeline, the CLI, campaigns, and its measurements."""

import json

import numpy as np
import pytest

from mattergen_lab.campaign.spec import CampaignSpec
from mattergen_lab.evaluation.symmetry_report import space_group_chi2, symmetry_summary
from mattergen_lab.sampling.inputs import request_templates
from mattergen_lab.sampling.pipeline import SamplingPipeline
from mattergen_lab.sampling.request import SamplingRequest
from mattergen_lab.symmetry import SymmetrySpec, reference_space_groups
from mattergen_lab.symmetry.groups import primitive_operations

BASE = "mgl_mp20_small"


def _kept(template, structure, tol=1e-3) -> bool:
    """Every operation of the template's group (primitive-cell coordinates: the sampled cell) maps the crystal onto
    itself (same species), to ``tol`` Å."""
    frac = np.asarray(structure.frac_coords)
    lattice = structure.lattice.matrix
    types = np.array([site.specie.Z for site in structure])
    rots, trans = primitive_operations(template.space_group)
    for r, t in zip(rots, trans):
        diff = np.mod(frac @ r.T + t, 1.0)[:, None, :] - frac[None, :, :]
        diff -= np.round(diff)
        match = (np.linalg.norm(diff @ lattice, axis=-1) < tol) & (types[:, None] == types[None, :])
        if not match.any(axis=1).all():
            return False
    return True


def test_a_symmetric_request_samples_every_crystal_exactly_on_its_drawn_template():
    r = SamplingRequest(checkpoint=BASE, num_samples=6, batch_size=3, num_steps=6, seed=3, symmetry="mp20")
    structures = SamplingPipeline.for_request(r)(r)
    templates = request_templates(r)
    assert len(templates) == 6 and len({str(t) for t in templates}) > 1  # drawn per crystal
    for t, s in zip(templates, structures):
        assert len(s) == t.primitive_atoms
        assert _kept(t, s), (str(t), s.composition.formula)
    again = SamplingPipeline.for_request(r)(r)  # the same seed: the same templates and crystals
    assert [s.composition for s in again] == [s.composition for s in structures]
    assert np.allclose(again[0].frac_coords, structures[0].frac_coords, atol=1e-6)


def test_a_space_group_with_fixed_atom_counts_and_a_crystal_system():
    r = SamplingRequest(checkpoint=BASE, num_samples=3, batch_size=3, num_steps=4, seed=1, symmetry=225, num_atoms=2)
    templates = request_templates(r)
    assert {t.space_group for t in templates} == {225} and {t.primitive_atoms for t in templates} == {2}
    for t, s in zip(templates, SamplingPipeline.for_request(r)(r)):
        assert _kept(t, s)  # the F cell's primitive rhombohedron: a = b = c, 60°
        assert np.allclose(s.lattice.abc, s.lattice.a, rtol=1e-5) and np.allclose(s.lattice.angles, 60, atol=1e-3)
    hexagonal = request_templates(SamplingRequest(checkpoint=BASE, num_samples=20, symmetry="hexagonal"))
    assert all(168 <= t.space_group <= 194 for t in hexagonal)


@pytest.mark.parametrize("kwargs, message", [
    ({"symmetry": 231}, "231"),
    ({"symmetry": "cubicc"}, "cubicc"),
    ({"symmetry": 225, "num_atoms": 5}, "num_atoms=5"),
    ({"symmetry": "mp20", "num_atoms": 201}, "201"),
    ({"symmetry": "225:ab", "num_samples": 2, "batch_size": 2, "composition": "Li2O"}, "composition='Li2O'"),
])
def test_impossible_symmetric_requests_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingRequest(checkpoint=BASE, **kwargs)


def test_iter_steps_refuses_counts_that_are_not_the_templates_primitive_cells():
    import torch

    from mattergen_lab.symmetry import SymmetryConstraint

    pipe = SamplingPipeline.from_checkpoint(BASE, num_steps=2)
    c = SymmetryConstraint(["225:ab"])  # rock salt: 2 atoms in the primitive cell, 8 in the conventional one
    with pytest.raises(ValueError, match=r"num_atoms=\[8\] but the templates \['225:ab'\] hold \[2\] atoms"):
        pipe.sampler.iter_steps([8], generator=torch.Generator().manual_seed(0), symmetry=c)


def test_the_constraint_start_must_be_a_diffusion_time():
    with pytest.raises(ValueError, match=r"start=0.0 .*\(0, 1\]"):
        SymmetrySpec(source="mp20", start=0.0)
    assert SymmetrySpec(source="mp20", start=1).to_dict() == {"max_atoms": 20, "start": 1.0, "assign": "nearest",
                                                              "settle": 0, "element_patterns": False,
                                                              "source": "mp20"}
    with pytest.raises(ValueError, match="assign='first' must be 'nearest', 'origin' or 'index'"):
        SymmetrySpec(source="mp20", assign="first")


def test_a_spec_reads_back_from_its_fields_as_a_campaign_or_benchmark_names_them():
    spec = SymmetrySpec(source="mp20", assign="origin", start=0.6)
    assert SymmetrySpec.parse(spec.to_dict()) == spec
    assert SymmetrySpec.parse({"templates": ["225:ab"]}) == SymmetrySpec.parse("225:ab")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sorce'\]"):
        SymmetrySpec.parse({"sorce": "mp20"})
    with pytest.raises(ValueError, match="templates='225:ab' must be a list"):
        SymmetrySpec.parse({"templates": "225:ab"})
    arm = CampaignSpec.from_dict({"checkpoint": BASE, "num_samples": 2, "batch_size": 2, "evaluate": False,
                                  "symmetry": [{"source": "mp20", "assign": "origin"}]}).arms()[0]
    assert SamplingRequest(checkpoint=BASE, num_samples=2, batch_size=2, symmetry=arm.symmetry).symmetry.assign == "origin"


def test_settle_runs_only_where_a_free_crystal_was_snapped():
    """``settle`` adds corrector steps inside the templates right after the snap: one network evaluation each, and
    the crystals stay exactly on their templates; with the constraint from t = 1 (nothing snapped) it changes nothing."""
    def run(**spec):
        r = SamplingRequest(checkpoint=BASE, num_samples=2, batch_size=2, num_steps=10, seed=4,
                            symmetry={"source": "mp20", **spec})
        pipe = SamplingPipeline.from_checkpoint(BASE, num_steps=10)
        calls, score = [], pipe.sampler.score_fn
        pipe.sampler.score_fn = lambda *a, **k: calls.append(1) or score(*a, **k)
        return request_templates(r), pipe(r), len(calls)

    templates, none, calls0 = run(start=0.5, settle=0)
    same, settled, calls3 = run(start=0.5, settle=3)
    assert same == templates and (calls0, calls3) == (20, 23)  # 10 corrector + 10 predictor evaluations, + 3
    assert all(_kept(t, s) for t, s in zip(templates, settled))
    assert not all(np.allclose(x.lattice.matrix, y.lattice.matrix) for x, y in zip(none, settled))
    _, from_one, calls_one = run(start=1.0, settle=0)
    _, from_one_settled, calls_one_settled = run(start=1.0, settle=3)
    assert calls_one == calls_one_settled == 20
    assert all(np.array_equal(x.frac_coords, y.frac_coords) for x, y in zip(from_one, from_one_settled))
    with pytest.raises(ValueError, match=r"settle=-1 must be an integer in 0-1000"):
        SymmetrySpec(source="mp20", settle=-1)


def test_the_cli_samples_a_space_group_and_records_it(tmp_path):
    from mattergen_lab.cli import main

    out = tmp_path / "o"
    assert main(["sample", "--checkpoint", BASE, "--num-samples", "2", "--batch-size", "2", "--steps", "3",
                 "--space-group", "194", "--out", str(out)]) == 0
    record = json.loads((out / "sampling.json").read_text())
    assert record["symmetry"] == {"max_atoms": 20, "start": 0.4, "assign": "nearest", "settle": 0,
                                  "element_patterns": False, "space_group": 194}
    with pytest.raises(SystemExit):  # one symmetry flag at a time
        main(["sample", "--checkpoint", BASE, "--space-group", "194", "--crystal-system", "cubic", "--out", str(out)])


def test_symmetry_is_a_campaign_grid_axis():
    spec = CampaignSpec.from_dict({"checkpoint": BASE, "num_samples": 2, "batch_size": 2, "evaluate": False,
                                   "guidance_scale": [0, 1], "symmetry": [None, "mp20", 225]})
    arms = spec.arms()
    assert len(arms) == 6 and [a.symmetry for a in arms[:3]] == [None, "mp20", 225]
    assert "symmetry=225" in arms[2].label and "symmetry" not in arms[0].label
    assert spec.request(arms[2]).symmetry.space_group == 225 and spec.request(arms[0]).symmetry is None
    assert "symmetry" not in CampaignSpec(checkpoint=BASE).to_dict()  # older folders keep their fingerprint
    with pytest.raises(ValueError, match=r"symmetry=\[\]"):
        CampaignSpec.from_dict({"checkpoint": BASE, "symmetry": []})
    with pytest.raises(ValueError, match="arm a1.*231"):
        CampaignSpec.from_dict({"checkpoint": BASE, "symmetry": [None, 231]})


def test_space_group_chi2_on_the_field_scale():
    ref = reference_space_groups()
    assert sum(ref.values()) == 9046  # the MP-20 test split
    groups = [g for g, c in ref.items() for _ in range(c)]
    assert space_group_chi2(groups, ref) < 1e-3  # the reference against itself: only the empty "other" bin
    rng = np.random.default_rng(0)
    drawn = list(rng.choice(groups, 1000))
    assert 0.05 < space_group_chi2(drawn, ref) < 0.4  # 1,000 draws of MP-20 (the field's train row: 0.14)
    p1 = drawn[:750] + [1] * 250  # MatterGen's P1 excess (its χ² 5.1)
    assert 3.0 < space_group_chi2(p1, ref) < 4.5
    assert space_group_chi2(drawn, ref, by="system") < space_group_chi2(drawn, ref)
    # spglib failures (-1) count as P1 (no symmetry found), not as a group MP-20 lacks (the heavily weighted bin)
    assert space_group_chi2(drawn[:-1] + [-1], ref) == space_group_chi2(drawn[:-1] + [1], ref)
    assert space_group_chi2(drawn[:-1] + [-1], ref) < space_group_chi2(drawn[:-1] + [134], ref) - 0.01  # 134: not in ref


def test_the_chi2_floor_of_a_perfect_model_falls_as_one_over_n():
    from mattergen_lab.evaluation.symmetry_report import chi2_floor

    ref = reference_space_groups()
    k = sum(1 for c in ref.values() if c > 0)  # 156 groups
    at_256, at_1000 = chi2_floor(ref, 256), chi2_floor(ref, 1000)
    assert abs(at_256["mean"] - (k - 1) / 256) < 0.08 and abs(at_1000["mean"] - (k - 1) / 1000) < 0.03
    assert at_256["p5"] < at_256["mean"] < at_256["p95"] and at_1000["p95"] < at_256["p5"]
    assert chi2_floor(ref, 256) == at_256  # seeded
    with pytest.raises(ValueError, match="n=0 must be a positive integer"):
        chi2_floor(ref, 0)


def test_symmetry_summary_counts_p1_kept_groups_and_splits():
    import pandas as pd
    from pymatgen.core import Lattice, Structure

    rocksalt = Structure.from_spacegroup(225, Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    p1 = Structure(Lattice([[4.1, 0.3, 0.2], [0.1, 5.3, 0.4], [0.2, 0.3, 6.2]]), ["Li", "Fe", "O", "P", "S"],
                   [[0, 0, 0], [0.21, 0.33, 0.11], [0.52, 0.13, 0.71], [0.77, 0.61, 0.37], [0.31, 0.83, 0.56]])
    table = pd.DataFrame({
        "id": ["a0-0", "a0-1"], "space_group": [225, 1], "chemical_system": ["Cl-Na", "Fe-Li-O-P-S"],
        "stable": [True, False], "novel_unique_stable": [True, False], "rmsd_from_relaxation": [0.01, 0.7],
        "novel_system": [False, True]})
    out = symmetry_summary(table, [rocksalt, p1], reference_space_groups(), requested=[225, 225])
    assert out["p1_before_pct"] == 50.0 and out["p1_after_pct"] == 50.0
    assert out["kept_after_pct"] == 50.0 and out["symmetric_sun_pct"] == 50.0
    # a crystal asked as P4/mmm (123) found in Fm-3m (225) has kept its group's symmetry, one asked as P6/mmm has not
    up = symmetry_summary(table.assign(space_group=[225, 225]), [rocksalt, p1], reference_space_groups(),
                          requested=[123, 191])
    assert up["kept_after_pct"] == 0.0 and up["kept_or_supergroup_after_pct"] == 50.0
    assert out["five_plus_elements_pct"] == 50.0
    assert out["by_elements"]["1-3"] == {"n": 1, "stable_pct": 100.0, "sun_pct": 100.0, "rmsd_mean": 0.01}
    assert out["by_mp20_system"]["not covered"]["rmsd_mean"] == 0.7


def test_compositions_fit_templates_once_per_lattice_point():
    from mattergen_lab.symmetry.fit import assign_orbits, fitting_templates
    from mattergen_lab.symmetry.groups import centring

    assert [centring(g) for g in (1, 12, 44, 139, 166, 225)] == [1, 2, 2, 2, 3, 4]
    got = assign_orbits([4, 4, 8], {11: 8, 17: 8})
    assert {z: sum(m for m, e in zip([4, 4, 8], got) if e == z) for z in (11, 17)} == {11: 8, 17: 8}
    assert assign_orbits([4, 8], {11: 6, 17: 6}) is None  # 6 = no sum of 4 and 8
    nacl = ((11, 1), (17, 1))
    assert [str(t) for t in fitting_templates(SymmetrySpec.parse(225), nacl)[0]] == ["225:ab"]  # 4 lattice points
    cubic = {str(t) for t in fitting_templates(SymmetrySpec.parse("cubic"), nacl)[0]}
    assert {"221:ab", "225:ab"} <= cubic and all(t.split(":")[0] in {"221", "225", "216"} for t in cubic)


def test_symmetric_csp_keeps_the_composition_in_the_primitive_cell_and_the_template():
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    r = SamplingRequest(checkpoint="mgl_mp20_small_csp", num_samples=4, batch_size=4, num_steps=8, seed=2,
                        composition="SrTiO3", symmetry="mp20")
    templates = request_templates(r)
    for t, s in zip(templates, SamplingPipeline.for_request(r)(r)):
        assert _kept(t, s), str(t)
        assert s.composition.reduced_formula == "SrTiO3" and len(s) == t.primitive_atoms == 5  # the primitive cell
        assert len(SpacegroupAnalyzer(s, symprec=1e-3).find_primitive()) == 5
    with pytest.raises(ValueError, match=r"composition='Li2MnO3' \(6 atoms\) fits no Wyckoff template of symmetry='221'"):
        SamplingRequest(checkpoint="mgl_mp20_small_csp", composition="Li2MnO3", symmetry=221)


def test_the_constraint_runs_on_the_official_architecture_for_every_crystal_system():
    """Random weights of the official preset (the architecture of the nine official checkpoints), one template per
    crystal system, centred lattices included: every crystal comes out exactly on its template."""
    import torch

    from mattergen_lab.model.score_model import ScoreModel
    from mattergen_lab.noise.joint import JointDiffusion
    from mattergen_lab.sampling.sampler import PredictorCorrectorSampler, SamplerConfig
    from mattergen_lab.symmetry import WyckoffTemplate

    torch.manual_seed(0)
    model = ScoreModel.from_preset("official").eval()
    sampler = PredictorCorrectorSampler(model, JointDiffusion(), SamplerConfig(num_steps=2))
    texts = ["2:i", "12:ai", "62:c", "139:ae", "166:ac", "194:c", "225:ab"]  # triclinic ... cubic
    templates = [WyckoffTemplate.parse(t) for t in texts]
    assert {t.crystal_system for t in templates} == {"triclinic", "monoclinic", "orthorhombic", "tetragonal",
                                                     "trigonal", "hexagonal", "cubic"}
    *_, final = sampler.iter_steps([t.primitive_atoms for t in templates], generator=torch.Generator().manual_seed(0),
                                   every=0, symmetry=templates, symmetry_start=1.0)
    for t, s in zip(templates, final.batch.to_structures()):
        assert len(s) == t.primitive_atoms and _kept(t, s), str(t)


def test_element_patterns_give_each_class_one_element_and_classes_different_ones():
    """With MP-20's element patterns (``"62:c|cc"``: one element on the first c orbit, another on the other two) every
    crystal has exactly as many elements as its template has classes, and stays exactly in its group."""
    r = SamplingRequest(checkpoint=BASE, num_samples=6, batch_size=6, num_steps=8, seed=5,
                        symmetry={"source": "mp20", "element_patterns": True})
    templates = request_templates(r)
    assert all(t.elements is not None for t in templates) and any("|" in str(t) for t in templates)
    for t, s in zip(templates, SamplingPipeline.for_request(r)(r)):
        assert len(s.composition.elements) == max(t.elements) + 1, (str(t), s.composition.formula)
        assert _kept(t, s)
    plain = request_templates(SamplingRequest(checkpoint=BASE, num_samples=6, batch_size=6, seed=5, symmetry="mp20"))
    assert all(t.elements is None for t in plain)


def test_distinct_types_send_a_repeated_element_back_to_mask_until_the_last_step():
    import torch

    from mattergen_lab.constants import MASK_Z
    from mattergen_lab.symmetry import SymmetryConstraint
    from mattergen_lab.symmetry.templates import WyckoffTemplate

    c = SymmetryConstraint([WyckoffTemplate.parse("221:a|b|c")])  # CsCl-like + c: 1 + 1 + 3 atoms, three classes
    old = torch.tensor([8, MASK_Z, MASK_Z, MASK_Z, MASK_Z])  # class 0 holds O; classes 1 and 2 are masked
    new = torch.tensor([8, 8, 12, 12, 12])  # class 1 drew O again
    logits = torch.zeros(5, 101)
    logits[:, 25] = 5.0  # Fe (Z = 26) is the best free element
    assert c.distinct_types(new, old, logits, last=False).tolist() == [8, MASK_Z, 12, 12, 12]
    assert c.distinct_types(new, old, logits, last=True).tolist() == [8, 26, 12, 12, 12]
    taken = c.taken(old, 101)
    assert taken[1, 7] and taken[4, 7] and not taken[0, 7] and not taken[1, 11]  # O (class 7) barred where masked
    assert SymmetryConstraint([WyckoffTemplate.parse("221:abc")]).taken(old, 101) is None
    free = SymmetryConstraint([WyckoffTemplate.parse("221:abc")])  # no pattern: orbits may share an element
    assert free.distinct_types(new, old, logits, last=True).tolist() == [8, 8, 12, 12, 12]


def test_the_cli_asks_for_element_patterns_only_with_a_symmetric_mode(tmp_path, capsys):
    from mattergen_lab.cli import main

    out = tmp_path / "p"
    assert main(["sample", "--checkpoint", BASE, "--num-samples", "2", "--batch-size", "2", "--steps", "3",
                 "--symmetry", "mp20", "--element-patterns", "--out", str(out)]) == 0
    assert json.loads((out / "sampling.json").read_text())["symmetry"]["element_patterns"] is True
    code = main(["sample", "--checkpoint", BASE, "--num-samples", "2", "--element-patterns", "--out", str(tmp_path / "q")])
    assert code != 0 and "--element-patterns needs a symmetric mode" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_the_space_group_adapter_is_conditioned_on_each_crystals_template_group():
    """Guidance + constraint: ``space_group="template"`` gives each crystal its own template's group as the condition."""
    from mattergen_lab.sampling.inputs import ChunkInputs

    adapter = "mgl_mp20_small_space_group"
    r = SamplingRequest(checkpoint=adapter, num_samples=6, batch_size=6, num_steps=3, seed=2, symmetry="mp20",
                        conditions={"space_group": "template"}, guidance_scale=1.0)
    pipe = SamplingPipeline.for_request(r)
    checked = pipe.check(r)
    (_, indices, seed), = checked.chunks()
    args = ChunkInputs.from_request(checked).for_chunk(indices, seed)
    groups = [t.space_group for t in args["symmetry"]]
    assert len(set(groups)) > 1 and args["properties"]["space_group"] == groups
    # one group: the same crystals as naming that group outright
    one = dict(checkpoint=adapter, num_samples=2, batch_size=2, num_steps=3, seed=5, symmetry=225, guidance_scale=1.0)
    by_template = pipe(SamplingRequest(**one, conditions={"space_group": "template"}))
    by_number = pipe(SamplingRequest(**one, conditions={"space_group": 225}))
    unconditional = SamplingPipeline.for_request(SamplingRequest(**{**one, "guidance_scale": 0.0}))(
        SamplingRequest(**{**one, "guidance_scale": 0.0}))
    assert np.allclose(by_template[0].frac_coords, by_number[0].frac_coords, atol=1e-6)
    assert [s.composition for s in by_template] == [s.composition for s in by_number]
    assert not np.allclose(by_template[0].lattice.matrix, unconditional[0].lattice.matrix, atol=1e-4)
    with pytest.raises(ValueError, match="space_group='template' .* needs the symmetric mode"):
        pipe(SamplingRequest(checkpoint=adapter, num_samples=1, num_steps=3, guidance_scale=1.0,
                             conditions={"space_group": "template"}))
