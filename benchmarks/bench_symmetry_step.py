"""Per-step cost of the symmetric mode against the plain sampler, on the same batch of atom counts.

Draws ``--batch-size`` MP-20 templates (``SymmetrySpec("mp20")``, seeded), then times ``--steps`` predictor-corrector
steps of the bundled base twice over, alternating: the plain sampler on the templates' atom counts, and the
symmetric mode on the templates themselves (constraint from t = 1, so every step is projected). The network sees
the same number of atoms in both, so the difference is the constraint's own cost (projections, orbit averages,
logit pooling)::

    OMP_NUM_THREADS=1 python benchmarks/bench_symmetry_step.py --batch-size 16 --steps 20

Prints one JSON line per run and a summary with the ratio; with ``--out DIR`` the summary also goes to
``OUT/symmetry_step.json``. The shared flags (``--out``, ``--batch-size``, ``--steps``, ``--threads``) are those of
``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import add_common_arguments, machine_info, set_threads, write_json


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, out=None, batch_size=16, steps=20, threads=None,
                         help={"out": "folder for symmetry_step.json (default: print only)"})
    ap.add_argument("--checkpoint", default="mgl_mp20_small")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)

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
    summary = {
        "checkpoint": args.checkpoint, "batch_size": args.batch_size, "atoms": sum(counts), "steps": args.steps,
        "s_per_step_plain": round(best["plain"], 4), "s_per_step_symmetric": round(best["symmetric"], 4),
        "ratio": round(best["symmetric"] / best["plain"], 3), "machine": machine_info(),
    }
    print(json.dumps(summary))
    if args.out:
        write_json(args.out, "symmetry_step", {"benchmark": "bench_symmetry_step", **summary, "times": times})


if __name__ == "__main__":
    main()
