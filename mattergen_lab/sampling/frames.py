"""The sampler's plain values: its settings (:class:`SamplerConfig`) and the frames it yields
(:class:`SamplerFrame`, :class:`ChunkFrame`). :mod:`~mattergen_lab.sampling.sampler` re-exports them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mattergen_lab.config import PlainConfig
from mattergen_lab.crystal import CrystalBatch


@dataclass(frozen=True)
class SamplerConfig(PlainConfig):
    """Predictor-corrector settings (official defaults, spec §5).

    Attributes:
        num_steps: N, the number of predictor steps (each preceded by the corrector).
        eps_t: the last time; ``None`` means 1/N.
        n_corrector_steps: Langevin steps before each predictor step (0 = predictor only).
        coord_snr, lattice_snr: Langevin signal-to-noise ratios.
        max_step_size: cap on the Langevin step size.
        record_every: when > 0, :meth:`PredictorCorrectorSampler.sample_to_dir` also writes denoising
            trajectories with a frame every ``record_every`` steps.
    """

    num_steps: int = 1000
    eps_t: float | None = None
    n_corrector_steps: int = 1
    coord_snr: float = 0.4
    lattice_snr: float = 0.2
    max_step_size: float = 1e6
    record_every: int = 0

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.num_steps) or self.num_steps < 1:
            raise ValueError(f"SamplerConfig: num_steps={self.num_steps!r} must be a positive integer")
        if self.eps_t is not None:
            upper_ok = self.eps_t < 1 or (self.num_steps == 1 and self.eps_t == 1)
            if not is_num(self.eps_t) or not self.eps_t > 0 or not upper_ok:
                raise ValueError(f"SamplerConfig: eps_t={self.eps_t!r} must be None or a number in (0, 1)")
        if not is_int(self.n_corrector_steps) or self.n_corrector_steps < 0:
            raise ValueError(f"SamplerConfig: n_corrector_steps={self.n_corrector_steps!r} must be an integer >= 0")
        for name in ("coord_snr", "lattice_snr"):
            value = getattr(self, name)
            if not is_num(value) or value < 0:
                raise ValueError(f"SamplerConfig: {name}={value!r} must be a non-negative number")
        if not is_num(self.max_step_size) or self.max_step_size <= 0:
            raise ValueError(f"SamplerConfig: max_step_size={self.max_step_size!r} must be a positive number")
        if not is_int(self.record_every) or self.record_every < 0:
            raise ValueError(f"SamplerConfig: record_every={self.record_every!r} must be an integer >= 0")

    @property
    def resolved_eps_t(self) -> float:
        return 1.0 / self.num_steps if self.eps_t is None else float(self.eps_t)



@dataclass(frozen=True)
class SamplerFrame:
    """One snapshot of a denoising run.

    Attributes:
        step: number of predictor steps done (0 = the prior, N = done).
        t: the time the state is at (1.0 for the prior, then s = t + dt after each step; 0 when final).
        batch: the current (noisy) state; for the final frame, the denoised mean batch.
        mean: the noise-free mean of the last predictor step (argmax types; may still hold MASK = 101);
            ``None`` for the prior and the final frame.
        final: True only for the last frame.
    """

    step: int
    t: float
    batch: CrystalBatch
    mean: CrystalBatch | None
    final: bool = False


@dataclass(frozen=True)
class ChunkFrame:
    """One frame of :meth:`PredictorCorrectorSampler.iter_chunks`: chunk ``chunk`` holds samples ``indices``."""

    chunk: int
    indices: tuple[int, ...]
    frame: SamplerFrame
