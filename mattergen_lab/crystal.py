"""``CrystalBatch``: a batch of periodic crystals as flat tensors.

Conventions (stated once, used everywhere):

* ``lattice`` has shape ``(B, 3, 3)`` and its **rows are the lattice vectors**, so a Cartesian position
  is ``cart = frac @ lattice`` (as pymatgen ``Lattice.matrix``).
* ``frac_coords`` are fractional coordinates wrapped to ``[0, 1)``.
* ``atom_types`` are atomic numbers Z (H = 1); ``MASK_Z = 101`` is the diffusion mask token.

Fields are declared per atom (:data:`ATOM_FIELDS`, first dim ``N`` = total atoms) or per crystal
(:data:`CRYSTAL_FIELDS` and every entry of ``properties``, first dim ``B``). Slicing, concatenation and
``.to()`` follow from those declarations. Instances are immutable: use :meth:`replace`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from mattergen_lab.constants import MASK_Z, MAX_TRAINING_ATOMS

if TYPE_CHECKING:  # pragma: no cover
    from ase import Atoms
    from pymatgen.core import Structure


ATOM_FIELDS = ("atom_types", "frac_coords")
CRYSTAL_FIELDS = ("lattice", "num_atoms")

#: A per-crystal property: a tensor with first dim B (NaN = missing), or a list of B strings/None.
PropertyValue = Union[torch.Tensor, list]


def polar_symmetric(lattice: torch.Tensor) -> torch.Tensor:
    """Symmetric polar factor ``(L Lᵀ)^{1/2}`` of each lattice (spec §1.3).

    With the SVD ``L = W S Vᵀ`` this returns ``W S Wᵀ``. ``L = P U`` with ``U = W Vᵀ`` a rotation (for
    right-handed cells), so ``frac @ P`` is the same crystal as ``frac @ L`` up to a global rotation.

    Args:
        lattice: ``(..., 3, 3)``, rows are lattice vectors.
    """
    w, s, _ = torch.linalg.svd(lattice)  # w: (..., 3, 3), s: (..., 3)
    return (w * s.unsqueeze(-2)) @ w.transpose(-1, -2)


def lattice_to_params(lattice: torch.Tensor) -> torch.Tensor:
    """Lattice matrices ``(B, 3, 3)`` to ``(B, 6)`` = (a, b, c, α, β, γ) with angles in degrees."""
    lengths = lattice.norm(dim=-1)  # (B, 3)
    a, b, c = lattice[:, 0], lattice[:, 1], lattice[:, 2]

    def angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
        return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))

    return torch.cat([lengths, torch.stack([angle(b, c), angle(a, c), angle(a, b)], -1)], -1)


@dataclass(frozen=True)
class CrystalBatch:
    """A batch of ``B`` crystals with ``N`` atoms in total.

    Attributes:
        atom_types: ``(N,)`` int64 atomic numbers; 101 is the mask token.
        frac_coords: ``(N, 3)`` fractional coordinates in ``[0, 1)``.
        lattice: ``(B, 3, 3)``; rows are lattice vectors (Å).
        num_atoms: ``(B,)`` int64 atoms per crystal; atoms of crystal ``i`` are contiguous.
        properties: per-crystal labels, e.g. ``{"dft_band_gap": (B,) float tensor with NaN = missing,
            "chemical_system": ["Li-O", ...]}``.
    """

    atom_types: torch.Tensor
    frac_coords: torch.Tensor
    lattice: torch.Tensor
    num_atoms: torch.Tensor
    properties: dict[str, PropertyValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, b = self.atom_types.shape[0], self.lattice.shape[0]
        if self.frac_coords.shape != (n, 3):
            raise ValueError(f"frac_coords has shape {tuple(self.frac_coords.shape)}, expected ({n}, 3)")
        if self.lattice.shape[1:] != (3, 3):
            raise ValueError(f"lattice has shape {tuple(self.lattice.shape)}, expected (B, 3, 3)")
        if self.num_atoms.shape != (b,):
            raise ValueError(f"num_atoms has shape {tuple(self.num_atoms.shape)}, expected ({b},)")
        if int(self.num_atoms.sum()) != n:
            raise ValueError(f"num_atoms sums to {int(self.num_atoms.sum())} but there are {n} atoms")
        for key, value in self.properties.items():
            if len(value) != b:
                raise ValueError(f"property {key!r} has {len(value)} entries for {b} crystals")

    # ------------------------------------------------------------------ derived views
    @property
    def num_crystals(self) -> int:
        return int(self.lattice.shape[0])

    def __len__(self) -> int:
        return self.num_crystals

    @property
    def device(self) -> torch.device:
        return self.frac_coords.device

    @property
    def batch_idx(self) -> torch.Tensor:
        """``(N,)`` index of the crystal each atom belongs to."""
        return torch.repeat_interleave(
            torch.arange(self.num_crystals, device=self.num_atoms.device), self.num_atoms
        )

    @property
    def ptr(self) -> torch.Tensor:
        """``(B + 1,)`` offsets: atoms of crystal ``i`` are ``ptr[i]:ptr[i+1]``."""
        return torch.cat([self.num_atoms.new_zeros(1), torch.cumsum(self.num_atoms, 0)])

    @property
    def cart_coords(self) -> torch.Tensor:
        """``(N, 3)`` Cartesian positions ``frac @ L``."""
        return torch.einsum("ni,nij->nj", self.frac_coords, self.lattice[self.batch_idx])

    # ------------------------------------------------------------------ functional updates
    def replace(self, **changes: Any) -> "CrystalBatch":
        return dataclasses.replace(self, **changes)

    def to(self, *args: Any, **kwargs: Any) -> "CrystalBatch":
        """Like ``Tensor.to``; a dtype applies to floating fields only."""
        def move(t: torch.Tensor) -> torch.Tensor:
            if t.is_floating_point():
                return t.to(*args, **kwargs)
            dev = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
            return t.to(dev) if dev is not None else t

        props = {k: move(v) if isinstance(v, torch.Tensor) else list(v) for k, v in self.properties.items()}
        fields = {name: move(getattr(self, name)) for name in ATOM_FIELDS + CRYSTAL_FIELDS}
        return CrystalBatch(**fields, properties=props)

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> "CrystalBatch":
        """Select crystals: an int, a slice, a list of ints, or a bool/int tensor."""
        b = self.num_crystals
        if isinstance(index, int):
            if not -b <= index < b:
                raise IndexError(f"crystal index {index} out of range for a batch of {b}")
            idx = torch.tensor([index % b])
        elif isinstance(index, slice):
            idx = torch.arange(b)[index]
        else:
            idx = torch.as_tensor(index)
            if idx.dtype == torch.bool:
                idx = idx.nonzero().flatten()
        idx = idx.to(torch.long).cpu()
        ptr = self.ptr.cpu()
        atom_idx = torch.cat(
            [torch.arange(int(ptr[i]), int(ptr[i + 1])) for i in idx.tolist()] or [torch.zeros(0, dtype=torch.long)]
        ).to(self.device)
        dev_idx = idx.to(self.device)
        props: dict[str, PropertyValue] = {}
        for key, value in self.properties.items():
            if isinstance(value, torch.Tensor):
                props[key] = value[idx.to(value.device)]
            else:
                props[key] = [value[i] for i in idx.tolist()]
        fields = {name: getattr(self, name)[atom_idx] for name in ATOM_FIELDS}
        fields.update({name: getattr(self, name)[dev_idx] for name in CRYSTAL_FIELDS})
        return CrystalBatch(**fields, properties=props)

    @staticmethod
    def cat(batches: Sequence["CrystalBatch"]) -> "CrystalBatch":
        """Concatenate batches; properties missing from some batches are filled with NaN / None."""
        if not batches:
            raise ValueError("cannot concatenate an empty list of batches")
        keys: list[str] = []
        for bt in batches:
            keys += [k for k in bt.properties if k not in keys]
        props: dict[str, PropertyValue] = {}
        for key in keys:
            values = [bt.properties.get(key) for bt in batches]
            if any(isinstance(v, list) for v in values):
                props[key] = sum((list(v) if v is not None else [None] * len(bt) for v, bt in zip(values, batches)), [])
            else:
                ref = next(v for v in values if v is not None)
                props[key] = torch.cat(
                    [
                        v if v is not None else torch.full((len(bt), *ref.shape[1:]), float("nan"), dtype=ref.dtype, device=ref.device)
                        for v, bt in zip(values, batches)
                    ]
                )
        fields = {name: torch.cat([getattr(bt, name) for bt in batches]) for name in ATOM_FIELDS + CRYSTAL_FIELDS}
        return CrystalBatch(**fields, properties=props)

    def split(self) -> list["CrystalBatch"]:
        """One single-crystal batch per crystal."""
        return [self[i] for i in range(self.num_crystals)]

    def symmetrize_lattice(self) -> "CrystalBatch":
        """Replace each lattice by its symmetric polar factor; fractional coordinates are unchanged."""
        return self.replace(lattice=polar_symmetric(self.lattice))

    # ------------------------------------------------------------------ pymatgen / ASE
    @classmethod
    def from_structures(
        cls,
        structures: Iterable["Structure"],
        *,
        properties: dict[str, PropertyValue] | None = None,
        dtype: torch.dtype = torch.get_default_dtype(),
    ) -> "CrystalBatch":
        """Build a batch from ordered pymatgen structures (no reduction; see :func:`standardize_structure`)."""
        structures = list(structures)
        if not structures:
            raise ValueError("no structures given")
        for i, s in enumerate(structures):
            if not s.is_ordered:
                raise ValueError(f"structure {i} ({s.composition.formula}) is disordered; only ordered crystals are supported")
        numbers = np.concatenate([[site.specie.Z for site in s] for s in structures]).astype(np.int64)
        frac = np.concatenate([s.frac_coords for s in structures]) % 1.0
        lattice = np.stack([s.lattice.matrix for s in structures])
        return cls(
            atom_types=torch.as_tensor(numbers),
            frac_coords=torch.as_tensor(frac, dtype=dtype),
            lattice=torch.as_tensor(lattice, dtype=dtype),
            num_atoms=torch.as_tensor([len(s) for s in structures], dtype=torch.long),
            properties=dict(properties or {}),
        )

    def to_structures(self, *, standard_orientation: bool = False) -> list["Structure"]:
        """Convert to pymatgen structures.

        Args:
            standard_orientation: rebuild each lattice from (a, b, c, α, β, γ) with
                ``Lattice.from_parameters`` (pymatgen's standard orientation), as the official sampler
                does. The crystal is the same; only its global orientation changes.
        """
        from pymatgen.core import Lattice, Structure

        if bool((self.atom_types == MASK_Z).any()) or bool((self.atom_types < 1).any()):
            raise ValueError("batch still holds masked or invalid atom types; it cannot become structures")
        lattice = self.lattice.detach().double().cpu()
        params = lattice_to_params(lattice).numpy()
        frac = self.frac_coords.detach().double().cpu().numpy()
        numbers = self.atom_types.cpu().numpy()
        ptr = self.ptr.cpu().numpy()
        out = []
        for i in range(self.num_crystals):
            lat = Lattice.from_parameters(*params[i]) if standard_orientation else Lattice(lattice[i].numpy())
            out.append(Structure(lat, numbers[ptr[i] : ptr[i + 1]].tolist(), frac[ptr[i] : ptr[i + 1]]))
        return out

    @classmethod
    def from_atoms(cls, atoms_list: Iterable["Atoms"], **kwargs: Any) -> "CrystalBatch":
        from pymatgen.io.ase import AseAtomsAdaptor

        return cls.from_structures([AseAtomsAdaptor.get_structure(a) for a in atoms_list], **kwargs)

    def to_atoms(self) -> list["Atoms"]:
        from ase import Atoms

        lattice = self.lattice.detach().double().cpu().numpy()
        frac = self.frac_coords.detach().double().cpu().numpy()
        numbers = self.atom_types.cpu().numpy()
        ptr = self.ptr.cpu().numpy()
        return [
            Atoms(numbers=numbers[ptr[i] : ptr[i + 1]], scaled_positions=frac[ptr[i] : ptr[i + 1]], cell=lattice[i], pbc=True)
            for i in range(self.num_crystals)
        ]


def warn_if_too_large(num_atoms: torch.Tensor | Sequence[int], limit: int = MAX_TRAINING_ATOMS) -> None:
    """Warn (never fail) when crystals are larger than what the model was trained on."""
    largest = int(max(torch.as_tensor(num_atoms).tolist() or [0]))
    if largest > limit:
        warnings.warn(
            f"num_atoms={largest} exceeds the {limit} atoms per cell the model was trained on; "
            "samples may be poor",
            stacklevel=2,
        )
