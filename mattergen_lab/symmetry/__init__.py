"""Symmetric generation: space groups, Wyckoff templates and the projections that keep a sampled crystal in its
template (layer 3; pyxtal supplies the groups). See :mod:`~mattergen_lab.symmetry.constraint` for the method."""

from mattergen_lab.symmetry.constraint import SymmetryConstraint
from mattergen_lab.symmetry.groups import CRYSTAL_SYSTEMS, crystal_system, lattice_basis, orbit_geometry, project_lattice
from mattergen_lab.symmetry.templates import SymmetrySpec, WyckoffTemplate, random_template, reference_space_groups

__all__ = [
    "CRYSTAL_SYSTEMS",
    "SymmetryConstraint",
    "SymmetrySpec",
    "WyckoffTemplate",
    "crystal_system",
    "lattice_basis",
    "orbit_geometry",
    "project_lattice",
    "random_template",
    "reference_space_groups",
]
