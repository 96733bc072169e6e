"""The score network's output contract, shared by the model, the loss and the samplers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScoreOutput:
    """What a score network predicts for a noisy :class:`~mattergen_lab.crystal.CrystalBatch` at time t.

    Attributes:
        atom_logits: ``(N, 101)`` logits over classes ``Z - 1``; class 100 is MASK.
        frac_coords: ``(N, 3)`` fractional-coordinate output trained to equal ``score * std`` (≈ −ε),
            i.e. the score is ``frac_coords / std`` with std the marginal std of the coordinate process.
        lattice: ``(B, 3, 3)`` symmetric lattice output trained to equal ``score * std`` (≈ −ε).
    """

    atom_logits: torch.Tensor
    frac_coords: torch.Tensor
    lattice: torch.Tensor
