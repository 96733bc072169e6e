"""Starting the denoising loop from known crystals instead of the prior: variations, inpainting, substitutions.

:class:`StartFrom` is what :meth:`~mattergen_lab.sampling.sampler.PredictorCorrectorSampler.iter_steps` takes as
``start=``. It changes the loop in three places and nowhere else:

1. **Where it starts** (SDEdit, Meng et al. 2022, "SDEdit: guided image synthesis and editing with stochastic
   differential equations"): the known crystals are noised with the model's own forward processes to the start
   time t₀ (``strength``) and the sampler steps from t₀ to each time of its own grid ``linspace(1, eps_t, N)`` below
   t₀, then to 0 (:meth:`StartFrom.timesteps`): the steps of sampling from scratch that lie below t₀, the first one
   shorter when t₀ falls between two grid times (t₀ = 0.3 of 200 steps runs 60 steps; a t₀ below eps_t runs one
   step, from t₀ to 0). At t₀ the coordinates are ``wrap(f₀ + σ(t₀) n^{-1/3} ε)`` (wrapped VE), the lattice ``α L₀ + (1 − α) μ + std ε_sym``
   (VP) and each atom type is masked with the D3PM probability of step ``τ(t₀) + 1`` (kept with ``1 − (τ+1)/1000``):
   :meth:`~mattergen_lab.noise.joint.JointDiffusion.corrupt`, the training corruption. At t₀ = 1 this is the prior
   up to α(1) ≈ 0.007 of the parent's lattice: sampling from scratch.
2. **Which elements each atom may become** (guided substitution): ``allowed`` is one row of 101 classes per atom,
   narrowing the run's element mask; ``keep_own`` atoms may also be their own element whatever the mask (a parent's
   Pa, outside the 76 elements the model generates from scratch, stays Pa). An atom whose own element is not allowed
   at its site (a substituted site, or an element outside an explicit element mask) starts masked, so the type
   predictor re-samples it among the allowed ones; an atom allowed only its own element gets it back whenever the
   forward process masked it.
3. **Known values re-imposed after every step** (RePaint, Lugmayr et al. 2022, "RePaint: inpainting using
   denoising diffusion probabilistic models"): the types and fractional coordinates of ``known_sites`` (and the
   lattice with ``known_lattice``) are replaced after every predictor step to time s by a fresh draw of the forward
   process of the known values at s, so the model always sees them at the noise level of the rest of the crystal.
   The step's noise-free ``mean`` holds the known values exactly, and so does the final crystal (σ_s = 0 on the
   last step). (RePaint's resampling jumps, re-noising x_{t-1} back to x_t several times, are not done.)

In the symmetric mode the crystals to start from must already be exactly symmetric, atoms orbit after orbit in their
templates (a parent symmetrized by :func:`~mattergen_lab.symmetry.dataset.symmetrize`): where the constraint holds
at t₀ they are noised inside their templates, otherwise as usual and snapped when the constraint starts, as in the
hybrid training of :mod:`~mattergen_lab.symmetry.noising`. Fixed sites do not combine with it yet.

Plain data: build one per chunk with :meth:`repeat` (the same parent ``k`` times) and move it with :meth:`to`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mattergen_lab.constants import MASK_CLASS, MASK_Z, NUM_CLASSES
from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.noise.joint import JointDiffusion
from mattergen_lab.symmetry.constraint import SymmetryConstraint
from mattergen_lab.symmetry.noising import constrained_corrupt


@dataclass(frozen=True)
class StartFrom:
    """Known crystals to start from (see the module docstring).

    Attributes:
        batch: ``B`` clean crystals (atomic numbers 1-100, symmetric lattices, as the model was trained on).
        strength: the start time t₀ in (0, 1].
        allowed: ``(N, 101)`` bool: the classes each atom may take (``None``: the run's element mask).
        known_sites: ``(N,)`` bool: atoms whose type and coordinates are re-imposed after every step.
        known_lattice: re-impose the lattice too (inpainting keeps the parent's cell).
        keep_own: ``(N,)`` bool: atoms that may always be their own element, added to the mask.
    """

    batch: CrystalBatch
    strength: float
    allowed: torch.Tensor | None = None
    known_sites: torch.Tensor | None = None
    known_lattice: bool = False
    keep_own: torch.Tensor | None = None

    def __post_init__(self) -> None:
        t0 = self.strength
        if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not 0 < t0 <= 1:
            raise ValueError(f"strength={t0!r} must be a number in (0, 1] (the start time t0; 1 = from scratch)")
        z = self.batch.atom_types
        if bool(((z < 1) | (z >= MASK_Z)).any()):
            raise ValueError(f"the crystals to start from must hold atomic numbers 1-100, got {sorted(set(z.tolist()))}")
        n = z.shape[0]
        if self.allowed is not None and (self.allowed.dtype != torch.bool or self.allowed.shape != (n, NUM_CLASSES)):
            raise ValueError(f"allowed must be a bool ({n}, {NUM_CLASSES}) tensor, got {self.allowed.dtype} "
                             f"{tuple(self.allowed.shape)}")
        for name in ("known_sites", "keep_own"):
            v = getattr(self, name)
            if v is not None and (v.dtype != torch.bool or v.shape != (n,)):
                raise ValueError(f"{name} must be a bool ({n},) tensor")

    # ------------------------------------------------------------------ building
    def repeat(self, k: int) -> StartFrom:
        """The same (single-crystal) start ``k`` times, crystal after crystal: one chunk of a run."""
        if self.batch.num_crystals != 1:
            raise ValueError(f"repeat() needs a single crystal; this start holds {self.batch.num_crystals}")
        b = self.batch
        rep = CrystalBatch(atom_types=b.atom_types.repeat(k), frac_coords=b.frac_coords.repeat(k, 1),
                           lattice=b.lattice.repeat(k, 1, 1), num_atoms=b.num_atoms.repeat(k))
        return dataclasses.replace(
            self, batch=rep, allowed=None if self.allowed is None else self.allowed.repeat(k, 1),
            known_sites=None if self.known_sites is None else self.known_sites.repeat(k),
            keep_own=None if self.keep_own is None else self.keep_own.repeat(k))

    def to(self, device: torch.device | str, dtype: torch.dtype) -> StartFrom:
        b = self.batch
        batch = b.replace(atom_types=b.atom_types.to(device), frac_coords=b.frac_coords.to(device, dtype),
                          lattice=b.lattice.to(device, dtype), num_atoms=b.num_atoms.to(device))
        return dataclasses.replace(
            self, batch=batch, allowed=None if self.allowed is None else self.allowed.to(device),
            known_sites=None if self.known_sites is None else self.known_sites.to(device),
            keep_own=None if self.keep_own is None else self.keep_own.to(device))

    # ------------------------------------------------------------------ what the loop calls
    def timesteps(self, grid: Sequence[float]) -> list[float]:
        """The times to step from: t₀, then the sampler's ``grid`` (descending) below it."""
        return [float(self.strength)] + [float(t) for t in grid if t < self.strength - 1e-12]

    def site_allowed(self, allowed: torch.Tensor) -> torch.Tensor:
        """The run's mask (``(101,)`` or ``(B, 101)``) as one row per atom, narrowed to :attr:`allowed`."""
        b = self.batch
        if allowed.dim() == 2 and allowed.shape[0] != b.num_crystals:
            raise ValueError(f"allowed_elements has {allowed.shape[0]} rows for the {b.num_crystals} crystals to start from")
        per_atom = allowed[b.batch_idx] if allowed.dim() == 2 else allowed.expand(b.atom_types.shape[0], -1)
        if self.allowed is not None:
            per_atom = per_atom & self.allowed.to(per_atom.device)
        own = torch.zeros_like(per_atom)
        own[torch.arange(len(own), device=own.device), b.atom_types - 1] = True
        if self.keep_own is not None:
            per_atom = per_atom | (own & self.keep_own.unsqueeze(-1))
        if self.known_sites is not None:  # a fixed site is what it is, whatever the mask
            per_atom = torch.where(self.known_sites.unsqueeze(-1), own, per_atom)
        per_atom = per_atom.clone()
        per_atom[:, MASK_CLASS] = False
        empty = ~per_atom.any(-1)
        if bool(empty.any()):
            raise ValueError(f"atoms {empty.nonzero().flatten().tolist()[:10]} may not become any element "
                             "(their allowed elements and the element mask do not overlap)")
        return per_atom

    def initial(self, x: CrystalBatch, t: float, allowed: torch.Tensor, diffusion: JointDiffusion, *,
                generator: torch.Generator, constraint: SymmetryConstraint | None = None) -> CrystalBatch:
        """The known crystals noised to time ``t`` (the first step's), replacing the prior ``x`` (whose atom counts
        and properties they keep); atoms not allowed their own element (``allowed``: :meth:`site_allowed`) masked.
        With a ``constraint`` (a symmetric variation whose start lies where the constraint holds) the noise stays
        inside each crystal's template, as in training on symmetric noise
        (:func:`~mattergen_lab.symmetry.noising.constrained_corrupt`)."""
        b = self.batch
        if x.num_atoms.tolist() != b.num_atoms.tolist():
            raise ValueError(f"num_atoms={x.num_atoms.tolist()} but the crystals to start from hold {b.num_atoms.tolist()}")
        times = torch.full((b.num_crystals,), float(t), dtype=x.lattice.dtype, device=x.device)
        clean = b.replace(properties=x.properties)
        if constraint is not None:
            noisy, _ = constrained_corrupt(diffusion, clean, times, generator=generator, constraint=constraint)
        else:
            noisy, _ = diffusion.corrupt(clean, times, generator=generator)
        own_ok = allowed[torch.arange(len(allowed), device=allowed.device), b.atom_types - 1]
        types = torch.where(own_ok, noisy.atom_types, torch.full_like(noisy.atom_types, MASK_Z))
        return x.replace(atom_types=types, frac_coords=noisy.frac_coords, lattice=noisy.lattice)

    def impose(self, x: CrystalBatch, mean: CrystalBatch, s: float, *, last: bool, diffusion: JointDiffusion,
               generator: torch.Generator) -> tuple[CrystalBatch, CrystalBatch]:
        """After a step to time ``s``: the known sites (and lattice) of ``x`` drawn afresh from the forward process
        of their known values at ``s`` (exactly the known values on the ``last`` step), those of ``mean`` exact."""
        b, k = self.batch, self.known_sites
        if k is not None and bool(k.any()):
            f0, z0 = b.frac_coords[k], b.atom_types[k]
            f, z = f0, z0
            if not last:
                times = torch.full((b.num_crystals,), float(s), dtype=f0.dtype, device=f0.device)
                std = diffusion.coords.marginal_std_per_atom(times, b.num_atoms)[k]
                f, _ = diffusion.coords.sample_marginal(f0, std, generator=generator)
                if not diffusion.config.fixed_atom_types:
                    step = diffusion.types.discrete_time(torch.full_like(std, float(s))) + 1
                    z = diffusion.types.to_atomic_numbers(
                        diffusion.types.sample_marginal(diffusion.types.to_classes(z0), step, generator=generator))
            x = x.replace(frac_coords=_put(x.frac_coords, k, f), atom_types=_put(x.atom_types, k, z))
            mean = mean.replace(frac_coords=_put(mean.frac_coords, k, f0), atom_types=_put(mean.atom_types, k, z0))
        if self.known_lattice:
            lattice = b.lattice
            if not last:
                times = torch.full((b.num_crystals,), float(s), dtype=lattice.dtype, device=lattice.device)
                lattice, _ = diffusion.lattice.sample_marginal(b.lattice, times, b.num_atoms, generator=generator)
            x, mean = x.replace(lattice=lattice), mean.replace(lattice=b.lattice)
        return x, mean


def _put(values: torch.Tensor, where: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    out = values.clone()
    out[where] = new.to(values.dtype)
    return out


def check_start(start: StartFrom, num_atoms: torch.Tensor, fixed: torch.Tensor | None, constraint: object,
                allowed: torch.Tensor, device: torch.device, dtype: torch.dtype) -> tuple[StartFrom, torch.Tensor]:
    """``iter_steps``' check of ``start=``: it on the sampling device and the run's mask as one row per atom
    (:meth:`StartFrom.site_allowed`); ``ValueError`` when it does not fit the run's atom counts, CSP types
    (``fixed``) or symmetric mode (``constraint``)."""
    if not isinstance(start, StartFrom):
        raise ValueError(f"start={start!r:.80} must be a StartFrom")
    if start.batch.num_atoms.tolist() != num_atoms.tolist():
        raise ValueError(f"num_atoms={num_atoms.tolist()} but the crystals to start from hold "
                         f"{start.batch.num_atoms.tolist()} atoms")
    start = start.to(device, dtype)
    if constraint is not None:  # a symmetric variation: the crystals must already sit on their templates
        if start.known_sites is not None and bool(start.known_sites.any()) or start.known_lattice:
            raise ValueError("fixed sites (inpainting) do not combine with the symmetric mode yet; pass one of them")
        frac = start.batch.frac_coords
        off = (torch.remainder(constraint.snap(frac).to(frac) - frac + 0.5, 1.0) - 0.5).abs().max()
        if float(off) > 1e-4:
            raise ValueError(f"the crystals to start from are {float(off):.3g} (fractional) off their Wyckoff templates; "
                             "symmetrize them first (SamplingRequest(parent=..., symmetry='parent') does)")
    if fixed is not None and not torch.equal(fixed, start.batch.atom_types):
        raise ValueError("atom_types (a composition) must be the atom types of the crystals to start from")
    return start, start.site_allowed(allowed)
