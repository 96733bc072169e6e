"""Relaxation throughput for ≤ 20-atom crystals (the evaluation's cost driver): ASE one at a time vs batched.

Takes MP-20 test structures with at most ``--max-atoms`` atoms, perturbs them the way generated crystals are off
(every atom rattled by ``--rattle`` Å, the cell strained by up to ``--strain``), and relaxes the same crystals
with both engines under the evaluation protocol (FIRE, fmax 0.05 eV/Å, Fréchet cell filter, step cap 500):

    python benchmarks/bench_relax.py --num 64                  # both engines, each in its own process
    python benchmarks/bench_relax.py --num 16 --engine ase     # one engine

Each engine runs in a fresh subprocess, so its peak RSS is its own. Prints one JSON line per engine and a
summary: relaxations/s, the speed-up, and agreement (E_hull per structure, stable flag at 0.1 eV/atom on the
MP-20 hull) over the crystals both engines converged. The 1-minute load average is recorded: on our 2-core
box other jobs (training) often share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


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

    torch.set_num_threads(args.threads)
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
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="both", choices=["both", "ase", "torchsim"])
    parser.add_argument("--relaxer", default="chgnet")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--rattle", type=float, default=0.1, help="Å")
    parser.add_argument("--strain", type=float, default=0.03)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-memory-scaler", type=float, default=None, help="batch limit (torch-sim's metric)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.engine != "both":
        out = run_engine(args)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out))
        print(json.dumps({k: v for k, v in out.items() if k != "per_structure"}), flush=True)
        return
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("ase", "torchsim"):
            path = Path(tmp) / f"{engine}.json"
            argv, skip = [], False
            for a in sys.argv[1:]:  # drop "--engine X" / "--engine=X"
                if skip or a.startswith("--engine"):
                    skip = a == "--engine"
                    continue
                argv.append(a)
            subprocess.run([sys.executable, __file__, *argv, "--engine", engine, "--json-out", str(path)], check=True)
            runs[engine] = json.loads(path.read_text())
    print(json.dumps({
        "speedup": round(runs["torchsim"]["relaxations_per_s"] / runs["ase"]["relaxations_per_s"], 2),
        **agreement(args, runs),
    }))


if __name__ == "__main__":
    main()
