"""Training on symmetric noise (#30): MP-20 crystals written as Wyckoff templates, noised inside them, fine-tuned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mattergen_lab.model.io import save_checkpoint
from mattergen_lab.noise.joint import DiffusionConfig, JointDiffusion
from mattergen_lab.testing import tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def val_crystals(data_dir):
    from mattergen_lab.data import load_mp20

    return load_mp20("val", data_dir=data_dir).subset(range(0, 2400, 100))  # 24 crystals, many groups


@pytest.fixture(scope="module")
def symmetric(val_crystals, tmp_path_factory):
    from mattergen_lab.symmetry.dataset import symmetrize_dataset

    return symmetrize_dataset(val_crystals, tmp_path_factory.mktemp("sym") / "data.npz")


def test_symmetrize_rebuilds_each_crystal_exactly_symmetric_in_template_order(val_crystals, symmetric):
    import spglib
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    from mattergen_lab.symmetry import SymmetryConstraint, WyckoffTemplate

    matcher, groups = StructureMatcher(), set()
    for i in range(len(symmetric)):
        template = WyckoffTemplate.parse(symmetric.templates[i])
        a, b = symmetric.crystals.ptr[i], symmetric.crystals.ptr[i + 1]
        lat, x, z = symmetric.crystals.lattice[i], symmetric.crystals.frac_coords[a:b], symmetric.crystals.atom_types[a:b]
        oa, ob = val_crystals.ptr[i], val_crystals.ptr[i + 1]
        original = Structure(Lattice(val_crystals.lattice[i]), val_crystals.atom_types[oa:ob].tolist(),
                             val_crystals.frac_coords[oa:ob])
        assert matcher.fit(original, Structure(Lattice(lat), z.tolist(), x)), (i, str(template))
        assert spglib.get_symmetry_dataset((lat, x, z), symprec=1e-3).number == template.space_group
        constraint = SymmetryConstraint([template])
        assert torch.allclose(constraint.snap(torch.as_tensor(x)), torch.as_tensor(x), atol=1e-9)  # template order
        assert np.allclose(constraint.lattice(torch.as_tensor(lat)[None])[0].numpy(), lat, atol=1e-9)
        groups.add(template.space_group)
    assert len(groups) >= 8  # the fixture spans many groups, centred ones included
    assert any(WyckoffTemplate.parse(t).centring > 1 for t in symmetric.templates)


def test_the_cache_is_read_back_and_rebuilt_for_other_crystals(val_crystals, symmetric, tmp_path):
    from mattergen_lab.symmetry.dataset import symmetrize_dataset

    cache = tmp_path / "c.npz"
    first = symmetrize_dataset(val_crystals.subset(range(4)), cache)
    again = symmetrize_dataset(val_crystals.subset(range(4)), cache)
    assert again.templates.tolist() == first.templates.tolist() == symmetric.templates[:4].tolist()
    assert np.array_equal(again.crystals.frac_coords, first.crystals.frac_coords)
    other = symmetrize_dataset(val_crystals.subset(range(4, 6)), cache)  # other ids: rebuilt, not the stale file
    assert other.templates.tolist() == symmetric.templates[4:6].tolist()


def test_symmetric_noise_keeps_every_noisy_crystal_in_its_template(symmetric):
    from mattergen_lab.symmetry.noising import constraint_of, symmetric_corrupt

    diffusion = JointDiffusion(DiffusionConfig())
    batch = symmetric.get_batch(range(len(symmetric)), dtype=torch.float64)
    t = torch.linspace(0.02, 0.95, len(symmetric), dtype=torch.float64)
    noisy, target = symmetric_corrupt(diffusion, batch, t, generator=torch.Generator().manual_seed(0))
    again, _ = symmetric_corrupt(diffusion, batch, t, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy.frac_coords, again.frac_coords)  # the generator decides everything
    constraint = constraint_of(batch)
    moved = (noisy.frac_coords - batch.frac_coords).abs().amax()
    assert moved > 0.05  # the noise is real
    snapped = constraint.snap(noisy.frac_coords)
    assert torch.allclose(snapped, noisy.frac_coords, atol=1e-9)  # ... and symmetric
    assert torch.allclose(constraint.lattice(noisy.lattice), noisy.lattice, atol=1e-9)
    masked = target.noisy_classes == diffusion.types.mask_class
    assert 0 < int(masked.sum()) < len(masked)
    assert torch.equal(masked, masked[constraint.rep][constraint.orbit])  # an orbit is masked as a whole
    # a primitive lattice's target is the projected noise: it lies in its crystal system's subspace
    primitive = [i for i, s in enumerate(batch.properties["wyckoff_template"]) if constraint.templates[i].centring == 1]
    assert primitive
    projected = constraint.lattice(target.lattice)
    assert torch.allclose(projected[primitive], target.lattice[primitive], atol=1e-9)
    # small t: the coordinate target is the displacement over σ, which is symmetric too (pushed from the site)
    assert torch.isfinite(target.frac_coords).all()


def test_above_the_start_time_crystals_are_noised_as_the_sampler_leaves_them_free(val_crystals, symmetric, tmp_path):
    from mattergen_lab.symmetry.dataset import symmetrize_dataset
    from mattergen_lab.symmetry.noising import constraint_of, symmetric_corrupt

    hybrid = symmetrize_dataset(val_crystals, tmp_path / "h.npz", start=0.5)
    assert hybrid.split_validation(0.25)[1].start == 0.5  # the split keeps it
    batch = hybrid.get_batch(range(len(hybrid)), dtype=torch.float64)
    assert batch.properties["symmetry_start"].tolist() == [0.5] * len(hybrid)
    t = torch.linspace(0.05, 0.95, len(hybrid), dtype=torch.float64)
    noisy, target = symmetric_corrupt(JointDiffusion(), batch, t, generator=torch.Generator().manual_seed(0))
    c = constraint_of(batch)
    off = (c.snap(noisy.frac_coords) - noisy.frac_coords).abs()
    off = torch.minimum(off, 1 - off).amax(-1)  # (N,) distance from the template, wrapped
    per_crystal = torch.zeros(len(hybrid), dtype=off.dtype).index_reduce_(0, batch.batch_idx, off, "amax")
    assert (per_crystal[t <= 0.5] < 1e-9).all()  # kept in their templates
    free = t > 0.5
    assert (per_crystal[free] > 1e-3).float().mean() > 0.8  # free: off their templates (a P1 'a'-only one stays on)
    lat = c.lattice(noisy.lattice)
    assert torch.allclose(lat[~free], noisy.lattice[~free], atol=1e-9)
    assert not torch.allclose(lat[free], noisy.lattice[free], atol=1e-3)
    assert torch.isfinite(target.frac_coords).all() and torch.isfinite(target.lattice).all()


def test_a_batch_whose_template_does_not_hold_its_atoms_is_refused(symmetric):
    from mattergen_lab.symmetry.noising import symmetric_corrupt

    batch = symmetric.get_batch([0, 1])
    wrong = batch.replace(properties={**batch.properties, "wyckoff_template": ["225:ab", "225:ab"]})
    with pytest.raises(ValueError, match=r"crystal \d has \d+ atoms but its template '225:ab' holds 2"):
        symmetric_corrupt(JointDiffusion(), wrong, torch.full((2,), 0.5), generator=torch.Generator())


def test_the_loss_noises_a_symmetric_batch_inside_its_templates(symmetric):
    from mattergen_lab.training.loss import loss_per_crystal

    seen = []

    def model(noisy, t):
        seen.append(noisy)
        return tiny_model().double()(noisy, t)

    batch = symmetric.get_batch(range(6), dtype=torch.float64)
    terms = loss_per_crystal(model, batch, JointDiffusion(), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(terms["loss"]).all() and terms["loss"].shape == (6,)
    from mattergen_lab.symmetry.noising import constraint_of

    c = constraint_of(batch)
    assert torch.allclose(c.snap(seen[0].frac_coords), seen[0].frac_coords, atol=1e-9)


def test_cli_finetune_symmetric_end_to_end(data_dir, tmp_path, capsys):
    from mattergen_lab.cli import main
    from mattergen_lab.model.io import load_local_checkpoint

    base = save_checkpoint(tmp_path / "base", tiny_model(), {"diffusion": DiffusionConfig().to_dict()})
    out = tmp_path / "run"
    args = ["finetune", "--base", str(base), "--symmetric", "--out", str(out), "--data", str(data_dir), "--splits",
            "val", "--limit", "40", "--max-steps", "2", "--batch-size", "8", "--val-every", "2", "--lr", "1e-3"]
    assert main(args) == 0
    ckpt = load_local_checkpoint(out / "last")
    assert ckpt.config["symmetric_training"] is True and ckpt.config["training"]["step"] == 2
    assert ckpt.config["sampling"]["symmetry_start"] == 0.4  # trained as the symmetric mode samples (default start)
    assert (out / "symmetric_data.npz").exists()
    capsys.readouterr()
    assert main(args + ["--property", "dft_band_gap"]) == 2
    assert "drop --property ['dft_band_gap']" in capsys.readouterr().err
    assert main(args + ["--csp"]) == 2


def test_the_symmetric_mode_starts_where_the_checkpoint_recommends_unless_the_request_says(tmp_path):
    from mattergen_lab.sampling.pipeline import SamplingPipeline
    from mattergen_lab.sampling.request import SamplingRequest
    from mattergen_lab.symmetry import SymmetrySpec

    def start_of(config, symmetry):
        folder = save_checkpoint(tmp_path / f"m{len(list(tmp_path.iterdir()))}", tiny_model(),
                                 {"diffusion": DiffusionConfig().to_dict(), **config})
        pipe = SamplingPipeline.from_checkpoint(folder)
        return pipe.check(SamplingRequest(checkpoint=str(folder), num_samples=2, symmetry=symmetry)).symmetry.start

    trained = {"sampling": {"num_steps": 3, "symmetry_start": 1.0}}
    assert start_of(trained, "mp20") == 1.0
    assert start_of({"sampling": {"num_steps": 3}}, "mp20") == 0.4  # a model trained without symmetric noise
    assert start_of(trained, SymmetrySpec(source="mp20", start=0.25)) == 0.25  # the request wins
    with pytest.raises(ValueError, match=r"sampling.symmetry_start: start=1.5 must be a diffusion time in \(0, 1\]"):
        start_of({"sampling": {"symmetry_start": 1.5}}, "mp20")


def test_a_space_group_adapter_fine_tunes_on_symmetric_noise_labelled_with_its_templates(symmetric, data_dir, tmp_path,
                                                                                        monkeypatch):
    import mattergen_lab.training.finetune as ft
    from mattergen_lab.cli import main
    from mattergen_lab.model.io import load_local_checkpoint
    from mattergen_lab.training.finetune import adapter_model

    labelled = symmetric.with_template_groups()
    groups = [int(t.split(":")[0]) for t in symmetric.templates]
    assert labelled.crystals.properties["space_group"].tolist() == groups and len(set(groups)) > 3
    batch = labelled.subset(range(5)).get_batch(range(5))
    assert batch.properties["space_group"].tolist() == groups[:5] and "space_group" not in symmetric.crystals.properties
    base = save_checkpoint(tmp_path / "sg", adapter_model(tiny_model(), ["space_group"]),
                           {"diffusion": DiffusionConfig().to_dict()})
    out = tmp_path / "run"
    seen = []
    real = ft.finetune_symmetric
    monkeypatch.setattr(ft, "finetune_symmetric", lambda b, train, *a, **k: seen.append(train) or real(b, train, *a, **k))
    assert main(["finetune", "--base", str(base), "--symmetric", "--out", str(out), "--data", str(data_dir), "--splits",
                 "val", "--limit", "24", "--max-steps", "2", "--batch-size", "8", "--val-every", "2", "--lr", "1e-3"]) == 0
    train = seen[0]  # what the CLI trained on: every crystal labelled with its own template's group
    assert train.crystals.properties["space_group"].tolist() == [int(t.split(":")[0]) for t in train.templates]
    ckpt = load_local_checkpoint(out / "last")
    assert ckpt.config["symmetric_training"] is True and ckpt.config["properties"] == ["space_group"]
    assert list(ckpt.model.conditions) == ["space_group"]
