"""Loading any CSV with a ``cif`` column into a :class:`~mattergen_lab.data.container.CrystalDataset`.

:func:`load_csv` parses and standardises each CIF the way MatterGen's ``csv-to-dataset`` does (primitive cell,
then Niggli), in a process pool for large files, reads property columns (:data:`DEFAULT_PROPERTY_COLUMNS`),
records unparsable rows as :class:`~mattergen_lab.data.container.ParseFailure`, and caches the parsed arrays
on disk, so only the first load is slow.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mattergen_lab.constants import MAX_ATOMIC_NUM
from mattergen_lab.structure_io import standardize_structure, structure_from_cif
from mattergen_lab.data.container import CrystalDataset, ParseFailure
from mattergen_lab.data.paths import default_cache_dir

log = logging.getLogger("mattergen_lab.data.dataset")  # the logger these messages had before the module was split

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

#: Bump when the on-disk cache layout or the parsing changes.
_CACHE_FORMAT = 1

#: Below this many rows, :func:`load_csv` parses in the calling process.
_MIN_ROWS_FOR_POOL = 500


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

    Each CIF is parsed with :func:`~mattergen_lab.structure_io.structure_from_cif` and, if ``standardize``,
    reduced with :func:`~mattergen_lab.structure_io.standardize_structure` (primitive + Niggli), as MatterGen's
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
