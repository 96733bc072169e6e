"""The pure measurements of ``bench_adapters.py`` (tested in ``tests/test_benchmarks_oracles.py``): element-set
metrics of a chemical-system target, shares of samples holding given elements, robust statistics, the MP-20 band-gap
lookup by reduced formula, and the markdown table. No model is loaded here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MAGNETIC_3D = ("Cr", "Mn", "Fe", "Co", "Ni")
ANIONS = ("O", "F", "N")
HHI_LOW = 1500.0  # below: "low" supply-chain concentration (US DoJ/FTC convention, as pymatgen quotes)


# ====================================================================== pure helpers (tested)


def elements_of(structure: Any) -> set[str]:
    """The element symbols of a structure."""
    return {el.symbol for el in structure.composition.elements}


def chemical_system_metrics(structures: Sequence[Any], target: Iterable[str]) -> dict[str, float]:
    """Percentages: element set == target, element set ⊆ target, and the mean share of sites on target elements."""
    target = set(target)
    n = len(structures)
    if n == 0:
        return {"exact_pct": math.nan, "subset_pct": math.nan, "site_fraction_pct": math.nan}
    exact = sum(elements_of(s) == target for s in structures)
    subset = sum(elements_of(s) <= target for s in structures)
    share = [sum(site.specie.symbol in target for site in s) / len(s) for s in structures]
    return {"exact_pct": 100 * exact / n, "subset_pct": 100 * subset / n, "site_fraction_pct": 100 * float(np.mean(share))}


def contains_any_pct(structures: Sequence[Any], elements: Iterable[str]) -> float:
    """Percentage of structures containing at least one of ``elements``."""
    wanted = set(elements)
    return 100 * sum(bool(elements_of(s) & wanted) for s in structures) / len(structures) if structures else math.nan


def stats(values: Iterable[float]) -> dict[str, float]:
    """Mean, median and count over the finite values (NaN = oracle failure, counted in ``failed``)."""
    v = np.asarray(list(values), dtype=float)
    ok = v[np.isfinite(v)]
    return {
        "mean": float(ok.mean()) if len(ok) else math.nan,
        "median": float(np.median(ok)) if len(ok) else math.nan,
        "n": len(ok),
        "failed": len(v) - len(ok),
    }


def band_gap_lookup(table: Any) -> dict[str, tuple[float, str]]:
    """``{reduced formula: (band gap, material_id)}`` of the lowest-formation-energy polymorph of each formula.

    ``table`` has columns ``material_id, formula, formation_energy_per_atom, dft_band_gap`` (MP-20 CSVs;
    their ``formula`` is not pymatgen's reduced formula, so it is normalised here).
    """
    from pymatgen.core import Composition

    t = table.dropna(subset=["dft_band_gap", "formation_energy_per_atom"]).copy()
    t["reduced"] = [Composition(f).reduced_formula for f in t["formula"]]
    t = t.sort_values(["reduced", "formation_energy_per_atom", "material_id"]).drop_duplicates("reduced", keep="first")
    return {r: (float(g), str(m)) for r, g, m in zip(t["reduced"], t["dft_band_gap"], t["material_id"])}


def load_band_gap_lookup(data_dir: str | os.PathLike | None) -> dict[str, tuple[float, str]]:
    import pandas as pd

    from mattergen_lab.data.paths import resolve_data_dir

    mp20 = resolve_data_dir(data_dir) / "mp_20"
    cols = ["material_id", "formula", "formation_energy_per_atom", "dft_band_gap"]
    parts = [pd.read_csv(mp20 / f, usecols=cols) for f in ("train_no_positions.csv", "val.csv", "test.csv")]
    return band_gap_lookup(pd.concat(parts, ignore_index=True))


def fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def markdown_table(rows: Sequence[Mapping[str, Any]], guidance: float) -> str:
    head = f"| adapter | target | oracle | metric | γ=0 | γ={guidance:g} | N |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        n0, n2 = r["n"]
        n = str(n0) if n0 == n2 else f"{n0} / {n2}"
        lines.append(f"| {r['adapter']} | {r['target']} | {r['oracle']} | {r['metric']} | {fmt(r['gamma_0'])} | "
                     f"{fmt(r['gamma_g'])} | {n} |")
    return "\n".join(lines)
