"""Our own checkpoint format: a directory with ``model.safetensors`` and a plain ``config.json``.

* ``config.json``: ``{"format": "mattergen-lab/1", "model": GemNetConfig dict, "diffusion": dict,
  "num_atoms_distribution": {n: p}, "training": {...}, ...}``: plain data, never class paths.
* ``model.safetensors``: the :class:`~mattergen_lab.model.score_model.ScoreModel` state dict.
* ``trainer_state.pt`` (optional): optimizer / scheduler / RNG state for resuming training. It holds only
  tensors and plain containers and is read with ``torch.load(weights_only=True)``.

Loading never unpickles code.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mattergen_lab.limits import MAX_NUM_STEPS, check_at_most
from mattergen_lab.model.gemnet import GemNetConfig
from mattergen_lab.model.score_model import ScoreModel
from mattergen_lab.noise.joint import DiffusionConfig

FORMAT = "mattergen-lab/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model plus its plain config dict."""

    model: ScoreModel
    config: dict[str, Any]
    path: Path | None = None
    trainer_state: dict[str, Any] | None = field(default=None, repr=False)


def _atomic_write_bytes(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(
    directory: str | os.PathLike,
    model: ScoreModel,
    config: dict[str, Any],
    *,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically file by file; ``config['model']`` is filled in."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(config)
    cfg["format"] = FORMAT
    cfg["model"] = model.config.to_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write_bytes(directory / WEIGHTS_FILE, lambda p: save_file(state, p))
    _atomic_write_bytes(directory / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(cfg, indent=2, sort_keys=True)))
    if trainer_state is not None:
        _atomic_write_bytes(directory / TRAINER_STATE_FILE, lambda p: torch.save(trainer_state, p))
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} not found: a mattergen-lab checkpoint is a folder with {CONFIG_FILE} and {WEIGHTS_FILE}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{path}: format={cfg.get('format') if isinstance(cfg, dict) else None!r}, expected {FORMAT!r}")
    if not isinstance(cfg.get("model"), dict):
        raise ValueError(f"{path}: missing the 'model' section")
    return cfg


#: Smallest standard deviation of a property scaler: a fitted one is at least 1e-5 (the official scaler adds it).
MIN_SCALER_STD = 1e-6


def check_weights(state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights that are not finite floating-point numbers, and a degenerate property scaler (std ~ 0),
    naming the tensor: int32 weights sampled a 624,434 Å cell, NaN ones ended deep in a linear-algebra error."""
    for key, tensor in state.items():
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"{where}: tensor {key!r} is {str(tensor.dtype).replace('torch.', '')}, not floating "
                             "point; the weights are corrupt or not a mattergen-lab model")
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(f"{where}: tensor {key!r} has {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}")
        if key.endswith("scaler.stds") and not bool((tensor.abs() >= MIN_SCALER_STD).all()):
            raise ValueError(f"{where}: property scaler {key!r} has std {tensor.tolist()}: a degenerate scaler (a "
                             f"fitted one is at least 1e-5) would divide the target by zero")


def load_local_checkpoint(
    directory: str | os.PathLike, *, map_location: str | torch.device = "cpu", with_trainer_state: bool = False
) -> Checkpoint:
    """Load one of our checkpoint folders (strict: every key must match)."""
    directory = Path(directory)
    cfg = read_config(directory)
    try:  # every size and schedule bounded before any layer is allocated (mattergen_lab.limits)
        gemnet = GemNetConfig.from_dict(cfg["model"])
        DiffusionConfig.from_dict(cfg.get("diffusion") or {})
        steps = (cfg.get("sampling") or {}).get("num_steps")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"sampling.num_steps={steps!r} must be a positive integer")
        check_at_most("sampling.num_steps", steps, MAX_NUM_STEPS, "MAX_NUM_STEPS", "the official sampler takes 1,000")
    except ValueError as exc:
        raise ValueError(f"{directory / CONFIG_FILE}: {exc}") from None
    model = ScoreModel(gemnet)
    weights = directory / WEIGHTS_FILE
    try:
        state = load_file(str(weights), device=str(map_location))
    except FileNotFoundError:
        raise ValueError(f"{weights} not found") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{weights} is not a valid safetensors file: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{weights} does not match its config: missing={missing}, unexpected={unexpected}, wrong shape={wrong}"
        )
    check_weights(state, str(weights))
    model.load_state_dict(state, strict=True)
    trainer_state = None
    if with_trainer_state and (directory / TRAINER_STATE_FILE).exists():
        trainer_state = torch.load(directory / TRAINER_STATE_FILE, map_location=map_location, weights_only=True)
    return Checkpoint(model=model.to(map_location), config=cfg, path=directory, trainer_state=trainer_state)
