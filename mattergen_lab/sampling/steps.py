"""Predictor and corrector updates for each field (spec §5.2), plus the sampling element mask (§3.6).

Every step takes the current value and a *score* (already divided by the marginal std; see
:meth:`PredictorCorrectorSampler.scores`) or, for atom types, x_0 logits, and returns
``StepOutput(sample, mean)``: the noisy next state and its noise-free mean. All five share one contract,
``step(x, score, *, t, s, dt, num_atoms, last, generator)`` (:data:`STEP_KEYWORDS`), each using what it needs,
so the denoising loop passes the same keywords to every one of them.

Ancestral predictor from t to s = t + dt (dt < 0), with α, σ the marginal mean coefficient and std:

    α_{t|s}  = α_t / α_s   (clipped to ≥ 1e-3)
    σ²_{t|s} = σ_t² − σ_s² α_t² / α_s²
    mean     = x / α_{t|s} + (σ²_{t|s} / α_{t|s}) · score   [+ (1 − 1/α_{t|s}) μ for the lattice]
    sample   = mean + sqrt(σ²_{t|s}) · σ_s / σ_t · z
    (σ_s = 0 on the last step, so the last sample equals its mean.)

Langevin corrector at t, with ‖·‖ the per-crystal L2 norm averaged over the batch into one scalar:

    h      = min(2 α (snr ‖z‖ / ‖score‖)², max_step_size)
    mean   = x + h · score
    sample = mean + sqrt(2 h) · z
    α = 1 for the coordinates; α = ᾱ(t)/ᾱ(t + dt) with ᾱ = α(t)² for the lattice.

Probability-flow (ODE) predictor (``SamplerConfig(predictor="ode")``): DDIM with η = 0, from the same score. With
ε̂ = −σ_t · score (the network's own output) and x̂_0 = μ + (x − μ − σ_t ε̂) / α_t, the step is
``x_s = μ + α_s (x̂_0 − μ) + σ_s ε̂``, i.e.

    mean = sample = μ + (x − μ)/α_{t|s} + (σ_t²/α_{t|s} − σ_s σ_t) · score     (μ = 0, α = 1 for the coordinates)

It integrates the probability-flow ODE of either process (exact in one step when the data are a point, first
order otherwise) and, on the last step (σ_s = 0), equals the ancestral mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mattergen_lab.chemistry import atomic_number_of
from mattergen_lab.constants import MASK_CLASS, NUM_CLASSES, SELECTED_ATOMIC_NUMBERS
from mattergen_lab.crystal import polar_symmetric
from mattergen_lab.noise.lattice_vp import LatticeVPSDE, symmetric_noise
from mattergen_lab.noise.masked_types import MaskedTypeDiffusion, sample_categorical
from mattergen_lab.noise.wrapped_ve import WrappedVESDE, wrap

#: Added to the logits of classes that may not be sampled (as the official ``mask_disallowed_elements``).
MASK_PENALTY = -1e10
#: |logit| cap applied before the penalty (a trained model's logits are O(10); guided ones may be anything).
LOGIT_BOUND = 1e6

#: Smallest α_{t|s} used by the ancestral predictor.
MIN_ALPHA_TS = 1e-3


#: The keywords every predictor and corrector ``step`` accepts.
STEP_KEYWORDS = ("t", "s", "dt", "num_atoms", "last", "generator")


@dataclass(frozen=True)
class StepOutput:
    """The result of one update: the new (noisy) ``sample`` and its noise-free ``mean``."""

    sample: torch.Tensor
    mean: torch.Tensor


# ---------------------------------------------------------------------------------------- element mask
def allowed_classes(
    elements: Sequence[int | str] | None = None, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(101,)`` bool: True for the classes (Z − 1) that may be sampled.

    ``elements`` (atomic numbers or symbols) is intersected with ``SELECTED_ATOMIC_NUMBERS``; ``None``
    means all selected elements. MASK is never allowed. Raises ``ValueError`` if nothing is left.
    """
    selected = set(SELECTED_ATOMIC_NUMBERS)
    if elements is None:
        zs = selected
    else:
        zs = set()
        for el in elements:
            z = _atomic_number(el)
            if z not in selected:
                raise ValueError(f"element {el!r} (Z={z}) cannot be generated: it is not in SELECTED_ATOMIC_NUMBERS")
            zs.add(z)
        if not zs:
            raise ValueError(f"allowed elements {list(elements)!r} is empty")
    allowed = torch.zeros(NUM_CLASSES, dtype=torch.bool, device=device)
    allowed[torch.tensor(sorted(zs), dtype=torch.long, device=device) - 1] = True
    return allowed


def _atomic_number(element: int | str) -> int:
    if isinstance(element, str):
        try:
            return atomic_number_of(element)
        except ValueError:
            raise ValueError(f"unknown element symbol {element!r}") from None
    if isinstance(element, bool) or not isinstance(element, int):
        raise ValueError(f"element {element!r} must be an atomic number (int) or a symbol (str)")
    return element


def mask_logits(
    logits: torch.Tensor, allowed: torch.Tensor, *, batch_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Add :data:`MASK_PENALTY` to the logits of classes that may not be sampled, and to MASK.

    Args:
        logits: ``(N, 101)``.
        allowed: ``(101,)`` bool for every atom, ``(B, 101)`` per crystal (needs ``batch_idx``), or
            ``(N, 101)`` per atom.
        batch_idx: ``(N,)`` crystal of each atom, when ``allowed`` is per crystal.
    """
    if allowed.dim() == 2 and allowed.shape[0] != logits.shape[0]:
        if batch_idx is None:
            raise ValueError(f"allowed has shape {tuple(allowed.shape)} (per crystal); batch_idx is required")
        allowed = allowed[batch_idx]  # (N, 101)
    allowed = allowed.to(logits.device)
    allowed = allowed & (torch.arange(logits.shape[-1], device=logits.device) != MASK_CLASS)
    # Bound the logits first, so that no guidance factor can outweigh the penalty: γ = 1e30 makes them ±inf or
    # NaN, and 1e9 alone is larger than an additive penalty. NaN (undefined) becomes the lowest bound.
    bounded = torch.nan_to_num(logits, nan=-LOGIT_BOUND).clamp(-LOGIT_BOUND, LOGIT_BOUND)
    return bounded + torch.where(allowed, 0.0, MASK_PENALTY).to(logits.dtype)


# ---------------------------------------------------------------------------------------- helpers
def langevin_step_size(
    score: torch.Tensor,
    noise: torch.Tensor,
    *,
    snr: float,
    alpha: torch.Tensor | float,
    max_step_size: float,
    batch_idx: torch.Tensor | None = None,
    num_crystals: int | None = None,
) -> torch.Tensor:
    """h = min(2 α (snr · mean_i ‖z_i‖ / mean_i ‖score_i‖)², max_step_size).

    ``score, noise``: per atom ``(N, 3)`` with ``batch_idx`` ``(N,)``, or per crystal ``(B, 3, 3)``
    with ``batch_idx=None``; ``num_crystals`` B is required with ``batch_idx``. ``alpha``: scalar or
    ``(B,)``. Returns a scalar or ``(B,)`` tensor.
    """
    if batch_idx is None:
        score_norm = score.reshape(score.shape[0], -1).norm(dim=-1)  # (B,)
        noise_norm = noise.reshape(noise.shape[0], -1).norm(dim=-1)  # (B,)
    else:
        if num_crystals is None:
            raise ValueError("num_crystals is required together with batch_idx")
        zeros = torch.zeros(num_crystals, dtype=score.dtype, device=score.device)
        score_norm = zeros.index_add(0, batch_idx, (score**2).sum(-1)).sqrt()  # (B,)
        noise_norm = zeros.index_add(0, batch_idx, (noise**2).sum(-1)).sqrt()  # (B,)
    ratio = snr * noise_norm.mean() / score_norm.mean().clamp_min(torch.finfo(score.dtype).tiny)
    step = 2 * torch.as_tensor(alpha, dtype=score.dtype, device=score.device) * ratio**2
    return step.clamp(max=max_step_size)


# ---------------------------------------------------------------------------------------- coordinates
def _coord_sigmas(sde: WrappedVESDE, t: torch.Tensor, s: torch.Tensor, num_atoms: torch.Tensor, last: bool):
    """``(σ_t, σ_s)`` per atom ``(N, 1)`` of a coordinate step t → s; σ_s = 0 on the last step."""
    sigma_t = sde.marginal_std_per_atom(t, num_atoms).unsqueeze(-1)
    sigma_s = torch.zeros_like(sigma_t) if last else sde.marginal_std_per_atom(s, num_atoms).unsqueeze(-1)
    return sigma_t, sigma_s


def _lattice_coeffs(sde: LatticeVPSDE, t: torch.Tensor, s: torch.Tensor, num_atoms: torch.Tensor, last: bool):
    """``(α_t/α_s, σ_t, σ_s)`` ``(B,)`` of a lattice step t → s (ratio not clamped); σ_s = 0 on the last step."""
    sigma_t = sde.marginal_std(t, num_atoms)
    sigma_s = torch.zeros_like(sigma_t) if last else sde.marginal_std(s, num_atoms)
    return sde.mean_coeff(t) / sde.mean_coeff(s), sigma_t, sigma_s


class WrappedAncestralPredictor:
    """Ancestral step of the wrapped VE process (α = 1): the sample and the mean are wrapped to [0, 1)."""

    def __init__(self, sde: WrappedVESDE) -> None:
        self.sde = sde

    def step(
        self,
        x: torch.Tensor,
        score: torch.Tensor,
        *,
        t: torch.Tensor,
        s: torch.Tensor,
        num_atoms: torch.Tensor,
        last: bool,
        generator: torch.Generator,
        dt: float | None = None,
    ) -> StepOutput:
        """``x, score: (N, 3)``; ``t, s: (B,)`` with s < t; ``last``: σ_s = 0 (no noise)."""
        sigma_t, sigma_s = _coord_sigmas(self.sde, t, s, num_atoms, last)  # (N, 1) each
        var_ts = sigma_t**2 - sigma_s**2  # (N, 1)
        mean = x + var_ts * score
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        sample = mean + var_ts.clamp_min(0).sqrt() * sigma_s / sigma_t * z
        return StepOutput(sample=wrap(sample), mean=wrap(mean))


class WrappedODEPredictor:
    """Deterministic probability-flow (DDIM, η = 0) step of the wrapped VE process, wrapped to [0, 1)."""

    def __init__(self, sde: WrappedVESDE) -> None:
        self.sde = sde

    def step(
        self,
        x: torch.Tensor,
        score: torch.Tensor,
        *,
        t: torch.Tensor,
        s: torch.Tensor,
        num_atoms: torch.Tensor,
        last: bool,
        generator: torch.Generator | None = None,
        dt: float | None = None,
    ) -> StepOutput:
        """``x, score: (N, 3)``; ``t, s: (B,)`` with s < t; draws no noise (``generator`` is not used)."""
        sigma_t, sigma_s = _coord_sigmas(self.sde, t, s, num_atoms, last)  # (N, 1) each
        mean = wrap(x + sigma_t * (sigma_t - sigma_s) * score)
        return StepOutput(sample=mean, mean=mean)


class WrappedLangevinCorrector:
    """Langevin step on the torus (α = 1), wrapped to [0, 1)."""

    def __init__(self, sde: WrappedVESDE, *, snr: float, max_step_size: float) -> None:
        self.sde, self.snr, self.max_step_size = sde, snr, max_step_size

    def step(
        self,
        x: torch.Tensor,
        score: torch.Tensor,
        *,
        num_atoms: torch.Tensor,
        generator: torch.Generator,
        t: torch.Tensor | None = None,
        s: torch.Tensor | None = None,
        dt: float | None = None,
        last: bool = False,
    ) -> StepOutput:
        """``x, score: (N, 3)``."""
        batch_idx = torch.repeat_interleave(torch.arange(len(num_atoms), device=x.device), num_atoms)  # (N,)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        h = langevin_step_size(
            score, z, snr=self.snr, alpha=1.0, max_step_size=self.max_step_size,
            batch_idx=batch_idx, num_crystals=len(num_atoms),
        )
        mean = x + h * score
        return StepOutput(sample=wrap(mean + torch.sqrt(2 * h) * z), mean=wrap(mean))


# ---------------------------------------------------------------------------------------- lattice
class LatticeAncestralPredictor:
    """Ancestral step of the lattice VP process with symmetric noise and the limit-mean shift."""

    def __init__(self, sde: LatticeVPSDE) -> None:
        self.sde = sde

    def step(
        self,
        x: torch.Tensor,
        score: torch.Tensor,
        *,
        t: torch.Tensor,
        s: torch.Tensor,
        num_atoms: torch.Tensor,
        last: bool,
        generator: torch.Generator,
        dt: float | None = None,
    ) -> StepOutput:
        """``x, score: (B, 3, 3)``; ``t, s: (B,)``; ``last``: σ_s = 0 (no noise)."""
        ratio, sigma_t, sigma_s = _lattice_coeffs(self.sde, t, s, num_atoms, last)  # (B,) each
        alpha_ts = ratio.clamp_min(MIN_ALPHA_TS)  # (B,)
        var_ts = sigma_t**2 - sigma_s**2 * ratio**2  # (B,)
        mu = self.sde.limit_mean(num_atoms, dtype=x.dtype)  # (B, 3, 3)
        a, v = alpha_ts[:, None, None], var_ts[:, None, None]  # (B, 1, 1)
        mean = x / a + (v / a) * score + (1 - 1 / a) * mu
        std = (var_ts.clamp_min(0).sqrt() * sigma_s / sigma_t)[:, None, None]  # (B, 1, 1)
        z = symmetric_noise(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        return StepOutput(sample=mean + std * z, mean=mean)


class LatticeODEPredictor:
    """Deterministic probability-flow (DDIM, η = 0) step of the lattice VP process around its limit mean."""

    def __init__(self, sde: LatticeVPSDE) -> None:
        self.sde = sde

    def step(
        self,
        x: torch.Tensor,
        score: torch.Tensor,
        *,
        t: torch.Tensor,
        s: torch.Tensor,
        num_atoms: torch.Tensor,
        last: bool,
        generator: torch.Generator | None = None,
        dt: float | None = None,
    ) -> StepOutput:
        """``x, score: (B, 3, 3)``; ``t, s: (B,)``; draws no noise (``generator`` is not used)."""
        ratio, sigma_t, sigma_s = _lattice_coeffs(self.sde, t, s, num_atoms, last)  # (B,) each
        a = ratio.clamp_min(MIN_ALPHA_TS)[:, None, None]  # (B, 1, 1)
        st, ss = sigma_t[:, None, None], sigma_s[:, None, None]
        mu = self.sde.limit_mean(num_atoms, dtype=x.dtype)  # (B, 3, 3)
        mean = mu + (x - mu) / a + (st**2 / a - ss * st) * score
        return StepOutput(sample=mean, mean=mean)


class LatticeLangevinCorrector:
    """Langevin step for the lattice with symmetric noise; sample and mean are re-projected to the
    symmetric polar factor (spec §5.2)."""

    def __init__(self, sde: LatticeVPSDE, *, snr: float, max_step_size: float) -> None:
        self.sde, self.snr, self.max_step_size = sde, snr, max_step_size

    def step(
        self,
        x: torch.Tensor,
        score: torch.Tensor,
        *,
        t: torch.Tensor,
        dt: float,
        generator: torch.Generator,
        s: torch.Tensor | None = None,
        num_atoms: torch.Tensor | None = None,
        last: bool = False,
    ) -> StepOutput:
        """``x, score: (B, 3, 3)``; ``t: (B,)``; ``dt < 0`` the predictor's time step."""
        alpha_bar_t = self.sde.mean_coeff(t) ** 2  # (B,)
        alpha_bar_next = self.sde.mean_coeff((t + dt).clamp_min(0)) ** 2
        alpha = alpha_bar_t / alpha_bar_next  # (B,)
        z = symmetric_noise(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        h = langevin_step_size(score, z, snr=self.snr, alpha=alpha, max_step_size=self.max_step_size)  # (B,)
        h = h[:, None, None]  # (B, 1, 1)
        mean = x + h * score
        sample = mean + torch.sqrt(2 * h) * z
        return StepOutput(sample=polar_symmetric(sample), mean=polar_symmetric(mean))


# ---------------------------------------------------------------------------------------- atom types
class MaskedTypeAncestralPredictor:
    """D3PM ancestral step with x_0 prediction: sample from p_θ(x_τ | x_{τ+1}); the mean is its argmax."""

    def __init__(self, process: MaskedTypeDiffusion) -> None:
        self.process = process

    def step(
        self,
        atom_types: torch.Tensor,
        x0_logits: torch.Tensor,
        *,
        t: torch.Tensor,
        s: torch.Tensor,
        num_atoms: torch.Tensor,
        last: bool,
        generator: torch.Generator,
        dt: float | None = None,
    ) -> StepOutput:
        """``atom_types: (N,)`` atomic numbers; ``x0_logits: (N, 101)`` (already masked); ``t, s: (B,)``.

        Returns atomic numbers ``(N,)``. Posterior logits = log q(x_prev | x̂_0) + log q(x_step = x | x_prev)
        with (step, prev) from :meth:`MaskedTypeDiffusion.ancestral_steps` (τ + 1 → τ at 1000 steps).
        """
        step, prev = self.process.ancestral_steps(
            torch.repeat_interleave(t, num_atoms), torch.repeat_interleave(s, num_atoms), last=last
        )  # (N,), (N,)
        x = self.process.to_classes(atom_types)
        logits = self.process.posterior_logits(x0_logits, x, step=step, prev_step=prev)  # (N, 101)
        sample = sample_categorical(logits, generator=generator)
        mean = logits.argmax(-1)
        return StepOutput(
            sample=self.process.to_atomic_numbers(sample), mean=self.process.to_atomic_numbers(mean)
        )


__all__ = [
    "MASK_PENALTY",
    "LatticeAncestralPredictor",
    "LatticeLangevinCorrector",
    "LatticeODEPredictor",
    "MaskedTypeAncestralPredictor",
    "StepOutput",
    "WrappedAncestralPredictor",
    "WrappedLangevinCorrector",
    "WrappedODEPredictor",
    "allowed_classes",
    "langevin_step_size",
    "mask_logits",
]
