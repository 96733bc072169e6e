"""Torch threads that fit the machine: chosen from the CPU quota, the CPU affinity and the batch size.

torch starts one intra-op thread per physical core of the *host*. In a container (Binder, Docker, Kubernetes, a
SLURM job) the process may own far less: a CFS quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``) or a CPU set (``sched_getaffinity``). Threads beyond what the process may run at once wait at
every parallel region for a thread the scheduler has parked, and a small batch gives each op too little work to
split. :func:`fit_threads` sets torch's thread count to ::

    cpus    = min(CPUs in the affinity mask, ceil(quota / period) of the tightest cgroup limit on the way to the root)
    threads = min(cpus, max(1, batch_size // CRYSTALS_PER_THREAD))

unless the user chose (:func:`user_threads`): ``MATTERGEN_LAB_THREADS`` (a number), ``OMP_NUM_THREADS`` or
``MKL_NUM_THREADS`` in the environment, or ``torch.set_num_threads(n)`` with ``n`` other than torch's start-up default
(one per physical core; set the environment variable to insist on that value) and other than the value this module set.
Sampling entry points call it once per call (``SamplingPipeline`` readers, so ``sample()``, the CLI and the design
app); campaign tasks set their spec's ``threads`` with :func:`set_threads`, which counts as the user's choice.

**Waiting threads.** Between parallel regions torch's OpenMP workers (GNU libgomp on Linux) spin before they sleep,
300,000 iterations by default; on cores shared with other work that spinning takes CPU from the thread the region
waits for. ``import mattergen_lab`` sets ``GOMP_SPINCOUNT=10000`` (unless the environment has one), which must
happen before torch is imported (libgomp reads it once). It changes how threads wait, not what they compute, so the
crystals are the same bits. Measured with ``mattergen-lab quickstart`` (16 crystals, 200 steps, 2 threads; wall /
CPU seconds), quiet: default 15.2 / 27.5, 10,000 spins 14.7 / 25.0; beside two busy processes: default 70 / 68,
10,000 spins 34.7 / 27.2 (docs/speed.md, *Threads*).

The choice depends on the machine and the batch size only, never on the load, because the thread count is part of
what makes a seed reproducible: 1 and 2 threads give different bits (checked op by op: MKL's matrix-vector products,
and transcendental elementwise ops such as ``silu`` and ``exp`` on tensors large enough to be split, whose split moves
elements between the vectorised loop and its scalar tail) and, after a few dozen sampling steps, different crystals.
The same request on the same machine gets the same threads from every entry point. On a machine whose cores are busy
with other work, two threads are far slower than one (every parallel region waits for a descheduled thread; see
docs/speed.md): set ``MATTERGEN_LAB_THREADS=1`` (or ``OMP_NUM_THREADS=1``) there.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

#: Crystals per torch thread: fewer per thread give each op too little to split (a 4-crystal batch has ~700 edges, so
#: GemNet's (edges, 64) activations are just over ATen's 32,768-element grain). See docs/speed.md.
CRYSTALS_PER_THREAD = 4
#: Environment variable that fixes mattergen-lab's thread count (an integer >= 1).
ENV = "MATTERGEN_LAB_THREADS"

_state = {"set": None, "explicit": False}  # the value fit_threads / set_threads last set; whether set_threads did


def cgroup_cpu_limit(cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                     proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> float | None:
    """CPUs the process's cgroups allow (quota / period of the tightest limit, e.g. ``1.5``), or ``None`` if none.

    Reads ``proc_cgroup`` for the process's cgroup paths: the v2 line ``0::/path`` (``cpu.max``: ``"max 100000"`` or
    ``"150000 100000"``) and the v1 line of the ``cpu`` controller (``cpu.cfs_quota_us``, ``-1`` for none, over
    ``cpu.cfs_period_us``, under ``cgroup_root/cpu`` or ``cgroup_root/cpu,cpuacct``), then every folder from the
    process's own up to the root: a parent's limit binds its children. Unreadable or malformed files count as no limit.
    """
    root = Path(cgroup_root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2
            for folder in _up_to_root([root, root / "unified"], path):
                limits.append(_v2_limit(folder / "cpu.max"))
        elif "cpu" in controllers.split(","):  # cgroup v1
            bases = [root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu", root / controllers]
            for folder in _up_to_root(bases, path):
                limits.append(_v1_limit(folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"))
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def _up_to_root(bases: list[Path], path: str) -> list[Path]:
    """``base/path``, ``base/parent``, … ``base`` for every base that exists (a container often mounts its own cgroup
    as the root, so the path from /proc names a folder that is not there: the base itself is then the process's)."""
    rel = [p for p in path.strip("/").split("/") if p and p != ".."]
    out = []
    for base in bases:
        if not base.is_dir():
            continue
        for depth in range(len(rel), -1, -1):
            folder = base.joinpath(*rel[:depth])
            if folder.is_dir() and folder not in out:
                out.append(folder)
    return out


def _v2_limit(path: Path) -> float | None:
    try:
        fields = path.read_text().split()
        quota, period = (fields + ["100000"])[:2]
        if quota == "max":
            return None
        q, p = int(quota), int(period)
    except (OSError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def _v1_limit(quota_path: Path, period_path: Path) -> float | None:
    try:
        q, p = int(quota_path.read_text().strip()), int(period_path.read_text().strip())
    except (OSError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def available_cpus(cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                   proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> int:
    """CPUs this process may use at once: the affinity mask's size, capped by the cgroup quota (rounded up, >= 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return max(1, cpus)


def threads_for(batch_size: int, cpus: int) -> int:
    """The thread count for sampling ``batch_size`` crystals at a time on ``cpus`` CPUs."""
    return max(1, min(cpus, batch_size // CRYSTALS_PER_THREAD))


def torch_default_threads() -> int:
    """torch's start-up thread count without OMP/MKL_NUM_THREADS: one per physical core (hyper-threads not counted)."""
    cores = set()
    for topo in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            continue
    return len(cores) or os.cpu_count() or 1


def user_threads() -> int | None:
    """The thread count the user chose, or ``None`` when mattergen-lab may choose (see the module docstring)."""
    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{ENV}={value!r} must be an integer >= 1") from None
        if n < 1:
            raise ValueError(f"{ENV}={value!r} must be an integer >= 1")
        return n
    current = torch.get_num_threads()
    if _state["explicit"] or any(os.environ.get(v, "").strip() for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return current
    if current not in (_state["set"], torch_default_threads()):
        return current  # torch.set_num_threads(n) by the user
    return None


def set_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` as the user's choice: :func:`fit_threads` leaves it alone from then on."""
    torch.set_num_threads(n)
    _state["set"], _state["explicit"] = n, True


def fit_threads(batch_size: int) -> int:
    """Set torch's thread count for sampling ``batch_size`` crystals at a time, unless the user chose; returns the
    count now in use."""
    chosen = user_threads()
    if chosen is not None:
        if os.environ.get(ENV, "").strip() and torch.get_num_threads() != chosen:
            torch.set_num_threads(chosen)
        return chosen
    n = threads_for(batch_size, available_cpus())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _state["set"] = n
    return n

