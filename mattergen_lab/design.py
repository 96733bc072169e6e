"""Materials design without widgets: requests, streamed runs, candidate tables, Pareto fronts, export.

Everything the design panels (``mattergen_lab.widgets``) do that is not drawing lives here, so a notebook or
a script can do the same in a few lines::

    from mattergen_lab.design import DesignRequest, run_design, candidate_table, export_candidates
    req = DesignRequest(checkpoint="runs/magnets/best", chemical_system="Fe-Co-B",
                        targets={"dft_mag_density": 0.15}, guidance_scale=2.0, num_samples=8, num_steps=200)
    run = run_design(req)                         # list of Candidate in run.candidates
    table = candidate_table(run.candidates)       # formula, space group, HHI, ... one row per candidate
    export_candidates([c.structure for c in run.candidates], table, "review.zip", report=design_report(run.candidates))

This module never imports ipywidgets, nglview or plotly.

**Masked atoms.** During denoising an atom may still be in the absorbing MASK state (Z = 101). Snapshots keep
that value; :meth:`CrystalSnapshot.to_structure` shows such atoms as :data:`MASK_PLACEHOLDER` (helium, which
MatterGen never generates, so a He atom in a trajectory is always a still-masked atom).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import html
import io
import json
import logging
import math
import os
import re
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.chemistry import ChemicalSystem
from mattergen_lab.sampling.request import SamplingRequest
from mattergen_lab.constants import MASK_Z, SELECTED_ATOMIC_NUMBERS
from mattergen_lab.fileio import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Structure

    from mattergen_lab.sampling.api import SamplerInfo

log = logging.getLogger(__name__)

#: The scalar design targets the target panel offers (MatterGen property names).
DESIGN_PROPERTIES = ("dft_mag_density", "hhi_score", "dft_bulk_modulus", "dft_band_gap")

#: A target drives whichever of these property names a checkpoint conditions on. MatterGen's official
#: bulk-modulus checkpoint was fine-tuned on ML bulk moduli (``ml_bulk_modulus``); MP-20 has DFT values.
TARGET_ALIASES: dict[str, tuple[str, ...]] = {"dft_bulk_modulus": ("dft_bulk_modulus", "ml_bulk_modulus")}


def property_for(target: str, supported: Sequence[str]) -> str | None:
    """The conditioning property of a checkpoint (``supported``) that serves ``target``, or ``None``."""
    return next((name for name in TARGET_ALIASES.get(target, (target,)) if name in supported), None)

#: What a still-masked atom (Z = 101) is shown as; He is never generated (not in SELECTED_ATOMIC_NUMBERS).
MASK_PLACEHOLDER = "He"

#: Symmetry tolerance of the symmetrized CIFs in exports (Å), and the angle tolerance (degrees).
EXPORT_SYMPREC = 0.1
EXPORT_ANGLE_TOLERANCE = 5.0

#: Columns of the evaluation table that the candidate table keeps (``mattergen_lab.evaluation`` contract).
EVALUATION_COLUMNS = (
    "energy_per_atom", "energy_above_hull", "stable", "is_unique", "is_novel", "novel_unique_stable",
    "rmsd_from_relaxation", "comp_valid", "structure_valid", "relax_status", "error",
)


# ------------------------------------------------------------------------------------ chemical systems
@functools.lru_cache(maxsize=1)
def _allowed_symbols() -> dict[str, int]:
    from pymatgen.core.periodic_table import Element

    return {Element.from_Z(z).symbol: z for z in SELECTED_ATOMIC_NUMBERS}


def allowed_elements() -> list[str]:
    """The 76 element symbols MatterGen can generate, by atomic number."""
    return list(_allowed_symbols())


def validate_chemical_system(text: str) -> list[str]:
    """``"Li-Fe-O"`` (also ``"Li, Fe, O"`` or ``"Li Fe O"``) -> sorted unique symbols ``["Fe", "Li", "O"]``.

    Raises:
        ValueError: empty text, a token that is not an element symbol, or an element MatterGen never
            generates (noble gases, Tc, Pm, Z >= 84); the message names the token.
    """
    if not isinstance(text, str):
        raise ValueError(f"chemical system {text!r} is empty; write it like 'Li-Fe-O'")
    return list(ChemicalSystem.parse(text).require_generatable().symbols)


# ------------------------------------------------------------------------------------ property ranges
@dataclass(frozen=True)
class PropertyRange:
    """Slider range for one design property: ``low``..``high`` in ``unit``, with a default target."""

    name: str
    label: str
    unit: str
    low: float
    high: float
    default: float
    step: float
    source: str


#: Used when no data directory exists. Measured on MP-20 val (9,047 crystals): 0 to the 99.5th percentile
#: (magnetic density 0.1551 μB/Å³ over 8,694 labels, band gap 6.748 eV over 9,047, bulk modulus 326.8 GPa
#: over 1,152), HHI (pymatgen production HHI from composition, 8,333 crystals) from the 0.5th percentile 929.5
#: to the 99.5th 9500.
FALLBACK_RANGES: dict[str, PropertyRange] = {
    "dft_mag_density": PropertyRange("dft_mag_density", "magnetic density", "μB/Å³", 0.0, 0.155, 0.1, 0.001, "constants (MP-20 val)"),
    "hhi_score": PropertyRange("hhi_score", "HHI", "", 930.0, 9500.0, 1250.0, 10.0, "constants (MP-20 val)"),
    "dft_bulk_modulus": PropertyRange("dft_bulk_modulus", "bulk modulus", "GPa", 0.0, 327.0, 200.0, 1.0, "constants (MP-20 val)"),
    "dft_band_gap": PropertyRange("dft_band_gap", "band gap", "eV", 0.0, 6.75, 3.0, 0.01, "constants (MP-20 val)"),
}


def property_ranges(data_dir: str | os.PathLike | None = None) -> dict[str, PropertyRange]:
    """Slider ranges of :data:`DESIGN_PROPERTIES` from MP-20 val, or :data:`FALLBACK_RANGES` without data.

    Scalar DFT properties go from 0 to their 99.5th percentile; HHI (computed from composition with
    :func:`mattergen_lab.properties.hhi_score`) from its 0.5th to its 99.5th percentile. Defaults are
    paper-style design targets (0.1 μB/Å³, HHI 1250, 200 GPa, 3 eV) clipped into the range.
    """
    from mattergen_lab.data.paths import DataNotFoundError, resolve_data_dir

    try:
        root = resolve_data_dir(data_dir)
    except DataNotFoundError:
        return dict(FALLBACK_RANGES)
    if not (root / "mp_20" / "mattergen_cache" / "val").is_dir():
        return dict(FALLBACK_RANGES)
    return dict(_ranges_from_data(str(root)))


@functools.lru_cache(maxsize=4)
def _ranges_from_data(root: str) -> tuple[tuple[str, PropertyRange], ...]:
    from mattergen_lab.data import load_mp20
    from mattergen_lab.properties.hhi import hhi_scores

    ds = load_mp20("val", data_dir=root)
    values = dict(ds.properties)
    values["hhi_score"] = hhi_scores(ds.atom_types, ds.num_atoms)
    out = []
    for name in DESIGN_PROPERTIES:
        fb = FALLBACK_RANGES[name]
        v = np.asarray(values.get(name, []), dtype=float)
        v = v[np.isfinite(v)]
        if len(v) < 10:
            out.append((name, fb))
            continue
        low = float(np.percentile(v, 0.5)) if name == "hhi_score" else 0.0
        high = float(np.percentile(v, 99.5))
        step = 10 ** math.floor(math.log10((high - low) / 200)) if high > low else fb.step
        digits = max(0, -math.floor(math.log10(step)))  # no float noise such as 0.15510000000000002
        low, high = round(math.floor(low / step) * step, digits), round(math.ceil(high / step) * step, digits)
        default = min(max(fb.default, low), high)
        src = f"MP-20 val ({len(v)} labels; {'0.5' if name == 'hhi_score' else '0'}–99.5th percentile)"
        out.append((name, dataclasses.replace(fb, low=low, high=high, default=default, step=step, source=src)))
    return tuple(out)


# ------------------------------------------------------------------------------------------ requests
def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class DesignRequest:
    """One generation request, validated on construction (``ValueError`` names the bad value).

    Attributes:
        checkpoint: registry name or checkpoint path.
        chemical_system: e.g. ``"Li-Fe-O"`` (normalised to sorted symbols) or ``None``; a hard element
            mask at every step with any checkpoint, and a condition too when the checkpoint has that adapter.
        targets: ``{property: value}`` for scalar conditions (e.g. ``{"dft_mag_density": 0.15}``).
        guidance_scale: classifier-free guidance γ (0 = unconditional).
        num_samples, num_steps, seed: how many crystals, predictor steps (``None``: the checkpoint's recommended
            count, 200 for the bundled models, 1000 for official ones), and the random seed.
        every: a trajectory frame every ``every`` steps.
        batch_size: crystals denoised together; a cancelled run keeps every finished batch.
        num_atoms: atoms per crystal, or ``None`` to draw from the checkpoint's distribution.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``..., or ``None`` for CUDA when available, else CPU.
    """

    checkpoint: str
    chemical_system: str | None = None
    targets: Mapping[str, float] = field(default_factory=dict)
    guidance_scale: float = 0.0
    num_samples: int = 8
    num_steps: int | None = None
    seed: int = 0
    every: int = 5
    batch_size: int = 4
    num_atoms: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, (str, os.PathLike)) or not str(self.checkpoint).strip():
            raise ValueError(f"checkpoint={self.checkpoint!r} must be a registry name or a path")
        object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if self.chemical_system is not None:
            cs = self.chemical_system.strip() if isinstance(self.chemical_system, str) else self.chemical_system
            object.__setattr__(self, "chemical_system", "-".join(validate_chemical_system(cs)) if cs else None)
        targets = {}
        for name, value in dict(self.targets or {}).items():
            if name in ("chemical_system", "space_group"):
                raise ValueError(f"targets: {name!r} is not a scalar target; use chemical_system= for chemistry")
            try:
                x = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"target {name}={value!r} must be a number") from None
            if not math.isfinite(x):
                raise ValueError(f"target {name}={value!r} must be finite")
            targets[str(name)] = x
        object.__setattr__(self, "targets", targets)
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            raise ValueError(f"guidance_scale={g!r} must be a number >= 0")
        object.__setattr__(self, "guidance_scale", float(g))
        for name in ("num_samples", "num_steps", "every", "batch_size"):
            v = getattr(self, name)
            if name == "num_steps" and v is None:  # the checkpoint's recommended count
                continue
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an integer >= 0")
        if self.num_atoms is not None and (not _is_int(self.num_atoms) or self.num_atoms < 1):
            raise ValueError(f"num_atoms={self.num_atoms!r} must be None or a positive integer")
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(f"device={self.device!r} is not a torch device ({exc})") from None

    def resolved_device(self) -> str:
        """The device to sample on: ``device``, or CUDA when available, else CPU."""
        import torch

        if self.device is not None:
            return str(self.device)
        return "cuda" if torch.cuda.is_available() else "cpu"

    def sampling_request(self, supported: Sequence[str]) -> SamplingRequest:
        """The library's :class:`~mattergen_lab.sampling.request.SamplingRequest` for this design request, for a
        checkpoint conditioning on ``supported``: the same seed gives the same crystals as ``sample()`` and the CLI."""
        return SamplingRequest(
            checkpoint=self.checkpoint, num_samples=self.num_samples, batch_size=self.batch_size,
            conditions=self.conditions(supported), guidance_scale=self.guidance_scale,
            elements=ChemicalSystem.parse(self.chemical_system) if self.chemical_system else None,
            num_atoms=self.num_atoms, seed=self.seed, device=self.resolved_device(),
        )

    def conditions(self, supported: Sequence[str]) -> dict[str, Any]:
        """Conditioning values for a checkpoint conditioning on ``supported``: every target, plus the
        chemical system when the checkpoint has a ``chemical_system`` adapter (otherwise it is a mask only)."""
        out: dict[str, Any] = {property_for(k, supported) or k: v for k, v in self.targets.items()}
        if self.chemical_system and "chemical_system" in supported:
            out["chemical_system"] = self.chemical_system
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = dict(self.targets)
        return d


# ------------------------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class CheckpointOption:
    """A checkpoint the chooser can offer: usable for the current targets or not, and why."""

    value: str
    label: str
    properties: tuple[str, ...]
    available: bool
    reason: str = ""
    note: str = ""


def checkpoint_properties(name_or_path: str | os.PathLike, *, registry_path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Properties a checkpoint conditions on, read from its config (no weights are loaded).

    Works for registry names, our folders (``config.json``) and official folders/``.ckpt`` files
    (``config.yaml``). Raises ``ValueError`` for something that is neither.
    """
    from mattergen_lab.checkpoints import (
        find_official_files,
        official_gemnet_config,
        registry,
    )
    from mattergen_lab.model.io import CONFIG_FILE, read_config

    path = Path(name_or_path)
    if path.exists():
        if path.is_file() and path.suffix == ".safetensors":
            path = path.parent
        if path.is_dir() and (path / CONFIG_FILE).exists():
            return tuple(read_config(path)["model"].get("condition_on_adapt") or ())
        import yaml

        _, cfg = find_official_files(path)
        return tuple(official_gemnet_config(yaml.safe_load(cfg.read_text())).condition_on_adapt)
    records = registry(registry_path)
    if str(name_or_path) not in records:
        raise ValueError(f"checkpoint {str(name_or_path)!r} is neither an existing path nor a registry name; known: {sorted(records)}")
    return records[str(name_or_path)].properties


_ONLINE: dict[str, tuple[float, bool]] = {}


def hub_reachable(max_age_s: float = 300.0) -> bool:
    """Whether Hugging Face can be reached (cached for ``max_age_s``; honours ``HF_HUB_OFFLINE``)."""
    from mattergen_lab.checkpoints import hub_reachable as probe

    now = time.monotonic()
    hit = _ONLINE.get("hub")
    if hit is None or now - hit[0] > max_age_s or os.environ.get("HF_HUB_OFFLINE"):
        _ONLINE["hub"] = (now, probe(timeout=1.5))
    return _ONLINE["hub"][1]


def _missing_targets(targets: Sequence[str], props: Sequence[str]) -> str:
    missing = [t for t in targets if property_for(t, props) is None]
    if not missing:
        return ""
    have = ", ".join(props) if props else "nothing (unconditional)"
    return "; ".join(f"{t}: not a conditioning property of this checkpoint" for t in missing) + f" (it conditions on {have})"


def checkpoint_options(
    targets: Sequence[str] = (),
    *,
    paths: Sequence[str | os.PathLike] = (),
    registry_path: str | os.PathLike | None = None,
    online: bool | None = None,
) -> list[CheckpointOption]:
    """Every registry checkpoint plus ``paths``, each marked usable for ``targets`` or not, with the reason.

    A checkpoint is unavailable when a target is not one of its conditioning properties, when its weights
    are not local and there is no internet (official ones), or when a local path cannot be read. A chemical
    system never makes a checkpoint unavailable: any checkpoint applies it as a hard element mask.

    Args:
        online: whether Hugging Face is reachable; ``None`` asks :func:`hub_reachable` (only if needed).
    """
    from mattergen_lab.checkpoints import cache_root, registry
    from mattergen_lab.model.io import WEIGHTS_FILE

    out: list[CheckpointOption] = []
    for p in paths:
        value = str(p)
        try:
            props = checkpoint_properties(value)
        except (ValueError, OSError) as exc:
            out.append(CheckpointOption(value, f"{Path(value).name} (local)", (), False, f"cannot read checkpoint: {exc}"))
            continue
        reason = _missing_targets(targets, props)
        out.append(CheckpointOption(value, f"{Path(value).name} (local)", props, not reason, reason))
    for name, rec in registry(registry_path).items():
        reason = _missing_targets(targets, rec.properties)
        note = ""
        if not reason and rec.kind == "bundled":
            if rec.path is None or not (rec.path / WEIGHTS_FILE).exists():
                reason = "bundled weights are missing from this checkout"
        elif not reason:
            folder = cache_root() / name
            if not ((folder / "checkpoints" / "last.ckpt").exists() and (folder / "config.yaml").exists()):
                if online is None:
                    online = hub_reachable()
                if not online:
                    reason = "official weights not downloaded and no internet"
                else:
                    size = f"{rec.size_bytes / 1e6:.0f} MB" if rec.size_bytes else "the weights"
                    note = f"downloads {size} on first use"
        out.append(CheckpointOption(name, name, rec.properties, not reason, reason, note))
    return out


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


@functools.lru_cache(maxsize=2)
def _cached_checkpoint(checkpoint: str, stamp: float) -> Any:
    from mattergen_lab.checkpoints import load_checkpoint

    return load_checkpoint(checkpoint)


def _load(request: DesignRequest) -> tuple[Any, SamplerInfo]:
    from mattergen_lab.sampling.api import build_sampler

    p = Path(request.checkpoint)
    stamp = max((f.stat().st_mtime for f in p.iterdir()), default=0.0) if p.is_dir() else (p.stat().st_mtime if p.exists() else 0.0)
    ckpt = _cached_checkpoint(request.checkpoint, stamp)
    return build_sampler(ckpt, num_steps=request.num_steps, guidance_scale=request.guidance_scale,
                         device=request.resolved_device())


def candidate_oracles(structure: Structure) -> dict[str, Any]:
    """Cheap oracle values: formula, chemical system, space group (spglib, symprec 0.1), HHI, density."""
    from mattergen_lab.evaluation.validity import density_plausibility
    from mattergen_lab.properties import hhi_score, space_group

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
    except ValueError:
        out["space_group"] = np.nan
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
    from mattergen_lab.sampling.api import validated_conditions

    sampler, info = _load(request)
    sreq = request.sampling_request(info.properties)
    validated_conditions(sreq.conditions, info)  # ValueError names a target this checkpoint cannot condition on
    steps = info.sampler_config.num_steps
    total = sreq.num_chunks * steps
    trajectories: list[list[CrystalSnapshot]] = []
    for item in sampler.iter_chunks(sreq, every=request.every, num_atoms=request.num_atoms or info.num_atoms):
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


# ------------------------------------------------------------------------------------------- tables
def candidate_table(candidates: Sequence[Candidate], evaluation: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per candidate: request, oracle values, and evaluation columns (by ``id``) when given.

    Columns: ``id, formula, chemical_system, in_target_system, num_atoms, space_group, hhi_score, density,
    volume_per_atom, checkpoint, guidance_scale, targets`` and :data:`EVALUATION_COLUMNS` (NaN/None when not
    evaluated). ``in_target_system`` is None without a target chemical system.
    """
    import pandas as pd

    rows = []
    for c in candidates:
        o = c.oracles or candidate_oracles(c.structure)
        target = c.request.chemical_system
        rows.append({
            "id": c.id,
            "formula": o["formula"],
            "chemical_system": o["chemical_system"],
            "in_target_system": (set(o["chemical_system"].split("-")) <= set(target.split("-"))) if target else None,
            "num_atoms": o["num_atoms"],
            "space_group": o["space_group"],
            "hhi_score": o["hhi_score"],
            "density": o["density"],
            "volume_per_atom": o["volume_per_atom"],
            "checkpoint": c.request.checkpoint,
            "guidance_scale": c.request.guidance_scale,
            "targets": ", ".join(f"{k}={v:g}" for k, v in c.request.targets.items()),
        })
    df = pd.DataFrame(rows, columns=[
        "id", "formula", "chemical_system", "in_target_system", "num_atoms", "space_group", "hhi_score", "density",
        "volume_per_atom", "checkpoint", "guidance_scale", "targets",
    ])
    ev = evaluation[[c for c in ("id", *EVALUATION_COLUMNS) if c in evaluation.columns]] if evaluation is not None and len(evaluation) else None
    if ev is not None and "id" in ev.columns:
        df = df.merge(ev.drop_duplicates("id", keep="last"), on="id", how="left")
    for col in EVALUATION_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    return df


def pareto_front(df: pd.DataFrame, x: str, y: str, maximize: tuple[bool, bool] = (False, False)) -> np.ndarray:
    """Boolean mask of the rows not dominated in ``(x, y)``; rows with a missing value are never optimal.

    Row ``i`` is dominated when some row ``j`` is at least as good in both and strictly better in one
    (better = larger where ``maximize`` is True, smaller otherwise). Ties are all kept.
    """
    for col in (x, y):
        if col not in df.columns:
            raise ValueError(f"column {col!r} is not in the table; it has {list(df.columns)}")
    pts = np.stack([
        np.asarray(df[x], dtype=float) * (-1.0 if maximize[0] else 1.0),
        np.asarray(df[y], dtype=float) * (-1.0 if maximize[1] else 1.0),
    ], axis=1)  # (n, 2), smaller is better
    ok = np.isfinite(pts).all(axis=1)
    p = pts[ok]
    le = (p[None, :, :] <= p[:, None, :]).all(-1)  # (n, n): j at least as good as i
    lt = (p[None, :, :] < p[:, None, :]).any(-1)  # j strictly better somewhere
    dominated = (le & lt).any(axis=1)
    mask = np.zeros(len(df), dtype=bool)
    mask[np.flatnonzero(ok)] = ~dominated
    return mask


# ---------------------------------------------------------------------------------------- hull data
@dataclass(frozen=True)
class HullData:
    """Plain coordinates for a hull plot (no plotting library involved).

    ``kind`` is ``"binary"`` (x = fraction of ``elements[1]``, y = formation energy, eV/atom),
    ``"ternary"`` (x, y in an equilateral triangle with ``elements`` at its corners; z = formation energy)
    or ``"list"`` (one element or 4+: x = index, y = E_hull). ``reference`` and ``candidates`` are lists of
    dicts with ``x, y, label, e_hull`` (+ ``id`` for candidates); ``lines`` are polylines of the hull.
    """

    kind: str
    elements: tuple[str, ...]
    reference: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    lines: list[tuple[list[float], list[float]]]


def _coords(kind: str, elements: Sequence[str], comp: Any) -> tuple[float, float]:
    fr = [comp.get_atomic_fraction(e) for e in elements]
    if kind == "binary":
        return float(fr[1]), 0.0
    # ternary: corners (0,0), (1,0), (0.5, sqrt(3)/2)
    return float(fr[1] + 0.5 * fr[2]), float(fr[2] * math.sqrt(3) / 2)


def hull_data(phase_diagram: PhaseDiagram, candidates: Sequence[Mapping[str, Any]]) -> HullData:
    """Plot coordinates of a phase diagram's entries and of evaluated candidates.

    ``candidates``: dicts with ``id``, ``formula`` (or ``composition``) and ``energy_above_hull`` (eV/atom).
    A candidate's formation energy is placed at hull energy + E_hull, so the plot agrees with the E_hull
    the evaluation reported whatever its energy corrections. Candidates outside the diagram's elements or
    without E_hull are left out.
    """
    from pymatgen.core import Composition

    pd_ = phase_diagram
    elements = tuple(sorted(str(e) for e in pd_.elements))
    kind = {2: "binary", 3: "ternary"}.get(len(elements), "list")
    el_refs = {str(e): entry.energy_per_atom for e, entry in pd_.el_refs.items()}

    def form_energy(comp: Any, energy_per_atom: float) -> float:
        return float(energy_per_atom - sum(comp.get_atomic_fraction(e) * el_refs[e] for e in elements))

    reference, lines = [], []
    for entry in pd_.all_entries:
        comp = entry.composition
        e_hull = float(pd_.get_e_above_hull(entry))
        x, y = _coords(kind, elements, comp) if kind != "list" else (len(reference), e_hull)
        row = {"x": x, "y": y, "label": comp.reduced_formula, "e_hull": e_hull, "stable": e_hull < 1e-8,
               "entry_id": str(getattr(entry, "entry_id", "") or ""),
               "formation_energy": form_energy(comp, entry.energy_per_atom)}
        if kind == "binary":
            row["y"] = row["formation_energy"]
        elif kind == "ternary":
            row["z"] = row["formation_energy"]
        reference.append(row)
    if kind == "binary":
        stable = sorted((r for r in reference if r["stable"]), key=lambda r: r["x"])
        lines.append(([r["x"] for r in stable], [r["y"] for r in stable]))
    elif kind == "ternary":
        for facet in pd_.facets:
            pts = [_coords(kind, elements, pd_.qhull_entries[i].composition) for i in facet]
            pts.append(pts[0])
            lines.append(([p[0] for p in pts], [p[1] for p in pts]))
    cands = []
    for c in candidates:
        e_hull = c.get("energy_above_hull")
        if e_hull is None or not np.isfinite(float(e_hull)):
            continue
        comp = Composition(c["composition"]) if "composition" in c else Composition(c["formula"])
        if not {str(e) for e in comp.elements} <= set(elements):
            continue
        hull_e = float(pd_.get_hull_energy_per_atom(comp))
        form = form_energy(comp, hull_e) + float(e_hull)
        if kind == "list":
            x, y = len(reference) + len(cands), float(e_hull)
        else:
            x, y = _coords(kind, elements, comp)
        row = {"x": x, "y": form if kind == "binary" else y, "label": comp.reduced_formula, "e_hull": float(e_hull),
               "id": str(c["id"]), "formation_energy": form}
        if kind == "ternary":
            row["z"] = form
        cands.append(row)
    return HullData(kind, elements, reference, cands, lines)


# ------------------------------------------------------------------------------------------- export
def design_report(candidates: Sequence[Candidate], *, evaluation_protocol: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report dict for :func:`export_candidates`: targets, checkpoint, guidance and evaluation protocol.

    Scalar fields hold one value when every candidate came from the same request, otherwise the list of
    distinct values; ``requests`` holds every request in full, keyed by candidate id.
    """
    def one_or_many(values: list[Any]) -> Any:
        distinct = []
        for v in values:
            if v not in distinct:
                distinct.append(v)
        return distinct[0] if len(distinct) == 1 else distinct

    reqs = [c.request for c in candidates]
    return {
        "targets": one_or_many([dict(r.targets) for r in reqs]) if reqs else {},
        "chemical_system": one_or_many([r.chemical_system for r in reqs]) if reqs else None,
        "checkpoint": one_or_many([r.checkpoint for r in reqs]) if reqs else None,
        "guidance_scale": one_or_many([r.guidance_scale for r in reqs]) if reqs else None,
        "evaluation_protocol": dict(evaluation_protocol) if evaluation_protocol else "not evaluated",
        "requests": {c.id: c.request.to_dict() for c in candidates},
    }


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "candidate"


def _symmetrized_cif(structure: Structure, symprec: float) -> tuple[str, int | None]:
    """``(CIF text, space group)`` symmetrized with spglib at ``symprec``; a comment states the tolerance."""
    from pymatgen.io.cif import CifWriter
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=EXPORT_ANGLE_TOLERANCE)
    sg = int(sga.get_space_group_number())
    text = str(CifWriter(structure, symprec=symprec, angle_tolerance=EXPORT_ANGLE_TOLERANCE))
    head = (f"# symmetrized with spglib: symprec={symprec} Å, angle_tolerance={EXPORT_ANGLE_TOLERANCE}°; "
            f"space group {sga.get_space_group_symbol()} ({sg})\n")
    return head + text, sg


def _p1_cif(structure: Structure) -> str:
    from pymatgen.io.cif import CifWriter

    return "# P1 cell exactly as generated (no symmetrization)\n" + str(CifWriter(structure))


def _poscar(structure: Structure, comment: str) -> str:
    from pymatgen.io.vasp import Poscar

    return Poscar(structure, comment=comment).get_str()


def _report_html(report: Mapping[str, Any], table: pd.DataFrame) -> str:
    esc = html.escape
    items = "".join(
        f"<tr><th>{esc(k)}</th><td><code>{esc(json.dumps(report[k], default=str))}</code></td></tr>"
        for k in ("timestamp", "checkpoint", "chemical_system", "targets", "guidance_scale", "symprec",
                  "angle_tolerance", "evaluation_protocol", "num_candidates")
        if k in report
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mattergen-lab export</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        "<h1>Candidates for synthesis review</h1>"
        f"<table>{items}</table><h2>Candidates</h2>{table.to_html(index=False, na_rep='–', escape=True)}"
        "<p>Files per candidate: <code>*_sym_symprec*.cif</code> (symmetrized), <code>*_P1.cif</code>, "
        "<code>*_POSCAR</code>. Report: <code>report.csv</code>, <code>report.json</code>.</p></body></html>"
    )


def export_candidates(
    structures: Sequence[Structure],
    table: pd.DataFrame,
    path: str | os.PathLike,
    *,
    report: Mapping[str, Any],
    symprec: float = EXPORT_SYMPREC,
) -> Path:
    """Write a zip for synthesis review; atomically (temp file beside ``path``, then ``os.replace``).

    For row ``i`` of ``table`` (needs ``id`` and ``formula``) and ``structures[i]``: ``{id}_{formula}_sym_symprec{symprec}.cif``
    (spglib-symmetrized, tolerance in the name and a comment), ``{id}_{formula}_P1.cif`` and
    ``{id}_{formula}_POSCAR``. Plus ``report.csv`` (the table with the symmetrized space group and file
    names), ``report.json`` (``report`` + ``timestamp``, ``symprec``, ``angle_tolerance``, ``num_candidates``,
    ``candidates``) and ``report.html``. A failure leaves an existing ``path`` untouched.
    """
    if len(structures) != len(table):
        raise ValueError(f"{len(structures)} structures for {len(table)} table rows")
    if not (isinstance(symprec, (int, float)) and math.isfinite(symprec) and symprec > 0):
        raise ValueError(f"{symprec=} must be a positive number (Å)")
    for col in ("id", "formula"):
        if col not in table.columns:
            raise ValueError(f"table needs an {col!r} column; it has {list(table.columns)}")
    path = Path(path)
    if path.suffix != ".zip":
        raise ValueError(f"export path {str(path)!r} must end in .zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.reset_index(drop=True).copy()
    files: list[dict[str, Any]] = []
    def write(fh: Any) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for i, structure in enumerate(structures):
                row = table.iloc[i]
                stem = _safe_name(f"{row['id']}_{row['formula']}")
                sym_name = f"{stem}_sym_symprec{symprec:g}.cif"
                try:
                    sym_text, sg = _symmetrized_cif(structure, symprec)
                except Exception as exc:  # noqa: BLE001 - spglib can fail on odd cells: keep the P1 files and say so
                    log.warning("symmetrizing %s failed: %s", stem, exc)
                    sym_text, sg, sym_name = None, None, None
                if sym_text is not None:
                    zf.writestr(sym_name, sym_text)
                zf.writestr(f"{stem}_P1.cif", _p1_cif(structure))
                zf.writestr(f"{stem}_POSCAR", _poscar(structure, f"{row['id']} {row['formula']} (mattergen-lab)"))
                files.append({"id": str(row["id"]), "formula": str(row["formula"]), "symmetrized_space_group": sg,
                              "symmetrized_cif": sym_name, "p1_cif": f"{stem}_P1.cif", "poscar": f"{stem}_POSCAR"})
            table["symmetrized_space_group"] = [f["symmetrized_space_group"] for f in files]
            table["symmetrized_cif"] = [f["symmetrized_cif"] for f in files]
            full = dict(report)
            full.update({
                "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "symprec": float(symprec),
                "angle_tolerance": EXPORT_ANGLE_TOLERANCE,
                "symmetry_tool": "spglib via pymatgen SpacegroupAnalyzer / CifWriter",
                "num_candidates": len(files),
                "candidates": files,
            })
            csv = io.StringIO()
            table.to_csv(csv, index=False)
            zf.writestr("report.csv", csv.getvalue())
            zf.writestr("report.json", json.dumps(full, indent=2, default=_json_default))
            zf.writestr("report.html", _report_html(full, table))
    atomic_write(path, write)  # a temp file beside path, then a rename: never a half-written zip
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (Path, _dt.datetime)):
        return str(obj)
    return repr(obj)
