"""Numbering freely diffused atoms into Wyckoff slots (:func:`mattergen_lab.symmetry.assign.nearest_assignment`)."""

from __future__ import annotations

import torch

from mattergen_lab.symmetry.assign import nearest_assignment
from mattergen_lab.symmetry.constraint import SymmetryConstraint


def _cart_displacement(constraint, frac, lattice):
    """Per-atom Cartesian distance (Å) the snap moves each atom."""
    snapped = constraint.snap(frac.double())
    d = torch.remainder(snapped - frac.double() + 0.5, 1.0) - 0.5
    return (d @ lattice.double()).norm(dim=-1)


def test_a_shuffled_symmetric_crystal_is_numbered_back_onto_its_template():
    # rutile-like 136:af and a 62:cc (Pnma, 8 atoms) crystal, exactly symmetric, then shuffled and slightly moved
    templates = ["136:af", "62:cc"]
    constraint = SymmetryConstraint(templates)
    g = torch.Generator().manual_seed(0)
    frac = constraint.init_coords(g, torch.float64)
    lattice = torch.stack([torch.diag(torch.tensor([4.6, 4.6, 3.0])), torch.diag(torch.tensor([5.5, 3.7, 7.1]))])
    lattice = constraint.lattice(lattice.double())
    shuffle = torch.cat([torch.randperm(6, generator=g), 6 + torch.randperm(8, generator=g)])
    noisy = torch.remainder(frac[shuffle] + 0.01 * torch.randn(frac.shape, generator=g, dtype=torch.float64), 1.0)
    idx = torch.repeat_interleave(torch.arange(2), constraint.num_atoms)
    as_numbered = _cart_displacement(constraint, noisy, lattice[idx[0]][None].expand(14, 3, 3)).max()
    perm = nearest_assignment(constraint, noisy, lattice)
    assert sorted(perm[:6].tolist()) == list(range(6)) and sorted(perm[6:].tolist()) == list(range(6, 14))
    moved = torch.stack([_cart_displacement(constraint, noisy[perm], lattice[b][None].expand(14, 3, 3))[idx == b].max()
                         for b in range(2)])
    assert float(moved.max()) < 0.1 < float(as_numbered)  # the noise (≈ 0.05 Å) against atoms sent across the cell


def test_with_types_each_slot_takes_an_atom_of_its_own_element():
    """CSP: the types are fixed per slot (template order) and the positions wander; atoms swap within an element."""
    constraint = SymmetryConstraint(["136:af"])
    g = torch.Generator().manual_seed(1)
    frac = constraint.init_coords(g, torch.float64)
    lattice = constraint.lattice(torch.diag(torch.tensor([4.6, 4.6, 3.0], dtype=torch.float64))[None])
    types = torch.tensor([22, 22, 8, 8, 8, 8])  # Ti on 2a, O on 4f
    wandered = frac[torch.tensor([1, 0, 5, 4, 2, 3])]  # each atom at another atom of its own element's position
    perm = nearest_assignment(constraint, wandered, lattice, types=types)
    assert torch.equal(types[perm], types) and sorted(perm.tolist()) == list(range(6))
    assert float(_cart_displacement(constraint, wandered[perm], lattice.expand(6, 3, 3)).max()) < 1e-6
    crossed = frac[torch.tensor([2, 0, 1, 4, 5, 3])]  # a Ti atom where an O should be: types still respected
    perm = nearest_assignment(constraint, crossed, lattice, types=types)
    assert torch.equal(types[perm], types)


def test_origin_search_finds_a_translated_crystal_exactly():
    """A symmetric crystal moved by an arbitrary translation is still the same crystal: with ``origin=True`` the snap
    moves it back onto its template without moving any atom (up to the shift), and without it the atoms must move."""
    templates = ["225:ab", "136:af", "62:cc"]  # fixed sites (rock salt), a fixed and a 1-parameter site, two mirrors
    constraint = SymmetryConstraint(templates)
    g = torch.Generator().manual_seed(2)
    frac = constraint.init_coords(g, torch.float64)
    cells = [torch.eye(3) * 5.6, torch.diag(torch.tensor([4.6, 4.6, 3.0])), torch.diag(torch.tensor([5.5, 3.7, 7.1]))]
    lattice = constraint.lattice(torch.stack(cells).double())
    idx = torch.repeat_interleave(torch.arange(3), constraint.num_atoms)
    shift = torch.tensor([[0.31, 0.12, 0.77], [0.23, 0.41, 0.05], [0.17, 0.29, 0.61]], dtype=torch.float64)
    # the atoms shuffled within each orbit (the types, one element per orbit, stay in slot order as the sampler's do)
    shuffle = torch.cat([torch.arange(2), 2 + torch.randperm(2, generator=g), 4 + torch.randperm(4, generator=g),
                         8 + torch.randperm(4, generator=g), 12 + torch.randperm(4, generator=g)])
    moved = torch.remainder(frac + shift[idx], 1.0)[shuffle]
    types = torch.tensor([11, 17] + [22, 22, 8, 8, 8, 8] + [3] * 4 + [9] * 4)

    def largest_move(x):
        d = torch.remainder(constraint.snap(x) - x + 0.5, 1.0) - 0.5
        return torch.einsum("ni,nij->nj", d, lattice[idx]).norm(dim=-1).max()

    plain = nearest_assignment(constraint, moved, lattice, types=types)
    perm, found = nearest_assignment(constraint, moved, lattice, types=types, origin=True)
    assert torch.equal(types[perm], constraint.share_types(types[perm]))  # every orbit one element
    assert float(largest_move(torch.remainder(moved + found[idx], 1.0)[perm])) < 1e-6
    assert float(largest_move(moved[plain])) > 0.5  # the origin matters: numbering alone cannot fit it
