"""One sampling request, one chunk loop: ChemicalSystem, SamplingRequest, reproducibility across entry points."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from must_run import importorskip

import mattergen_lab
from mattergen_lab import design
from mattergen_lab.chemistry import ChemicalSystem
from mattergen_lab.checkpoints import load_checkpoint
from mattergen_lab.model.score_model import ScoreModel
from mattergen_lab.sampling.api import build_sampler, read_samples, sample
from mattergen_lab.sampling.guidance import ClassifierFreeGuidance
from mattergen_lab.sampling.request import SamplingRequest, chunk_seed
from mattergen_lab.sampling.sampler import PredictorCorrectorSampler, SamplerConfig

BASE = "mgl_mp20_small"


def test_chemical_system_is_parsed_once_into_one_value():
    cs = ChemicalSystem.parse("li, fe-O")
    assert str(cs) == "Fe-Li-O" and cs.atomic_numbers == (26, 3, 8) and cs.symbols == ("Fe", "Li", "O")
    assert ChemicalSystem.parse([8, 3, 26, 3]) == cs == ChemicalSystem.parse(cs)
    with pytest.raises(ValueError, match="'Qq' is not an element symbol"):
        ChemicalSystem.parse("Li-Qq-O")
    with pytest.raises(ValueError, match="is empty"):
        ChemicalSystem.parse("  ")
    with pytest.raises(ValueError, match="He is an element MatterGen cannot generate"):
        ChemicalSystem.parse("He-O").require_generatable()
    # the adapter embedding and the design app read the same rules
    from mattergen_lab.model.property_embeddings import parse_chemical_system

    assert parse_chemical_system("Li-Fe-O") == design.validate_chemical_system("O Li fe") == ["Fe", "Li", "O"]


def test_sampling_request_validates_at_the_boundary_and_owns_the_chunk_seeds():
    req = SamplingRequest(num_samples=5, batch_size=2, seed=7, conditions={"chemical_system": "o-li"})
    assert req.conditions == {"chemical_system": "Li-O"} and str(req.mask) == "Li-O"
    assert list(req.chunks()) == [(0, (0, 1), chunk_seed(7, 0)), (1, (2, 3), chunk_seed(7, 1)), (2, (4,), chunk_seed(7, 2))]
    assert len({chunk_seed(7, j) for j in range(100)}) == 100 and chunk_seed(7, 0) != chunk_seed(8, 0)
    for kwargs, message in [
        ({"num_samples": 0}, "num_samples=0"), ({"batch_size": 2.5}, "batch_size=2.5"), ({"seed": -1}, "seed=-1"),
        ({"num_steps": 0}, "num_steps=0"), ({"guidance_scale": float("nan")}, "guidance_scale=nan"),
        ({"elements": "Li-Xx"}, "'Xx' is not an element"), ({"num_atoms": [4, 4]}, "num_atoms=\\[4, 4\\]"),
        ({"device": "gpu:9"}, "device='gpu:9'"),
    ]:
        with pytest.raises(ValueError, match=message):
            SamplingRequest(**kwargs)


def _key(structures):
    """Atom types, fractional coordinates and lattices of a list of structures."""
    return [(tuple(s.atomic_numbers), np.asarray(s.frac_coords) % 1.0, np.asarray(s.lattice.matrix)) for s in structures]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (za, fa, la), (zb, fb, lb) in zip(_key(a), _key(b)):
        assert za == zb
        d = np.abs(fa - fb)
        assert np.minimum(d, 1 - d).max() < 1e-5 and np.abs(la - lb).max() < 1e-4


@pytest.fixture
def one_thread():
    """Bitwise reproducibility needs the same thread count everywhere (the CLI subprocess gets 1 too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_same_seed_same_crystals_from_cli_sample_run_design_and_the_app(tmp_path, one_thread):
    n, bs, steps, seed = 4, 2, 4, 3
    via_api = sample(BASE, n, batch_size=bs, num_steps=steps, seed=seed)

    out = tmp_path / "cli"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "mattergen_lab.cli", "sample", "--checkpoint", BASE, "--num-samples", str(n),
           "--batch-size", str(bs), "--steps", str(steps), "--seed", str(seed), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same(read_samples(out, n), via_api)

    request = design.DesignRequest(checkpoint=BASE, num_samples=n, batch_size=bs, num_steps=steps, seed=seed, every=2, device="cpu")
    run = design.run_design(request)
    _assert_same([c.structure for c in run.candidates], via_api)

    importorskip("ipywidgets")
    from mattergen_lab.widgets import DesignApp

    app = DesignApp(BASE, online=False, ranges=dict(design.FALLBACK_RANGES))
    t = app.targets
    t.checkpoint.value = BASE
    assert t.request().num_steps is None  # unchanged: the checkpoint's recommendation
    t.steps.value, t.num_samples.value, t.batch_size.value, t.seed.value, t.every.value = steps, n, bs, seed, 2
    app_request = t.request()
    assert app_request.num_steps == steps and app_request.guidance_scale == 0.0  # unconditional: γ is not sent
    _assert_same([c.structure for c in design.run_design(app_request).candidates], via_api)
    # a different seed gives different crystals (the comparison above can fail)
    other = sample(BASE, n, batch_size=bs, num_steps=steps, seed=seed + 1)
    assert _key(other)[0][0] != _key(via_api)[0][0] or not np.allclose(_key(other)[0][1], _key(via_api)[0][1])


def test_guided_sampler_keeps_the_models_device_and_gamma_needs_an_adapter():
    model = ScoreModel.from_preset("tiny", condition_on_adapt=("dft_band_gap",)).to("meta")
    sampler = PredictorCorrectorSampler(ClassifierFreeGuidance(model, 2.0), config=SamplerConfig(num_steps=2))
    assert sampler._model_device() == torch.device("meta")  # looks through the guidance wrapper
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs a conditional checkpoint"):
        build_sampler(load_checkpoint(BASE), guidance_scale=2.0)


def test_clear_caches_frees_loaded_checkpoints():
    from mattergen_lab.sampling.pipeline import cached_checkpoint  # the one checkpoint cache (design runs use it)

    cached_checkpoint(BASE, 0.0)
    assert cached_checkpoint.cache_info().currsize >= 1
    cleared = mattergen_lab.clear_caches()
    assert "mattergen_lab.sampling.pipeline" in cleared
    assert cached_checkpoint.cache_info().currsize == 0


def test_predictors_and_correctors_share_one_step_contract():
    import inspect

    from mattergen_lab.sampling import steps

    classes = [steps.WrappedAncestralPredictor, steps.WrappedLangevinCorrector, steps.LatticeAncestralPredictor,
               steps.LatticeLangevinCorrector, steps.MaskedTypeAncestralPredictor, steps.WrappedODEPredictor,
               steps.LatticeODEPredictor]
    for cls in classes:
        params = inspect.signature(cls.step).parameters
        assert set(steps.STEP_KEYWORDS) <= set(params), (cls.__name__, set(steps.STEP_KEYWORDS) - set(params))
        assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in steps.STEP_KEYWORDS)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_steps": 10**9}, r"num_steps=1000000000 is more than MAX_NUM_STEPS=10,000 .*the official sampler takes 1,000"),
    ({"seed": 2**63}, r"seed=9223372036854775808 must be an integer from 0 to MAX_SEED=2\*\*63-1"),
    ({"seed": 2**64 + 5}, r"seed=18446744073709551621 must be an integer"),
])
def test_steps_and_seeds_are_bounded_not_reduced(kwargs, match):
    """Issue 26: 10**9 steps ran out of memory instead of being refused; seeds >= 2**63 were silently reduced modulo
    2**63 - 1, so two seeds gave the same crystals."""
    with pytest.raises(ValueError, match=match):
        SamplingRequest(**kwargs)
    assert SamplingRequest(seed=2**63 - 1, num_steps=10_000).seed == 2**63 - 1


def test_conditions_that_are_not_a_mapping_are_named():
    """issue 26 leftover: sample(conditions=[...]) failed with a dict error instead of naming the value."""
    from mattergen_lab import sample

    with pytest.raises(ValueError, match=r"conditions=\['dft_band_gap'\] must be a mapping"):
        sample("mgl_mp20_small", 1, num_steps=1, conditions=["dft_band_gap"])
    with pytest.raises(ValueError, match="conditions='hhi_score=3' must be a mapping"):
        SamplingRequest(checkpoint="mgl_mp20_small", conditions="hhi_score=3")
