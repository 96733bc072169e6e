"""Corruption processes (spec §2): one per field, plus their joint use on a :class:`CrystalBatch`."""

from mattergen_lab.noise.joint import DiffusionConfig, DiffusionTargets, JointDiffusion
from mattergen_lab.noise.lattice_vp import (
    LatticeVPConfig,
    LatticeVPSDE,
    make_noise_symmetric_preserve_variance,
    symmetric_noise,
)
from mattergen_lab.noise.masked_types import MaskedTypeConfig, MaskedTypeDiffusion
from mattergen_lab.noise.wrapped_ve import (
    WrappedVEConfig,
    WrappedVESDE,
    wrap,
    wrapped_normal_log_density,
    wrapped_normal_score,
)

__all__ = [
    "DiffusionConfig",
    "DiffusionTargets",
    "JointDiffusion",
    "LatticeVPConfig",
    "LatticeVPSDE",
    "MaskedTypeConfig",
    "MaskedTypeDiffusion",
    "WrappedVEConfig",
    "WrappedVESDE",
    "make_noise_symmetric_preserve_variance",
    "symmetric_noise",
    "wrap",
    "wrapped_normal_log_density",
    "wrapped_normal_score",
]
