"""``mattergen-lab`` command line: ``train``, ``sample``, ``finetune``, ``quickstart``, ``checkpoints``, ``bundle``;
``evaluate`` is in :mod:`mattergen_lab.evaluation.cli`, ``campaign`` in :mod:`mattergen_lab.campaign.cli`, ``vary`` in
:mod:`mattergen_lab.sampling.cli`, ``lab`` in :mod:`mattergen_lab.cli_lab`, ``train``, ``finetune`` and ``bundle`` in :mod:`mattergen_lab.cli_train`; progress bars in
:mod:`mattergen_lab.cli_progress`.

Examples::

    mattergen-lab train --preset tiny --max-steps 300 --out runs/tiny
    mattergen-lab sample --checkpoint runs/tiny/best --num-samples 16 --steps 200 --out runs/tiny/samples
    mattergen-lab vary --structure LiFePO4.cif --strength 0.3 --num-samples 16 --out runs/lfp_variations
    torchrun --nproc_per_node 2 -m mattergen_lab.cli train --preset small --out runs/small   # DDP
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("mattergen_lab")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate crystals from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=None,
                   help="predictor-corrector steps (default: the checkpoint's recommended count; official: 1000)")
    p.add_argument("--num-atoms", type=int, default=None, help="atoms per cell (default: drawn from the model's training distribution)")
    p.add_argument("--out", required=True, help="output folder: cifs/gen_*.cif and generated_crystals.extxyz")
    p.add_argument("--condition", action="append", default=[], metavar="NAME=VALUE",
                   help="conditioning target, repeatable, e.g. --condition chemical_system=Li-Fe-O --condition hhi_score=1250")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance factor γ (0 = unconditional)")
    p.add_argument("--elements", default=None, help="only sample these elements, e.g. Li-Fe-O (a hard mask)")
    p.add_argument("--composition", default=None, metavar="FORMULA",
                   help="crystal-structure prediction with a CSP checkpoint (e.g. mgl_mp20_small_csp): every crystal has "
                        "exactly these atoms, e.g. Li2MnO3 (at most 20 atoms per cell)")
    p.add_argument("--formula-units", type=int, default=1, help="with --composition: formula units per cell (default 1)")
    p.add_argument("--sampler", default="", metavar="KEY=VALUE[,KEY=VALUE]",
                   help="sampler variant (default: the official predictor-corrector), e.g. n_corrector_steps=0 "
                        "(predictor only), coord_snr=0.2, predictor=ode; see benchmarks/bench_steps.py")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    _add_symmetry_flags(p)


def _add_symmetry_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--space-group", type=int, default=None, metavar="N",
                   help="symmetric mode: every crystal has space group N (1-230), on a Wyckoff template of it")
    g.add_argument("--crystal-system", default=None, metavar="NAME",
                   help="symmetric mode: templates of this crystal system (triclinic ... cubic), as MP-20 has them")
    g.add_argument("--symmetry", default=None, metavar="SPEC",
                   help="symmetric mode: mp20 (MP-20's space groups, Wyckoff letters and sizes), a space group, a "
                        "crystal system or a template such as 225:ab")
    p.add_argument("--element-patterns", action="store_true",
                   help="with a symmetric mode: MP-20's templates with their element patterns (orbits that share an "
                        "element in the MP-20 crystal share one; MP-20's numbers of elements; see docs/quality.md)")


def symmetry_from_args(args: argparse.Namespace) -> object:
    """What ``--space-group`` / ``--crystal-system`` / ``--symmetry`` ask for (``SamplingRequest.symmetry``), or None;
    with ``--element-patterns``, the spec with element patterns (``ValueError`` without a symmetric mode)."""
    if getattr(args, "space_group", None) is not None:
        value: object = args.space_group
    elif getattr(args, "crystal_system", None) is not None:
        from mattergen_lab.symmetry.groups import check_crystal_system

        value = check_crystal_system(args.crystal_system)
    else:
        value = getattr(args, "symmetry", None)
    if getattr(args, "element_patterns", False):
        if value is None:
            raise ValueError("--element-patterns needs a symmetric mode: --symmetry, --space-group or --crystal-system")
        import dataclasses

        from mattergen_lab.symmetry.templates import SymmetrySpec

        value = dataclasses.replace(SymmetrySpec.parse(value), element_patterns=True)
    return value


def _add_checkpoints(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("checkpoints", help="list the known checkpoints (checkpoints.yaml) and whether they are local")


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from mattergen_lab.checkpoints import cache_root, official_files_cached, registry

    rows = [("name", "kind", "local", "conditions on")]
    for name, rec in registry().items():
        local = official_files_cached(name) if rec.is_official else bool(rec.path and rec.path.exists())
        rows.append((name, rec.kind, "yes" if local else "no", rec.conditions()))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]  # columns as wide as their longest entry
    for row in rows:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[3])
    print(f"official checkpoints are cached in {cache_root()} ($MATTERGEN_LAB_CHECKPOINTS)")
    return 0


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="sample crystals from the bundled MP-20 model (CPU, offline, about a minute) and print them",
    )
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--checkpoint", default="mgl_mp20_small", help="registry name or folder (default: the bundled base model)")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's recommended count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-tiny", action="store_true",
                   help="first train a 'tiny' model on 3,000 MP-20 crystals (a few minutes) and sample from that instead")
    p.add_argument("--train-steps", type=int, default=1500, help="with --train-tiny: training steps")
    p.add_argument("--data-dir", default=None, help="with --train-tiny: data folder holding mp_20/")


def cmd_sample(args: argparse.Namespace) -> int:
    from mattergen_lab.cli_progress import sample_with_progress
    from mattergen_lab.sampling.cli import parse_conditions
    from mattergen_lab.sampling.frames import parse_sampler_text
    from mattergen_lab.sampling.request import SamplingRequest

    if not args.out.strip():  # '' would write into the working directory
        raise ValueError(f"--out {args.out!r} is empty; give an output folder")
    conditions = parse_conditions(args.condition)
    request = SamplingRequest(
        checkpoint=args.checkpoint,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        num_steps=args.steps,
        num_atoms=args.num_atoms,
        seed=args.seed,
        conditions=conditions,
        guidance_scale=args.guidance,
        elements=args.elements,
        device=args.device,
        composition=args.composition,
        formula_units=args.formula_units,
        sampler=parse_sampler_text(args.sampler),
        symmetry=symmetry_from_args(args),
    )
    paths = sample_with_progress(request, args.out, quiet=args.quiet)
    print(f"wrote {len(paths)} structures to {Path(args.out) / 'cifs'} and {Path(args.out) / 'generated_crystals.extxyz'}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from mattergen_lab.cli_progress import sample_with_progress
    from mattergen_lab.evaluation import check_structure
    from mattergen_lab.sampling.api import read_samples
    from mattergen_lab.sampling.request import SamplingRequest

    if args.num_samples < 1:
        raise ValueError(f"--num-samples {args.num_samples} must be at least 1")
    out = Path(args.out)
    checkpoint: str | Path = args.checkpoint
    if args.train_tiny:
        if not (out / "done").exists():  # train (or resume an interrupted run) until finished once
            print(f"Training the 'tiny' preset for {args.train_steps} steps on 3,000 MP-20 crystals (CPU, a few minutes)...")
            targs = build_parser().parse_args(
                ["train", "--preset", "tiny", "--out", str(out), "--splits", "val", "--limit", "3000", "--val-fraction", "0.05",
                 "--max-steps", str(args.train_steps), "--batch-size", "32", "--lr", "3e-3", "--val-every", "250",
                 "--seed", str(args.seed)] + (["--data-dir", args.data_dir] if args.data_dir else [])
                + (["--quiet"] if args.quiet else [])
            )
            from mattergen_lab.cli_train import cmd_train

            cmd_train(targs)
            (out / "done").write_text("training finished\n")
        checkpoint = out / "best"
    samples = out / "samples"
    steps = f"{args.steps} predictor-corrector steps" if args.steps else "the checkpoint's recommended step count"
    print(f"Sampling {args.num_samples} crystals from {checkpoint} with {steps} (resumes if interrupted)...")
    start = time.perf_counter()
    request = SamplingRequest(checkpoint=str(checkpoint), num_samples=args.num_samples,
                              batch_size=min(args.num_samples, 16), num_steps=args.steps, seed=args.seed, device="cpu")
    paths = sample_with_progress(request, samples, quiet=args.quiet)
    print(f"done in {time.perf_counter() - start:.0f} s")
    # the extxyz, not the CIFs: full precision, and the generated (not Niggli-reduced) cells
    structures = list(zip((p.name for p in paths), read_samples(samples, args.num_samples)))
    width = max([20] + [len(s.composition.reduced_formula) for _, s in structures])
    print(f"{'file':<12} {'formula':<{width}} {'atoms':>5} {'Å³/atom':>8} {'d_min Å':>8}  valid  density")
    implausible = 0
    for name, s in structures:
        c = check_structure(s)
        implausible += not c.plausible_density
        density = "ok" if c.plausible_density else "IMPLAUSIBLE"
        print(f"{name:<12} {s.composition.reduced_formula:<{width}} {len(s):>5} {c.volume_per_atom:>8.1f} {c.min_distance:>8.2f}  "
              f"{str(c.valid):<5}  {density}")
    if implausible:
        print(f"{implausible} crystal(s) have a density far outside MP-20's range (more than 3x beyond "
              "5.8-202 Å³/atom): 'valid' only means no two atoms are closer than 0.5 Å.")
    print(f"CIFs in {samples / 'cifs'}; all crystals in {samples / 'generated_crystals.extxyz'}")
    print("Next: evaluate them with `mattergen-lab evaluate --structures "
          f"{samples / 'generated_crystals.extxyz'} --out {out / 'evaluation'}`, or open notebooks/01_quickstart.ipynb")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mattergen-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True)
    from mattergen_lab.cli_train import add_bundle, add_finetune, add_train

    add_train(sub)
    _add_sample(sub)
    from mattergen_lab.sampling.cli import add_vary_parser

    add_vary_parser(sub)
    add_finetune(sub)
    _add_checkpoints(sub)
    _add_quickstart(sub)
    add_bundle(sub)
    from mattergen_lab.campaign.cli import add_parser as add_campaign
    from mattergen_lab.cli_lab import add_parser as add_lab
    from mattergen_lab.cli_progress import add_quiet_flags
    from mattergen_lab.evaluation.cli import add_parser as add_evaluate

    add_evaluate(sub)
    add_campaign(sub)
    add_lab(sub)
    add_quiet_flags(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mattergen_lab.campaign.cli import cmd_campaign
    from mattergen_lab.cli_lab import cmd_lab
    from mattergen_lab.cli_train import cmd_bundle, cmd_finetune, cmd_train
    from mattergen_lab.evaluation.cli import cmd_evaluate
    from mattergen_lab.sampling.cli import cmd_vary

    from mattergen_lab.console import silence_library_warnings

    args = build_parser().parse_args(argv)
    silence_library_warnings()  # pymatgen's noble-gas electronegativity, spglib's deprecations: not the user's business
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    commands = {"train": cmd_train, "sample": cmd_sample, "vary": cmd_vary, "quickstart": cmd_quickstart, "bundle": cmd_bundle, "finetune": cmd_finetune, "checkpoints": cmd_checkpoints,
                "evaluate": cmd_evaluate, "campaign": cmd_campaign, "lab": cmd_lab}
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as exc:  # a user's mistake: one line naming it
        print(f"mattergen-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be written, a full disk...
        print(f"mattergen-lab {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mattergen-lab {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug of ours: say so, and where to report it
        if args.debug:
            raise
        print(f"mattergen-lab {args.command}: internal error: {type(exc).__name__}: {exc}\n"
              "  This is a bug in mattergen-lab: please report it on the project's issue tracker with the command line\n"
              "  (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
