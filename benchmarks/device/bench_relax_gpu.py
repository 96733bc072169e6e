"""GPU relaxation throughput (issue #15): 1,000 rattled ≤ 20-atom crystals, batched torch-sim FIRE vs ASE.

The batched engine (CHGNet through our torch-sim interface, batch sized by torch-sim's GPU memory estimator)
relaxes ``--num`` crystals; the ASE path, one at a time on the same GPU, relaxes the first ``--ase-num`` of them
for the comparison (same crystals, same protocol). Each part stops at its time budget and reports what
finished (a projection for the rest is printed, labelled as such), so one device call stays under ~8 minutes::

    python benchmarks/device/bench_relax_gpu.py --num 1000 --ase-num 40 --budget-s 300 --ase-budget-s 90 --out $OUT

Crystals: MP-20 test structures when the data is there, otherwise rattled prototypes (rock salt, CsCl,
fluorite, zinc blende, perovskite, in 1-8x supercells up to 20 atoms). A CPU smoke run (what CI can check):
``--device cpu --num 4 --ase-num 2 --budget-s 60``. With ``--out DIR`` the record goes to ``OUT/relax.json``; the
shared flags (``--out``, ``--threads``, ``--device``) are those of ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import add_common_arguments, machine_info, set_threads, write_json  # noqa: E402


def crystals(num: int, max_atoms: int, data_dir: str | None) -> tuple[list, str]:
    rng = np.random.default_rng(0)
    try:
        from mattergen_lab.data import load_mp20

        ds = load_mp20("test", data_dir=data_dir)
        picks = [i for i in rng.permutation(len(ds)) if ds.num_atoms[i] <= max_atoms]
        picks = (picks * (num // max(len(picks), 1) + 1))[:num]
        structures, source = ds.get_batch(picks, dtype=torch.float64).to_structures(), "MP-20 test"
    except Exception as exc:  # noqa: BLE001 - the device box may not carry the data
        structures, source = _prototypes(num, max_atoms, rng), f"prototypes (no MP-20 here: {type(exc).__name__})"
    for s in structures:
        s.perturb(0.1, seed=int(rng.integers(2**31)))
        s.apply_strain(rng.uniform(-0.03, 0.03, 3).tolist())
    return structures, source


def _prototypes(num: int, max_atoms: int, rng: np.random.Generator) -> list:
    from pymatgen.core import Lattice, Structure

    protos = [
        ("Fm-3m", 5.6, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        ("Pm-3m", 4.1, ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        ("Fm-3m", 5.5, ["Ca", "F"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        ("F-43m", 5.4, ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        ("Pm-3m", 3.9, ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
    ]
    out = []
    while len(out) < num:
        sg, a, species, coords = protos[int(rng.integers(len(protos)))]
        s = Structure.from_spacegroup(sg, Lattice.cubic(a), species, coords).get_primitive_structure()
        for m in ([1, 1, 1], [2, 1, 1], [2, 2, 1], [2, 2, 2]):
            if len(s) * int(np.prod(m)) <= max_atoms and rng.random() < 0.5:
                s.make_supercell(m)
                break
        out.append(s)
    return out


def _summary(results: list, seconds: float, total: int) -> dict:
    done = [r for r in results if r is not None]
    rate = len(done) / seconds if seconds > 0 else float("nan")
    return {
        "finished": len(done),
        "of": total,
        "seconds": round(seconds, 1),
        "relaxations_per_s": round(rate, 3),
        "projected_seconds_for_all": round(total / rate, 1) if rate > 0 else None,
        "mean_steps": float(np.mean([r.steps for r in done])) if done else None,
        "statuses": {s: sum(r.status == s for r in done) for s in sorted({r.status for r in done})},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, out=None, threads=None, device="cuda",
                         help={"out": "folder for relax.json (default: print only)"})
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--ase-num", type=int, default=40)
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=300.0, help="batched part")
    parser.add_argument("--ase-budget-s", type=float, default=90.0, help="ASE part")
    parser.add_argument("--max-memory-scaler", type=float, default=None, help="default: torch-sim's GPU estimate")
    parser.add_argument("--data-dir", default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    warnings.simplefilter("ignore")

    from mattergen_lab.evaluation.batched_relax import CPU_MAX_MEMORY_SCALER, get_batched_relaxer
    from mattergen_lab.evaluation.relax import RelaxConfig, get_relaxer

    structures, source = crystals(args.num, args.max_atoms, args.data_dir)
    config = RelaxConfig(max_atoms=max(200, args.max_atoms), max_seconds=600.0)
    ase = get_relaxer("chgnet", device=args.device, config=config)
    batched = get_batched_relaxer(ase, device=args.device, max_memory_scaler=args.max_memory_scaler)
    batched.relax_many(structures[:2])  # warm-up: model on the device, first graphs, CUDA kernels
    record: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                    "machine": machine_info(args.device), "crystals": source, "mean_atoms": float(np.mean([len(s) for s in structures]))}

    cancel = threading.Event()
    timer = threading.Timer(args.budget_s, cancel.set)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    timer.start()
    t0 = time.perf_counter()
    out = batched.relax_many(structures, cancel=cancel)
    record["batched"] = _summary(out, time.perf_counter() - t0, len(structures))
    timer.cancel()
    record["batched"]["max_memory_scaler"] = batched.max_memory_scaler or f"CPU default {CPU_MAX_MEMORY_SCALER:g}"
    if args.device.startswith("cuda"):
        record["batched"]["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    print(json.dumps(record), flush=True)

    ref, t0 = [], time.perf_counter()
    for s in structures[: args.ase_num]:
        if time.perf_counter() - t0 > args.ase_budget_s:
            break
        ref.append(ase.relax(s))
    record["ase"] = _summary(ref, time.perf_counter() - t0, args.ase_num)
    diffs = [abs(a.energy - b.energy) / len(s) for a, b, s in zip(ref, out, structures)
             if b is not None and a.status == b.status == "converged"]
    record["agreement"] = {"both_converged": len(diffs), "max_energy_diff_ev_per_atom": max(diffs) if diffs else None,
                           "within_0.01": sum(d < 0.01 for d in diffs)}
    if record["ase"]["relaxations_per_s"] and record["batched"]["relaxations_per_s"]:
        record["speedup"] = round(record["batched"]["relaxations_per_s"] / record["ase"]["relaxations_per_s"], 1)
    print(json.dumps(record), flush=True)
    if args.out:
        write_json(args.out, "relax", record)


if __name__ == "__main__":
    main()
