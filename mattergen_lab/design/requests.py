"""Design requests: the target properties and their slider ranges, chemistry checks, and DesignRequest."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.caches import registered
from mattergen_lab.chemistry import ChemicalSystem
from mattergen_lab.model.property_embeddings import check_scalar_target
from mattergen_lab.sampling.inputs import TEMPLATE_GROUP
from mattergen_lab.sampling.request import SamplingRequest
from mattergen_lab.constants import SELECTED_ATOMIC_NUMBERS

if TYPE_CHECKING:  # pragma: no cover

    pass

log = logging.getLogger(__name__)

#: The scalar design targets the target panel offers (MatterGen property names).
DESIGN_PROPERTIES = ("dft_mag_density", "hhi_score", "dft_bulk_modulus", "dft_band_gap")

#: A target drives whichever of these property names a checkpoint conditions on. MatterGen's official
#: bulk-modulus checkpoint was fine-tuned on ML bulk moduli (``ml_bulk_modulus``); MP-20 has DFT values.
TARGET_ALIASES: dict[str, tuple[str, ...]] = {"dft_bulk_modulus": ("dft_bulk_modulus", "ml_bulk_modulus")}


def property_for(target: str, supported: Sequence[str]) -> str | None:
    """The conditioning property of a checkpoint (``supported``) that serves ``target``, or ``None``."""
    return next((name for name in TARGET_ALIASES.get(target, (target,)) if name in supported), None)

#: What a still-masked atom (Z = 101) is shown as; He is never generated (not in SELECTED_ATOMIC_NUMBERS).
MASK_PLACEHOLDER = "He"

#: Symmetry tolerance of the symmetrized CIFs in exports (Å), and the angle tolerance (degrees).
EXPORT_SYMPREC = 0.1
EXPORT_ANGLE_TOLERANCE = 5.0

#: Columns of the evaluation table that the candidate table keeps (``mattergen_lab.evaluation`` contract).
EVALUATION_COLUMNS = (
    "energy_per_atom", "energy_above_hull", "stable", "is_unique", "is_novel", "novel_unique_stable",
    "rmsd_from_relaxation", "comp_valid", "structure_valid", "relax_status", "error",
)


# ------------------------------------------------------------------------------------ chemical systems
@functools.lru_cache(maxsize=1)
def _allowed_symbols() -> dict[str, int]:
    from pymatgen.core.periodic_table import Element

    return {Element.from_Z(z).symbol: z for z in SELECTED_ATOMIC_NUMBERS}


def allowed_elements() -> list[str]:
    """The 76 element symbols MatterGen can generate, by atomic number."""
    return list(_allowed_symbols())


def validate_chemical_system(text: str) -> list[str]:
    """``"Li-Fe-O"`` (also ``"Li, Fe, O"`` or ``"Li Fe O"``) -> sorted unique symbols ``["Fe", "Li", "O"]``.

    Raises:
        ValueError: empty text, a token that is not an element symbol, or an element MatterGen never
            generates (noble gases, Tc, Pm, Z >= 84); the message names the token.
    """
    if not isinstance(text, str):
        raise ValueError(f"chemical system {text!r} is empty; write it like 'Li-Fe-O'")
    return list(ChemicalSystem.parse(text).require_generatable().symbols)


# ------------------------------------------------------------------------------------ property ranges
@dataclass(frozen=True)
class PropertyRange:
    """Slider range for one design property: ``low``..``high`` in ``unit``, with a default target."""

    name: str
    label: str
    unit: str
    low: float
    high: float
    default: float
    step: float
    source: str


#: Used when no data directory exists. Measured on MP-20 val (9,047 crystals): 0 to the 99.5th percentile
#: (magnetic density 0.1551 μB/Å³ over 8,694 labels, band gap 6.748 eV over 9,047, bulk modulus 326.8 GPa
#: over 1,152), HHI (pymatgen production HHI from composition, 8,333 crystals) from the 0.5th percentile 929.5
#: to the 99.5th 9500.
FALLBACK_RANGES: dict[str, PropertyRange] = {
    "dft_mag_density": PropertyRange("dft_mag_density", "magnetic density", "μB/Å³", 0.0, 0.155, 0.1, 0.001, "constants (MP-20 val)"),
    "hhi_score": PropertyRange("hhi_score", "HHI", "", 930.0, 9500.0, 1250.0, 10.0, "constants (MP-20 val)"),
    "dft_bulk_modulus": PropertyRange("dft_bulk_modulus", "bulk modulus", "GPa", 0.0, 327.0, 200.0, 1.0, "constants (MP-20 val)"),
    "dft_band_gap": PropertyRange("dft_band_gap", "band gap", "eV", 0.0, 6.75, 3.0, 0.01, "constants (MP-20 val)"),
}


def property_ranges(data_dir: str | os.PathLike | None = None) -> dict[str, PropertyRange]:
    """Slider ranges of :data:`DESIGN_PROPERTIES` from MP-20 val, or :data:`FALLBACK_RANGES` without data.

    Scalar DFT properties go from 0 to their 99.5th percentile; HHI (computed from composition with
    :func:`mattergen_lab.properties.hhi_score`) from its 0.5th to its 99.5th percentile. Defaults are
    paper-style design targets (0.1 μB/Å³, HHI 1250, 200 GPa, 3 eV) clipped into the range.
    """
    from mattergen_lab.data.paths import DataNotFoundError, resolve_data_dir

    try:
        root = resolve_data_dir(data_dir)
    except DataNotFoundError:
        return dict(FALLBACK_RANGES)
    if not (root / "mp_20" / "mattergen_cache" / "val").is_dir():
        return dict(FALLBACK_RANGES)
    return dict(_ranges_from_data(str(root)))


@registered
@functools.lru_cache(maxsize=4)
def _ranges_from_data(root: str) -> tuple[tuple[str, PropertyRange], ...]:
    from mattergen_lab.data import load_mp20
    from mattergen_lab.properties.hhi import hhi_scores

    ds = load_mp20("val", data_dir=root)
    values = dict(ds.properties)
    values["hhi_score"] = hhi_scores(ds.atom_types, ds.num_atoms)
    out = []
    for name in DESIGN_PROPERTIES:
        fb = FALLBACK_RANGES[name]
        v = np.asarray(values.get(name, []), dtype=float)
        v = v[np.isfinite(v)]
        if len(v) < 10:
            out.append((name, fb))
            continue
        low = float(np.percentile(v, 0.5)) if name == "hhi_score" else 0.0
        high = float(np.percentile(v, 99.5))
        step = 10 ** math.floor(math.log10((high - low) / 200)) if high > low else fb.step
        digits = max(0, -math.floor(math.log10(step)))  # no float noise such as 0.15510000000000002
        low, high = round(math.floor(low / step) * step, digits), round(math.ceil(high / step) * step, digits)
        default = min(max(fb.default, low), high)
        src = f"MP-20 val ({len(v)} labels; {'0.5' if name == 'hhi_score' else '0'}–99.5th percentile)"
        out.append((name, dataclasses.replace(fb, low=low, high=high, default=default, step=step, source=src)))
    return tuple(out)


# ------------------------------------------------------------------------------------------ requests
def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class DesignRequest:
    """One generation request, validated on construction (``ValueError`` names the bad value).

    It is a :class:`~mattergen_lab.sampling.request.SamplingRequest` plus design targets: the sampling fields are
    checked by the one it composes (:attr:`sampling`, built on construction), and :meth:`sampling_request` is that
    request with the conditions of a checkpoint. The fields stay flat so a widget can fill them in one call.

    Attributes:
        checkpoint: registry name or checkpoint path.
        chemical_system: e.g. ``"Li-Fe-O"`` (normalised to sorted symbols) or ``None``; a hard element
            mask at every step with any checkpoint, and a condition too when the checkpoint has that adapter.
        targets: ``{property: value}`` for scalar conditions (e.g. ``{"dft_mag_density": 0.15}``).
        guidance_scale: classifier-free guidance γ (0 = unconditional).
        num_samples, num_steps, seed: how many crystals, predictor steps (``None``: the checkpoint's recommended
            count, 200 for the bundled models, 1000 for official ones), and the random seed.
        every: a trajectory frame every ``every`` steps.
        batch_size: crystals denoised together; a cancelled run keeps every finished batch.
        num_atoms: atoms per crystal, or ``None`` to draw from the checkpoint's distribution.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``..., or ``None`` for CUDA when available, else CPU.
        composition, formula_units: crystal-structure prediction with a CSP checkpoint (e.g. ``mgl_mp20_small_csp``):
            every crystal holds exactly ``formula × formula_units`` atoms (no targets, no chemical system).
        symmetry: the symmetric mode (``SamplingRequest.symmetry``): a space group ``225``, a crystal system
            ``"cubic"``, ``"mp20"`` or a template ``"225:ab"``; with a space-group adapter a space group also guides.
            With ``parent``, ``"parent"`` keeps the parent's own space group and Wyckoff sites (stored as its template).
        parent, strength: variations of a known crystal (``SamplingRequest.parent``/``strength``: a pymatgen
            ``Structure`` or a structure file, noised to t0 = ``strength`` and denoised with the targets).
    """

    checkpoint: str
    chemical_system: str | None = None
    targets: Mapping[str, float] = field(default_factory=dict)
    guidance_scale: float = 0.0
    num_samples: int = 8
    num_steps: int | None = None
    seed: int = 0
    every: int = 5
    batch_size: int = 4
    num_atoms: int | None = None
    device: str | None = None
    composition: str | None = None
    formula_units: int = 1
    symmetry: str | int | None = None
    parent: Any = None
    strength: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, (str, os.PathLike)) or not str(self.checkpoint).strip():
            raise ValueError(f"checkpoint={self.checkpoint!r} must be a registry name or a path")
        object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if self.chemical_system is not None:
            cs = self.chemical_system.strip() if isinstance(self.chemical_system, str) else self.chemical_system
            object.__setattr__(self, "chemical_system", "-".join(validate_chemical_system(cs)) if cs else None)
        if self.targets and not isinstance(self.targets, Mapping):  # 'dft_band_gap=3' failed with a dict error
            raise ValueError(f"targets={self.targets!r} must be a mapping of property to value, e.g. "
                             "{'dft_band_gap': 3.0}")
        targets = {}
        for name, value in dict(self.targets or {}).items():
            if name in ("chemical_system", "space_group"):
                raise ValueError(f"targets: {name!r} is not a scalar target; use chemical_system= for chemistry")
            targets[str(name)] = check_scalar_target(str(name), value)  # finite, and in its physical range
        object.__setattr__(self, "targets", targets)
        if not _is_int(self.every) or self.every < 1:
            raise ValueError(f"every={self.every!r} must be a positive integer")
        if self.num_atoms is not None and (not _is_int(self.num_atoms) or self.num_atoms < 1):
            raise ValueError(f"num_atoms={self.num_atoms!r} must be None or a positive integer")
        for name in ("num_samples", "num_steps", "seed", "every", "batch_size", "num_atoms"):
            if isinstance(getattr(self, name), np.integer):  # a widget's value
                object.__setattr__(self, name, int(getattr(self, name)))
        if self.composition is not None and (self.targets or self.chemical_system):  # a bad formula is named first
            comp = SamplingRequest(composition=self.composition, formula_units=self.formula_units).composition
            raise ValueError(f"composition={comp.formula!r} fixes the atoms: drop the targets and chemical system")
        # everything the sampler reads is checked once, by the request this one composes
        sampling = SamplingRequest(
            checkpoint=self.checkpoint, num_samples=self.num_samples, batch_size=self.batch_size,
            num_steps=self.num_steps, guidance_scale=self.guidance_scale,
            elements=ChemicalSystem.parse(self.chemical_system) if self.chemical_system else None,
            num_atoms=self.num_atoms, seed=self.seed, device=self.device, composition=self.composition,
            formula_units=self.formula_units, symmetry=self.symmetry, parent=self.parent, strength=self.strength,
        )
        object.__setattr__(self, "_sampling", sampling)  # not a field: to_dict() and == are the flat fields
        object.__setattr__(self, "guidance_scale", sampling.guidance_scale)
        if sampling.composition is not None:
            object.__setattr__(self, "composition", sampling.composition.formula)
        if sampling.symmetry is not None:
            object.__setattr__(self, "symmetry", str(sampling.symmetry))
        if sampling.parent is not None:  # the parsed crystal (Niggli-reduced, hashed) and the resolved t0
            object.__setattr__(self, "parent", sampling.parent)
            object.__setattr__(self, "strength", sampling.strength)

    @property
    def sampling(self) -> SamplingRequest:
        """The sampling part of this request (no conditions: they depend on the checkpoint, see :meth:`conditions`)."""
        return self._sampling  # type: ignore[attr-defined]

    def resolved_device(self) -> str:
        """The device to sample on: ``device``, or CUDA when available, else CPU."""
        import torch

        if self.device is not None:
            return str(self.device)
        return "cuda" if torch.cuda.is_available() else "cpu"

    def sampling_request(self, supported: Sequence[str]) -> SamplingRequest:
        """:attr:`sampling` for a checkpoint conditioning on ``supported`` (:meth:`conditions`), on
        :meth:`resolved_device`: the same seed gives the same crystals as ``sample()`` and the CLI."""
        return dataclasses.replace(self.sampling, conditions=self.conditions(supported), device=self.resolved_device())

    def conditions(self, supported: Sequence[str]) -> dict[str, Any]:
        """Conditioning values for a checkpoint conditioning on ``supported``: every target, plus the
        chemical system when the checkpoint has a ``chemical_system`` adapter (otherwise it is a mask only)."""
        out: dict[str, Any] = {property_for(k, supported) or k: v for k, v in self.targets.items()}
        if self.chemical_system and "chemical_system" in supported:
            out["chemical_system"] = self.chemical_system
        if self.sampling.symmetry is not None and "space_group" in supported:
            out["space_group"] = TEMPLATE_GROUP  # a space-group adapter is guided towards each crystal's template group
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = dict(self.targets)
        if d["symmetry"] is None:  # recorded only when set, so older runs' records still match
            del d["symmetry"]
        if self.parent is None:
            del d["parent"], d["strength"]
        else:  # the parent as its record (sha256, formula, atoms), not the crystal
            d["parent"] = self.parent.record()
        return d
