"""Crystal-structure prediction (CSP): compositions given, atom types never noised, scored or sampled."""

from __future__ import annotations

import json
import pytest
import torch
from must_run import importorskip

from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.model.io import save_checkpoint
from mattergen_lab.model.score_model import ScoreModel
from mattergen_lab.noise.joint import DiffusionConfig, JointDiffusion, is_csp_config
from mattergen_lab.sampling.composition import FixedComposition
from mattergen_lab.sampling.request import SamplingRequest
from mattergen_lab.sampling.sampler import PredictorCorrectorSampler, SamplerConfig
from mattergen_lab.testing import tiny_model
from mattergen_lab.training.loss import loss_per_crystal

CSP = DiffusionConfig(fixed_atom_types=True)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def csp_checkpoint(tmp_path_factory):
    """A random tiny model saved as a CSP checkpoint (``diffusion.fixed_atom_types: true``)."""
    folder = tmp_path_factory.mktemp("csp") / "tiny_csp"
    return save_checkpoint(folder, tiny_model(), {"diffusion": CSP.to_dict(), "sampling": {"num_steps": 3}})


# ------------------------------------------------------------------------------ compositions
def test_composition_counts_and_cell():
    c = FixedComposition.parse("Li2MnO3", formula_units=2)
    assert (c.num_atoms, c.cell_formula, c.counts) == (12, "Li4Mn2O6", {"Li": 4, "Mn": 2, "O": 6})
    assert c.atomic_numbers == (3,) * 4 + (25,) * 2 + (8,) * 6
    assert FixedComposition.parse("Ca(OH)2").counts == {"Ca": 1, "O": 2, "H": 2}
    assert FixedComposition.parse(" NaCl ").num_atoms == 2


@pytest.mark.parametrize(("formula", "units", "match"), [
    ("Li2MnO3", 4, r"composition='Li2MnO3' with formula_units=4 has 24 atoms per cell; .* at most 20"),
    ("Fe21O", 1, r"composition='Fe21O' with formula_units=1 has 22 atoms"),
    ("Xx2O", 1, r"composition='Xx2O': 'Xx' is not an element symbol"),
    ("Li2MnO3)", 1, r"composition='Li2MnO3\)' is not a formula pymatgen can parse"),
    ("li2mno3", 1, r"composition='li2mno3' is not a formula"),
    ("", 1, r"composition='' must be a chemical formula"),
    ("HeO", 1, r"composition='HeO': He is an element MatterGen cannot generate"),
    ("Li0.5O", 1, r"Li0.5 is not a whole number of atoms"),
    ("NaCl", 0, r"formula_units=0 must be a positive integer"),
    ("NaCl", -2, r"formula_units=-2 must be a positive integer"),
    ("NaCl", 1.5, r"formula_units=1.5 must be a positive integer"),
])
def test_bad_compositions_name_the_value(formula, units, match):
    with pytest.raises(ValueError, match=match):
        FixedComposition.parse(formula, units)
    with pytest.raises(ValueError, match=match):
        SamplingRequest(composition=formula, formula_units=units)


def test_request_composition_sets_and_checks_num_atoms():
    r = SamplingRequest(composition="Li2MnO3", formula_units=2, num_samples=3, batch_size=2)
    assert r.composition.num_atoms == 12 and r.formula_units == 2
    assert SamplingRequest(composition="NaCl", num_atoms=2).composition.cell_formula == "NaCl"
    with pytest.raises(ValueError, match=r"num_atoms=5 conflicts with composition='NaCl' x 1 \(2 atoms\)"):
        SamplingRequest(composition="NaCl", num_atoms=5)
    with pytest.raises(ValueError, match=r"composition='NaCl' fixes every atom; drop the element mask.*'Cl-Na'"):
        SamplingRequest(composition="NaCl", elements="Na-Cl")
    with pytest.raises(ValueError, match=r"formula_units=2 needs a composition"):
        SamplingRequest(formula_units=2)


# ------------------------------------------------------------------------------ training
def _clean_batch() -> CrystalBatch:
    g = torch.Generator().manual_seed(1)
    num_atoms = torch.tensor([3, 5, 2, 4])
    types = torch.tensor([3, 25, 8, 26, 26, 8, 8, 8, 11, 17, 1, 6, 7, 8])
    lattice = torch.diag_embed(torch.tensor([[4.0, 4.5, 5.0]] * 4)) + 0.1 * torch.eye(3)
    return CrystalBatch(atom_types=types, frac_coords=torch.rand(14, 3, generator=g), lattice=lattice, num_atoms=num_atoms)


def test_csp_corruption_leaves_types_untouched_and_has_no_type_loss():
    batch, seen = _clean_batch(), []
    model = ScoreModel.from_preset("tiny")

    def spy(noisy: CrystalBatch, t: torch.Tensor):
        seen.append(noisy)
        return model(noisy, t)

    t = torch.tensor([1e-5, 0.3, 0.7, 1.0])  # up to t = 1, where the base process masks every atom
    terms = loss_per_crystal(spy, batch, JointDiffusion(CSP), generator=torch.Generator().manual_seed(0), t=t)
    assert torch.equal(seen[0].atom_types, batch.atom_types)
    assert not torch.equal(seen[0].frac_coords, batch.frac_coords)  # coordinates and lattice are still noised
    assert terms["atomic_numbers"].tolist() == [0.0] * 4
    assert bool((terms["pos"] > 0).all()) and bool((terms["cell"] > 0).all())
    terms["loss"].mean().backward()
    assert model.fc_atom.weight.grad is None  # no gradient reaches the type head
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.gemnet.parameters())
    # the base process at t = 1 masks every atom (the contrast)
    seen.clear()
    base = loss_per_crystal(spy, batch, JointDiffusion(), generator=torch.Generator().manual_seed(0), t=t)
    assert bool((seen[0].atom_types[-4:] == 101).all()) and float(base["atomic_numbers"].detach().sum()) > 0


def test_diffusion_config_records_csp_only_when_set():
    assert "fixed_atom_types" not in DiffusionConfig().to_dict()
    d = CSP.to_dict()
    assert d["fixed_atom_types"] is True and DiffusionConfig.from_dict(d) == CSP
    assert is_csp_config({"diffusion": d}) and not is_csp_config({"diffusion": DiffusionConfig().to_dict()})
    with pytest.raises(ValueError, match="fixed_atom_types='yes' must be True or False"):
        DiffusionConfig(fixed_atom_types="yes")


def test_finetune_csp_step_keeps_the_type_head_and_records_the_flag(tmp_path):
    from mattergen_lab.model.io import Checkpoint, load_local_checkpoint
    from mattergen_lab.training.finetune import finetune_csp
    from mattergen_lab.training.trainer import TrainConfig

    class Data:  # the same four crystals, repeated
        def __len__(self):
            return 8

        def get_batch(self, idx, *, dtype=torch.float32):
            return _clean_batch().to(dtype=dtype)

        def num_atoms_distribution(self):
            from mattergen_lab.data.num_atoms import NumAtomsDistribution

            return NumAtomsDistribution.from_counts([3, 5, 2, 4])

    base = Checkpoint(model=tiny_model(), config={"diffusion": DiffusionConfig().to_dict(), "training": {"step": 7}})
    head = base.model.fc_atom.weight.detach().clone()
    cfg = TrainConfig(preset="tiny", max_steps=2, batch_size=4, val_every=1, lr=1e-3, ema_decay=0.0)
    result = finetune_csp(base, Data(), Data(), tmp_path / "run", cfg)
    rows = result.history
    assert [r["train_atomic_numbers"] for r in rows] == [0.0, 0.0] and [r["val_atomic_numbers"] for r in rows] == [0.0, 0.0]
    out = load_local_checkpoint(tmp_path / "run" / "last")
    assert is_csp_config(out.config) and out.config["csp"] is True and out.config["base_step"] == 7
    assert torch.equal(out.model.fc_atom.weight, head)  # never trained: no type loss
    assert not torch.equal(out.model.gemnet.atom_emb.embeddings.weight, base.model.gemnet.atom_emb.embeddings.weight)


# ------------------------------------------------------------------------------ sampling
def test_composition_is_fixed_in_every_frame_and_crystal():
    sampler = PredictorCorrectorSampler(tiny_model(), JointDiffusion(CSP), SamplerConfig(num_steps=4))
    comp = FixedComposition.parse("Li2MnO3", formula_units=2)
    types = torch.tensor(comp.atomic_numbers * 3)
    frames = list(sampler.iter_steps([12, 12, 12], generator=torch.Generator().manual_seed(0), every=1, atom_types=types))
    assert len(frames) == 6
    for f in frames:
        assert torch.equal(f.batch.atom_types, types)
        if f.mean is not None:
            assert torch.equal(f.mean.atom_types, types)
    assert not torch.equal(frames[0].batch.frac_coords, frames[-1].batch.frac_coords)
    structures = sampler.sample(5, batch_size=2, seed=3, composition="Li2MnO3", formula_units=2)
    assert len(structures) == 5 and all(len(s) == 12 for s in structures)
    assert all(s.composition.as_dict() == {"Li": 4.0, "Mn": 2.0, "O": 6.0} for s in structures)
    # per-crystal compositions in one batch (the benchmark's way): NaCl and Fe2O3 side by side
    mixed = torch.tensor([11, 17, 26, 26, 8, 8, 8])
    *_, final = sampler.iter_steps([2, 5], generator=torch.Generator().manual_seed(0), every=0, atom_types=mixed)
    assert [s.composition.reduced_formula for s in final.batch.to_structures()] == ["NaCl", "Fe2O3"]


def test_composition_needs_a_csp_model_and_a_csp_model_needs_one():
    plain = PredictorCorrectorSampler(tiny_model(), JointDiffusion(), SamplerConfig(num_steps=2))
    with pytest.raises(ValueError, match="atom_types .a composition. needs a CSP model"):
        plain.sample(1, seed=0, composition="NaCl")
    csp = PredictorCorrectorSampler(tiny_model(), JointDiffusion(CSP), SamplerConfig(num_steps=2))
    with pytest.raises(ValueError, match="a CSP model .* samples only given compositions"):
        csp.sample(1, seed=0, num_atoms=2)
    with pytest.raises(ValueError, match=r"atom_types must be 3 integer atomic numbers"):
        list(csp.iter_steps([3], generator=torch.Generator(), atom_types=[11, 17]))
    with pytest.raises(ValueError, match=r"atomic numbers in 1-100; got \[0, 11\]"):
        list(csp.iter_steps([2], generator=torch.Generator(), atom_types=[11, 0]))


def test_api_names_the_checkpoint(csp_checkpoint):
    from mattergen_lab.sampling.api import sample

    with pytest.raises(ValueError, match=r"composition='NaCl' needs a crystal-structure-prediction checkpoint.*mgl_mp20_small"):
        sample("mgl_mp20_small", 1, num_steps=1, composition="NaCl")
    with pytest.raises(ValueError, match=r"tiny_csp is a crystal-structure-prediction \(CSP\) model"):
        sample(csp_checkpoint, 1)
    out = sample(csp_checkpoint, 2, batch_size=2, composition="Fe2O3")
    assert [s.composition.reduced_formula for s in out] == ["Fe2O3", "Fe2O3"]


def test_cli_sample_composition_end_to_end(csp_checkpoint, tmp_path, capsys):
    from mattergen_lab.cli import main
    from mattergen_lab.sampling.api import read_samples

    out = tmp_path / "s"
    args = ["sample", "--checkpoint", str(csp_checkpoint), "--composition", "Li2MnO3", "--formula-units", "2",
            "--num-samples", "3", "--batch-size", "2", "--steps", "3", "--out", str(out)]
    assert main(args) == 0
    structures = read_samples(out, 3)
    assert all(s.composition.as_dict() == {"Li": 4.0, "Mn": 2.0, "O": 6.0} for s in structures)
    assert len(list((out / "cifs").glob("gen_*.cif"))) == 3
    record = json.loads((out / "sampling.json").read_text())
    assert record["composition"] == {"formula": "Li2MnO3", "formula_units": 2, "cell": "Li4Mn2O6"} and record["num_atoms"] == 12
    # a composition is a setting: the same folder refuses another one, naming it
    capsys.readouterr()
    assert main(args[:4] + ["LiMnO2"] + args[5:]) == 2
    assert "composition.cell: 'Li4Mn2O6' -> 'Li2Mn2O4'" in capsys.readouterr().err
    assert main(args[:6] + ["0"] + args[7:]) == 2
    assert "formula_units=0 must be a positive integer" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", "mgl_mp20_small", "--composition", "NaCl", "--steps", "2",
                 "--out", str(tmp_path / "t")]) == 2
    assert "needs a crystal-structure-prediction checkpoint" in capsys.readouterr().err


def test_cli_finetune_csp_end_to_end(data_dir, tmp_path):
    from mattergen_lab.cli import main
    from mattergen_lab.model.io import load_local_checkpoint

    base = save_checkpoint(tmp_path / "base", tiny_model(), {"diffusion": DiffusionConfig().to_dict()})
    args = ["finetune", "--base", str(base), "--csp", "--out", str(tmp_path / "run"), "--data", str(data_dir),
            "--splits", "val", "--limit", "80", "--max-steps", "2", "--batch-size", "8", "--val-every", "2", "--lr", "1e-3"]
    assert main(args) == 0
    ckpt = load_local_checkpoint(tmp_path / "run" / "last")
    assert is_csp_config(ckpt.config) and ckpt.config["training"]["history"][-1]["val_atomic_numbers"] == 0.0
    assert main(args + ["--property", "dft_band_gap"]) == 2  # --csp takes no adapters


# ------------------------------------------------------------------------------ the design app
def test_app_formula_switches_to_the_csp_model(csp_checkpoint, monkeypatch):
    importorskip("ipywidgets")
    import mattergen_lab.widgets.app as app_module
    from mattergen_lab.widgets import DesignApp

    monkeypatch.setattr(app_module, "CSP_CHECKPOINT", str(csp_checkpoint))  # a 3-step tiny model instead of the bundled one
    app = DesignApp("mgl_mp20_small", evaluator=lambda *a, **k: None, reference=object())
    assert app.targets.request().checkpoint == "mgl_mp20_small" and app._with_composition(app.targets.request()).composition is None
    app.formula.value, app.formula_units.value = "Fe2O3", 2
    request = app.generate(wait=True)
    assert app.error is None, app.status.value
    assert (request.checkpoint, request.composition, request.formula_units) == (str(csp_checkpoint), "Fe2O3", 2)
    assert app.candidates and all(c.structure.composition.as_dict() == {"Fe": 4.0, "O": 6.0} for c in app.candidates)
    app.formula.value = "Fe2Xx"
    assert app.generate(wait=True) is None and "Xx&#x27; is not an element symbol" in app.status.value
