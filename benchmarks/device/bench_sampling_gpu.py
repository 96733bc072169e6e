"""GPU sampling throughput of the ``official`` preset (35M parameters, random weights) with an adapter at γ = 2.

Issue #17.3: batch 64, 1,000 predictor-corrector steps (corrector on), classifier-free guidance γ = 2 on a
``dft_band_gap`` adapter (so every step is one doubled batch of 128 crystals), structures/s and peak memory; then
the optional variants (bf16 autocast, torch.compile) with a parity check of one network evaluation against
float32. Sizes are drawn from MatterGen's ALEX_MP_20 table; weights are random (official constructors), so cells
drift to huge cells with almost no edges late in the run (a trained model keeps MP-20 densities), which makes the
loop's graphs unrealistically cheap. So the script also times the guided network evaluation on the same sizes at
the training density (``eval_*``: a step is two of them, corrector + predictor) and projects the 1,000-step run
from it (``realistic_*``); the loop's own figures and its last-step edges per crystal are reported beside it.

Each variant stops at ``--budget-s`` and reports the projection for the full step count, so one device call of
about 8 minutes always returns figures::

    python benchmarks/device/bench_sampling_gpu.py --variant fp32 --budget-s 240 --out $OUT
    python benchmarks/device/bench_sampling_gpu.py --variant bf16 --steps 200 --budget-s 90 --out $OUT
    python benchmarks/device/bench_sampling_gpu.py --variant compile --steps 200 --budget-s 120 --out $OUT

Each writes ``OUT/<variant>.json``. A CPU smoke run (what CI can check): ``--device cpu --batch-size 2 --steps 3
--preset small``. The shared flags (``--out``, ``--batch-size``, formerly ``--batch``, which still works, ``--steps``,
``--threads``, ``--device``) are those of ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import add_common_arguments, machine_info, set_threads, write_json  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sizes(batch: int, seed: int) -> list[int]:
    from mattergen_lab.constants import ALEX_MP_20_NUM_ATOMS

    probs = torch.tensor(list(ALEX_MP_20_NUM_ATOMS.values()), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return (torch.multinomial(probs, batch, replacement=True, generator=g) + 1).tolist()


def _model(preset: str, device: torch.device):
    from mattergen_lab.model.score_model import ScoreModel

    torch.manual_seed(0)
    return ScoreModel.from_preset(preset, condition_on_adapt=("dft_band_gap",)).to(device).eval()


def parity(model, compiled, device: torch.device, sizes: list[int], autocast: bool) -> dict:
    """Relative deviation ‖out − out_fp32‖ / ‖out_fp32‖ per output of one evaluation at t = 0.5."""
    from mattergen_lab.testing import random_crystal_batch

    batch = random_crystal_batch(sizes, generator=torch.Generator().manual_seed(1), dtype=torch.float32).to(device)
    batch.properties["dft_band_gap"] = torch.full((len(sizes),), 2.0, device=device)
    t = torch.full((len(sizes),), 0.5, device=device)
    with torch.no_grad():
        ref = model(batch, t)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            out = compiled(batch, t)
    return {name: float((getattr(out, name).float() - getattr(ref, name)).norm() / getattr(ref, name).norm())
            for name in ("atom_logits", "frac_coords", "lattice")}


def eval_cost(score_fn, device: torch.device, sizes: list[int], repeats: int, autocast: bool) -> dict:
    """Seconds per guided evaluation of a batch at the training density (random crystals, t = 0.5), peak memory."""
    from mattergen_lab.model.graph import build_graph
    from mattergen_lab.testing import random_crystal_batch

    batch = random_crystal_batch(sizes, generator=torch.Generator().manual_seed(2), dtype=torch.float32).to(device)
    batch.properties["dft_band_gap"] = torch.full((len(sizes),), 2.0, device=device)
    t = torch.full((len(sizes),), 0.5, device=device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), ctx:
        score_fn(batch, t)  # warm-up (and compilation)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            score_fn(batch, t)
        _sync(device)
    per_eval = (time.perf_counter() - t0) / repeats
    cfg = score_fn.model.config
    g = build_graph(batch.frac_coords, batch.lattice, batch.num_atoms, cutoff=cfg.cutoff,
                    max_neighbors=cfg.max_neighbors, max_images=cfg.max_cell_images_per_dim)
    out = {"eval_s": round(per_eval, 4), "eval_edges_per_crystal": round(g.num_edges / len(sizes), 1)}
    if device.type == "cuda":
        out["eval_peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def run(args: argparse.Namespace) -> dict:
    from mattergen_lab.noise.joint import JointDiffusion
    from mattergen_lab.sampling.frames import SamplerConfig
    from mattergen_lab.sampling.guidance import ClassifierFreeGuidance
    from mattergen_lab.sampling.sampler import PredictorCorrectorSampler

    device = torch.device(args.device)
    model = _model(args.preset, device)
    net = model
    if args.variant == "compile":
        net = torch.compile(model, dynamic=True)
    sizes = _sizes(args.batch_size, seed=0)
    result: dict = {"preset": args.preset, "parameters": model.num_parameters(), "variant": args.variant,
                    "batch": args.batch_size, "steps": args.steps, "guidance": 2.0, "atoms": sum(sizes),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "machine": machine_info(args.device)}
    if args.variant != "fp32":
        t0 = time.perf_counter()
        result["parity_vs_fp32"] = parity(model, net, device, sizes[:16], autocast=args.variant == "bf16")
        result["parity_s"] = round(time.perf_counter() - t0, 1)  # includes compilation for 'compile'
    guided = ClassifierFreeGuidance(net, 2.0)
    cost = eval_cost(guided, device, sizes, args.eval_repeats, autocast=args.variant == "bf16")
    full = 2 * args.steps * cost["eval_s"]
    result.update(cost, realistic_projected_s_full_run=round(full, 1),
                  realistic_s_per_structure=round(full / args.batch_size, 3),
                  realistic_structures_per_s=round(args.batch_size / full, 4))
    sampler = PredictorCorrectorSampler(guided, JointDiffusion(),
                                        SamplerConfig(num_steps=args.steps))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if args.variant == "bf16" else contextlib.nullcontext()
    done, t0, last = 0, time.perf_counter(), None
    with ctx:
        frames = sampler.iter_steps(sizes, generator=torch.Generator(device).manual_seed(0), every=1, device=device,
                                    properties={"dft_band_gap": 2.0})
        for frame in frames:
            last = frame
            if frame.final:
                break
            done = frame.step
            if done % 25 == 0:
                _sync(device)
                if time.perf_counter() - t0 > args.budget_s:
                    break
    _sync(device)
    wall = time.perf_counter() - t0
    per_step = wall / max(done, 1)
    result.update({
        "steps_run": done, "wall_s": round(wall, 1), "s_per_step": round(per_step, 4),
        "projected_s_full_run": round(per_step * args.steps, 1),
        "structures_per_s_full_run": round(args.batch_size / (per_step * args.steps), 4),
        "s_per_structure_full_run": round(per_step * args.steps / args.batch_size, 3),
        "finished": bool(last is not None and last.final),
    })
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if last is not None:
        from mattergen_lab.model.graph import build_graph

        b = last.batch
        cfg = model.config
        g = build_graph(b.frac_coords.float(), b.lattice.float(), b.num_atoms, cutoff=cfg.cutoff,
                        max_neighbors=cfg.max_neighbors, max_images=cfg.max_cell_images_per_dim)
        vol = torch.linalg.det(b.lattice.double()).abs() / b.num_atoms
        result["last_step_edges_per_crystal"] = round(g.num_edges / args.batch_size, 1)
        result["last_step_median_volume_per_atom"] = round(float(vol.median()), 1)
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, out=None, batch_size=64, steps=1000, threads=None, device="cuda",
                         aliases={"batch_size": ("--batch",)},
                         help={"out": "folder for <variant>.json (default: print only)"})
    ap.add_argument("--preset", default="official")
    ap.add_argument("--variant", choices=["fp32", "bf16", "compile"], default="fp32")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop the loop after this long and project")
    ap.add_argument("--eval-repeats", type=int, default=10)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    result = run(args)
    print(json.dumps(result, indent=1))
    if args.out is not None:
        write_json(args.out, args.variant, result, indent=1)


if __name__ == "__main__":
    main()
