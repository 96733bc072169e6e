"""Reading the structures to evaluate: :func:`read_structures` (a folder, a zip of CIFs, or a structure file).

Every structure read passes :func:`~mattergen_lab.structure_io.check_structure_input` with :data:`_INPUT_CHECK`
(everything but the volume per atom), which :func:`~mattergen_lab.evaluation.evaluate.evaluate_structures`
applies to structures given directly too.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from mattergen_lab.limits import MAX_STRUCTURE_FILE_BYTES
from mattergen_lab.structure_io import check_cif_cell, check_cif_occupancies, check_cif_size, check_structure_input

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

STRUCTURE_SUFFIXES = (".cif", ".extxyz", ".xyz", ".vasp", ".poscar")
#: What :func:`~mattergen_lab.structure_io.check_structure_input` checks of evaluated structures: everything but the
#: volume per atom. Generated crystals are evaluated whatever their density (the ``plausible_density`` column
#: flags it): a lightly trained model's samples reach 1e6 Å³/atom (the bundled chemical-system adapter at 4
#: steps: 1 in 32), and refusing them would stop a whole run or campaign task and change the metrics'
#: denominators. The relaxer reports a cell denser than its floor (status "exploded") before its force field
#: builds a graph.
_INPUT_CHECK = {"volume_per_atom": None}


def _structure_from_text(text: str, fmt: str, label: str) -> Structure:
    """One structure from CIF or POSCAR text; ``ValueError`` starting with ``label`` for anything
    :func:`~mattergen_lab.structure_io.check_structure_input` (or, for a CIF, ``check_cif_cell``) refuses."""
    from pymatgen.core import Structure

    check_cif_size(len(text), name=label)  # POSCARs too: a few kB for any cell this program handles
    if fmt == "cif":
        check_cif_cell(text, name=label)
        check_cif_occupancies(text, name=label)
    try:
        structure = Structure.from_str(text, fmt=fmt)
    except Exception as exc:  # noqa: BLE001 - turned into a clear message or a recorded failure
        raise ValueError(f"{label}: not a readable {fmt.upper()} ({type(exc).__name__}: {exc})") from None
    check_structure_input(structure, name=label, **_INPUT_CHECK)
    return structure


def _read_ase_file(path: Path) -> list[tuple[str, Structure]]:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    size = path.stat().st_size
    if size > MAX_STRUCTURE_FILE_BYTES:
        raise ValueError(f"{path}: {size:,} bytes is more than MAX_STRUCTURE_FILE_BYTES={MAX_STRUCTURE_FILE_BYTES:,} "
                         "(mattergen_lab.limits); split it into several files")
    try:
        frames = read(str(path), index=":")
    except Exception as exc:  # noqa: BLE001 - turned into a clear message or a recorded failure
        raise ValueError(f"{path}: not a readable structure file ({type(exc).__name__}: {exc})") from None
    out = []
    for i, atoms in enumerate(frames):
        label = f"{path}, frame {i}"
        if len(atoms) == 0:
            raise ValueError(f"{label}: the structure has no atoms")
        try:
            structure = AseAtomsAdaptor.get_structure(atoms)
        except Exception as exc:  # noqa: BLE001 - e.g. a frame without a cell
            raise ValueError(f"{label}: not a periodic structure ({type(exc).__name__}: {exc})") from None
        check_structure_input(structure, name=label, **_INPUT_CHECK)
        out.append((f"{path.stem}-{i}", structure))
    return out


def _natural_key(path: Path) -> list:
    """Sort ``gen_2`` before ``gen_10`` (generation order, which uniqueness depends on)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def read_structures(path: str | os.PathLike) -> list[tuple[str, Structure]]:
    """``(id, structure)`` pairs from a folder (CIF, extxyz, POSCAR), a zip of CIFs, or an extxyz/CIF file.

    Ids are file stems (``gen_0.cif`` → ``gen_0``) or ``<stem>-<frame>`` for multi-frame files. Raises
    ``ValueError`` naming the offending file (and frame) for an unreadable file, for a structure
    :func:`~mattergen_lab.structure_io.check_structure_input` refuses (no atoms, NaN or infinite coordinates or lattice,
    a zero volume, a dummy element; any volume per atom is read), for bad CIF cell parameters, and for an input
    with no structures.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"structures {str(path)!r} do not exist")
    items: list[tuple[str, Structure]] = []
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in STRUCTURE_SUFFIXES), key=_natural_key)
        for p in files:
            items.extend(_read_file(p))
    elif path.suffix.lower() == ".zip":
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"{path} is not a readable zip archive ({exc}); expected a .zip of CIFs") from None
        with zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                name = info.filename
                if name.lower().endswith(".cif") and not name.startswith("__MACOSX"):
                    check_cif_size(info.file_size, name=f"{path}:{name}")  # before it is decompressed
                    text = zf.read(name).decode("utf-8", errors="replace")
                    items.append((Path(name).stem, _structure_from_text(text, "cif", f"{path}:{name}")))
    elif path.suffix.lower() in STRUCTURE_SUFFIXES:
        items.extend(_read_file(path))
    else:
        raise ValueError(f"{path}: expected a folder, a .zip of CIFs, or a {'/'.join(STRUCTURE_SUFFIXES)} file")
    if not items:
        raise ValueError(f"{path}: no structures found (looked for {', '.join(STRUCTURE_SUFFIXES)} files)")
    ids = [i for i, _ in items]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate structure ids {duplicates[:5]} (two files with the same stem?)")
    return items


def _read_file(path: Path) -> list[tuple[str, Structure]]:
    suffix = path.suffix.lower()
    if suffix in (".cif", ".vasp", ".poscar"):
        check_cif_size(path.stat().st_size, name=str(path))  # before it is read
    if suffix == ".cif":
        return [(path.stem, _structure_from_text(path.read_text(errors="replace"), "cif", str(path)))]
    if suffix in (".vasp", ".poscar"):
        return [(path.stem, _structure_from_text(path.read_text(errors="replace"), "poscar", str(path)))]
    return _read_ase_file(path)
