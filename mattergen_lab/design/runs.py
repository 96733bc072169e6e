"""Design runs: streamed frames and candidates, read from the sampling pipeline's frames (the one chunk loop)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.constants import MASK_Z
from mattergen_lab.design.choices import checkpoint_properties
from mattergen_lab.design.requests import MASK_PLACEHOLDER, DesignRequest
from mattergen_lab.sampling.pipeline import SamplingPipeline

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

log = logging.getLogger(__name__)
# ------------------------------------------------------------------------------------- runs and frames
@dataclass(frozen=True)
class CrystalSnapshot:
    """One crystal at one denoising step (numpy, detached). ``atomic_numbers`` may hold MASK = 101."""

    step: int
    t: float
    lattice: np.ndarray  # (3, 3), rows are lattice vectors
    frac_coords: np.ndarray  # (n, 3)
    atomic_numbers: np.ndarray  # (n,)

    @property
    def num_masked(self) -> int:
        return int((self.atomic_numbers == MASK_Z).sum())

    def display_numbers(self, placeholder: str = MASK_PLACEHOLDER) -> np.ndarray:
        """Atomic numbers with MASK replaced by ``placeholder``'s Z (for viewers)."""
        from pymatgen.core.periodic_table import Element

        return np.where(self.atomic_numbers == MASK_Z, Element(placeholder).Z, self.atomic_numbers)

    def to_structure(self, placeholder: str = MASK_PLACEHOLDER) -> Structure:
        """A pymatgen structure; still-masked atoms become ``placeholder`` (see the module docstring)."""
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), self.display_numbers(placeholder).tolist(), self.frac_coords)


def snapshots_from_batch(batch: Any, *, step: int, t: float) -> list[CrystalSnapshot]:
    """Per-crystal snapshots of a :class:`~mattergen_lab.crystal.CrystalBatch`."""
    lat = batch.lattice.detach().double().cpu().numpy()  # (B, 3, 3)
    frac = batch.frac_coords.detach().double().cpu().numpy()  # (N, 3)
    z = batch.atom_types.detach().cpu().numpy()  # (N,)
    ptr = batch.ptr.cpu().numpy()
    return [
        CrystalSnapshot(step, float(t), lat[i].copy(), frac[ptr[i]:ptr[i + 1]].copy(), z[ptr[i]:ptr[i + 1]].copy())
        for i in range(len(lat))
    ]


@dataclass
class Candidate:
    """A finished crystal of a design run, with its trajectory and cheap oracle values."""

    id: str
    structure: Structure
    trajectory: list[CrystalSnapshot]
    request: DesignRequest
    oracles: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DesignFrame:
    """What :func:`iter_design` streams: one step of the batch being denoised.

    ``indices`` are the run's sample indices in this batch; ``done`` counts finished predictor steps over
    the whole run (``total`` = batches × steps). The last frame of a batch has ``final=True`` and carries
    its ``candidates``.
    """

    batch: int
    indices: tuple[int, ...]
    step: int
    t: float
    done: int
    total: int
    snapshots: list[CrystalSnapshot]
    final: bool = False
    candidates: tuple[Candidate, ...] = ()


@dataclass
class DesignRun:
    request: DesignRequest
    candidates: list[Candidate]
    cancelled: bool
    checkpoint_properties: tuple[str, ...]
    seconds: float


def pipeline_for(request: DesignRequest) -> SamplingPipeline:
    """The cached :class:`~mattergen_lab.sampling.pipeline.SamplingPipeline` of ``request``'s checkpoint, steps, γ and
    device (a retrained checkpoint folder is loaded again)."""
    return SamplingPipeline.from_checkpoint(request.checkpoint, num_steps=request.num_steps,
                                            guidance_scale=request.guidance_scale, device=request.resolved_device())


def candidate_oracles(structure: Structure) -> dict[str, Any]:
    """Cheap oracle values: formula, chemical system, space group and occupied Wyckoff positions (spglib, symprec
    0.1), HHI, density."""
    from mattergen_lab.evaluation.validity import density_plausibility
    from mattergen_lab.properties import hhi_score, space_group
    from mattergen_lab.properties.symmetry import wyckoff_sites

    out: dict[str, Any] = {
        "formula": structure.composition.reduced_formula,
        "chemical_system": structure.composition.chemical_system,
        "num_atoms": len(structure),
        "density": float(structure.density),
        "volume_per_atom": float(structure.volume / len(structure)),
    }
    out["plausible_density"], out["density_note"] = density_plausibility(out["volume_per_atom"])
    try:
        out["space_group"] = int(space_group(structure))
        out["wyckoff"] = wyckoff_sites(structure)
    except ValueError:
        out["space_group"], out["wyckoff"] = np.nan, ""
    try:
        out["hhi_score"] = float(hhi_score(structure))
    except ValueError:
        out["hhi_score"] = np.nan
    return out


def iter_design(
    request: DesignRequest,
    *,
    cancel: threading.Event | None = None,
    id_prefix: str = "",
) -> Iterator[DesignFrame]:
    """Stream a design run, batch by batch and step by step (see :class:`DesignFrame`).

    Conditions are checked against the checkpoint first (``ValueError`` names an unsupported target);
    a chemical system is a hard element mask at every step. When ``cancel`` is set, the stream stops at the
    next step and the unfinished batch is dropped; finished batches were already yielded.
    """
    pipe = pipeline_for(request)
    sreq = request.sampling_request(pipe.properties)
    steps = pipe.num_steps
    total = sreq.num_chunks * steps
    trajectories: list[list[CrystalSnapshot]] = []
    # the pipeline checks the request first: ValueError names a target this checkpoint cannot condition on
    for item in pipe.frames(sreq, every=request.every):
        if cancel is not None and cancel.is_set():
            return
        j, indices, frame = item.chunk, item.indices, item.frame
        if frame.step == 0 and not frame.final:  # the prior: a new chunk starts
            trajectories = [[] for _ in indices]
        snaps = snapshots_from_batch(frame.batch, step=frame.step, t=frame.t)
        for traj, s in zip(trajectories, snaps):
            traj.append(s)
        candidates: tuple[Candidate, ...] = ()
        if frame.final:
            structures = frame.batch.to_structures(standard_orientation=True)
            candidates = tuple(
                Candidate(f"{id_prefix}{i}", s, traj, request, candidate_oracles(s))
                for i, s, traj in zip(indices, structures, trajectories)
            )
        yield DesignFrame(j, indices, frame.step, frame.t, j * steps + frame.step, total, snaps, frame.final, candidates)


def run_design(
    request: DesignRequest,
    *,
    on_frame: Callable[[DesignFrame], None] | None = None,
    cancel: threading.Event | None = None,
    id_prefix: str = "",
) -> DesignRun:
    """Run :func:`iter_design` to the end (or until ``cancel``); return every finished candidate."""
    start = time.perf_counter()
    candidates: list[Candidate] = []
    props: tuple[str, ...] = ()
    for frame in iter_design(request, cancel=cancel, id_prefix=id_prefix):
        candidates.extend(frame.candidates)
        if on_frame is not None:
            on_frame(frame)
    with_cancel = cancel is not None and cancel.is_set() and len(candidates) < request.num_samples
    try:
        props = checkpoint_properties(request.checkpoint)
    except ValueError:
        pass
    return DesignRun(request, candidates, with_cancel, props, time.perf_counter() - start)
