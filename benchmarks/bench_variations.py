"""How close variations stay to their parent (issue #28.5): for N MP-20 test crystals, K variations each at every
strength t0, sampled with the bundled base model (its recommended 200-step schedule, of which a variation runs the
steps at or below t0)::

    python benchmarks/bench_variations.py --num-parents 32 --variations 4 --strengths 0.1,0.3,0.6 \\
        --out runs/bench_variations [--relax]

Per strength: the share of variations with the parent's formula, the share that match the parent as generated
(MatterGen's ordered StructureMatcher, ``evaluation.matching.structures_match(..., matcher="ordered")``), the median
over variations of the largest site displacement from the parent (Å, site by site: a variation keeps the parent's
site order and cell basis; variations with the parent's formula only), and the sampling seconds per crystal. With
``--relax`` the parents and the variations are also relaxed with CHGNet (``RelaxConfig(max_steps=300,
max_seconds=60)``) and the share whose relaxed structure matches the relaxed parent is added. Energies above the
hull (new *and stable*) are not measured here. Every variation's space group (spglib at 0.1 Å) is compared with the
parent's: the share that keeps it. ``--keep-symmetry`` samples the symmetric variations (``symmetry="parent"``: the
parent symmetrised into its Wyckoff template, in its primitive cell), matched and measured against that symmetrised
parent (whose site order they keep).

Parents: ``--num-parents`` rows of ``mp_20/test.csv`` drawn with ``--seed``; parent ``i`` is varied with seed ``i``
at every strength. Results are appended to ``OUT/rows.jsonl`` as each (parent, strength) finishes, so a rerun of the
same command resumes; ``OUT/variations.json`` and ``OUT/variations.md`` hold the table. The shared flags (``--out``,
``--steps``, ``--threads``) are those of ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _common import REQUIRED, add_common_arguments, machine_info, set_threads, write_json


def parse_strengths(text: str) -> list[float]:
    """``"0.1,0.3,0.6"`` -> ``[0.1, 0.3, 0.6]``; ``ValueError`` names a value outside (0, 1]."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--strengths {text!r}: {part!r} is not a number") from None
        if not 0 < value <= 1:
            raise ValueError(f"--strengths {text!r}: {value} is outside (0, 1]")
        out.append(value)
    if not out:
        raise ValueError(f"--strengths {text!r} names no strength")
    return out


def max_displacement(structure: Any, parent: Any, sites: list[int] | None = None, cell: Any = None) -> float:
    """Largest distance (Å, in the parent's cell or ``cell``) between a site (of ``sites``; all by default) and the
    same site of the parent."""
    d = (np.asarray(structure.frac_coords) - np.asarray(parent.frac_coords) + 0.5) % 1.0 - 0.5
    if sites is not None:
        d = d[sites]
    return float(np.linalg.norm(d @ (parent.lattice.matrix if cell is None else cell), axis=1).max())


def space_group(structure: Any) -> int:
    """spglib's space group at the symmetry metrics' 0.1 Å (-1 where spglib cannot analyse the crystal)."""
    from mattergen_lab.evaluation.symmetry_report import generated_space_groups

    return int(generated_space_groups([structure])[0])


def fixed_sites_move(generated: Any, relaxed: Any, sites: list[int]) -> float:
    """Largest distance (Å, in the relaxed cell) any of ``sites`` moved in relaxation. The relaxer works on the
    Niggli-reduced cell (``RelaxConfig.niggli``), whose basis may differ from the generated one by axis signs and
    order, so the generated crystal is compared in that same reduced cell, site by site."""
    before = generated.get_reduced_structure("niggli")
    return max_displacement(relaxed, before, sites, cell=relaxed.lattice.matrix)


def pick_parents(data_dir: Path, n: int, seed: int) -> list[tuple[str, Any]]:
    """``n`` (material id, Structure) pairs of MP-20's test split, drawn with ``seed``."""
    from mattergen_lab.structure_io import structure_from_cif

    csv.field_size_limit(1 << 26)
    with open(data_dir / "mp_20" / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked = random.Random(seed).sample(range(len(rows)), n)
    return [(rows[i]["material_id"], structure_from_cif(rows[i]["cif"], name=rows[i]["material_id"], primitive=False))
            for i in picked]


def summarize(rows: list[dict[str, Any]], strengths: list[float], relax: bool) -> list[dict[str, Any]]:
    table = []
    for t0 in strengths:
        mine = [r for r in rows if r["strength"] == t0]
        items = [v for r in mine for v in r["variations"]]
        n = len(items)
        if not n:
            continue
        row = {"strength": t0, "parents": len(mine), "variations": n,
               "same_formula_pct": 100 * sum(v["same_formula"] for v in items) / n,
               "match_pct": 100 * sum(v["match"] for v in items) / n,
               "median_max_displacement_A": statistics.median([v["max_displacement"] for v in items if v["same_formula"]]
                                                              or [float("nan")]),
               "seconds_per_crystal": sum(r["seconds"] for r in mine) / n,
               "kept_group_pct": 100 * sum(v.get("space_group") == r.get("parent_space_group")
                                           for r in mine for v in r["variations"]) / n}
        if relax:
            done = [v for v in items if v.get("relaxed_match") is not None]
            row["relaxed_match_pct"] = 100 * sum(v["relaxed_match"] for v in done) / max(len(done), 1)
            row["relaxed"] = len(done)
            moves = [v["fixed_sites_move"] for v in items if v.get("fixed_sites_move") is not None]
            if moves:
                row["fixed_sites_relax_move_A"] = statistics.median(moves)
                row["fixed_sites_relax_move_p90_A"] = float(np.percentile(moves, 90))
        table.append(row)
    return table


def markdown(table: list[dict[str, Any]], relax: bool) -> str:
    head = "| t0 | parents | variations | parent's formula | match parent (as generated) |"
    line = "|---|---|---|---|---|"
    if relax:
        head += " match parent (both relaxed) |"
        line += "---|"
    head += " keeps the parent's space group | median max displacement | s / crystal |"
    line += "---|---|---|"
    if table and "new_and_stable_pct" in table[0]:
        head += " stable | new and stable |"
        line += "---|---|"
    out = [head, line]
    for r in table:
        cells = [f"{r['strength']:g}", str(r["parents"]), str(r["variations"]), f"{r['same_formula_pct']:.0f} %",
                 f"{r['match_pct']:.0f} %"]
        if relax:
            cells.append(f"{r['relaxed_match_pct']:.0f} % (of {r['relaxed']})")
        cells += [f"{r.get('kept_group_pct', float('nan')):.0f} %", f"{r['median_max_displacement_A']:.2f} Å",
                  f"{r['seconds_per_crystal']:.2f}"]
        if "new_and_stable_pct" in r:
            cells += [f"{r['stable_pct']:.0f} %", f"{r['new_and_stable_pct']:.0f} % (of {r['evaluated']})"]
        if "fixed_sites_relax_move_A" in r:
            cells.append(f"fixed sites' largest move in relaxation: median {r['fixed_sites_relax_move_A']:.2f} Å, "
                         f"90th percentile {r['fixed_sites_relax_move_p90_A']:.2f} Å")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def add_new_and_stable(table: list[dict[str, Any]], out: Path) -> None:
    """Relax and score every saved variation (``OUT/variations/*.cif``) with the library's evaluation (CHGNet, MP-20
    hull, novelty against MP-20, disordered matcher; resumable in ``OUT/evaluation``) and add, per strength, the
    share that is new (no MP-20 match, its parent included) and stable (E_hull ≤ the library's threshold)."""
    from pymatgen.core import Structure

    from mattergen_lab.evaluation.evaluate import evaluate_structures
    from mattergen_lab.evaluation.relax import RelaxConfig

    paths = sorted((out / "variations").glob("*.cif"))
    ids = [p.stem for p in paths]
    result = evaluate_structures([Structure.from_file(str(p)) for p in paths], ids=ids, relaxer="chgnet",
                                 relax_config=RelaxConfig(max_steps=200, max_seconds=60.0), out_dir=out / "evaluation")
    frame = result.table.set_index("id")
    for row in table:
        mine = [i for i in ids if i.split("_t")[-1].startswith(f"{row['strength']:g}_")]
        new_stable = [bool(frame.loc[i, "is_novel"]) and bool(frame.loc[i, "stable"]) for i in mine]
        row["new_and_stable_pct"] = 100 * sum(new_stable) / max(len(mine), 1)
        row["stable_pct"] = 100 * sum(bool(frame.loc[i, "stable"]) for i in mine) / max(len(mine), 1)
        row["evaluated"] = len(mine)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, out=REQUIRED, steps=None, threads=1,
                         help={"steps": "the full schedule's steps (default: the checkpoint's)"})
    p.add_argument("--num-parents", type=int, default=32)
    p.add_argument("--variations", type=int, default=4, help="variations per parent and strength")
    p.add_argument("--strengths", default="0.1,0.3,0.6")
    p.add_argument("--checkpoint", default="mgl_mp20_small")
    p.add_argument("--seed", type=int, default=0, help="which test crystals are the parents")
    p.add_argument("--relax", action="store_true", help="also relax parents and variations with CHGNet (slow)")
    p.add_argument("--fix-sites", default=None,
                   help="inpainting: keep these sites of every parent (e.g. anions); with --relax the median over "
                        "variations of the fixed sites' largest move in relaxation is added")
    p.add_argument("--evaluate", action="store_true",
                   help="also relax and score every variation with the library's evaluation (CHGNet, MP-20 hull and "
                        "novelty, 200 steps / 60 s): the share that is new and stable (slow)")
    p.add_argument("--keep-symmetry", action="store_true",
                   help="symmetric variations (symmetry='parent'), measured against the symmetrised parent")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    strengths = parse_strengths(args.strengths)

    from mattergen_lab import SamplingPipeline, SamplingRequest
    from mattergen_lab.data.paths import default_data_dir
    from mattergen_lab.evaluation.matching import structures_match

    set_threads(args.threads)
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "rows.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["material_id"], r["strength"]) for r in rows}
    relaxer = None
    if args.relax:
        from mattergen_lab.evaluation.relax import RelaxConfig, get_relaxer

        relaxer = get_relaxer("chgnet", config=RelaxConfig(max_steps=300, max_seconds=60.0))
    for i, (mid, structure) in enumerate(pick_parents(default_data_dir(), args.num_parents, args.seed)):
        relaxed_parent = None
        for t0 in strengths:
            if (mid, t0) in done:
                continue
            try:
                request = SamplingRequest(checkpoint=args.checkpoint, num_samples=args.variations,
                                          batch_size=args.variations, num_steps=args.steps, seed=i, parent=structure,
                                          strength=t0, symmetry="parent" if args.keep_symmetry else None,
                                          fix_sites=args.fix_sites)
            except ValueError as exc:  # e.g. --fix-sites anions on an intermetallic: this parent has none
                if args.fix_sites is None:
                    raise
                print(f"{i + 1}/{args.num_parents} {mid}: skipped ({exc})", flush=True)
                continue
            start = time.perf_counter()
            variations = SamplingPipeline.for_request(request)(request)
            seconds = time.perf_counter() - start
            v_ = request.variation  # the symmetrised parent is the one a symmetric variation keeps its sites of
            parent = request.parent.structure if v_.symmetric is None else v_.symmetric.to_structures()[0]
            items = []
            for v in variations:
                same = v.composition.reduced_formula == parent.composition.reduced_formula
                item = {"formula": v.composition.reduced_formula, "same_formula": same,
                        "match": bool(structures_match(v, parent, matcher="ordered")),
                        "max_displacement": max_displacement(v, parent), "space_group": space_group(v)}
                if relaxer is not None:
                    if relaxed_parent is None:
                        relaxed_parent = relaxer.relax(parent).structure or parent
                    result = relaxer.relax(v)
                    item["relax_status"] = result.status
                    if request.fix_sites and result.structure is not None:
                        item["fixed_sites_move"] = fixed_sites_move(v, result.structure, list(request.fix_sites))
                    item["relaxed_match"] = (bool(structures_match(result.structure, relaxed_parent, matcher="ordered"))
                                             if result.structure is not None else False)
                items.append(item)
                if args.evaluate:  # kept for the evaluation at the end (one batched run, resumable in OUT/evaluation)
                    (out / "variations").mkdir(exist_ok=True)
                    v.to(filename=str(out / "variations" / f"{mid}_t{t0:g}_{len(items) - 1}.cif"))
            row = {"material_id": mid, "formula": parent.composition.reduced_formula, "num_atoms": len(parent),
                   "strength": t0, "seconds": seconds, "variations": items,
                   "parent_space_group": space_group(request.parent.structure)}
            rows.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{i + 1}/{args.num_parents} {mid} {row['formula']} t0={t0}: "
                  f"{sum(v['match'] for v in items)}/{len(items)} match", flush=True)
    table = summarize(rows, strengths, args.relax)
    if args.evaluate:
        add_new_and_stable(table, out)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    write_json(out, "variations", {"settings": settings, "machine": machine_info(), "table": table}, indent=1)
    (out / "variations.md").write_text(markdown(table, args.relax))
    print(markdown(table, args.relax))
    return 0


if __name__ == "__main__":
    sys.exit(main())
