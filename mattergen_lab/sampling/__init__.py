"""Sampling: per-field predictor/corrector steps and the predictor-corrector sampler (spec §5)."""

from mattergen_lab.sampling.sampler import (
    PredictorCorrectorSampler,
    SamplerConfig,
    SamplerFrame,
)
from mattergen_lab.sampling.steps import (
    LatticeAncestralPredictor,
    LatticeLangevinCorrector,
    LatticeODEPredictor,
    MaskedTypeAncestralPredictor,
    StepOutput,
    WrappedAncestralPredictor,
    WrappedLangevinCorrector,
    WrappedODEPredictor,
    allowed_classes,
    langevin_step_size,
    mask_logits,
)

__all__ = [
    "LatticeAncestralPredictor",
    "LatticeLangevinCorrector",
    "LatticeODEPredictor",
    "MaskedTypeAncestralPredictor",
    "PredictorCorrectorSampler",
    "SamplerConfig",
    "SamplerFrame",
    "StepOutput",
    "WrappedAncestralPredictor",
    "WrappedLangevinCorrector",
    "WrappedODEPredictor",
    "allowed_classes",
    "langevin_step_size",
    "mask_logits",
]
