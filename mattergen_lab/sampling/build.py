"""Checkpoint -> sampler: :func:`build_sampler`, what it was built from (:class:`SamplerInfo`), and the check of
conditions against a checkpoint (:func:`validated_conditions`).

These are the parts :class:`~mattergen_lab.sampling.pipeline.SamplingPipeline` is assembled from; use the pipeline
to sample (it loads a checkpoint once and checks a whole request). ``build_sampler`` stays public for code that
drives the sampler itself::

    sampler, info = load_sampler("runs/tiny/best", num_steps=200)
    for frame in sampler.iter_steps([8, 8], generator=torch.Generator().manual_seed(0), every=10): ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mattergen_lab.checkpoints import load_checkpoint
from mattergen_lab.data.num_atoms import NumAtomsDistribution
from mattergen_lab.model.io import Checkpoint
from mattergen_lab.noise.joint import DiffusionConfig, JointDiffusion
from mattergen_lab.sampling.frames import sampler_variant
from mattergen_lab.sampling.guidance import ClassifierFreeGuidance, check_guidance_scale
from mattergen_lab.sampling.inputs import TEMPLATE_GROUP
from mattergen_lab.sampling.sampler import PredictorCorrectorSampler, SamplerConfig


@dataclass(frozen=True)
class SamplerInfo:
    """What a sampler was built from (for reports and exports)."""

    checkpoint: str
    num_atoms: NumAtomsDistribution
    properties: tuple[str, ...]
    guidance_scale: float
    sampler_config: SamplerConfig
    #: a crystal-structure-prediction model (``diffusion.fixed_atom_types``): it samples given compositions only
    csp: bool = False
    #: the symmetric mode's start time the checkpoint recommends (``sampling.symmetry_start``), ``None`` if none
    symmetry_start: float | None = None


#: Predictor-corrector steps when neither the caller nor the checkpoint says otherwise (the official value).
DEFAULT_NUM_STEPS = 1000


def recommended_num_steps(ckpt: Checkpoint) -> int:
    """The step count a checkpoint recommends (``config["sampling"]["num_steps"]``), else 1000 (official).

    The bundled CPU models set a smaller value, measured to keep 16 crystals under a minute on 2 cores; their
    model cards give the quality at that value.
    """
    steps = (ckpt.config.get("sampling") or {}).get("num_steps", DEFAULT_NUM_STEPS)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{ckpt.path}: config sampling.num_steps={steps!r} must be a positive integer")
    return steps


def recommended_symmetry_start(ckpt: Checkpoint) -> float | None:
    """``config["sampling"]["symmetry_start"]``: where a model trained on symmetric noise wants the symmetric mode's
    constraint to begin (1.0: the whole run); ``None`` when the checkpoint says nothing."""
    from mattergen_lab.symmetry.templates import check_start

    start = (ckpt.config.get("sampling") or {}).get("symmetry_start")
    if start is None:
        return None
    try:
        return check_start(start)
    except ValueError as exc:
        raise ValueError(f"{ckpt.path}: config sampling.symmetry_start: {exc}") from None


def build_sampler(
    ckpt: Checkpoint,
    *,
    num_steps: int | None = None,
    guidance_scale: float = 0.0,
    device: torch.device | str = "cpu",
    sampler_config: SamplerConfig | None = None,
    sampler_settings: Mapping[str, Any] | None = None,
) -> tuple[PredictorCorrectorSampler, SamplerInfo]:
    """A predictor-corrector sampler over a loaded checkpoint (model in eval mode, on ``device``).

    ``num_steps=None`` uses the checkpoint's :func:`recommended_num_steps`. ``sampler_settings``: a sampler variant
    (:attr:`SamplingRequest.sampler <mattergen_lab.sampling.request.SamplingRequest>`, e.g.
    ``{"n_corrector_steps": 0}``), validated here (``ValueError`` names the key); not together with ``sampler_config``.
    """
    variant = sampler_variant(sampler_settings)
    if variant and sampler_config is not None:
        raise ValueError(f"sampler_settings={variant} and sampler_config= both set the sampler; pass one")
    check_guidance_scale(guidance_scale)
    model = ckpt.model.to(device).eval()
    diffusion = JointDiffusion(DiffusionConfig.from_dict(ckpt.config.get("diffusion", {})))
    # num_steps=0 is an error (SamplerConfig names it), not "the recommended count"
    config = sampler_config or SamplerConfig(num_steps=recommended_num_steps(ckpt) if num_steps is None else num_steps,
                                             **variant)
    if guidance_scale and not model.conditions:
        raise ValueError(
            f"guidance_scale={guidance_scale!r} needs a conditional checkpoint; {ckpt.path or 'this model'} is "
            "unconditional (use guidance_scale=0, or an adapter checkpoint)"
        )
    score_fn = ClassifierFreeGuidance(model, guidance_scale) if model.conditions else model
    table = ckpt.config.get("num_atoms_distribution") or None
    dist = NumAtomsDistribution.from_dict(table) if table else NumAtomsDistribution.from_table("ALEX_MP_20")
    info = SamplerInfo(
        checkpoint=str(ckpt.path or ""),
        num_atoms=dist,
        properties=tuple(model.conditions),
        guidance_scale=float(guidance_scale),
        sampler_config=config,
        csp=diffusion.config.fixed_atom_types,
        symmetry_start=recommended_symmetry_start(ckpt),
    )
    return PredictorCorrectorSampler(score_fn, diffusion, config, num_atoms=dist), info


def load_sampler(checkpoint: str | os.PathLike, **kwargs: Any) -> tuple[PredictorCorrectorSampler, SamplerInfo]:
    """:func:`build_sampler` on :func:`~mattergen_lab.checkpoints.load_checkpoint` (name or path)."""
    return build_sampler(load_checkpoint(checkpoint), **kwargs)


def validated_conditions(conditions: Mapping[str, Any] | None, info: SamplerInfo, *,
                         symmetric: bool = False) -> dict[str, Any] | None:
    """Check condition names and values at the boundary; ``ValueError`` names the bad one. ``symmetric``: the run
    has Wyckoff templates, so ``space_group`` may be :data:`TEMPLATE_GROUP` (each crystal its template's group)."""
    from mattergen_lab.model.property_embeddings import check_scalar_target, parse_chemical_system

    if not conditions:
        return None
    out: dict[str, Any] = {}
    for name, value in conditions.items():
        if name not in info.properties:
            supported = list(info.properties) or "nothing (an unconditional model)"
            raise ValueError(f"condition {name!r} is not supported by checkpoint {info.checkpoint!r}; it conditions on {supported}")
        if name == "chemical_system":
            out[name] = "-".join(parse_chemical_system(str(value)))
        elif name == "space_group" and value == TEMPLATE_GROUP:
            if not symmetric:
                raise ValueError(f"space_group={value!r} conditions each crystal on its Wyckoff template's group and "
                                 "needs the symmetric mode (symmetry=..., CLI --symmetry / --space-group / --crystal-system)")
            out[name] = TEMPLATE_GROUP
        elif name == "space_group":
            try:
                x = float(value) if not isinstance(value, bool) else math.nan
            except (TypeError, ValueError):
                x = math.nan
            if not math.isfinite(x) or x != int(x) or not 1 <= x <= 230:
                raise ValueError(f"space_group={value!r} must be an integer in 1-230 (or {TEMPLATE_GROUP!r} in the symmetric mode)")
            out[name] = int(x)
        else:
            out[name] = check_scalar_target(name, value)
    return out


def weights_identity(path: str) -> str:
    """What identifies a checkpoint's weights in a run record: the sha256 of ``model.safetensors`` (ours, a few
    MB), else the file's path, size and modification time (official files of 500 MB are not hashed each run)."""
    from mattergen_lab.checkpoints import sha256_of

    p = Path(path)
    weights = p / "model.safetensors" if p.is_dir() else p
    if weights.is_file() and weights.stat().st_size < 64 << 20:
        return f"sha256:{sha256_of(weights)}"
    if weights.is_file():
        st = weights.stat()
        return f"{weights}|{st.st_size}|{int(st.st_mtime)}"
    return str(path)
