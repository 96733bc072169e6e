"""Host syncs and hot ops of one sampling step (corrector + predictor) of the ``official`` preset, on CPU.

On a GPU every op below blocks the host until the device catches up (its result decides a Python value or a
tensor's shape): ``.item()/.tolist()/int()/bool()``, ``nonzero`` and boolean-mask indexing, ``bincount`` and
``repeat_interleave`` without ``output_size``. This script counts them per call site (file:line in mattergen_lab)
with a ``TorchFunctionMode``, so it needs no GPU, then prints torch.profiler's top CPU ops::

    OMP_NUM_THREADS=1 python benchmarks/device/profile_step.py --batch-size 8

With ``--out DIR`` the sync sites also go to ``OUT/profile_step.json``. The shared flags (``--out``, ``--batch-size``,
formerly ``--batch``, which still works, and ``--threads``) are those of ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common
from _common import add_common_arguments, machine_info, set_threads, write_json  # noqa: E402

SYNC_METHODS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy", "bincount", "unique"}


class SyncCounter(TorchFunctionMode):
    """Counts ops that synchronise a CUDA stream with the host, by the mattergen_lab line that called them."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        sync = name in SYNC_METHODS
        if name == "repeat_interleave" and len(args) > 1 and isinstance(args[1], torch.Tensor) and kwargs.get("output_size") is None:
            sync = True
        if name == "__getitem__" and len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool:
            sync, name = True, "bool-mask index"
        if sync:
            for frame in reversed(traceback.extract_stack()[:-1]):
                if "mattergen_lab" in frame.filename:
                    self.sites[(name, f"{frame.filename.split('mattergen_lab/')[-1]}:{frame.lineno}")] += 1
                    break
        return func(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, out=None, batch_size=8, threads=None, aliases={"batch_size": ("--batch",)},
                         help={"out": "folder for profile_step.json (default: print only)"})
    ap.add_argument("--preset", default="official")
    ap.add_argument("--atoms", type=int, default=10)
    ap.add_argument("--t", type=float, default=0.5, help="the time of the profiled step")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)

    from mattergen_lab.model.score_model import ScoreModel
    from mattergen_lab.noise.joint import JointDiffusion
    from mattergen_lab.sampling.sampler import PredictorCorrectorSampler, SamplerConfig

    torch.manual_seed(0)
    model = ScoreModel.from_preset(args.preset).eval()
    # a 2-step run whose first step is at t: the prior, one corrector + predictor step, then the last step
    sampler = PredictorCorrectorSampler(model, JointDiffusion(), SamplerConfig(num_steps=2, eps_t=args.t))
    sampler.timesteps = lambda: [args.t, args.t / 2]  # type: ignore[method-assign]
    counts = [args.atoms] * args.batch_size
    counter = SyncCounter()
    t0 = time.perf_counter()
    with counter, torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        frames = sampler.iter_steps(counts, generator=torch.Generator().manual_seed(0), every=1)
        next(frames)  # the prior
        next(frames)  # one full step
    wall = time.perf_counter() - t0
    print(f"{args.preset}: {model.num_parameters():,} parameters, batch {args.batch_size} x {args.atoms} atoms, one step in {wall:.2f} s")
    total = sum(counter.sites.values())
    print(f"host syncs in one step (2 model evaluations): {total}")
    for (name, site), n in counter.sites.most_common():
        print(f"  {n:5d}  {name:<18} {site}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    if args.out:
        sites = [{"op": name, "site": site, "count": n} for (name, site), n in counter.sites.most_common()]
        record = {"benchmark": "profile_step", "settings": vars(args), "machine": machine_info(), "wall_s": wall,
                  "host_syncs": total, "sites": sites}
        print(f"wrote {write_json(args.out, 'profile_step', record)}")


if __name__ == "__main__":
    main()
