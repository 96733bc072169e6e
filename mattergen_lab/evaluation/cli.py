"""``mattergen-lab evaluate --structures FILES --out FOLDER``: relax generated crystals and score them.

Wires the command line to :func:`~mattergen_lab.evaluation.evaluate.evaluate_structures`; the cheap mistakes
(device, output folder, threshold) are refused before any structure or model is read.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="relax generated crystals and score them: E_hull, stable/unique/novel (S.U.N.), RMSD, validity",
    )
    p.add_argument("--structures", required=True, help="folder of CIF/extxyz/POSCAR files, a .zip of CIFs, or an .extxyz file")
    p.add_argument("--out", required=True, help="results folder (per_structure.csv, metrics.json, protocol.json, relaxed/); reruns resume")
    p.add_argument("--relaxer", default="auto", choices=["auto", "chgnet", "mattersim"],
                   help="auto = MatterSim where its weights load, else CHGNet (offline)")
    p.add_argument("--mattersim-weights", default=None, help="MatterSim weights file (offline use)")
    p.add_argument("--relax-engine", default="auto", choices=["auto", "torchsim", "ase"],
                   help="torchsim = batched FIRE (many crystals at once), ase = one at a time (the reference); "
                   "auto = torchsim where torch-sim imports")
    p.add_argument("--reference", default="mp20", help="mp20 | mp-api | PATH (.json[.gz] entries, .csv, MatterGen LMDB .gz)")
    p.add_argument("--novelty-reference", default="mp20", help="mp20 | none")
    p.add_argument("--matcher", default="disordered", choices=["disordered", "ordered"])
    p.add_argument("--fmax", type=float, default=0.05, help="force convergence, eV/Å")
    p.add_argument("--max-steps", type=int, default=500, help="relaxation step cap per structure")
    p.add_argument("--max-seconds", type=float, default=120.0, help="relaxation time cap per structure")
    p.add_argument("--max-atoms", type=int, default=None,
                   help="cells with more atoms are not relaxed (status failed, with the reason); default 200, "
                   "raise it (up to 2,000) on a machine with the memory (CHGNet needed 9.6 GB for a 500-atom cell)")
    p.add_argument("--stability-threshold", type=float, default=0.1, help="stable if E_hull <= this (eV/atom)")
    p.add_argument("--allow-missing-reference", action="store_true",
                   help="evaluate structures with elements absent from the hull (their E_hull stays empty)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $MATTERGEN_LAB_DATA or ../shared/data)")
    p.add_argument("--device", default="cpu")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mattergen_lab.console import progress_bar, silence_library_warnings

    # pymatgen warns once per noble gas while scanning elements, and CHGNet about a tensor conversion: noise
    silence_library_warnings()
    from mattergen_lab.evaluation.evaluate import evaluate_structures
    from mattergen_lab.evaluation.inputs import read_structures
    from mattergen_lab.evaluation.relax import RelaxConfig, get_relaxer
    from mattergen_lab.fileio import check_writable_dir
    from mattergen_lab.limits import MAX_RELAX_ATOMS, check_at_most
    from mattergen_lab.sampling.request import validate_device

    validate_device(args.device)  # the mistakes that cost nothing to find, before any structure or model is read
    check_at_most("--max-atoms", args.max_atoms, MAX_RELAX_ATOMS, "MAX_RELAX_ATOMS",
                  "a relaxation's memory grows with the atoms (CHGNet took 9.6 GB for 500)")
    check_writable_dir(args.out, "--out")
    if not math.isfinite(args.stability_threshold):
        raise ValueError(f"--stability-threshold {args.stability_threshold} must be a finite number (eV/atom), e.g. 0.1")
    extra = {} if args.max_atoms is None else {"max_atoms": args.max_atoms}
    config = RelaxConfig(fmax=args.fmax, max_steps=args.max_steps, max_seconds=args.max_seconds, **extra)
    items = read_structures(args.structures)
    relaxer = get_relaxer(args.relaxer, device=args.device, load_path=args.mattersim_weights, config=config)
    bar = progress_bar(len(items), f"evaluate ({relaxer.name})", "structure", quiet=getattr(args, "quiet", False))

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    novelty = None if str(args.novelty_reference).lower() == "none" else args.novelty_reference
    try:
        result = evaluate_structures(
            [s for _, s in items], ids=[i for i, _ in items], relaxer=relaxer, reference=args.reference,
            novelty_reference=novelty, matcher=args.matcher, stability_threshold=args.stability_threshold,
            data_dir=args.data_dir, out_dir=args.out, allow_missing_reference=args.allow_missing_reference,
            progress=progress, relax_engine=args.relax_engine,
        )
    finally:
        bar.close()
    print(result.summary())
    print(f"per-structure table: {Path(args.out) / 'per_structure.csv'}")
    return 0
