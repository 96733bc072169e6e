"""The joint corruption of (atom types, fractional coordinates, lattice) with one t per crystal (spec §2).

Each field is corrupted independently by its own process:

* ``frac_coords``: :class:`~mattergen_lab.noise.wrapped_ve.WrappedVESDE`
* ``lattice``:     :class:`~mattergen_lab.noise.lattice_vp.LatticeVPSDE`
* ``atom_types``:  :class:`~mattergen_lab.noise.masked_types.MaskedTypeDiffusion`

Training time is t ~ U[t_min, 1] with t_min = 1e-5, one value per crystal.

**Crystal-structure prediction (CSP)**: with ``DiffusionConfig(fixed_atom_types=True)`` the atom types are given
and never corrupted (MatterGen's ``csp.yaml``: no atom-type corruption, ``include_atomic_numbers: False``). Only
the coordinates and the lattice are noised; the type loss is zero and the sampler keeps the types it is given.
A checkpoint records it in ``config.json`` as ``diffusion.fixed_atom_types: true`` (see :func:`is_csp_config`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.noise.lattice_vp import LatticeVPConfig, LatticeVPSDE
from mattergen_lab.noise.masked_types import MaskedTypeConfig, MaskedTypeDiffusion
from mattergen_lab.noise.wrapped_ve import WrappedVEConfig, WrappedVESDE

_SECTIONS = {"coords": WrappedVEConfig, "lattice": LatticeVPConfig, "atom_types": MaskedTypeConfig}


@dataclass(frozen=True)
class DiffusionConfig:
    """The three corruption processes plus the training-time range. Plain data: ``to_dict``/``from_dict``."""

    coords: WrappedVEConfig = field(default_factory=WrappedVEConfig)
    lattice: LatticeVPConfig = field(default_factory=LatticeVPConfig)
    atom_types: MaskedTypeConfig = field(default_factory=MaskedTypeConfig)
    t_min: float = 1e-5
    #: CSP: the atom types are given, never noised, have no loss and are not sampled.
    fixed_atom_types: bool = False

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ValueError(f"DiffusionConfig: {name}={value!r} must be a {cls.__name__}")
        t = self.t_min
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t < 1:
            raise ValueError(f"DiffusionConfig: t_min={t!r} must be a number in [0, 1)")
        if not isinstance(self.fixed_atom_types, bool):
            raise ValueError(f"DiffusionConfig: fixed_atom_types={self.fixed_atom_types!r} must be True or False")

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name).to_dict() for name in _SECTIONS} | {"t_min": self.t_min}
        if self.fixed_atom_types:  # written only when set, so the configs of unconditional models are unchanged
            out["fixed_atom_types"] = True
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DiffusionConfig":
        """Inverse of :meth:`to_dict`; missing sections take their defaults, unknown keys raise ``ValueError``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"DiffusionConfig.from_dict expects a mapping, got {type(d).__name__}")
        known = set(_SECTIONS) | {"t_min", "fixed_atom_types"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"DiffusionConfig: unknown key(s) {unknown}; known keys are {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for name, section_cls in _SECTIONS.items():
            if name in d:
                if not isinstance(d[name], Mapping):
                    raise ValueError(
                        f"DiffusionConfig: {name}={d[name]!r} must be a mapping of {section_cls.__name__} fields"
                    )
                kwargs[name] = section_cls.from_dict(d[name])
        for key in ("t_min", "fixed_atom_types"):
            if key in d:
                kwargs[key] = d[key]
        return cls(**kwargs)


def is_csp_config(config: Mapping[str, Any]) -> bool:
    """True when a checkpoint's plain config is a CSP model (``config["diffusion"]["fixed_atom_types"]``)."""
    return bool((config.get("diffusion") or {}).get("fixed_atom_types", False))


@dataclass(frozen=True)
class DiffusionTargets:
    """What the network's outputs are trained towards, plus what the type loss needs.

    Attributes:
        frac_coords: ``(N, 3)`` std·s_WN(f_t | f_0) (≈ −ε).
        lattice: ``(B, 3, 3)`` −(L_t − mean_t)/std_t (= −ε_sym).
        atom_classes: ``(N,)`` clean classes Z − 1.
        noisy_classes: ``(N,)`` classes at D3PM step τ + 1 (the clean classes with fixed atom types).
        type_step: ``(N,)`` τ = floor(t·(N_steps − 1)) of each atom's crystal.
    """

    frac_coords: torch.Tensor
    lattice: torch.Tensor
    atom_classes: torch.Tensor
    noisy_classes: torch.Tensor
    type_step: torch.Tensor


class JointDiffusion:
    """Corrupts and samples priors for whole :class:`CrystalBatch` objects."""

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config or DiffusionConfig()
        self.coords = WrappedVESDE(self.config.coords)
        self.lattice = LatticeVPSDE(self.config.lattice)
        self.types = MaskedTypeDiffusion(self.config.atom_types)

    def sample_time(
        self,
        num_crystals: int,
        *,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """t ~ U[t_min, 1], ``(B,)``. ``device`` defaults to the generator's device."""
        if isinstance(num_crystals, bool) or not isinstance(num_crystals, int) or num_crystals < 1:
            raise ValueError(f"num_crystals={num_crystals!r} must be a positive integer")
        device = generator.device if device is None else device
        u = torch.rand(num_crystals, generator=generator, dtype=dtype, device=device)
        return self.config.t_min + (1.0 - self.config.t_min) * u

    def corrupt(
        self, batch: CrystalBatch, t: torch.Tensor, *, generator: torch.Generator
    ) -> tuple[CrystalBatch, DiffusionTargets]:
        """Noisy batch at times ``t`` ``(B,)`` and the training targets. Properties are passed through."""
        if t.shape != (batch.num_crystals,):
            raise ValueError(f"t has shape {tuple(t.shape)}, expected ({batch.num_crystals},)")
        if bool((batch.atom_types < 1).any()) or bool((batch.atom_types > self.types.mask_class).any()):
            raise ValueError("atom_types must be clean atomic numbers in 1..100 to be corrupted")
        t = t.to(dtype=batch.lattice.dtype, device=batch.device)
        num_atoms = batch.num_atoms
        t_atom = torch.repeat_interleave(t, num_atoms)  # (N,)

        std = self.coords.marginal_std_per_atom(t, num_atoms)  # (N,)
        frac_t, _ = self.coords.sample_marginal(batch.frac_coords, std, generator=generator)
        lattice_t, eps_l = self.lattice.sample_marginal(batch.lattice, t, num_atoms, generator=generator)
        x0 = self.types.to_classes(batch.atom_types)  # (N,)
        tau = self.types.discrete_time(t_atom)  # (N,)
        if self.config.fixed_atom_types:  # CSP: the types are given at every t (no draw from the generator)
            x_next = x0
        else:
            x_next = self.types.sample_marginal(x0, tau + 1, generator=generator)  # (N,)

        noisy = batch.replace(
            atom_types=self.types.to_atomic_numbers(x_next), frac_coords=frac_t, lattice=lattice_t
        )
        targets = DiffusionTargets(
            frac_coords=self.coords.loss_target(frac_t, batch.frac_coords, std),
            lattice=-eps_l,
            atom_classes=x0,
            noisy_classes=x_next,
            type_step=tau,
        )
        return noisy, targets

    def prior(
        self,
        num_atoms: torch.Tensor,
        *,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        properties: dict[str, Any] | None = None,
    ) -> CrystalBatch:
        """A batch drawn from the prior: all atoms MASK, wrapped-normal coordinates, lattice prior."""
        num_atoms = torch.as_tensor(num_atoms, dtype=torch.long)
        if num_atoms.dim() != 1 or len(num_atoms) == 0 or bool((num_atoms < 1).any()):
            raise ValueError(f"num_atoms={num_atoms.tolist()} must be a non-empty 1-D list of positive counts")
        device = generator.device if device is None else torch.device(device)
        num_atoms = num_atoms.to(device)
        frac = self.coords.prior(num_atoms, generator=generator, dtype=dtype, device=device)
        lattice = self.lattice.prior(num_atoms, generator=generator, dtype=dtype, device=device)
        return CrystalBatch(
            atom_types=self.types.prior(int(num_atoms.sum()), device=device),
            frac_coords=frac,
            lattice=lattice,
            num_atoms=num_atoms,
            properties=dict(properties or {}),
        )
