"""Classifier-free guidance (spec §4.4).

For each field the guided prediction is

    s_guided = s_uncond + γ · (s_cond − s_uncond)        (torch.lerp(s_uncond, s_cond, γ))

acting on the coordinate and lattice scores and on the atom-type logits (so that
p ∝ p_uncond^(1−γ) · p_cond^γ). The network outputs for coordinates and lattice are ``score · std``
with the same ``std`` for both branches, so interpolating the outputs equals interpolating the scores.

* γ = 0: one unconditional forward pass; γ = 1: one conditional pass; otherwise one pass on the doubled
  batch (unconditional copy first, conditional copy second), then split.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.model.output import ScoreOutput


def check_guidance_scale(guidance_scale: Any) -> float:
    """γ as a float when it is a finite number >= 0; ``ValueError`` naming it otherwise (the one rule for γ, applied
    where a request is built: :class:`~mattergen_lab.sampling.request.SamplingRequest`, ``build_sampler``, this class)."""
    g = guidance_scale
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
        raise ValueError(f"guidance_scale={g!r} must be a finite number >= 0")
    return float(g)


class ClassifierFreeGuidance:
    """Wrap a conditional model into a ``score_fn(batch, t) -> ScoreOutput`` with guidance factor γ."""

    def __init__(self, model: torch.nn.Module, guidance_scale: float) -> None:
        self.model = model
        self.guidance_scale = check_guidance_scale(guidance_scale)

    def _flags(self, batch: CrystalBatch, keep: bool) -> dict[str, torch.Tensor]:
        names = getattr(self.model, "conditions", ())
        return {name: torch.full((len(batch),), keep, dtype=torch.bool, device=batch.lattice.device) for name in names}

    def __call__(self, batch: CrystalBatch, t: torch.Tensor) -> ScoreOutput:
        gamma = self.guidance_scale
        if gamma == 0.0:
            return self.model(batch, t, cond_keep=self._flags(batch, False))
        if gamma == 1.0:
            return self.model(batch, t, cond_keep=self._flags(batch, True))
        doubled = CrystalBatch.cat([batch, batch])
        keep = {k: torch.cat([torch.zeros_like(v), torch.ones_like(v)]) for k, v in self._flags(batch, True).items()}
        out = self.model(doubled, torch.cat([t, t]), cond_keep=keep)
        n, b = batch.atom_types.shape[0], len(batch)
        return ScoreOutput(
            atom_logits=torch.lerp(out.atom_logits[:n], out.atom_logits[n:], gamma),
            frac_coords=torch.lerp(out.frac_coords[:n], out.frac_coords[n:], gamma),
            lattice=torch.lerp(out.lattice[:b], out.lattice[b:], gamma),
        )
