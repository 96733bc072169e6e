"""Relaxation throughput on CPU for ≤ 20-atom crystals (the evaluation's cost driver).

Takes MP-20 test structures with at most ``--max-atoms`` atoms, perturbs them the way generated crystals
are off (every atom rattled by ``--rattle`` Å, the cell strained by up to ``--strain``), and relaxes them with
the evaluation protocol (FIRE, fmax 0.05 eV/Å, FrechetCellFilter, step cap 500):

    python benchmarks/bench_relax.py --relaxer chgnet --num 16

Prints one JSON line: structures, relaxations per second, mean steps, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
import warnings

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--relaxer", default="chgnet")
    parser.add_argument("--num", type=int, default=16)
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--rattle", type=float, default=0.1, help="Å")
    parser.add_argument("--strain", type=float, default=0.03)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)

    from mattergen_lab.data import load_mp20
    from mattergen_lab.evaluation import get_relaxer

    ds = load_mp20("test", data_dir=args.data_dir)
    rng = np.random.default_rng(0)
    np.random.seed(0)  # Structure.perturb draws from numpy's global generator
    picks = [i for i in rng.permutation(len(ds)) if ds.num_atoms[i] <= args.max_atoms][: args.num]
    structures = ds.get_batch(picks, dtype=torch.float64).to_structures()
    for s in structures:
        s.perturb(args.rattle)
        s.apply_strain(rng.uniform(-args.strain, args.strain, 3).tolist())

    relaxer = get_relaxer(args.relaxer)
    relaxer.relax(structures[0])  # warm-up (model load, first graph)
    t0 = time.perf_counter()
    results = relaxer.relax_many(structures)
    dt = time.perf_counter() - t0
    print(json.dumps({
        "relaxer": relaxer.version,
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
        "structures": len(structures),
        "mean_atoms": float(np.mean([len(s) for s in structures])),
        "seconds": round(dt, 1),
        "relaxations_per_s": round(len(structures) / dt, 3),
        "s_per_relaxation": round(dt / len(structures), 2),
        "mean_steps": float(np.mean([r.steps for r in results])),
        "statuses": {s: sum(r.status == s for r in results) for s in {r.status for r in results}},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }))


if __name__ == "__main__":
    main()
