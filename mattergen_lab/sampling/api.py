"""High-level sampling: checkpoint (name or path) -> sampler -> structures / files.

This is the one public function set that the CLI, notebooks and widgets call::

    from mattergen_lab.sampling.api import load_sampler
    sampler, info = load_sampler("runs/tiny/best", num_steps=200)
    for frame in sampler.iter_steps([8, 8], generator=torch.Generator().manual_seed(0), every=10): ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mattergen_lab.checkpoints import load_checkpoint
from mattergen_lab.data.num_atoms import NumAtomsDistribution
from mattergen_lab.model.io import Checkpoint
from mattergen_lab.noise.joint import DiffusionConfig, JointDiffusion
from mattergen_lab.sampling.guidance import ClassifierFreeGuidance
from mattergen_lab.sampling.sampler import PredictorCorrectorSampler, SamplerConfig


@dataclass(frozen=True)
class SamplerInfo:
    """What a sampler was built from (for reports and exports)."""

    checkpoint: str
    num_atoms: NumAtomsDistribution
    properties: tuple[str, ...]
    guidance_scale: float
    sampler_config: SamplerConfig


def build_sampler(
    ckpt: Checkpoint,
    *,
    num_steps: int = 1000,
    guidance_scale: float = 0.0,
    device: torch.device | str = "cpu",
    sampler_config: SamplerConfig | None = None,
) -> tuple[PredictorCorrectorSampler, SamplerInfo]:
    """A predictor-corrector sampler over a loaded checkpoint (model in eval mode, on ``device``)."""
    model = ckpt.model.to(device).eval()
    diffusion = JointDiffusion(DiffusionConfig.from_dict(ckpt.config.get("diffusion", {})))
    config = sampler_config or SamplerConfig(num_steps=num_steps)
    score_fn = ClassifierFreeGuidance(model, guidance_scale) if model.conditions else model
    table = ckpt.config.get("num_atoms_distribution") or None
    dist = NumAtomsDistribution.from_dict(table) if table else NumAtomsDistribution.from_table("ALEX_MP_20")
    info = SamplerInfo(
        checkpoint=str(ckpt.path or ""),
        num_atoms=dist,
        properties=tuple(model.conditions),
        guidance_scale=float(guidance_scale),
        sampler_config=config,
    )
    return PredictorCorrectorSampler(score_fn, diffusion, config), info


def load_sampler(checkpoint: str | os.PathLike, **kwargs: Any) -> tuple[PredictorCorrectorSampler, SamplerInfo]:
    """:func:`build_sampler` on :func:`~mattergen_lab.checkpoints.load_checkpoint` (name or path)."""
    return build_sampler(load_checkpoint(checkpoint), **kwargs)


def sample(
    checkpoint: str | os.PathLike,
    num_samples: int,
    *,
    batch_size: int = 16,
    num_steps: int = 1000,
    num_atoms: int | None = None,
    seed: int = 0,
    conditions: Mapping[str, Any] | None = None,
    guidance_scale: float = 0.0,
    device: torch.device | str = "cpu",
) -> list:
    """Sample ``num_samples`` crystals and return pymatgen structures."""
    sampler, info = load_sampler(checkpoint, num_steps=num_steps, guidance_scale=guidance_scale, device=device)
    return sampler.sample(
        num_samples,
        batch_size=batch_size,
        num_atoms=num_atoms if num_atoms is not None else info.num_atoms,
        generator=torch.Generator().manual_seed(seed),
        device=device,
        properties=dict(conditions or {}) or None,
    )


def sample_to_dir(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_samples: int,
    batch_size: int = 16,
    num_steps: int = 1000,
    num_atoms: int | None = None,
    seed: int = 0,
    conditions: Mapping[str, Any] | None = None,
    guidance_scale: float = 0.0,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> list[Path]:
    """Sample into ``out_dir`` (``cifs/gen_*.cif`` + ``generated_crystals.extxyz``), resumable."""
    sampler, info = load_sampler(checkpoint, num_steps=num_steps, guidance_scale=guidance_scale, device=device)
    return sampler.sample_to_dir(
        out_dir,
        num_samples,
        batch_size=batch_size,
        num_atoms=num_atoms if num_atoms is not None else info.num_atoms,
        generator=torch.Generator().manual_seed(seed),
        device=device,
        properties=dict(conditions or {}) or None,
        on_batch=on_batch,
    )
