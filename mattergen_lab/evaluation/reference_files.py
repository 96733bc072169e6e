"""Reference-hull files and services: pymatgen-entry JSON, composition/energy CSV, MatterGen's LMDB reference
and the Materials Project API (the formats of :func:`~mattergen_lab.evaluation.reference.load_reference`), and the
MP elemental reference entries that turn formation energies into total energies.

Each reader returns entries in the MP2020-compatible total-energy convention of
:class:`~mattergen_lab.evaluation.reference.ReferenceHull`, or raises ``ValueError`` naming the file and the bad
item (line, key or column).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mattergen_lab.caches import registered
from mattergen_lab.data.paths import resolve_data_dir

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

log = logging.getLogger(__name__)

MP_ELEMENTAL_REFERENCES = "reference/2023-02-07-mp-elemental-reference-entries.json.gz"


# ====================================================================== elemental references, formation energies


@registered
@lru_cache(maxsize=4)
def read_elemental_references(path: str) -> dict[str, Any]:
    """``{symbol: ComputedEntry}`` of an MP elemental-reference file (``.json.gz``), read once per path."""
    from pymatgen.entries.computed_entries import ComputedEntry

    with gzip.open(path, "rt") as fh:
        raw = json.load(fh)
    return {el: ComputedEntry.from_dict(d) for el, d in raw.items()}


def elemental_references(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The MP elemental reference entries (lowest-energy MP entry per element), ``{symbol: ComputedEntry}``."""
    path = resolve_data_dir(data_dir) / MP_ELEMENTAL_REFERENCES
    if not path.is_file():
        raise FileNotFoundError(f"MP elemental references not found at {path}; set --data-dir or MATTERGEN_LAB_DATA")
    return read_elemental_references(str(path))


def pd_entry(composition: Composition, energy: float, name: str) -> PDEntry:
    """A pymatgen ``PDEntry`` with a total energy (eV) and a name."""
    from pymatgen.analysis.phase_diagram import PDEntry

    return PDEntry(composition, float(energy), name=name)


def entries_from_formation_energies(
    rows: Iterable[tuple[str, str, float]], refs: dict[str, Any], source: str
) -> list[PDEntry]:
    """``(id, composition, formation energy per atom)`` rows → total-energy entries, plus the elements."""
    from pymatgen.core import Composition

    entries = [pd_entry(Composition({el: 1}), ref.energy_per_atom, ref.entry_id or f"{el}-ref") for el, ref in refs.items()]
    for line, (entry_id, comp_text, e_form) in enumerate(rows, start=2):
        try:
            comp = Composition(comp_text)
            missing = [el.symbol for el in comp.elements if el.symbol not in refs]
        except Exception as exc:  # noqa: BLE001 - turned into a clear message or a recorded failure
            raise ValueError(f"{source}, line {line} ({entry_id}): bad composition {comp_text!r}: {exc}") from None
        if missing:
            log.warning("%s, line %d (%s): no elemental reference for %s; skipped", source, line, entry_id, missing)
            continue
        energy = float(e_form) * comp.num_atoms + sum(n * refs[el.symbol].energy_per_atom for el, n in comp.items())
        entries.append(pd_entry(comp, energy, str(entry_id)))
    return entries


# ====================================================================== files and services


def read_entries_json(path: Path) -> list[Any]:
    from monty.json import MontyDecoder

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        raw = json.load(fh)
    items = list(raw.values()) if isinstance(raw, dict) and "@class" not in raw else raw
    if isinstance(items, dict):
        items = [items]
    entries = []
    for i, item in enumerate(items):
        try:
            entry = MontyDecoder().process_decoded(item)
            entry.composition, entry.energy  # noqa: B018 - must be entry-like
        except Exception as exc:  # noqa: BLE001 - turned into a clear message or a recorded failure
            raise ValueError(f"{path}: item {i} is not a pymatgen entry ({type(exc).__name__}: {exc})") from None
        entries.append(entry)
    return entries


def read_entries_csv(path: Path, data_dir: str | os.PathLike | None) -> list[Any]:
    import pandas as pd
    from pymatgen.core import Composition

    table = pd.read_csv(path)
    comp_col = next((c for c in ("composition", "formula") if c in table.columns), None)
    if comp_col is None:
        raise ValueError(f"{path}: needs a 'composition' or 'formula' column; found {list(table.columns)}")
    ids = table["material_id"] if "material_id" in table.columns else [f"{path.stem}-{i}" for i in range(len(table))]
    if "formation_energy_per_atom" in table.columns and "energy" not in table.columns:
        refs = elemental_references(data_dir)
        return entries_from_formation_energies(zip(ids, table[comp_col], table["formation_energy_per_atom"]), refs, str(path))
    energy_col = next((c for c in ("energy", "energy_per_atom") if c in table.columns), None)
    if energy_col is None:
        raise ValueError(
            f"{path}: needs an 'energy' (total, eV), 'energy_per_atom' or 'formation_energy_per_atom' column; "
            f"found {list(table.columns)}"
        )
    entries = []
    for line, (entry_id, comp_text, value) in enumerate(zip(ids, table[comp_col], table[energy_col]), start=2):
        try:
            comp = Composition(str(comp_text))
        except Exception as exc:  # noqa: BLE001 - turned into a clear message or a recorded failure
            raise ValueError(f"{path}, line {line}: bad composition {comp_text!r}: {exc}") from None
        energy = float(value) * (comp.num_atoms if energy_col == "energy_per_atom" else 1.0)
        entries.append(pd_entry(comp, energy, str(entry_id)))
    return entries


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles only plain data (dict, list, str, numbers): any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a reference file (plain data only)")


def _plain_loads(data: bytes) -> Any:
    return _PlainDataUnpickler(io.BytesIO(data)).load()


def read_lmdb_reference(path: str | os.PathLike) -> list[Any]:
    """Entries of a MatterGen reference file (gzipped LMDB, e.g. ``reference_MP2020correction.gz``).

    The layout (MatterGen's ``LMDBGZSerializer``): keys ``chemical_systems``, ``{chemsys}.reduced_formulas``,
    ``{chemsys}.{formula}.length`` and ``{chemsys}.{formula}.{i}``, each value a pickled plain ``dict`` (an
    entry's ``as_dict()``). Values are unpickled as plain data only.
    """
    try:
        import lmdb
    except ImportError as exc:
        raise ImportError(f"reading {path} needs the lmdb package: pip install lmdb") from exc
    from monty.json import MontyDecoder

    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix="mattergen-lab-ref-"))
    try:
        db_path = tmp / path.name.removesuffix(".gz")
        with gzip.open(path, "rb") as src, open(db_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        env = lmdb.open(str(db_path), subdir=False, readonly=True, lock=False)
        entries = []
        try:
            with env.begin() as txn:

                def get(key: str) -> Any:
                    value = txn.get(key.encode("ascii"))
                    if value is None:
                        raise ValueError(f"{path}: key {key!r} is missing; not a MatterGen reference file")
                    return _plain_loads(value)

                for chemsys in get("chemical_systems"):
                    for formula in get(f"{chemsys}.reduced_formulas"):
                        for i in range(int(get(f"{chemsys}.{formula}.length"))):
                            entries.append(MontyDecoder().process_decoded(get(f"{chemsys}.{formula}.{i}")))
        finally:
            env.close()
        return entries
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mp_api_fetch(api_key: str) -> Callable[[list[str]], list[Any]]:
    def fetch(elements: list[str]) -> list[Any]:
        from mp_api.client import MPRester

        with MPRester(api_key) as mpr:  # MP entries carry MP2020-corrected total energies
            return list(mpr.get_entries_in_chemsys(elements))

    return fetch
