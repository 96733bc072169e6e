"""MatterGen's denoiser: time encoding -> GemNet-T -> atom-type logits, coordinate and lattice scores.

Submodule names (``noise_level_encoding``, ``gemnet``, ``fc_atom``) are the official ones, so this
module's ``state_dict`` keys are the official keys without the ``diffusion_module.model.`` prefix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from mattergen_lab.constants import NUM_CLASSES
from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.model.gemnet import GemNetConfig, GemNetT
from mattergen_lab.model.graph import take
from mattergen_lab.model.layers import NoiseLevelEncoding
from mattergen_lab.model.output import ScoreOutput
from mattergen_lab.model.property_embeddings import PropertyEmbedding

#: Named architectures. ``official`` is MatterGen's (35,343,478 parameters without the unused energy
#: branches); the others are sized for CPU training, tests and Binder. ``small`` (the bundled models) keeps 16
#: neighbours within 6 Å: 2.17x faster per training step on one CPU thread than 30 within 7 Å, at a 1.8 % higher
#: validation loss for the same crystals seen (19,200; ``benchmarks/bench_train_step.py``; the first bundled model
#: used 30 / 7 Å and keeps them in its config.json).
PRESETS: dict[str, GemNetConfig] = {
    "tiny": GemNetConfig(
        emb_size_atom=32, emb_size_edge=32, latent_dim=32, num_blocks=2, num_radial=16, emb_size_trip=8,
        emb_size_rbf=8, emb_size_cbf=8, emb_size_bil_trip=8, num_after_skip=1, num_atom=1, max_neighbors=20,
    ),
    "small": GemNetConfig(
        emb_size_atom=64, emb_size_edge=64, latent_dim=64, num_blocks=3, num_radial=32, emb_size_trip=16,
        emb_size_rbf=8, emb_size_cbf=8, emb_size_bil_trip=16, num_atom=2, max_neighbors=16, cutoff=6.0,
    ),
    "medium": GemNetConfig(
        emb_size_atom=128, emb_size_edge=128, latent_dim=128, num_blocks=4, num_radial=64, emb_size_trip=32,
        emb_size_bil_trip=32,
    ),
    "official": GemNetConfig(),
}


def preset_config(name: str, **overrides: Any) -> GemNetConfig:
    """The named preset, with optional field overrides; an unknown name raises ``ValueError``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


class ScoreModel(nn.Module):
    """``model(batch, t) -> ScoreOutput`` for a noisy :class:`CrystalBatch` at times ``t`` ``(B,)``."""

    def __init__(self, config: GemNetConfig) -> None:
        super().__init__()
        self.config = config
        self.noise_level_encoding = NoiseLevelEncoding(config.latent_dim)
        self.gemnet = GemNetT(config)
        self.fc_atom = nn.Linear(config.emb_size_atom, NUM_CLASSES)
        if config.condition_on_adapt:
            self.property_embeddings_adapt = nn.ModuleDict(
                {p: PropertyEmbedding(p, config.emb_size_atom) for p in config.condition_on_adapt}
            )

    @property
    def conditions(self) -> tuple[str, ...]:
        """Properties this model can condition on."""
        return self.config.condition_on_adapt

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ScoreModel":
        return cls(preset_config(name, **overrides))

    def forward(
        self,
        batch: CrystalBatch,
        t: torch.Tensor,
        *,
        cond_keep: dict[str, torch.Tensor] | None = None,
    ) -> ScoreOutput:
        """Score of a noisy batch at times ``t`` ``(B,)``.

        Adapted properties are read from ``batch.properties``; a crystal uses a property's conditional
        embedding where its value is present and ``cond_keep[name]`` (``(B,)`` bool, default all True)
        allows it; elsewhere the adapter contributes nothing (the unconditional score).
        """
        lattice = batch.lattice
        cond_embeddings, keep = {}, {}
        for name in self.conditions:
            if name not in batch.properties:
                continue
            emb, present = self.property_embeddings_adapt[name](batch.properties[name])
            cond_embeddings[name] = emb.to(lattice.dtype)
            user_keep = (cond_keep or {}).get(name)
            keep[name] = present.to(lattice.device) & (user_keep.to(lattice.device).bool() if user_keep is not None else True)
        z = self.noise_level_encoding(t).to(lattice.dtype)  # (B, latent)
        out = self.gemnet(
            z=z,
            frac_coords=batch.frac_coords,
            atom_types=batch.atom_types,
            num_atoms=batch.num_atoms,
            lattice=lattice,
            cond_embeddings=cond_embeddings,
            cond_keep=keep,
        )
        # Cartesian force f -> fractional output L^{-T} f (rows of L are lattice vectors).
        inv_t = take(torch.linalg.inv(lattice).transpose(1, 2), batch.batch_idx)  # (N, 3, 3)
        frac = (inv_t @ out.forces.unsqueeze(-1)).squeeze(-1)  # (N, 3)
        return ScoreOutput(atom_logits=self.fc_atom(out.node_embeddings), frac_coords=frac, lattice=out.stress)

    def scaler_summary(self) -> dict[str, dict[str, float | bool]]:
        """``{property: {mean, std, log10}}`` of each scalar adapter's scaler (plain data for configs)."""
        embeddings = getattr(self, "property_embeddings_adapt", {})
        return {
            name: {"mean": float(e.scaler.means), "std": float(e.scaler.stds), "log10": e.scaler.log10}
            for name, e in embeddings.items()
            if e.is_scalar
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
