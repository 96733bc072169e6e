"""SamplingPipeline: one front door for sampling, loaded once, and the CI switch that makes skips fail.

The bundled 3-step models keep each test to a few seconds on a CPU.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mattergen_lab
from mattergen_lab import SamplingPipeline, SamplingRequest
from mattergen_lab.sampling import pipeline as pipeline_module
from mattergen_lab.sampling.api import read_samples, sample
from mattergen_lab.sampling.sampler import PredictorCorrectorSampler
from mattergen_lab.sampling.writers import SampleDirWriter

ROOT = Path(__file__).resolve().parents[1]
BASE, CHEMSYS, CSP = "mgl_mp20_small", "mgl_mp20_small_chemical_system", "mgl_mp20_small_csp"

pytestmark = pytest.mark.usefixtures("single_thread")  # bitwise equality needs one thread count everywhere


def _assert_same(a, b, tol=1e-5):
    """Atom for atom: the same atomic numbers, fractional coordinates (mod 1) and lattices."""
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert list(x.atomic_numbers) == list(y.atomic_numbers)
        d = np.abs(np.asarray(x.frac_coords) % 1.0 - np.asarray(y.frac_coords) % 1.0)
        assert np.minimum(d, 1 - d).max() < tol
        assert np.abs(x.lattice.matrix - y.lattice.matrix).max() < tol * 10


@pytest.mark.parametrize("checkpoint, extra, cli_extra", [
    (BASE, {}, []),
    (CHEMSYS, {"conditions": {"chemical_system": "Li-O"}, "guidance_scale": 1.5},
     ["--condition", "chemical_system=Li-O", "--guidance", "1.5"]),
])
def test_the_pipeline_gives_the_crystals_of_sample_and_of_the_cli(checkpoint, extra, cli_extra, tmp_path):
    from mattergen_lab.cli import main

    request = SamplingRequest(checkpoint=checkpoint, num_samples=3, batch_size=2, num_steps=3, seed=5, **extra)
    via_pipe = SamplingPipeline.for_request(request)(request)
    via_sample = sample(checkpoint, 3, batch_size=2, num_steps=3, seed=5, **extra)
    _assert_same(via_pipe, via_sample, tol=1e-12)  # one code path: identical

    out = tmp_path / "cli"
    args = ["sample", "--checkpoint", checkpoint, "--num-samples", "3", "--batch-size", "2", "--steps", "3",
            "--seed", "5", "--out", str(out), *cli_extra]
    assert main(args) == 0
    _assert_same(read_samples(out, 3), via_pipe)  # the extxyz: full precision
    assert len({tuple(s.atomic_numbers) for s in via_pipe}) > 1 or len({round(s.volume, 3) for s in via_pipe}) > 1
    if "conditions" in extra:  # the condition is also a hard mask
        assert all({e.symbol for e in s.composition.elements} <= {"Li", "O"} for s in via_pipe)
    record = json.loads((out / "sampling.json").read_text())
    assert record["seed"] == 5 and record["checkpoint"] == checkpoint and record["sampler"]["num_steps"] == 3


def test_two_sample_calls_load_the_checkpoint_once_and_clear_caches_drops_it(monkeypatch):
    mattergen_lab.clear_caches()
    loads = []
    real = pipeline_module.load_checkpoint
    monkeypatch.setattr(pipeline_module, "load_checkpoint", lambda name: loads.append(name) or real(name))
    first = sample(BASE, 2, batch_size=2, num_steps=3, seed=1)
    again = sample(BASE, 2, batch_size=2, num_steps=3, seed=1)
    sample(BASE, 1, num_steps=2, seed=2)  # another step count: another pipeline over the same loaded weights
    assert loads == [BASE]
    _assert_same(first, again, tol=1e-12)
    r = SamplingRequest(checkpoint=BASE, num_samples=2, batch_size=2, num_steps=3, seed=1)
    assert SamplingPipeline.for_request(r) is SamplingPipeline.for_request(r)

    cleared = mattergen_lab.clear_caches()
    assert "mattergen_lab.sampling.pipeline" in cleared
    assert pipeline_module._PIPELINES == {} and pipeline_module.cached_checkpoint.cache_info().currsize == 0
    sample(BASE, 1, num_steps=3, seed=1)
    assert loads == [BASE, BASE]


def test_iter_chunks_reads_the_request_only():
    params = inspect.signature(PredictorCorrectorSampler.iter_chunks).parameters
    assert not {"num_atoms", "allowed_elements", "properties", "composition"} & set(params)
    assert list(params) == ["self", "request", "every", "dtype", "progress", "skip"]


def test_a_campaign_task_gives_the_final_frames_of_its_chunk():
    from mattergen_lab.campaign import CampaignSpec
    from mattergen_lab.campaign.tasks import sample_task
    from pymatgen.core import Structure

    spec = CampaignSpec.from_dict({"checkpoint": CHEMSYS, "num_samples": 3, "batch_size": 2, "num_steps": 3, "seed": 5,
                                   "conditions": {"chemical_system": "Li-O"}, "guidance_scale": 1.0, "evaluate": False})
    got = sample_task(spec.to_dict(), 0, 1)  # arm a0, chunk 1 = sample index 2
    assert got["ids"] == ["a0-2"]
    request = spec.request(spec.arms()[0], device="cpu")
    frames = list(SamplingPipeline.for_request(request).frames(request, every=2))
    assert [(f.chunk, f.frame.step) for f in frames] == [(0, 0), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    final = [f for f in frames if f.chunk == 1 and f.frame.final]
    assert len(final) == 1 and final[0].indices == (2,)
    _assert_same([Structure.from_dict(d) for d in got["structures"]],
                 final[0].frame.batch.to_structures(standard_orientation=True), tol=1e-9)


def test_the_request_is_checked_against_the_pipeline_once_at_the_boundary():
    r = SamplingRequest(checkpoint=BASE, num_samples=2, batch_size=2, num_steps=3, seed=0)
    pipe = SamplingPipeline.for_request(r)
    assert pipe.check(r).device == "cpu" and pipe.num_steps == 3 and pipe.properties == ()
    for change, message in [({"num_steps": 4}, "request.num_steps=4 but this pipeline runs num_steps=3"),
                            ({"sampler": {"n_corrector_steps": 0}}, "request.sampler=.* but this pipeline runs"),
                            ({"conditions": {"dft_band_gap": 2.0}}, "'dft_band_gap' is not supported"),
                            ({"composition": "NaCl"}, "needs a crystal-structure-prediction checkpoint")]:
        with pytest.raises(ValueError, match=message):
            pipe(SamplingRequest(**{"checkpoint": BASE, "num_samples": 2, "num_steps": 3, **change}))
    with pytest.raises(ValueError, match="elements='Li-O' is an element mask and use_element_mask=False"):
        SamplingRequest(elements="Li-O", use_element_mask=False)
    # CLI-style text conditions are parsed once, by the pipeline
    guided = SamplingRequest(checkpoint=CHEMSYS, num_samples=2, num_steps=3, guidance_scale=1.0,
                             conditions={"chemical_system": "o-li"})
    assert SamplingPipeline.for_request(guided).check(guided).conditions == {"chemical_system": "Li-O"}


def test_the_element_mask_switch_and_per_crystal_compositions():
    from mattergen_lab.sampling.inputs import ChunkInputs

    kw = {"checkpoint": CHEMSYS, "num_samples": 2, "num_steps": 3, "guidance_scale": 1.0,
          "conditions": {"chemical_system": "Li-O"}}
    masked, unmasked = SamplingRequest(**kw), SamplingRequest(**kw, use_element_mask=False)
    pipe = SamplingPipeline.for_request(masked)
    assert pipe.run_settings(masked)["allowed_elements"] == ["Li", "O"]
    assert pipe.run_settings(unmasked)["allowed_elements"] is None  # guidance alone (bench_adapters)
    inputs = ChunkInputs.from_request(pipe.check(unmasked))
    assert inputs.allowed is None and inputs.properties == {"chemical_system": "Li-O"}

    cells = ["NaCl", "Fe2O3", "Li4Mn2O6"]
    r = SamplingRequest(checkpoint=CSP, num_samples=3, batch_size=2, num_steps=3, seed=0, compositions=cells)
    crystals = SamplingPipeline.for_request(r)(r)
    assert [s.composition.reduced_formula for s in crystals] == ["NaCl", "Fe2O3", "Li2MnO3"]
    assert [len(s) for s in crystals] == [2, 5, 12] and r.composition_of(2).num_atoms == 12
    with pytest.raises(ValueError, match=r"compositions=.* must be one cell formula per sample \(3\)"):
        SamplingRequest(num_samples=3, compositions=cells[:2])
    with pytest.raises(ValueError, match="composition='NaCl' fixes every atom"):
        SamplingRequest(num_samples=3, compositions=cells, elements="Na-Cl")


def test_to_dir_takes_a_writer_and_resumes(tmp_path):
    r = SamplingRequest(checkpoint=BASE, num_samples=3, batch_size=2, num_steps=3, seed=2)
    pipe = SamplingPipeline.for_request(r)
    done = []
    with SampleDirWriter(tmp_path, 3, record_every=1, settings=pipe.run_settings(r)) as writer:  # with trajectories
        paths = pipe.to_dir(r, writer=writer, on_batch=done.append)
    assert done == [2, 1] and [p.name for p in paths] == ["gen_0.cif", "gen_1.cif", "gen_2.cif"]
    assert len(list((tmp_path / "trajectories").glob("gen_*.extxyz"))) == 3
    _assert_same(read_samples(tmp_path, 3), pipe(r))
    done.clear()
    pipe.to_dir(r, tmp_path, on_batch=done.append)  # the same settings: nothing left to do
    assert done == []
    with pytest.raises(ValueError, match="other settings.*seed: 2 -> 3"):
        pipe.to_dir(SamplingRequest(checkpoint=BASE, num_samples=3, batch_size=2, num_steps=3, seed=3), tmp_path)


def test_a_missing_data_directory_or_package_fails_under_the_ci_switch(tmp_path):
    for name in ("conftest.py", "must_run.py"):  # the suite's own conftest and switch
        shutil.copy(ROOT / "tests" / name, tmp_path / name)
    (tmp_path / "test_tiny.py").write_text(
        "from must_run import importorskip\n\n\n"
        "def test_needs_data(data_dir):\n    assert data_dir.is_dir()\n\n\n"
        "def test_needs_a_package():\n    importorskip('no_such_package_mgl')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "MATTERGEN_LAB_CI")}
    env.update(MATTERGEN_LAB_DATA=str(tmp_path / "missing"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tiny.py"]
    local = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0 and "2 skipped" in local.stdout, local.stdout[-2000:]
    ci = subprocess.run(cmd, cwd=tmp_path, env={**env, "MATTERGEN_LAB_CI": "1"}, capture_output=True, text=True,
                        timeout=300)
    assert ci.returncode != 0 and "1 failed" in ci.stdout and "1 error" in ci.stdout, ci.stdout[-2000:]  # the fixture errs
    assert "MATTERGEN_LAB_CI=1: this test must run in CI" in ci.stdout
    assert "is not an existing directory" in ci.stdout
