"""Derived properties, property oracles and interval targets.

* :mod:`~mattergen_lab.properties.hhi`: ``hhi_score`` (pymatgen production HHI, mass-weighted),
  ``chemical_system``.
* :mod:`~mattergen_lab.properties.symmetry`: ``space_group`` (spglib, symprec 0.1 Å, 5°) and
  ``add_derived_properties`` for datasets.
* :mod:`~mattergen_lab.properties.bulk_modulus`: equation-of-state bulk modulus (GPa) with CHGNet or MatterSim
  (one structure, ASE; many crystals batched on torch-sim: ``mattergen_lab.evaluation.bulk_moduli``, which sits with
  the relaxers it uses, one layer up).
* :mod:`~mattergen_lab.properties.magnetic`: magnetic density (μB/Å³) from user-supplied moments; there is no
  offline oracle for it.
* :mod:`~mattergen_lab.properties.targets`: ``sweep_interval``: sample across a range, keep what lands in it.
"""

from mattergen_lab.forcefields import get_calculator
from mattergen_lab.properties.bulk_modulus import BulkModulusError, BulkModulusResult, bulk_modulus
from mattergen_lab.properties.hhi import (
    HHI_SOURCE,
    chemical_system,
    hhi_score,
    hhi_scores,
)
from mattergen_lab.properties.magnetic import chgnet_site_moments, magnetic_density, magnetic_density_upper_bound
from mattergen_lab.properties.symmetry import (
    ANGLE_TOLERANCE,
    SYMPREC,
    add_derived_properties,
    space_group,
    space_groups,
)
from mattergen_lab.properties.targets import (
    IntervalResult,
    checkpoint_sample_fn,
    sweep_interval,
)

__all__ = [
    "ANGLE_TOLERANCE",
    "HHI_SOURCE",
    "SYMPREC",
    "BulkModulusError",
    "BulkModulusResult",
    "IntervalResult",
    "add_derived_properties",
    "bulk_modulus",
    "checkpoint_sample_fn",
    "chemical_system",
    "get_calculator",
    "hhi_score",
    "hhi_scores",
    "magnetic_density",
    "magnetic_density_upper_bound",
    "chgnet_site_moments",
    "space_group",
    "space_groups",
    "sweep_interval",
]
