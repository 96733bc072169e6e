"""``SamplingPipeline``: a checkpoint loaded once, then called with :class:`SamplingRequest`\\ s (diffusers' shape)::

    from mattergen_lab import SamplingPipeline, SamplingRequest

    request = SamplingRequest(checkpoint="mgl_mp20_small", num_samples=4, batch_size=4, num_steps=20, seed=0)
    pipe = SamplingPipeline.for_request(request)   # loaded once, then cached (clear_caches() drops it)
    crystals = pipe(request)                       # pymatgen Structures, crystal i from chunk i // batch_size
    for item in pipe.frames(request, every=5): ... # ChunkFrames while it denoises, for live views
    pipe.to_dir(request, "out")                    # cifs/, generated_crystals.extxyz, sampling.json; resumable

This is the only code that assembles "checkpoint → sampler → request checked against the checkpoint → chunk loop":
:func:`~mattergen_lab.sampling.api.sample` and ``sample_to_dir``, the CLI, design runs, campaign tasks and the
benchmarks all call it, so a seed gives the same crystals from each of them.

A pipeline is one sampler: the checkpoint (its identity: name or path and the files' modification time), the device,
the step count, the sampler variant and the guidance factor γ. :meth:`SamplingPipeline.for_request` and
:meth:`~SamplingPipeline.from_checkpoint` keep one per such key in a module registry (and one loaded checkpoint per
name and device, shared by pipelines of different γ or steps); ``mattergen_lab.clear_caches()`` empties both.
A request is checked once per call (:meth:`SamplingPipeline.check`): its settings must be the pipeline's, its
conditions ones the checkpoint conditions on (values parsed: ``"2.0"`` → 2.0), and a composition goes with a
crystal-structure-prediction (CSP) checkpoint only, as a CSP checkpoint needs one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from mattergen_lab.caches import register_cache
from mattergen_lab.checkpoints import load_checkpoint
from mattergen_lab.model.io import Checkpoint
from mattergen_lab.sampling.build import SamplerInfo, build_sampler, validated_conditions, weights_identity
from mattergen_lab.sampling.frames import ChunkFrame, SamplerFrame, sampler_variant
from mattergen_lab.sampling.request import SamplingRequest, validate_device
from mattergen_lab.sampling.sampler import PredictorCorrectorSampler
from mattergen_lab.sampling.writers import SampleDirWriter, sampling_record
from mattergen_lab.threads import fit_threads

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

#: Pipelines kept at once (each holds a sampler over a shared, cached model; a few MB for the bundled ones).
MAX_PIPELINES = 8


class SampleWriter(Protocol):
    """What :meth:`SamplingPipeline.to_dir` hands frames to (as torch-sim hands states to its reporter);
    :class:`~mattergen_lab.sampling.writers.SampleDirWriter` is the library's."""

    skip: set[int]  # sample indices already written (their chunks are not run again)
    record_every: int  # trajectory frames every so many steps (0: final frames only)
    paths: list[Path]  # one per sample index

    def on_frame(self, indices: list[int], frame: SamplerFrame) -> int: ...


def checkpoint_identity(checkpoint: str | os.PathLike) -> tuple[str, float]:
    """``(name or path, stamp)``: the stamp is the newest modification time of a checkpoint folder's files (or of the
    file), so a retrained folder is loaded again; 0 for a registry name."""
    p = Path(checkpoint)
    if p.is_dir():
        return str(checkpoint), max((f.stat().st_mtime for f in p.iterdir()), default=0.0)
    return str(checkpoint), p.stat().st_mtime if p.exists() else 0.0


@functools.lru_cache(maxsize=2)
def cached_checkpoint(checkpoint: str, stamp: float, device: str = "cpu") -> Checkpoint:
    """:func:`~mattergen_lab.checkpoints.load_checkpoint`, once per (checkpoint, stamp, device): the model moved to
    ``device`` and in eval mode, shared by every pipeline over it (pipelines never change its weights)."""
    ckpt = load_checkpoint(checkpoint)
    ckpt.model.to(device).eval()
    return ckpt


_PIPELINES: OrderedDict[tuple[Any, ...], SamplingPipeline] = OrderedDict()
_LOCK = threading.RLock()  # the app samples off its UI thread


def _clear() -> bool:
    with _LOCK:
        held = bool(_PIPELINES) or cached_checkpoint.cache_info().currsize > 0
        _PIPELINES.clear()
        cached_checkpoint.cache_clear()
    return held


register_cache(__name__, _clear, functions=(cached_checkpoint,))


class SamplingPipeline:
    """A sampler over one checkpoint, called with requests (see the module docstring).

    Attributes:
        sampler: the :class:`~mattergen_lab.sampling.sampler.PredictorCorrectorSampler` (model, steps, variant, γ).
        info: what it was built from (:class:`~mattergen_lab.sampling.build.SamplerInfo`).
        checkpoint: the name or path it was loaded from (for run records).
        device: where it samples (``"cpu"``, ``"cuda:0"``...).
    """

    def __init__(self, sampler: PredictorCorrectorSampler, info: SamplerInfo, *, checkpoint: str = "",
                 device: str = "cpu") -> None:
        self.sampler, self.info = sampler, info
        self.checkpoint = checkpoint or info.checkpoint
        self.device = validate_device(device)

    # ------------------------------------------------------------------ construction (cached)
    @classmethod
    def for_request(cls, request: SamplingRequest) -> SamplingPipeline:
        """The cached pipeline for ``request``'s checkpoint, device (``None``: CPU), step count, sampler variant and γ."""
        if not isinstance(request, SamplingRequest):
            raise ValueError(f"request={request!r:.80} must be a SamplingRequest")
        if not request.checkpoint:
            raise ValueError("request.checkpoint is empty: name a registry checkpoint or a checkpoint folder")
        return cls.from_checkpoint(request.checkpoint, num_steps=request.num_steps, device=request.device or "cpu",
                                   guidance_scale=request.guidance_scale, sampler_settings=request.sampler)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | Checkpoint, *, num_steps: int | None = None,
                        device: torch.device | str = "cpu", guidance_scale: float = 0.0,
                        sampler_settings: Mapping[str, Any] | None = None) -> SamplingPipeline:
        """A pipeline over ``checkpoint``: a registry name or path (cached, see the module docstring), or a loaded
        :class:`~mattergen_lab.model.io.Checkpoint` (built each call: its holder keeps it). ``num_steps=None``: the
        checkpoint's recommended count; ``sampler_settings``: a variant such as ``{"n_corrector_steps": 0}``."""
        device = validate_device(device)
        gamma = guidance_scale  # build_sampler checks it (check_guidance_scale) before anything is cached
        variant = sampler_variant(sampler_settings)
        if isinstance(checkpoint, Checkpoint):
            sampler, info = build_sampler(checkpoint, num_steps=num_steps, guidance_scale=gamma, device=device,
                                          sampler_settings=variant)
            return cls(sampler, info, device=device)
        identity = checkpoint_identity(checkpoint)
        key = (identity, device, num_steps, tuple(variant.items()), gamma)
        with _LOCK:  # held while loading: two threads asking for one checkpoint load it once
            pipe = _PIPELINES.get(key)
            if pipe is None:
                ckpt = cached_checkpoint(identity[0], identity[1], device)
                sampler, info = build_sampler(ckpt, num_steps=num_steps, guidance_scale=gamma, device=device,
                                              sampler_settings=variant)
                pipe = _PIPELINES[key] = cls(sampler, info, checkpoint=identity[0], device=device)
                while len(_PIPELINES) > MAX_PIPELINES:
                    _PIPELINES.popitem(last=False)
            _PIPELINES.move_to_end(key)
            return pipe

    # ------------------------------------------------------------------ what it is
    @property
    def properties(self) -> tuple[str, ...]:
        """The conditions the checkpoint takes (``()``: an unconditional model)."""
        return self.info.properties

    @property
    def num_steps(self) -> int:
        return self.sampler.config.num_steps

    @property
    def guidance_scale(self) -> float:
        return self.info.guidance_scale

    def __repr__(self) -> str:
        return (f"SamplingPipeline(checkpoint={self.checkpoint!r}, device={self.device!r}, num_steps={self.num_steps}, "
                f"sampler={self.sampler.config.variant()}, guidance_scale={self.guidance_scale}, properties={self.properties})")

    # ------------------------------------------------------------------ the one check
    def check(self, request: SamplingRequest) -> SamplingRequest:
        """``request`` checked against this pipeline's checkpoint, as the chunk loop reads it (``ValueError`` names
        what does not fit): its conditions parsed (:func:`~mattergen_lab.sampling.build.validated_conditions`) and its
        device this pipeline's."""
        if not isinstance(request, SamplingRequest):
            raise ValueError(f"request={request!r:.80} must be a SamplingRequest")
        mine = {"num_steps": self.num_steps, "guidance_scale": self.guidance_scale}
        for name, value in mine.items():
            asked = getattr(request, name)
            if asked is not None and asked != value:
                raise ValueError(f"request.{name}={asked!r} but this pipeline runs {name}={value!r}; "
                                 "use SamplingPipeline.for_request(request)")
        if request.sampler and request.sampler != self.sampler.config.variant():
            raise ValueError(f"request.sampler={request.sampler} but this pipeline runs "
                             f"{self.sampler.config.variant() or 'the official sampler'}; use SamplingPipeline.for_request(request)")
        if request.device is not None and not _same_device(request.device, self.device):
            raise ValueError(f"request.device={request.device!r} but this pipeline samples on {self.device!r}")
        conditions = validated_conditions(request.conditions, self.info, symmetric=request.symmetry is not None) or {}
        name = self.info.checkpoint or self.checkpoint or "this checkpoint"
        if request.fixes_atoms and not self.info.csp:
            formula = request.composition_of(0).formula  # type: ignore[union-attr]
            raise ValueError(
                f"composition={formula!r} needs a crystal-structure-prediction checkpoint (one trained with the atom "
                f"types given, e.g. mgl_mp20_small_csp); {name} generates its own atom types"
            )
        if self.info.csp and request.parent is not None:
            raise ValueError(f"{name} is a crystal-structure-prediction (CSP) model; starting from a parent "
                             f"({request.parent.name}) needs one that generates atom types, e.g. mgl_mp20_small")
        if self.info.csp and not request.fixes_atoms:
            raise ValueError(f"{name} is a crystal-structure-prediction (CSP) model: it samples structures for a given "
                             "composition only; pass composition= (CLI: --composition Li2MnO3)")
        symmetry = request.symmetry
        if symmetry is not None and symmetry.start is None:  # the checkpoint's recommendation, recorded as such
            start = self.info.symmetry_start
            symmetry = dataclasses.replace(symmetry, start=symmetry.effective_start if start is None else start)
        return dataclasses.replace(request, conditions=conditions, device=self.device, symmetry=symmetry,
                                   checkpoint=request.checkpoint or self.checkpoint)

    # ------------------------------------------------------------------ the three readers of the loop
    def __call__(self, request: SamplingRequest, *, progress: bool = False,
                 on_batch: Callable[[int], None] | None = None) -> list[Structure]:
        """The crystals of ``request`` as pymatgen structures, in sample order; ``on_batch(n)`` after each chunk."""
        out: list[Structure] = []
        checked = self.fit_threads(self.check(request))
        for item in self.sampler.iter_chunks(checked, progress=progress):
            if item.frame.final:
                structures = item.frame.batch.to_structures(standard_orientation=True)
                out += structures
                if on_batch is not None:
                    on_batch(len(structures))
        return out

    def frames(self, request: SamplingRequest, *, every: int = 1, skip: set[int] | None = None,
               progress: bool = False) -> Iterator[ChunkFrame]:
        """The frames of every chunk as it denoises (the prior, every ``every``-th step, the final frame; ``every=0``:
        final frames only); chunks whose samples are all in ``skip`` are not run. The request is checked now."""
        checked = self.fit_threads(self.check(request))
        return self.sampler.iter_chunks(checked, every=every, skip=skip, progress=progress)

    def to_dir(self, request: SamplingRequest, out_dir: str | os.PathLike | None = None,
               writer: SampleWriter | None = None, *, on_batch: Callable[[int], None] | None = None,
               progress: bool = False) -> list[Path]:
        """Sample into ``out_dir`` as it goes, resumable (:class:`~mattergen_lab.sampling.writers.SampleDirWriter`:
        ``cifs/gen_{i}.cif``, ``generated_crystals.extxyz``, ``sampling.json``); returns every index's CIF path.

        ``writer``: hand in your own (anything with :class:`SampleWriter`'s members, e.g. a ``SampleDirWriter`` with
        trajectories: ``with SampleDirWriter(out, n, record_every=10, settings=pipe.run_settings(request)) as w``); then
        ``out_dir`` may be left out. A folder that holds crystals of other settings is refused before anything runs."""
        checked = self.fit_threads(self.check(request))
        if writer is None:
            if out_dir is None:
                raise ValueError("to_dir needs out_dir (a folder) or writer")
            with SampleDirWriter(out_dir, checked.num_samples, record_every=self.sampler.config.record_every,
                                 settings=self._record(checked)) as own:  # holds the folder's lock until done
                return self._write(checked, own, on_batch, progress)
        if out_dir is not None and Path(getattr(writer, "out", out_dir)) != Path(out_dir):
            raise ValueError(f"out_dir={str(out_dir)!r} but the writer writes to {str(getattr(writer, 'out'))!r}; pass one")
        return self._write(checked, writer, on_batch, progress)  # a handed-in writer is closed by its owner

    def _write(self, checked: SamplingRequest, writer: SampleWriter, on_batch: Callable[[int], None] | None,
               progress: bool) -> list[Path]:
        if len(writer.paths) < checked.num_samples:
            raise ValueError(f"the writer has {len(writer.paths)} paths for num_samples={checked.num_samples}")
        for item in self.sampler.iter_chunks(checked, every=writer.record_every, skip=writer.skip, progress=progress):
            written = writer.on_frame(list(item.indices), item.frame)
            if item.frame.final and on_batch is not None:
                on_batch(written)
        return list(writer.paths)[: checked.num_samples]

    def fit_threads(self, checked: SamplingRequest) -> SamplingRequest:
        """Torch's thread count for this request's chunks, on the CPU and unless the user chose
        (:func:`~mattergen_lab.threads.fit_threads`; a guided batch runs doubled); returns ``checked``."""
        if torch.device(self.device).type == "cpu":
            doubled = self.guidance_scale not in (0.0, 1.0)
            fit_threads(min(checked.batch_size, checked.num_samples) * (2 if doubled else 1))
        return checked

    def run_settings(self, request: SamplingRequest) -> dict[str, Any]:
        """What ``sampling.json`` records of ``request`` on this pipeline (a folder refuses crystals of others)."""
        return self._record(self.check(request))

    def _record(self, checked: SamplingRequest) -> dict[str, Any]:
        mask = checked.mask
        settings = {"checkpoint": checked.checkpoint, "weights": weights_identity(self.info.checkpoint),
                    "guidance_scale": self.guidance_scale, "device_type": torch.device(self.device).type}
        return sampling_record(
            self.sampler.config, checked, dtype=torch.float32,
            num_atoms=checked.num_atoms if checked.num_atoms is not None else self.info.num_atoms,
            allowed_elements=list(mask.symbols) if mask is not None else None,
            properties=checked.conditions or None, settings=settings,
        )


def _same_device(a: str, b: str) -> bool:
    da, db = torch.device(a), torch.device(b)
    return da.type == db.type and (da.index is None or db.index is None or da.index == db.index)
