"""Lattice: a variance-preserving SDE that mean-reverts to a cubic cell of fixed density (spec §2.4).

    β(t)  = β_min + t (β_max − β_min)
    α(t)  = exp(−¼ t² (β_max − β_min) − ½ t β_min)            marginal mean coefficient
    μ     = (n / ρ)^{1/3} · I₃                              limit mean (cubic, density ρ)
    v     = c · n^{2/3}                                     limit variance per entry (c = 0.25)
    L_t   = α L_0 + (1 − α) μ + sqrt((1 − α²) v) · ε_sym
    prior = μ + sqrt(v) · ε_sym

``ε_sym`` is symmetric noise with unit variance on every entry
(:func:`make_noise_symmetric_preserve_variance`). The training target for the network's lattice output
is ``−(L_t − mean_t) / std_t`` (= −ε_sym).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mattergen_lab.config import PlainConfig
from mattergen_lab.constants import AVERAGE_DENSITY
from mattergen_lab.limits import MAX_BETA, check_at_most


def make_noise_symmetric_preserve_variance(z: torch.Tensor) -> torch.Tensor:
    """Symmetrise i.i.d. N(0, 1) matrices ``(..., 3, 3)`` keeping unit variance per entry.

    Off-diagonal entries become ``(Z_ij + Z_ji)/√2``, diagonal entries stay ``Z_ii``.
    """
    sym = (z + z.transpose(-1, -2)) / math.sqrt(2.0)  # (..., 3, 3); diagonal is √2·Z_ii here
    eye = torch.eye(z.shape[-1], dtype=torch.bool, device=z.device)
    return torch.where(eye, z, sym)


def symmetric_noise(
    num_crystals: int, *, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """``(B, 3, 3)`` symmetric Gaussian noise with unit variance per entry."""
    z = torch.randn((num_crystals, 3, 3), generator=generator, dtype=dtype, device=device)
    return make_noise_symmetric_preserve_variance(z)


@dataclass(frozen=True)
class LatticeVPConfig(PlainConfig):
    """Parameters of :class:`LatticeVPSDE` (official values)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    limit_density: float = AVERAGE_DENSITY
    limit_var_scaling_constant: float = 0.25

    def __post_init__(self) -> None:
        for name in ("beta_min", "beta_max", "limit_density", "limit_var_scaling_constant"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"LatticeVPConfig: {name}={value!r} must be a positive finite number")
        if self.beta_max < self.beta_min:
            raise ValueError(f"LatticeVPConfig: beta_max={self.beta_max!r} must be >= beta_min={self.beta_min!r}")
        # beta_max=1e308 passed as finite, then alpha(t) underflowed to 0 and the sampler hit a singular matrix
        check_at_most("LatticeVPConfig: beta_max", self.beta_max, MAX_BETA, "MAX_BETA", "the official value is 20")



class LatticeVPSDE:
    """The lattice process. Times ``t`` and ``num_atoms`` are per crystal ``(B,)``; lattices ``(B, 3, 3)``."""

    def __init__(self, config: LatticeVPConfig | None = None) -> None:
        self.config = config or LatticeVPConfig()

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        c = self.config
        return c.beta_min + t * (c.beta_max - c.beta_min)

    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """α(t) = exp(−¼ t² (β_max − β_min) − ½ t β_min)."""
        c = self.config
        return torch.exp(-0.25 * t**2 * (c.beta_max - c.beta_min) - 0.5 * t * c.beta_min)

    def limit_mean(self, num_atoms: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
        """μ = (n/ρ)^{1/3} I₃: ``(B,) -> (B, 3, 3)``."""
        side = (num_atoms.to(dtype) / self.config.limit_density) ** (1.0 / 3.0)  # (B,)
        return side[:, None, None] * torch.eye(3, dtype=dtype, device=num_atoms.device)

    def limit_var(self, num_atoms: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
        """v = c · n^{2/3} per entry: ``(B,)``."""
        return self.config.limit_var_scaling_constant * num_atoms.to(dtype) ** (2.0 / 3.0)

    def marginal_mean(self, lattice0: torch.Tensor, t: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        """α L_0 + (1 − α) μ: ``(B, 3, 3)``."""
        alpha = self.mean_coeff(t)[:, None, None]  # (B, 1, 1)
        return alpha * lattice0 + (1 - alpha) * self.limit_mean(num_atoms, dtype=lattice0.dtype)

    def marginal_std(self, t: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        """sqrt((1 − α²) v): ``(B,)``."""
        alpha = self.mean_coeff(t)
        return torch.sqrt((1 - alpha**2) * self.limit_var(num_atoms, dtype=t.dtype))

    def sample_marginal(
        self, lattice0: torch.Tensor, t: torch.Tensor, num_atoms: torch.Tensor, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``L_t = mean_t + std_t ε_sym``. Returns ``(L_t, ε_sym)``, both ``(B, 3, 3)``."""
        eps = symmetric_noise(lattice0.shape[0], generator=generator, dtype=lattice0.dtype, device=lattice0.device)
        std = self.marginal_std(t, num_atoms)[:, None, None]  # (B, 1, 1)
        return self.marginal_mean(lattice0, t, num_atoms) + std * eps, eps

    def prior(
        self, num_atoms: torch.Tensor, *, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        """μ + sqrt(v) ε_sym: ``(B,) -> (B, 3, 3)``."""
        num_atoms = num_atoms.to(device)
        eps = symmetric_noise(num_atoms.shape[0], generator=generator, dtype=dtype, device=device)
        std = torch.sqrt(self.limit_var(num_atoms, dtype=dtype))[:, None, None]  # (B, 1, 1)
        return self.limit_mean(num_atoms, dtype=dtype) + std * eps

    def loss_target(
        self, lattice_t: torch.Tensor, lattice0: torch.Tensor, t: torch.Tensor, num_atoms: torch.Tensor
    ) -> torch.Tensor:
        """What the network's lattice output should equal: ``−(L_t − mean_t) / std_t`` (= −ε_sym)."""
        std = self.marginal_std(t, num_atoms)[:, None, None]  # (B, 1, 1)
        return -(lattice_t - self.marginal_mean(lattice0, t, num_atoms)) / std
