"""``SamplingRequest``: everything one sampling run needs, validated once at the boundary.

The CLI, :func:`~mattergen_lab.sampling.api.sample`, the design runs and the app all build one, and the sampler's
single chunk loop (:meth:`PredictorCorrectorSampler.iter_chunks`) reads it. It owns the only seed-to-chunk
formula (:func:`chunk_seed`), so the same seed gives the same crystals, atom for atom, from every entry point:
crystal ``i`` belongs to chunk ``i // batch_size``, and chunk ``j`` draws its atom counts (on the CPU) and its
sampling noise (on the sampling device) from generators seeded with ``chunk_seed(seed, j)``.

"Same crystals" means on the same device with the same number of torch threads: a different thread count changes
the last bits of the matrix products, and the stochastic sampler can amplify them (measured: one coordinate off by
0.39 after 4 steps between 1 and 2 threads).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mattergen_lab.chemistry import ChemicalSystem
from mattergen_lab.sampling.composition import FixedComposition
from mattergen_lab.sampling.frames import sampler_variant


#: Most crystals one request may ask for: beyond it, split the work into a campaign (``mattergen-lab campaign``),
#: whose tasks are requests of this size or less. (A billion would allocate gigabytes before the first crystal.)
MAX_NUM_SAMPLES = 100_000


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk`` of a run seeded with ``seed`` (the one formula)."""
    return (seed * 1_000_003 + 7919 * (chunk + 1)) % (2**63 - 1)


def validate_device(device: Any) -> str:
    """``str(device)`` when torch understands it and this machine has it; ``ValueError`` naming it otherwise."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r}: no CUDA GPU is available here (torch {torch.__version__}); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r}: MPS is not available here; use 'cpu'")
    return str(device)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingRequest:
    """One sampling run (``ValueError`` on construction names the bad value).

    Attributes:
        checkpoint: registry name or checkpoint folder (for reports; the sampler is built from it by the caller).
        num_samples, batch_size: how many crystals, and how many are denoised together.
        num_steps: predictor-corrector steps; ``None`` is the checkpoint's recommendation.
        sampler: a sampler variant, e.g. ``{"n_corrector_steps": 0}`` (predictor only), ``{"coord_snr": 0.2}`` or
            ``{"predictor": "ode"}``; keys in :data:`~mattergen_lab.sampling.frames.SAMPLER_VARIANT_KEYS`, kept in the
            canonical form of :func:`~mattergen_lab.sampling.frames.sampler_variant` (``{}``: the official sampler).
        conditions: adapter targets, e.g. ``{"dft_band_gap": 2.0}`` or ``{"chemical_system": "Li-Fe-O"}``.
        guidance_scale: classifier-free guidance γ (0 = unconditional; the library's and the CLI's default).
        elements: a hard element mask at every step (any checkpoint); a ``chemical_system`` condition implies it.
        num_atoms: atoms per crystal (one int for all, or one per crystal); ``None`` draws from the checkpoint's table.
        composition: crystal-structure prediction (a CSP checkpoint only): a formula such as ``"Li2MnO3"``, parsed
            into a :class:`~mattergen_lab.sampling.composition.FixedComposition`. Every crystal gets exactly
            ``formula × formula_units`` atoms, whose types are fixed at every step; ``num_atoms`` follows from it.
        formula_units: formula units per cell with ``composition`` (default 1).
        seed: the run's seed; chunk ``j`` uses :func:`chunk_seed(seed, j) <chunk_seed>`.
        device: ``"cpu"``, ``"cuda"``...; ``None`` is the model's device.
    """

    checkpoint: str = ""
    num_samples: int = 16
    batch_size: int = 16
    num_steps: int | None = None
    conditions: Mapping[str, Any] = field(default_factory=dict)
    guidance_scale: float = 0.0
    elements: ChemicalSystem | None = None
    num_atoms: int | tuple[int, ...] | None = None
    seed: int = 0
    device: str | None = None
    composition: FixedComposition | str | None = None
    formula_units: int = 1
    sampler: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", str(self.checkpoint))
        object.__setattr__(self, "sampler", sampler_variant(self.sampler))
        for name in ("num_samples", "batch_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
            if v > MAX_NUM_SAMPLES:
                raise ValueError(f"{name}={v!r} is more than MAX_NUM_SAMPLES={MAX_NUM_SAMPLES:,} for one request; "
                                 "run a campaign (mattergen-lab campaign) to make more")
        if self.num_steps is not None and (not _is_int(self.num_steps) or self.num_steps < 1):
            raise ValueError(f"num_steps={self.num_steps!r} must be None or a positive integer")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an integer >= 0")
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            raise ValueError(f"guidance_scale={g!r} must be a number >= 0")
        object.__setattr__(self, "guidance_scale", float(g))
        conditions = dict(self.conditions or {})
        if "chemical_system" in conditions:
            system = ChemicalSystem.parse(conditions["chemical_system"]).require_generatable()
            conditions["chemical_system"] = str(system)
        object.__setattr__(self, "conditions", conditions)
        if self.elements is not None:
            object.__setattr__(self, "elements", ChemicalSystem.parse(self.elements).require_generatable())
            target = conditions.get("chemical_system")
            if target is not None:
                outside = set(ChemicalSystem.parse(target).symbols) - set(self.elements.symbols)
                if outside:
                    raise ValueError(
                        f"elements={str(self.elements)!r} conflicts with the target chemical_system={target!r}: "
                        f"{sorted(outside)} would be masked out; drop --elements or make it include the target"
                    )
        n = self.num_atoms
        if n is not None:
            if _is_int(n):
                if n < 1:
                    raise ValueError(f"num_atoms={n!r} must be a positive integer")
            elif isinstance(n, (list, tuple)) and len(n) == self.num_samples and all(_is_int(v) and v >= 1 for v in n):
                object.__setattr__(self, "num_atoms", tuple(n))
            else:
                raise ValueError(f"num_atoms={n!r} must be None, a positive int or one positive int per sample ({self.num_samples})")
        if self.device is not None:
            object.__setattr__(self, "device", validate_device(self.device))
        self._check_composition()

    def _check_composition(self) -> None:
        c, units = self.composition, self.formula_units
        if c is None:
            if units != 1:
                raise ValueError(f"formula_units={units!r} needs a composition (e.g. composition='Li2MnO3')")
            return
        if isinstance(c, FixedComposition) and units == 1:
            units = c.formula_units
        comp = FixedComposition.parse(c, units)
        object.__setattr__(self, "composition", comp)
        object.__setattr__(self, "formula_units", comp.formula_units)
        n = self.num_atoms
        if n is not None and any(v != comp.num_atoms for v in ((n,) if _is_int(n) else n)):
            raise ValueError(f"num_atoms={n!r} conflicts with composition={comp.formula!r} x {comp.formula_units} "
                             f"({comp.num_atoms} atoms); drop num_atoms")
        if self.mask is not None:
            raise ValueError(f"composition={comp.formula!r} fixes every atom; drop the element mask / chemical_system "
                             f"({str(self.mask)!r})")

    @property
    def mask(self) -> ChemicalSystem | None:
        """The element mask: ``elements``, else the ``chemical_system`` condition, else ``None`` (all elements)."""
        if self.elements is not None:
            return self.elements
        system = self.conditions.get("chemical_system")
        return ChemicalSystem.parse(system) if system else None

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def chunks(self) -> Iterator[tuple[int, tuple[int, ...], int]]:
        """``(j, sample indices, seed)`` of every chunk."""
        for j in range(self.num_chunks):
            yield j, tuple(range(j * self.batch_size, min((j + 1) * self.batch_size, self.num_samples))), chunk_seed(self.seed, j)
