"""Sampling throughput: seconds per structure at 1000 steps and at fewer steps, plus peak memory.

Two modes:

* ``--checkpoint DIR``: run the real predictor-corrector sampler on a trained checkpoint (untrained
  weights let the lattice drift to huge cells with almost no edges, which times an unrealistically
  cheap graph), e.g. the quickstart model:

      python benchmarks/bench_sampling.py --checkpoint runs/quickstart/best --batch-size 16 --steps 1000 200 50

* ``--preset NAME``: estimate from the cost of one network evaluation on a realistic batch (random
  crystals at the training density): a step costs two evaluations (corrector + predictor), so
  ``s/structure ≈ 2 · steps · t_eval / batch``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--preset", nargs="*", default=[])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 200])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"# {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    rows = real(args.checkpoint, args.batch_size, args.steps, args.device) if args.checkpoint else []
    for preset in args.preset:
        rows += estimate(preset, args.batch_size, args.steps, args.device)
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
