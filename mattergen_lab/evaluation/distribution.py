"""How a set of crystals is distributed, next to MP-20: elements per crystal, density, SMACT validity, share of P1.

MatterGen's metrics (validity, S.U.N., RMSD) can look fine while the chemistry is off: the first bundled model's
crystals were 98 % "valid" with a median of 7 elements where MP-20 has 3. :func:`distribution_stats` gives the
numbers that show such a drift at once, without relaxation, and :func:`mp20_distribution_stats` the same numbers
for an MP-20 split, measured the same way.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from mattergen_lab.evaluation.validity import density_plausibility

#: Elements-per-crystal histogram bins: 1..7, then "8+".
MAX_ELEMENT_BIN = 8


def distribution_stats(structures: Sequence[Any], *, symprec: float = 0.1) -> dict[str, Any]:
    """Distribution statistics of pymatgen structures (no relaxation).

    Keys: ``n``, ``elements_median``, ``elements_histogram`` (share with 1, 2, … 7, 8+ distinct elements),
    ``volume_per_atom_median`` (Å³/atom), ``share_above_100_A3`` (volume per atom above 100 Å³),
    ``share_implausible_density`` (see :func:`~mattergen_lab.evaluation.validity.density_plausibility`),
    ``smact_valid`` (share passing MatterGen's SMACT test), ``share_p1`` (space group 1 by spglib at ``symprec``;
    crystals spglib cannot analyse count as P1).
    """
    from mattergen_lab.evaluation.per_structure import composition_valid
    from mattergen_lab.properties.symmetry import space_group

    if not structures:
        raise ValueError("distribution_stats needs at least one structure")
    n_el = np.array([len(s.composition.elements) for s in structures])
    vpa = np.array([s.volume / len(s) for s in structures], dtype=float)
    counts = Counter(min(int(k), MAX_ELEMENT_BIN) for k in n_el)
    labels = [str(k) for k in range(1, MAX_ELEMENT_BIN)] + [f"{MAX_ELEMENT_BIN}+"]
    sgs = []
    for s in structures:
        try:
            sgs.append(space_group(s, symprec=symprec))
        except ValueError:
            sgs.append(1)
    n = len(structures)
    return {
        "n": n,
        "elements_median": float(np.median(n_el)),
        "elements_histogram": {label: counts.get(k + 1, 0) / n for k, label in enumerate(labels)},
        "volume_per_atom_median": float(np.median(vpa)),
        "share_above_100_A3": float(np.mean(vpa > 100)),
        "share_implausible_density": float(np.mean([not density_plausibility(v)[0] for v in vpa])),
        "smact_valid": float(np.mean([composition_valid(s.composition) for s in structures])),
        "share_p1": float(np.mean(np.asarray(sgs) == 1)),
    }


def mp20_distribution_stats(split: str = "test", *, data_dir: str | os.PathLike | None = None, limit: int | None = 2000,
                            seed: int = 0) -> dict[str, Any]:
    """:func:`distribution_stats` of an MP-20 split (a seeded random ``limit`` of it; ``None``: all of it)."""
    from mattergen_lab.data import load_mp20

    data = load_mp20(split, data_dir=data_dir)
    idx = np.arange(len(data))
    if limit is not None and limit < len(data):
        idx = np.sort(np.random.default_rng(seed).choice(len(data), size=limit, replace=False))
    structures = data.get_batch(idx.tolist()).to_structures()
    return {"reference": f"MP-20 {split} ({len(idx)} of {len(data)}, seed {seed})", **distribution_stats(structures)}


def distribution_table(stats: dict[str, dict[str, Any]]) -> str:
    """A markdown table with one column per entry of ``stats`` (e.g. ``{"model": ..., "MP-20 test": ...}``)."""
    rows = [
        ("crystals", lambda d: f"{d['n']}"),
        ("median distinct elements", lambda d: f"{d['elements_median']:g}"),
        ("elements 1 / 2 / 3 / 4 / 5+", lambda d: " / ".join(
            f"{100 * v:.0f}" for v in [*list(d["elements_histogram"].values())[:4], sum(list(d["elements_histogram"].values())[4:])]) + " %"),
        ("median volume per atom (Å³)", lambda d: f"{d['volume_per_atom_median']:.1f}"),
        ("above 100 Å³/atom", lambda d: f"{100 * d['share_above_100_A3']:.1f} %"),
        ("implausible density", lambda d: f"{100 * d['share_implausible_density']:.1f} %"),
        ("SMACT-valid", lambda d: f"{100 * d['smact_valid']:.1f} %"),
        ("P1 (spglib, symprec 0.1)", lambda d: f"{100 * d['share_p1']:.1f} %"),
    ]
    names = list(stats)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(fmt(stats[k]) for k in names) + " |" for label, fmt in rows]
    return "\n".join(lines)
