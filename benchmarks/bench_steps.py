"""Quality vs sampler steps (issue #17.2): the bundled base model at 1000, 400, 200, 100 and 50 steps, for the
official predictor-corrector sampler and for each sampler variant given, every row evaluated with
``bench_quality.py``'s protocol (its ``run_benchmark``: one campaign per row, CHGNet relaxation with a stated
budget, MP-20 hull and novelty, the disordered matcher)::

    python benchmarks/bench_steps.py --num-samples 128 --workers 2 \\
        --variant n_corrector_steps=0 --variant coord_snr=0.2,lattice_snr=0.1 --variant predictor=ode,n_corrector_steps=0

Every row samples the same crystals' atom counts (same ``--seed`` and ``--batch-size``: the counts are drawn from
the chunk seeds, whatever the steps or the sampler). Each row lives in its own sub-folder
``OUT/<sampler>/steps_<n>/`` (a campaign folder and its timings), so an interrupted run resumes row by row and task
by task when the same command is run again; a row's folder refuses other settings (the campaign's fingerprint
holds the steps, the sampler variant and the relaxation budget), and every row's folder is checked before any row
runs. A finished run reruns in seconds (no Ray is started) and rewrites the table. The shared flags (``--out``,
``--num-samples``, ``--batch-size``; ``--steps`` here takes a comma-separated list) are those of
``benchmarks/_common.py``.

Per row: structural and SMACT validity, median distinct elements per crystal and median volume per atom (of the
generated crystals), stable %, S.U.N. %, mean RMSD generated → relaxed, seconds per structure (the row's sampling
task time / N, on one thread per task; the first task of each worker also loads the model, ~1 s), and the relaxation budget with how many relaxations converged. Writes
``OUT/steps.json`` and ``OUT/steps.md`` (the markdown table, with S.U.N. and RMSD relative to the default sampler at
the most steps, the issue's goal being ≤ 100 steps within 2 points of S.U.N. and 0.05 Å of RMSD of it).

A variant is ``key=value[,key=value…][@steps,steps…]`` with keys ``n_corrector_steps``, ``coord_snr``,
``lattice_snr``, ``max_step_size`` and ``predictor`` (``ancestral`` | ``ode``), e.g. ``n_corrector_steps=0``
(predictor only). ``@100,50`` runs that variant at those step counts only (each one of ``--steps``), for a sampler
meant for few steps; without it a variant runs at every ``--steps``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality  # noqa: E402 - the quality benchmark's machinery, one campaign per row
from _common import add_common_arguments, machine_info, machine_line, write_json  # noqa: E402

DEFAULT_STEPS = (1000, 400, 200, 100, 50)
DEFAULT_LABEL = "default"


# ====================================================================== pure helpers (tested)


def parse_variant(text: str) -> dict[str, Any]:
    """``"coord_snr=0.2,n_corrector_steps=0"`` -> the canonical sampler variant (``ValueError`` names a bad part)."""
    from mattergen_lab.sampling.frames import parse_sampler_text

    variant = parse_sampler_text(text, where="--variant")
    if not variant:
        raise ValueError(f"--variant {text!r} is the default sampler (it is always run)")
    return variant


def parse_variant_steps(text: str, steps: Sequence[int]) -> tuple[dict[str, Any], list[int]]:
    """``"predictor=ode@100,50"`` -> (variant, [100, 50]); without ``@`` the variant runs at every one of ``steps``.

    ``ValueError`` names a step count that is not one of ``steps`` (the rows must share the default's step counts,
    so every variant row has a default row to compare with)."""
    body, sep, tail = text.partition("@")
    variant = parse_variant(body)
    if not sep:
        return variant, list(steps)
    try:
        own = _steps_list(tail)
    except argparse.ArgumentTypeError:
        raise ValueError(f"--variant {text!r}: after '@' comes a comma-separated list of step counts, e.g. @100,50") from None
    extra = [n for n in own if n not in steps]
    if extra:
        raise ValueError(f"--variant {text!r}: step count(s) {extra} are not in --steps {list(steps)}")
    return variant, own


def variant_label(variant: dict[str, Any]) -> str:
    """``{}`` -> ``"default"``; ``{"coord_snr": 0.2, "n_corrector_steps": 0}`` -> ``"coord_snr=0.2,n_corrector_steps=0"``."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in variant.items()) or DEFAULT_LABEL


def row_folder(out: Path, variant: dict[str, Any], steps: int) -> Path:
    """``OUT/<label with = as - and , as _>/steps_<n>``."""
    return out / variant_label(variant).replace("=", "-").replace(",", "_") / f"steps_{steps}"


def relax_budget(protocol: dict[str, Any]) -> str:
    return (f"{protocol['relaxer']}, FIRE fmax {protocol['fmax']:g} eV/Å, ≤ {protocol['max_steps']} steps / "
            f"{protocol['max_seconds']:g} s per structure")


def row_record(variant: dict[str, Any], steps: int, num_samples: int, metrics: dict[str, Any],
               distribution: dict[str, Any], timing: dict[str, Any], protocol: dict[str, Any],
               num_atoms: Sequence[int]) -> dict[str, Any]:
    """One row of the table from bench_quality's summary metrics, the generated crystals' distribution and timings."""
    return {
        "sampler": variant_label(variant),
        "sampler_settings": dict(variant),
        "num_steps": steps,
        "num_samples": num_samples,
        "structural_validity_pct": metrics["structural_validity_pct"],
        "smact_validity_pct": metrics["compositional_validity_pct"],
        "median_elements": distribution["elements_median"],
        "median_volume_per_atom": distribution["volume_per_atom_median"],
        "stable_pct": metrics["stable_pct"],
        "sun_pct": metrics["sun_pct"],
        "mean_rmsd_angstrom": metrics["mean_rmsd_angstrom"],
        "seconds_per_structure": timing["task_seconds_sampling"] / num_samples,
        "relaxations": metrics["relaxations"],
        "relax_budget": relax_budget(protocol),
        "stability_threshold": protocol["stability_threshold"],
        "num_atoms": list(num_atoms),
        "metrics": metrics,
        "timing": timing,
    }


def reference_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The default sampler at its most steps (the figure the others are measured against)."""
    default = [r for r in rows if not r["sampler_settings"]]
    return max(default, key=lambda r: r["num_steps"]) if default else None


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    ref = reference_row(rows)
    budgets = sorted({r["relax_budget"] for r in rows})
    head = (f"Relaxation budget per row: {'; '.join(budgets)}. Stable: E_hull ≤ {rows[0]['stability_threshold']} "
            "eV/atom on the MP-20 hull; S.U.N. over each row's N crystals. Seconds per structure: sampling task time / N"
            " (one thread per task).")
    if ref is not None:
        head += f" Δ: against the default sampler at {ref['num_steps']} steps."
    cols = ["sampler", "steps", "N", "struct. valid", "SMACT valid", "median elements", "median Å³/atom", "stable",
            "S.U.N.", "Δ S.U.N.", "mean RMSD", "Δ RMSD", "s / structure", "relaxations (conv / step cap / time cap / failed)",
            "relax budget"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        rel = r["relaxations"]
        d_sun = f"{r['sun_pct'] - ref['sun_pct']:+.1f}" if ref is not None else "–"
        d_rmsd = f"{r['mean_rmsd_angstrom'] - ref['mean_rmsd_angstrom']:+.3f} Å" if ref is not None else "–"
        cells = [f"`{r['sampler']}`", r["num_steps"], r["num_samples"], f"{r['structural_validity_pct']:.1f} %",
                 f"{r['smact_validity_pct']:.1f} %", f"{r['median_elements']:g}", f"{r['median_volume_per_atom']:.1f}",
                 f"{r['stable_pct']:.1f} %", f"{r['sun_pct']:.1f} %", d_sun, f"{r['mean_rmsd_angstrom']:.3f} Å", d_rmsd,
                 f"{r['seconds_per_structure']:.2f}",
                 f"{rel['converged']} / {rel['max_steps']} / {rel['timeout']} / {rel['exploded'] + rel['failed']}",
                 r["relax_budget"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


# ====================================================================== one row


def _row_args(args: argparse.Namespace, variant: dict[str, Any], steps: int) -> argparse.Namespace:
    row_args = copy.copy(args)
    row_args.steps, row_args.sampler = steps, dict(variant)
    return row_args


def prepare_rows(args: argparse.Namespace, grid: Sequence[tuple[dict[str, Any], Sequence[int]]], out: Path) -> int:
    """Check every row's folder before anything runs (a folder that holds another row's settings is refused with a
    ``ValueError`` naming them, before hours of other rows); returns how many tasks are left over all rows."""
    from mattergen_lab.campaign import CampaignFolder, CampaignSpec, plan

    left = 0
    for v, steps in grid:
        for n in steps:
            spec = CampaignSpec.from_dict(bench_quality.campaign_spec(_row_args(args, v, n), n))
            folder = CampaignFolder(row_folder(out, v, n) / "campaign")
            folder.prepare(spec)
            done = folder.done()
            left += sum(t.key not in done for t in plan(spec))
    return left


def run_row(args: argparse.Namespace, variant: dict[str, Any], steps: int, out: Path) -> dict[str, Any]:
    """Run (or resume) one row with bench_quality's ``run_benchmark`` in its own folder; returns its record."""
    from mattergen_lab.evaluation.distribution import distribution_stats

    row_args = _row_args(args, variant, steps)
    folder = row_folder(out, variant, steps)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\n## {variant_label(variant)} at {steps} steps → {folder}", flush=True)
    result, generated, timing = bench_quality.run_benchmark(row_args, folder)
    metrics = bench_quality.summary_metrics(result.metrics, result.table)
    record = row_record(variant, steps, args.num_samples, metrics, distribution_stats(generated), timing,
                        result.protocol, [len(s) for s in generated])
    write_json(folder, "row", record)
    return record


# ====================================================================== main


def _steps_list(text: str) -> list[int]:
    try:
        steps = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps {text!r} must be a comma-separated list of positive integers") from None
    if not steps or any(n < 1 for n in steps):
        raise argparse.ArgumentTypeError(f"--steps {text!r} must be a comma-separated list of positive integers")
    return steps


def _init_ray(args: argparse.Namespace) -> bool:
    """One local Ray for every row (each row's campaign reuses it), unless ``--address`` names a cluster."""
    import ray

    from mattergen_lab.campaign.runner import init_ray

    if args.address or ray.is_initialized():
        return False
    return init_ray(None, args.workers)  # the campaign's local Ray: 127.0.0.1 only


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="mgl_mp20_small")
    parser.add_argument("--steps", type=_steps_list, default=list(DEFAULT_STEPS),
                        help="comma-separated sampler step counts (default: 1000,400,200,100,50)")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE][@STEPS]",
                        help="a sampler variant to run besides the default (repeatable), e.g. n_corrector_steps=0; "
                        "@100,50: only at those of --steps")
    add_common_arguments(parser, num_samples=128, help={"num_samples": "crystals per row (N)"})
    bench_quality.add_campaign_arguments(parser, out="runs/bench_steps")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.workers < 1:
        parser.error("--num-samples and --workers must be >= 1")
    try:
        grid = [({}, list(args.steps))] + [parse_variant_steps(v, args.steps) for v in args.variant]
    except ValueError as exc:
        parser.error(str(exc))
    variants = [v for v, _ in grid]
    labels = [variant_label(v) for v in variants]
    if len(set(labels)) != len(labels):
        parser.error(f"--variant: the same sampler is given twice ({labels})")
    warnings.filterwarnings("ignore", message="No Pauling electronegativity")
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    if args.data_dir:
        os.environ["MATTERGEN_LAB_DATA"] = str(Path(args.data_dir).resolve())  # the campaign's workers read it
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print(f"{machine_line(info)}; rows: "
          f"{', '.join(f'{label} × {steps}' for label, (_, steps) in zip(labels, grid))} steps, N = {args.num_samples}",
          flush=True)
    import ray

    left = prepare_rows(args, grid, out)
    print(f"{left} campaign task(s) to run", flush=True)
    started = _init_ray(args) if left else False
    try:
        rows = [run_row(args, v, n, out) for v, steps in grid for n in steps]
    finally:
        if started:
            ray.shutdown()
    counts = {tuple(r["num_atoms"]) for r in rows}
    if len(counts) != 1:  # the same seed must give the same atom counts in every row
        raise SystemExit(f"rows sampled different atom counts ({len(counts)} sets); the table would not compare like with like")
    ref = reference_row(rows)
    record = {
        "benchmark": "bench_steps",
        "checkpoint": args.checkpoint,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "samplers": {variant_label(v): v for v in variants},
        "sampler_steps": {variant_label(v): steps for v, steps in grid},
        "relax_budget": rows[0]["relax_budget"],
        "reference_row": {"sampler": ref["sampler"], "num_steps": ref["num_steps"]} if ref else None,
        "machine": info,
        "rows": rows,
        "markdown": markdown_table(rows),
    }
    write_json(out, "steps", record)
    (out / "steps.md").write_text(record["markdown"] + "\n", encoding="utf-8")
    print()
    print(record["markdown"])
    print(f"\nwrote {out / 'steps.json'} and {out / 'steps.md'}")
    return record


if __name__ == "__main__":
    main()
