"""Structures at the pipeline's boundary: the input check every structure passes, and CIF in and out.

* :func:`check_structure_input` refuses what no part of the pipeline can handle (no atoms, NaN or infinite values,
  a degenerate cell, a volume per atom outside :data:`INPUT_VOLUME_PER_ATOM`), naming the structure and the value;
* :func:`structure_from_cif` / :func:`check_cif_cell` read a CIF with its cell checked first;
  :func:`structure_to_cif` writes the Niggli-reduced cell so pymatgen and ASE read it back;
* :func:`standardize_structure` is MatterGen's preprocessing (primitive cell, then Niggli).

Batches of crystals as tensors are :class:`~mattergen_lab.crystal.CrystalBatch`.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

log = logging.getLogger(__name__)


def standardize_structure(structure: "Structure") -> "Structure":
    """MatterGen's preprocessing (spec §1.3): primitive cell, then Niggli reduction.

    The symmetric polar lattice is applied to the batch afterwards (:meth:`CrystalBatch.symmetrize_lattice`).
    """
    return structure.get_primitive_structure().get_reduced_structure()


#: Volume per atom (Å³/atom) outside which :func:`check_structure_input` refuses a structure. Nothing physical
#: comes near either end (diamond, the densest solid at ambient pressure, has 5.7 Å³/atom; MP-20 spans 5.8-202;
#: 1e5 Å³/atom is a 46 Å cube per atom); a cell beyond them is a unit or parsing error, or a collapsed or
#: exploded sample. The plausibility flag for MP-20's range
#: (:func:`mattergen_lab.evaluation.validity.density_plausibility`) is much tighter and separate: it refuses nothing.
INPUT_VOLUME_PER_ATOM = (0.5, 1e5)


def check_structure_input(
    structure: Any, *, name: str = "structure", volume_per_atom: tuple[float, float] | None = INPUT_VOLUME_PER_ATOM
) -> None:
    """Refuse a structure no part of the pipeline can handle; call it wherever structures come in.

    NaN or infinite values make spglib crash the interpreter (SIGSEGV) and pymatgen's neighbour search and the
    force fields return nonsense or hang, so they must be stopped before any of those sees them. Raises
    ``ValueError`` starting with ``name`` and naming the bad value for:

    * no atoms;
    * a non-finite lattice entry, fractional or Cartesian coordinate;
    * a lattice volume that is zero or not finite (linearly dependent lattice vectors);
    * a site that is not a chemical element (pymatgen's dummy species, e.g. ``Xx`` or ``X0+`` from a CIF);
    * a volume per atom outside ``volume_per_atom`` (Å³/atom, default :data:`INPUT_VOLUME_PER_ATOM`).

    A left-handed lattice (negative determinant) is accepted: it is the same crystal. Works on an ordered or
    disordered pymatgen ``Structure``; anything else is refused. ``volume_per_atom=None`` skips the range, for
    code that must handle generated crystals of any density: the evaluation readers and
    :func:`~mattergen_lab.evaluation.evaluate.evaluate_structures` (a lightly trained model's samples reach 1e6
    Å³/atom, an untrained one's 1e10), the export and the space-group oracle (spglib analyses them without harm).
    :func:`structure_from_cif`, which reads datasets, applies it.
    """
    if not (hasattr(structure, "lattice") and hasattr(structure, "frac_coords") and hasattr(structure, "sites")):
        raise ValueError(f"{name}: expected a pymatgen Structure, got {type(structure).__name__}")
    n = len(structure)
    if n == 0:
        raise ValueError(f"{name}: the structure has no atoms")
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name}: non-finite lattice {matrix.tolist()} (Å, rows are the lattice vectors)")
    for kind, coords in (("fractional", structure.frac_coords), ("Cartesian", structure.cart_coords)):
        coords = np.asarray(coords, dtype=float).reshape(n, 3)
        bad = np.flatnonzero(~np.all(np.isfinite(coords), axis=1))
        if len(bad):
            i = int(bad[0])
            more = f" ({len(bad)} sites in all)" if len(bad) > 1 else ""
            raise ValueError(f"{name}: site {i} ({structure[i].species_string}) has non-finite {kind} coordinates "
                             f"{coords[i].tolist()}{more}")
    volume = abs(float(np.linalg.det(matrix)))
    if not (math.isfinite(volume) and volume > 0):
        raise ValueError(f"{name}: the lattice volume is {volume:.3g} Å³ (lattice {matrix.tolist()})")
    from pymatgen.core.periodic_table import DummySpecies, Element

    for i, site in enumerate(structure):
        for sp, occupancy in site.species.items():
            if isinstance(sp, DummySpecies) or not isinstance(getattr(sp, "element", sp), Element):
                symbol = getattr(sp, "symbol", str(sp))
                raise ValueError(f"{name}: site {i} is {symbol!r} ({sp}), not a chemical element")  # noqa: TRY004
            if not (math.isfinite(occupancy) and occupancy > 0):
                raise ValueError(f"{name}: site {i} ({sp}) has occupancy {occupancy!r}; it must be in (0, 1]")
        total = sum(site.species.values())
        if total > 1 + OCCUPANCY_TOLERANCE:
            raise ValueError(f"{name}: the occupancies of site {i} ({site.species_string}) sum to {total:g} > 1")
    if volume_per_atom is None:
        return
    lo, hi = volume_per_atom
    per_atom = volume / n
    if not lo <= per_atom <= hi:
        raise ValueError(f"{name}: {per_atom:.3g} Å³/atom is outside the physical range {lo:g}-{hi:g} Å³/atom "
                         f"(volume {volume:.4g} Å³, {n} atom{'s' if n != 1 else ''})")


#: Slack on "occupancies sum to at most 1" (rounded values such as 0.333 x 3 + 0.002).
OCCUPANCY_TOLERANCE = 1e-3


_CIF_CELL_ITEM = re.compile(r"^[ \t]*(_cell[._](?:length_[abc]|angle_(?:alpha|beta|gamma)))[ \t]+(\S+)", re.IGNORECASE | re.MULTILINE)


def check_cif_cell(cif: str, *, name: str = "<cif>") -> None:
    """Refuse a CIF whose cell lengths are not positive finite numbers or whose angles are outside (0°, 180°).

    These are checked in the text because parsing hides them: pymatgen turns a negative length into a positive one
    (the primitive cell) or a left-handed lattice, and a NaN into a structure full of NaN (or into "no
    structures"). ``ValueError`` starts with ``name``. Unreadable values (``?``, words) are left to the parser.
    """
    for match in _CIF_CELL_ITEM.finditer(cif):
        tag, raw = match.group(1), match.group(2)
        text = re.sub(r"\(\d+\)$", "", raw.strip("'\""))  # 5.431(2): a standard uncertainty
        try:
            value = float(text)
        except ValueError:
            continue
        if "length" in tag.lower():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: {tag} = {raw} is not a positive cell length (Å)")
        elif not (math.isfinite(value) and 0 < value < 180):
            raise ValueError(f"{name}: {tag} = {raw} is not a cell angle between 0 and 180 degrees")


def check_cif_size(nbytes: int, *, name: str = "<cif>") -> None:
    """Refuse a CIF larger than :data:`~mattergen_lab.limits.MAX_CIF_BYTES` before it is read or parsed."""
    from mattergen_lab.limits import MAX_CIF_BYTES

    if nbytes > MAX_CIF_BYTES:
        raise ValueError(f"{name}: {nbytes:,} bytes is more than MAX_CIF_BYTES={MAX_CIF_BYTES:,} for one CIF "
                         "(mattergen_lab.limits; a 200-atom cell takes ~20 kB): not parsed")


def _number(text: str) -> float | None:
    """``0.5(1)`` -> 0.5; ``nan`` -> nan; ``?`` (unknown: pymatgen reads 1) -> None; anything else -> nan."""
    text = text.strip().strip("'\"")
    if text == "?":
        return None
    try:
        return float(re.sub(r"\(\d+\)$", "", text))
    except ValueError:
        return math.nan


def check_cif_occupancies(blocks: Any, *, name: str = "<cif>") -> None:
    """Refuse atom sites whose occupancy is not in (0, 1], or whose occupancies at one position sum above 1, naming
    the file and the site. pymatgen drops a site with occupancy 0, a negative one, NaN or ``.`` without a word (a
    NaCl file was scored as elemental Cl), and refuses a sum above 1 as "no structures".

    ``blocks``: a CIF's text, or the data blocks of pymatgen's ``CifFile`` (``parser._cif.data.values()``).
    """
    if isinstance(blocks, str):
        from pymatgen.io.cif import CifFile

        try:
            blocks = CifFile.from_str(blocks).data.values()
        except Exception:  # noqa: BLE001 - unreadable text is the parser's to name
            return
    for block in blocks:
        data = getattr(block, "data", block)
        occupancies = data.get("_atom_site_occupancy")
        if not occupancies:
            continue
        n = len(occupancies)
        labels = data.get("_atom_site_label") or data.get("_atom_site_type_symbol") or [str(i) for i in range(n)]
        coords = list(zip(*(data.get(f"_atom_site_fract_{a}") or ["?"] * n for a in "xyz")))
        totals: dict[tuple, list] = {}
        for i, raw in enumerate(occupancies):
            label = labels[i] if i < len(labels) else str(i)
            value = _number(raw)
            if value is not None and not (math.isfinite(value) and 0 < value <= 1 + OCCUPANCY_TOLERANCE):
                raise ValueError(f"CIF {name}: atom site {label!r} has occupancy {raw!r}; it must be a number in (0, 1] "
                                 "(a site that is not there should not be listed)")
            if i < len(coords):
                position = tuple(round(v, 4) if (v := _number(c)) is not None and math.isfinite(v) else c for c in coords[i])
                entry = totals.setdefault(position, [0.0, []])
                entry[0] += 1.0 if value is None else value
                entry[1].append(label)
        for total, names in totals.values():
            if total > 1 + OCCUPANCY_TOLERANCE:
                raise ValueError(f"CIF {name}: the occupancies of atom sites {names} at one position sum to {total:g} > 1")


def structure_from_cif(cif: str, *, name: str = "<cif>", primitive: bool = True) -> "Structure":
    """Parse one CIF string into a (by default primitive, Niggli-reduced) structure.

    A bad CIF raises ``ValueError`` starting with ``CIF {name}:`` (``could not parse CIF {name}`` when pymatgen
    cannot read it): bad cell parameters (:func:`check_cif_cell`) and structures :func:`check_structure_input`
    refuses are stopped before the primitive cell is searched.
    """
    from pymatgen.io.cif import CifParser

    check_cif_size(len(cif), name=f"CIF {name}")
    check_cif_cell(cif, name=f"CIF {name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = None
        try:
            parser = CifParser.from_str(cif)
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for bad CIFs
            raise ValueError(f"could not parse CIF {name}: {type(exc).__name__}: {exc}") from exc
        blocks = getattr(getattr(parser, "_cif", None), "data", None)
        check_cif_occupancies(blocks.values() if blocks is not None else cif, name=name)
        try:
            structures = parser.parse_structures(primitive=False)
        except Exception as exc:  # pymatgen raises many types for bad CIFs
            why = "; ".join(w.replace("\n", " ") for w in getattr(parser, "warnings", [])[:2])
            raise ValueError(f"could not parse CIF {name}: {type(exc).__name__}: {exc}" + (f" ({why})" if why else "")) from exc
        if not structures:
            raise ValueError(f"could not parse CIF {name}: no structure found")
        structure = structures[0]
        check_structure_input(structure, name=f"CIF {name}")
        if primitive:  # what parse_structures(primitive=True) does, once the structure is known to be sane
            try:
                if parser.feature_flags.get("magcif"):
                    structure = structure.get_primitive_structure(use_site_props=True)
                else:
                    structure = structure.get_primitive_structure().get_reduced_structure()
            except Exception as exc:  # turned into a clear message
                raise ValueError(f"CIF {name}: no primitive cell found ({type(exc).__name__}: {exc})") from exc
    return structure


#: pymatgen's CIF reader refuses a cell whose (100), (010) or (001) planes are closer than this (Å).
PYMATGEN_CIF_MIN_THICKNESS = 0.01


def structure_to_cif(structure: "Structure", *, symprec: float | None = None, angle_tolerance: float = 5.0) -> str:
    """CIF text of ``structure``'s Niggli-reduced cell: the one CIF writer, so every CIF reads back.

    pymatgen's CIF reader refuses a cell whose lattice planes are less than 0.01 Å apart, and a nearly flat cell
    written with 8 decimals can come back as impossible parameters; generated cells can be that flat (one of 16
    samples of the bundled model: 94 Å long, 0.017 Å thick) while their Niggli-reduced cell, the same crystal, is
    not. A cell that stays too thin even when reduced (a lattice vector shorter than ~0.01 Å) is written, with a
    warning in the log.

    With ``symprec`` the CIF holds spglib's refined cell (sites moved onto their symmetric positions, conventional
    setting) written with its symmetry. Given a cell that is symmetric only within ``symprec``, pymatgen's
    ``CifWriter`` can list representatives whose orbits under the found operations do not match the grouped sites
    (a generated CaAl2, Cm at 0.1 Å, read back as Ca6Al16), so the text is read back and ``ValueError`` raised if its
    composition differs from the structure's.
    """
    from pymatgen.io.cif import CifWriter

    reduced = structure
    for algo in ("niggli", "LLL"):
        try:
            reduced = structure.get_reduced_structure(reduction_algo=algo)
            break
        except Exception as exc:  # noqa: BLE001 - an odd cell is still written, reduced or not
            log.debug("%s reduction of %s failed: %s", algo, structure.composition.reduced_formula, exc)
    lat = reduced.lattice
    thickness = min(lat.d_hkl(hkl) for hkl in ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    if not thickness >= PYMATGEN_CIF_MIN_THICKNESS:
        log.warning("the cell of %s is %.3g Å thin even when reduced: pymatgen will not read its CIF back",
                    structure.composition.reduced_formula, thickness)
    if symprec is None:
        return str(CifWriter(reduced))
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    refined = SpacegroupAnalyzer(reduced, symprec=symprec, angle_tolerance=angle_tolerance).get_refined_structure()
    text = str(CifWriter(refined, symprec=symprec, angle_tolerance=angle_tolerance))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = Structure.from_str(text, fmt="cif").composition.reduced_composition
    if back != structure.composition.reduced_composition:
        raise ValueError(f"the CIF symmetrized at symprec={symprec} reads back as {back.formula}, not "
                         f"{structure.composition.reduced_formula}")
    return text
