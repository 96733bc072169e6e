"""The results of an evaluation: the per-structure table, its aggregates and :class:`EvaluationResult`.

:func:`finalize_table` builds the table (in :data:`COLUMNS` order) and computes the whole-set columns
(uniqueness, S.U.N.); :func:`compute_metrics` aggregates it with the key names of MatterGen's metrics JSON
(spec §7.5); :func:`write_result` writes the files of an ``out_dir``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.evaluation.matching import unique_flags
from mattergen_lab.fileio import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pymatgen.core import Structure

#: Columns of the per-structure table, in order.
COLUMNS = (
    "id", "formula", "chemical_system", "num_atoms", "space_group", "volume_per_atom",
    "energy", "energy_per_atom", "energy_correction", "formation_energy_per_atom", "energy_above_hull",
    "stable", "is_unique", "is_novel", "novel_unique", "novel_unique_stable", "novelty_match",
    "novel_system", "rmsd_from_relaxation", "comp_valid", "structure_valid", "structure_comp_valid", "min_distance", "plausible_density",
    "relax_status", "relax_steps", "relax_seconds", "max_force", "error",
)

METRIC_DESCRIPTIONS = {
    "avg_energy_above_hull_per_atom": "Mean energy above the reference hull of the relaxed structures (eV/atom)",
    "avg_rmsd_from_relaxation": "Mean RMSD between generated and relaxed structures (Å)",
    "frac_novel_unique_stable_structures": "Fraction of submitted structures that are novel, unique and stable (S.U.N.)",
    "frac_stable_structures": "Fraction of submitted structures with E_hull <= the stability threshold",
    "frac_successful_jobs": "Fraction of submitted structures whose relaxation gave an energy",
    "avg_comp_validity": "Fraction of structures whose composition passes SMACT charge neutrality + Pauling test",
    "avg_structure_comp_validity": "Fraction of structures valid both structurally and compositionally",
    "avg_structure_validity": "Fraction of structures with all distances >= 0.5 Å and volume >= 0.1 Å³",
    "frac_novel_structures": "Fraction of structures not matching the novelty reference",
    "frac_novel_systems": "Fraction of structures whose chemical system is absent from the novelty reference",
    "frac_novel_unique_structures": "Fraction of structures that are novel and unique",
    "frac_unique_structures": "Fraction of structures not matching an earlier structure of the set",
    "frac_unique_systems": "Number of distinct chemical systems divided by the number of structures",
}


def _frac(values: Any, n: int) -> float:
    return float(np.sum(np.asarray(values, dtype=bool)) / n) if n else math.nan


def compute_metrics(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """MatterGen-style ``{name: {"value", "description"}}`` aggregates of a per-structure table."""
    n = len(table)
    has_novelty = bool(table["is_novel"].notna().any())
    values = {
        "avg_energy_above_hull_per_atom": float(np.nanmean(table["energy_above_hull"])) if table["energy_above_hull"].notna().any() else math.nan,
        "avg_rmsd_from_relaxation": float(np.nanmean(table["rmsd_from_relaxation"])) if table["rmsd_from_relaxation"].notna().any() else math.nan,
        "frac_novel_unique_stable_structures": _frac(table["novel_unique_stable"], n) if has_novelty else math.nan,
        "frac_stable_structures": _frac(table["stable"], n),
        "frac_successful_jobs": _frac(table["energy"].notna(), n),
        "avg_comp_validity": _frac(table["comp_valid"], n),
        "avg_structure_comp_validity": _frac(table["structure_comp_valid"], n),
        "avg_structure_validity": _frac(table["structure_valid"], n),
        "frac_novel_structures": _frac(table["is_novel"].fillna(False), n) if has_novelty else math.nan,
        "frac_novel_systems": _frac(table["novel_system"].fillna(False), n) if has_novelty else math.nan,
        "frac_novel_unique_structures": _frac(table["novel_unique"], n) if has_novelty else math.nan,
        "frac_unique_structures": _frac(table["is_unique"], n),
        "frac_unique_systems": float(table["chemical_system"].nunique() / n) if n else math.nan,
    }
    return {k: {"value": v, "description": METRIC_DESCRIPTIONS[k]} for k, v in values.items()}


@dataclass
class EvaluationResult:
    """Per-structure ``table`` (pandas), aggregate ``metrics``, the ``protocol`` record, relaxed structures."""

    table: pd.DataFrame
    metrics: dict[str, dict[str, Any]]
    protocol: dict[str, Any]
    relaxed: list[Structure | None] = field(default_factory=list)

    def summary(self) -> str:
        m = {k: v["value"] for k, v in self.metrics.items()}
        p = self.protocol
        return (
            f"{p['num_structures']} structures | relaxer {p['relaxer']} (fmax {p['fmax']} eV/Å) | hull "
            f"{p['reference_hull']} ({p['reference_hull_entries']} entries) | stable ≤ {p['stability_threshold']} eV/atom\n"
            f"stable {m['frac_stable_structures']:.1%}  unique {m['frac_unique_structures']:.1%}  "
            f"novel {m['frac_novel_structures']:.1%}  S.U.N. {m['frac_novel_unique_stable_structures']:.1%}  "
            f"mean RMSD {m['avg_rmsd_from_relaxation']:.3f} Å  mean E_hull {m['avg_energy_above_hull_per_atom']:.3f} eV/atom"
        )


#: Columns that depend on the whole set of structures, recomputed by :func:`finalize_table`.
WHOLE_SET_COLUMNS = ("is_unique", "novel_unique", "novel_unique_stable")


def finalize_table(rows: Sequence[dict[str, Any]], relaxed: Sequence[Structure | None], matcher: str = "disordered") -> pd.DataFrame:
    """The per-structure table from per-structure rows (in generation order) and their relaxed structures.

    Uniqueness depends on the whole set, so ``is_unique`` (and with it ``novel_unique`` and the S.U.N. column
    ``novel_unique_stable``) is computed here over all ``relaxed`` structures; values already in the rows (e.g.
    from separately evaluated shards) are replaced.
    """
    import pandas as pd

    if len(rows) != len(relaxed):
        raise ValueError(f"{len(rows)} rows for {len(relaxed)} relaxed structures")
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in WHOLE_SET_COLUMNS} for r in rows])
    table["is_unique"] = unique_flags(list(relaxed), matcher=matcher)
    novel = table["is_novel"].fillna(False).astype(bool)
    table["novel_unique"] = novel & table["is_unique"]
    table["novel_unique_stable"] = table["novel_unique"] & table["stable"].astype(bool)
    extra = [c for c in table.columns if c not in COLUMNS]
    return table[[c for c in COLUMNS if c in table.columns] + extra]


def write_result(result: EvaluationResult, out: str | os.PathLike) -> None:
    """Write ``per_structure.csv``, ``metrics.json`` and ``protocol.json`` (each atomically)."""
    out = Path(out)
    atomic_write_text(out / "per_structure.csv", result.table.to_csv(index=False))
    atomic_write_text(out / "metrics.json", json.dumps(result.metrics, indent=2, default=float))
    atomic_write_text(out / "protocol.json", json.dumps(result.protocol, indent=2, default=str))
