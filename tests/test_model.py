"""GemNet-T score network: official layout, parameter count, symmetries, graph invariants."""

import json
import re
from pathlib import Path

import pytest
import torch

from mattergen_lab.limits import MAX_NEIGHBORS  # a cap that does not bind on these small cells
from mattergen_lab.model.gemnet import OFFICIAL_UNUSED_KEY_PATTERNS, GemNetConfig
from mattergen_lab.model.graph import build_graph
from mattergen_lab.model.score_model import PRESETS, ScoreModel, preset_config
from mattergen_lab.testing import assert_score_equivariant, random_crystal_batch

LAYOUT = Path(__file__).parent / "data" / "official_layout_mattergen_base.json"


def test_official_preset_has_official_names_shapes_and_count():
    layout = json.loads(LAYOUT.read_text())
    unused = [re.compile(p) for p in OFFICIAL_UNUSED_KEY_PATTERNS]
    official = {k: v for k, v in layout["state_dict"].items() if not any(p.fullmatch(k) for p in unused)}
    model = ScoreModel.from_preset("official")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: ours[k] for k in official} == official
    assert model.num_parameters() == 35_343_478
    # 44,562,043 official parameters minus the 9,218,560 energy-branch weights and 5 scale_sum scalars.
    assert layout["total_params"] - model.num_parameters() == 9_218_560 + 5


def test_scale_factors_start_at_official_values():
    layout = json.loads(LAYOUT.read_text())
    sd = ScoreModel.from_preset("official").state_dict()
    for key, value in layout["scale_factors_at_init"].items():
        if key in sd:
            assert float(sd[key]) == pytest.approx(value, rel=1e-7), key


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_equivariance_float64(preset):
    gen = torch.Generator().manual_seed(3)
    batch = random_crystal_batch((2, 4, 7), generator=gen)
    # A cap that does not bind keeps the graph continuous (see mattergen_lab.testing).
    model = ScoreModel.from_preset(preset, max_neighbors=MAX_NEIGHBORS).double()
    ran = assert_score_equivariant(model, batch, rtol=1e-6, generator=gen)
    assert ran == ["rotation", "permutation", "translation", "supercell"]


def test_basis_change_is_detected_for_official_cosine_features():
    gen = torch.Generator().manual_seed(4)
    batch = random_crystal_batch((3, 5), generator=gen)
    invariant = ScoreModel.from_preset("tiny", max_neighbors=MAX_NEIGHBORS, lattice_cosine_features=False).double()
    assert "basis" in assert_score_equivariant(invariant, batch, generator=gen)
    official_style = ScoreModel.from_preset("tiny", max_neighbors=MAX_NEIGHBORS).double()
    with pytest.raises(AssertionError, match="basis"):
        assert_score_equivariant(official_style, batch, checks=["basis"], generator=gen)


def test_broken_model_fails_the_rotation_check():
    gen = torch.Generator().manual_seed(5)
    batch = random_crystal_batch((3, 4), generator=gen)
    model = ScoreModel.from_preset("tiny", max_neighbors=MAX_NEIGHBORS).double()

    def broken(b, t):  # a lattice score that ignores rotations
        out = model(b, t)
        return type(out)(out.atom_logits, out.frac_coords, out.lattice + torch.diag_embed(b.lattice[:, 0]))

    with pytest.raises(AssertionError, match="rotation/lattice"):
        assert_score_equivariant(broken, batch, checks=["rotation"], generator=gen)


def test_graph_is_symmetric_capped_and_complete():
    gen = torch.Generator().manual_seed(6)
    batch = random_crystal_batch((4, 6), generator=gen)
    full = build_graph(batch.frac_coords, batch.lattice, batch.num_atoms, cutoff=5.0, max_neighbors=10_000, max_images=5)
    # Brute force count of neighbours within 5 Å using a wide image range.
    cart = batch.cart_coords
    expected = 0
    rng = torch.arange(-4, 5, dtype=torch.float64)
    offs = torch.cartesian_prod(rng, rng, rng)
    for i, (lo, hi) in enumerate(zip(batch.ptr[:-1].tolist(), batch.ptr[1:].tolist())):
        shifts = offs @ batch.lattice[i]
        d = (cart[lo:hi, None, None] + shifts[None, None] - cart[None, lo:hi, None]).norm(dim=-1)
        expected += int(((d <= 5.0) & (d > 1e-2)).sum())
    assert full.num_edges == expected
    # Reverse edges: same length, opposite direction, negated offset.
    assert torch.equal(full.src[full.id_swap], full.dst)
    assert torch.allclose(full.vec[full.id_swap], -full.vec)
    assert torch.equal(full.offsets[full.id_swap], -full.offsets)
    capped = build_graph(batch.frac_coords, batch.lattice, batch.num_atoms, cutoff=5.0, max_neighbors=8, max_images=5)
    assert torch.bincount(capped.dst).max() <= 2 * 8
    assert torch.equal(capped.src[capped.id_swap], capped.dst)
    # Triplets pair distinct edges with a shared target.
    assert torch.equal(capped.dst[capped.id3_ba], capped.dst[capped.id3_ca])
    assert not torch.any(capped.id3_ba == capped.id3_ca)


def test_config_validation_and_round_trip():
    cfg = preset_config("small")
    assert GemNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config("huge")
    with pytest.raises(ValueError, match="emb_size_atom=0"):
        GemNetConfig(emb_size_atom=0)
    with pytest.raises(ValueError, match="bogus"):
        GemNetConfig.from_dict({"bogus": 1})
    assert set(PRESETS) >= {"tiny", "small", "official"}


def test_zero_initialised_adapter_reproduces_base_model():
    gen = torch.Generator().manual_seed(7)
    batch = random_crystal_batch((3, 5), generator=gen)
    base = ScoreModel.from_preset("tiny").double()
    adapted = ScoreModel.from_preset("tiny", condition_on_adapt=("dft_band_gap",)).double()
    missing, unexpected = adapted.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and all("cond_" in k or "property_embeddings_adapt" in k for k in missing)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    labelled = batch.replace(properties={"dft_band_gap": torch.tensor([1.5, 3.0], dtype=torch.float64)})
    a, b = adapted(labelled, t), base(labelled, t)
    assert torch.equal(a.atom_logits, b.atom_logits) and torch.equal(a.lattice, b.lattice)


# ------------------------------------------------------------------- issue 26: bounded configs, sound weights
@pytest.mark.parametrize("change, match", [
    ({"max_neighbors": 10**9}, "max_neighbors=1000000000 is more than MAX_NEIGHBORS=200"),
    ({"cutoff": 1e4}, r"cutoff=10000.0 is more than MAX_CUTOFF=20 \(mattergen_lab.limits\); the official cutoff is 7"),
    ({"cutoff": float("inf")}, "cutoff=inf must be a positive number"),
    ({"num_blocks": 10**6}, "num_blocks=1000000 is more than MAX_BLOCKS=16"),
    ({"emb_size_atom": 10**9}, "emb_size_atom=1000000000 is more than MAX_HIDDEN=4,096"),
    ({"condition_on_adapt": "dft_band_gap"}, "condition_on_adapt='dft_band_gap' must be a list of distinct"),
    ({"condition_on_adapt": ["hhi_score", "hhi_score"]}, "must be a list of distinct property names"),
])
def test_architecture_sizes_are_bounded_before_any_layer_is_allocated(change, match):
    with pytest.raises(ValueError, match=match):
        GemNetConfig(**change)


def _tiny_folder(tmp_path, *, config=None, state=None, properties=("dft_band_gap",)):
    from safetensors.torch import save_file

    from mattergen_lab.model.io import save_checkpoint

    model = ScoreModel(preset_config("tiny", condition_on_adapt=tuple(properties)))
    folder = save_checkpoint(tmp_path / "ckpt", model, {"diffusion": {}, **(config or {})})
    if state is not None:
        full = {k: v.clone() for k, v in model.state_dict().items()}
        full.update(state(full))
        save_file(full, str(folder / "model.safetensors"))
    if config:
        cfg = json.loads((folder / "config.json").read_text())
        for key, value in config.items():
            cfg[key] = value
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("state, match", [
    (lambda sd: {k: v.to(torch.int32) for k, v in sd.items() if k.endswith("weight")},
     r"tensor '.*weight' is int32, not floating point"),
    (lambda sd: {k: v.bool() for k, v in list(sd.items())[:1]}, "is bool, not floating point"),
    (lambda sd: {k: torch.full_like(v, float("nan")) for k, v in list(sd.items())[:1]}, r"has \d+ non-finite value"),
    (lambda sd: {k: torch.full_like(v, float("inf")) for k, v in list(sd.items())[-1:]}, r"non-finite value\(s\)"),
    (lambda sd: {k: torch.zeros_like(v) for k, v in sd.items() if k.endswith("scaler.stds")},
     r"property scaler 'property_embeddings_adapt.dft_band_gap.scaler.stds' has std \[0.0\]"),
])
def test_weights_that_are_not_finite_floats_are_refused_naming_the_tensor(tmp_path, state, match):
    from mattergen_lab.model.io import load_local_checkpoint

    folder = _tiny_folder(tmp_path, state=state)
    with pytest.raises(ValueError, match=match) as info:
        load_local_checkpoint(folder)
    assert str(folder / "model.safetensors") in str(info.value)


@pytest.mark.parametrize("config, match", [
    ({"sampling": {"num_steps": 10**9}}, r"config.json: sampling.num_steps=1000000000 is more than MAX_NUM_STEPS"),
    ({"diffusion": {"lattice": {"beta_max": 1e308}}}, r"config.json: LatticeVPConfig: beta_max=1e\+308 is more than MAX_BETA"),
])
def test_config_json_values_are_bounded_on_load_naming_the_file(tmp_path, config, match):
    from mattergen_lab.model.io import load_local_checkpoint

    with pytest.raises(ValueError, match=match):
        load_local_checkpoint(_tiny_folder(tmp_path, config=config))
