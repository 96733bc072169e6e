"""Symmetric noising for training: :meth:`JointDiffusion.corrupt` restricted to each crystal's Wyckoff template.

The symmetric sampling mode projects every step of the sampler onto a template's subspace
(:mod:`~mattergen_lab.symmetry.constraint`). A network trained only on unconstrained noise never saw those states;
DiffCSP++ (Jiao et al., ICLR 2024) trains on the noise of the constrained process instead. Here, with the same
projections the sampler uses:

* **coordinates**: each orbit's representative gets its own wrapped-normal noise (the atom's σ(t)), projected onto
  its site; every atom of the orbit follows (``R_i r + t_i``). The target is, atom by atom, the wrapped-normal score
  of the displacement it received (:meth:`WrappedVESDE.loss_target`), which for the projected noise is the score of
  the constrained kernel pushed to the atoms;
* **lattice**: the VP marginal ``mean_t + std_t ε`` and its mean are both projected onto the crystal system
  (:meth:`SymmetryConstraint.lattice`); the target is ``−(C(L_t) − C(mean_t)) / std_t``, which is ``−Π ε`` for a
  primitive lattice (the projected noise) and its polar-form counterpart for a centred one;
* **atom types**: the D3PM masking is drawn per atom and then shared by each orbit (its representative's draw), so an
  orbit is masked or kept as a whole, as the sampler unmasks it.

**Train as the sampler samples.** The symmetric mode holds the constraint only from its start time (0.4 by
default) down; above it the crystal diffuses freely and is then snapped onto its template. A crystal whose ``t``
lies above the start is therefore noised as usual (:meth:`JointDiffusion.corrupt`), one at or below it symmetrically,
so the network sees exactly the states the sampler will hand it. Holding the constraint from t = 1 instead fails with
MatterGen's radius graph: a template whose orbits all sit at one fractional height (e.g. ``189:bcfg``, every atom at
z = 0 or ½) leaves the network no edge across the layers, so nothing restrains the lattice axis between them and
the reverse VP drift stretches it without bound (measured: 15 % of crystals over 100 Å³/atom from t = 1, for the
base and a model fine-tuned at every t alike, against none from t = 0.4).

Batches carry their templates as ``properties["wyckoff_template"]`` and the start as
``properties["symmetry_start"]`` (:class:`~mattergen_lab.symmetry.dataset.SymmetricDataset`), atoms orbit after
orbit.
"""

from __future__ import annotations

import torch

from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.noise.joint import DiffusionTargets, JointDiffusion
from mattergen_lab.symmetry.constraint import SymmetryConstraint


def constraint_of(batch: CrystalBatch) -> SymmetryConstraint:
    """The constraint of a batch whose ``properties["wyckoff_template"]`` names one template per crystal;
    ``ValueError`` when the templates' primitive cells do not hold the batch's atom counts."""
    templates = batch.properties.get("wyckoff_template")
    if templates is None or len(templates) != batch.num_crystals:
        raise ValueError("a symmetric batch needs properties['wyckoff_template'] with one template per crystal")
    constraint = SymmetryConstraint(list(templates), device=batch.device)
    if not torch.equal(constraint.num_atoms, batch.num_atoms.cpu()):
        bad = int((constraint.num_atoms != batch.num_atoms.cpu()).nonzero()[0])
        raise ValueError(f"crystal {bad} has {int(batch.num_atoms[bad])} atoms but its template "
                         f"{templates[bad]!r} holds {int(constraint.num_atoms[bad])} in the primitive cell")
    return constraint


def symmetric_corrupt(
    diffusion: JointDiffusion, batch: CrystalBatch, t: torch.Tensor, *, generator: torch.Generator
) -> tuple[CrystalBatch, DiffusionTargets]:
    """Noisy batch at times ``t`` ``(B,)`` and its training targets: crystals with ``t`` at or below the batch's
    ``properties["symmetry_start"]`` (1.0 when absent) kept in their templates, the others noised as usual (see the
    module docstring). ``batch`` must be exactly symmetric in template order (as :class:`SymmetricDataset` gives)."""
    if t.shape != (batch.num_crystals,):
        raise ValueError(f"t has shape {tuple(t.shape)}, expected ({batch.num_crystals},)")
    start = batch.properties.get("symmetry_start")  # (B,) or absent (constrained at every t)
    noisy, targets = constrained_corrupt(diffusion, batch, t, generator=generator)
    if start is None:
        return noisy, targets
    free = t.to(batch.device) > torch.as_tensor(start).to(device=batch.device, dtype=t.dtype)  # (B,)
    if not bool(free.any()):
        return noisy, targets
    plain, plain_targets = diffusion.corrupt(batch, t, generator=generator)
    atoms = free[batch.batch_idx]  # (N,)

    def pick(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.reshape(-1, *([1] * (a.dim() - 1))), b, a)

    noisy = noisy.replace(atom_types=pick(noisy.atom_types, plain.atom_types, atoms),
                          frac_coords=pick(noisy.frac_coords, plain.frac_coords, atoms),
                          lattice=pick(noisy.lattice, plain.lattice, free))
    targets = DiffusionTargets(
        frac_coords=pick(targets.frac_coords, plain_targets.frac_coords, atoms),
        lattice=pick(targets.lattice, plain_targets.lattice, free),
        atom_classes=targets.atom_classes,
        noisy_classes=pick(targets.noisy_classes, plain_targets.noisy_classes, atoms),
        type_step=targets.type_step,
    )
    return noisy, targets


def constrained_corrupt(diffusion: JointDiffusion, batch: CrystalBatch, t: torch.Tensor, *,
                        generator: torch.Generator, constraint: SymmetryConstraint | None = None
                        ) -> tuple[CrystalBatch, DiffusionTargets]:
    """Every crystal of ``batch`` noised inside its template: ``constraint``'s (a symmetric variation's start, which
    also leaves its representatives on the clean crystal), else that of ``properties["wyckoff_template"]``."""
    constraint = constraint_of(batch) if constraint is None else constraint
    t = t.to(dtype=batch.lattice.dtype, device=batch.device)
    num_atoms = batch.num_atoms
    dtype = batch.frac_coords.dtype

    std = diffusion.coords.marginal_std_per_atom(t, num_atoms)  # (N,)
    eps = torch.randn(batch.frac_coords.shape, generator=generator, dtype=dtype, device=batch.device)  # (N, 3)
    x0 = constraint.snap(batch.frac_coords)  # exactly symmetric; sets the representatives
    noise = torch.einsum("oij,oj->oi", constraint.site_projectors, eps[constraint.rep].to(constraint.dtype))  # (O, 3)
    r_t = constraint.representatives + std[constraint.rep].to(constraint.dtype)[:, None] * noise
    frac_t = constraint.expand(r_t).to(dtype)  # (N, 3)
    x0 = x0.to(dtype)

    lattice_raw, _ = diffusion.lattice.sample_marginal(batch.lattice, t, num_atoms, generator=generator)
    mean = diffusion.lattice.marginal_mean(batch.lattice, t, num_atoms)
    lattice_std = diffusion.lattice.marginal_std(t, num_atoms)[:, None, None]  # (B, 1, 1)
    lattice_t = constraint.lattice(lattice_raw)
    lattice_target = -(lattice_t - constraint.lattice(mean)) / lattice_std

    classes0 = diffusion.types.to_classes(batch.atom_types)  # (N,)
    tau = diffusion.types.discrete_time(torch.repeat_interleave(t, num_atoms))  # (N,)
    if diffusion.config.fixed_atom_types:
        noisy_classes = classes0
    else:
        noisy_classes = constraint.share_types(diffusion.types.sample_marginal(classes0, tau + 1, generator=generator))

    noisy = batch.replace(atom_types=diffusion.types.to_atomic_numbers(noisy_classes), frac_coords=frac_t,
                          lattice=lattice_t)
    targets = DiffusionTargets(
        frac_coords=diffusion.coords.loss_target(frac_t, x0, std),
        lattice=lattice_target,
        atom_classes=classes0,
        noisy_classes=noisy_classes,
        type_step=tau,
    )
    return noisy, targets
