"""``mattergen-lab train``, ``finetune`` and ``bundle``: the commands that make models (split from
:mod:`mattergen_lab.cli`, which registers them)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("mattergen_lab")


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a score model on MP-20 (or your own CSV)")
    p.add_argument("--out", required=True, help="output folder (checkpoints in OUT/best and OUT/last)")
    p.add_argument("--preset", default="small", help="architecture: tiny | small | medium | official")
    p.add_argument("--data-dir", default=None, help="data folder holding mp_20/ (default: $MATTERGEN_LAB_DATA or ../shared/data)")
    p.add_argument("--csv", default=None, help="train on this CSV (columns: cif[, material_id, properties]) instead of MP-20")
    p.add_argument("--splits", default="val,test,train", help="MP-20 splits to train on (comma separated)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="held-out validation fraction (seeded)")
    p.add_argument("--limit", type=int, default=None, help="use only the first LIMIT crystals (quick runs)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32, help="crystals per process and step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--lr-schedule", default="wsd", choices=["wsd", "plateau"],
                   help="wsd: warm-up, constant, cosine decay over the last --decay-steps; plateau: the official reduce-on-plateau")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--decay-steps", type=int, default=0, help="wsd: decay over the last DECAY_STEPS of --max-steps (0: none)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the weights (0: off, the official recipe)")
    p.add_argument("--no-fit-scales", action="store_true", help="keep the preset's initial scale factors (no fit on data)")
    p.add_argument("--model-overrides", default=None, help='JSON of architecture fields to change, e.g. \'{"max_neighbors": 16}\'')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", default=None, help="JSON file with TrainConfig fields (flags override nothing in it)")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if OUT/last exists")


def add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a base checkpoint with property adapters, or into a CSP model (--csp)")
    p.add_argument("--base", required=True, help="base checkpoint: registry name or path")
    p.add_argument("--data", default=None, help="a CSV (cif + property columns) or a data folder holding mp_20/")
    p.add_argument("--property", action="append", default=[], dest="properties", metavar="NAME",
                   help="property to condition on (repeatable), e.g. dft_mag_density, hhi_score, chemical_system")
    p.add_argument("--csp", action="store_true",
                   help="crystal-structure prediction: atom types given and never noised, no type loss (no --property)")
    p.add_argument("--symmetric", action="store_true",
                   help="train on symmetric noise inside each crystal's Wyckoff template (for --symmetry sampling; "
                        "no --property; a base with a space_group adapter keeps it, labelled with each template's "
                        "group; the symmetrised data is cached in OUT/symmetric_data.npz)")
    p.add_argument("--symmetry-start", type=float, default=0.4,
                   help="with --symmetric: the diffusion time below which crystals are noised in their templates "
                        "(above it, as usual), which the model then recommends to the symmetric mode (default 0.4)")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--decay-steps", type=int, default=0, help="cosine decay over the last DECAY_STEPS of --max-steps (0: none)")
    p.add_argument("--out", required=True)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-6, help="official fine-tuning rate; tiny CPU models like ~1e-3")
    p.add_argument("--splits", default="val,test,train", help="MP-20 splits, when --data is not a CSV")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def _load_training_data(args: argparse.Namespace):
    from mattergen_lab.data import CrystalDataset, load_csv, load_mp20

    if args.csv:
        data = load_csv(args.csv)
    else:
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        parts = [load_mp20(s, data_dir=args.data_dir) for s in splits]
        data = parts[0] if len(parts) == 1 else CrystalDataset.concat(parts)
    if args.limit:
        data = data.subset(range(min(args.limit, len(data))))
    return data.split_validation(args.val_fraction, seed=args.seed)


def check_device(device: str) -> str:
    """``--device`` checked before any data or model is loaded (``cuda`` on a CPU box, ``tpu``: one line)."""
    from mattergen_lab.sampling.request import validate_device

    return validate_device(device)


def cmd_train(args: argparse.Namespace) -> int:
    from mattergen_lab.cli_progress import training_callback
    from mattergen_lab.training.trainer import TrainConfig, train

    check_device(args.device)
    if args.config:
        cfg = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
        check_device(cfg.device)
    else:
        cfg = TrainConfig(
            preset=args.preset, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
            val_every=args.val_every, seed=args.seed, device=args.device, lr_schedule=args.lr_schedule,
            warmup_steps=args.warmup_steps, decay_steps=args.decay_steps, ema_decay=args.ema_decay,
            fit_scale_factors=not args.no_fit_scales,
            model_overrides=json.loads(args.model_overrides) if args.model_overrides else {},
        )
    train_data, val_data = _load_training_data(args)
    log.info("training on %d crystals, validating on %d", len(train_data), len(val_data))
    on_step, bar = training_callback(cfg.max_steps, "train", quiet=args.quiet)
    data_info = {"source": args.csv or f"MP-20 {args.splits}", "num_train": len(train_data), "num_val": len(val_data)}
    try:
        result = train(cfg, train_data, val_data, args.out, resume=not args.no_resume, extra_config={"data": data_info},
                       callback=on_step)
    finally:
        bar.close()
    bar.close()
    print(f"best validation loss {result.best_val_loss:.4f}; checkpoint: {result.checkpoint_dir}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from mattergen_lab.checkpoints import load_checkpoint
    from mattergen_lab.cli_progress import training_callback
    from mattergen_lab.data import CrystalDataset, load_csv, load_mp20
    from mattergen_lab.model.property_embeddings import SUPPORTED_PROPERTIES
    from mattergen_lab.training.finetune import finetune
    from mattergen_lab.training.trainer import TrainConfig

    if (args.csp or args.symmetric) and args.properties:
        raise ValueError(f"--csp and --symmetric fine-tune without new adapters; drop --property {args.properties}")
    if args.csp and args.symmetric:
        raise ValueError("--csp and --symmetric are two different fine-tunings; choose one")
    if not (args.csp or args.symmetric) and not args.properties:
        raise ValueError("finetune needs --property NAME (repeatable), --csp or --symmetric")
    unknown = [p for p in args.properties if p not in SUPPORTED_PROPERTIES]
    if unknown:
        raise ValueError(f"unknown property {unknown[0]!r}; supported: {list(SUPPORTED_PROPERTIES)}")
    check_device(args.device)
    base = load_checkpoint(args.base)
    if args.data and Path(args.data).is_file():
        data = load_csv(args.data)
    else:
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        data = CrystalDataset.concat([load_mp20(s, data_dir=args.data) for s in splits])
    needs_derived = {"hhi_score", "space_group"} & set(args.properties) - set(data.properties)
    if needs_derived:
        from mattergen_lab.properties import add_derived_properties

        data = add_derived_properties(data, names=sorted(needs_derived))
    if args.limit:
        data = data.subset(range(min(args.limit, len(data))))
    if args.symmetric:
        from mattergen_lab.symmetry.dataset import symmetrize_dataset

        print(f"symmetrising {len(data)} crystals (cached in {Path(args.out) / 'symmetric_data.npz'})", flush=True)
        data = symmetrize_dataset(data, Path(args.out) / "symmetric_data.npz", start=args.symmetry_start)
        if "space_group" in getattr(base.model, "conditions", ()):  # a space-group adapter: each template's group
            data = data.with_template_groups()
    train_data, val_data = data.split_validation(args.val_fraction, seed=args.seed)
    cfg = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, val_every=args.val_every,
                      seed=args.seed, device=args.device, warmup_steps=args.warmup_steps, decay_steps=args.decay_steps)
    data_info = {"source": args.data or f"MP-20 {args.splits}", "num_train": len(train_data), "num_val": len(val_data),
                 "val_fraction": args.val_fraction, "seed": args.seed}
    on_step, bar = training_callback(cfg.max_steps, "finetune", quiet=args.quiet)
    try:
        if args.symmetric:
            from mattergen_lab.training.finetune import finetune_symmetric

            result = finetune_symmetric(base, train_data, val_data, args.out, cfg, extra_config={"data": data_info},
                                        callback=on_step)
        elif args.csp:
            from mattergen_lab.training.finetune import finetune_csp

            result = finetune_csp(base, train_data, val_data, args.out, cfg, extra_config={"data": data_info},
                                  callback=on_step)
        else:
            result = finetune(base, args.properties, train_data, val_data, args.out, cfg,
                              extra_config={"data": data_info}, callback=on_step)
    finally:
        bar.close()
    print(f"best validation loss {result.best_val_loss:.4f}; checkpoint: {result.checkpoint_dir}")
    return 0


def add_bundle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="copy a trained folder into checkpoints/<name>/ and register it in checkpoints.yaml")
    p.add_argument("source", help="a trained folder (config.json + model.safetensors), e.g. runs/x/best")
    p.add_argument("--name", required=True)
    p.add_argument("--description", required=True)
    p.add_argument("--training-data", required=True)
    p.add_argument("--num-steps", type=int, required=True, help="recommended sampling steps, stored in config.json")
    p.add_argument("--card", default=None, help="Markdown file with the model card's text (provenance); losses are appended")


def cmd_bundle(args: argparse.Namespace) -> int:
    from mattergen_lab.checkpoints import bundle_checkpoint

    card = Path(args.card).read_text() if args.card else ""
    record = bundle_checkpoint(args.source, args.name, description=args.description, training_data=args.training_data,
                               num_steps=args.num_steps, card=card)
    print(f"registered {record.name} ({record.path}, sha256 {record.sha256}, properties {list(record.properties)})")
    return 0
