"""Atom types: D3PM absorbing ("mask") diffusion with a linear masking schedule (spec §2.3, §2.5).

Classes are ``Z − 1`` for Z = 1..100 and class 100 is MASK (atomic-number value 101). With N = 1000
steps and ``β_s = 1/(N − s)``:

    keep[s]            = Π_{r<s}(1 − β_r) = 1 − s/N            (keep[N] = 0)
    q(x_s | x_0)       = keep[s] δ(x_s = x_0) + (1 − keep[s]) δ(x_s = MASK)
    q(x_{s+1} | x_s)   = (1 − β_s) δ(x_{s+1} = x_s) + β_s δ(x_{s+1} = MASK);  MASK stays MASK
    q(x_τ | x_{τ+1}, x_0) ∝ q(x_{τ+1} | x_τ) · q(x_τ | x_0)

Continuous time t ∈ [0, 1] maps to τ = floor(t (N − 1)) ∈ {0..N−1}. Training corrupts to step τ + 1 and
scores the reverse step τ + 1 → τ:

    L = KL(q(x_τ | x_{τ+1}, x_0) ‖ p_θ(x_τ | x_{τ+1}))    (τ > 0)
      = CE(p_θ(x_τ | x_{τ+1}), x_0)                       (τ = 0)
      + λ · CE(logits, x_0)                               (hybrid, λ = 0.01)

where p_θ is the same posterior with x_0 replaced by x̂_0 = softmax(logits). The sampler's ancestral step
uses p_θ too; with fewer than N sampling steps it jumps from τ(t) + 1 to τ(s) + 1 with the multi-step
transition (see :meth:`MaskedTypeDiffusion.posterior_logits`). Everything is computed in
log space; impossible transitions get the finite log-probability :data:`NEG_INF` (−1e10) instead of
−inf so that no NaN can appear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mattergen_lab.config import PlainConfig
from mattergen_lab.constants import MASK_CLASS, MASK_Z, NUM_CLASSES
from mattergen_lab.limits import MAX_NUM_STEPS, check_at_most

#: Finite stand-in for log(0).
NEG_INF = -1e10


def _safe_log(p: torch.Tensor) -> torch.Tensor:
    """log p where p > 0, :data:`NEG_INF` where p == 0 (p is a schedule constant, never differentiated)."""
    return torch.where(p > 0, torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), torch.full_like(p, NEG_INF))


def onehot_logits(classes: torch.Tensor, *, num_classes: int = NUM_CLASSES, dtype: torch.dtype) -> torch.Tensor:
    """Logits of a point mass: 0 at ``classes`` and :data:`NEG_INF` elsewhere: ``(N,) -> (N, K)``."""
    hot = F.one_hot(classes, num_classes).bool()  # (N, K)
    zero = torch.zeros((), dtype=dtype, device=classes.device)
    return torch.where(hot, zero, torch.full_like(zero, NEG_INF))


def sample_categorical(logits: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Gumbel-max sample of one class per row: ``(N, K) -> (N,)`` int64."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    finfo = torch.finfo(logits.dtype)
    u = u.clamp(finfo.tiny, 1.0 - finfo.eps)
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)


@dataclass(frozen=True)
class MaskedTypeConfig(PlainConfig):
    """Parameters of :class:`MaskedTypeDiffusion` (official values)."""

    num_steps: int = 1000
    num_classes: int = NUM_CLASSES
    hybrid_lambda: float = 0.01

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 2:
            raise ValueError(f"MaskedTypeConfig: num_steps={self.num_steps!r} must be an integer >= 2")
        check_at_most("MaskedTypeConfig: num_steps", self.num_steps, MAX_NUM_STEPS, "MAX_NUM_STEPS",
                      "the official value is 1,000")
        if self.num_classes != NUM_CLASSES:
            raise ValueError(
                f"MaskedTypeConfig: num_classes={self.num_classes!r} must be {NUM_CLASSES} (100 elements + MASK)"
            )
        lam = self.hybrid_lambda
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"MaskedTypeConfig: hybrid_lambda={lam!r} must be a non-negative finite number")



class MaskedTypeDiffusion:
    """The atom-type process. Works on classes (``Z − 1``); use :meth:`to_classes` / :meth:`to_atomic_numbers`."""

    mask_class = MASK_CLASS

    def __init__(self, config: MaskedTypeConfig | None = None) -> None:
        self.config = config or MaskedTypeConfig()

    # ------------------------------------------------------------------ conversions and schedule
    @staticmethod
    def to_classes(atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Z (1..100, 101 = MASK) -> class (0..99, 100 = MASK)."""
        return atomic_numbers - 1

    @staticmethod
    def to_atomic_numbers(classes: torch.Tensor) -> torch.Tensor:
        return classes + 1

    def discrete_time(self, t: torch.Tensor) -> torch.Tensor:
        """τ = floor(t (N − 1)) ∈ {0..N−1}, int64, same shape as ``t``."""
        n = self.config.num_steps
        return torch.floor(t * (n - 1)).long().clamp(0, n - 1)

    def keep_prob(self, step: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
        """keep[s] = 1 − s/N (so keep[N] = 0)."""
        return 1.0 - step.to(dtype) / self.config.num_steps

    def beta(self, step: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
        """β_s = 1/(N − s): probability that an unmasked atom gets masked going from step s to s + 1."""
        return 1.0 / (self.config.num_steps - step.to(dtype))

    # ------------------------------------------------------------------ forward process
    def sample_marginal(self, x0: torch.Tensor, step: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Draw x_s ~ q(x_s | x_0) per atom. ``x0, step: (N,)`` classes / int steps -> ``(N,)`` classes."""
        keep = self.keep_prob(step, dtype=torch.float32)  # (N,)
        u = torch.rand(x0.shape, generator=generator, dtype=torch.float32, device=x0.device)
        return torch.where(u < keep, x0, torch.full_like(x0, MASK_CLASS))

    def prior(self, num_atoms_total: int, *, device: torch.device | str) -> torch.Tensor:
        """All atoms masked: ``(N,)`` atomic numbers equal to 101."""
        return torch.full((num_atoms_total,), MASK_Z, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ posterior (log space)
    def posterior_logits(
        self, x0_logits: torch.Tensor, x_t: torch.Tensor, *, step: torch.Tensor, prev_step: torch.Tensor
    ) -> torch.Tensor:
        """Unnormalised ``log q(x_{prev} | x_{step} = x_t, x̂_0)`` with ``x̂_0 = softmax(x0_logits)``.

        ``log q(x_prev | x̂_0) + log q(x_step = x_t | x_prev)`` as a function of x_prev. The jump
        ``prev → step`` keeps an unmasked atom with probability ``keep[step] / keep[prev]`` and masks it
        otherwise. Training and the official 1000-step sampler use one-step jumps (step = τ + 1,
        prev = τ), where this is exactly the spec's ``q(x_τ | x_{τ+1}, x_0)``; a sampler with fewer steps
        jumps further. For a known x_0 pass :func:`onehot_logits`.

        Args:
            x0_logits: ``(N, K)``.
            x_t: ``(N,)`` classes at ``step``.
            step, prev_step: ``(N,)`` int steps with ``0 <= prev_step < step <= N``.
        Returns:
            ``(N, K)`` logits.
        """
        dtype = x0_logits.dtype
        log_p0 = torch.log_softmax(x0_logits, dim=-1)  # (N, K)
        keep_prev = self.keep_prob(prev_step, dtype=dtype).unsqueeze(-1)  # (N, 1), > 0 for prev < N
        keep_t = self.keep_prob(step, dtype=dtype).unsqueeze(-1)  # (N, 1)
        # log q(x_prev | x̂_0): class c gets keep_prev·p̂_c; MASK gets keep_prev·p̂_MASK + (1 − keep_prev).
        fact0 = _safe_log(keep_prev) + log_p0  # (N, K)
        mask_col = torch.logaddexp(fact0[:, MASK_CLASS:], _safe_log(1.0 - keep_prev))  # (N, 1)
        fact0 = torch.cat([fact0[:, :MASK_CLASS], mask_col], dim=-1)  # (N, K)

        # log q(x_step = x_t | x_prev): a masked x_t may come from any element (masked in between) or
        # from MASK (prob 1); an unmasked x_t only from itself (kept).
        p_masked = ((keep_prev - keep_t) / keep_prev.clamp_min(torch.finfo(dtype).tiny)).clamp(0.0, 1.0)  # (N, 1)
        cls = torch.arange(x0_logits.shape[-1], device=x0_logits.device)  # (K,)
        from_masked = torch.where(cls == MASK_CLASS, torch.zeros_like(p_masked), _safe_log(p_masked))  # (N, K)
        from_kept = torch.where(
            cls == x_t.unsqueeze(-1), _safe_log(1.0 - p_masked), torch.full_like(p_masked, NEG_INF)
        )  # (N, K)
        fact1 = torch.where((x_t == MASK_CLASS).unsqueeze(-1), from_masked, from_kept)  # (N, K)
        return fact0 + fact1

    # ------------------------------------------------------------------ loss
    def loss_per_atom(
        self, logits: torch.Tensor, x0: torch.Tensor, x_next: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        """KL (τ > 0) or CE (τ = 0) of the reverse step, plus λ·CE(logits, x_0): ``(N,)``.

        Args:
            logits: ``(N, K)`` network output (no element mask during training).
            x0: ``(N,)`` clean classes; x_next: ``(N,)`` noisy classes at step τ + 1; tau: ``(N,)``.
        """
        hard_x0 = onehot_logits(x0, num_classes=logits.shape[-1], dtype=logits.dtype)
        q_logits = self.posterior_logits(hard_x0, x_next, step=tau + 1, prev_step=tau)
        p_logits = self.posterior_logits(logits, x_next, step=tau + 1, prev_step=tau)
        log_q = torch.log_softmax(q_logits, dim=-1)  # (N, K)
        log_p = torch.log_softmax(p_logits, dim=-1)  # (N, K)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (N,)
        ce_posterior = -log_p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # (N,)
        vb = torch.where(tau == 0, ce_posterior, kl)
        ce = F.cross_entropy(logits, x0, reduction="none")  # (N,)
        return vb + self.config.hybrid_lambda * ce

    # ------------------------------------------------------------------ reverse step
    def ancestral_steps(self, t: torch.Tensor, s: torch.Tensor, *, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Discrete ``(step, prev_step)`` of a sampler step from time t to s < t.

        The current state sits at ``τ(t) + 1`` and the next one at ``τ(s) + 1``, or at 0 (clean) on the
        last step. With N = 1000 sampling steps and eps_t = 1e-3 every step is the one-step reverse
        τ + 1 → τ of the spec.
        """
        step = self.discrete_time(t) + 1
        prev = torch.zeros_like(step) if last else torch.minimum(self.discrete_time(s) + 1, step)
        return step, prev
