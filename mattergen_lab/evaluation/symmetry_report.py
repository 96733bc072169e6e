"""Symmetry measured where quality is measured: P1 share, space-group χ² to MP-20, kept groups, symmetric S.U.N.

The χ² follows the WyFormer authors' MP-20 evaluation (Kazeev et al., 2025), which compares the space-group
histogram of generated crystals with MP-20's: ``χ² = Σ_g (p_g − q_g)² / q_g`` over the groups (or the 7 crystal
systems), ``p`` the generated shares and ``q`` the reference's (the MP-20 test split, spglib at symprec 0.1 Å); the
groups the reference lacks share one bin of half a count (:func:`space_group_chi2`). On that
scale MP-20's train split scores 0.14, DiffCSP++ 0.25 and MatterGen 5.1 (mostly its P1 excess: a P1 share of
25 % against 1.5 % alone gives 3.7).

The splits (by the number of elements, and by whether MP-20 holds an entry of the crystal's whole chemical system)
show whether a change removes the weak crystals or only hides them in an average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mattergen_lab.symmetry.groups import crystal_system, subgroup_types

SYMPREC = 0.1  # Å, MatterGen's and the field's tolerance for these figures


def space_group_chi2(groups: Sequence[int], reference: Mapping[int, int], *, by: str = "group") -> float:
    """``Σ (p − q)² / q`` between the shares of ``groups`` and of ``reference`` (``{group: count}``), over the groups
    (``by="group"``) or crystal systems (``by="system"``) the reference holds, plus one bin pooling the groups the
    reference lacks, whose reference share is half a count: a crystal in a group MP-20 never shows is penalised, by a
    bounded amount (at N = 1,000 against MP-20's test split, one such crystal adds 0.016 and k of them k² times that). A crystal spglib cannot analyse
    (group ≤ 0) counts as P1, as in :func:`~mattergen_lab.evaluation.distribution.distribution_stats`: no symmetry was
    found (until 7 Dec it went to the "other" bin, where one failed relaxation in 256 added 0.5). ``nan`` for no
    groups."""
    if by not in ("group", "system"):
        raise ValueError(f"by={by!r} must be 'group' or 'system'")
    groups = [int(g) for g in groups]
    if not groups:
        return math.nan
    key = (lambda g: g) if by == "group" else crystal_system
    ref: dict[Any, float] = {}
    for g, c in reference.items():
        if c > 0:
            ref[key(int(g))] = ref.get(key(int(g)), 0.0) + c
    other = object()
    ref[other] = 0.5
    gen = dict.fromkeys(ref, 0.0)
    for g in groups:
        g = 1 if g < 1 else g  # spglib found nothing: no symmetry
        k = key(g) if g <= 230 else other
        gen[k if k in ref else other] += 1
    n, m = len(groups), sum(ref.values())
    return float(sum((gen[k] / n - ref[k] / m) ** 2 / (ref[k] / m) for k in ref))


def chi2_floor(reference: Mapping[int, int], n: int, *, by: str = "group", draws: int = 200, seed: int = 0
               ) -> dict[str, float]:
    """What :func:`space_group_chi2` gives for ``n`` crystals drawn from ``reference`` itself: its mean and 5–95 %
    range over ``draws`` seeded draws. A finite sample of a perfect model scores about ``(K − 1) / n`` for ``K``
    bins (MP-20's test split: 156 groups, so 0.60 at ``n`` = 256 and 0.15 at 1,000), so a χ² means something only
    beside the floor of its own ``n``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive integer")
    groups = np.array([int(g) for g, c in reference.items() if c > 0])
    p = np.array([reference[int(g)] for g in groups], dtype=float)
    rng = np.random.default_rng(seed)
    values = [space_group_chi2(rng.choice(groups, n, p=p / p.sum()).tolist(), reference, by=by) for _ in range(draws)]
    lo, hi = np.percentile(values, [5, 95])
    return {"mean": round(float(np.mean(values)), 3), "p5": round(float(lo), 3), "p95": round(float(hi), 3)}


def generated_space_groups(structures: Sequence[Any], symprec: float = SYMPREC) -> list[int]:
    """spglib's space group of each structure at ``symprec`` (``-1`` where spglib fails)."""
    from mattergen_lab.properties.symmetry import space_group

    out = []
    for s in structures:
        try:
            out.append(int(space_group(s, symprec=symprec)))
        except Exception:  # noqa: BLE001 - a degenerate generated cell: recorded as failed, not fatal
            out.append(-1)
    return out


def _pct(mask: Any) -> float:
    mask = np.asarray(mask, dtype=bool)
    return round(100 * float(mask.mean()), 1) if mask.size else math.nan


def _split_row(rows: Any) -> dict[str, Any]:
    rmsd = rows["rmsd_from_relaxation"].astype(float)
    return {"n": int(len(rows)), "stable_pct": _pct(rows["stable"].fillna(False)),
            "sun_pct": _pct(rows["novel_unique_stable"].fillna(False)),
            "rmsd_mean": round(float(rmsd.mean()), 3) if rmsd.notna().any() else math.nan}


def symmetry_summary(table: Any, generated: Sequence[Any], reference: Mapping[int, int],
                     requested: Sequence[int] | None = None) -> dict[str, Any]:
    """The symmetry figures of one run: ``table`` is the evaluation's per-structure table (relaxed crystals, its
    ``space_group`` at symprec 0.1), ``generated`` the crystals as sampled (same order as the table's ids),
    ``reference`` MP-20's ``{group: count}``, ``requested`` each crystal's template group in the symmetric mode."""
    before = generated_space_groups(generated)
    after = [int(g) for g in table["space_group"].fillna(-1)]
    sun = table["novel_unique_stable"].fillna(False).astype(bool).to_numpy()
    out: dict[str, Any] = {
        "n": len(before),
        "p1_before_pct": _pct([g == 1 for g in before]),
        "p1_after_pct": _pct([g == 1 for g in after]),
        "chi2_groups_before": round(space_group_chi2(before, reference), 3),
        "chi2_groups_after": round(space_group_chi2(after, reference), 3),
        "chi2_systems_after": round(space_group_chi2(after, reference, by="system"), 3),
        "chi2_groups_floor": chi2_floor(reference, len(before)),  # a perfect model's χ² at this n
        "sun_pct": _pct(sun),
        "symmetric_sun_pct": _pct(sun & (np.asarray(after) > 1)),
    }
    if requested is not None:
        if len(requested) != len(after):
            raise ValueError(f"{len(requested)} requested groups for {len(after)} crystals")
        out["kept_before_pct"] = _pct([a == r for a, r in zip(before, requested)])
        out["kept_after_pct"] = _pct([a == r for a, r in zip(after, requested)])
        # the group found contains the requested one (exactly it, or a supergroup: two orbits of one element, a free
        # parameter relaxed onto a special value); crystals that lost symmetry are the rest
        out["kept_or_supergroup_after_pct"] = _pct([a >= 1 and r in subgroup_types(a) for a, r in zip(after, requested)])
    elements = table["chemical_system"].fillna("").map(lambda s: len([e for e in str(s).split("-") if e]))
    out["by_elements"] = {label: _split_row(table[mask]) for label, mask in
                          (("1-3", elements <= 3), ("4", elements == 4), ("5+", elements >= 5))}
    out["five_plus_elements_pct"] = _pct(elements >= 5)
    covered = ~table["novel_system"].fillna(True).astype(bool)
    out["by_mp20_system"] = {"covered": _split_row(table[covered]), "not covered": _split_row(table[~covered])}
    return out


def symmetry_markdown(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """A README table, one row per run (``{label: symmetry_summary(...)}``)."""
    head = ("| run | N | P1 before | P1 after relax | χ² groups | χ² systems | ≥ 5 elements | S.U.N. | symmetric S.U.N. "
            "| kept group |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for label, r in rows.items():
        kept = f"{r['kept_after_pct']} %" if "kept_after_pct" in r else "–"
        lines.append(f"| {label} | {r['n']} | {r['p1_before_pct']} % | {r['p1_after_pct']} % | {r['chi2_groups_after']} "
                     f"| {r['chi2_systems_after']} | {r['five_plus_elements_pct']} % | {r['sun_pct']} % "
                     f"| {r['symmetric_sun_pct']} % | {kept} |")
    return head + "\n".join(lines)
