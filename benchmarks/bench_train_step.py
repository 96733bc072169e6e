"""Training-step speed on real MP-20 batches, and validation loss at equal crystals seen (issue 13).

Speed: forward + backward + Adam step of the score network on seeded random batches of MP-20 val crystals,
mean over ``--steps`` steps after two warm-up steps, at ``--threads`` threads, for each architecture variant:

    python benchmarks/bench_train_step.py --threads 1 --variants "max_neighbors=30,cutoff=7.0" "max_neighbors=16,cutoff=6.0"

Quality: with ``--runs DIR [DIR ...]`` it also prints the validation history of training runs (their
``last/config.json``) side by side, keyed by crystals seen, so two variants trained with the same recipe can be
compared at equal data.

With ``--out DIR`` the rows also go to ``OUT/train_step.json``. The shared flags (``--out``, ``--batch-size``,
``--steps``: timed training steps, ``--threads``) are those of ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import add_common_arguments, machine_info, machine_line, set_threads, write_json


def parse_variant(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = float(value) if "." in value else int(value)
    return out


def step_time(preset: str, overrides: dict, batch_size: int, steps: int, data_dir: str | None) -> dict:
    from mattergen_lab.data import load_mp20
    from mattergen_lab.model.graph import build_graph
    from mattergen_lab.model.score_model import ScoreModel, preset_config
    from mattergen_lab.noise.joint import JointDiffusion
    from mattergen_lab.training.loss import diffusion_loss

    data = load_mp20("val", data_dir=data_dir)
    torch.manual_seed(0)
    model = ScoreModel(preset_config(preset, **overrides)).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    diffusion = JointDiffusion()
    gen = torch.Generator().manual_seed(0)
    times, edges, triplets = [], [], []
    for k in range(steps + 2):
        batch = data.get_batch(torch.randint(0, len(data), (batch_size,), generator=gen))
        start = time.perf_counter()
        loss, _ = diffusion_loss(model, batch, diffusion, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k >= 2:
            times.append(time.perf_counter() - start)
            g = build_graph(batch.frac_coords, batch.lattice, batch.num_atoms, cutoff=model.config.cutoff,
                            max_neighbors=model.config.max_neighbors, max_images=model.config.max_cell_images_per_dim)
            edges.append(g.num_edges)
            triplets.append(int(g.id3_ba.numel()))
    mean = sum(times) / len(times)
    return {"preset": preset, "overrides": overrides, "batch_size": batch_size, "s_per_step": round(mean, 4),
            "crystals_per_s": round(batch_size / mean, 1), "edges_per_batch": sum(edges) // len(edges),
            "triplets_per_batch": sum(triplets) // len(triplets)}


def run_histories(runs: list[str]) -> None:
    tables = {}
    for run in runs:
        history = json.loads((Path(run) / "last" / "config.json").read_text())["training"]["history"]
        tables[run] = {int(r.get("crystals_seen", r["step"] * 32)): r for r in history if "val_loss" in r}
    seen = sorted(set().union(*tables.values()))
    print("crystals seen | " + " | ".join(f"{Path(r).name}: val loss (pos / cell / types)" for r in runs))
    for n in seen:
        cells = []
        for run in runs:
            r = tables[run].get(n)
            cells.append("–" if r is None else f"{r['val_loss']:.3f} ({r['val_pos']:.2f} / {r['val_cell']:.3f} / {r['val_atomic_numbers']:.3f})")
        print(f"{n} | " + " | ".join(cells))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, out=None, batch_size=32, steps=10, threads=1,
                         help={"out": "folder for train_step.json (default: print only)",
                               "steps": "timed training steps per variant (after two warm-up steps)"})
    parser.add_argument("--preset", default="small")
    parser.add_argument("--variants", nargs="*", default=["max_neighbors=30,cutoff=7.0", ""],
                        help="comma-separated architecture overrides; '' is the preset as it is")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", nargs="*", default=[], help="training run folders to compare by crystals seen")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    info = machine_info()
    print(machine_line(info))
    rows = []
    for variant in args.variants:
        rows.append(step_time(args.preset, parse_variant(variant), args.batch_size, args.steps, args.data_dir))
        print(json.dumps(rows[-1]))
    if args.runs:
        run_histories(args.runs)
    if args.out:
        print(f"wrote {write_json(args.out, 'train_step', {'benchmark': 'bench_train_step', 'settings': vars(args), 'machine': info, 'rows': rows})}")


if __name__ == "__main__":
    main()
