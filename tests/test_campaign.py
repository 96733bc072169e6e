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


# ---------------------------------------------------------------------- issue 26: network, start-up, checks first


def test_the_local_ray_listens_on_loopback_only():
    """Start the campaign's local Ray as the runner does, run a task (so a worker starts too), and list the listening
    sockets of every Ray process (descendants of this one) and of this driver: all must be loopback."""
    import os

    import psutil
    import ray

    from mattergen_lab.campaign.runner import init_ray, is_loopback, ray_listeners

    if ray.is_initialized():
        ray.shutdown()
    assert init_ray(None, 1)
    try:
        assert ray.get(ray.remote(lambda: os.getpid()).remote()) > 0  # a worker process, with its own listener
        listeners = ray_listeners() + ray_listeners([os.getpid()])
        names = {name for _, _, _, name in listeners}
        assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), listeners
        wide = [x for x in listeners if not is_loopback(x[0])]
        assert not wide, f"Ray listens beyond this machine: {wide}"
        assert len({pid for _, _, pid, _ in listeners}) >= 3
        assert psutil.Process().children(recursive=True)
    finally:
        ray.shutdown()
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") is None  # restored after the start


def test_loopback_addresses():
    from mattergen_lab.campaign.runner import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1", "", "junk"]))


def test_a_slow_ray_start_is_retried_then_named_with_the_way_to_wait_longer(monkeypatch):
    import ray

    from mattergen_lab.campaign import runner

    calls = []

    def slow_init(**kwargs):
        calls.append(kwargs)
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", slow_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(TimeoutError, match=r"did not start within 5 s \(1 try; last: Exception: The current node "
                                           r"timed out.*--ray-start-timeout SECONDS"):
        runner.init_ray(None, 1, start_timeout_s=5)
    assert calls[0]["_node_ip_address"] == "127.0.0.1"
    ticks = iter(range(0, 1000, 20))  # each try "takes" 20 s: a 100 s budget allows several
    monkeypatch.setattr(runner.time, "monotonic", lambda: next(ticks))
    calls.clear()
    with pytest.raises(TimeoutError, match=r"within 100 s \(4 tries"):
        runner.init_ray(None, 1, start_timeout_s=100)
    for bad in (0, -1, float("nan"), "soon"):
        with pytest.raises(ValueError, match="start_timeout_s=.* must be a positive number of seconds"):
            runner.init_ray(None, 1, start_timeout_s=bad)
    monkeypatch.setenv(runner.RAY_START_TIMEOUT_ENV, "x")
    with pytest.raises(ValueError, match=r"\$MATTERGEN_LAB_RAY_START_TIMEOUT='x'"):
        runner.init_ray(None, 1)


@pytest.mark.parametrize("change, error, message", [
    ({"num_steps": 10**9}, ValueError, "num_steps=1000000000 is more than MAX_NUM_STEPS=10,000"),
    ({"resources": {"threads": 64}}, ValueError, "resources.threads=64 but the local Ray has 2 CPU"),
    ({"evaluate": {"reference": "/nonexistent/hull.json.gz"}}, FileNotFoundError, "evaluate.reference='/nonexistent"),
    ({"resources": {"sample_gpus": 0.5}}, ValueError, "resources.sample_gpus=0.5 but this machine has 0 CUDA GPU"),
    ({"conditions": {"chemical_system": ["Li-O"] * 40}, "guidance_scale": list(range(30))}, ValueError,
     "1,200 arms, more than MAX_CAMPAIGN_ARMS=1,000"),
])
def test_bad_spec_values_are_refused_before_ray_starts(change, error, message, tmp_path, monkeypatch):
    import ray
    import torch

    from mattergen_lab.campaign import runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runner, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    with pytest.raises(error) as info:
        run_campaign({**SPEC, **change}, tmp_path / "c", num_cpus=2, progress=False)
    assert message in str(info.value)
    assert not (tmp_path / "c").exists()


def test_a_second_campaign_run_into_a_busy_folder_is_refused_naming_the_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mattergen_lab.fileio import FolderLock\n"
                               f"lock = FolderLock({str(tmp_path / 'c')!r}, 'campaign').acquire()\nprint('held', flush=True)\n"
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"is being written by process {holder.pid} "):
            run_campaign({**SPEC, "evaluate": False}, tmp_path / "c", num_cpus=2, progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_campaign_specs_refuse_yaml_aliases(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                    "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\ncheckpoint: mgl_mp20_small\n")
    with pytest.raises(ValueError, match=r"bomb.yaml is not readable YAML: YAML aliases \(\*a\) are not allowed"):
        CampaignSpec.load(bomb)
