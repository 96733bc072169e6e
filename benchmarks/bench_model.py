"""Score-network throughput: forward+backward crystals/s and peak memory, per preset.

Crystals are random, at the training density, with sizes drawn from the official ALEX_MP_20 table
(mean ≈ 9.6 atoms). Each preset runs in its own process so peak RSS is per preset.

    python benchmarks/bench_model.py --presets tiny small medium official --batch-size 32 --device cpu

Prints one JSON line per preset; with ``--out DIR`` also writes ``OUT/model.json``. The shared flags (``--out``,
``--batch-size``, ``--threads``, ``--device``) are those of ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from _common import add_common_arguments, machine_info, machine_line, set_threads, write_json


def run_one(preset: str, batch_size: int, device: str, repeats: int, forward_only: bool) -> dict:
    from mattergen_lab.constants import ALEX_MP_20_NUM_ATOMS
    from mattergen_lab.model.score_model import ScoreModel
    from mattergen_lab.testing import random_crystal_batch

    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor(list(ALEX_MP_20_NUM_ATOMS.values()))
    sizes = (torch.multinomial(probs, batch_size, replacement=True, generator=gen) + 1).tolist()
    batch = random_crystal_batch(sizes, generator=gen, dtype=torch.float32, elements=(3, 8, 12, 14, 26, 29, 56)).to(device)
    model = ScoreModel.from_preset(preset).to(device)
    t = torch.rand(batch_size, generator=gen).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        if forward_only:
            with torch.no_grad():
                model(batch, t)
            return
        out = model(batch, t)
        loss = out.frac_coords.square().mean() + out.lattice.square().mean() + out.atom_logits.logsumexp(-1).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / repeats
    result = {
        "preset": preset,
        "params": model.num_parameters(),
        "batch_size": batch_size,
        "atoms": int(batch.num_atoms.sum()),
        "mode": "forward" if forward_only else "forward+backward",
        "s_per_batch": round(dt, 4),
        "crystals_per_s": round(batch_size / dt, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, out=None, batch_size=32, threads=None, device="cpu",
                         help={"out": "folder for model.json (default: print only)"})
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "medium", "official"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, args.batch_size, args.device, args.repeats, args.forward_only)))
        return
    info = machine_info(args.device)
    print(machine_line(info))
    rows = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--one", preset, "--batch-size", str(args.batch_size), "--device", args.device, "--repeats", str(args.repeats)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.forward_only:
            cmd.append("--forward-only")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(out, flush=True)
    if args.out:
        print(f"wrote {write_json(args.out, 'model', {'benchmark': 'bench_model', 'settings': vars(args), 'machine': info, 'rows': rows})}")


if __name__ == "__main__":
    main()
