"""The in-memory crystal container, :class:`CrystalDataset`: flat arrays, batches, subsets and seeded splits.

Also :class:`ParseFailure` (a source row that could not become a crystal, kept in ``dataset.failures``) and
:func:`chemical_system`. :meth:`CrystalDataset.get_batch` applies MatterGen's load-time transforms: fractional
coordinates wrapped to ``[0, 1)``, the lattice replaced by its symmetric polar factor, and a
``chemical_system`` string per crystal. The loaders that fill it are in :mod:`mattergen_lab.data.csv_loader`
and :mod:`mattergen_lab.data.mp20`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from mattergen_lab.constants import MAX_ATOMIC_NUM
from mattergen_lab.crystal import CrystalBatch, polar_symmetric
from mattergen_lab.data.num_atoms import NumAtomsDistribution

Indices = Union[Sequence[int], np.ndarray, torch.Tensor, range, slice]


@dataclass(frozen=True)
class ParseFailure:
    """A CSV row that could not become a crystal.

    Attributes:
        row: 0-based index of the data row (the header is not counted; ``pandas.read_csv(path).iloc[row]``).
        material_id: the row's ``material_id`` if the CSV has that column, else ``None``.
        reason: what went wrong.
    """

    row: int
    material_id: str | None
    reason: str


@functools.lru_cache(maxsize=1)
def _element_symbols() -> tuple[str, ...]:
    """``symbols[Z]`` for Z = 0..MAX_ATOMIC_NUM (index 0 unused)."""
    from pymatgen.core.periodic_table import Element

    return ("",) + tuple(Element.from_Z(z).symbol for z in range(1, MAX_ATOMIC_NUM + 1))


def chemical_system(atomic_numbers: Sequence[int] | np.ndarray) -> str:
    """Sorted element symbols joined by ``-``, as pymatgen ``Composition.chemical_system`` (e.g. ``"Li-O"``)."""
    symbols = _element_symbols()
    return "-".join(sorted({symbols[int(z)] for z in np.unique(atomic_numbers)}))


class CrystalDataset:
    """Crystals held as flat numpy arrays; atoms of crystal ``i`` are ``ptr[i]:ptr[i+1]``.

    Attributes:
        atom_types: ``(N,)`` int64 atomic numbers.
        frac_coords: ``(N, 3)`` float64 fractional coordinates, as stored (wrapped in :meth:`get_batch`).
        lattice: ``(B, 3, 3)`` float64; rows are lattice vectors, as stored (made symmetric in :meth:`get_batch`).
        num_atoms: ``(B,)`` int64.
        ids: ``(B,)`` str, e.g. Materials Project IDs.
        properties: ``{name: (B,) float64}`` with NaN for missing values.
        failures: rows of the source that could not be parsed (see :func:`load_csv`).
        source: a description of where the crystals came from.
    """

    def __init__(
        self,
        atom_types: np.ndarray,
        frac_coords: np.ndarray,
        lattice: np.ndarray,
        num_atoms: np.ndarray,
        ids: Sequence[str] | np.ndarray | None = None,
        properties: Mapping[str, np.ndarray] | None = None,
        *,
        failures: Sequence[ParseFailure] = (),
        source: str = "",
    ) -> None:
        self.atom_types = np.asarray(atom_types, dtype=np.int64).reshape(-1)  # (N,)
        self.frac_coords = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)  # (N, 3)
        self.lattice = np.asarray(lattice, dtype=np.float64).reshape(-1, 3, 3)  # (B, 3, 3)
        self.num_atoms = np.asarray(num_atoms, dtype=np.int64).reshape(-1)  # (B,)
        b, n = len(self.num_atoms), len(self.atom_types)
        if ids is None:
            ids = [f"crystal-{i}" for i in range(b)]
        self.ids = np.asarray([str(x) for x in ids], dtype=str) if b else np.zeros(0, dtype="<U1")  # (B,)
        self.properties = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in (properties or {}).items()}
        self.failures = list(failures)
        self.source = source
        if len(self.frac_coords) != n:
            raise ValueError(f"frac_coords has {len(self.frac_coords)} rows for {n} atoms")
        if len(self.lattice) != b:
            raise ValueError(f"lattice has {len(self.lattice)} entries for {b} crystals")
        if int(self.num_atoms.sum()) != n:
            raise ValueError(f"num_atoms sums to {int(self.num_atoms.sum())} but there are {n} atoms")
        if b and int(self.num_atoms.min()) < 1:
            raise ValueError("every crystal needs at least one atom")
        if len(self.ids) != b:
            raise ValueError(f"{len(self.ids)} ids for {b} crystals")
        for key, value in self.properties.items():
            if len(value) != b:
                raise ValueError(f"property {key!r} has {len(value)} values for {b} crystals")
        self.ptr = np.concatenate([[0], np.cumsum(self.num_atoms)]).astype(np.int64)  # (B + 1,)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.num_atoms)

    def __repr__(self) -> str:
        return (
            f"CrystalDataset({len(self)} crystals, {len(self.atom_types)} atoms, "
            f"properties={sorted(self.properties)}, failures={len(self.failures)}, source={self.source!r})"
        )

    @property
    def property_names(self) -> list[str]:
        return list(self.properties)

    def _as_index_array(self, indices: Indices) -> np.ndarray:
        """Any index spec to a ``(K,)`` int64 array with negatives resolved; out of range raises."""
        if isinstance(indices, slice):
            return np.arange(len(self), dtype=np.int64)[indices]
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean mask has shape {idx.shape}, expected ({len(self)},)")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            bad = idx[(idx < -len(self)) | (idx >= len(self))][0]
            raise IndexError(f"crystal index {int(bad)} out of range for a dataset of {len(self)}")
        return idx % max(len(self), 1)

    def _atom_index(self, idx: np.ndarray) -> np.ndarray:
        """``(sum num_atoms[idx],)`` indices of the atoms of crystals ``idx``, crystal by crystal."""
        counts = self.num_atoms[idx]  # (K,)
        starts = self.ptr[idx]  # (K,)
        offsets = np.cumsum(counts) - counts  # (K,) where each crystal starts in the output
        total = int(counts.sum())
        return np.arange(total, dtype=np.int64) - np.repeat(offsets, counts) + np.repeat(starts, counts)

    def chemical_systems(self, indices: Indices | None = None) -> list[str]:
        """``chemical_system`` strings of the given crystals (all when ``None``)."""
        idx = np.arange(len(self)) if indices is None else self._as_index_array(indices)
        return [chemical_system(self.atom_types[self.ptr[i] : self.ptr[i + 1]]) for i in idx]

    # ------------------------------------------------------------------ batches
    def get_batch(self, indices: Indices, dtype: torch.dtype = torch.float32) -> CrystalBatch:
        """The crystals ``indices`` as a :class:`CrystalBatch`, with MatterGen's load-time transforms.

        * ``frac_coords`` wrapped to ``[0, 1)`` (after the cast to ``dtype``);
        * ``lattice`` replaced by its symmetric polar factor (computed in float64, then cast);
        * ``properties``: every float property as a ``(K,)`` tensor of ``dtype`` (NaN = missing), plus
          ``chemical_system`` as a list of strings.
        """
        idx = self._as_index_array(indices)
        if idx.size == 0:
            raise ValueError("get_batch needs at least one crystal index")
        atom_idx = self._atom_index(idx)
        frac = torch.as_tensor(self.frac_coords[atom_idx]).to(dtype) % 1.0  # (N, 3)
        frac = torch.where(frac >= 1.0, frac - 1.0, frac)  # x % 1.0 can round up to 1.0
        lattice = polar_symmetric(torch.as_tensor(self.lattice[idx])).to(dtype)  # (K, 3, 3)
        props: dict[str, torch.Tensor | list] = {
            k: torch.as_tensor(v[idx]).to(dtype) for k, v in self.properties.items()
        }
        props["chemical_system"] = self.chemical_systems(idx)
        return CrystalBatch(
            atom_types=torch.as_tensor(self.atom_types[atom_idx]),
            frac_coords=frac,
            lattice=lattice,
            num_atoms=torch.as_tensor(self.num_atoms[idx]),
            properties=props,
        )

    def __getitem__(self, index: int) -> CrystalBatch:
        """One crystal as a batch of size 1."""
        return self.get_batch([index])

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[CrystalBatch]:
        """One pass over the dataset in batches of ``batch_size`` crystals.

        With ``shuffle`` the order is ``torch.randperm(len(self), generator=generator)``. The last, smaller
        batch is dropped when ``drop_last``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            chunk = order[start : start + batch_size]
            if drop_last and len(chunk) < batch_size:
                break
            yield self.get_batch(chunk, dtype=dtype)

    # ------------------------------------------------------------------ subsets
    def subset(self, indices: Indices) -> "CrystalDataset":
        """A new dataset with the crystals ``indices`` in that order (failures and source are kept)."""
        idx = self._as_index_array(indices)
        atom_idx = self._atom_index(idx)
        return CrystalDataset(
            self.atom_types[atom_idx],
            self.frac_coords[atom_idx],
            self.lattice[idx],
            self.num_atoms[idx],
            self.ids[idx],
            {k: v[idx] for k, v in self.properties.items()},
            failures=self.failures,
            source=self.source,
        )

    @classmethod
    def concat(cls, datasets: Sequence["CrystalDataset"]) -> "CrystalDataset":
        """Concatenate datasets; a property missing from some of them is NaN there."""
        if not datasets:
            raise ValueError("cannot concatenate an empty list of datasets")
        names: list[str] = []
        for ds in datasets:
            names += [k for k in ds.properties if k not in names]
        props = {
            k: np.concatenate([ds.properties.get(k, np.full(len(ds), np.nan)) for ds in datasets]) for k in names
        }
        return cls(
            np.concatenate([ds.atom_types for ds in datasets]),
            np.concatenate([ds.frac_coords for ds in datasets]),
            np.concatenate([ds.lattice for ds in datasets]),
            np.concatenate([ds.num_atoms for ds in datasets]),
            np.concatenate([ds.ids for ds in datasets]),
            props,
            failures=[f for ds in datasets for f in ds.failures],
            source=" + ".join(ds.source for ds in datasets),
        )

    def split(self, parts: Sequence[float] | Sequence[int], seed: int = 0) -> list["CrystalDataset"]:
        """A seeded random partition: the datasets of :meth:`split_indices`."""
        return [self.subset(idx) for idx in self.split_indices(parts, seed)]

    def split_indices(self, parts: Sequence[float] | Sequence[int], seed: int = 0) -> list[np.ndarray]:
        """The crystal indices of a seeded random partition (for :meth:`split`, and datasets built on this one).

        Args:
            parts: either fractions (floats, positive, summing to 1) or sizes (ints summing to ``len(self)``).
                Fractions become sizes ``floor(f * len)``; the crystals left over go one each to the first
                parts.
            seed: the permutation is ``torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))``;
                part ``j`` takes the next ``size_j`` entries of it, sorted, so each part keeps dataset order.
        """
        n = len(self)
        if not parts:
            raise ValueError("split needs at least one part")
        if all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in parts):
            sizes = [int(p) for p in parts]
            if any(s < 0 for s in sizes) or sum(sizes) != n:
                raise ValueError(f"split sizes {sizes} must be >= 0 and sum to the dataset size {n}")
        else:
            fracs = [float(p) for p in parts]
            if any(f < 0 for f in fracs) or not math.isclose(sum(fracs), 1.0, abs_tol=1e-6):
                raise ValueError(f"split fractions {fracs} must be >= 0 and sum to 1")
            sizes = [int(math.floor(f * n)) for f in fracs]
            for j in range(n - sum(sizes)):
                sizes[j % len(sizes)] += 1
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
        bounds = np.cumsum([0] + sizes)
        return [np.sort(order[bounds[j] : bounds[j + 1]]) for j in range(len(sizes))]

    def split_validation(self, fraction: float, seed: int = 0) -> tuple["CrystalDataset", "CrystalDataset"]:
        """Hold out ``round(fraction * len)`` crystals: ``(train, val) = split([len - k, k], seed)``."""
        train, val = self.validation_indices(fraction, seed)
        return self.subset(train), self.subset(val)

    def validation_indices(self, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The crystal indices ``(train, val)`` of :meth:`split_validation`."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"validation fraction {fraction!r} must be in [0, 1)")
        k = int(round(fraction * len(self)))
        train, val = self.split_indices([len(self) - k, k], seed=seed)
        return train, val

    def num_atoms_distribution(self) -> NumAtomsDistribution:
        """The empirical distribution of atoms per cell."""
        return NumAtomsDistribution.from_counts(self.num_atoms)
