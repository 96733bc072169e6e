"""Where one network evaluation of a CPU sampling step spends its time.

On ``--evals`` evaluations of a real mid-trajectory batch (``--batch`` crystals of the checkpoint at t = 0.75, 0.5,
0.25), torch.profiler's self CPU time grouped by kind of op, with the graph construction marked (the radius-graph
search, then cap, symmetrisation and triplets), and the fixed cost of an evaluation: the same network on one 2-atom
crystal, where every op is tiny, so its time is Python and per-op dispatch::

    OMP_NUM_THREADS=1 python benchmarks/profile_sampling.py --checkpoint mgl_mp20_small --batch-size 16

With ``--out DIR`` the figures also go to ``OUT/profile_sampling.json``. The shared flags (``--out``, ``--batch-size``,
formerly ``--batch``, which still works, and ``--threads``) are those of ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import collections
import os
import time

import torch
from _common import add_common_arguments, machine_info, set_threads, write_json

#: aten op -> kind (anything else: "other")
KINDS = {
    "aten::mm": "dense products", "aten::addmm": "dense products", "aten::bmm": "triplet products (bmm)",
    "aten::silu": "activations", "aten::silu_": "activations", "aten::exp": "radial basis exp",
    "aten::index": "gathers/scatters", "aten::index_select": "gathers/scatters", "aten::index_add_": "gathers/scatters",
    "aten::_index_put_impl_": "gathers/scatters", "aten::index_copy_": "gathers/scatters", "aten::cat": "concatenation",
    "aten::mul": "elementwise", "aten::mul_": "elementwise", "aten::add": "elementwise", "aten::add_": "elementwise",
    "aten::sub": "elementwise", "aten::div": "elementwise", "aten::fill_": "allocation and zero-fill",
    "aten::zeros": "allocation and zero-fill", "aten::empty": "allocation and zero-fill",
    "aten::sort": "sorts", "aten::nonzero": "nonzero",
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, out=None, batch_size=16, threads=None, aliases={"batch_size": ("--batch",)},
                         help={"out": "folder for profile_sampling.json (default: print only)"})
    ap.add_argument("--checkpoint", default="mgl_mp20_small")
    ap.add_argument("--evals", type=int, default=12)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)

    import mattergen_lab.model.gemnet as gemnet
    import mattergen_lab.model.graph as graph
    from mattergen_lab.sampling.api import load_sampler

    sampler, info = load_sampler(args.checkpoint, num_steps=20)
    counts = info.num_atoms.sample(args.batch_size, generator=torch.Generator().manual_seed(0))
    frames = list(sampler.iter_steps(counts, generator=torch.Generator().manual_seed(0), every=1))
    batches = [(frames[i].batch, torch.full((args.batch_size,), frames[i].t)) for i in (5, 10, 15)]
    model = sampler.model

    def marked(name, fn):
        def wrapper(*a, **k):
            with torch.profiler.record_function(name):
                return fn(*a, **k)
        return wrapper

    gemnet.build_graph = marked("graph (all)", graph.build_graph)
    graph._candidates_per_crystal = marked("graph: candidate search", graph._candidates_per_crystal)
    with torch.no_grad():
        for b, t in batches:
            model(b, t)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(args.evals):
            model(*batches[i % 3])
        cpu, wall = (time.process_time() - cpu0) / args.evals, (time.perf_counter() - wall0) / args.evals
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for i in range(args.evals):
                model(*batches[i % 3])
        tiny = (frames[10].batch[0:1], torch.full((1,), 0.5))
        one = sampler.diffusion.prior(torch.tensor([2]), generator=torch.Generator().manual_seed(0))
        one = one.replace(atom_types=torch.tensor([8, 12]), lattice=tiny[0].lattice)
        for _ in range(3):
            model(one, tiny[1])
        cpu_one0 = time.process_time()
        for _ in range(20):
            model(one, tiny[1])
        fixed = (time.process_time() - cpu_one0) / 20

    kinds: collections.Counter = collections.Counter()
    marks = {}
    for e in prof.key_averages():
        if e.key.startswith("graph"):
            marks[e.key] = e.cpu_time_total / 1e3 / args.evals
        elif e.key.startswith("aten::"):
            kinds[KINDS.get(e.key, "other ops")] += e.self_cpu_time_total / 1e3 / args.evals
    profiled = sum(kinds.values())
    print(f"# {args.checkpoint}, batch {args.batch_size} ({int(batches[1][0].num_atoms.sum())} atoms), "
          f"{torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.1f}: {1000 * cpu:.1f} ms CPU / "
          f"{1000 * wall:.1f} ms wall per evaluation (without the profiler)")
    print(f"fixed cost (the same network on one 2-atom crystal): {1000 * fixed:.1f} ms CPU per evaluation")
    for label in ("graph (all)", "graph: candidate search"):
        print(f"{label:<34} {marks.get(label, 0):7.2f} ms")
    print(f"self CPU time of the ops by kind (profiler; {profiled:.1f} ms per evaluation in all):")
    for kind, ms in kinds.most_common():
        print(f"  {kind:<32} {ms:7.2f} ms  {100 * ms / profiled:5.1f} %")
    if args.out:
        record = {"benchmark": "profile_sampling", "settings": vars(args), "machine": machine_info(),
                  "atoms": int(batches[1][0].num_atoms.sum()), "cpu_ms_per_eval": 1000 * cpu, "wall_ms_per_eval": 1000 * wall,
                  "fixed_cpu_ms_per_eval": 1000 * fixed, "graph_ms": marks, "ops_ms_by_kind": dict(kinds)}
        print(f"wrote {write_json(args.out, 'profile_sampling', record)}")


if __name__ == "__main__":
    main()
