"""Campaign scaling: one fixed campaign on a local Ray with 1 worker, then with 2 (or ``--workers``).

    python benchmarks/bench_campaign.py --out runs/bench_campaign              # 1 vs 2 workers
    python benchmarks/bench_campaign.py --workers 1 2 4 8 --num-samples 64     # a bigger box

The campaign: ``--num-samples`` unconditional crystals of ``--checkpoint`` at ``--steps`` steps in sampling
tasks of ``--batch-size``, each relaxed with CHGNet (FIRE, fmax 0.05, at most ``--relax-max-steps`` steps) in
evaluation tasks of 2 structures; every task is single-threaded. Each worker count runs in a fresh folder, with
Ray's start-up included in the wall time (it is what a user waits for). The results must be identical across
worker counts (same energies, same table), and the script checks that.

Run it with nothing else busy on the machine: the ratio is meaningless when another job shares the cores.
Writes ``OUT/campaign_scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _common import add_common_arguments, machine_info, machine_line, write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, out="runs/bench_campaign", num_samples=16, batch_size=4, steps=100,
                         help={"batch_size": "crystals per sampling task"})
    parser.add_argument("--checkpoint", default="mgl_mp20_small")
    parser.add_argument("--relax-max-steps", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    info = machine_info()
    print(machine_line(info), flush=True)

    import pandas as pd

    from mattergen_lab.campaign import run_campaign

    spec = {
        "checkpoint": args.checkpoint, "num_samples": args.num_samples, "batch_size": args.batch_size,
        "num_steps": args.steps, "seed": 0,
        "evaluate": {"relaxer": "chgnet", "batch_size": 2, "fmax": 0.05, "max_steps": args.relax_max_steps},
    }
    out = Path(args.out)
    rows, tables = [], {}
    for n in args.workers:
        folder = out / f"workers_{n}"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        result = run_campaign(spec, folder, num_cpus=n, progress=False)
        wall = time.perf_counter() - t0
        manifest = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
        task_s = sum(r.get("seconds", 0.0) for r in manifest)
        rows.append({"workers": n, "wall_s": round(wall, 1), "task_seconds": round(task_s, 1),
                     "crystals_per_min": round(60 * args.num_samples / wall, 2), "tasks": len(manifest)})
        tables[n] = pd.read_csv(folder / "per_structure.csv").drop(columns=["relax_seconds"])
        print(f"{n} worker(s): {wall:.1f} s wall, {task_s:.1f} s of task time, {len(manifest)} tasks", flush=True)
    base = rows[0]["wall_s"]
    for r in rows:
        r["speedup_vs_first"] = round(base / r["wall_s"], 2)
    first = args.workers[0]
    identical = {n: bool(tables[n].equals(tables[first])) for n in args.workers}
    record = {
        "benchmark": "bench_campaign", "spec": spec, "results": rows, "identical_tables": identical,
        "machine": info,
    }
    write_json(out, "campaign_scaling", record)
    print("\n| workers | wall (s) | task time (s) | crystals/min | speed-up |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['wall_s']} | {r['task_seconds']} | {r['crystals_per_min']} | {r['speedup_vs_first']}× |")
    print(f"\nidentical per-structure tables across worker counts: {identical}")
    if not all(identical.values()):
        raise SystemExit("the results differ between worker counts")


if __name__ == "__main__":
    main()
