"""The sampler's plain values: its settings (:class:`SamplerConfig`) and the frames it yields
(:class:`SamplerFrame`, :class:`ChunkFrame`). :mod:`~mattergen_lab.sampling.sampler` re-exports them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mattergen_lab.config import PlainConfig
from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.limits import MAX_CORRECTOR_STEPS, MAX_NUM_STEPS, check_at_most


#: Predictors of the coordinates and the lattice: the official ancestral step, or a deterministic probability-flow one.
PREDICTORS = ("ancestral", "ode")

#: The sampler settings a request or a campaign may vary (``sampler: {n_corrector_steps: 0}``): the step count has its
#: own field (``num_steps``), and ``eps_t`` / ``record_every`` are not variants.
SAMPLER_VARIANT_KEYS = ("n_corrector_steps", "coord_snr", "lattice_snr", "max_step_size", "predictor")


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
        predictor: ``"ancestral"`` (official) or ``"ode"``: a deterministic probability-flow (DDIM, η = 0) step
            for the coordinates and the lattice, from the same scores (atom types keep the D3PM ancestral step).
    """

    num_steps: int = 1000
    eps_t: float | None = None
    n_corrector_steps: int = 1
    coord_snr: float = 0.4
    lattice_snr: float = 0.2
    max_step_size: float = 1e6
    record_every: int = 0
    predictor: str = "ancestral"

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.num_steps) or self.num_steps < 1:
            raise ValueError(f"SamplerConfig: num_steps={self.num_steps!r} must be a positive integer")
        check_at_most("SamplerConfig: num_steps", self.num_steps, MAX_NUM_STEPS, "MAX_NUM_STEPS",
                      "the official sampler takes 1,000")
        if self.eps_t is not None:
            upper_ok = self.eps_t < 1 or (self.num_steps == 1 and self.eps_t == 1)
            if not is_num(self.eps_t) or not self.eps_t > 0 or not upper_ok:
                raise ValueError(f"SamplerConfig: eps_t={self.eps_t!r} must be None or a number in (0, 1)")
        if not is_int(self.n_corrector_steps) or self.n_corrector_steps < 0:
            raise ValueError(f"SamplerConfig: n_corrector_steps={self.n_corrector_steps!r} must be an integer >= 0")
        check_at_most("SamplerConfig: n_corrector_steps", self.n_corrector_steps, MAX_CORRECTOR_STEPS,
                      "MAX_CORRECTOR_STEPS", "the official sampler takes 1")
        for name in ("coord_snr", "lattice_snr"):
            value = getattr(self, name)
            if not is_num(value) or value < 0:
                raise ValueError(f"SamplerConfig: {name}={value!r} must be a non-negative number")
        if not is_num(self.max_step_size) or self.max_step_size <= 0:
            raise ValueError(f"SamplerConfig: max_step_size={self.max_step_size!r} must be a positive number")
        if not is_int(self.record_every) or self.record_every < 0:
            raise ValueError(f"SamplerConfig: record_every={self.record_every!r} must be an integer >= 0")
        if self.predictor not in PREDICTORS:
            raise ValueError(f"SamplerConfig: predictor={self.predictor!r}; expected one of {list(PREDICTORS)}")

    @property
    def resolved_eps_t(self) -> float:
        return 1.0 / self.num_steps if self.eps_t is None else float(self.eps_t)

    def variant(self) -> dict[str, Any]:
        """This config's :data:`SAMPLER_VARIANT_KEYS` that differ from the defaults (``{}`` = the official sampler)."""
        default = SamplerConfig(num_steps=self.num_steps)
        return {k: getattr(self, k) for k in SAMPLER_VARIANT_KEYS if getattr(self, k) != getattr(default, k)}


def sampler_variant(settings: Any, *, where: str = "sampler") -> dict[str, Any]:
    """Validate a sampler variant (a mapping of :data:`SAMPLER_VARIANT_KEYS`) at the boundary; ``ValueError`` names
    the bad key or value as ``{where}.{key}=...``.

    Returns it in one canonical form: the SNRs and the step cap as floats, and the settings that equal the defaults
    dropped (``{"n_corrector_steps": 1}`` is the official sampler, ``{}``), so one sampler has one record.
    """
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise ValueError(f"{where}={settings!r} must be a mapping of sampler settings, e.g. {{n_corrector_steps: 0}}; "
                         f"keys: {list(SAMPLER_VARIANT_KEYS)}")
    unknown = sorted(str(k) for k in settings if k not in SAMPLER_VARIANT_KEYS)
    if unknown:
        extra = " (the step count is num_steps, beside sampler)" if "num_steps" in unknown else ""
        raise ValueError(f"unknown {where} key(s) {unknown}{extra}; expected some of {list(SAMPLER_VARIANT_KEYS)}")
    try:
        config = SamplerConfig(**dict(settings))
    except ValueError as exc:
        raise ValueError(str(exc).replace("SamplerConfig: ", f"{where}.")) from None
    out = config.variant()
    for k in ("coord_snr", "lattice_snr", "max_step_size"):
        if k in out:
            out[k] = float(out[k])
    return {k: out[k] for k in sorted(out)}


def parse_sampler_text(text: str, *, where: str = "--sampler") -> dict[str, Any]:
    """``"coord_snr=0.2,n_corrector_steps=0"`` -> :func:`sampler_variant` of it (the CLI's and benchmarks' form).

    ``ValueError`` names the bad part; ``""`` is the official sampler (``{}``).
    """
    import yaml

    out: dict[str, Any] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"{where} {text!r}: {part!r} is not key=value (e.g. n_corrector_steps=0); "
                             f"keys: {list(SAMPLER_VARIANT_KEYS)}")
        out[key.strip()] = yaml.safe_load(value.strip())
    return sampler_variant(out, where="sampler")


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
