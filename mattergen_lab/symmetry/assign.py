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


#: Rounds of "fit the origin to the numbering, then renumber" after each starting origin (``origin=True``).
REFINE = 2


def _wrap(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x + 0.5)


class _Slots:
    """The constraint's per-atom tables as NumPy / CPU tensors, read once per assignment."""

    def __init__(self, constraint: SymmetryConstraint) -> None:
        self.constraint = constraint
        self.rot = constraint.rotations.double().cpu().numpy()
        self.inv = constraint.inverse_rotations.cpu()
        self.trans = constraint.translations.cpu()
        self.orbit = constraint.orbit.cpu().numpy()
        self.rep = constraint.rep.cpu().numpy()
        self.sizes = constraint.orbit_sizes.cpu().numpy()
        self.dof = [int(np.linalg.matrix_rank(p, tol=1e-6)) for p in constraint.site_projectors.double().cpu().numpy()]
        self.site_linear = constraint._site_linear.double().cpu().numpy()  # (O, 3, 3)
        self.site_offset = constraint._site_offset.double().cpu().numpy()  # (O, 3)

    def order(self, atoms: np.ndarray) -> list[int]:
        """The crystal's orbits, largest first, then those with fewer free parameters."""
        return sorted(set(self.orbit[atoms].tolist()), key=lambda o: (-self.sizes[o], self.dof[o], o))

    def on_site(self, o: int, points: torch.Tensor) -> torch.Tensor:
        """``(c, 3)``: each point as orbit ``o``'s representative site form, moved onto the site."""
        pulled = torch.einsum("ij,kj->ki", self.inv[self.rep[o]], points - self.trans[self.rep[o]])
        return self.constraint.onto_site(torch.full((len(points),), int(o)), pulled)


def _assign_crystal(slots: _Slots, atoms: np.ndarray, x: np.ndarray, lat: np.ndarray, z: np.ndarray | None,
                    dtype: torch.dtype) -> tuple[float, np.ndarray, np.ndarray] | None:
    """``(squared distance moved, atoms per slot, each slot's atom as the lattice translate nearest the slot)`` for
    one crystal's atoms ``atoms`` at ``x`` (N, 3), orbit by orbit; ``None`` when no atom of a slot's type is left."""
    perm = np.empty(len(atoms), dtype=np.int64)
    near = np.empty((len(atoms), 3))
    first = int(atoms[0])
    free = list(atoms)
    total = 0.0
    for o in slots.order(atoms):
        orbit_slots = np.flatnonzero(slots.orbit == o)
        free_arr = np.asarray(free)
        candidates = free_arr if z is None else free_arr[z[free_arr] == z[slots.rep[o]]]
        if len(candidates) == 0:
            return None
        reps = slots.on_site(o, torch.as_tensor(x[candidates], dtype=dtype)).double().numpy()
        allowed = np.ones((len(orbit_slots), len(free_arr)), dtype=bool) if z is None else \
            z[orbit_slots][:, None] == z[free_arr][None, :]
        best = None
        for r in reps:
            pos = np.einsum("kij,j->ki", slots.rot[orbit_slots], r) + slots.trans[orbit_slots].double().numpy()
            diff = _wrap(pos[:, None, :] - x[free_arr][None, :, :])  # (m, f, 3)
            cost = np.where(allowed, ((diff @ lat) ** 2).sum(-1), 1e9)
            rows, cols = linear_sum_assignment(cost)
            moved = cost[rows, cols].sum()
            if best is None or moved < best[0]:
                cols = cols[np.argsort(rows)]
                best = (moved, cols, pos - diff[np.arange(len(cols)), cols])
        chosen = free_arr[best[1]]
        perm[orbit_slots - first] = chosen
        near[orbit_slots - first] = best[2]
        total += best[0]
        taken = set(chosen.tolist())
        free = [a for a in free if a not in taken]
    return total, perm, near


def _fit_origin(slots: _Slots, atoms: np.ndarray, near: np.ndarray, lat: np.ndarray) -> tuple[float, np.ndarray]:
    """``(squared Cartesian distance, shift)``: for numbered atoms at ``near`` (n, 3; slot order), the origin shift
    ``s`` and the orbits' free parameters ``u`` that bring every slot's symmetric position ``R_k (A_o u_o + b_o) +
    t_k`` closest to its atom moved by ``s``: one linear least-squares problem (3 + 3 per orbit unknowns)."""
    orbits = slots.orbit[atoms]
    index = {o: j for j, o in enumerate(dict.fromkeys(orbits.tolist()))}
    k = np.asarray(atoms)
    m = np.zeros((len(k), 3, 3 + 3 * len(index)))
    lin = np.einsum("kij,kjl->kil", slots.rot[k], slots.site_linear[orbits])  # (n, 3, 3)
    for row, o in enumerate(orbits.tolist()):
        m[row, :, 3 + 3 * index[o]:6 + 3 * index[o]] = lin[row]
    m[:, :, :3] = -np.eye(3)
    c = np.einsum("kij,kj->ki", slots.rot[k], slots.site_offset[orbits]) + slots.trans[k].double().numpy() - near
    a = np.einsum("ji,kjl->kil", lat, m).reshape(-1, m.shape[-1])  # Cartesian rows: latᵀ (M z + c)
    rhs = -(c @ lat).reshape(-1)
    z = np.linalg.lstsq(a, rhs, rcond=None)[0]
    residual = a @ z - rhs
    return float(residual @ residual), z[:3]


def _origin_shifts(slots: _Slots, atoms: np.ndarray, x: np.ndarray, z: np.ndarray | None,
                   dtype: torch.dtype) -> np.ndarray:
    """``(k, 3)`` origin shifts worth trying: none, and for the orbit with the fewest free parameters (the largest
    among those), each atom that could fill it moved the shortest way onto its site (for a fixed site such as
    rock salt's 4a, the translation that puts that atom exactly there)."""
    anchor = min(slots.order(atoms), key=lambda o: (slots.dof[o], -slots.sizes[o], o))
    if slots.dof[anchor] == 3:
        return np.zeros((1, 3))
    candidates = atoms if z is None else atoms[z[atoms] == z[slots.rep[anchor]]]
    onto = slots.on_site(anchor, torch.as_tensor(x[candidates], dtype=dtype)).double().numpy()
    shifts = _wrap(onto - x[candidates])
    return np.concatenate([np.zeros((1, 3)), shifts])


def nearest_assignment(constraint: SymmetryConstraint, frac_coords: torch.Tensor, lattice: torch.Tensor,
                       types: torch.Tensor | None = None, *, origin: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """``(N,)`` permutation ``p`` such that atom ``p[j]`` of ``frac_coords`` (N, 3) fills slot ``j`` of the
    constraint's templates (crystal after crystal, orbit after orbit), each crystal within itself. ``lattice``:
    ``(B, 3, 3)`` rows in Å. ``types``: with ``types`` (N,) given, slot ``j`` only takes an atom of type
    ``types[j]`` (CSP: the given composition, already in template order), else any atom.

    ``origin=True`` also moves each crystal's origin (a translation of every atom, which leaves the crystal and
    MatterGen's translation-invariant network as they are) to the one, among those that put an atom exactly onto
    the site with the fewest free parameters, after which the snap moves its atoms least, and returns
    ``(p, shifts)``: the ``(B, 3)`` fractional shift to add to every atom of crystal ``b`` before numbering.
    Finding the crystal's own origin is what structure matchers do too (pymatgen's ``StructureMatcher`` tries the
    translations that superpose one atom of the rarest species)."""
    dtype = constraint.dtype
    x = frac_coords.detach().to(device="cpu", dtype=torch.float64).numpy()
    lat = lattice.detach().double().cpu().numpy()
    z = None if types is None else types.detach().cpu().numpy()
    slots = _Slots(constraint)
    perm = np.arange(len(x))
    shifts = np.zeros((len(lat), 3))
    start = 0
    for b, n in enumerate(constraint.num_atoms.tolist()):
        atoms = np.arange(start, start + n)
        best = None
        for shift in (_origin_shifts(slots, atoms, x, z, dtype) if origin else np.zeros((1, 3))):
            found = _assign_crystal(slots, atoms, np.remainder(x + shift, 1.0), lat[b], z, dtype)
            if found is None:  # no atom of a slot's type is left: keep the numbering (the types are wrong)
                break
            for _ in range(REFINE if origin else 0):  # alternate: the best origin for this numbering, then renumber
                step = _fit_origin(slots, atoms, found[2], lat[b])[1]
                moved = _assign_crystal(slots, atoms, np.remainder(x + shift + step, 1.0), lat[b], z, dtype)
                if moved is None:
                    break
                shift, found = shift + step, moved
            cost = _fit_origin(slots, atoms, found[2], lat[b])[0] if origin else found[0]
            if best is None or cost < best[0] - 1e-9:
                best = (cost, found[1], shift)
        if best is not None:
            perm[start:start + n] = best[1]
            shifts[b] = best[2]
        start += n
    p = torch.as_tensor(perm, dtype=torch.long, device=frac_coords.device)
    if origin:
        return p, torch.as_tensor(shifts, dtype=frac_coords.dtype, device=frac_coords.device)
    return p
