"""Torch threads from the CPU quota, the affinity and the batch size (mattergen_lab.threads), on cgroup files we write."""

import os

import pytest
import torch

from mattergen_lab import threads


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def cgroup(tmp_path):
    """``(root, proc_file)``: an empty cgroup mount and a /proc/self/cgroup to fill."""
    root = tmp_path / "sys_fs_cgroup"
    root.mkdir()
    return root, tmp_path / "proc_self_cgroup"


@pytest.fixture
def fresh_state(monkeypatch):
    """No user choice in the environment, nothing set by the module yet; torch's threads restored afterwards."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", threads.ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_state", {"set": None, "explicit": False})
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cgroup_v2_quota_is_the_tightest_limit_on_the_way_to_the_root(cgroup):
    root, proc = cgroup
    _write(proc, "0::/user.slice/job\n")
    _write(root / "user.slice/job/cpu.max", "150000 100000\n")
    assert threads.cgroup_cpu_limit(root, proc) == 1.5
    _write(root / "user.slice/cpu.max", "50000 100000\n")  # the parent binds its child
    assert threads.cgroup_cpu_limit(root, proc) == 0.5
    _write(root / "user.slice/cpu.max", "max 100000\n")
    _write(root / "user.slice/job/cpu.max", "max 100000\n")
    assert threads.cgroup_cpu_limit(root, proc) is None


def test_cgroup_v2_in_a_container_whose_cgroup_is_the_mount_root(cgroup):
    root, proc = cgroup
    _write(proc, "0::/docker/0123abcd\n")  # the path names the host's folder, which the container does not see
    _write(root / "cpu.max", "200000 100000\n")
    assert threads.cgroup_cpu_limit(root, proc) == 2.0


def test_cgroup_v1_cfs_quota_and_period(cgroup):
    root, proc = cgroup
    _write(proc, "9:memory:/x\n4:cpu,cpuacct:/kubepods/pod1\n1:name=systemd:/\n")
    _write(root / "cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us", "250000\n")
    _write(root / "cpu,cpuacct/kubepods/pod1/cpu.cfs_period_us", "100000\n")
    _write(root / "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")  # the root: no limit
    _write(root / "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert threads.cgroup_cpu_limit(root, proc) == 2.5
    _write(root / "cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us", "-1\n")
    assert threads.cgroup_cpu_limit(root, proc) is None


def test_no_cgroup_files_or_bad_ones_mean_no_limit(cgroup):
    root, proc = cgroup
    assert threads.cgroup_cpu_limit(root, proc) is None  # no /proc file at all
    _write(proc, "0::/\nnot a line\n")
    assert threads.cgroup_cpu_limit(root, proc) is None  # no cpu.max
    for text in ("", "abc 100000", "100000 0", "-5 100000"):
        _write(root / "cpu.max", text)
        assert threads.cgroup_cpu_limit(root, proc) is None, text


def test_available_cpus_is_the_affinity_capped_by_the_quota_rounded_up(cgroup, monkeypatch):
    root, proc = cgroup
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert threads.available_cpus(root, proc) == 16  # no quota: the 16 CPUs of the mask
    _write(proc, "0::/\n")
    for quota, cpus in (("150000 100000", 2), ("50000 100000", 1), ("400000 100000", 4), ("3200000 100000", 16)):
        _write(root / "cpu.max", quota)
        assert threads.available_cpus(root, proc) == cpus, quota
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {3})
    assert threads.available_cpus(root, proc) == 1


def test_threads_grow_with_the_batch_up_to_the_cpus():
    per = threads.CRYSTALS_PER_THREAD
    assert threads.threads_for(1, 16) == 1
    assert threads.threads_for(per - 1, 16) == 1
    assert threads.threads_for(2 * per, 16) == 2
    assert threads.threads_for(64 * per, 16) == 16
    assert threads.threads_for(64 * per, 1) == 1


def test_fit_threads_sets_and_then_follows_the_batch_size(fresh_state, monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda *a: 2)
    start = torch.get_num_threads()
    monkeypatch.setattr(threads, "torch_default_threads", lambda: start)  # torch's count at start-up
    big = 2 * threads.CRYSTALS_PER_THREAD
    assert threads.fit_threads(big) == 2 and torch.get_num_threads() == 2
    assert threads.fit_threads(1) == 1 and torch.get_num_threads() == 1  # its own earlier choice is not the user's
    assert threads.fit_threads(big) == 2 and torch.get_num_threads() == 2


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_an_environment_setting_wins(fresh_state, monkeypatch, variable):
    monkeypatch.setattr(threads, "available_cpus", lambda *a: 8)
    torch.set_num_threads(3)
    monkeypatch.setenv(variable, "3")
    assert threads.fit_threads(1000) == 3 and torch.get_num_threads() == 3


def test_torch_set_num_threads_by_the_user_wins(fresh_state, monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda *a: 2)
    monkeypatch.setattr(threads, "torch_default_threads", lambda: 2)
    torch.set_num_threads(3)  # not torch's default, not a value fit_threads set
    assert threads.fit_threads(1) == 3 and torch.get_num_threads() == 3
    threads.set_threads(2)  # set_threads counts as the user's choice even at the default value
    assert threads.fit_threads(1) == 2 and torch.get_num_threads() == 2


def test_mattergen_lab_threads_forces_a_count(fresh_state, monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda *a: 1)
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.fit_threads(1) == 2 and torch.get_num_threads() == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(threads.ENV, bad)
        with pytest.raises(ValueError, match=threads.ENV):
            threads.fit_threads(1)


def test_torch_default_is_one_thread_per_physical_core():
    assert 1 <= threads.torch_default_threads() <= (threads.os.cpu_count() or 1)


def test_the_pipeline_fits_threads_to_its_chunks_and_to_guidance(monkeypatch):
    from mattergen_lab.sampling import pipeline as pipeline_mod
    from mattergen_lab.sampling.request import SamplingRequest

    seen = []
    monkeypatch.setattr(pipeline_mod, "fit_threads", seen.append)
    for gamma, expected in ((0.0, 3), (2.0, 6)):
        request = SamplingRequest(checkpoint="mgl_mp20_small_dft_band_gap", num_samples=5, batch_size=3, num_steps=2,
                                  seed=0, guidance_scale=gamma, conditions={"dft_band_gap": 2.0} if gamma else {})
        pipe = pipeline_mod.SamplingPipeline.for_request(request)
        seen.clear()
        assert len(pipe(request)) == 5
        assert seen == [expected]  # once per call: 3 crystals a chunk, doubled by guidance
        seen.clear()
        list(pipe.frames(request, every=0))
        assert seen == [expected]


def test_importing_the_package_shortens_the_openmp_spin_before_torch_loads_it():
    """``GOMP_SPINCOUNT`` is read once, when torch loads libgomp: ``import mattergen_lab`` sets it first (10,000),
    and keeps a value the user gave."""
    import subprocess
    import sys

    code = "import os, mattergen_lab, torch; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "10000"
    mine = subprocess.run([sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "500"}, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert mine == "500"
