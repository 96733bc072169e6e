"""Issue 12: bad input gets a clear error at the boundary; no guidance factor breaks the hard element mask."""

from __future__ import annotations

import math
import re

import pytest
import torch

from mattergen_lab.chemistry import ChemicalSystem
from mattergen_lab.sampling.api import load_sampler, sample
from mattergen_lab.sampling.steps import mask_logits


def test_mask_holds_for_logits_that_guidance_blew_up():
    allowed = torch.zeros(101, dtype=torch.bool)
    allowed[[2, 25, 7]] = True  # classes of Li, Fe, O
    logits = torch.randn(6, 101) * 1e9
    logits[0] = math.inf
    logits[1] = -math.inf
    logits[2] = math.nan
    logits[3, 50] = math.inf  # one disallowed class at +inf
    logits[4, 2] = -math.inf  # an allowed class at -inf, the others huge
    masked = mask_logits(logits, allowed)
    assert torch.isfinite(masked).all()
    best = masked.argmax(-1)
    assert allowed[best].all(), best.tolist()


@pytest.mark.parametrize("gamma", [1e9, 1e12, 1e30])
def test_the_chemical_system_mask_holds_at_any_guidance(gamma):
    torch.set_num_threads(1)
    crystals = sample("mgl_mp20_small_chemical_system", 4, batch_size=4, num_steps=10, seed=1,
                      conditions={"chemical_system": "Li-Fe-O"}, guidance_scale=gamma)
    for s in crystals:
        assert {e.symbol for e in s.composition.elements} <= {"Li", "Fe", "O"}, s.composition


@pytest.mark.parametrize("gamma", [math.nan, math.inf, -5, "2", True])
def test_bad_guidance_is_named_for_any_model(gamma):
    for checkpoint in ("mgl_mp20_small", "mgl_mp20_small_chemical_system"):
        with pytest.raises(ValueError, match="guidance_scale="):
            load_sampler(checkpoint, guidance_scale=gamma)


def test_guidance_on_an_unconditional_model_is_refused():
    with pytest.raises(ValueError, match="needs a conditional checkpoint"):
        load_sampler("mgl_mp20_small", guidance_scale=2.0)


def test_zero_steps_is_an_error_not_the_default():
    with pytest.raises(ValueError, match="num_steps=0"):
        load_sampler("mgl_mp20_small", num_steps=0)


@pytest.mark.parametrize("elements, conditions, message", [
    ("", None, "is empty"),
    ("Na-Cl", {"chemical_system": "Li-Fe-O"}, r"elements='Cl-Na' conflicts with the target chemical_system='Fe-Li-O'"),
    ("Li-Xx", None, "Xx"),
])
def test_element_masks_that_mean_nothing_or_conflict_are_errors(elements, conditions, message):
    checkpoint = "mgl_mp20_small_chemical_system" if conditions else "mgl_mp20_small"
    with pytest.raises(ValueError, match=message):
        sample(checkpoint, 2, num_steps=2, elements=elements, conditions=conditions, guidance_scale=1.0 if conditions else 0.0)


def test_a_mask_that_contains_the_target_is_accepted():
    crystals = sample("mgl_mp20_small_chemical_system", 2, num_steps=3, elements="Li-Fe-O-Mn",
                      conditions={"chemical_system": "Li-Fe-O"}, guidance_scale=1.0)
    assert all(set(ChemicalSystem.parse([e.symbol for e in s.composition.elements]).symbols) <= {"Li", "Fe", "O", "Mn"}
               for s in crystals)


# ---------------------------------------------------------------------- runs that know what they are; the CLI


def _cli(*argv: str) -> tuple[int, str]:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "mattergen_lab.cli", *argv], capture_output=True, text=True,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return p.returncode, p.stderr


def test_sample_refuses_to_mix_runs_in_one_folder(tmp_path):
    out = str(tmp_path / "s")
    base = ["sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "2", "--steps", "3", "--out", out]
    assert _cli(*base)[0] == 0
    rc, err = _cli(*base[:-2], "--num-samples", "3", "--out", out)  # more of the same run: extends it
    assert rc == 0 and len(list((tmp_path / "s" / "cifs").glob("*.cif"))) == 3
    for change, named in ((["--seed", "1"], "seed: 0 -> 1"), (["--steps", "4"], "sampler.num_steps: 3 -> 4"),
                          (["--batch-size", "1"], "batch_size: 16 -> 1"),
                          (["--checkpoint", "mgl_mp20_small_hhi_score"], "checkpoint: 'mgl_mp20_small' -> 'mgl_mp20_small_hhi_score'")):
        argv = list(base)
        for flag, value in zip(change[::2], change[1::2]):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        rc, err = _cli(*argv)
        assert rc == 2 and named in err and "Traceback" not in err, err
    assert len(list((tmp_path / "s" / "cifs").glob("*.cif"))) == 3  # nothing was added by the refused runs


@pytest.mark.parametrize("extra, message", [
    (["--device", "tpu"], "device='tpu' is not a torch device"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "device='cuda"),
    (["--steps", "0"], "num_steps=0"),
    (["--guidance", "nan"], "guidance_scale=nan"),
    (["--elements", ""], "is empty"),
])
def test_cli_mistakes_are_one_line_and_exit_2(tmp_path, extra, message):
    rc, err = _cli("sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "2", "--out", str(tmp_path / "s"), *extra)
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_out_on_a_file_is_named(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    rc, err = _cli("sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "2", "--steps", "2", "--out", str(f))
    assert rc == 2 and "exists and is not a folder" in err and "Traceback" not in err


def test_an_internal_error_says_it_is_a_bug_and_debug_shows_the_traceback(monkeypatch, capsys):
    from mattergen_lab import cli

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_checkpoints", broken)
    assert cli.main(["checkpoints"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", "checkpoints"])


def test_evaluate_resume_key_covers_every_atom(tmp_path):
    from pymatgen.core import Lattice, Structure

    from mattergen_lab.evaluation.evaluate import _fingerprint

    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    moved = s.copy()
    moved.translate_sites([1], [0.01, 0, 0])
    swapped = Structure(Lattice.cubic(4.0), ["Cl", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    keys = {_fingerprint(x) for x in (s, moved, swapped)}
    assert len(keys) == 3  # same formula and lattice lengths, three different structures
    assert _fingerprint(Structure.from_str(s.to(fmt="cif"), fmt="cif")) == _fingerprint(s)  # stable through a CIF


@pytest.mark.parametrize("checkpoint, name, value, message", [
    ("mgl_mp20_small_dft_band_gap", "dft_band_gap", -5, "outside the physical range [0, 20] eV"),
    ("mgl_mp20_small_hhi_score", "hhi_score", -1e30, "outside the physical range [0, 10000]"),
    ("mgl_mp20_small_hhi_score", "hhi_score", 1e6, "outside the physical range"),
    ("mgl_mp20_small_dft_mag_density", "dft_mag_density", -1, "outside the physical range"),
    ("mgl_mp20_small_dft_bulk_modulus", "dft_bulk_modulus", 0, "outside the physical range (0, 1000] GPa"),
    ("mgl_mp20_small_dft_bulk_modulus", "dft_bulk_modulus", 1e300, "outside the physical range"),
    ("mgl_mp20_small_dft_band_gap", "dft_band_gap", "two", "must be a number"),
    ("mgl_mp20_small_dft_band_gap", "dft_band_gap", True, "must be a number"),
])
def test_impossible_targets_are_refused(checkpoint, name, value, message):
    with pytest.raises(ValueError) as info:
        sample(checkpoint, 1, num_steps=1, conditions={name: value}, guidance_scale=2.0)
    assert message in str(info.value) and name in str(info.value)


@pytest.mark.parametrize("value", ["inf", "nan", "2.5", "0", "231", "P1"])
def test_bad_space_groups_are_named(value):
    from mattergen_lab.sampling.api import SamplerInfo, validated_conditions

    info = SamplerInfo("x", None, ("space_group",), 0.0, None)
    with pytest.raises(ValueError, match=f"space_group={value!r} must be an integer in 1-230"):
        validated_conditions({"space_group": value}, info)


def test_the_app_refuses_a_checkpoint_that_does_not_exist():
    from mattergen_lab.widgets import DesignApp

    with pytest.raises(ValueError, match="checkpoint='nonexistent' is neither an existing folder"):
        DesignApp(checkpoint="nonexistent")


def test_targets_outside_the_sliders_are_refused_not_clamped():
    from mattergen_lab.widgets.targets import TargetPanel

    panel = TargetPanel("mgl_mp20_small_hhi_score")
    for bad in (-5, 1e9, float("nan"), "920"):
        with pytest.raises(ValueError, match="hhi_score="):
            panel.set_targets({"hhi_score": bad})
    assert not panel.toggles["hhi_score"].value  # nothing changed
    panel.set_targets({"hhi_score": 1250.0})
    assert panel.sliders["hhi_score"].value == 1250.0 and panel.toggles["hhi_score"].value


def test_a_billion_samples_is_refused_before_any_work(tmp_path):
    import time

    start = time.perf_counter()
    rc, err = _cli("sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "1000000000", "--out", str(tmp_path / "s"))
    assert rc == 2 and "num_samples=1000000000 is more than MAX_NUM_SAMPLES=100,000" in err
    assert not (tmp_path / "s").exists() and time.perf_counter() - start < 60


def test_hhi_of_an_overflowing_formula_is_an_error_not_nan():
    from mattergen_lab.properties import hhi_score

    with pytest.raises(ValueError, match="'Fe1e400O' has amounts that are not finite"):
        hhi_score("Fe1e400O")
    assert hhi_score("Fe2O3") == pytest.approx(1828.9, abs=0.1)


def test_bulk_modulus_of_a_collapsed_cell_stops_before_the_force_field():
    from ase.calculators.calculator import Calculator
    from pymatgen.core import Lattice, Structure

    from mattergen_lab.properties.bulk_modulus import BulkModulusError, bulk_modulus

    class MustNotBeCalled(Calculator):
        implemented_properties = ["energy", "forces", "stress"]

        def calculate(self, *args, **kwargs):
            raise AssertionError("the force field was called on a collapsed cell")

    tiny = Structure(Lattice.cubic(1.0), ["Na"], [[0, 0, 0]])
    with pytest.raises(BulkModulusError, match=r"1.00 Å³/atom is below the collapse floor of 3.0"):
        bulk_modulus(tiny, calculator=MustNotBeCalled())


@pytest.mark.parametrize(
    ("config_yaml", "message"),
    [
        ("a: [1, 2\n  b: {\n", "is not valid YAML at line 2"),
        ("- just\n- a list\n", "is not a YAML mapping"),
        ("lightning_module: [1, 2]\n", "no lightning_module.diffusion_module.model.gemnet section"),
        ("lightning_module:\n  diffusion_module:\n    model:\n      gemnet: {num_blocks: four}\n", "gemnet.num_blocks='four'"),
        ("lightning_module:\n  diffusion_module:\n    model:\n      gemnet: {cutoff: -7.0}\n", "gemnet.cutoff=-7.0"),
    ],
)
def test_a_broken_official_config_yaml_is_named_with_its_line(tmp_path, config_yaml, message):
    from mattergen_lab.checkpoints import checkpoint_properties, load_official

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"never read: the config is checked first")
    (tmp_path / "config.yaml").write_text(config_yaml)
    with pytest.raises(ValueError, match=re.escape(message)):
        checkpoint_properties(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_official(tmp_path)


def test_a_registry_entry_that_disagrees_with_its_model_is_refused(tmp_path):
    from pathlib import Path

    from mattergen_lab.checkpoints import checkpoint_properties, registry

    real = registry()["mgl_mp20_small_hhi_score"]
    reg = tmp_path / "checkpoints.yaml"
    entry = (f"    kind: bundled\n    description: d\n    training_data: t\n    sha256: {real.sha256}\n"
             f"    path: {Path(real.path).resolve()}\n")
    reg.write_text(f"checkpoints:\n  wrong:\n{entry}    properties: [dft_band_gap]\n  right:\n{entry}    properties: [hhi_score]\n")
    assert checkpoint_properties("right", registry_path=reg) == ("hhi_score",)
    with pytest.raises(ValueError, match=r"says 'wrong' conditions on \['dft_band_gap'\].*conditions on \['hhi_score'\]"):
        checkpoint_properties("wrong", registry_path=reg)
