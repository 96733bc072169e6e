"""In-memory crystal datasets and their loaders (spec §1.3, §1.6).

Three sources:

* :func:`load_csv`: any CSV with a ``cif`` column. Each CIF is parsed and standardised the way MatterGen's
  ``csv-to-dataset`` does (primitive cell, then Niggli). The parsed arrays are cached on disk, so only the
  first load is slow.
* :func:`load_mattergen_cache`: MatterGen's own preprocessed cache (``pos.npy``, ``cell.npy``, ...).
* :func:`load_mp20`: the MP-20 splits found in the data directory (see ``shared/data/README.md``).

Whatever the source, :meth:`CrystalDataset.get_batch` applies MatterGen's load-time transforms: fractional
coordinates wrapped to ``[0, 1)``, the lattice replaced by its symmetric polar factor, and a
``chemical_system`` string per crystal.

Length: one dataset class plus its three loaders (CSV with a parse cache, MatterGen's cache, MP-20), which share
the property-column logic; splitting them would scatter that logic.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import secrets
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
import torch

from mattergen_lab.constants import MAX_ATOMIC_NUM
from mattergen_lab.crystal import (
    CrystalBatch,
    polar_symmetric,
    standardize_structure,
    structure_from_cif,
)
from mattergen_lab.data.num_atoms import NumAtomsDistribution
from mattergen_lab.data.paths import default_cache_dir, resolve_data_dir

log = logging.getLogger(__name__)

#: The four properties of MatterGen's MP-20 cache.
MP20_PROPERTIES = ("dft_mag_density", "dft_band_gap", "dft_bulk_modulus", "formation_energy_per_atom")

#: Columns :func:`load_csv` reads as properties by default: MatterGen's ``PROPERTY_SOURCE_IDS`` except
#: ``chemical_system``, which is derived from the composition (spec §1.6).
DEFAULT_PROPERTY_COLUMNS = (
    "dft_mag_density",
    "dft_bulk_modulus",
    "dft_shear_modulus",
    "energy_above_hull",
    "formation_energy_per_atom",
    "space_group",
    "hhi_score",
    "ml_bulk_modulus",
    "dft_band_gap",
)

MP20_SPLITS = ("train", "val", "test", "all")

#: Bump when the on-disk cache layout or the parsing changes.
_CACHE_FORMAT = 1

#: Below this many rows, :func:`load_csv` parses in the calling process.
_MIN_ROWS_FOR_POOL = 500

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
        """A seeded random partition.

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
        return [self.subset(np.sort(order[bounds[j] : bounds[j + 1]])) for j in range(len(sizes))]

    def split_validation(self, fraction: float, seed: int = 0) -> tuple["CrystalDataset", "CrystalDataset"]:
        """Hold out ``round(fraction * len)`` crystals: ``(train, val) = split([len - k, k], seed)``."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"validation fraction {fraction!r} must be in [0, 1)")
        k = int(round(fraction * len(self)))
        train, val = self.split([len(self) - k, k], seed=seed)
        return train, val

    def num_atoms_distribution(self) -> NumAtomsDistribution:
        """The empirical distribution of atoms per cell."""
        return NumAtomsDistribution.from_counts(self.num_atoms)


# ====================================================================== CSV


def _property_column_map(
    columns: Sequence[str], property_columns: Sequence[str] | Mapping[str, str] | None, path: Path
) -> dict[str, str]:
    """``{csv column: property name}``; requested columns that the CSV lacks raise ``ValueError``."""
    if property_columns is None:
        return {c: c for c in DEFAULT_PROPERTY_COLUMNS if c in columns}
    if isinstance(property_columns, str):
        raise ValueError(f"property_columns must be a list or a mapping, not the string {property_columns!r}")
    mapping = dict(property_columns) if isinstance(property_columns, Mapping) else {c: c for c in property_columns}
    for column in mapping:
        if column not in columns:
            raise ValueError(f"property column {column!r} not found in {path} (columns: {list(columns)})")
    return mapping


def _property_values(series: pd.Series, column: str, path: Path) -> np.ndarray:
    """A property column as float64 with NaN for empty cells; Hermann–Mauguin symbols for ``space_group``."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = series.notna() & np.isnan(values)
    if bad.any() and column == "space_group":  # MatterGen stores symbols and converts to IT numbers
        from pymatgen.symmetry.groups import SpaceGroup

        for i in np.flatnonzero(bad.to_numpy()):
            try:
                values[i] = SpaceGroup(str(series.iloc[i])).int_number
            except Exception:  # noqa: BLE001 - reported below
                pass
        bad = series.notna() & np.isnan(values)
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"property column {column!r} of {path} has {int(bad.sum())} non-numeric values, "
            f"e.g. {series.iloc[first]!r} in row {first}"
        )
    return values


ParsedRow = tuple[np.ndarray, np.ndarray, np.ndarray]  # (n,) int64, (n, 3) float64, (3, 3) float64


def _parse_row(item: tuple[int, Any, str], standardize: bool) -> tuple[int, ParsedRow | str]:
    """Parse one CSV row ``(row, cif, name)``; returns ``(row, arrays)`` or ``(row, reason)``."""
    row, cif, name = item
    if not isinstance(cif, str) or not cif.strip():
        return row, "empty cif"
    try:
        structure = structure_from_cif(cif, name=name)
        if standardize:
            structure = standardize_structure(structure)
        if not structure.is_ordered:
            return row, f"disordered structure ({structure.composition.formula})"
        numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
    except ValueError as exc:  # structure_from_cif names the row and the cause
        return row, str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none is raised
        return row, f"{name}: {type(exc).__name__}: {exc}"
    if len(numbers) == 0:
        return row, "no atoms"
    if numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUM:
        return row, f"atomic numbers outside 1..{MAX_ATOMIC_NUM}: {sorted(set(numbers.tolist()))}"
    return row, (numbers, np.asarray(structure.frac_coords, dtype=np.float64), np.asarray(structure.lattice.matrix))


def _parse_rows(
    items: list[tuple[int, Any, str]], *, standardize: bool, progress: bool, num_workers: int | None
) -> list[tuple[int, ParsedRow | str]]:
    """Parse all rows, in a process pool when there are many (Linux only; falls back to serial)."""
    from tqdm import tqdm

    fn = functools.partial(_parse_row, standardize=standardize)
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8) if len(items) >= _MIN_ROWS_FOR_POOL else 1
    bar = functools.partial(tqdm, total=len(items), desc="parsing CIFs", unit="cif", disable=not progress)
    if num_workers > 1 and sys.platform.startswith("linux"):
        import multiprocessing

        try:
            with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("fork")) as pool:
                return list(bar(pool.map(fn, items, chunksize=32)))
        except (BrokenProcessPool, OSError) as exc:
            log.warning("parallel CIF parsing failed (%s); parsing in this process", exc)
    return [fn(item) for item in bar(items)]


def _csv_cache_key(path: Path, mapping: dict[str, str], standardize: bool) -> dict[str, Any]:
    import pymatgen.core

    stat = path.stat()
    return {
        "format": _CACHE_FORMAT,
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "property_columns": sorted(mapping.items()),
        "standardize": standardize,
        "pymatgen": getattr(pymatgen.core, "__version__", "?"),
    }


def _cache_files(cache_dir: Path, path: Path, key: dict[str, Any]) -> tuple[Path, Path]:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    stem = cache_dir / "csv" / f"{path.stem}-{digest}"
    return stem.with_suffix(".npz"), stem.with_suffix(".json")


def _read_cache(npz_file: Path, json_file: Path, key: dict[str, Any]) -> CrystalDataset | None:
    if not (npz_file.is_file() and json_file.is_file()):
        return None
    try:
        meta = json.loads(json_file.read_text())
        if meta.get("key") != json.loads(json.dumps(key)):
            return None
        with np.load(npz_file, allow_pickle=False) as z:
            if str(z["token"]) != meta["token"]:
                return None
            props = {name: z[f"prop_{i}"] for i, name in enumerate(meta["properties"])}
            return CrystalDataset(
                z["atom_types"], z["frac_coords"], z["lattice"], z["num_atoms"], meta["ids"], props,
                failures=[ParseFailure(**f) for f in meta["failures"]],
                source=meta["source"],
            )
    except Exception as exc:  # noqa: BLE001 - a broken cache is rebuilt, not fatal
        log.warning("ignoring unreadable cache %s: %s", json_file, exc)
        return None


def _write_cache(npz_file: Path, json_file: Path, key: dict[str, Any], ds: CrystalDataset) -> None:
    """Write npz then json (the json names the npz's random token, so a torn pair is never read)."""
    token = secrets.token_hex(8)
    arrays = {
        "atom_types": ds.atom_types,
        "frac_coords": ds.frac_coords,
        "lattice": ds.lattice,
        "num_atoms": ds.num_atoms,
        "token": np.array(token),
        **{f"prop_{i}": v for i, v in enumerate(ds.properties.values())},
    }
    meta = {
        "key": key,
        "token": token,
        "ids": ds.ids.tolist(),
        "properties": list(ds.properties),
        "failures": [asdict(f) for f in ds.failures],
        "source": ds.source,
    }
    try:
        npz_file.parent.mkdir(parents=True, exist_ok=True)
        for target, write in (
            (npz_file, lambda fh: np.savez(fh, **arrays)),
            (json_file, lambda fh: fh.write(json.dumps(meta).encode())),
        ):
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except OSError as exc:
        log.warning("could not write the parsed-CSV cache %s: %s", npz_file, exc)


def _report_failures(ds: CrystalDataset, path: Path, total: int) -> None:
    if ds.failures:
        first = ds.failures[0]
        log.warning(
            "%s: %d of %d rows could not be parsed and were skipped (see dataset.failures); "
            "first: row %d (%s): %s",
            path, len(ds.failures), total, first.row, first.material_id, first.reason,
        )


def load_csv(
    path: str | os.PathLike,
    *,
    property_columns: Sequence[str] | Mapping[str, str] | None = None,
    cache: bool = True,
    standardize: bool = True,
    progress: bool = False,
    num_workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> CrystalDataset:
    """Load a CSV with a ``cif`` column (and optionally ``material_id`` and property columns).

    Each CIF is parsed with :func:`~mattergen_lab.crystal.structure_from_cif` and, if ``standardize``,
    reduced with :func:`~mattergen_lab.crystal.standardize_structure` (primitive + Niggli), as MatterGen's
    ``csv-to-dataset`` does. Rows that cannot be parsed are skipped and recorded in ``dataset.failures``
    (with their 0-based data-row number, ``material_id`` and reason) and a warning is logged.

    Args:
        path: the CSV file.
        property_columns: columns to read as float properties: a list, or a mapping ``{column: property
            name}`` to rename them. ``None`` reads every column named like a MatterGen property
            (:data:`DEFAULT_PROPERTY_COLUMNS`). Empty cells become NaN.
        cache: reuse/write the parsed arrays under ``cache_dir``. The cache is keyed by the file's resolved
            path, size and mtime, the option values and the pymatgen version.
        standardize: apply primitive + Niggli reduction after parsing.
        progress: show a tqdm progress bar while parsing.
        num_workers: parser processes; ``None`` uses up to 8 for files of 500+ rows (Linux), 1 otherwise.
        cache_dir: defaults to :func:`~mattergen_lab.data.paths.default_cache_dir`.

    Raises:
        ValueError: no ``cif`` column, a requested property column is missing, or a property column holds
            non-numeric values.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {str(path)!r} does not exist")
    columns = list(pd.read_csv(path, nrows=0).columns)
    if "cif" not in columns:
        raise ValueError(f"{path} has no 'cif' column (columns: {columns})")
    mapping = _property_column_map(columns, property_columns, path)

    key = _csv_cache_key(path, mapping, standardize)
    npz_file, json_file = _cache_files(Path(cache_dir) if cache_dir else default_cache_dir(), path, key)
    if cache:
        cached = _read_cache(npz_file, json_file, key)
        if cached is not None:
            log.info("loaded %d crystals of %s from cache %s", len(cached), path, npz_file)
            _report_failures(cached, path, len(cached) + len(cached.failures))
            return cached

    df = pd.read_csv(path, dtype={"material_id": str} if "material_id" in columns else None)
    has_ids = "material_id" in columns
    ids = [None if pd.isna(m) else str(m) for m in df["material_id"]] if has_ids else [None] * len(df)
    props_all = {name: _property_values(df[col], col, path) for col, name in mapping.items()}
    items = [(i, cif, f"{path.name} row {i}" + (f" ({ids[i]})" if ids[i] else "")) for i, cif in enumerate(df["cif"])]
    results = _parse_rows(items, standardize=standardize, progress=progress, num_workers=num_workers)

    ok = [(row, r) for row, r in results if not isinstance(r, str)]
    failures = [ParseFailure(row, ids[row], r) for row, r in results if isinstance(r, str)]
    rows = np.array([row for row, _ in ok], dtype=np.int64)
    if ok:
        atom_types = np.concatenate([r[0] for _, r in ok])
        frac = np.concatenate([r[1] for _, r in ok])
        lattice = np.stack([r[2] for _, r in ok])
    else:
        atom_types, frac, lattice = np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3, 3))
    ds = CrystalDataset(
        atom_types,
        frac,
        lattice,
        np.array([len(r[0]) for _, r in ok], dtype=np.int64),
        [ids[row] or f"{path.stem}-{row}" for row in rows],
        {name: v[rows] for name, v in props_all.items()},
        failures=failures,
        source=str(path),
    )
    _report_failures(ds, path, len(df))
    if cache:
        _write_cache(npz_file, json_file, key, ds)
    return ds


# ====================================================================== MatterGen cache


def load_mattergen_cache(split_dir: str | os.PathLike) -> CrystalDataset:
    """Load one split of MatterGen's preprocessed cache (the output of ``csv-to-dataset``).

    Layout: ``pos.npy`` (N, 3), ``cell.npy`` (B, 3, 3), ``atomic_numbers.npy`` (N,), ``num_atoms.npy`` (B,),
    ``structure_id.npy`` (B,), and one ``{property}.json`` with ``{"values": [...]}`` per property
    (``null``/NaN = missing).

    Raises:
        ValueError: the directory lacks a required file. MP-20 ``train`` has no ``pos.npy``: its coordinates
            are not available; use ``mp_20/train_partial_structures.csv`` (:func:`load_mp20` ``"train"``).
    """
    split_dir = Path(split_dir).expanduser()
    if not split_dir.is_dir():
        raise FileNotFoundError(f"MatterGen cache directory {str(split_dir)!r} does not exist")
    if not (split_dir / "pos.npy").is_file() and (split_dir / "cell.npy").is_file():
        raise ValueError(
            f"{split_dir} has no pos.npy: the fractional coordinates are missing for this split. "
            "For MP-20 train, only part of the structures are available, in mp_20/train_partial_structures.csv "
            "(load_mp20('train') reads it)."
        )
    arrays = {}
    for name in ("pos", "cell", "atomic_numbers", "num_atoms", "structure_id"):
        file = split_dir / f"{name}.npy"
        if not file.is_file():
            raise ValueError(f"{split_dir} is not a MatterGen cache split: {file.name} is missing")
        arrays[name] = np.load(file, allow_pickle=False)
    b = len(arrays["num_atoms"])
    props: dict[str, np.ndarray] = {}
    for file in sorted(split_dir.glob("*.json")):
        payload = json.loads(file.read_text())
        if not isinstance(payload, dict) or "values" not in payload:
            continue
        values = np.array([np.nan if v is None else v for v in payload["values"]], dtype=np.float64)
        if len(values) != b:
            raise ValueError(f"{file} has {len(values)} values for {b} structures")
        props[file.stem] = values
    return CrystalDataset(
        arrays["atomic_numbers"],
        arrays["pos"],
        arrays["cell"],
        arrays["num_atoms"],
        arrays["structure_id"],
        props,
        source=str(split_dir),
    )


# ====================================================================== MP-20


def _load_mp20_train(mp20: Path, *, cache: bool, progress: bool, num_workers: int | None) -> CrystalDataset:
    """The train structures that have coordinates, with MatterGen's property values."""
    partial = load_csv(
        mp20 / "train_partial_structures.csv",
        property_columns={"formation_energy_per_atom": "formation_energy_per_atom", "band_gap": "dft_band_gap"},
        cache=cache,
        progress=progress,
        num_workers=num_workers,
    )
    table = pd.read_csv(mp20 / "train_no_positions.csv", usecols=["material_id", "num_atoms", *MP20_PROPERTIES])
    table = table.set_index("material_id")
    missing = [m for m in partial.ids if m not in table.index]
    if missing:
        raise ValueError(f"{len(missing)} train_partial_structures.csv IDs are not in train_no_positions.csv, e.g. {missing[0]}")
    rows = table.loc[list(partial.ids)]
    log.warning(
        "MP-20 train: only %d of %d structures have coordinates (train_partial_structures.csv); "
        "the others are not available, so 'train' is a partial split",
        len(partial), len(table),
    )
    n_diff = int((rows["num_atoms"].to_numpy() != partial.num_atoms).sum())
    if n_diff:
        log.warning("MP-20 train: %d parsed structures have a different atom count than MatterGen's cache", n_diff)
    # The CSV's own columns (band_gap: empty for the MPTS-52 rows; formation energy: from other MP versions
    # for 12 MPTS-52 rows) are superseded by MatterGen's cache values, which train_no_positions.csv holds.
    props: dict[str, np.ndarray] = {}
    for name in MP20_PROPERTIES:
        ours = rows[name].to_numpy(dtype=np.float64)
        csv_values = partial.properties.get(name)
        if csv_values is not None:
            differ = ~np.isnan(csv_values) & ~np.isclose(csv_values, ours, rtol=0, atol=1e-6, equal_nan=True)
            if differ.any():
                log.info("MP-20 train: %s differs from MatterGen's value for %d rows; using MatterGen's", name, int(differ.sum()))
        props[name] = ours
    return CrystalDataset(
        partial.atom_types, partial.frac_coords, partial.lattice, partial.num_atoms, partial.ids, props,
        failures=partial.failures, source=partial.source,
    )


def load_mp20(
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache: bool = True,
    progress: bool = False,
    num_workers: int | None = None,
) -> CrystalDataset:
    """An MP-20 split with MatterGen's four properties (:data:`MP20_PROPERTIES`).

    * ``"val"`` (9,047) and ``"test"`` (9,046): MatterGen's preprocessed cache, exact and fast.
    * ``"train"``: **only 6,041 of the 27,136 train structures**, the ones whose CIF is in
      ``mp_20/train_partial_structures.csv``; the coordinates of the others are not available. The CIFs are
      parsed and standardised (cached after the first load, which takes about 15 s on 2 cores). Property values
      come from MatterGen's cache (``train_no_positions.csv``) by ``material_id``.
    * ``"all"``: train + val + test, in that order.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        data_dir: folder holding ``mp_20/``; ``None`` = :func:`~mattergen_lab.data.paths.default_data_dir`.
        cache, progress, num_workers: passed to :func:`load_csv` for ``"train"``.
    """
    if split not in MP20_SPLITS:
        raise ValueError(f"unknown MP-20 split {split!r}; expected one of {list(MP20_SPLITS)}")
    mp20 = resolve_data_dir(data_dir) / "mp_20"
    if split == "all":
        parts = [load_mp20(s, data_dir=mp20.parent, cache=cache, progress=progress, num_workers=num_workers) for s in ("train", "val", "test")]
        return CrystalDataset.concat(parts)
    if split == "train":
        return _load_mp20_train(mp20, cache=cache, progress=progress, num_workers=num_workers)
    return load_mattergen_cache(mp20 / "mattergen_cache" / split)
