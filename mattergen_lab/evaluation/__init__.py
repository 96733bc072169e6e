"""Evaluation of generated crystals (validity now; relaxation, E_hull and S.U.N. to come)."""

from mattergen_lab.evaluation.validity import (
    StructureCheck,
    check_structure,
    min_interatomic_distance,
)

__all__ = ["StructureCheck", "check_structure", "min_interatomic_distance"]
