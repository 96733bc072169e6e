"""MatterGen's predictor-corrector sampler (spec §5).

Schedule: ``timesteps = linspace(1, eps_t, N)``, ``dt = −(1 − eps_t)/(N − 1)``. At each t, with s = t + dt
(s = 0 and σ_s = 0 on the last step):

1. ``n_corrector_steps`` times: one model evaluation, then a Langevin corrector for the coordinates
   (wrapped, snr 0.4) and the lattice (snr 0.2, symmetric noise, polar re-projection);
2. one model evaluation, then ancestral predictors for coordinates, lattice and atom types (D3PM,
   x_0-prediction, element-masked logits); with ``SamplerConfig(predictor="ode")`` the coordinates and the
   lattice take a deterministic probability-flow step instead (see :mod:`~mattergen_lab.sampling.steps`).

Scores are ``model_out / std_t`` (the marginal std of the field at t, per atom for the coordinates, per
crystal for the lattice). The final crystals are the *mean* of the last predictor (no noise, argmax types).

Model evaluations all go through :meth:`PredictorCorrectorSampler.score_fn`, so guidance can wrap the model
(pass a guided callable as ``model``) or override that one method.

The chunk loop (:meth:`PredictorCorrectorSampler.iter_chunks`) reads a
:class:`~mattergen_lab.sampling.request.SamplingRequest` and nothing else; checkpoint users reach it through
:class:`~mattergen_lab.sampling.pipeline.SamplingPipeline`. ``sample`` / ``sample_to_dir`` here are the
sampler-level readers (tensors, per-crystal lists and atom-count samplers, for analytic scores in tests).

Length: this file is one class (the sampler: model evaluation, the denoising loop, the chunk loop and its two
readers); its inputs (``inputs.py``), files (``writers.py``) and request (``request.py``) live beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from mattergen_lab.constants import NUM_CLASSES
from mattergen_lab.crystal import CrystalBatch, warn_if_too_large
from mattergen_lab.model.output import ScoreOutput
from mattergen_lab.noise.joint import JointDiffusion
from mattergen_lab.sampling.composition import FixedComposition
from mattergen_lab.sampling.frames import ChunkFrame, SamplerConfig, SamplerFrame
from mattergen_lab.sampling.request import SamplingRequest, check_size, largest_cell
from mattergen_lab.sampling.inputs import (
    AllowedElements,
    ChunkInputs,
    allowed_tensor,
    broadcast_properties,
    fixed_types_tensor,
)
from mattergen_lab.sampling.start import StartFrom, check_start
from mattergen_lab.sampling.writers import SampleDirWriter, sampling_record
from mattergen_lab.symmetry.assign import nearest_assignment
from mattergen_lab.symmetry.constraint import SymmetryConstraint
from mattergen_lab.symmetry.templates import WyckoffTemplate
from mattergen_lab.sampling.steps import (
    MASK_PENALTY,
    LatticeAncestralPredictor,
    LatticeLangevinCorrector,
    LatticeODEPredictor,
    StepOutput,
    MaskedTypeAncestralPredictor,
    WrappedAncestralPredictor,
    WrappedLangevinCorrector,
    WrappedODEPredictor,
    mask_logits,
)

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

ScoreFn = Callable[[CrystalBatch, torch.Tensor], ScoreOutput]



def _symmetric(constraint: SymmetryConstraint, x: CrystalBatch, pos: StepOutput, cell: StepOutput
               ) -> tuple[StepOutput, StepOutput]:
    """A coordinate and a lattice step projected onto the batch's Wyckoff templates (the symmetric mode)."""
    sample, mean = constraint.coords(x.frac_coords, pos.sample, pos.mean)
    return StepOutput(sample=sample, mean=mean), StepOutput(sample=constraint.lattice(cell.sample),
                                                            mean=constraint.lattice(cell.mean))


class NumAtomsSampler(Protocol):
    def sample(self, k: int, *, generator: torch.Generator) -> Any: ...


def _seed_of(seed: int | None, generator: torch.Generator | None) -> int:
    """The run seed: ``seed``, or (older callers) one number drawn from ``generator``."""
    if seed is not None:
        return seed
    if generator is None:
        raise ValueError("pass seed= (an integer >= 0)")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


class PredictorCorrectorSampler:
    """Samples crystals from a score model ``model(batch, t) -> ScoreOutput``.

    Args:
        model: any callable with that contract (a :class:`~mattergen_lab.model.score_model.ScoreModel`,
            a guided wrapper, or an analytic score in tests). It is called under ``torch.no_grad()``; put
            modules in eval mode yourself.
        diffusion: the corruption processes the model was trained with.
        config: sampler settings.
        num_atoms: where atom counts are drawn from when a request gives none: a checkpoint's table (a
            ``NumAtomsDistribution``, set by ``build_sampler``) or anything with ``.sample(k, *, generator=)``;
            ``None``: the ALEX_MP_20 table.
    """

    def __init__(
        self, model: ScoreFn, diffusion: JointDiffusion | None = None, config: SamplerConfig | None = None, *,
        num_atoms: NumAtomsSampler | None = None,
    ) -> None:
        if not callable(model):
            raise ValueError(f"model={model!r} must be callable as model(batch, t) -> ScoreOutput")
        self.model = model
        self.num_atoms = num_atoms
        self.diffusion = diffusion or JointDiffusion()
        self.config = config or SamplerConfig()
        c, d = self.config, self.diffusion
        ode = c.predictor == "ode"
        self.coord_predictor = WrappedODEPredictor(d.coords) if ode else WrappedAncestralPredictor(d.coords)
        self.lattice_predictor = LatticeODEPredictor(d.lattice) if ode else LatticeAncestralPredictor(d.lattice)
        self.type_predictor = MaskedTypeAncestralPredictor(d.types)
        self.coord_corrector = WrappedLangevinCorrector(d.coords, snr=c.coord_snr, max_step_size=c.max_step_size)
        self.lattice_corrector = LatticeLangevinCorrector(d.lattice, snr=c.lattice_snr, max_step_size=c.max_step_size)

    # ------------------------------------------------------------------ model evaluation
    def score_fn(self, batch: CrystalBatch, t: torch.Tensor) -> ScoreOutput:
        """The single place the model is evaluated (no gradients). Checks the output shapes."""
        with torch.no_grad():
            out = self.model(batch, t)
        n, b = batch.atom_types.shape[0], batch.num_crystals
        expected = {"atom_logits": (n, NUM_CLASSES), "frac_coords": (n, 3), "lattice": (b, 3, 3)}
        for name, shape in expected.items():
            got = tuple(getattr(out, name).shape)
            if got != shape:
                raise ValueError(f"model output {name} has shape {got}, expected {shape}")
        return out

    def scores(self, out: ScoreOutput, batch: CrystalBatch, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network outputs (≈ −ε) to scores ``out / std_t``: coordinates ``(N, 3)``, lattice ``(B, 3, 3)``."""
        d = self.diffusion
        std_pos = d.coords.marginal_std_per_atom(t, batch.num_atoms).unsqueeze(-1)  # (N, 1)
        std_cell = d.lattice.marginal_std(t, batch.num_atoms)[:, None, None]  # (B, 1, 1)
        return out.frac_coords / std_pos, out.lattice / std_cell

    def timesteps(self) -> list[float]:
        """``linspace(1, eps_t, N)`` as Python floats."""
        return torch.linspace(1.0, self.config.resolved_eps_t, self.config.num_steps, dtype=torch.float64).tolist()

    # ------------------------------------------------------------------ the denoising loop
    def iter_steps(
        self,
        num_atoms: torch.Tensor | Sequence[int],
        *,
        generator: torch.Generator,
        every: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        allowed_elements: AllowedElements = None,
        properties: dict[str, Any] | None = None,
        atom_types: torch.Tensor | Sequence[int] | None = None,
        symmetry: Sequence[WyckoffTemplate] | SymmetryConstraint | None = None,
        symmetry_start: float = 1.0,
        symmetry_assign: str = "nearest",
        symmetry_settle: int = 0,
        start: StartFrom | None = None,
    ) -> Iterator[SamplerFrame]:
        """Denoise one batch, yielding frames as it goes (nothing is kept in memory).

        Yields the prior (step 0) and the state after every ``every``-th step (``every=0``: neither),
        then always a final frame (``final=True``) holding the denoised mean batch.

        Args:
            num_atoms: ``(B,)`` atoms per crystal.
            generator: all randomness; it must live on ``device`` (default: the generator's device).
            allowed_elements: see :data:`AllowedElements`; elements outside ``SELECTED_ATOMIC_NUMBERS``
                and MASK are never sampled.
            properties: conditioning values put on the batch the model sees: one number or string for
                every crystal, or one value per crystal.
            atom_types: CSP only (a diffusion with ``fixed_atom_types``, which requires it): ``(N,)`` atomic
                numbers, crystal after crystal; they are the types at every step and in the result (no type
                predictor runs; ``allowed_elements`` is not used).
            symmetry: the symmetric mode: one Wyckoff template per crystal (``num_atoms`` must be their
                primitive-cell counts); the prior and every step are projected so each crystal keeps its
                template exactly (:class:`~mattergen_lab.symmetry.constraint.SymmetryConstraint`).
            symmetry_start: with templates, the diffusion time from which coordinates and lattice are constrained
                (types are pooled per orbit throughout); a ``SymmetryConstraint`` carries its own.
            symmetry_assign: how the freely diffused atoms are numbered into the templates' slots when the
                constraint starts after t = 1: ``"nearest"`` (the orbit-by-orbit optimal assignment,
                :func:`~mattergen_lab.symmetry.assign.nearest_assignment`), ``"origin"`` (the same after moving each
                crystal's origin) or ``"index"`` (as numbered). Crystals started from (``start``) keep their numbering.
            symmetry_settle: corrector steps run inside the templates right after a freely diffused crystal is
                snapped onto them (:attr:`~mattergen_lab.symmetry.templates.SymmetrySpec.settle`).
            start: known crystals to start from instead of the prior (variations, inpainting, substitutions; see
                :class:`~mattergen_lab.sampling.start.StartFrom`): they are noised to its strength t0 (the first
                frame, step 0 at t = t0), then the loop steps to each time of the schedule below t0 (so it runs
                fewer steps), with their per-atom element sets, re-imposing their known sites after every step.
                ``num_atoms`` must be theirs.
        """
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"every={every!r} must be an integer >= 0")
        device = generator.device if device is None else torch.device(device)
        if device.type != generator.device.type:
            raise ValueError(f"generator lives on {generator.device} but sampling runs on {device}")
        num_atoms = torch.as_tensor(num_atoms, dtype=torch.long)
        if num_atoms.dim() != 1 or len(num_atoms) == 0 or bool((num_atoms < 1).any()):
            raise ValueError(f"num_atoms={num_atoms.tolist()!r} must be a non-empty list of positive counts")
        warn_if_too_large(num_atoms)
        b = len(num_atoms)
        allowed = allowed_tensor(allowed_elements, b, device)  # (101,) or (B, 101)
        csp = self.diffusion.config.fixed_atom_types
        if csp != (atom_types is not None):
            raise ValueError(
                "a CSP model (diffusion.fixed_atom_types) samples only given compositions: pass atom_types / a composition"
                if csp else
                "atom_types (a composition) needs a CSP model, trained with the atom types given "
                "(config.json diffusion.fixed_atom_types: true, e.g. mgl_mp20_small_csp); this one generates its own types"
            )
        fixed = fixed_types_tensor(atom_types, num_atoms, device) if csp else None
        constraint = None
        if symmetry is not None:
            constraint = symmetry if isinstance(symmetry, SymmetryConstraint) else SymmetryConstraint(
                symmetry, device=device, start=symmetry_start, assign=symmetry_assign, settle=symmetry_settle)
            if constraint.num_atoms.tolist() != num_atoms.tolist():
                raise ValueError(f"num_atoms={num_atoms.tolist()} but the templates {[str(t) for t in constraint.templates]} hold "
                                 f"{constraint.num_atoms.tolist()} atoms")
            if fixed is not None and not torch.equal(constraint.share_types(fixed), fixed):
                raise ValueError("atom_types must give every atom of a Wyckoff orbit the same element")
        if start is not None:
            start, allowed = check_start(start, num_atoms, fixed, constraint, allowed, device, dtype)
        # Validation above runs eagerly; the loop below runs as the caller iterates.
        return self._denoise(num_atoms, generator=generator, every=every, dtype=dtype, device=device,
                             allowed=allowed, properties=properties, fixed_types=fixed, constraint=constraint,
                             start=start)

    def _denoise(
        self,
        num_atoms: torch.Tensor,
        *,
        generator: torch.Generator,
        every: int,
        dtype: torch.dtype,
        device: torch.device,
        allowed: torch.Tensor,
        properties: dict[str, Any] | None,
        fixed_types: torch.Tensor | None = None,
        constraint: SymmetryConstraint | None = None,
        start: StartFrom | None = None,
    ) -> Iterator[SamplerFrame]:
        b = len(num_atoms)
        properties = broadcast_properties(properties, b, dtype=dtype, device=device)
        x = self.diffusion.prior(num_atoms, generator=generator, dtype=dtype, device=device, properties=properties)
        if fixed_types is not None:  # CSP: the given types replace the all-MASK prior and never change
            x = x.replace(atom_types=fixed_types)
        active = constraint is not None and constraint.start >= 1.0
        if active:  # the prior restricted to the templates (sites uniform, lattice projected)
            x = x.replace(frac_coords=constraint.init_coords(generator, dtype), lattice=constraint.lattice(x.lattice))
        batch_idx = x.batch_idx  # (N,)
        num_atoms = x.num_atoms
        ts = self.timesteps()
        n = len(ts)
        dt = (ts[-1] - 1.0) / (n - 1) if n > 1 else -1.0
        if start is not None:  # SDEdit: from the noised crystals at t0, then the grid's times below t0
            ts = start.timesteps(ts)
            n = len(ts)
            inside = constraint is not None and ts[0] <= constraint.start  # noised inside the templates
            x = start.initial(x, ts[0], allowed, self.diffusion, generator=generator,
                              constraint=constraint if inside else None)
            active = False  # the first step at or below the constraint's start snaps (sets the representatives)
        if every:
            yield SamplerFrame(step=0, t=ts[0], batch=x, mean=None)
        mean = x
        settle = 0 if constraint is None else constraint.settle  # extra corrector steps right after a snap
        for i, t_now in enumerate(ts):
            last = i == n - 1
            s_now = 0.0 if last else ts[i + 1]
            snapped = False
            if constraint is not None and not active and t_now <= constraint.start:  # the constraint starts here
                snapped = start is None and i > 0  # a freely diffused crystal is snapped (not a prior, not a parent)
                if constraint.assign != "index" and snapped:  # atoms numbered into the slots
                    # within one type: the types were pooled per orbit as numbered, so each orbit keeps one type
                    frac = x.frac_coords
                    if constraint.assign == "origin":  # and each crystal's origin moved to fit its template
                        perm, shift = nearest_assignment(constraint, frac, x.lattice, types=x.atom_types, origin=True)
                        frac = torch.remainder(frac + shift[batch_idx], 1.0)
                    else:
                        perm = nearest_assignment(constraint, frac, x.lattice, types=x.atom_types)
                    x = x.replace(atom_types=x.atom_types[perm], frac_coords=frac[perm])
                x = x.replace(frac_coords=constraint.snap(x.frac_coords).to(dtype), lattice=constraint.lattice(x.lattice),
                              atom_types=constraint.share_types(x.atom_types))
                active = True
            t = torch.full((b,), t_now, dtype=dtype, device=device)  # (B,)
            s = torch.full((b,), s_now, dtype=dtype, device=device)

            # Every predictor and corrector takes (x, score, **common): one step contract for all five.
            common = {"t": t, "s": s, "dt": dt, "num_atoms": num_atoms, "last": last, "generator": generator}
            for _ in range(self.config.n_corrector_steps + (settle if snapped else 0)):
                out = self.score_fn(x, t)
                score_pos, score_cell = self.scores(out, x, t)
                pos = self.coord_corrector.step(x.frac_coords, score_pos, **common)
                cell = self.lattice_corrector.step(x.lattice, score_cell, **common)
                if active:
                    pos, cell = _symmetric(constraint, x, pos, cell)
                x = x.replace(frac_coords=pos.sample, lattice=cell.sample)

            out = self.score_fn(x, t)
            score_pos, score_cell = self.scores(out, x, t)
            pos = self.coord_predictor.step(x.frac_coords, score_pos, **common)
            cell = self.lattice_predictor.step(x.lattice, score_cell, **common)
            if active:
                pos, cell = _symmetric(constraint, x, pos, cell)
            if fixed_types is None:
                logits = mask_logits(out.atom_logits, allowed, batch_idx=batch_idx)
                if constraint is not None:  # one type per orbit (element class); a pattern's classes distinct
                    logits = constraint.pool_logits(logits)
                    taken = constraint.taken(x.atom_types, logits.shape[1])
                    if taken is not None:
                        logits = logits + torch.where(taken, MASK_PENALTY, 0.0).to(logits.dtype)
                types = self.type_predictor.step(x.atom_types, logits, **common)
                type_sample, type_mean = types.sample, types.mean
                if constraint is not None:
                    type_sample = constraint.distinct_types(constraint.share_types(type_sample), x.atom_types, logits,
                                                            last=last)
                    type_mean = constraint.distinct_types(constraint.share_types(type_mean), x.atom_types, logits,
                                                          last=True)
            else:
                type_sample = type_mean = fixed_types
            x = x.replace(frac_coords=pos.sample, lattice=cell.sample, atom_types=type_sample)
            mean = x.replace(frac_coords=pos.mean, lattice=cell.mean, atom_types=type_mean)
            if start is not None:  # RePaint: the known sites from the forward process at s
                x, mean = start.impose(x, mean, s_now, last=last, diffusion=self.diffusion, generator=generator)
            if every and (i + 1) % every == 0:
                yield SamplerFrame(step=i + 1, t=s_now, batch=x, mean=mean)
        yield SamplerFrame(step=n, t=0.0, batch=mean, mean=None, final=True)

    # ------------------------------------------------------------------ many crystals
    def sample(
        self,
        num_samples: int,
        *,
        batch_size: int = 64,
        num_atoms: int | Sequence[int] | NumAtomsSampler | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        allowed_elements: AllowedElements = None,
        properties: Mapping[str, Any] | None = None,
        progress: bool = False,
        on_batch: Callable[[int], None] | None = None,
        composition: FixedComposition | str | None = None,
        formula_units: int = 1,
    ) -> list["Structure"]:
        """Sample ``num_samples`` crystals, ``batch_size`` at a time, as pymatgen structures.

        It reads :meth:`iter_chunks`: crystal ``i`` belongs to chunk ``i // batch_size``, seeded by
        :func:`~mattergen_lab.sampling.request.chunk_seed` of ``seed``, so the same seed gives the same crystals as
        :meth:`sample_to_dir`, the CLI and the design app, and a resumed run reproduces an uninterrupted one.
        (``generator=`` is still accepted: the run seed is then one number drawn from it.)

        Args:
            num_atoms: an int for every crystal, one int per crystal, an object with
                ``.sample(k, *, generator) -> (k,) ints`` (e.g. a ``NumAtomsDistribution``), or ``None``
                for the ALEX_MP_20 table.
            allowed_elements: see :data:`AllowedElements`; a per-crystal list must have ``num_samples`` entries.
            properties: scalar conditioning values applied to every crystal (float or str).
            progress: show a tqdm bar over the steps of each chunk.
            on_batch: called with the number of crystals finished after each chunk.
            composition, formula_units: CSP (a CSP model only): every crystal has exactly these atoms, fixed at
                every step (see :class:`~mattergen_lab.sampling.request.SamplingRequest`).
        """
        request = self._request(num_samples, batch_size, seed, generator, device, composition, formula_units, num_atoms)
        inputs = self._inputs(request, num_atoms, allowed_elements, properties)
        out: list[Structure] = []
        for item in self._chunks(request, inputs, dtype=dtype, progress=progress):
            if item.frame.final:
                structures = item.frame.batch.to_structures(standard_orientation=True)
                out += structures
                if on_batch is not None:
                    on_batch(len(structures))
        return out

    def sample_to_dir(
        self,
        out_dir: str | os.PathLike,
        num_samples: int,
        *,
        batch_size: int = 64,
        num_atoms: int | Sequence[int] | NumAtomsSampler | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        allowed_elements: AllowedElements = None,
        properties: Mapping[str, Any] | None = None,
        progress: bool = False,
        on_batch: Callable[[int], None] | None = None,
        settings: Mapping[str, Any] | None = None,
        composition: FixedComposition | str | None = None,
        formula_units: int = 1,
    ) -> list[Path]:
        """Sample into ``out_dir`` as it goes; resumable. Returns the CIF path of every index.

        ``settings`` (e.g. the checkpoint and guidance, which this sampler does not know) join the seed, batch
        size, sampler settings, atom counts, mask and conditions in ``out_dir/sampling.json``; a restart with
        different ones is refused (see :mod:`~mattergen_lab.sampling.writers`).

        The files are written by :class:`~mattergen_lab.sampling.writers.SampleDirWriter`:
        ``out_dir/cifs/gen_{i}.cif`` (each written atomically as soon as its chunk is done),
        ``out_dir/generated_crystals.extxyz`` (one frame per crystal, ``info["gen_index"] = i``, appended
        after each chunk) and, when ``config.record_every > 0``, ``out_dir/trajectories/gen_{i}.extxyz``.

        On restart, indices whose CIF exists are skipped (a chunk with missing indices is re-sampled with
        the same seed and only the missing ones are written); the extxyz is first repaired from the CIFs
        if an earlier run stopped while appending to it.
        """
        request = self._request(num_samples, batch_size, seed, generator, device, composition, formula_units, num_atoms)  # validated before any file is made
        inputs = self._inputs(request, num_atoms, allowed_elements, properties)
        record = sampling_record(self.config, request, dtype=dtype, num_atoms=num_atoms, allowed_elements=allowed_elements,
                                 properties=properties, settings=settings)
        with SampleDirWriter(out_dir, num_samples, record_every=self.config.record_every, settings=record) as writer:
            for item in self._chunks(request, inputs, dtype=dtype, progress=progress, skip=writer.skip,
                                     every=writer.record_every):
                written = writer.on_frame(list(item.indices), item.frame)
                if item.frame.final and on_batch is not None:
                    on_batch(written)
        return writer.paths

    def _request(self, num_samples: Any, batch_size: Any, seed: int | None, generator: torch.Generator | None,
                 device: torch.device | str | None, composition: Any = None, formula_units: Any = 1,
                 num_atoms: Any = None) -> SamplingRequest:
        dev = str(device) if device is not None else None
        request = SamplingRequest(num_samples=num_samples, batch_size=batch_size, seed=_seed_of(seed, generator), device=dev,
                                  composition=composition, formula_units=formula_units)
        if request.composition is None:  # the atom counts come separately: bound them before anything is allocated
            check_size(request.num_samples, request.batch_size, largest_cell(num_atoms))
        return request

    def _inputs(self, request: SamplingRequest, num_atoms: Any, allowed_elements: AllowedElements,
                properties: Mapping[str, Any] | None) -> ChunkInputs:
        """The sampler-level arguments of ``sample`` / ``sample_to_dir`` as the chunk loop's inputs. With a composition
        (CSP) the atom count is the composition's: a distribution is not drawn from, and an explicit count must equal it."""
        comp = request.composition
        if comp is not None and num_atoms is not None and not hasattr(num_atoms, "sample"):
            dataclasses.replace(request, num_atoms=num_atoms)  # ValueError when it conflicts with the composition
        return ChunkInputs.build(
            request.num_samples, num_atoms=num_atoms if num_atoms is not None else self.num_atoms,
            allowed_elements=allowed_elements, properties=properties,
            composition_of=request.composition_of if comp is not None else None,
        )

    def iter_chunks(
        self,
        request: SamplingRequest,
        *,
        every: int = 0,
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
        skip: set[int] | None = None,
    ) -> Iterator[ChunkFrame]:
        """The one chunked, seeded sampling loop: frames of every chunk of ``request``, chunk after chunk.

        Chunk ``j`` (samples ``j·batch_size …``) draws its atom counts on the CPU and its noise on the sampling
        device from generators seeded with ``chunk_seed(request.seed, j)``. Each chunk yields the frames of
        :meth:`iter_steps` (every ``every`` steps; ``every=0``: only the final frame). Chunks whose samples are
        all in ``skip`` are not run (resuming).

        Everything comes from ``request`` (:meth:`ChunkInputs.from_request
        <mattergen_lab.sampling.inputs.ChunkInputs.from_request>`): samples, batch size, seed, device (``None``: the
        model's), atom counts (``None``: this sampler's ``num_atoms`` table), the element mask, the conditions as
        given (a :class:`~mattergen_lab.sampling.pipeline.SamplingPipeline` hands it a request whose conditions are
        checked against the checkpoint) and the compositions (CSP). ``request.num_steps`` must be ``None`` or this
        sampler's step count, and ``request.sampler`` empty or this sampler's :meth:`SamplerConfig.variant`.
        """
        if request.num_steps is not None and request.num_steps != self.config.num_steps:
            raise ValueError(f"request.num_steps={request.num_steps} but this sampler runs {self.config.num_steps} steps")
        if request.sampler and request.sampler != self.config.variant():
            raise ValueError(f"request.sampler={request.sampler} but this sampler runs {self.config.variant() or 'the defaults'}; "
                             "build it with load_sampler(..., sampler_settings=request.sampler)")
        yield from self._chunks(request, ChunkInputs.from_request(request, self.num_atoms), every=every, dtype=dtype,
                                progress=progress, skip=skip)

    def _chunks(self, request: SamplingRequest, inputs: ChunkInputs, *, every: int = 0,
                dtype: torch.dtype = torch.float32, progress: bool = False,
                skip: set[int] | None = None) -> Iterator[ChunkFrame]:
        """The loop of :meth:`iter_chunks`, over ``request``'s chunks with ``inputs`` (for ``sample`` too)."""
        device = torch.device(request.device) if request.device is not None else self._model_device()
        skip = skip or set()
        for j, indices, seed in request.chunks():
            if all(i in skip for i in indices):
                continue
            frames = self.iter_steps(  # iter_steps broadcasts the properties to the chunk
                generator=torch.Generator(device=device).manual_seed(seed), every=every, dtype=dtype, device=device,
                **inputs.for_chunk(indices, seed),
            )
            if progress:
                from tqdm.auto import tqdm

                frames = tqdm(frames, total=self.config.num_steps // max(every, 1) + 2, desc=f"chunk {j}", leave=False)
            for frame in frames:
                yield ChunkFrame(j, indices, frame)

    def _model_device(self) -> torch.device:
        """The device of the model's first parameter, looking through wrappers (``.model``, e.g. guidance)."""
        model: Any = self.model
        for _ in range(4):
            params = getattr(model, "parameters", None)
            if callable(params):
                for p in params():
                    return p.device
            model = getattr(model, "model", None)
            if model is None:
                break
        return torch.device("cpu")
