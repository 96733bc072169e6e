"""Sampling throughput: seconds per structure at 1000 steps and at fewer steps, plus peak memory.

Two modes:

* ``--checkpoint DIR``: run the real predictor-corrector sampler on a trained checkpoint (untrained
  weights let the lattice drift to huge cells with almost no edges, which times an unrealistically
  cheap graph), e.g. the quickstart model:

      python benchmarks/bench_sampling.py --checkpoint runs/quickstart/best --batch-size 16 --steps 1000 200 50

* ``--preset NAME``: estimate from the cost of one network evaluation on a realistic batch (random
  crystals at the training density): a step costs two evaluations (corrector + predictor), so
  ``s/structure ≈ 2 · steps · t_eval / batch``.

* ``--user CHECKPOINT``: what a user's call costs, ``mattergen_lab.sample(CHECKPOINT, 16, batch_size=16)`` at the
  checkpoint's recommended steps after a 2-step warm-up call, each in a fresh process per (code, threads, round),
  alternated: ``--threads 1 2`` (OMP_NUM_THREADS of the process), ``--rounds 2``, and ``--code DIR …`` to time source
  trees side by side (``git archive <commit> | tar -x -C /tmp/before``: before and after in one run). Each row has
  the wall time, the process's CPU time (threads that spin show up there) and the load average around it::

      python benchmarks/bench_sampling.py --user mgl_mp20_small --threads 1 2 --rounds 2 --code /tmp/before .

* ``--floor CHECKPOINT``: one network evaluation of a real mid-trajectory batch of 16 against its compute floor:
  FLOPs per evaluation (torch's FlopCounterMode: the matrix products) ÷ the FLOP/s of a plain float32 matmul on the
  same threads, for 1 and 2 threads, in each ``--code`` tree.

Every mode prints one JSON line per row; with ``--out DIR`` the rows also go to ``OUT/sampling.json``. The shared
flags (``--out``, ``--batch-size``, ``--steps``, ``--threads``, ``--device``) are those of ``benchmarks/_common.py``;
here ``--steps`` and ``--threads`` take several values.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import add_common_arguments, machine_info, machine_line, write_json


def real(checkpoint: str, batch_size: int, steps: list[int], device: str) -> list[dict]:
    from mattergen_lab.sampling.api import load_sampler

    rows = []
    for n in steps:
        sampler, info = load_sampler(checkpoint, num_steps=n, device=device)
        t0 = time.perf_counter()
        sampler.sample(batch_size, batch_size=batch_size, num_atoms=info.num_atoms, generator=torch.Generator(device).manual_seed(0), device=device)
        dt = time.perf_counter() - t0
        rows.append({"mode": "sampler", "checkpoint": checkpoint, "steps": n, "batch_size": batch_size,
                     "s_total": round(dt, 2), "s_per_structure": round(dt / batch_size, 3)})
    return rows


def estimate(preset: str, batch_size: int, steps: list[int], device: str, repeats: int = 3) -> list[dict]:
    from mattergen_lab.constants import ALEX_MP_20_NUM_ATOMS
    from mattergen_lab.model.score_model import ScoreModel
    from mattergen_lab.testing import random_crystal_batch

    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor(list(ALEX_MP_20_NUM_ATOMS.values()))
    sizes = (torch.multinomial(probs, batch_size, replacement=True, generator=gen) + 1).tolist()
    batch = random_crystal_batch(sizes, generator=gen, dtype=torch.float32).to(device)
    model = ScoreModel.from_preset(preset).to(device).eval()
    t = torch.full((batch_size,), 0.5, device=device)
    with torch.no_grad():
        model(batch, t)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(batch, t)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    t_eval = (time.perf_counter() - t0) / repeats
    return [{"mode": "estimate", "preset": preset, "steps": n, "batch_size": batch_size, "s_per_eval": round(t_eval, 4),
             "s_per_structure": round(2 * n * t_eval / batch_size, 3)} for n in steps]


def user_call(checkpoint: str, batch_size: int) -> dict:
    """``mattergen_lab.sample(checkpoint, batch_size, batch_size=batch_size)`` after a 2-step warm-up (run in a child)."""
    import mattergen_lab

    mattergen_lab.sample(checkpoint, batch_size, batch_size=batch_size, num_steps=2, seed=1)  # load and warm up
    load0, cpu0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    crystals = mattergen_lab.sample(checkpoint, batch_size, batch_size=batch_size, seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"s": round(wall, 2), "cpu_s": round(cpu, 2), "threads": torch.get_num_threads(), "n": len(crystals),
            "load1_before": round(load0, 2), "load1_after": round(os.getloadavg()[0], 2),
            "formulas": ",".join(c.composition.reduced_formula for c in crystals[:3])}


def floor(checkpoint: str, batch_size: int, repeats: int = 10) -> dict:
    """Per-evaluation time of a mid-trajectory batch against FLOPs ÷ plain-matmul FLOP/s (run in a child)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mattergen_lab.sampling.api import load_sampler

    sampler, info = load_sampler(checkpoint, num_steps=20)
    counts = info.num_atoms.sample(batch_size, generator=torch.Generator().manual_seed(0))
    frames = list(sampler.iter_steps(counts, generator=torch.Generator().manual_seed(0), every=1))
    batches = [(frames[i].batch, torch.full((batch_size,), frames[i].t)) for i in (5, 10, 15)]  # t = 0.75, 0.5, 0.25
    model = sampler.model
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            for b, t in batches:
                model(b, t)
        flops = counter.get_total_flops() / len(batches)
        for b, t in batches:
            model(b, t)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            for b, t in batches:
                model(b, t)
        per_eval = (time.perf_counter() - t0) / (repeats * len(batches))
        cpu_per_eval = (time.process_time() - cpu0) / (repeats * len(batches))
        a, w = torch.randn(2048, 2048), torch.randn(2048, 2048)
        a @ w
        t0 = time.perf_counter()
        for _ in range(10):
            a @ w
        matmul = 2 * 2048**3 * 10 / (time.perf_counter() - t0)
    floor_s = flops / matmul
    return {"threads": torch.get_num_threads(), "atoms": int(batches[1][0].num_atoms.sum()),
            "gflop_per_eval": round(flops / 1e9, 3), "matmul_gflops": round(matmul / 1e9, 1),
            "ms_per_eval": round(1000 * per_eval, 1), "cpu_ms_per_eval": round(1000 * cpu_per_eval, 1), "floor_ms": round(1000 * floor_s, 1),
            "x_floor": round(per_eval / floor_s, 2), "load1": round(os.getloadavg()[0], 2)}


def alternate(mode: str, checkpoint: str, batch_size: int, threads: list[int], rounds: int, code: list[str]) -> list[dict]:
    """Each (round, threads, code) in a fresh process with OMP_NUM_THREADS and PYTHONPATH set, printed as it ends."""
    rows = []
    for r in range(rounds):
        for n in threads:
            for tree in code:
                env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
                env.pop("OMP_NUM_THREADS", None)
                if n:  # 0: unset, so the code under test chooses
                    env["OMP_NUM_THREADS"] = str(n)
                cmd = [sys.executable, __file__, f"--{mode}", checkpoint, "--batch-size", str(batch_size), "--child"]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tree)
                row = {"round": r, "code": tree, "OMP_NUM_THREADS": n or "unset", **json.loads(out.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, out=None, batch_size=16, steps=[1000, 200], threads=[1, 2], device="cpu",
                         help={"out": "folder for sampling.json (default: print only)",
                               "steps": "sampler step counts to time",
                               "threads": "--user/--floor: OMP_NUM_THREADS of each child process; 0: unset"})
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--preset", nargs="*", default=[])
    parser.add_argument("--user", metavar="CHECKPOINT", help="time mattergen_lab.sample() as a user calls it")
    parser.add_argument("--floor", metavar="CHECKPOINT", help="per-evaluation time against the compute floor")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--code", nargs="+", default=["."], help="source trees to time side by side (PYTHONPATH)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.user or args.floor:
        mode, checkpoint = ("user", args.user) if args.user else ("floor", args.floor)
        if args.child:
            print(json.dumps(user_call(checkpoint, args.batch_size) if args.user else floor(checkpoint, args.batch_size)))
            return
        info = machine_info()
        print(machine_line(info))
        rows = alternate(mode, checkpoint, args.batch_size, args.threads, args.rounds, args.code)
    else:
        info = machine_info(args.device)
        print(machine_line(info))
        rows = real(args.checkpoint, args.batch_size, args.steps, args.device) if args.checkpoint else []
        for preset in args.preset:
            rows += estimate(preset, args.batch_size, args.steps, args.device)
        for row in rows:
            print(json.dumps(row))
        rows.append({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
        print(json.dumps(rows[-1]))
    if args.out:
        print(f"wrote {write_json(args.out, 'sampling', {'benchmark': 'bench_sampling', 'settings': vars(args), 'machine': info, 'rows': rows})}")


if __name__ == "__main__":
    main()
