"""Run a campaign on Ray: sampling tasks, then evaluation tasks as their crystals arrive, results streamed to disk.

* **Where**: a local Ray (``ray.init()`` on this machine's cores and GPUs) by default, an existing cluster with
  ``address=`` (``"auto"`` or ``"ray://head:10001"``), or whatever Ray the caller has already initialised.
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

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mattergen_lab.campaign.spec import CampaignSpec
from mattergen_lab.campaign.store import CampaignFolder, PlannedTask, plan
from mattergen_lab.campaign.tasks import FAULT_ENV, evaluate_task, sample_task

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


def check_spec(spec: CampaignSpec) -> None:
    """Fail at the boundary, before any task: the checkpoint loads, builds the spec's sampler and can condition on
    every arm's targets."""
    from mattergen_lab.checkpoints import load_checkpoint
    from mattergen_lab.sampling.build import recommended_num_steps
    from mattergen_lab.sampling.pipeline import SamplingPipeline

    ckpt = load_checkpoint(spec.checkpoint)
    steps = spec.num_steps or recommended_num_steps(ckpt)
    for arm in spec.arms():
        pipe = SamplingPipeline.from_checkpoint(ckpt, num_steps=steps, guidance_scale=arm.guidance_scale,
                                                sampler_settings=spec.sampler)
        request = spec.request(arm)  # (its ValueError names the arm)
        try:
            pipe.check(request)  # the check every sampling task makes: conditions, composition
        except ValueError as exc:
            raise ValueError(f"arm {arm.name} ({arm.label}): {exc}") from None


def _init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Initialise Ray unless the caller did; returns True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus
        env = {k: os.environ[k] for k in (FAULT_ENV, "MATTERGEN_LAB_DATA") if k in os.environ}
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
    ray.init(**kwargs)
    return True


def run_campaign(
    spec: CampaignSpec | dict[str, Any] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    max_retries: int = 3,
    window: int | None = None,
    progress: bool | Callable[[dict[str, Any]], None] = True,
) -> CampaignResult:
    """Run (or resume) the campaign ``spec`` into the folder ``out``; see the module docstring.

    Args:
        spec: a :class:`CampaignSpec`, its mapping, or a YAML file.
        address: an existing Ray cluster; ``None`` starts a local one with ``num_cpus`` (default: all cores).
        max_retries: Ray's retries of a task whose worker died.
        window: tasks in flight at once (default: twice the cluster's CPUs).
        progress: a tqdm bar (True), nothing (False), or a callable given the folder's status after each task.
    """
    import ray

    spec = _as_spec(spec)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise ValueError(f"max_retries={max_retries!r} must be an integer >= 0")
    if num_cpus is not None and (not isinstance(num_cpus, int) or isinstance(num_cpus, bool) or num_cpus < 1):
        raise ValueError(f"num_cpus={num_cpus!r} must be a positive integer")
    folder = CampaignFolder(out)
    check_spec(spec)
    folder.prepare(spec)
    tasks = plan(spec)
    done = folder.done()
    todo = [t for t in tasks if t.key not in done]
    start = time.perf_counter()
    if not todo:
        table = folder.finalize()
        return CampaignResult(folder.path, table, folder.status(), 0, 0.0)

    started = _init_ray(address, num_cpus)
    try:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        sample_gpus = (1.0 if gpus >= 1 else 0.0) if spec.sample_gpus == "auto" else float(spec.sample_gpus)
        if sample_gpus > gpus:
            raise ValueError(f"resources.sample_gpus={spec.sample_gpus!r} but the Ray cluster has {gpus:g} GPU(s)")
        device = "cuda" if sample_gpus > 0 else "cpu"
        cpus = max(1, int(resources.get("CPU", 1)))
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
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="campaign tasks", unit="task")

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
