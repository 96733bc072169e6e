"""Official MatterGen checkpoints: their ``config.yaml`` → :class:`GemNetConfig`, their strict key mapping, loading.

:func:`load_official` reads an official Lightning ``.ckpt`` (through :func:`safe_torch_load`) into our
:class:`ScoreModel`, refusing any layout that does not match key for key and shape for shape.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from mattergen_lab.checkpoints.catalog import verify_sha256
from mattergen_lab.checkpoints.safe_load import safe_torch_load
from mattergen_lab.data.num_atoms import NumAtomsDistribution
from mattergen_lab.model.gemnet import OFFICIAL_UNUSED_KEY_PATTERNS, GemNetConfig
from mattergen_lab.model.io import CONFIG_FILE, WEIGHTS_FILE, Checkpoint, check_weights
from mattergen_lab.model.score_model import ScoreModel

OFFICIAL_PREFIX = "diffusion_module.model."


def official_gemnet_config(cfg_yaml: dict[str, Any]) -> GemNetConfig:
    """The GemNet-T architecture (incl. its adapters) described by an official ``config.yaml`` (parsed)."""
    model: Any = cfg_yaml
    for key in ("lightning_module", "diffusion_module", "model"):
        model = model.get(key) if isinstance(model, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("gemnet"), dict):
        raise ValueError("config.yaml has no lightning_module.diffusion_module.model.gemnet section")
    g = model["gemnet"]
    for key in ("emb_size_atom", "emb_size_edge", "latent_dim", "num_blocks", "max_neighbors", "max_cell_images_per_dim"):
        if key in g and (isinstance(g[key], bool) or not isinstance(g[key], int) or g[key] <= 0):
            raise ValueError(f"config.yaml: gemnet.{key}={g[key]!r} is not a positive integer")
    if "cutoff" in g and (isinstance(g["cutoff"], bool) or not isinstance(g["cutoff"], (int, float)) or not 0 < g["cutoff"] < 100):
        raise ValueError(f"config.yaml: gemnet.cutoff={g['cutoff']!r} is not a distance in Å between 0 and 100")
    listed = g.get("condition_on_adapt") or ()
    if isinstance(listed, str):  # tuple("dft_band_gap") would be 12 one-letter properties
        raise ValueError(f"config.yaml: gemnet.condition_on_adapt={listed!r} must be a list, e.g. [{listed!r}]")
    adapt = tuple(model.get("property_embeddings_adapt") or {}) or tuple(listed)
    if model.get("property_embeddings"):
        raise ValueError("base-level property_embeddings are not supported (no released checkpoint uses them)")
    kw = {k: g[k] for k in ("emb_size_atom", "emb_size_edge", "latent_dim", "num_blocks", "cutoff", "max_neighbors", "max_cell_images_per_dim") if k in g}
    return GemNetConfig(**kw, condition_on_adapt=adapt)


def map_official_state_dict(state_dict: dict[str, torch.Tensor], model: ScoreModel) -> dict[str, torch.Tensor]:
    """Official ``diffusion_module.model.*`` keys -> our keys; strict, with a readable diff on mismatch."""
    unused = [re.compile(p) for p in OFFICIAL_UNUSED_KEY_PATTERNS]
    mapped = {}
    foreign_prefix = []
    for key, value in state_dict.items():
        if not key.startswith(OFFICIAL_PREFIX):
            foreign_prefix.append(key)
            continue
        short = key[len(OFFICIAL_PREFIX):]
        if any(p.fullmatch(short) for p in unused):
            continue
        mapped[short] = value
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected)) + sorted(foreign_prefix)
    wrong = sorted(f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(expected[k].shape)}" for k in set(mapped) & set(expected) if mapped[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        lines = ["the checkpoint does not match the official MatterGen layout:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrongly shaped", wrong)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    - {k}" for k in items[:20]] + ([f"    … and {len(items) - 20} more"] if len(items) > 20 else [])
        raise ValueError("\n".join(lines))
    return mapped


def find_official_files(path: Path) -> tuple[Path, Path]:
    """``(last.ckpt, config.yaml)`` for an official checkpoint given as its file or its folder."""
    if path.is_file():
        ckpt = path
        for cand in (path.parent / "config.yaml", path.parent.parent / "config.yaml"):
            if cand.exists():
                return ckpt, cand
        raise ValueError(f"{path}: no config.yaml beside it or one folder up")
    cfg = path / "config.yaml"
    ckpts = sorted(path.rglob("last.ckpt")) or sorted(path.rglob("*.ckpt"))
    if not cfg.exists() or not ckpts:
        raise ValueError(f"{path} is neither a mattergen-lab checkpoint ({CONFIG_FILE} + {WEIGHTS_FILE}) nor an official one (config.yaml + *.ckpt)")
    return ckpts[0], cfg


def read_official_config(cfg_path: Path) -> dict[str, Any]:
    """An official ``config.yaml`` parsed safely; a broken file is a ``ValueError`` naming the file and the line."""
    try:
        cfg_yaml = yaml.safe_load(cfg_path.read_text(encoding="utf-8", errors="replace"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{cfg_path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(cfg_yaml, dict):
        raise ValueError(f"{cfg_path} is not a YAML mapping")
    return cfg_yaml


def load_official(path: str | os.PathLike, *, expected_sha256: str | None = None) -> Checkpoint:
    """Load an official MatterGen checkpoint (folder or ``.ckpt``) into our model, safely."""
    ckpt_path, cfg_path = find_official_files(Path(path))
    verify_sha256(ckpt_path, expected_sha256)
    cfg_yaml = read_official_config(cfg_path)
    gemnet_config = official_gemnet_config(cfg_yaml)  # a broken config is named before any weights are read
    obj = safe_torch_load(ckpt_path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ValueError(f"{ckpt_path} has no 'state_dict' of tensors; it is not a MatterGen Lightning checkpoint")
    state = obj["state_dict"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{ckpt_path}: state_dict entries are not tensors: {bad[:5]}")
    model = ScoreModel(gemnet_config)
    mapped = map_official_state_dict(state, model)
    check_weights(mapped, str(ckpt_path))
    model.load_state_dict(mapped, strict=True)
    config = {
        "source": "official",
        "path": str(ckpt_path),
        "properties": list(model.conditions),
        "scalers": model.scaler_summary(),
        "num_atoms_distribution": NumAtomsDistribution.from_table("ALEX_MP_20").to_dict(),
        "model": model.config.to_dict(),
    }
    return Checkpoint(model=model, config=config, path=ckpt_path)
