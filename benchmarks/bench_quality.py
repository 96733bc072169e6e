"""Quality of a base model under our evaluation: validity, stable / unique / novel / S.U.N., RMSD.

Protocol (the issue's): sample ``--num-samples`` crystals from ``--checkpoint`` (its recommended number of
sampler steps unless ``--steps`` is given), then relax and score them with the library's evaluation: CHGNet
relaxation (FIRE, ``--fmax``, step cap ``--relax-max-steps``, time cap ``--relax-max-seconds`` per
structure), energy above the MP-20 reference hull, novelty against MP-20, the library's stability threshold
(``mattergen_lab.evaluation.STABILITY_THRESHOLD``), and MatterGen's disordered structure matcher:

    python benchmarks/bench_quality.py --checkpoint mgl_mp20_small --num-samples 256 --workers 2

It runs as one campaign (``mattergen_lab.campaign``) on a local Ray with ``--workers`` CPUs (or an existing
cluster with ``--address``): sampling tasks of ``--batch-size`` crystals, evaluation tasks of
``--eval-batch-size`` structures, each single-threaded, results in ``OUT/campaign``. Uniqueness is computed
over the whole set. Rerun the same command after an interruption and only the unfinished tasks run (the
campaign refuses other settings in the same ``--out``). The crystals are those of ``mattergen-lab sample`` with
the same seed and batch size on one thread. Wall times add up over resumed runs.

Writes ``OUT/quality.json`` and prints a markdown table for the README. The shared flags (``--out``,
``--num-samples``, ``--batch-size``, ``--steps``) are those of ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import add_common_arguments, machine_info, machine_line, read_json, write_json

RELAX_STATUSES = ("converged", "max_steps", "timeout", "exploded", "failed")


# ====================================================================== pure helpers (tested)


def relax_counts(statuses: Sequence[str]) -> dict[str, int]:
    """How many relaxations converged, hit the step cap (``max_steps``), the time cap, exploded or failed."""
    counts = {s: 0 for s in RELAX_STATUSES}
    for s in statuses:
        counts[str(s)] = counts.get(str(s), 0) + 1
    return counts


def summary_metrics(metrics: dict[str, dict[str, Any]], table) -> dict[str, Any]:
    """The README numbers (percentages of all submitted structures) from the library's aggregates."""

    def pct(key: str) -> float:
        return 100 * float(metrics[key]["value"])

    return {
        "structural_validity_pct": pct("avg_structure_validity"),
        "compositional_validity_pct": pct("avg_comp_validity"),
        "both_valid_pct": pct("avg_structure_comp_validity"),
        "stable_pct": pct("frac_stable_structures"),
        "unique_pct": pct("frac_unique_structures"),
        "novel_pct": pct("frac_novel_structures"),
        "novel_unique_pct": pct("frac_novel_unique_structures"),
        "sun_pct": pct("frac_novel_unique_stable_structures"),
        "successful_relaxations_pct": pct("frac_successful_jobs"),
        "mean_rmsd_angstrom": float(metrics["avg_rmsd_from_relaxation"]["value"]),
        "mean_e_above_hull_ev_per_atom": float(metrics["avg_energy_above_hull_per_atom"]["value"]),
        "relaxations": relax_counts(table["relax_status"].tolist()),
    }


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown_table(record: dict[str, Any]) -> str:
    m, p = record["metrics"], record["protocol"]
    r = m["relaxations"]
    rows = [
        ("checkpoint", f"`{record['checkpoint']}`"),
        ("samples (N)", record["num_samples"]),
        ("sampler steps", record["timing"]["num_steps"]),
        ("structural validity", f"{m['structural_validity_pct']:.1f} %"),
        ("compositional validity (SMACT)", f"{m['compositional_validity_pct']:.1f} %"),
        ("both valid", f"{m['both_valid_pct']:.1f} %"),
        (f"stable (E_hull ≤ {p['stability_threshold']} eV/atom, {p['reference_hull']} hull)", f"{m['stable_pct']:.1f} %"),
        ("unique", f"{m['unique_pct']:.1f} %"),
        (f"novel (vs {p.get('novelty_reference')})", f"{m['novel_pct']:.1f} %"),
        ("S.U.N.", f"{m['sun_pct']:.1f} %"),
        ("mean RMSD generated → relaxed", f"{m['mean_rmsd_angstrom']:.3f} Å"),
        ("mean E_hull", f"{m['mean_e_above_hull_ev_per_atom']:.3f} eV/atom"),
        (f"relaxations ({p['relaxer']}, fmax {p['fmax']}, cap {p['max_steps']} steps / {p['max_seconds']:g} s)",
         (f"{r['converged']} converged, {r['max_steps']} at step cap, {r['timeout']} at time cap, "
          f"{r['exploded'] + r['failed']} failed")),
        ("wall time", (f"{_duration(record['timing']['campaign_wall_s'])} on {record['timing']['workers']} worker(s) "
                       f"(task time: sampling {_duration(record['timing']['task_seconds_sampling'])}, evaluation "
                       f"{_duration(record['timing']['task_seconds_evaluation'])})")),
    ]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


# ====================================================================== bookkeeping


def _add_time(out: Path, key: str, seconds: float) -> float:
    timings = read_json(out / "timings.json")
    timings[key] = round(float(timings.get(key, 0.0)) + seconds, 1)
    write_json(out, "timings", timings)
    return timings[key]


def campaign_spec(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """The benchmark as a one-arm campaign spec (unconditional, γ = 0). ``args.sampler`` (optional, used by
    bench_steps.py) is a sampler variant such as ``{"n_corrector_steps": 0}``; absent or empty: the official sampler."""
    return {
        "checkpoint": args.checkpoint, "num_samples": args.num_samples, "batch_size": args.batch_size,
        "num_steps": steps, "seed": args.seed, "guidance_scale": float(getattr(args, "guidance", 0.0) or 0.0),
        "sampler": dict(getattr(args, "sampler", None) or {}),
        **({"symmetry": _symmetry_axis(args)} if getattr(args, "symmetry", None) else {}),
        **({"conditions": dict(args.conditions)} if getattr(args, "conditions", None) else {}),
        "evaluate": {"relaxer": args.relaxer, "batch_size": args.eval_batch_size, "fmax": args.fmax,
                     "max_steps": args.relax_max_steps, "max_seconds": args.relax_max_seconds,
                     "reference": "mp20", "novelty_reference": "mp20", "matcher": "disordered"},
        "resources": {"threads": 1},
    }


def run_benchmark(args: argparse.Namespace, out: Path) -> tuple[Any, list[Any], dict[str, Any]]:
    """Run (or resume) the campaign; returns the library's evaluation result, the generated crystals, timings."""
    from mattergen_lab.campaign import CampaignFolder, run_campaign
    from mattergen_lab.checkpoints import load_checkpoint
    from mattergen_lab.evaluation import EvaluationResult, compute_metrics
    from mattergen_lab.sampling.api import recommended_num_steps

    steps = args.steps or recommended_num_steps(load_checkpoint(args.checkpoint))
    spec = campaign_spec(args, steps)
    print(f"campaign: {args.num_samples} crystals, {steps} steps, batch {args.batch_size}, "
          f"{args.workers} worker(s) → {out / 'campaign'}", flush=True)
    t0 = time.perf_counter()
    result = run_campaign(spec, out / "campaign", address=args.address, num_cpus=None if args.address else args.workers)
    wall = _add_time(out, "campaign_wall_s", time.perf_counter() - t0)
    if result.failures:
        raise SystemExit(f"{len(result.failures)} task(s) failed: {result.failures}; rerun to retry them")
    folder = CampaignFolder(out / "campaign")
    manifest = folder.manifest().values()
    task_s = {kind: round(sum(r.get("seconds", 0.0) for r in manifest if r["task"].startswith(kind)), 3)
              for kind in ("sample", "evaluate")}
    table = result.table
    protocol = {**json.loads((out / "campaign" / "evaluation" / "evaluate_a0_c0_b0.json").read_text())["protocol"],
                "num_structures": args.num_samples, "num_evaluated": len(table),
                "uniqueness": "over the whole campaign (relaxed structures)"}
    evaluation = EvaluationResult(table, compute_metrics(table), protocol, [])
    generated = [s for _, s in folder.samples()]
    timing = {"campaign_wall_s": wall, "workers": args.workers, "address": args.address,
              "task_seconds_sampling": task_s["sample"], "task_seconds_evaluation": task_s["evaluate"],
              "num_steps": steps, "seed": args.seed, "batch_size": args.batch_size}
    return evaluation, generated, timing


def _axis(text: str) -> Any:
    """``mp20`` is one value; ``2,14,225`` a grid axis (one campaign arm per value, seeds ``seed + arm``)."""
    values = [int(v) if v.strip().isdigit() else v.strip() for v in str(text).split(",")]
    return values if len(values) > 1 else values[0]


def _symmetry_axis(args: argparse.Namespace) -> Any:
    """``--symmetry`` as the campaign's axis; with ``--assign`` / ``--settle`` / ``--symmetry-start`` /
    ``--element-patterns``, each value as the spec's fields
    (``{"source": "mp20", "assign": "origin"}``), which ``SymmetrySpec.parse`` reads back."""
    axis = _axis(args.symmetry)
    patterns = getattr(args, "element_patterns", None)
    options = {k: v for k, v in (("assign", getattr(args, "assign", None)), ("settle", getattr(args, "settle", None)),
                                 ("start", getattr(args, "symmetry_start", None)),
                                 ("element_patterns", None if patterns is None else patterns == "on")) if v is not None}
    if not options:
        return axis
    from mattergen_lab.symmetry.templates import SymmetrySpec

    def one(value: Any) -> dict[str, Any]:
        fields = {**SymmetrySpec.parse(value).to_dict(), **options}
        # element_patterns came later; off, it is the behaviour before it, so older folders keep their fingerprint
        return {k: v for k, v in fields.items() if v is not None and not (k == "element_patterns" and v is False)}

    return [one(v) for v in axis] if isinstance(axis, list) else one(axis)


def symmetry_record(args: argparse.Namespace, out: Path, table: Any, generated: list[Any]) -> dict[str, Any]:
    """P1 before/after relaxation, χ² to MP-20, symmetric S.U.N., splits by elements and MP-20 coverage; with
    ``--symmetry``, the share that keeps its template's group (from the requests' own template draws)."""
    from mattergen_lab.campaign import CampaignFolder
    from mattergen_lab.evaluation.symmetry_report import symmetry_summary
    from mattergen_lab.sampling.inputs import request_templates
    from mattergen_lab.symmetry import reference_space_groups

    spec = CampaignFolder(out / "campaign").spec()
    arms = {arm.name: arm for arm in spec.arms()}
    if args.symmetry:  # each crystal's template group
        per_arm = {name: [t.space_group for t in request_templates(spec.request(arm))] for name, arm in arms.items()}
    elif any("space_group" in arm.conditions for arm in arms.values()):  # the adapter's target group
        per_arm = {name: [int(arm.conditions["space_group"])] * spec.num_samples for name, arm in arms.items()}
    else:
        return symmetry_summary(table, generated, reference_space_groups())
    arm_of = [str(sid).partition("-")[0] for sid in table["id"]]
    requested = [per_arm[a][int(str(sid).partition("-")[2])] for a, sid in zip(arm_of, table["id"])]
    record = symmetry_summary(table, generated, reference_space_groups(), requested)
    if len(per_arm) > 1:  # a grid of groups: each arm's share that keeps its group
        record["arms"] = {}
        for arm in spec.arms():
            rows = [i for i, a in enumerate(arm_of) if a == arm.name]
            sub = symmetry_summary(table.iloc[rows].reset_index(drop=True), [generated[i] for i in rows],
                                   reference_space_groups(), [requested[i] for i in rows])
            record["arms"][arm.label] = {k: sub[k] for k in ("n", "kept_before_pct", "kept_after_pct",
                                                                      "p1_after_pct", "sun_pct")}
    return record


# ====================================================================== main


def add_campaign_arguments(parser: argparse.ArgumentParser, *, out: str) -> None:
    """The campaign and relaxation options this benchmark and ``bench_steps.py`` share (what ``campaign_spec`` reads)."""
    add_common_arguments(parser, out=out, batch_size=16, help={"batch_size": "crystals per sampling task"})
    parser.add_argument("--eval-batch-size", type=int, default=8, help="structures per evaluation task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relaxer", default="chgnet", choices=["chgnet", "mattersim", "auto"])
    parser.add_argument("--relax-max-steps", type=int, default=200)
    parser.add_argument("--relax-max-seconds", type=float, default=60.0)
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    parser.add_argument("--workers", type=int, default=1, help="CPUs of the local Ray (one single-threaded task each)")
    parser.add_argument("--address", default=None, help="an existing Ray cluster instead of a local one")
    parser.add_argument("--data-dir", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, num_samples=256, steps=None,
                         help={"steps": "sampler steps (default: the checkpoint's recommended count)"})
    parser.add_argument("--checkpoint", default="mgl_mp20_small")
    parser.add_argument("--symmetry", default=None,
                        help="the symmetric mode (mp20, a space group, a crystal system, a template 225:ab)")
    parser.add_argument("--condition", action="append", default=[], metavar="NAME=VALUE",
                        help="an adapter target (e.g. space_group=225), with --guidance")
    parser.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance γ with --condition")
    parser.add_argument("--assign", default=None, choices=("nearest", "origin", "index"),
                        help="with --symmetry: how free atoms are numbered into the Wyckoff slots (SymmetrySpec.assign)")
    parser.add_argument("--symmetry-start", type=float, default=None,
                        help="with --symmetry: the diffusion time from which the constraint holds (SymmetrySpec.start)")
    parser.add_argument("--settle", type=int, default=None,
                        help="with --symmetry: corrector steps right after the snap (SymmetrySpec.settle)")
    parser.add_argument("--element-patterns", choices=("on", "off"), default=None,
                        help="with --symmetry: MP-20 templates with their element patterns (SymmetrySpec.element_patterns)")
    parser.add_argument("--sampler", default="", metavar="KEY=VALUE,...",
                        help="a sampler variant, e.g. n_corrector_steps=0 (default: the official sampler)")
    add_campaign_arguments(parser, out="runs/bench_quality")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.conditions = {k: _axis(v) for k, v in (item.split("=", 1) for item in args.condition)}
    from mattergen_lab.sampling.frames import parse_sampler_text
    try:
        args.sampler = parse_sampler_text(args.sampler)
    except ValueError as exc:
        parser.error(str(exc))
    if args.num_samples < 1 or args.workers < 1:
        parser.error("--num-samples and --workers must be >= 1")
    warnings.filterwarnings("ignore", message="No Pauling electronegativity")
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    if args.data_dir:
        os.environ["MATTERGEN_LAB_DATA"] = str(Path(args.data_dir).resolve())  # the campaign's workers read it
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print(machine_line(info), flush=True)

    result, generated, timing = run_benchmark(args, out)
    from mattergen_lab.evaluation import STABILITY_THRESHOLD

    record = {
        "benchmark": "bench_quality",
        "checkpoint": args.checkpoint,
        "num_samples": args.num_samples,
        "timing": timing,
        "campaign_dir": str(out / "campaign"),
        "stability_threshold_ev_per_atom": STABILITY_THRESHOLD,
        "machine": info,
        "metrics": summary_metrics(result.metrics, result.table),
        "library_metrics": {k: v["value"] for k, v in result.metrics.items()},
        "protocol": result.protocol,
    }
    # Distribution against MP-20 (issue 13): elements per crystal, density, SMACT, P1, on the generated crystals.
    from mattergen_lab.evaluation.distribution import (
        distribution_stats,
        distribution_table,
        mp20_distribution_stats,
    )

    reference = mp20_distribution_stats("test", data_dir=args.data_dir, limit=2000)
    record["distribution"] = {"generated": distribution_stats(generated), "mp20": reference}
    record["distribution_markdown"] = distribution_table({args.checkpoint: record["distribution"]["generated"],
                                                          reference["reference"]: reference})
    record["symmetry"] = symmetry_record(args, out, result.table, generated)
    record["markdown"] = markdown_table(record)
    write_json(out, "quality", record)
    print(result.summary())
    print()
    print(record["markdown"])
    print()
    print(record["distribution_markdown"])
    from mattergen_lab.evaluation.symmetry_report import symmetry_markdown

    print()
    print(symmetry_markdown({args.checkpoint + (f" symmetry={args.symmetry}" if args.symmetry else ""): record["symmetry"]}))
    print(json.dumps({k: record["symmetry"][k] for k in ("by_elements", "by_mp20_system", "arms") if k in record["symmetry"]},
                     indent=1))
    print(f"\nwrote {out / 'quality.json'}")


if __name__ == "__main__":
    main()
