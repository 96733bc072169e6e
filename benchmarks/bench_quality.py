"""Quality of a base model under our evaluation: validity, stable / unique / novel / S.U.N., RMSD.

Protocol (the issue's): sample ``--num-samples`` crystals from ``--checkpoint`` (its recommended number of
sampler steps unless ``--steps`` is given), then relax and score them with the library's evaluation: CHGNet
relaxation (FIRE, ``--fmax``, step cap ``--relax-max-steps``, time cap ``--relax-max-seconds`` per
structure), energy above the MP-20 reference hull, novelty against MP-20, the library's stability threshold
(``mattergen_lab.evaluation.STABILITY_THRESHOLD``), and MatterGen's disordered structure matcher:

    python benchmarks/bench_quality.py --checkpoint mgl_mp20_small --num-samples 256 --workers 2

Both stages are resumable: rerun the same command after an interruption and it continues (samples in
``OUT/samples``, evaluation in ``OUT/evaluation``; keep ``--workers``, ``--seed``, ``--batch-size`` and
``--steps`` unchanged, the script refuses otherwise). Wall times add up over resumed runs.

With ``--workers N > 1`` the structures are split round-robin (``gen_i`` goes to shard ``i % N``) and each
shard is evaluated by its own process (``OMP_NUM_THREADS=1``, results in ``OUT/evaluation/shard_k``). The
per-structure tables are then merged in generation order and ``is_unique`` is recomputed over the **whole
set** (the library computes uniqueness per call, i.e. per shard), on the relaxed structures as the library
does, before the aggregates are recomputed with the library's ``compute_metrics``.

Writes ``OUT/quality.json`` and prints a markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RELAX_STATUSES = ("converged", "max_steps", "timeout", "exploded", "failed")


# ====================================================================== pure helpers (tested)


def shard_indices(num_samples: int, workers: int) -> list[list[int]]:
    """Round-robin shards: sample ``i`` goes to shard ``i % workers`` (stable when ``num_samples`` grows)."""
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    return [list(range(k, num_samples, workers)) for k in range(workers)]


def merged_table(rows: Sequence[dict[str, Any]], relaxed: Sequence[Any], *, matcher: str = "disordered"):
    """The per-structure table of the whole set from per-shard rows (in generation order).

    The library's :func:`~mattergen_lab.evaluation.evaluate.finalize_table` recomputes ``is_unique`` (and the
    S.U.N. column) over all relaxed structures, replacing the per-shard values.
    """
    from mattergen_lab.evaluation.evaluate import finalize_table

    return finalize_table(rows, relaxed, matcher).drop(columns=["input_fingerprint"], errors="ignore")


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
        ("sampler steps", record["sampling"]["num_steps"]),
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
        ("wall time", (f"sampling {_duration(record['sampling']['wall_s'])}, evaluation "
                       f"{_duration(record['evaluation']['wall_s'])} ({record['evaluation']['workers']} worker(s))")),
    ]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


# ====================================================================== bookkeeping


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def read_generated(sample_dir: str | os.PathLike, num_samples: int) -> list[Any]:
    """``gen_0 … gen_{n-1}`` in generation order (:func:`mattergen_lab.sampling.api.read_samples`)."""
    from mattergen_lab.sampling.api import read_samples

    try:
        return read_samples(sample_dir, num_samples)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, obj: Any) -> None:
    from mattergen_lab.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def _check_same(path: Path, record: dict[str, Any], what: str) -> None:
    """Store ``record`` at ``path``, or refuse when an earlier run there used different settings."""
    previous = _read_json(path)
    if previous and previous != record:
        diff = {k: (previous.get(k), record.get(k)) for k in set(previous) | set(record) if previous.get(k) != record.get(k)}
        raise SystemExit(f"{path.parent} holds {what} made with other settings {diff}; use a new --out")
    if not previous:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, record)


def _add_time(out: Path, key: str, seconds: float) -> float:
    timings = _read_json(out / "timings.json")
    timings[key] = round(float(timings.get(key, 0.0)) + seconds, 1)
    _write_json(out / "timings.json", timings)
    return timings[key]


def _weights_sha256(checkpoint: str) -> str | None:
    import hashlib

    from mattergen_lab.checkpoints import load_checkpoint

    path = load_checkpoint(checkpoint).path
    weights = Path(path) / "model.safetensors" if path else None
    if weights is None or not weights.is_file():
        return None
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def _structures(out: Path, indices: Sequence[int]) -> tuple[list[str], list[Any]]:
    indices = list(indices)
    structures = read_generated(out / "samples", max(indices) + 1)
    return [f"gen_{i}" for i in indices], [structures[i] for i in indices]


def _relax_config(args: argparse.Namespace):
    from mattergen_lab.evaluation import RelaxConfig

    return RelaxConfig(fmax=args.fmax, max_steps=args.relax_max_steps, max_seconds=args.relax_max_seconds)


def _evaluate(ids: list[str], structures: list[Any], args: argparse.Namespace, out_dir: Path, progress=None):
    from mattergen_lab.evaluation import STABILITY_THRESHOLD, evaluate_structures

    return evaluate_structures(
        structures, ids=ids, relaxer=args.relaxer, reference="mp20", novelty_reference="mp20",
        matcher="disordered", stability_threshold=STABILITY_THRESHOLD, relax_config=_relax_config(args),
        data_dir=args.data_dir, out_dir=out_dir, progress=progress,
    )


# ====================================================================== stages


def sample_stage(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from mattergen_lab.checkpoints import load_checkpoint
    from mattergen_lab.sampling.api import recommended_num_steps, sample_to_dir

    steps = args.steps or recommended_num_steps(load_checkpoint(args.checkpoint))
    request = {"checkpoint": args.checkpoint, "weights_sha256": _weights_sha256(args.checkpoint), "num_steps": steps,
               "seed": args.seed, "batch_size": args.batch_size}
    _check_same(out / "samples" / "request.json", request, "samples")
    done = [0]

    def on_batch(k: int) -> None:
        done[0] += k
        print(f"  sampled {done[0]} new crystals ({time.perf_counter() - t0:.0f} s)", flush=True)

    print(f"sampling {args.num_samples} crystals, {steps} steps, batch {args.batch_size} → {out / 'samples'}", flush=True)
    t0 = time.perf_counter()
    sample_to_dir(args.checkpoint, out / "samples", num_samples=args.num_samples, batch_size=args.batch_size,
                  num_steps=steps, seed=args.seed, on_batch=on_batch)
    wall = _add_time(out, "sampling_wall_s", time.perf_counter() - t0)
    return {**request, "wall_s": wall, "new_this_run": done[0]}


def _shard_command(args: argparse.Namespace, k: int) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), "--num-samples", str(args.num_samples),
           "--workers", str(args.workers), "--relaxer", args.relaxer, "--fmax", str(args.fmax),
           "--relax-max-steps", str(args.relax_max_steps), "--relax-max-seconds", str(args.relax_max_seconds),
           "--shard", str(k)]
    if args.data_dir:
        cmd += ["--data-dir", str(args.data_dir)]
    return cmd


def run_shard(args: argparse.Namespace) -> None:
    """Child process: evaluate shard ``args.shard`` into ``OUT/evaluation/shard_k``."""
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    indices = shard_indices(args.num_samples, args.workers)[args.shard]
    ids, structures = _structures(out, indices)
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(f"shard {args.shard}: {done}/{total} ({time.perf_counter() - t0:.0f} s)", flush=True)

    _evaluate(ids, structures, args, out / "evaluation" / f"shard_{args.shard}", progress)


def _progress_line(shard_dirs: list[Path], total: int, t0: float) -> str:
    from mattergen_lab.fileio import read_jsonl

    done = sum(len({r["id"] for r in read_jsonl(d / "results.jsonl")}) for d in shard_dirs)
    return f"  evaluated {done}/{total} (incl. earlier runs; {time.perf_counter() - t0:.0f} s)"


def evaluate_stage(args: argparse.Namespace, out: Path) -> tuple[Any, dict[str, Any]]:
    from mattergen_lab.evaluation import EvaluationResult, compute_metrics
    from mattergen_lab.evaluation.evaluate import write_result
    from mattergen_lab.fileio import read_jsonl

    eval_dir = out / "evaluation"
    _check_same(eval_dir / "layout.json", {"workers": args.workers}, "an evaluation")
    t0 = time.perf_counter()
    if args.workers == 1:
        ids, structures = _structures(out, range(args.num_samples))

        def progress(done: int, total: int) -> None:
            if done % 8 == 0 or done == total:
                print(f"  evaluated {done}/{total} ({time.perf_counter() - t0:.0f} s)", flush=True)

        result = _evaluate(ids, structures, args, eval_dir, progress)
        wall = _add_time(out, "evaluation_wall_s", time.perf_counter() - t0)
        return result, {"wall_s": wall, "workers": 1, "uniqueness": "library (whole set, one call)"}

    shard_dirs = [eval_dir / f"shard_{k}" for k in range(args.workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs = []
    shards = shard_indices(args.num_samples, args.workers)
    for k, d in enumerate(shard_dirs):
        d.mkdir(parents=True, exist_ok=True)
        if {f"gen_{i}" for i in shards[k]} <= {str(r["id"]) for r in read_jsonl(d / "results.jsonl")}:
            continue  # finished in an earlier run
        log = open(eval_dir / f"shard_{k}.log", "a")  # noqa: SIM115 - closed below
        procs.append((k, subprocess.Popen(_shard_command(args, k), stdout=log, stderr=subprocess.STDOUT, env=env), log))
    print(f"evaluating in {len(procs)} processes (logs: {eval_dir}/shard_*.log)", flush=True)
    last = time.perf_counter()
    while any(p.poll() is None for _, p, _ in procs):
        time.sleep(2)
        if time.perf_counter() - last >= args.progress_every:
            print(_progress_line(shard_dirs, args.num_samples, t0), flush=True)
            last = time.perf_counter()
    for _, _, log in procs:
        log.close()
    failed = [k for k, p, _ in procs if p.returncode != 0]
    wall = _add_time(out, "evaluation_wall_s", time.perf_counter() - t0)
    if failed:
        tails = "\n".join(f"--- shard {k} ---\n" + (eval_dir / f"shard_{k}.log").read_text()[-2000:] for k in failed)
        raise SystemExit(f"evaluation shard(s) {failed} failed:\n{tails}")

    # Merge in generation order; uniqueness over the whole set, then the library's aggregates.
    from pymatgen.core import Structure

    shard_of = {i: k for k, idx in enumerate(shards) for i in idx}
    done = [{str(r["id"]): r for r in read_jsonl(d / "results.jsonl")} for d in shard_dirs]
    rows, relaxed = [], []
    for i in range(args.num_samples):
        sid, d = f"gen_{i}", shard_dirs[shard_of[i]]
        if sid not in done[shard_of[i]]:
            raise SystemExit(f"{d}: no result for {sid}; rerun to resume")
        rows.append(done[shard_of[i]][sid])
        path = d / "relaxed" / f"{sid}.cif"
        try:
            relaxed.append(Structure.from_file(path) if path.is_file() else None)
        except ValueError as exc:  # an unreadable CIF (degenerate cell): no relaxed structure, not unique
            print(f"  warning: {path}: {exc}; counted as having no relaxed structure", flush=True)
            relaxed.append(None)
    table = merged_table(rows, relaxed, matcher="disordered")
    protocol = {**_read_json(shard_dirs[0] / "protocol.json"), "num_structures": args.num_samples,
                "num_evaluated": len(rows), "evaluation_workers": args.workers,
                "uniqueness": "recomputed over the merged set of all shards (relaxed structures)"}
    result = EvaluationResult(table, compute_metrics(table), protocol, relaxed)
    write_result(result, eval_dir)
    return result, {"wall_s": wall, "workers": args.workers, "uniqueness": protocol["uniqueness"]}


# ====================================================================== main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="mgl_mp20_small")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's recommended count)")
    parser.add_argument("--batch-size", type=int, default=16, help="sampling batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_quality")
    parser.add_argument("--relaxer", default="chgnet", choices=["chgnet", "mattersim", "auto"])
    parser.add_argument("--relax-max-steps", type=int, default=200)
    parser.add_argument("--relax-max-seconds", type=float, default=60.0)
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    parser.add_argument("--workers", type=int, default=1, help="evaluation processes (each single-threaded)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--progress-every", type=float, default=60.0, help="seconds between progress lines (workers > 1)")
    parser.add_argument("--shard", type=int, default=None, help=argparse.SUPPRESS)  # internal: one evaluation shard
    args = parser.parse_args()
    if args.num_samples < 1 or args.workers < 1:
        parser.error("--num-samples and --workers must be >= 1")
    if args.workers > args.num_samples:
        parser.error(f"--workers {args.workers} is more than --num-samples {args.num_samples}")
    warnings.filterwarnings("ignore", message="No Pauling electronegativity")
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    if args.shard is not None:
        run_shard(args)
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print(f"# {info['processor']}, {info['cpu_count']} cores, torch {info['torch']}, threads {info['torch_threads']}, "
          f"OMP_NUM_THREADS={info['OMP_NUM_THREADS']}", flush=True)

    sampling = sample_stage(args, out)
    result, evaluation = evaluate_stage(args, out)
    from mattergen_lab.evaluation import STABILITY_THRESHOLD

    record = {
        "benchmark": "bench_quality",
        "checkpoint": args.checkpoint,
        "num_samples": args.num_samples,
        "sampling": sampling,
        "evaluation": {**evaluation, "out_dir": str(out / "evaluation")},
        "stability_threshold_ev_per_atom": STABILITY_THRESHOLD,
        "machine": info,
        "metrics": summary_metrics(result.metrics, result.table),
        "library_metrics": {k: v["value"] for k, v in result.metrics.items()},
        "protocol": result.protocol,
    }
    # Distribution against MP-20 (issue 13): elements per crystal, density, SMACT, P1, on the generated crystals.
    from mattergen_lab.evaluation.distribution import distribution_stats, distribution_table, mp20_distribution_stats

    generated = read_generated(out / "samples", args.num_samples)
    reference = mp20_distribution_stats("test", data_dir=args.data_dir, limit=2000)
    record["distribution"] = {"generated": distribution_stats(generated), "mp20": reference}
    record["distribution_markdown"] = distribution_table({args.checkpoint: record["distribution"]["generated"],
                                                          reference["reference"]: reference})
    record["markdown"] = markdown_table(record)
    _write_json(out / "quality.json", record)
    print(result.summary())
    print()
    print(record["markdown"])
    print()
    print(record["distribution_markdown"])
    print(f"\nwrote {out / 'quality.json'}")


if __name__ == "__main__":
    main()
