"""What a training run is given: :class:`TrainConfig` (its hyper-parameters) and the :class:`Dataset` protocol.

They sit below the loop (:mod:`~mattergen_lab.training.trainer`), the recipe (:mod:`~mattergen_lab.training.recipe`)
and validation (:mod:`~mattergen_lab.training.validation`), which all read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mattergen_lab.config import PlainConfig
from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.model.score_model import preset_config

#: ``TrainConfig.dtype`` -> the torch dtype of the run.
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Dataset(Protocol):
    """What the loop reads from a dataset (:class:`~mattergen_lab.data.CrystalDataset` is one)."""

    def __len__(self) -> int: ...
    def get_batch(self, indices: Any, *, dtype: torch.dtype = ...) -> CrystalBatch: ...
    def num_atoms_distribution(self) -> Any: ...


@dataclass(frozen=True)
class TrainConfig(PlainConfig):
    """Training hyper-parameters (official values where they apply, spec §6)."""

    preset: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-4
    batch_size: int = 32  # per process
    max_steps: int = 1000
    val_every: int = 200  # steps; checkpoints are written at each validation
    max_val_batches: int = 20
    grad_clip_value: float = 0.5
    lr_schedule: str = "wsd"  # "wsd": warm-up, stable, cosine decay (recipe.learning_rate); "plateau": official
    warmup_steps: int = 0
    decay_steps: int = 0  # "wsd": cosine decay to min_lr over the last decay_steps of max_steps (0: none)
    lr_factor: float = 0.6  # "plateau" only
    lr_patience: int = 100  # "plateau" only: epochs without improvement of the epoch's mean train loss
    min_lr: float = 1e-6
    ema_decay: float = 0.999  # 0: no EMA (the official recipe)
    fit_scale_factors: bool = True  # fresh models only; fine-tuning keeps the base model's values
    scale_fit_batches: int = 8
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    deterministic: bool = True  # torch.use_deterministic_algorithms during training
    p_unconditional: float = 0.2  # classifier-free guidance: probability of dropping each condition

    def __post_init__(self) -> None:
        positive_ints = ("batch_size", "max_steps", "val_every", "max_val_batches", "scale_fit_batches")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig: {name}={value!r} must be a positive integer")
        for name in ("lr", "grad_clip_value", "min_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"TrainConfig: {name}={value!r} must be a positive number")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"TrainConfig: lr_factor={self.lr_factor!r} must be in (0, 1)")
        if self.lr_schedule not in ("wsd", "plateau"):
            raise ValueError(f"TrainConfig: lr_schedule={self.lr_schedule!r} must be 'wsd' or 'plateau'")
        for name in ("warmup_steps", "decay_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainConfig: {name}={value!r} must be a non-negative integer")
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise ValueError(f"TrainConfig: ema_decay={self.ema_decay!r} must be in [0, 1)")
        if not 0 <= self.p_unconditional <= 1:
            raise ValueError(f"TrainConfig: p_unconditional={self.p_unconditional!r} must be in [0, 1]")
        if self.dtype not in DTYPES:
            raise ValueError(f"TrainConfig: dtype={self.dtype!r} must be one of {sorted(DTYPES)}")
        preset_config(self.preset, **self.model_overrides)  # validates preset and overrides
