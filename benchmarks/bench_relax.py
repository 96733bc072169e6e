"""Relaxation throughput for ≤ 20-atom crystals (the evaluation's cost driver): ASE one at a time vs batched.

Takes MP-20 test structures with at most ``--max-atoms`` atoms, perturbs them the way generated crystals are off
(every atom rattled by ``--rattle`` Å, the cell strained by up to ``--strain``), and relaxes the same crystals
with both engines under the evaluation protocol (FIRE, fmax 0.05 eV/Å, Fréchet cell filter, step cap 500):

    python benchmarks/bench_relax.py --num 64                  # both engines, each in its own process
    python benchmarks/bench_relax.py --num 16 --engine ase     # one engine

Each engine runs in a fresh subprocess, so its peak RSS is its own. Prints one JSON line per engine and a
summary: relaxations/s, the speed-up, and agreement (E_hull per structure, stable flag at 0.1 eV/atom on the
MP-20 hull) over the crystals both engines converged. The 1-minute load average is recorded: on our 2-core
box other jobs (training) often share the cores. With ``--out DIR`` each engine's run (every structure's status,
energy and steps) goes to ``OUT/relax_<engine>.json`` and the comparison to ``OUT/relax.json``. The shared flags
(``--out``, ``--threads``, ``--device``) are those of ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import add_common_arguments, machine_info, read_json, set_threads, write_json


def crystals(args: argparse.Namespace) -> list:
    from mattergen_lab.data import load_mp20

    ds = load_mp20("test", data_dir=args.data_dir)
    rng = np.random.default_rng(0)
    picks = [i for i in rng.permutation(len(ds)) if ds.num_atoms[i] <= args.max_atoms][: args.num]
    structures = ds.get_batch(picks, dtype=torch.float64).to_structures()
    for s in structures:
        s.perturb(args.rattle, seed=int(rng.integers(2**31)))  # seeded: both engine processes get the same crystals
        s.apply_strain(rng.uniform(-args.strain, args.strain, 3).tolist())
    return structures


def run_engine(args: argparse.Namespace) -> dict:
    from mattergen_lab.evaluation import get_relaxer
    from mattergen_lab.evaluation.batched_relax import get_batched_relaxer
    from mattergen_lab.evaluation.relax import RelaxConfig

    set_threads(args.threads)
    structures = crystals(args)
    relaxer = get_relaxer(args.relaxer, device=args.device, config=RelaxConfig(max_atoms=max(200, args.max_atoms)))
    if args.engine == "torchsim":
        relaxer = get_batched_relaxer(relaxer, device=args.device, max_memory_scaler=args.max_memory_scaler)
    relaxer.relax(structures[0])  # warm-up (model load, first graph), not timed
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    results = relaxer.relax_many(structures)
    dt = time.perf_counter() - t0
    return {
        "engine": args.engine,
        "relaxer": relaxer.version,
        "machine": machine_info(args.device),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "structures": len(structures),
        "mean_atoms": float(np.mean([len(s) for s in structures])),
        "seconds": round(dt, 1),
        "relaxations_per_s": round(len(structures) / dt, 3),
        "mean_steps": float(np.mean([r.steps for r in results])),
        "statuses": {s: sum(r.status == s for r in results) for s in sorted({r.status for r in results})},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "per_structure": [{"status": r.status, "energy": r.energy, "steps": r.steps} for r in results],
    }


def agreement(args: argparse.Namespace, runs: dict[str, dict]) -> dict:
    from pymatgen.entries.computed_entries import ComputedEntry

    from mattergen_lab.evaluation.reference import load_reference

    hull = load_reference("mp20", data_dir=args.data_dir)
    structures = crystals(args)
    a, b = (runs[k]["per_structure"] for k in ("ase", "torchsim"))
    diffs, same_flag, same_status = [], 0, sum(x["status"] == y["status"] for x, y in zip(a, b))
    for s, x, y in zip(structures, a, b):
        if x["status"] != "converged" or y["status"] != "converged":
            continue
        e = [hull.e_above_hull(ComputedEntry(s.composition, r["energy"])) for r in (x, y)]
        diffs.append(abs(e[0] - e[1]))
        same_flag += (e[0] <= 0.1) == (e[1] <= 0.1)
    diffs = np.array(diffs)
    return {
        "same_status": f"{same_status}/{len(a)}",
        "both_converged": len(diffs),
        "e_hull_within_0.01": f"{int((diffs < 0.01).sum())}/{len(diffs)}",
        "max_e_hull_diff": round(float(diffs.max()), 4) if len(diffs) else None,
        "same_stable_flag": f"{same_flag}/{len(diffs)}",
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, out=None, threads=2, device="cpu",
                         help={"out": "folder for relax_<engine>.json and relax.json (default: print only)"})
    parser.add_argument("--engine", default="both", choices=["both", "ase", "torchsim"])
    parser.add_argument("--relaxer", default="chgnet")
    parser.add_argument("--num", type=int, default=64, help="crystals relaxed")
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--rattle", type=float, default=0.1, help="Å")
    parser.add_argument("--strain", type=float, default=0.03)
    parser.add_argument("--max-memory-scaler", type=float, default=None, help="batch limit (torch-sim's metric)")
    parser.add_argument("--data-dir", default=None)
    return parser


def _without(argv: list[str], *flags: str) -> list[str]:
    """``argv`` without ``--flag VALUE`` / ``--flag=VALUE`` for each of ``flags``."""
    out, skip = [], False
    for a in argv:
        if skip or a.split("=", 1)[0] in flags:
            skip = not skip and a in flags
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    warnings.simplefilter("ignore")
    if args.engine != "both":
        out = run_engine(args)
        if args.out:
            write_json(args.out, f"relax_{args.engine}", out)
        print(json.dumps({k: v for k, v in out.items() if k != "per_structure"}), flush=True)
        return
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or tmp  # each engine in its own process writes its run there
        for engine in ("ase", "torchsim"):
            child = [*_without(argv, "--engine", "--out"), "--engine", engine, "--out", str(folder)]
            subprocess.run([sys.executable, __file__, *child], check=True)
            runs[engine] = read_json(Path(folder) / f"relax_{engine}.json")
    record = {
        "speedup": round(runs["torchsim"]["relaxations_per_s"] / runs["ase"]["relaxations_per_s"], 2),
        **agreement(args, runs),
    }
    print(json.dumps(record))
    if args.out:
        summaries = {k: {n: v for n, v in r.items() if n != "per_structure"} for k, r in runs.items()}
        write_json(args.out, "relax", {"benchmark": "bench_relax", "settings": vars(args), **record, "runs": summaries})


if __name__ == "__main__":
    main()
