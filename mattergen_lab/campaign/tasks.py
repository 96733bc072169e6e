"""The two kinds of campaign task, as plain functions (Ray runs them; tests may call them directly).

* :func:`sample_task`: one chunk of one arm's sampling request, returned as structures (nothing is written by
  the worker: a cluster's workers need not share a filesystem with the driver).
* :func:`evaluate_task`: relax and score a batch of those structures with the evaluation's per-structure
  protocol (uniqueness is recomputed over the whole campaign by the driver).

Both are deterministic functions of their arguments on a given device and thread count, so a task that is
retried after its worker died returns what the first attempt would have.

A worker keeps the loaded sampling pipeline (the pipeline registry) and relaxer (``functools.lru_cache``) between
tasks, so only its first task pays for loading them.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from mattergen_lab.caches import registered
from mattergen_lab.campaign.spec import CampaignSpec

#: Testing hook: when set to a folder, each task kills its own worker (SIGKILL) the first time it reaches the
#: end of its work (a marker file per task key records that), so tests can check that Ray retries a task whose
#: worker died and that the campaign neither loses nor duplicates its results.
FAULT_ENV = "MATTERGEN_LAB_CAMPAIGN_KILL_ONCE"


def task_file_name(key: str) -> str:
    """``sample/a0/c3`` -> ``sample_a0_c3`` (file names of a task's results and fault markers)."""
    return key.replace("/", "_")


def _die_once(key: str) -> None:
    folder = os.environ.get(FAULT_ENV)
    if not folder:
        return
    marker = Path(folder) / task_file_name(key)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{socket.gethostname()}:{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@registered
@functools.lru_cache(maxsize=2)
def _relaxer(name: str, device: str, fmax: float, max_steps: int, max_seconds: float) -> Any:
    from mattergen_lab.evaluation.relax import RelaxConfig, get_relaxer

    return get_relaxer(name, device=device, config=RelaxConfig(fmax=fmax, max_steps=max_steps, max_seconds=max_seconds))


def sample_task(spec: dict[str, Any], arm_index: int, chunk: int, device: str = "cpu") -> dict[str, Any]:
    """Sample chunk ``chunk`` of arm ``arm_index``: ``{"key", "ids", "structures" (as dicts), "seconds", "worker"}``.

    The crystals are exactly those that ``mattergen-lab sample`` with the arm's request (seed ``seed + arm``)
    writes at the same indices.
    """
    from mattergen_lab.sampling.pipeline import SamplingPipeline
    from mattergen_lab.threads import set_threads

    start = time.perf_counter()
    cs = CampaignSpec.from_dict(spec)
    set_threads(cs.threads)  # the spec's choice: sampling keeps it (mattergen_lab.threads)
    arm = cs.arms()[arm_index]
    request = cs.request(arm, device=device)
    indices = [c[1] for c in request.chunks()][chunk]
    skip = set(range(request.num_samples)) - set(indices)
    structures = []
    for item in SamplingPipeline.for_request(request).frames(request, every=0, skip=skip):
        if item.frame.final:
            structures = item.frame.batch.to_structures(standard_orientation=True)
    key = f"sample/{arm.name}/c{chunk}"
    _die_once(key)
    return {
        "key": key,
        "ids": [f"{arm.name}-{i}" for i in indices],
        "structures": [s.as_dict() for s in structures],
        "seconds": time.perf_counter() - start,
        "worker": _worker(),
    }


def evaluate_task(spec: dict[str, Any], key: str, ids: list[str], structures: list[dict[str, Any]],
                  device: str = "cpu") -> dict[str, Any]:
    """Relax and score ``structures``: ``{"key", "rows", "relaxed" (dicts or None), "seconds", "worker"}``.

    A structure whose elements have no reference entry is scored without energies (its ``error`` says why)
    instead of stopping the campaign.
    """
    from pymatgen.core import Structure

    from mattergen_lab.evaluation.evaluate import evaluate_structures
    from mattergen_lab.threads import set_threads

    start = time.perf_counter()
    cs = CampaignSpec.from_dict(spec)
    ev = cs.evaluate
    if ev is None:
        raise ValueError("this campaign does not evaluate (evaluate: false)")
    set_threads(cs.threads)  # the spec's choice: sampling keeps it (mattergen_lab.threads)
    relaxer = _relaxer(ev.relaxer, device, float(ev.fmax), int(ev.max_steps), float(ev.max_seconds))
    result = evaluate_structures(
        [Structure.from_dict(d) for d in structures], ids=ids, relaxer=relaxer, reference=ev.reference,
        novelty_reference=ev.novelty_reference, matcher=ev.matcher, stability_threshold=ev.stability_threshold,
        allow_missing_reference=True,
    )
    _die_once(key)
    return {
        "key": key,
        "rows": result.table.to_dict("records"),
        "relaxed": [s.as_dict() if s is not None else None for s in result.relaxed],
        "protocol": result.protocol,
        "seconds": time.perf_counter() - start,
        "worker": _worker(),
    }
