"""Per-step cost of the symmetric mode against the plain sampler, on the same batch of atom counts.

Draws ``--batch-size`` MP-20 templates (``SymmetrySpec("mp20")``, seeded), then times ``--steps`` predictor-corrector
steps of the bundled base twice over, alternating: the plain sampler on the templates' atom counts, and the
symmetric mode on the templates themselves (constraint from t = 1, so every step is projected). The network sees
the same number of atoms in both, so the difference is the constraint's own cost (projections, orbit averages,
logit pooling)::

    OMP_NUM_THREADS=1 python benchmarks/bench_symmetry_step.py --batch-size 16 --steps 20

Prints one JSON line per run and a summary with the ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="mgl_mp20_small")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from mattergen_lab.sampling.pipeline import SamplingPipeline
    from mattergen_lab.symmetry import SymmetryConstraint
    from mattergen_lab.symmetry.templates import SymmetrySpec

    pipe = SamplingPipeline.from_checkpoint(args.checkpoint, num_steps=args.steps)
    templates = SymmetrySpec(source="mp20").draw(args.batch_size, torch.Generator().manual_seed(args.seed))
    counts = [t.primitive_atoms for t in templates]  # the sampled (primitive) cells

    def run(symmetric: bool) -> float:
        generator = torch.Generator().manual_seed(args.seed)
        kwargs = {"symmetry": SymmetryConstraint(templates, start=1.0)} if symmetric else {}
        t0 = time.perf_counter()
        for _ in pipe.sampler.iter_steps(counts, generator=generator, every=0, **kwargs):
            pass
        return (time.perf_counter() - t0) / args.steps

    run(False)  # warm-up (graph code paths, allocator)
    times: dict[str, list[float]] = {"plain": [], "symmetric": []}
    for _ in range(args.repeats):
        for mode in ("plain", "symmetric"):
            times[mode].append(run(mode == "symmetric"))
            print(json.dumps({"mode": mode, "s_per_step": round(times[mode][-1], 4)}), flush=True)
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({
        "checkpoint": args.checkpoint, "batch_size": args.batch_size, "atoms": sum(counts), "steps": args.steps,
        "s_per_step_plain": round(best["plain"], 4), "s_per_step_symmetric": round(best["symmetric"], 4),
        "ratio": round(best["symmetric"] / best["plain"], 3),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
    }))


if __name__ == "__main__":
    main()
