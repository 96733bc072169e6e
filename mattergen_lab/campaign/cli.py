"""``mattergen-lab campaign run SPEC --out FOLDER`` and ``mattergen-lab campaign status FOLDER``."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("campaign", help="sample and evaluate a grid of requests on Ray; resumable")
    csub = p.add_subparsers(dest="campaign_command", required=True)
    r = csub.add_parser("run", help="run (or resume) a campaign spec (YAML) into a folder")
    r.add_argument("spec", help="campaign YAML (see mattergen_lab/campaign/spec.py or the README)")
    r.add_argument("--out", required=True, help="campaign folder; rerun with the same spec to resume")
    r.add_argument("--address", default=None, help="an existing Ray cluster ('auto', 'ray://head:10001'); default: a local Ray")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    r.add_argument("--max-retries", type=int, default=3, help="retries of a task whose worker died")
    r.add_argument("--ray-start-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long a local Ray may take to start (default 180, or $MATTERGEN_LAB_RAY_START_TIMEOUT)")
    s = csub.add_parser("status", help="what a campaign folder holds (also while it runs)")
    s.add_argument("folder")
    s.add_argument("--json", action="store_true", help="print the status as JSON")


def _print_status(st: dict, metrics: dict | None = None) -> None:
    print(f"{st['folder']}: {st['arms']} arm(s), {st['planned_crystals']} crystals planned")
    print(f"  sampling   {st['sample_tasks_done']}/{st['sample_tasks']} tasks, {st['sampled_crystals']} crystals")
    if st["evaluate_tasks"]:
        print(f"  evaluation {st['evaluate_tasks_done']}/{st['evaluate_tasks']} tasks, {st['evaluated_crystals']} crystals")
    for key, err in st["failed_tasks"].items():
        print(f"  FAILED {key}: {err.splitlines()[0] if err else ''}")
    if metrics:
        m = {k: v["value"] for k, v in metrics.items()}
        print(f"  so far: stable {m['frac_stable_structures']:.1%}  unique {m['frac_unique_structures']:.1%}  "
              f"S.U.N. {m['frac_novel_unique_stable_structures']:.1%}  mean RMSD {m['avg_rmsd_from_relaxation']:.3f} Å")
    print("  finished" if st["finished"] else "  not finished: rerun `campaign run` with the same spec to resume")


def cmd_campaign(args: argparse.Namespace) -> int:
    from mattergen_lab.campaign.runner import run_campaign
    from mattergen_lab.campaign.store import CampaignFolder
    from mattergen_lab.evaluation.results import compute_metrics

    if args.campaign_command == "status":
        folder = CampaignFolder(args.folder)
        st = folder.status()
        if args.json:
            print(json.dumps(st, indent=1))
            return 0
        table = folder.table()
        _print_status(st, compute_metrics(table) if len(table) else None)
        return 0
    try:
        result = run_campaign(args.spec, args.out, address=args.address, num_cpus=args.num_cpus,
                              max_retries=args.max_retries, start_timeout_s=args.ray_start_timeout,
                              progress=not getattr(args, "quiet", False))
    except TimeoutError as exc:  # Ray too slow to start on a busy machine: not a bug, and the message says what to do
        print(f"mattergen-lab campaign: error: {exc}", file=sys.stderr)
        return 2
    table = result.table
    _print_status(result.status, compute_metrics(table) if len(table) else None)
    print(f"{result.tasks_run} task(s) run in {result.seconds:.0f} s; table: {result.folder / 'per_structure.csv'}")
    return 1 if result.failures else 0
