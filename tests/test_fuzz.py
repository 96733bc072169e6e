"""Issue 12: a fuzz suite of our own. Hundreds of random, mostly bad inputs go through the entry points that take
user values. Each outcome is classified: accepted (and then the value must be sane) or refused with ValueError /
FileNotFoundError. Any other exception, from anywhere, fails the test with the case that raised it.

Seeded, so a failure is reproducible; fast (no model is run).
"""

from __future__ import annotations

import math
import random

import pytest

from mattergen_lab.campaign import CampaignSpec
from mattergen_lab.chemistry import ChemicalSystem
from mattergen_lab.model.property_embeddings import PHYSICAL_RANGES, check_scalar_target
from mattergen_lab.sampling.api import SamplerInfo, validated_conditions
from mattergen_lab.sampling.request import MAX_NUM_SAMPLES, SamplingRequest

ACCEPTED_ERRORS = (ValueError, FileNotFoundError)

NUMBERS = [0, 1, 2, 16, -1, -5, 1.5, 2.0, 1e9, 1e30, -1e30, math.nan, math.inf, -math.inf, True, False, None, "3", "",
           "two", [1], {"a": 1}, 10**20, MAX_NUM_SAMPLES, MAX_NUM_SAMPLES + 1]
SYSTEMS = ["Li-Fe-O", "li, fe-O", "", "-", "Xx", "Li-Xx", "He-O", "Fe--O", "O", "Li Li", 5, None, ["Li", "O"], "Tc-O",
           "Fe" * 60, "Li-Fe-O-" + "-".join(["Na", "K", "Rb", "Cs", "Mg", "Ca"]), "\x00", "Li;rm -rf /"]
DEVICES = [None, "cpu", "cuda", "cuda:7", "tpu", "", 3, "cpu:0", "meta"]
PROPERTIES = list(PHYSICAL_RANGES) + ["chemical_system", "space_group", "unknown_property", ""]


def _classify(fn, *args, **kwargs):
    try:
        return "ok", fn(*args, **kwargs)
    except ACCEPTED_ERRORS as exc:
        assert str(exc), f"{fn.__name__}{args}{kwargs}: an error without a message"
        return "refused", exc
    except Exception as exc:  # noqa: BLE001 - this is what the suite exists to catch
        pytest.fail(f"{fn.__name__}(*{args!r}, **{kwargs!r}) raised {type(exc).__name__}: {exc}")


def test_fuzz_sampling_requests():
    rng = random.Random(0)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(250):
        pools = {
            "num_samples": NUMBERS, "batch_size": NUMBERS, "num_steps": NUMBERS, "seed": NUMBERS, "guidance_scale": NUMBERS,
            "elements": SYSTEMS, "num_atoms": NUMBERS + [(4, 8)], "device": DEVICES,
            "conditions": [{}, None] + [{"chemical_system": x} for x in SYSTEMS],
        }
        kwargs = {"num_samples": 2, "batch_size": 2, "seed": 0}  # a valid request, then 1-3 fields fuzzed
        for key in rng.sample(sorted(pools), rng.randint(1, 3)):
            kwargs[key] = rng.choice(pools[key])
        kind, req = _classify(SamplingRequest, **kwargs)
        outcomes[kind] += 1
        if kind == "ok":  # what is accepted is sane
            assert isinstance(req.num_samples, int) and 1 <= req.num_samples <= MAX_NUM_SAMPLES
            assert math.isfinite(req.guidance_scale) and req.guidance_scale >= 0
            assert req.seed >= 0 and (req.num_steps is None or req.num_steps >= 1)
            if req.elements is not None and req.conditions.get("chemical_system"):
                assert set(ChemicalSystem.parse(req.conditions["chemical_system"]).symbols) <= set(req.elements.symbols)
    # the generator does produce both kinds (otherwise the suite tests nothing)
    assert outcomes["ok"] >= 1 and outcomes["refused"] >= 100, outcomes


def test_fuzz_conditions_and_targets():
    rng = random.Random(1)
    info = SamplerInfo("fuzz", None, tuple(PROPERTIES[:-2]), 2.0, None)
    for _ in range(200):
        name = rng.choice(PROPERTIES)
        value = rng.choice(NUMBERS + SYSTEMS)
        kind, out = _classify(validated_conditions, {name: value}, info)
        if kind == "ok":
            v = out[name]
            if name in PHYSICAL_RANGES:
                low, high, inclusive, _ = PHYSICAL_RANGES[name]
                assert isinstance(v, float) and math.isfinite(v) and low <= v <= high and (inclusive or v > low)
            elif name == "space_group":
                assert isinstance(v, int) and 1 <= v <= 230
            else:
                assert ChemicalSystem.parse(v).symbols
        if name in PHYSICAL_RANGES:
            _classify(check_scalar_target, name, value)


def test_fuzz_chemical_systems():
    rng = random.Random(2)
    alphabet = "LiFeOXxHe-, ;0\t"
    cases = SYSTEMS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(100)]
    for text in cases:
        kind, system = _classify(ChemicalSystem.parse, text)
        if kind == "ok":
            assert len(system) >= 1 and all(z >= 1 for z in system.atomic_numbers)


def test_fuzz_campaign_specs():
    rng = random.Random(3)
    keys = ["checkpoint", "num_samples", "batch_size", "num_steps", "seed", "conditions", "guidance_scale", "elements",
            "evaluate", "resources", "typo"]
    values = NUMBERS + SYSTEMS + [{"chemical_system": ["Li-O", "Xx"]}, {"relaxer": "vasp"}, {"batch_size": 0},
                                  {"threads": 0}, {"sample_gpus": -1}, False, [], [0, 2], "mgl_mp20_small"]
    for _ in range(150):
        spec = {"checkpoint": "mgl_mp20_small"}
        for key in rng.sample(keys, rng.randint(1, 4)):
            spec[key] = rng.choice(values)
        kind, cs = _classify(CampaignSpec.from_dict, spec)
        if kind == "ok":
            arms = cs.arms()
            assert arms and all(a.guidance_scale >= 0 and math.isfinite(a.guidance_scale) for a in arms)


CLI_CASES = [
    ["sample", "--checkpoint", "nonexistent_model", "--num-samples", "1"],
    ["sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "0"],
    ["sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "2", "--batch-size", "-3"],
    ["sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "2", "--elements", "Xx-O"],
    ["sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "2", "--condition", "dft_band_gap=2"],
    ["sample", "--checkpoint", "mgl_mp20_small_dft_band_gap", "--num-samples", "2", "--condition", "dft_band_gap=-5", "--guidance", "2"],
    ["sample", "--checkpoint", "mgl_mp20_small_chemical_system", "--num-samples", "2", "--condition", "space_group=inf"],
    ["sample", "--checkpoint", "mgl_mp20_small_chemical_system", "--num-samples", "2", "--condition", "chemical_system"],
    ["sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "2", "--guidance", "-1"],
    ["evaluate", "--structures", "/nonexistent/folder", "--out", "OUT"],
    ["campaign", "run", "/nonexistent.yaml", "--out", "OUT"],
    ["campaign", "status", "/nonexistent/folder"],
]


@pytest.mark.parametrize("argv", CLI_CASES, ids=[" ".join(c[:1] + c[-2:]) for c in CLI_CASES])
def test_fuzz_cli_mistakes_are_one_line_errors(argv, tmp_path):
    import os
    import subprocess
    import sys

    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    if argv[0] == "sample":
        argv += ["--out", str(tmp_path / "s"), "--steps", "2"]
    p = subprocess.run([sys.executable, "-m", "mattergen_lab.cli", *argv], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr[-2000:]
