"""Run a campaign on Ray: sampling tasks, then evaluation tasks as their crystals arrive, results streamed to disk.

* **Where**: a local Ray (``ray.init()`` on this machine's cores and GPUs, every process listening on 127.0.0.1
  only) by default, an existing cluster with ``address=`` (``"auto"`` or ``"ray://head:10001"``; securing it is
  the cluster's business, see the README), or whatever Ray the caller has already initialised.
* **Checked first**: the whole spec, and for a local Ray the resources it asks for, before Ray starts; a slow
  start is retried until ``start_timeout_s``.
  A sampling task asks for a GPU when the cluster has one (``resources.sample_gpus: auto``); evaluation tasks
  run on CPUs.
* **Nothing lost**: every finished task is written to the campaign folder before the next one is handled; a
  rerun with the same spec runs only the tasks the manifest does not list as done; a task whose worker dies
  is retried by Ray (``max_retries``); a task that raises is recorded as failed, the others go on, and the
  next rerun retries it.
* **Order**: at most ``window`` tasks are in flight, and the evaluation of finished crystals is submitted before
  more sampling, so results arrive while the campaign runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mattergen_lab.campaign.spec import CampaignSpec
from mattergen_lab.campaign.store import CampaignFolder, PlannedTask, plan
from mattergen_lab.campaign.tasks import FAULT_ENV, evaluate_task, sample_task
from mattergen_lab.fileio import FolderLock

log = logging.getLogger(__name__)


@dataclass
class CampaignResult:
    folder: Path
    table: Any  # pandas DataFrame of every evaluated crystal
    status: dict[str, Any]
    tasks_run: int
    seconds: float
    failures: dict[str, str] = field(default_factory=dict)


def _as_spec(spec: CampaignSpec | dict[str, Any] | str | os.PathLike) -> CampaignSpec:
    if isinstance(spec, CampaignSpec):
        return spec
    if isinstance(spec, dict):
        return CampaignSpec.from_dict(spec)
    return CampaignSpec.load(spec)


def check_spec(spec: CampaignSpec, *, local: bool = False, num_cpus: int | None = None) -> None:
    """Fail at the boundary, before Ray starts: the checkpoint loads, builds the spec's sampler and can condition on
    every arm's targets; for a local Ray (``local``, with ``num_cpus``) the resources exist here (``threads`` within
    the cores, no more GPUs than this machine has) and an ``evaluate.reference`` file exists."""
    from mattergen_lab.checkpoints import load_checkpoint
    from mattergen_lab.sampling.build import recommended_num_steps
    from mattergen_lab.sampling.pipeline import SamplingPipeline

    if local:
        _check_local_resources(spec, num_cpus)
    ckpt = load_checkpoint(spec.checkpoint)
    steps = spec.num_steps or recommended_num_steps(ckpt)
    infos: dict[float, Any] = {}  # one pipeline per guidance value, not one per arm
    for arm in spec.arms():
        if arm.guidance_scale not in infos:
            infos[arm.guidance_scale] = SamplingPipeline.from_checkpoint(
                ckpt, num_steps=steps, guidance_scale=arm.guidance_scale, sampler_settings=spec.sampler)
        request = spec.request(arm)  # (its ValueError names the arm)
        try:
            infos[arm.guidance_scale].check(request)  # the check every sampling task makes: conditions, composition
        except ValueError as exc:
            raise ValueError(f"arm {arm.name} ({arm.label}): {exc}") from None


def _check_local_resources(spec: CampaignSpec, num_cpus: int | None) -> None:
    """What a local Ray finds out only once started (or never: a task asking for more CPUs than the node has waits
    for ever)."""
    import torch

    cores = num_cpus or os.cpu_count() or 1
    if spec.threads > cores:
        raise ValueError(f"resources.threads={spec.threads} but the local Ray has {cores} CPU(s) (--num-cpus or this "
                         f"machine's cores): no task could ever be scheduled; use threads <= {cores}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec.sample_gpus != "auto" and float(spec.sample_gpus) > gpus:
        raise ValueError(f"resources.sample_gpus={spec.sample_gpus!r} but this machine has {gpus} CUDA GPU(s); "
                         "use sample_gpus: auto (or 0), or a cluster with GPUs (--address)")
    ev = spec.evaluate
    if ev is not None and ev.reference not in ("mp20", "mp-api") and not Path(ev.reference).expanduser().exists():
        raise FileNotFoundError(f"evaluate.reference={ev.reference!r}: no such file (expected 'mp20', 'mp-api' or "
                                "the path of a reference hull file)")


#: The only address a local Ray's processes listen on: a campaign on a laptop offers no scheduler to its network.
LOOPBACK = "127.0.0.1"
#: Seconds a local Ray may take to start (``run_campaign(start_timeout_s=)``, ``campaign run --ray-start-timeout``
#: or ``$MATTERGEN_LAB_RAY_START_TIMEOUT``). Ray's own wait for its node to register is 30 s, which a busy 2-core
#: laptop missed; a start that fails within this budget is tried again.
RAY_START_TIMEOUT_S = 180.0
RAY_START_TIMEOUT_ENV = "MATTERGEN_LAB_RAY_START_TIMEOUT"


def _ray_start_timeout(start_timeout_s: float | None) -> float:
    value: Any = start_timeout_s
    where = "start_timeout_s"
    if value is None:
        value, where = os.environ.get(RAY_START_TIMEOUT_ENV, RAY_START_TIMEOUT_S), f"${RAY_START_TIMEOUT_ENV}"
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{where}={value!r} must be a positive number of seconds")
    return seconds


def ray_listeners(pids: list[int] | None = None) -> list[tuple[str, int, int, str]]:
    """``(address, port, pid, process name)`` of every listening TCP socket of this process's descendants (the
    processes a local Ray starts), or of the processes ``pids``."""
    import psutil

    procs = [psutil.Process(p) for p in pids] if pids is not None else psutil.Process().children(recursive=True)
    out = []
    for proc in procs:
        try:
            conns, name = proc.net_connections(kind="inet"), proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out += [(c.laddr.ip, c.laddr.port, proc.pid, name) for c in conns if c.status == psutil.CONN_LISTEN]
    return sorted(out)


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def init_ray(address: str | None, num_cpus: int | None, start_timeout_s: float | None = None) -> bool:
    """Initialise Ray unless the caller did; returns True when this call started it.

    A local Ray listens on :data:`LOOPBACK` only, in every process (GCS, raylet, agents, workers; checked once it
    has started, and refused otherwise). Ray binds to loopback when its node address is loopback, and picks that
    address itself on Linux only when told the node is not part of a cluster (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    its default on a Mac or Windows laptop), so that is set while it starts.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
        return True
    kwargs.update(num_cpus=num_cpus, _node_ip_address=LOOPBACK)
    env = {k: os.environ[k] for k in (FAULT_ENV, "MATTERGEN_LAB_DATA") if k in os.environ}
    if env:
        kwargs["runtime_env"] = {"env_vars": env}
    timeout = _ray_start_timeout(start_timeout_s)
    start, attempt = time.monotonic(), 0
    while True:
        attempt += 1
        try:
            with _loopback_only(timeout):
                ray.init(**kwargs)
            break
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when its node is slow to register
            last = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            ray.shutdown()
            if time.monotonic() - start + 30 > timeout:  # Ray's own registration wait is 30 s per try
                tries = f"{attempt} tr{'y' if attempt == 1 else 'ies'}"
                raise TimeoutError(
                    f"the local Ray did not start within {timeout:g} s ({tries}; last: {last}). The machine may be too "
                    f"busy: wait for other work to finish, or allow longer with --ray-start-timeout SECONDS "
                    f"(${RAY_START_TIMEOUT_ENV}; Python: run_campaign(start_timeout_s=...))") from None
            log.warning("the local Ray did not start (%s); trying again", last)
    wide = [x for x in ray_listeners() if not is_loopback(x[0])]
    if wide:
        ray.shutdown()
        raise RuntimeError(f"the local Ray listens beyond this machine {wide}; refusing to run a campaign on it")
    return True


@contextlib.contextmanager
def _loopback_only(timeout: float) -> Any:
    """While Ray starts: its node address is loopback (``ray_constants.ENABLE_RAY_CLUSTER`` false, here and in the
    processes it starts), and it waits up to ``timeout`` for its GCS port. Restored afterwards."""
    from ray._private import ray_constants

    keys = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_gcs_server_port_wait_time_s")
    saved, saved_flag = {k: os.environ.get(k) for k in keys}, ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(max(30, int(timeout))))
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_campaign(
    spec: CampaignSpec | dict[str, Any] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    max_retries: int = 3,
    window: int | None = None,
    progress: bool | Callable[[dict[str, Any]], None] = True,
    start_timeout_s: float | None = None,
) -> CampaignResult:
    """Run (or resume) the campaign ``spec`` into the folder ``out``; see the module docstring.

    Args:
        spec: a :class:`CampaignSpec`, its mapping, or a YAML file.
        address: an existing Ray cluster; ``None`` starts a local one with ``num_cpus`` (default: all cores),
            listening on 127.0.0.1 only.
        max_retries: Ray's retries of a task whose worker died.
        window: tasks in flight at once (default: twice the cluster's CPUs).
        progress: a tqdm bar on stderr when it is a terminal (True), nothing (False), or a callable given the folder's
            status after each task.
        start_timeout_s: how long a local Ray may take to start (default :data:`RAY_START_TIMEOUT_S`, or
            ``$MATTERGEN_LAB_RAY_START_TIMEOUT``); past it, ``TimeoutError`` says so.

    The whole spec is checked before Ray starts, and the folder has one writer at a time (a second run into it is
    refused, naming the process that holds it: :class:`~mattergen_lab.fileio.FolderLock`).
    """
    import ray

    if not str(out).strip():  # '' would write into the working directory
        raise ValueError(f"out={str(out)!r} is empty; give a campaign folder")
    spec = _as_spec(spec)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise ValueError(f"max_retries={max_retries!r} must be an integer >= 0")
    if num_cpus is not None and (not isinstance(num_cpus, int) or isinstance(num_cpus, bool) or num_cpus < 1):
        raise ValueError(f"num_cpus={num_cpus!r} must be a positive integer")
    local = address is None and not ray.is_initialized()
    if local:
        _ray_start_timeout(start_timeout_s)
    folder = CampaignFolder(out)
    check_spec(spec, local=local, num_cpus=num_cpus)
    with FolderLock(folder.path, "campaign"):
        folder.prepare(spec)
        tasks = plan(spec)
        done = folder.done()
        todo = [t for t in tasks if t.key not in done]
        start = time.perf_counter()
        if not todo:
            table = folder.finalize()
            return CampaignResult(folder.path, table, folder.status(), 0, 0.0)

        started = init_ray(address, num_cpus, start_timeout_s)
        try:
            resources = ray.cluster_resources()
            gpus = float(resources.get("GPU", 0))
            sample_gpus = (1.0 if gpus >= 1 else 0.0) if spec.sample_gpus == "auto" else float(spec.sample_gpus)
            if sample_gpus > gpus:
                raise ValueError(f"resources.sample_gpus={spec.sample_gpus!r} but the Ray cluster has {gpus:g} GPU(s)")
            device = "cuda" if sample_gpus > 0 else "cpu"
            cpus = max(1, int(resources.get("CPU", 1)))
            if spec.threads > cpus:
                raise ValueError(f"resources.threads={spec.threads} but the Ray cluster has {cpus} CPU(s)")
            window = window or 2 * max(1, cpus // spec.threads)
            sample_remote = ray.remote(sample_task).options(num_cpus=spec.threads, num_gpus=sample_gpus, max_retries=max_retries)
            eval_remote = ray.remote(evaluate_task).options(num_cpus=spec.threads, max_retries=max_retries)
            spec_dict = spec.to_dict()
            failures = _loop(folder, spec_dict, todo, done, sample_remote, eval_remote, device, window, progress)
        finally:
            if started:
                ray.shutdown()
        table = folder.finalize()
        status = folder.status()
    return CampaignResult(folder.path, table, status, len(todo), time.perf_counter() - start, failures)


def _loop(folder: CampaignFolder, spec_dict: dict[str, Any], todo: list[PlannedTask], done: set[str],
          sample_remote: Any, eval_remote: Any, device: str, window: int,
          progress: bool | Callable[[dict[str, Any]], None]) -> dict[str, str]:
    import ray

    samples = [t for t in todo if t.kind == "sample"]
    evals_of: dict[str, list[PlannedTask]] = {}
    for t in todo:
        if t.kind == "evaluate":
            evals_of.setdefault(t.parent or "", []).append(t)
    ready = [t for parent, ts in evals_of.items() if parent in done for t in ts]  # resumed: crystals on disk
    pending: dict[Any, PlannedTask] = {}
    failures: dict[str, str] = {}
    bar = None
    if progress is True:  # shown only on a terminal (console.progress_bar)
        from mattergen_lab.console import progress_bar

        bar = progress_bar(len(todo), "campaign tasks", "task")

    def submit_eval(t: PlannedTask) -> None:
        ids, structures = folder.read_sample(t.parent or "")
        keep = [k for k, sid in enumerate(ids) if sid in t.ids]
        pending[eval_remote.remote(spec_dict, t.key, [ids[k] for k in keep], [structures[k] for k in keep], "cpu")] = t

    while samples or ready or pending:
        while ready and len(pending) < window:
            submit_eval(ready.pop(0))
        while samples and len(pending) < window:
            t = samples.pop(0)
            pending[sample_remote.remote(spec_dict, t.arm.index, t.chunk, device)] = t
        finished, _ = ray.wait(list(pending), num_returns=1)
        for ref in finished:
            t = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a task's own error; recorded, retried by the next rerun
                failures[t.key] = f"{type(exc).__name__}: {exc}"
                folder.record_failure(t.key, failures[t.key])
                log.warning("campaign task %s failed: %s", t.key, failures[t.key].splitlines()[0])
                if t.kind == "sample":
                    for e in evals_of.get(t.key, []):
                        failures[e.key] = f"its sampling task {t.key} failed"
                    if bar is not None:
                        bar.update(len(evals_of.get(t.key, [])))
            else:
                if t.kind == "sample":
                    folder.write_sample(result)
                    ready.extend(evals_of.get(t.key, []))
                else:
                    folder.write_evaluation(result)
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(folder.status())
    if bar is not None:
        bar.close()
    return failures
