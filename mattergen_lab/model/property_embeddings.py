"""Property embeddings for adapters (spec §4.1-4.2), with the official module names.

Each adapted property ``p`` has ``property_embeddings_adapt.<p>`` with:

* ``conditional_embedding_module``: multi-hot chemical system -> ``Linear(101 -> d)`` (``embedding``),
  ``Embedding(230, d)`` for the space group (``embedding``), or ``NoiseLevelEncoding(d)`` of the
  standardised value for scalar properties;
* ``scaler``: ``StandardScaler`` buffers ``means``/``stds`` (scalars; log10 first for bulk moduli); absent
  for chemical system and space group;
* the unconditional embedding of an adapter is zeros (no parameters), so adapters never change the
  unconditional score.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from mattergen_lab.chemistry import ChemicalSystem
from mattergen_lab.constants import NUM_CLASSES
from mattergen_lab.model.layers import NoiseLevelEncoding

SCALAR_PROPERTIES = (
    "dft_mag_density",
    "dft_band_gap",
    "energy_above_hull",
    "hhi_score",
    "dft_bulk_modulus",
    "ml_bulk_modulus",
    "dft_shear_modulus",
    "formation_energy_per_atom",
)
LOG10_PROPERTIES = ("dft_bulk_modulus", "ml_bulk_modulus", "dft_shear_modulus")

#: Values a target can physically take: ``(low, high, low_inclusive, unit)``. Generous (MP's largest band gap is
#: about 10 eV, its densest magnetisation 0.2 μB/Å³, diamond's bulk modulus 443 GPa); a target outside is a
#: typo or a sign error, and a modulus <= 0 has no logarithm for the adapter's scaler.
PHYSICAL_RANGES: dict[str, tuple[float, float, bool, str]] = {
    "dft_mag_density": (0.0, 1.0, True, "μB/Å³"),
    "dft_band_gap": (0.0, 20.0, True, "eV"),
    "energy_above_hull": (0.0, 10.0, True, "eV/atom"),
    "hhi_score": (0.0, 10000.0, True, "(0-10,000 scale)"),
    "dft_bulk_modulus": (0.0, 1000.0, False, "GPa"),
    "ml_bulk_modulus": (0.0, 1000.0, False, "GPa"),
    "dft_shear_modulus": (0.0, 1000.0, False, "GPa"),
}


def check_scalar_target(name: str, value: float) -> float:
    """``value`` when it is a finite number that ``name`` can take (:data:`PHYSICAL_RANGES`); ``ValueError`` naming
    it otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"condition {name}={value!r} must be a number")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"condition {name}={value!r} must be a number") from None
    if not math.isfinite(x):
        raise ValueError(f"condition {name}={value!r} must be finite")
    if name in PHYSICAL_RANGES:
        low, high, inclusive, unit = PHYSICAL_RANGES[name]
        if x > high or x < low or (x == low and not inclusive):
            bracket = "[" if inclusive else "("
            raise ValueError(f"condition {name}={value!r} is outside the physical range {bracket}{low:g}, {high:g}] {unit}")
    return x
CATEGORICAL_PROPERTIES = ("chemical_system", "space_group")
SUPPORTED_PROPERTIES = CATEGORICAL_PROPERTIES + SCALAR_PROPERTIES


class StandardScaler(nn.Module):
    """z-score with buffers ``means``/``stds`` of shape ``(1,)``; optional log10 first."""

    def __init__(self, log10: bool = False) -> None:
        super().__init__()
        self.log10 = log10
        self.register_buffer("means", torch.zeros(1))
        self.register_buffer("stds", torch.ones(1))

    def fit(self, values: torch.Tensor) -> None:
        """Population mean/std over finite values (+1e-5 on the std), as the official scaler."""
        x = self._pre(values.double().flatten())
        x = x[torch.isfinite(x)]
        if x.numel() == 0:
            raise ValueError("cannot fit a scaler without any finite value")
        self.means.fill_(float(x.mean()))
        self.stds.fill_(float(x.std(unbiased=False)) + 1e-5)

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log10(x) if self.log10 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._pre(x) - self.means) / self.stds


class ChemicalSystemMultiHot(nn.Module):
    """``"Li-Fe-O"`` -> multi-hot over Z (101 entries) -> ``Linear(101 -> d)``."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Linear(NUM_CLASSES, hidden_dim)

    @staticmethod
    def multi_hot(systems: Sequence[str], *, device: torch.device | None = None) -> torch.Tensor:
        out = torch.zeros(len(systems), NUM_CLASSES)
        for i, system in enumerate(systems):
            out[i, list(_system_numbers(system))] = 1.0
        return out.to(device)

    def forward(self, systems: Sequence[str]) -> torch.Tensor:
        w = self.embedding.weight
        return self.embedding(self.multi_hot(systems, device=w.device).to(w.dtype))


class SpaceGroupEmbedding(nn.Module):
    """``Embedding(230, d)`` indexed by space-group number - 1."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(230, hidden_dim)

    def forward(self, space_group: torch.Tensor) -> torch.Tensor:
        return self.embedding(space_group.long() - 1)


@lru_cache(maxsize=1024)
def _system_numbers(system: str) -> tuple[int, ...]:
    """Atomic numbers of a chemical system, parsed once per string (this runs on every network call)."""
    return ChemicalSystem.parse(system).atomic_numbers


def parse_chemical_system(system: str) -> list[str]:
    """``"Li-Fe-O"`` -> ``["Fe", "Li", "O"]`` (:class:`~mattergen_lab.chemistry.ChemicalSystem`'s rules);
    an unknown element raises ``ValueError`` naming it."""
    if not isinstance(system, str) or not system.strip():
        raise ValueError(f"chemical system {system!r} must be a non-empty string like 'Li-Fe-O'")
    return list(ChemicalSystem.parse(system).symbols)


class PropertyEmbedding(nn.Module):
    """Embedding of one adapted property; ``forward`` returns ``(B, d)`` (rows of missing values are 0)."""

    def __init__(self, name: str, hidden_dim: int) -> None:
        super().__init__()
        if name not in SUPPORTED_PROPERTIES:
            raise ValueError(f"unsupported property {name!r}; supported: {list(SUPPORTED_PROPERTIES)}")
        self.name = name
        if name == "chemical_system":
            self.conditional_embedding_module: nn.Module = ChemicalSystemMultiHot(hidden_dim)
        elif name == "space_group":
            self.conditional_embedding_module = SpaceGroupEmbedding(hidden_dim)
        else:
            self.conditional_embedding_module = NoiseLevelEncoding(hidden_dim)
            self.scaler = StandardScaler(log10=name in LOG10_PROPERTIES)

    @property
    def is_scalar(self) -> bool:
        return hasattr(self, "scaler")

    def forward(self, values: torch.Tensor | Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(embedding (B, d), present (B,) bool)``; absent values get a zero embedding."""
        if self.name == "chemical_system":
            present = torch.tensor([v is not None for v in values])
            emb = self.conditional_embedding_module([v if v is not None else "H" for v in values])
            present = present.to(emb.device)
            return emb * present[:, None], present
        values = torch.as_tensor(values)
        present = torch.isfinite(values.double())
        filled = torch.where(present, values.double(), torch.ones_like(values.double()))
        if self.name == "space_group":
            emb = self.conditional_embedding_module(filled)
        else:
            dtype = self.scaler.means.dtype
            emb = self.conditional_embedding_module(self.scaler(filled.to(dtype)))
        return emb * present[:, None].to(emb.dtype), present

