"""``mattergen-lab vary``: variations, inpainting and substitutions of a crystal you know, from the command line::

    mattergen-lab vary --structure LiFePO4.cif --strength 0.3 --num-samples 16 --out runs/lfp
    mattergen-lab vary --structure LiFePO4.cif --fix-sites anions --num-samples 16 --out runs/lfp_inpaint
    mattergen-lab vary --structure LiFePO4.cif --substitute Fe=Mn,Co --num-samples 16 --out runs/lfp_subst
    mattergen-lab vary --structure LiFePO4.cif --keep-symmetry --num-samples 16 --out runs/lfp_sym

It builds one :class:`~mattergen_lab.sampling.request.SamplingRequest` with ``parent=`` (every refusal is raised
there, before a model is loaded or a folder made) and writes through
:meth:`~mattergen_lab.sampling.pipeline.SamplingPipeline.to_dir`, like ``sample``. The top-level parser
(:mod:`mattergen_lab.cli`) registers it, as it does ``evaluate`` and ``campaign``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_conditions(items: list[str]) -> dict[str, str]:
    """``--condition NAME=VALUE`` (repeatable) as a dict; ``ValueError`` names a malformed or repeated one."""
    conditions: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--condition {item!r} must look like NAME=VALUE")
        if name.strip() in conditions:  # one used to win silently
            raise ValueError(f"--condition {name.strip()} is given twice ({conditions[name.strip()]!r} and "
                             f"{value.strip()!r}); give each property once")
        conditions[name.strip()] = value.strip()
    return conditions


def add_vary_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vary", help="sample variations of a crystal you know: partial noising (--strength), "
                                    "inpainting (--fix-sites), guided substitution (--substitute)")
    p.add_argument("--structure", required=True, help="the parent: a CIF, POSCAR/CONTCAR or one-frame extxyz file (ordered)")
    p.add_argument("--strength", type=float, default=None,
                   help="start time t0 in (0, 1]: near 0 keeps the parent, 1 samples from scratch "
                        "(default 0.3; 1.0 with --fix-sites; 0.2 with --substitute)")
    p.add_argument("--fix-sites", default=None, metavar="SITES",
                   help="keep these sites' elements and fractional coordinates and the parent's cell, generate the rest: "
                        "indices (0,3,5 or 0-3, in the file's site order), elements (O or Fe,O) or 'anions'")
    p.add_argument("--num-atoms", type=int, default=None,
                   help="with --fix-sites: atoms per crystal, the fixed sites plus new atoms generated from scratch "
                        "(default: the parent's count, its other sites re-generated)")
    p.add_argument("--substitute", action="append", default=None, metavar="EL=EL,EL",
                   help="re-sample every site of an element among others, keep the rest (repeatable), e.g. Fe=Mn,Co")
    p.add_argument("--keep-symmetry", action="store_true",
                   help="symmetric mode: every variation keeps the parent's space group and Wyckoff sites (the parent "
                        "symmetrised at 0.1 Å, in its primitive cell)")
    p.add_argument("--checkpoint", default=None,
                   help="registry name or folder (default: the bundled base model, mgl_mp20_small; with "
                        "--keep-symmetry the one trained on symmetric noise, mgl_mp20_small_symmetric)")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=None,
                   help="steps of the full schedule (default: the checkpoint's); a variation runs those at or below t0")
    p.add_argument("--out", required=True, help="output folder: cifs/gen_*.cif, generated_crystals.extxyz, sampling.json")
    p.add_argument("--condition", action="append", default=[], metavar="NAME=VALUE", help="conditioning target (repeatable)")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance factor γ (0 = unconditional)")
    p.add_argument("--elements", default=None, help="re-sampled sites only take these elements, e.g. Li-Fe-O")
    p.add_argument("--sampler", default="", metavar="KEY=VALUE[,KEY=VALUE]", help="sampler variant, as for sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def cmd_vary(args: argparse.Namespace) -> int:
    from mattergen_lab.console import progress_bar
    from mattergen_lab.sampling.frames import parse_sampler_text
    from mattergen_lab.sampling.pipeline import SamplingPipeline
    from mattergen_lab.sampling.request import SamplingRequest
    from mattergen_lab.sampling.variation import vary_checkpoint

    if not args.out.strip():
        raise ValueError(f"--out {args.out!r} is empty; give an output folder")
    request = SamplingRequest(  # every refusal (parent, strength, sites, substitution) is raised here, before any work
        checkpoint=vary_checkpoint(args.checkpoint, args.keep_symmetry), num_samples=args.num_samples, batch_size=args.batch_size, num_steps=args.steps,
        seed=args.seed, conditions=parse_conditions(args.condition), guidance_scale=args.guidance, elements=args.elements,
        device=args.device, sampler=parse_sampler_text(args.sampler), parent=args.structure, strength=args.strength,
        fix_sites=args.fix_sites, substitute=";".join(args.substitute) if args.substitute else None,
        symmetry="parent" if args.keep_symmetry else None, num_atoms=args.num_atoms,
    )
    pipe = SamplingPipeline.for_request(request)
    bar = progress_bar(args.num_samples, "vary", "crystal", quiet=getattr(args, "quiet", False))
    paths = pipe.to_dir(request, args.out, on_batch=lambda n: bar.update(n))
    bar.close()
    parent = request.parent
    kept = f", template {request.symmetry}" if request.symmetry is not None else ""
    print(f"wrote {len(paths)} variations of {parent.formula} (sha256 {parent.sha256[:12]}, strength {request.strength}{kept}) "
          f"to {Path(args.out) / 'cifs'} and {Path(args.out) / 'generated_crystals.extxyz'}")
    return 0
