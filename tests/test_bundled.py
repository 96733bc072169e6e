"""The models bundled in this repository, the ``bundle`` tool that registers them, and the offline quickstart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mattergen_lab.checkpoints import bundle_checkpoint, load_checkpoint, parse_registry, registry, sha256_of
from mattergen_lab.model.io import save_checkpoint
from mattergen_lab.model.score_model import ScoreModel, preset_config
from mattergen_lab.sampling.api import DEFAULT_NUM_STEPS, load_sampler, recommended_num_steps

BUNDLED = {name: rec for name, rec in registry().items() if rec.kind == "bundled"}
ADAPTERS = {"chemical_system", "dft_mag_density", "hhi_score", "dft_band_gap", "dft_bulk_modulus"}


def test_the_base_model_and_six_adapters_are_bundled():
    assert "mgl_mp20_small" in BUNDLED
    props = {rec.properties for rec in BUNDLED.values()}
    assert {(p,) for p in ADAPTERS} | {("dft_mag_density", "hhi_score"), ()} <= props


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_checkpoint_is_small_verified_and_documented(name):
    rec = BUNDLED[name]
    weights = rec.path / "model.safetensors"
    assert weights.stat().st_size < 4_000_000, "a bundled model must stay a few MB"
    assert sha256_of(weights) == rec.sha256
    card = (rec.path / "MODEL_CARD.md").read_text()
    assert "## Losses" in card and "Reproduce" in card, f"{name}: the model card lacks losses or the reproduce recipe"
    ckpt = load_checkpoint(name)
    assert tuple(ckpt.model.conditions) == rec.properties
    steps = recommended_num_steps(ckpt)
    assert 50 <= steps <= 400, f"{name}: {steps} sampling steps would not meet 16 crystals/minute on 2 CPU cores"
    for prop in rec.properties:  # scalar adapters carry the scaler fitted on their training labels
        emb = ckpt.model.property_embeddings_adapt[prop]
        if emb.is_scalar:
            assert torch.isfinite(emb.scaler.stds).all() and float(emb.scaler.stds) > 0


def _tiny_folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = ScoreModel(preset_config("tiny"))
    history = [{"step": 100, "train_loss": 2.5, "val_loss": 2.25, "val_pos": 7.0, "val_cell": 1.0,
                "val_atomic_numbers": 0.5, "wall_s": 120.0}]
    return save_checkpoint(tmp_path / "run" / "best", model, {"training": {"history": history}})


def test_bundle_registers_copies_and_replaces_an_entry(tmp_path):
    reg = tmp_path / "checkpoints.yaml"
    reg.write_text(
        "# my registry\nversion: 1\ncheckpoints:\n"
        "  keep_me:\n    kind: bundled\n    description: another model\n    path: checkpoints/keep_me\n"
        f"    sha256: {'a' * 64}\n    properties: []\n    training_data: x\n"
        "  mine:\n    kind: bundled\n    description: old\n    path: checkpoints/mine\n"
        f"    sha256: {'b' * 64}\n    properties: []\n    training_data: old\n"
        "  # trailing comment stays\n"
    )
    src = _tiny_folder(tmp_path)
    rec = bundle_checkpoint(src, "mine", description="new: tiny", training_data="MP-20 val", num_steps=123,
                            card="Trained for a test.\n\n## Reproduce\n`pytest`", registry_path=reg)
    text = reg.read_text()
    assert text.startswith("# my registry") and "# trailing comment stays" in text and "keep_me:" in text
    records = parse_registry(text, base_dir=tmp_path)
    assert records["mine"].description == "new: tiny" and records["mine"].sha256 == sha256_of(src / "model.safetensors")
    assert records["keep_me"].sha256 == "a" * 64
    assert rec.path == tmp_path / "checkpoints" / "mine"
    cfg = json.loads((rec.path / "config.json").read_text())
    assert cfg["sampling"]["num_steps"] == 123
    card = (rec.path / "MODEL_CARD.md").read_text()
    assert "| 100 | 2.500 | 2.250 | 7.000 | 1.000 | 0.500 | – | 2 |" in card and "Trained for a test." in card
    ckpt = load_checkpoint("mine", registry_path=reg)
    assert recommended_num_steps(ckpt) == 123
    # a new name is appended, the others are untouched
    bundle_checkpoint(src, "second", description="d", training_data="t", num_steps=50, registry_path=reg)
    assert set(parse_registry(reg.read_text(), base_dir=tmp_path)) == {"keep_me", "mine", "second"}


def test_a_long_history_is_thinned_and_the_last_step_is_shown_by_noise_level():
    from mattergen_lab.checkpoints.bundle import _loss_table

    fields = ("val_loss", "val_pos", "val_cell", "val_atomic_numbers")
    history = [{"step": 500 * (i + 1), "val_loss": 2.0 - 0.01 * i, "lr": 1e-3} for i in range(120)]
    history[-1].update({f"{f}_t{b}": 0.1 * b + k for k, f in enumerate(fields) for b in range(5)})
    table = _loss_table(history)
    steps = [int(line.split("|")[1]) for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert 20 <= len(steps) <= 31 and steps[0] == 500 and steps[-1] == 60_000 and steps == sorted(steps)
    assert f"{len(steps)} of 120 validation rows" in table
    assert "at step 60000" in table and "t ∈ [0.80, 1.00)" in table
    assert "| lattice | 2.000 | 2.100 | 2.200 | 2.300 | 2.400 |" in table  # val_cell is field k = 2
    assert "| 60000 | – | 0.810 | – | – | – | 0.001000 | – |" in table


def test_bundle_refuses_bad_names_and_step_counts(tmp_path):
    src = _tiny_folder(tmp_path)
    reg = tmp_path / "checkpoints.yaml"
    reg.write_text("version: 1\ncheckpoints: {}\n")
    with pytest.raises(ValueError, match="'Bad Name'"):
        bundle_checkpoint(src, "Bad Name", description="d", training_data="t", num_steps=10, registry_path=reg)
    with pytest.raises(ValueError, match="num_steps=0"):
        bundle_checkpoint(src, "ok", description="d", training_data="t", num_steps=0, registry_path=reg)
    assert reg.read_text() == "version: 1\ncheckpoints: {}\n"


def test_sampler_uses_the_checkpoint_step_count_unless_told(tmp_path):
    src = _tiny_folder(tmp_path)
    _, info = load_sampler(src)
    assert info.sampler_config.num_steps == DEFAULT_NUM_STEPS  # no recommendation: the official 1000
    _, info = load_sampler("mgl_mp20_small")
    assert info.sampler_config.num_steps == recommended_num_steps(load_checkpoint("mgl_mp20_small")) < DEFAULT_NUM_STEPS
    _, info = load_sampler("mgl_mp20_small", num_steps=7)
    assert info.sampler_config.num_steps == 7


def test_quickstart_samples_the_bundled_model_offline(tmp_path, monkeypatch, capsys):
    from mattergen_lab.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MATTERGEN_LAB_DATA", str(tmp_path / "no-data-here"))  # the bundled model needs no data files
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--num-samples", "3", "--steps", "10"]) == 0
    cifs = sorted((tmp_path / "qs" / "samples" / "cifs").glob("*.cif"))
    assert len(cifs) == 3
    from pymatgen.core import Structure

    from mattergen_lab.sampling.api import read_samples

    structures = read_samples(tmp_path / "qs" / "samples", 3)  # generation order, full precision
    for i, s in enumerate(structures):
        assert s.composition == Structure.from_file(tmp_path / "qs" / "samples" / "cifs" / f"gen_{i}.cif").composition
    with pytest.raises(ValueError, match=r"lacks crystals \[3\]"):
        read_samples(tmp_path / "qs" / "samples", 4)
    out = capsys.readouterr().out
    assert "mgl_mp20_small" in out and out.count(".cif") >= 3
    assert main(["quickstart", "--out", str(tmp_path / "qs2"), "--num-samples", "0"]) == 2
    assert "--num-samples 0" in capsys.readouterr().err
