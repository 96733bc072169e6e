"""The sampler's input normalisers: atom counts, per-crystal element masks and conditioning values.

Each validates its argument once, at the start of a run, and names the bad value in its ``ValueError``.
:class:`ChunkInputs` holds them for a whole run and hands each chunk its arguments of
:meth:`~mattergen_lab.sampling.sampler.PredictorCorrectorSampler.iter_steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mattergen_lab.constants import MAX_ATOMIC_NUM, NUM_CLASSES
from mattergen_lab.data.num_atoms import NumAtomsDistribution

if TYPE_CHECKING:  # pragma: no cover
    from mattergen_lab.sampling.composition import FixedComposition
    from mattergen_lab.sampling.request import SamplingRequest
    from mattergen_lab.sampling.start import StartFrom
    from mattergen_lab.symmetry.templates import SymmetrySpec

#: Elements allowed per sample: ``None`` (all of ``SELECTED_ATOMIC_NUMBERS``), one list of elements for
#: every crystal, a list with one entry (list or None) per crystal, or a bool tensor ``(101,)`` / ``(B, 101)``.
AllowedElements = Any

#: The ``space_group`` condition that conditions each crystal of a symmetric run on its own template's group
#: (guidance and constraint together; :meth:`ChunkInputs.for_chunk` puts in the groups).
TEMPLATE_GROUP = "template"


@dataclass(frozen=True)
class ChunkInputs:
    """What every chunk of a run hands :meth:`iter_steps`, validated once for the run (``ValueError`` names a bad one).

    Built from a :class:`~mattergen_lab.sampling.request.SamplingRequest` (:meth:`from_request`, what
    ``iter_chunks`` does) or from the sampler-level arguments of ``PredictorCorrectorSampler.sample`` (:meth:`build`).
    A new per-chunk argument of ``iter_steps`` is one field here and one entry in :meth:`for_chunk`.
    """

    draw: Callable[[list[int], torch.Generator], torch.Tensor]  # (sample indices, CPU generator) -> (k,) atom counts
    allowed: AllowedElements = None  # one mask for every crystal...
    allowed_per_sample: list[Any] | None = None  # ...or one per crystal
    properties: Mapping[str, Any] | None = None
    composition_of: Callable[[int], FixedComposition | None] | None = None  # CSP: crystal i's fixed atoms
    start: StartFrom | None = None  # a request with a parent: the one crystal every chunk starts from
    symmetry: SymmetrySpec | None = None  # the symmetric mode: templates drawn per chunk
    counts_given: bool = False  # the request fixed the atom counts (the templates must hold them)

    @classmethod
    def build(cls, num_samples: int, *, num_atoms: Any = None, allowed_elements: AllowedElements = None,
              properties: Mapping[str, Any] | None = None,
              composition_of: Callable[[int], FixedComposition | None] | None = None) -> ChunkInputs:
        """``num_atoms``: see :func:`num_atoms_drawer` (not used with ``composition_of``, whose cells give the counts);
        ``allowed_elements``: see :data:`AllowedElements`; ``properties``: conditioning values."""
        if composition_of is not None:
            def draw(idx: list[int], g: torch.Generator) -> torch.Tensor:
                return torch.tensor([composition_of(i).num_atoms for i in idx], dtype=torch.long)  # type: ignore[union-attr]
        else:
            draw = num_atoms_drawer(num_atoms, num_samples)
        return cls(draw, allowed_elements, per_sample_allowed(allowed_elements, num_samples),
                   dict(properties) if properties else None, composition_of)

    @classmethod
    def from_request(cls, request: SamplingRequest, num_atoms: Any = None) -> ChunkInputs:
        """Everything from ``request``; ``num_atoms`` is the atom-count table when the request sets none (a checkpoint's)."""
        mask = request.mask
        inputs = cls.build(
            request.num_samples, num_atoms=request.num_atoms if request.num_atoms is not None else num_atoms,
            allowed_elements=list(mask.atomic_numbers) if mask is not None else None,
            properties=request.conditions or None, composition_of=request.composition_of if request.fixes_atoms else None,
        )
        if request.symmetry is not None:
            inputs = dataclasses.replace(inputs, symmetry=request.symmetry, counts_given=request.num_atoms is not None)
        if request.parent is not None:
            inputs = dataclasses.replace(inputs, start=request.variation.start(keep_own=request.mask is None))
        return inputs

    def for_chunk(self, indices: Sequence[int], seed: int) -> dict[str, Any]:
        """Keyword arguments of ``iter_steps`` for the chunk holding ``indices`` (its atom counts drawn from ``seed``
        on the CPU), all but the generator."""
        g = torch.Generator().manual_seed(seed)
        templates = None
        if self.symmetry is not None and self.composition_of is not None:  # CSP on templates each composition fits
            return self._fitted_chunk(indices, g)
        if self.symmetry is not None and not self.counts_given:  # the drawn templates give the counts
            templates = self._templates(indices, g, None)
            counts = torch.tensor([t.primitive_atoms for t in templates], dtype=torch.long)
        else:
            counts = self.draw(list(indices), g)
            if self.symmetry is not None:
                templates = self._templates(indices, g, counts.tolist())
        allowed = self.allowed if self.allowed_per_sample is None else [self.allowed_per_sample[i] for i in indices]
        types = None
        if self.composition_of is not None:
            types = torch.tensor([z for i in indices for z in self.composition_of(i).atomic_numbers], dtype=torch.long)  # type: ignore[union-attr]
        out = {"num_atoms": counts, "allowed_elements": allowed, "properties": self._properties(templates), "atom_types": types}
        if templates is not None:
            out.update(symmetry=templates, symmetry_start=self.symmetry.effective_start,  # type: ignore[union-attr]
                       symmetry_assign=self.symmetry.assign, symmetry_settle=self.symmetry.settle)  # type: ignore[union-attr]
        if self.start is not None:  # a parent: the same crystal for every sample of the chunk
            out["start"] = self.start.repeat(len(indices))
        return out

    def _fitted_chunk(self, indices: Sequence[int], g: torch.Generator) -> dict[str, Any]:
        from mattergen_lab.symmetry.fit import draw_fit

        templates, types = [], []
        for i in indices:
            c = self.composition_of(i)  # type: ignore[misc]
            t, z = draw_fit(self.symmetry, c.cell_amounts, g)  # type: ignore[arg-type, union-attr]
            templates.append(t)
            types += z
        return {"num_atoms": torch.tensor([t.primitive_atoms for t in templates], dtype=torch.long), "allowed_elements": None,
                "properties": self._properties(templates), "atom_types": torch.tensor(types, dtype=torch.long),
                "symmetry": templates, "symmetry_start": self.symmetry.effective_start,  # type: ignore[union-attr]
                "symmetry_assign": self.symmetry.assign, "symmetry_settle": self.symmetry.settle}  # type: ignore[union-attr]

    def _properties(self, templates: list | None) -> Mapping[str, Any] | None:
        """The conditions, with ``space_group="template"`` replaced by each crystal's template group (one per crystal)."""
        if not self.properties or self.properties.get("space_group") != TEMPLATE_GROUP:
            return self.properties
        if templates is None:
            raise ValueError(f"space_group={TEMPLATE_GROUP!r} needs the symmetric mode: these crystals have no templates")
        return {**self.properties, "space_group": [int(t.space_group) for t in templates]}

    def _templates(self, indices: Sequence[int], g: torch.Generator, counts: list[int] | None) -> list:
        spec = self.symmetry
        if spec is not None and len(spec.templates) > 1:  # one given per crystal of the run
            return [spec.templates[i] for i in indices]
        return spec.draw(len(indices), g, num_atoms=counts)  # type: ignore[union-attr]


def num_atoms_drawer(num_atoms: Any, num_samples: int) -> Callable[[list[int], torch.Generator], torch.Tensor]:
    """Validate ``num_atoms`` once; return ``(indices, cpu generator) -> (k,) counts``."""
    if num_atoms is None:
        num_atoms = NumAtomsDistribution.from_table("ALEX_MP_20")
    if is_pos_int(num_atoms):
        return lambda idx, g: torch.full((len(idx),), int(num_atoms), dtype=torch.long)
    if hasattr(num_atoms, "sample"):
        def draw(idx: list[int], g: torch.Generator) -> torch.Tensor:
            counts = torch.as_tensor(num_atoms.sample(len(idx), generator=g), dtype=torch.long).cpu()
            if counts.shape != (len(idx),) or bool((counts < 1).any()):
                raise ValueError(
                    f"num_atoms sampler returned {counts.tolist()!r}; expected {len(idx)} positive ints"
                )
            return counts
        return draw
    if isinstance(num_atoms, Sequence) and not isinstance(num_atoms, str):
        values = list(num_atoms)
        if len(values) != num_samples or not all(is_pos_int(v) for v in values):
            raise ValueError(
                f"num_atoms must be one positive int per sample ({num_samples}); "
                f"got {len(values)} entries {values[:8]!r}"
            )
        return lambda idx, g: torch.tensor([values[i] for i in idx], dtype=torch.long)
    raise ValueError(
        f"num_atoms={num_atoms!r} must be None, a positive int, a list of ints or have .sample(k, generator=)"
    )

def per_sample_allowed(allowed_elements: AllowedElements, num_samples: int) -> list[Any] | None:
    """A per-sample list of element lists, or None when ``allowed_elements`` applies to all crystals."""
    if allowed_elements is None or isinstance(allowed_elements, torch.Tensor):
        if isinstance(allowed_elements, torch.Tensor) and allowed_elements.dim() == 2:
            raise ValueError("a (B, 101) allowed_elements tensor is only accepted by iter_steps; pass lists")
        return None
    entries = list(allowed_elements)
    if not is_per_crystal(entries):
        return None
    if len(entries) != num_samples:
        raise ValueError(f"allowed_elements has {len(entries)} per-crystal entries for num_samples={num_samples}")
    return entries


def allowed_tensor(allowed_elements: AllowedElements, b: int, device: torch.device) -> torch.Tensor:
    """``(101,)`` or ``(B, 101)`` bool mask of samplable classes."""
    from mattergen_lab.sampling.steps import allowed_classes

    if isinstance(allowed_elements, torch.Tensor):
        if allowed_elements.dtype != torch.bool or allowed_elements.shape not in ((NUM_CLASSES,), (b, NUM_CLASSES)):
            raise ValueError(
                f"allowed_elements tensor must be bool of shape ({NUM_CLASSES},) or ({b}, {NUM_CLASSES}), "
                f"got {allowed_elements.dtype} {tuple(allowed_elements.shape)}"
            )
        return allowed_elements.to(device)
    if allowed_elements is None:
        return allowed_classes(None, device=device)
    entries = list(allowed_elements)
    if not is_per_crystal(entries):
        return allowed_classes(entries, device=device)
    if len(entries) != b:
        raise ValueError(f"allowed_elements has {len(entries)} per-crystal entries for {b} crystals")
    return torch.stack([allowed_classes(e, device=device) for e in entries])  # (B, 101)


def fixed_types_tensor(atom_types: Any, num_atoms: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CSP: the given atomic numbers as a ``(N,)`` long tensor, N = ``num_atoms.sum()``; ``ValueError`` otherwise."""
    z = torch.as_tensor(atom_types).reshape(-1)
    n = int(num_atoms.sum())
    if z.dtype.is_floating_point or z.dtype == torch.bool or len(z) != n:
        raise ValueError(f"atom_types must be {n} integer atomic numbers (one per atom of num_atoms={num_atoms.tolist()}), "
                         f"got {z.dtype} of length {len(z)}")
    if bool(((z < 1) | (z > MAX_ATOMIC_NUM)).any()):
        raise ValueError(f"atom_types must be atomic numbers in 1-{MAX_ATOMIC_NUM}; got {sorted(set(z.tolist()))}")
    return z.to(device=device, dtype=torch.long)


# ---------------------------------------------------------------------------------------- helpers


def is_per_crystal(entries: list[Any]) -> bool:
    """True when ``entries`` is one element list (or None) per crystal rather than one list of elements."""
    return bool(entries) and all(e is None or (isinstance(e, Sequence) and not isinstance(e, str)) for e in entries)


def is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def broadcast_properties(
    properties: Mapping[str, Any] | None, b: int, *, dtype: torch.dtype, device: torch.device
) -> dict[str, Any] | None:
    if not properties:
        return None
    out: dict[str, Any] = {}
    for key, value in properties.items():
        if isinstance(value, str):
            out[key] = [value] * b
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = torch.full((b,), float(value), dtype=dtype, device=device)
        elif isinstance(value, torch.Tensor) and value.shape == (b,):
            out[key] = value.to(device=device, dtype=dtype)
        elif isinstance(value, (list, tuple)) and len(value) == b:  # already one value per crystal
            out[key] = list(value) if any(isinstance(v, str) or v is None for v in value) else torch.tensor(value, dtype=dtype, device=device)
        else:
            raise ValueError(f"property {key}={value!r} must be a number, a string, or one value per crystal ({b})")
    return out


def request_templates(request: SamplingRequest, num_atoms: Any = None) -> list:
    """The Wyckoff template of every crystal of a symmetric ``request``, as its chunks draw them (the same CPU
    generators, so crystal ``i`` of the run was sampled on ``request_templates(request)[i]``); ``num_atoms``: the
    checkpoint's atom-count table when the request fixes counts from it. ``ValueError`` without ``symmetry``."""
    if request.symmetry is None:
        raise ValueError("the request has no symmetry (symmetric mode off): its crystals have no templates")
    inputs = ChunkInputs.from_request(request, num_atoms)
    out: list = []
    for _, indices, seed in request.chunks():
        out += inputs.for_chunk(indices, seed)["symmetry"]
    return out
