"""Which atom goes to which Wyckoff slot when a freely diffused crystal is snapped onto its template.

The symmetric mode holds its constraint from a start time (0.4 for the model trained on symmetric noise); above it
the crystal diffuses freely and its atoms are in no particular order. :meth:`SymmetryConstraint.snap
<mattergen_lab.symmetry.constraint.SymmetryConstraint.snap>` then averages each orbit's atoms *as numbered*, so an
orbit is built from atoms that may lie anywhere in the cell and the snapped crystal can be far from the free one.
The network is permutation-equivariant, so the numbering is ours to choose: :func:`nearest_assignment` picks, orbit by
orbit, the representative and the atoms of its members that the free crystal already comes closest to (an optimal
assignment of the orbit's positions to the remaining atoms, by periodic Cartesian distance; the Hungarian method,
``scipy.optimize.linear_sum_assignment``), so the snap moves atoms as little as a greedy orbit-by-orbit choice can.
Larger orbits are placed first (they fix the most atoms), then those with fewer free parameters.

This is the assignment step of fitting a structure to a Wyckoff template; the symmetrisation tools (spglib, pyxtal's
``from_seed``) find a crystal's own group and cannot be asked to fit a given one to a noisy cell.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from mattergen_lab.symmetry.constraint import SymmetryConstraint


def _wrap(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x + 0.5)


def nearest_assignment(constraint: SymmetryConstraint, frac_coords: torch.Tensor, lattice: torch.Tensor,
                       types: torch.Tensor | None = None) -> torch.Tensor:
    """``(N,)`` permutation ``p`` such that atom ``p[j]`` of ``frac_coords`` (N, 3) fills slot ``j`` of the
    constraint's templates (crystal after crystal, orbit after orbit), each crystal within itself. ``lattice``:
    ``(B, 3, 3)`` rows in Å. ``types``: with ``types`` (N,) given, slot ``j`` only takes an atom of type
    ``types[j]`` (CSP: the given composition, already in template order), else any atom."""
    xt = frac_coords.detach().to(device="cpu", dtype=constraint.dtype)
    x = xt.double().numpy()
    lat = lattice.detach().double().cpu().numpy()
    z = None if types is None else types.detach().cpu().numpy()
    rot = constraint.rotations.double().cpu().numpy()
    inv = constraint.inverse_rotations.cpu()
    trans = constraint.translations.cpu()
    orbit = constraint.orbit.cpu().numpy()
    rep = constraint.rep.cpu().numpy()
    sizes = constraint.orbit_sizes.cpu().numpy()
    dof = [int(np.linalg.matrix_rank(p, tol=1e-6)) for p in constraint.site_projectors.double().cpu().numpy()]
    perm = np.arange(len(x))
    start = 0
    for b, n in enumerate(constraint.num_atoms.tolist()):
        atoms = np.arange(start, start + n)
        free = list(atoms)
        for o in sorted(set(orbit[atoms].tolist()), key=lambda o: (-sizes[o], dof[o], o)):
            slots = np.flatnonzero(orbit == o)
            free_arr = np.asarray(free)
            candidates = free_arr if z is None else free_arr[z[free_arr] == z[rep[o]]]
            if len(candidates) == 0:  # no atom of the slot's type is left: keep the numbering (the types are wrong)
                return torch.arange(len(x), device=frac_coords.device)
            # each candidate as the representative's site form, moved onto the site: the orbit it would make
            pulled = torch.einsum("ij,kj->ki", inv[rep[o]], xt[candidates] - trans[rep[o]])  # (c, 3)
            reps = constraint.onto_site(torch.full((len(candidates),), int(o)), pulled).double().cpu().numpy()
            allowed = np.ones((len(slots), len(free_arr)), dtype=bool) if z is None else \
                z[slots][:, None] == z[free_arr][None, :]
            best = None
            for r in reps:
                pos = np.einsum("kij,j->ki", rot[slots], r) + trans[slots].double().numpy()  # (m, 3) the orbit
                cart = _wrap(pos[:, None, :] - x[free_arr][None, :, :]) @ lat[b]  # (m, f, 3)
                cost = np.where(allowed, (cart ** 2).sum(-1), 1e9)
                rows, cols = linear_sum_assignment(cost)
                total = cost[rows, cols].sum()
                if best is None or total < best[0]:
                    best = (total, cols[np.argsort(rows)])
            chosen = free_arr[best[1]]
            perm[slots] = chosen
            taken = set(chosen.tolist())
            free = [a for a in free if a not in taken]
        start += n
    return torch.as_tensor(perm, dtype=torch.long, device=frac_coords.device)
