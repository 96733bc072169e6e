"""Crystal-structure prediction in the symmetric mode: Wyckoff templates whose orbits a composition can fill.

A composition (the atoms of the crystal's primitive cell, as CSP gives them) fits a template when the template's
primitive cell (the cell that is sampled: the conventional one holds it once per lattice point) holds exactly as
many atoms and its orbits can be shared out among the elements: every orbit takes one element, and each element's
orbits add up to its count. DiffCSP++ (Jiao et al.,
ICLR 2024) predicts structures on a given space group and Wyckoff template the same way; here the templates come
from :class:`~mattergen_lab.symmetry.templates.SymmetrySpec` (MP-20's, weighted by frequency, or random Wyckoff
combinations of a group MP-20 lacks) and the element of each orbit is drawn among the assignments that fit.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from mattergen_lab.symmetry.templates import SymmetrySpec, WyckoffTemplate, random_template, reachable_counts

def assign_orbits(multiplicities: Sequence[int], counts: Mapping[int, int], rng: random.Random | None = None
                  ) -> list[int] | None:
    """One element (a key of ``counts``) per orbit so that each element's orbits hold exactly its count, or
    ``None`` when none exists. Depth-first over the orbits, largest first; ``rng`` shuffles the elements tried at
    each orbit, so the assignment drawn is random among those the search reaches first."""
    order = sorted(range(len(multiplicities)), key=lambda i: -multiplicities[i])
    left = dict(counts)
    out = [0] * len(multiplicities)

    def place(k: int) -> bool:
        if k == len(order):
            return all(v == 0 for v in left.values())
        m = multiplicities[order[k]]
        elements = [z for z, v in left.items() if v >= m]
        if rng is not None:
            rng.shuffle(elements)
        for z in elements:
            left[z] -= m
            out[order[k]] = z
            if place(k + 1):
                return True
            left[z] += m
        return False

    if sum(multiplicities) != sum(counts.values()):
        return None
    return out if place(0) else None


@functools.lru_cache(maxsize=256)
def fitting_templates(spec: SymmetrySpec, amounts: tuple[tuple[int, int], ...]) -> tuple[tuple[WyckoffTemplate, ...], np.ndarray]:
    """Templates of ``spec`` that ``amounts`` (``((Z, atoms in the primitive cell), ...)``) fits, and their weights.
    A space group MP-20 has no fitting template of gets up to 64 random Wyckoff combinations that fit."""
    per_cell = sum(n for _, n in amounts)
    counts = dict(amounts)
    templates, weights = spec.candidates(patterns=False)  # the composition decides which orbits share an element
    keep = [i for i, t in enumerate(templates)
            if t.primitive_atoms == per_cell and assign_orbits(t.primitive_multiplicities, counts) is not None]
    if keep:
        return tuple(templates[i] for i in keep), np.asarray(weights)[keep]
    if spec.source == "mp20" and per_cell <= spec.max_atoms:  # P1 is part of MP-20's distribution, and fits anything
        return (WyckoffTemplate(1, ("a",) * per_cell),), np.ones(1)
    if spec.space_group is None:
        return (), np.zeros(0)
    if per_cell not in reachable_counts(spec.space_group, spec.max_atoms):
        return (), np.zeros(0)
    generator = torch.Generator().manual_seed(0)
    found: dict[str, WyckoffTemplate] = {}
    for _ in range(64):
        t = random_template(spec.space_group, per_cell, generator)
        if assign_orbits(t.primitive_multiplicities, counts) is not None:
            found[str(t)] = t
    return tuple(found.values()), np.ones(len(found))


def check_fit(spec: SymmetrySpec, amounts: tuple[tuple[int, int], ...], formula: str) -> None:
    """``ValueError`` naming ``formula`` and the symmetry when no template of ``spec`` can hold it (before any work)."""
    if not fitting_templates(spec, amounts)[0]:
        per_cell = sum(n for _, n in amounts)
        raise ValueError(f"composition={formula!r} ({per_cell} atoms) fits no Wyckoff template of symmetry={str(spec)!r} "
                         f"within max_atoms={spec.max_atoms}: no combination of its orbits holds these element counts; "
                         "try another space group, a crystal system or 'mp20'")


def draw_fit(spec: SymmetrySpec, amounts: tuple[tuple[int, int], ...], generator: torch.Generator
             ) -> tuple[WyckoffTemplate, tuple[int, ...]]:
    """A template that fits ``amounts`` (drawn by weight with ``generator``, CPU) and the atomic number of every atom
    of its primitive cell, orbit after orbit (the order of :class:`~mattergen_lab.symmetry.constraint.
    SymmetryConstraint`)."""
    templates, weights = fitting_templates(spec, amounts)
    if not templates:
        raise ValueError(f"no template of {spec} fits the composition {amounts}")
    t = templates[int(torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), 1, generator=generator))]
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
    elements = assign_orbits(t.primitive_multiplicities, dict(amounts), rng)
    assert elements is not None  # fitting_templates checked it
    return t, tuple(z for z, m in zip(elements, t.primitive_multiplicities) for _ in range(m))
