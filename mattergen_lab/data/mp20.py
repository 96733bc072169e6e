"""MatterGen's preprocessed cache (:func:`load_mattergen_cache`) and the MP-20 splits (:func:`load_mp20`).

MP-20 ``val``/``test`` come from MatterGen's cache; ``train`` from ``mp_20/train_partial_structures.csv``
(through :func:`~mattergen_lab.data.csv_loader.load_csv`) with MatterGen's property values (see
``shared/data/README.md`` for the data directory).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mattergen_lab.data.container import CrystalDataset
from mattergen_lab.data.csv_loader import load_csv
from mattergen_lab.data.paths import resolve_data_dir

log = logging.getLogger("mattergen_lab.data.dataset")  # the logger these messages had before the module was split

#: The four properties of MatterGen's MP-20 cache.
MP20_PROPERTIES = ("dft_mag_density", "dft_band_gap", "dft_bulk_modulus", "formation_energy_per_atom")

MP20_SPLITS = ("train", "val", "test", "all")


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
