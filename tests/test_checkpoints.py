"""Checkpoint registry, safe loading and the official key mapping, on synthetic official-format files."""

import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from mattergen_lab.checkpoints import (
    CheckpointUnavailableError,
    ForeignObject,
    load_checkpoint,
    parse_registry,
    registry,
    safe_torch_load,
    sha256_of,
)
from mattergen_lab.model.io import save_checkpoint
from mattergen_lab.model.score_model import ScoreModel

LAYOUTS = Path(__file__).parent / "data"


class _Unpicklable:
    """Stands in for the OmegaConf objects in official hyper_parameters (beyond weights_only)."""

    def __init__(self, payload):
        self.payload = payload


def make_official_checkpoint(folder: Path, layout_name: str, *, seed: int = 0, drop: str | None = None, add: str | None = None) -> Path:
    """A Lightning-style checkpoint with exactly the official keys and shapes (random values)."""
    layout = json.loads((LAYOUTS / f"official_layout_{layout_name}.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout["state_dict"].items():
        if key == drop:
            continue
        value = torch.randn(shape, generator=gen) * 0.02
        if key.endswith("scale_factor"):
            value = torch.tensor(layout["scale_factors_at_init"].get(key, 1.0))
        elif key.endswith("rbf.offset"):
            value = torch.linspace(0, 1, shape[0])
        elif key.endswith("div_term"):
            value = torch.exp(torch.arange(0, 2 * shape[0], 2) * (-torch.log(torch.tensor(10000.0)) / (2 * shape[0])))
        elif key.endswith("scaler.means"):
            value = torch.tensor([0.1])
        elif key.endswith("scaler.stds"):
            value = torch.tensor([0.05])
        state[layout["checkpoint_key_prefix"] + key] = value
    if add:
        state[layout["checkpoint_key_prefix"] + add] = torch.zeros(3)
    ckpt = {
        "epoch": 10,
        "global_step": 1000,
        "state_dict": state,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 5e-6}]}],
        "hyper_parameters": _Unpicklable({"lr": 5e-6}),
    }
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "checkpoints" / "last.ckpt")
    config = {"lightning_module": {"diffusion_module": {"model": layout["model_config"]}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def official_base(tmp_path_factory):
    return make_official_checkpoint(tmp_path_factory.mktemp("mattergen_base"), "mattergen_base")


@pytest.fixture(scope="module")
def official_magnet(tmp_path_factory):
    return make_official_checkpoint(tmp_path_factory.mktemp("dft_mag_density_hhi_score"), "dft_mag_density_hhi_score")


def test_registry_lists_the_nine_official_checkpoints():
    records = registry()
    official = {n for n, r in records.items() if r.is_official}
    assert official == {
        "mattergen_base", "mp_20_base", "chemical_system", "space_group", "dft_mag_density", "dft_band_gap",
        "ml_bulk_modulus", "dft_mag_density_hhi_score", "chemical_system_energy_above_hull",
    }
    assert records["dft_mag_density_hhi_score"].properties == ("dft_mag_density", "hhi_score")
    assert records["mattergen_base"].size_bytes == 461_370_350


def test_malformed_registry_entry_names_entry_and_field(tmp_path):
    bad = "checkpoints:\n  mine:\n    kind: bundled\n    description: x\n    properties: []\n    training_data: y\n    path: m\n    sha256: abc\n"
    with pytest.raises(ValueError, match=r"entry 'mine', field 'sha256'='abc'"):
        parse_registry(bad, base_dir=tmp_path)
    missing = "checkpoints:\n  other:\n    kind: official\n    description: x\n    properties: []\n    training_data: y\n"
    with pytest.raises(ValueError, match=r"entry 'other' is missing field 'source'"):
        parse_registry(missing, base_dir=tmp_path)


def test_official_base_loads_with_exact_weights(official_base):
    with pytest.warns(UserWarning, match="skipped non-tensor objects"):
        ckpt = load_checkpoint(official_base)
    assert ckpt.model.num_parameters() == 35_343_478
    raw = torch.load(official_base / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    key = "gemnet.int_blocks.2.trip_interaction.mlp_cbf.weight"
    assert torch.equal(ckpt.model.state_dict()[key], raw["diffusion_module.model." + key])
    assert ckpt.config["properties"] == []


def test_official_adapter_checkpoint_loads_scalers_and_properties(official_magnet):
    with pytest.warns(UserWarning):
        ckpt = load_checkpoint(official_magnet)
    assert ckpt.model.conditions == ("dft_mag_density", "hhi_score")
    assert ckpt.config["scalers"]["hhi_score"]["mean"] == pytest.approx(0.1)
    assert ckpt.config["scalers"]["dft_mag_density"]["std"] == pytest.approx(0.05)


def test_missing_and_extra_keys_give_a_readable_diff(tmp_path):
    folder = make_official_checkpoint(tmp_path / "a", "mattergen_base", drop="fc_atom.bias", add="gemnet.bogus.weight")
    with pytest.warns(UserWarning), pytest.raises(ValueError) as err:
        load_checkpoint(folder)
    msg = str(err.value)
    assert "missing keys (1)" in msg and "fc_atom.bias" in msg
    assert "unexpected keys (1)" in msg and "gemnet.bogus.weight" in msg


def test_corrupted_file_and_wrong_sha256(tmp_path):
    model = ScoreModel.from_preset("tiny")
    folder = save_checkpoint(tmp_path / "ours", model, {"note": "test"})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_checkpoint(tmp_path / "broken")
    # A registry entry with the wrong sha256 for our own bundled folder.
    reg = tmp_path / "checkpoints.yaml"
    reg.write_text(
        "checkpoints:\n  mine:\n    kind: bundled\n    description: x\n    properties: []\n    training_data: y\n"
        f"    path: ours\n    sha256: '{'0' * 64}'\n"
    )
    with pytest.raises(ValueError, match="sha256 .* does not match"):
        load_checkpoint("mine", registry_path=reg)
    reg.write_text(reg.read_text().replace("0" * 64, sha256_of(folder / "model.safetensors")))
    loaded = load_checkpoint("mine", registry_path=reg)
    assert torch.equal(loaded.model.fc_atom.weight, model.fc_atom.weight)
    (tmp_path / "junk.ckpt").write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="no config.yaml|not a readable"):
        load_checkpoint(tmp_path / "junk.ckpt")


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": _Evil(str(marker))}, tmp_path / "evil.ckpt")
    with pytest.warns(UserWarning, match="posix.system"):
        obj = safe_torch_load(tmp_path / "evil.ckpt")
    assert not marker.exists()
    assert isinstance(obj["payload"], ForeignObject) and torch.equal(obj["state_dict"]["w"], torch.ones(2))
    # A pickle that is nothing but a payload is refused as a checkpoint, still without running it.
    (tmp_path / "evil_only").mkdir()
    torch.save(_Evil(str(marker)), tmp_path / "evil_only" / "last.ckpt")
    (tmp_path / "evil_only" / "config.yaml").write_text("lightning_module: {diffusion_module: {model: {gemnet: {num_blocks: 1}}}}\n")  # valid, so the weights are read
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no 'state_dict'"):
        load_checkpoint(tmp_path / "evil_only" / "last.ckpt")
    assert not marker.exists()


def test_offline_official_name_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("MATTERGEN_LAB_CHECKPOINTS", str(tmp_path / "cache"))
    start = time.perf_counter()
    with pytest.raises(CheckpointUnavailableError) as err:
        load_checkpoint("dft_band_gap")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "checkpoints/dft_band_gap/checkpoints/last.ckpt" in msg
    assert "--checkpoint" in msg and "microsoft/mattergen" in msg
    assert str(tmp_path / "cache" / "dft_band_gap") in msg


def test_cached_official_folder_is_used_without_network(tmp_path, monkeypatch, official_base):
    monkeypatch.setenv("MATTERGEN_LAB_CHECKPOINTS", str(tmp_path))
    target = tmp_path / "mattergen_base"
    (target / "checkpoints").mkdir(parents=True)
    (target / "checkpoints" / "last.ckpt").symlink_to(official_base / "checkpoints" / "last.ckpt")
    (target / "config.yaml").symlink_to(official_base / "config.yaml")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning):
        ckpt = load_checkpoint("mattergen_base")
    assert ckpt.model.num_parameters() == 35_343_478


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="known names: .*mattergen_base"):
        load_checkpoint("not_a_model")


def test_a_few_sampling_steps_run_on_official_format_checkpoints(official_base, official_magnet, tmp_path):
    from mattergen_lab.constants import SELECTED_ATOMIC_NUMBERS
    from mattergen_lab.sampling.api import sample, sample_to_dir

    with pytest.warns(UserWarning):
        paths = sample_to_dir(official_base, tmp_path / "base", num_samples=2, batch_size=2, num_steps=3, num_atoms=4)
    assert all(p.exists() for p in paths)
    with pytest.warns(UserWarning):
        structures = sample(
            official_magnet, 2, batch_size=2, num_steps=3, num_atoms=3,
            conditions={"dft_mag_density": 0.15, "hhi_score": 1250}, guidance_scale=2.0, elements="Fe-Co-O",
        )
    assert len(structures) == 2
    assert {site.specie.symbol for s in structures for site in s} <= {"Fe", "Co", "O"}
    assert all(site.specie.Z in SELECTED_ATOMIC_NUMBERS for s in structures for site in s)
    # the weights loaded above are reused (SamplingPipeline's cache), so their loading warning does not repeat
    with pytest.raises(ValueError, match="condition 'dft_band_gap' is not supported"):
        sample(official_magnet, 1, num_steps=2, conditions={"dft_band_gap": 1.0})


def test_cli_lists_the_registry(capsys, tmp_path, monkeypatch):
    from mattergen_lab.cli import main

    monkeypatch.setenv("MATTERGEN_LAB_CHECKPOINTS", str(tmp_path))
    assert main(["checkpoints"]) == 0
    out = capsys.readouterr().out
    assert "dft_mag_density_hhi_score" in out and "magnetic density (μB/Å³) + HHI score" in out and str(tmp_path) in out


@pytest.mark.parametrize("carrier", ["zip", "legacy", "raw_pickle", "official_folder", "ckpt_file"])
def test_no_checkpoint_carrier_runs_pickled_code(tmp_path, carrier):
    """Issue 12: every format a checkpoint can come in goes through the restricted unpickler only.

    The payload is first shown to work (an unrestricted load creates the marker file), and the config beside the
    official carriers is valid, so the weights really are unpickled (the error is about the state_dict's keys,
    which only exist once the file has been read).
    """
    import pickle

    marker = tmp_path / "pwned"
    payload = {"state_dict": {"w": torch.ones(2)}, "payload": _Evil(str(marker))}
    folder = tmp_path / "official"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("lightning_module: {diffusion_module: {model: {gemnet: {num_blocks: 1}}}}\n")
    target = folder / "checkpoints" / "last.ckpt"
    if carrier == "zip":
        torch.save(payload, target)
    elif carrier in ("legacy", "official_folder", "ckpt_file"):
        torch.save(payload, target, _use_new_zipfile_serialization=False)
    else:
        target.write_bytes(pickle.dumps(payload))
    # control: the file does run code when loaded without restriction
    if carrier == "raw_pickle":
        pickle.loads(target.read_bytes())
    else:
        torch.load(target, weights_only=False)
    assert marker.exists(), "the payload does not work, so this test could not fail"
    marker.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if carrier in ("official_folder", "ckpt_file"):
            with pytest.raises(ValueError, match="does not match the official MatterGen layout"):
                load_checkpoint({"official_folder": folder, "ckpt_file": target}[carrier])
        elif carrier == "raw_pickle":  # not a torch file (its tensors pickle torch's storage helpers): refused
            with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint"):
                safe_torch_load(target)
        else:
            obj = safe_torch_load(target)
            assert isinstance(obj["payload"], ForeignObject) and torch.equal(obj["state_dict"]["w"], torch.ones(2))
    assert not marker.exists(), f"the {carrier} carrier executed pickled code"
    if carrier != "raw_pickle":
        assert any("posix.system" in str(w.message) for w in caught), [str(w.message) for w in caught]


# ------------------------------------------------------------------- issue 26: no silent substitution
def test_a_folder_in_the_working_directory_does_not_shadow_a_registry_name(tmp_path, monkeypatch):
    """A folder called mgl_mp20_small (here a band-gap adapter) must not stand in for the bundled base model."""
    import shutil

    from mattergen_lab.checkpoints import checkpoint_properties, looks_like_path, registry

    shutil.copytree(registry()["mgl_mp20_small_dft_band_gap"].path, tmp_path / "mgl_mp20_small")
    monkeypatch.chdir(tmp_path)
    assert load_checkpoint("mgl_mp20_small").model.conditions == ()  # the registry's, sha256-checked
    assert checkpoint_properties("mgl_mp20_small") == ()
    assert load_checkpoint("./mgl_mp20_small").model.conditions == ("dft_band_gap",)  # a path, when it looks like one
    assert checkpoint_properties(Path("mgl_mp20_small")) == ("dft_band_gap",)
    with pytest.raises(ValueError, match=r"'best' is not a registry name .*\(for the folder in the working "
                                         r"directory, write ./best\); known names"):
        shutil.copytree(tmp_path / "mgl_mp20_small", tmp_path / "best")
        load_checkpoint("best")
    with pytest.raises(FileNotFoundError, match="checkpoint path './missing' does not exist"):
        load_checkpoint("./missing")
    assert [looks_like_path(x) for x in ("a", "./a", "a/b", "/a", "~/a", Path("a"))] == [False] + [True] * 5


def test_bundled_weights_are_checked_on_every_load_and_hashed_once_per_version(tmp_path, monkeypatch):
    from mattergen_lab.checkpoints import catalog

    folder = save_checkpoint(tmp_path / "ours", ScoreModel.from_preset("tiny"), {"note": "test"})
    reg = tmp_path / "checkpoints.yaml"
    reg.write_text("checkpoints:\n  mine:\n    kind: bundled\n    description: x\n    properties: []\n"
                   f"    training_data: y\n    path: ours\n    sha256: '{sha256_of(folder / 'model.safetensors')}'\n")
    hashed = []
    real = catalog.sha256_of
    monkeypatch.setattr(catalog, "sha256_of", lambda p, *a: hashed.append(p) or real(p, *a))
    for _ in range(3):
        load_checkpoint("mine", registry_path=reg)
    assert len(hashed) == 1  # cached by (path, size, mtime)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")  # same size, new content and mtime
    os.utime(weights, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    with pytest.raises(ValueError, match="sha256 .* does not match the registry's"):
        load_checkpoint("mine", registry_path=reg)
    assert len(hashed) == 2


def test_a_registry_with_yaml_aliases_is_refused(tmp_path):
    from mattergen_lab.checkpoints import parse_registry

    text = ("x: &a [1, 1, 1, 1, 1, 1, 1, 1]\ny: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
            "checkpoints:\n  mine: {kind: bundled, description: x, properties: [], training_data: y, path: p}\n")
    with pytest.raises(ValueError, match=r"checkpoints.yaml is not valid YAML: YAML aliases \(\*a\) are not allowed"):
        parse_registry(text, base_dir=tmp_path)


def test_an_official_condition_on_adapt_string_is_refused_not_read_letter_by_letter():
    from mattergen_lab.checkpoints import official_gemnet_config

    cfg = {"lightning_module": {"diffusion_module": {"model": {"gemnet": {"condition_on_adapt": "dft_band_gap"}}}}}
    with pytest.raises(ValueError, match=r"gemnet.condition_on_adapt='dft_band_gap' must be a list, e.g. \['dft_band_gap'\]"):
        official_gemnet_config(cfg)
    cfg["lightning_module"]["diffusion_module"]["model"]["gemnet"]["condition_on_adapt"] = ["dft_band_gap"]
    assert official_gemnet_config(cfg).condition_on_adapt == ("dft_band_gap",)


def test_the_symmetric_mode_runs_on_the_official_preset(official_base):
    """The constraint on the official architecture (random weights are enough): exact symmetry of a hexagonal
    template, in fractional coordinates (random weights grow cells of 10^5 Å, where float32 leaves 0.01 Å)."""
    from mattergen_lab.sampling.api import sample
    import numpy as np

    from mattergen_lab.symmetry.groups import general_operations

    structures = sample(official_base, 2, batch_size=2, num_steps=3, symmetry="194:bc")
    for s in structures:
        assert len(s) == 4
        frac = s.frac_coords
        for r, t in zip(*general_operations(194)):
            diff = np.mod(frac @ r.T + t, 1.0)[:, None, :] - frac[None, :, :]
            diff -= np.round(diff)
            assert (np.abs(diff).max(axis=-1) < 1e-5).any(axis=1).all()
        assert abs(s.lattice.gamma - 120) < 1e-3 and abs(s.lattice.a - s.lattice.b) < 1e-4
