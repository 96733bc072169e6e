"""Evaluation of generated crystals: relaxation, energy above hull, S.U.N., RMSD and validity (spec §7).

Main entry points: :func:`evaluate_structures` / :func:`evaluate_path` (per-structure table, aggregates and
protocol record), :func:`get_relaxer`, :func:`load_reference`. Submodules are imported lazily, so
``import mattergen_lab.evaluation`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StructureCheck": "validity",
    "check_structure": "validity",
    "min_interatomic_distance": "validity",
    "RelaxConfig": "relax",
    "RelaxResult": "relax",
    "Relaxer": "relax",
    "get_relaxer": "relax",
    "mp2020_corrected_entry": "relax",
    "ReferenceHull": "reference",
    "MissingReferenceError": "reference",
    "load_reference": "reference",
    "elemental_references": "reference_files",
    "NoveltyReference": "matching",
    "load_novelty_reference": "matching",
    "structures_match": "matching",
    "unique_flags": "matching",
    "EvaluationResult": "evaluate",
    "evaluate_structures": "evaluate",
    "evaluate_path": "evaluate",
    "read_structures": "evaluate",
    "rmsd_from_relaxation": "per_structure",
    "composition_valid": "per_structure",
    "compute_metrics": "evaluate",
    "STABILITY_THRESHOLD": "evaluate",
    "bulk_moduli": "batched_eos",
}

__all__ = [*_EXPORTS]  # noqa: PLE0604


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mattergen_lab.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mattergen_lab.evaluation' has no attribute {name!r}")
