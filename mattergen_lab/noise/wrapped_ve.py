"""Fractional coordinates: a wrapped variance-exploding SDE whose std shrinks with n^{-1/3} (spec §2.2).

    σ(t)      = σ_min (σ_max / σ_min)^t                      t ∈ [0, 1]
    std(t, n) = σ(t) · n^{-1/3}                              n = atoms in the crystal
    f_t       = wrap(f_0 + std · ε),   ε ~ N(0, I₃),          wrap(x) = x mod 1
    prior     = wrap(N(0, σ_max² n^{-2/3}))                  (effectively uniform on [0, 1)³)

The training target is ``std · s_WN(f_t | f_0, std²)`` with s_WN the score of the wrapped normal
truncated to the integer images k ∈ {−K..K}³ (K = 3, i.e. 343 images):

    s_WN(x) = −Σ_k w_k (x − μ + k) / σ²,     w_k = softmax_k(−|x − μ + k|² / (2σ²)).

The isotropic Gaussian factorises over x, y, z and the image grid is a product {−K..K}³, so the
343-image softmax is the product of three 7-image softmaxes and the x-component of the score only
depends on the x-weights. :func:`wrapped_normal_score` uses that exact identity: it costs ``(N, 3, 7)``
memory instead of ``(N, 343, 3)``. For small σ the target tends to −ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mattergen_lab.config import PlainConfig
from mattergen_lab.limits import MAX_SIGMA, MAX_WRAP_IMAGES, check_at_most


def wrap(x: torch.Tensor) -> torch.Tensor:
    """``x mod 1`` guaranteed to lie in ``[0, 1)`` (``remainder`` can round up to exactly 1.0)."""
    y = torch.remainder(x, 1.0)
    return torch.where(y >= 1.0, y - 1.0, y)


def wrapped_normal_log_density(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, num_images: int = 3
) -> torch.Tensor:
    """Unnormalised log density of the isotropic wrapped normal, summed over the ``(2K+1)³`` images.

    ``log p(x) = logsumexp_k(−|x − μ + k|² / (2σ²))`` (up to a constant). ``x, mean``: ``(..., 3)``;
    ``std``: broadcastable to ``(..., 1)``. Returns ``(...)``. Exact for the truncated sum (factorised).
    """
    k = torch.arange(-num_images, num_images + 1, dtype=x.dtype, device=x.device)  # (2K+1,)
    d = (x - mean).unsqueeze(-1) + k  # (..., 3, 2K+1)
    logits = -(d**2) / (2 * std.unsqueeze(-1) ** 2)  # (..., 3, 2K+1)
    return torch.logsumexp(logits, dim=-1).sum(-1)  # (...)


def wrapped_normal_score(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, num_images: int = 3
) -> torch.Tensor:
    """Score ``∇_x log p`` of the isotropic wrapped normal truncated to images k ∈ {−K..K}³.

    ``s = −Σ_k w_k (x − μ + k) / σ²`` with ``w_k = softmax_k(−|x − μ + k|²/(2σ²))``, computed per axis
    (exactly equal to the 343-image formula, see the module docstring).

    Args:
        x, mean: ``(N, 3)`` fractional coordinates (``x − mean`` is used as given, not re-wrapped).
        std: ``(N,)`` or ``(N, 1)`` standard deviation per row.
        num_images: K; the official value is 3.
    Returns:
        ``(N, 3)``.
    """
    if std.dim() == x.dim() - 1:
        std = std.unsqueeze(-1)  # (N, 1)
    k = torch.arange(-num_images, num_images + 1, dtype=x.dtype, device=x.device)  # (2K+1,)
    d = (x - mean).unsqueeze(-1) + k  # (N, 3, 2K+1)
    var = (std**2).unsqueeze(-1)  # (N, 1, 1)
    w = torch.softmax(-(d**2) / (2 * var), dim=-1)  # (N, 3, 2K+1)
    return -(w * d).sum(-1) / var.squeeze(-1)  # (N, 3)


@dataclass(frozen=True)
class WrappedVEConfig(PlainConfig):
    """Parameters of :class:`WrappedVESDE` (official values)."""

    sigma_min: float = 0.01
    sigma_max: float = 5.0
    num_images: int = 3

    def __post_init__(self) -> None:
        for name in ("sigma_min", "sigma_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"WrappedVEConfig: {name}={value!r} must be a positive finite number")
        if not self.sigma_max > self.sigma_min:
            raise ValueError(f"WrappedVEConfig: sigma_max={self.sigma_max!r} must exceed sigma_min={self.sigma_min!r}")
        if isinstance(self.num_images, bool) or not isinstance(self.num_images, int) or self.num_images < 0:
            raise ValueError(f"WrappedVEConfig: num_images={self.num_images!r} must be a non-negative integer")
        check_at_most("WrappedVEConfig: sigma_max", self.sigma_max, MAX_SIGMA, "MAX_SIGMA", "the official value is 5")
        check_at_most("WrappedVEConfig: num_images", self.num_images, MAX_WRAP_IMAGES, "MAX_WRAP_IMAGES",
                      "the official value is 3")



class WrappedVESDE:
    """The coordinate process. Times ``t`` are per crystal ``(B,)``; per-atom quantities are ``(N,)``."""

    def __init__(self, config: WrappedVEConfig | None = None) -> None:
        self.config = config or WrappedVEConfig()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ(t) = σ_min (σ_max/σ_min)^t, same shape as ``t``."""
        c = self.config
        return c.sigma_min * torch.exp(t * math.log(c.sigma_max / c.sigma_min))

    def marginal_std(self, t: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        """Per-crystal std σ(t)·n^{-1/3}: ``t, num_atoms (B,) -> (B,)``."""
        return self.sigma(t) * num_atoms.to(t.dtype) ** (-1.0 / 3.0)

    def marginal_std_per_atom(self, t: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        """``(B,) -> (N,)``: each atom gets its crystal's std."""
        return torch.repeat_interleave(self.marginal_std(t, num_atoms), num_atoms)

    def sample_marginal(
        self, x0: torch.Tensor, std: torch.Tensor, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f_t = wrap(f_0 + std·ε)``. ``x0 (N, 3)``, ``std (N,)``. Returns ``(f_t, ε)``."""
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)  # (N, 3)
        return wrap(x0 + std.unsqueeze(-1) * eps), eps

    def prior(
        self, num_atoms: torch.Tensor, *, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        """``wrap(N(0, σ_max² n^{-2/3}))`` for every atom: ``(B,) -> (N, 3)``."""
        num_atoms = num_atoms.to(device)
        std = self.config.sigma_max * num_atoms.to(dtype) ** (-1.0 / 3.0)  # (B,)
        std = torch.repeat_interleave(std, num_atoms)  # (N,)
        eps = torch.randn((std.shape[0], 3), generator=generator, dtype=dtype, device=device)
        return wrap(std.unsqueeze(-1) * eps)

    def score(self, x: torch.Tensor, x0: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Wrapped-normal score ``s_WN(x | x0, std²)`` with this process's number of images: ``(N, 3)``."""
        return wrapped_normal_score(x, x0, std, num_images=self.config.num_images)

    def loss_target(self, x_t: torch.Tensor, x0: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """What the network's coordinate output should equal: ``std · s_WN(f_t | f_0, std²)`` (≈ −ε)."""
        return std.unsqueeze(-1) * self.score(x_t, x0, std)
