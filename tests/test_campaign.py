"""Campaigns: the spec and its grid, the tasks, and end-to-end runs on a local Ray cluster with 2 workers.

The Ray tests use the bundled chemical-system adapter at 4 steps and CHGNet capped at 5 FIRE steps: the point
is the scheduling, resuming and bookkeeping, not the crystals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mattergen_lab.campaign import CampaignFolder, CampaignSpec, plan, run_campaign
from mattergen_lab.campaign.tasks import FAULT_ENV, sample_task, task_file_name
from mattergen_lab.fileio import append_jsonl, read_jsonl

SPEC = {
    "checkpoint": "mgl_mp20_small_chemical_system",
    "num_samples": 3,
    "batch_size": 2,
    "num_steps": 4,
    "seed": 5,
    "conditions": {"chemical_system": ["Li-O", "Na-Cl"]},
    "guidance_scale": 1.0,
    "evaluate": {"relaxer": "chgnet", "batch_size": 2, "max_steps": 5, "fmax": 0.1},
}
#: columns that measure time, not results
TIMING = ["relax_seconds"]


def test_grid_expands_to_arms_with_their_own_seeds_and_tasks():
    spec = CampaignSpec.from_dict({**SPEC, "guidance_scale": [0, 2]})
    arms = spec.arms()
    assert [a.label for a in arms] == [
        "chemical_system=Li-O, γ=0", "chemical_system=Li-O, γ=2", "chemical_system=Na-Cl, γ=0", "chemical_system=Na-Cl, γ=2",
    ]
    assert [spec.request(a).seed for a in arms] == [5, 6, 7, 8]
    tasks = plan(spec)
    # per arm: 3 samples in chunks of 2 -> 2 sampling tasks; each chunk -> 1 evaluation task (batch 2)
    assert [t.key for t in tasks[:4]] == ["sample/a0/c0", "evaluate/a0/c0/b0", "sample/a0/c1", "evaluate/a0/c1/b0"]
    assert len(tasks) == 16
    assert tasks[3].ids == ("a0-2",) and tasks[3].parent == "sample/a0/c1"
    assert CampaignSpec.from_dict(spec.to_dict()).fingerprint() == spec.fingerprint()


@pytest.mark.parametrize("change, message", [
    ({"guidance_scale": [1, -2]}, "guidance_scale=-2"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"num_samples": "many"}, "num_samples='many'"),
    ({"conditions": {"chemical_system": []}}, "conditions.chemical_system=[]"),
    ({"conditions": {"chemical_system": "Li-Xx"}}, "Xx"),
    ({"evaluate": {"relaxer": "vasp"}}, "evaluate.relaxer='vasp'"),
    ({"evaluate": {"fmax": -1}}, "fmax=-1"),
    ({"resources": {"threads": 0}}, "resources.threads=0"),
    ({"sampels": 3}, "unknown campaign key(s) ['sampels']"),
])
def test_bad_spec_values_are_named(change, message):
    with pytest.raises(ValueError) as info:
        CampaignSpec.from_dict({**SPEC, **change})
    assert message in str(info.value)


def test_bad_yaml_and_unsupported_condition_fail_before_any_task(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("checkpoint: [unclosed\n")
    with pytest.raises(ValueError, match="not readable YAML"):
        CampaignSpec.load(bad)
    with pytest.raises(ValueError, match="'dft_band_gap' is not supported"):
        run_campaign({**SPEC, "conditions": {"dft_band_gap": 2.0}}, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_a_folder_refuses_another_spec(tmp_path):
    folder = CampaignFolder(tmp_path / "c")
    folder.prepare(CampaignSpec.from_dict(SPEC))
    folder.prepare(CampaignSpec.from_dict(SPEC))  # the same spec resumes
    with pytest.raises(ValueError, match=r"holds another campaign \(num_samples: 3 -> 4\)"):
        folder.prepare(CampaignSpec.from_dict({**SPEC, "num_samples": 4}))


def test_sample_task_gives_the_crystals_of_the_plain_sampling_api():
    import torch

    from mattergen_lab.sampling.api import sample

    torch.set_num_threads(1)
    spec = CampaignSpec.from_dict(SPEC)
    got = sample_task(spec.to_dict(), 1, 1)  # arm a1 (Na-Cl, seed 6), chunk 1 = sample index 2
    assert got["ids"] == ["a1-2"]
    want = sample("mgl_mp20_small_chemical_system", 3, batch_size=2, num_steps=4, seed=6,
                  conditions={"chemical_system": "Na-Cl"}, guidance_scale=1.0)[2]
    from pymatgen.core import Structure

    s = Structure.from_dict(got["structures"][0])
    assert s.composition == want.composition
    assert abs(s.frac_coords - want.frac_coords).max() < 1e-6
    assert {e.symbol for e in s.composition.elements} <= {"Na", "Cl"}


def test_a_torn_manifest_line_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "manifest.jsonl"
    append_jsonl(path, {"task": "a"})
    with open(path, "a") as fh:
        fh.write('{"task": "b", "sta')  # killed mid-line
    append_jsonl(path, {"task": "c"})
    assert [r["task"] for r in read_jsonl(path)] == ["a", "c"]


# ---------------------------------------------------------------------- on a local Ray cluster (2 workers)


def _results(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "per_structure.csv").drop(columns=TIMING)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("campaign") / "plain"
    result = run_campaign(SPEC, out, num_cpus=2, progress=False)
    return out, result


@pytest.mark.slow
def test_campaign_end_to_end(uninterrupted):
    out, result = uninterrupted
    st = result.status
    assert st["finished"] and not result.failures
    assert (st["sample_tasks_done"], st["evaluate_tasks_done"], st["evaluated_crystals"]) == (4, 4, 6)
    table = result.table
    assert list(table["id"]) == ["a0-0", "a0-1", "a0-2", "a1-0", "a1-1", "a1-2"]
    assert list(table["target_chemical_system"]) == ["Li-O"] * 3 + ["Na-Cl"] * 3
    for system, sub in table.groupby("target_chemical_system"):  # the hard element mask held
        assert all(set(cs.split("-")) <= set(system.split("-")) for cs in sub["chemical_system"])
    assert set(table["relax_status"]) <= {"converged", "max_steps"}
    assert table["energy"].notna().all()
    assert len(list((out / "cifs").glob("*.cif"))) == 6 and len(list((out / "relaxed").glob("*.cif"))) == 6
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"all", "a0", "a1"}
    assert metrics["all"]["frac_successful_jobs"]["value"] == 1.0
    # uniqueness is over the whole campaign: every duplicate group keeps exactly one member
    from pymatgen.core import Structure

    from mattergen_lab.evaluation.matching import unique_flags

    relaxed = [Structure.from_file(out / "relaxed" / f"{i}.cif") for i in table["id"]]
    assert sum(table["is_unique"]) == sum(unique_flags(relaxed))
    # a rerun of a finished campaign runs nothing and rewrites the same table
    before = _results(out)
    again = run_campaign(SPEC, out, num_cpus=2, progress=False)
    assert again.tasks_run == 0
    pd.testing.assert_frame_equal(_results(out), before)


@pytest.mark.slow
def test_a_killed_worker_is_retried_with_no_loss_and_no_duplicate(uninterrupted, tmp_path, monkeypatch):
    plain, _ = uninterrupted
    faults = tmp_path / "faults"
    faults.mkdir()
    spec = CampaignSpec.from_dict(SPEC)
    victims = {"sample/a0/c1", "evaluate/a1/c0/b0"}
    for t in plan(spec):  # every other task has "already died once"
        if t.key not in victims:
            (faults / task_file_name(t.key)).write_text("spared\n")
    monkeypatch.setenv(FAULT_ENV, str(faults))
    result = run_campaign(SPEC, tmp_path / "c", num_cpus=2, progress=False)
    killed = {p.name for p in faults.iterdir() if p.read_text() != "spared\n"}
    assert killed == {task_file_name(k) for k in victims}  # both workers really died (SIGKILL) once
    assert result.status["finished"] and not result.failures
    manifest = [r["task"] for r in read_jsonl(tmp_path / "c" / "manifest.jsonl")]
    assert sorted(manifest) == sorted(t.key for t in plan(spec))  # each task finished exactly once
    pd.testing.assert_frame_equal(_results(tmp_path / "c"), _results(plain))


@pytest.mark.slow
def test_a_killed_campaign_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    plain, _ = uninterrupted
    spec_file = tmp_path / "spec.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "mattergen_lab.cli", "campaign", "run", str(spec_file), "--out", str(out), "--num-cpus", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list(read_jsonl(out / "manifest.jsonl"))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the campaign ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()
    before = CampaignFolder(out).status()
    assert not before["finished"] and before["sample_tasks_done"] >= 1
    done_before = CampaignFolder(out).done()
    result = run_campaign(spec_file, out, num_cpus=2, progress=False)
    assert result.tasks_run == len(plan(CampaignSpec.load(spec_file))) - len(done_before)  # only the unfinished ones
    assert result.status["finished"]
    pd.testing.assert_frame_equal(_results(out), _results(plain))
    status = subprocess.run([sys.executable, "-m", "mattergen_lab.cli", "campaign", "status", str(out)],
                            capture_output=True, text=True, check=True).stdout
    assert "evaluation 4/4 tasks, 6 crystals" in status and "finished" in status


def test_the_readme_spec_is_valid_and_its_checkpoint_serves_every_arm():
    import re

    import yaml

    from mattergen_lab.campaign.runner import check_spec

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(# lifeo.yaml\n.*?)```", readme, re.S).group(1)
    spec = CampaignSpec.from_dict(yaml.safe_load(block))
    assert [a.label for a in spec.arms()][-1] == "chemical_system=Na-Mn-O, γ=2"
    check_spec(spec)  # the checkpoint loads and conditions on chemical_system
