"""Do generated crystals relax to a minimum or to a saddle? Rattle each relaxed crystal of a quality run and relax again.

A crystal relaxed with forces that respect its symmetry keeps that symmetry (the forces have no component that
breaks it), so an exactly symmetric crystal sampled at a saddle of the energy stays there: the relaxation converges
to the symmetric stationary point, not to the minimum beside it. The usual test in structure searches (AIRSS,
Pickard & Needs 2011: random displacements before relaxation) is to displace every atom a little and relax again:
at a minimum the energy comes back; at a saddle it falls. This script does that for the first ``--num-structures``
crystals of a ``bench_quality.py`` run (its ``campaign/relaxed/*.cif`` and ``per_structure.csv``), with
:func:`mattergen_lab.evaluation.saddles.saddle_check`:

    OMP_NUM_THREADS=1 python benchmarks/bench_saddles.py runs/bench_quality_sym/campaign --num-structures 64

Each crystal is relaxed again as it is (the reference energy) and after Gaussian displacements of ``--rattle`` Å per
Cartesian component (seeded), with ``--relaxer`` at the library's default caps (500 steps / 120 s: more than a quality
run's 200 / 60, so the reference can finish what the run's relaxation stopped); ``ΔE`` is the second energy minus the
first, per atom, counted only where both relaxations converged. Reported: the share that falls by more than 10 and 50 meV/atom, split by the run's stability verdict, how many
unstable crystals the fall would bring within the stability threshold (E_hull shifted by ΔE, the hull unchanged), and
the space group after the rattled relaxation (spglib, 0.1 Å). A diagnostic of the crystals, not a change of the
evaluation protocol: ``bench_quality.py`` relaxes without rattling, as MatterGen's evaluation does.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import add_common_arguments, machine_info, machine_line, set_threads, write_json

# ====================================================================== pure helpers (tested)

def markdown(name: str, s: dict[str, Any]) -> str:
    return "\n".join([
        "| run | N (not converged) | falls > 10 meV/atom | falls > 50 meV/atom | of the stable | of the unstable | unstable made stable | fallen: keep group / P1 |",
        "|---|---|---|---|---|---|---|---|",
        f"| {name} | {s['n']} ({s['not_converged']}) | {s['falls_over_10meV_pct']} % | {s['falls_over_50meV_pct']} % | "
        f"{s['stable_falls_over_10meV_pct']} % of {s['n_stable']} | {s['unstable_falls_over_10meV_pct']} % of {s['n_unstable']} | "
        f"{s['unstable_made_stable']} | {s['fallen_keep_group_pct']} % / {s['fallen_p1_pct']} % |",
    ])


# ====================================================================== the run

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("campaign", help="a bench_quality.py run's campaign folder (relaxed/ and per_structure.csv)")
    parser.add_argument("--num-structures", type=int, default=64, help="the first N crystals of the run")
    parser.add_argument("--rattle", type=float, default=0.05, help="Gaussian displacement per component (Å)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relaxer", default="chgnet")
    add_common_arguments(parser, out="runs/bench_saddles", threads=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(args.threads)
    campaign = Path(args.campaign)
    table = campaign / "per_structure.csv"
    if not table.is_file():
        parser.error(f"{table} does not exist: pass a bench_quality.py run's campaign folder")
    if args.num_structures < 1 or not 0 < args.rattle <= 0.5:
        parser.error(f"--num-structures={args.num_structures} must be >= 1 and --rattle={args.rattle} in (0, 0.5] Å")

    import numpy as np
    from pymatgen.core import Structure

    from mattergen_lab.evaluation.relax import get_relaxer
    from mattergen_lab.evaluation.saddles import saddle_check, saddle_summary

    machine = machine_info()
    print(machine_line(machine), flush=True)
    with table.open() as f:
        runs = [r for r in csv.DictReader(f) if r.get("energy_above_hull")][: args.num_structures]
    relaxer = get_relaxer(args.relaxer)
    rng = np.random.default_rng(args.seed)
    rows, start = [], time.perf_counter()
    for r in runs:
        path = campaign / "relaxed" / f"{r['id']}.cif"
        if not path.is_file():
            continue
        check = saddle_check(Structure.from_file(path), relaxer, rattle=args.rattle, rng=rng)
        row = {"id": r["id"], "formula": r["formula"], "e_above_hull": float(r["energy_above_hull"]),
               "de": check.de_per_atom, "group_before": check.group_before, "group_after": check.group_after,
               "status_before": check.status_before, "status_after": check.status_after}
        rows.append(row)
        print(f"{row['id']:10s} {row['formula']:20s} E_hull {row['e_above_hull']:7.3f}  ΔE {1000 * row['de']:8.1f} meV/atom  "
              f"group {row['group_before']} → {row['group_after']}  ({check.status_before}, {check.status_after})", flush=True)
    summary = saddle_summary(rows)
    record = {"benchmark": "bench_saddles", "campaign": str(campaign), "rattle_angstrom": args.rattle, "seed": args.seed,
              "relaxer": relaxer.protocol(), "machine": machine, "seconds": round(time.perf_counter() - start, 1),
              "summary": summary, "rows": rows}
    path = write_json(args.out, "saddles", record)
    print(markdown(str(campaign), summary))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
