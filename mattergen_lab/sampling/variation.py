"""Sampling from a crystal you know: the parent, the sites to keep and the elements to substitute, checked once.

A :class:`~mattergen_lab.sampling.request.SamplingRequest` with ``parent=`` (a pymatgen ``Structure`` or a CIF,
POSCAR or extxyz path) is one of three runs, or a mix of them, each built from :class:`Variation`:

* **variations** (``strength`` t₀, default :data:`DEFAULT_STRENGTH`): the parent noised to t₀ with the model's
  forward processes, then denoised from t₀ (SDEdit, Meng et al. 2022). Small t₀ gives the parent back, t₀ = 1 is
  sampling from scratch with the parent's atom count;
* **inpainting** (``fix_sites``: indices, elements or ``"anions"``; default strength 1): the fixed sites' types and
  fractional coordinates are re-imposed after every step from the forward process of their known values (RePaint,
  Lugmayr et al. 2022) and the rest is generated. The lattice is the parent's, re-imposed the same way (so the
  fixed sites keep their Cartesian positions too, and the final cell is exactly the parent's);
* **guided substitution** (``substitute``: ``"Fe=Mn,Co"``; default strength :data:`DEFAULT_SUBSTITUTION_STRENGTH`):
  every site of a substituted element starts masked and may only become one of its listed elements (the model picks
  which, site by site); every other site may only be its own element (re-drawn when the forward process masks it);
  the coordinates and the lattice are noised lightly (t₀) and denoised with the new types.

With ``symmetric=True`` (``SamplingRequest(symmetry="parent")``) any of them but inpainting keeps the parent's own
space group: the parent is written in its Wyckoff template (:func:`symmetric_parent`) and sampled on the symmetric
mode (:mod:`~mattergen_lab.symmetry`), so the run's crystals are the template's primitive cell.

The parent keeps its own cell and site order (Niggli-reduced, which keeps the order; not made primitive), so site
indices are those of the file as pymatgen reads it (a CIF's symmetry operations applied, sites in its order). The
lattice the model sees is its symmetric polar factor, as in training. An element mask (``elements=`` or a
``chemical_system`` condition) applies to every site that is re-sampled, and a parent element outside it is
re-sampled within it; without an explicit mask every site may stay its own element (a parent's Pa, outside the 76
elements the model generates from scratch, is kept).

Refused before any work, each in one line naming the value: an unreadable or disordered (partially occupied)
parent, one over :data:`~mattergen_lab.limits.MAX_ATOMS_PER_CRYSTAL` atoms, a strength outside (0, 1], a
site selection that matches nothing, a substitution the parent or the model cannot do.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mattergen_lab.chemistry import ChemicalSystem, atomic_number_of, symbol_of
from mattergen_lab.constants import NUM_CLASSES
from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.limits import MAX_ATOMS_PER_CRYSTAL
from mattergen_lab.sampling.start import StartFrom
from mattergen_lab.structure_io import check_cif_size, check_structure_input, structure_from_cif
from mattergen_lab.symmetry.templates import WyckoffTemplate

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

#: Strength of a plain variation when none is given: clearly related to the parent, not a copy of it.
DEFAULT_STRENGTH = 0.3
#: Strength of a substitution (coordinates and lattice lightly noised, so they follow the new elements).
DEFAULT_SUBSTITUTION_STRENGTH = 0.2
#: Atomic number the generated atoms of an inpainting with new atoms hold before the first step (never sampled: Fm is
#: outside the models' 76 elements, and their masks exclude it); they start masked.
PLACEHOLDER_Z = 100
#: The bundled model a run starts from when none is named, and, for the symmetric mode, the bundled models fine-tuned
#: on symmetric noise that stand in for the one they came from (their crystals keep their group more often).
BASE_CHECKPOINT = "mgl_mp20_small"
SYMMETRIC_FINE_TUNES = {BASE_CHECKPOINT: "mgl_mp20_small_symmetric", "mgl_mp20_small_csp": "mgl_mp20_small_csp_symmetric"}
#: What a parent may be read from.
PARENT_SUFFIXES = (".cif", ".vasp", ".poscar", ".extxyz", ".xyz")


# ---------------------------------------------------------------------------------------------------- the parent
@dataclass(frozen=True)
class ParentCrystal:
    """An ordered crystal to start from, Niggli-reduced in its own site order. Equal when their ``sha256`` is.

    Attributes:
        structure: the pymatgen structure sampled from.
        sha256: hash of its lattice, species and fractional coordinates (rounded to 1e-6), for run records.
        name: where it came from (a file name, or its formula), for messages.
    """

    structure: Structure = field(compare=False, repr=False)
    sha256: str
    name: str = field(compare=False, default="")

    @classmethod
    def parse(cls, source: Any) -> ParentCrystal:
        """From a ``ParentCrystal``, a pymatgen ``Structure`` or a path (see :func:`read_parent`)."""
        if isinstance(source, ParentCrystal):
            return source
        from pymatgen.core import Structure

        if isinstance(source, Structure):
            structure, name = source, source.composition.reduced_formula if source.is_ordered else "parent"
        elif isinstance(source, (str, os.PathLike)):
            structure, name = read_parent(source), str(source)
        else:
            raise ValueError(f"parent={source!r:.80} must be a pymatgen Structure or a CIF/POSCAR/extxyz path")
        check_parent(structure, name)
        reduced = structure.get_reduced_structure()  # Niggli; keeps the site order
        return cls(structure=reduced, sha256=structure_hash(reduced), name=name)

    @property
    def formula(self) -> str:
        return self.structure.composition.formula.replace(" ", "")

    @property
    def num_atoms(self) -> int:
        return len(self.structure)

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        return tuple(int(z) for z in self.structure.atomic_numbers)

    def batch(self) -> CrystalBatch:
        """The parent as the model sees it: one crystal, float64, its lattice's symmetric polar factor."""
        return CrystalBatch.from_structures([self.structure], dtype=torch.float64).symmetrize_lattice()

    def record(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "formula": self.formula, "num_atoms": self.num_atoms}


def structure_hash(structure: Structure) -> str:
    """sha256 of a structure's lattice (Å), species and fractional coordinates, all rounded to 1e-6."""
    frac = [[round(v % 1.0, 6) % 1.0 for v in row] for row in structure.frac_coords.tolist()]
    text = json.dumps({"lattice": [[round(v, 6) for v in row] for row in structure.lattice.matrix.tolist()],
                       "species": [site.specie.symbol for site in structure], "frac_coords": frac}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_parent(structure: Structure, name: str) -> None:
    """``ValueError`` naming ``name`` for a parent no run can start from: disordered or partially occupied, over the
    atom cap, or one :func:`~mattergen_lab.structure_io.check_structure_input` refuses."""
    if not structure.is_ordered:
        site = next(i for i, s in enumerate(structure) if not s.is_ordered)
        raise ValueError(f"parent {name}: site {site} is disordered or partially occupied "
                         f"({structure[site].species.formula.replace(' ', ' + ')}); start from an ordered crystal")
    if len(structure) > MAX_ATOMS_PER_CRYSTAL:
        raise ValueError(f"parent {name}: {len(structure)} atoms is more than MAX_ATOMS_PER_CRYSTAL="
                         f"{MAX_ATOMS_PER_CRYSTAL} (the models were trained on at most 20); use its primitive cell")
    check_structure_input(structure, name=f"parent {name}")


def read_parent(path: str | os.PathLike) -> Structure:
    """The one structure in a CIF, POSCAR/CONTCAR (``.vasp``, ``.poscar`` or so named) or extxyz file, as written
    (a CIF's symmetry operations applied, no primitive cell); ``ValueError`` naming the file otherwise."""
    from pymatgen.core import Structure

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"parent {str(path)!r} does not exist")
    suffix, stem = p.suffix.lower(), p.name.upper()
    check_cif_size(p.stat().st_size, name=f"parent {p}")  # any one-crystal file is a few kB
    text = p.read_text(errors="replace")
    if suffix == ".cif":
        return structure_from_cif(text, name=str(p), primitive=False)
    if suffix in (".vasp", ".poscar") or stem.startswith(("POSCAR", "CONTCAR")):
        try:
            return Structure.from_str(text, fmt="poscar")
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many types
            raise ValueError(f"parent {p}: not a readable POSCAR ({type(exc).__name__}: {exc})") from None
    if suffix in (".extxyz", ".xyz"):
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        try:
            frames = read(str(p), index=":")
            if len(frames) != 1:
                raise ValueError(f"parent {p} holds {len(frames)} structures; pass a file with one")
            return AseAtomsAdaptor.get_structure(frames[0])
        except ValueError as exc:
            if str(exc).startswith("parent "):
                raise
            raise ValueError(f"parent {p}: not a readable periodic extxyz ({exc})") from None
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"parent {p}: not a readable periodic extxyz ({type(exc).__name__}: {exc})") from None
    raise ValueError(f"parent {p}: expected a {'/'.join(PARENT_SUFFIXES)} file or a POSCAR/CONTCAR")


# ------------------------------------------------------------------------------------------------ site selection
def select_sites(parent: ParentCrystal, selection: Any) -> tuple[int, ...]:
    """Indices of the parent's sites named by ``selection``: indices (``[0, 3]``, ``"0,3"``, ``"0-3"``), element
    symbols (``"O"``, ``"Fe,O"``), or ``"anions"`` (the elements with a negative oxidation state in pymatgen's first
    guess). ``ValueError`` names a selection that matches nothing, an index out of range or an unknown word."""
    n, shown = parent.num_atoms, f"{parent.formula} (sites 0-{parent.num_atoms - 1})"
    if isinstance(selection, str):
        tokens = [t for t in re.split(r"[\s,;]+", selection.strip()) if t]
    elif isinstance(selection, Sequence) and not isinstance(selection, bytes):
        tokens = list(selection)
    else:
        raise ValueError(f"fix_sites={selection!r} must be site indices, element symbols or 'anions'")
    if not tokens:
        raise ValueError(f"fix_sites={selection!r} names no site of {shown}")
    out: set[int] = set()
    for tok in tokens:
        if isinstance(tok, numbers.Integral) and not isinstance(tok, bool) or isinstance(tok, str) and re.fullmatch(r"\d+", tok):
            out.add(int(tok))
        elif isinstance(tok, str) and re.fullmatch(r"\d+-\d+", tok):
            lo, hi = map(int, tok.split("-"))
            out.update(range(lo, hi + 1))
        elif isinstance(tok, str) and tok.lower() == "anions":
            out.update(i for i, z in enumerate(parent.atomic_numbers) if z in anion_elements(parent))
        elif isinstance(tok, str):
            z = atomic_number_of(tok)  # ValueError names an unknown symbol
            found = [i for i, zi in enumerate(parent.atomic_numbers) if zi == z]
            if not found:
                raise ValueError(f"fix_sites={selection!r}: {tok} matches no site of {shown}")
            out.update(found)
        else:
            raise ValueError(f"fix_sites={selection!r}: {tok!r} is not a site index, an element or 'anions'")
    bad = sorted(i for i in out if not 0 <= i < n)
    if bad:
        raise ValueError(f"fix_sites={selection!r}: site {bad[0]} is not a site of {shown}")
    if not out:
        raise ValueError(f"fix_sites={selection!r} matches no site of {shown}")
    if len(out) == n:
        raise ValueError(f"fix_sites={selection!r} fixes every site of {shown}; nothing would be generated")
    return tuple(sorted(out))


def anion_elements(parent: ParentCrystal) -> set[int]:
    """Atomic numbers of the parent's elements with a negative oxidation state (pymatgen's most likely guess)."""
    guesses = parent.structure.composition.oxi_state_guesses(max_sites=-1)
    if not guesses:
        raise ValueError(f"fix_sites='anions': pymatgen finds no charge-balanced oxidation states for "
                         f"{parent.formula}; name the elements instead (e.g. fix_sites='O')")
    return {atomic_number_of(el) for el, ox in guesses[0].items() if ox < 0}


# -------------------------------------------------------------------------------------------------- substitution
def parse_substitution(spec: Any, parent: ParentCrystal) -> dict[str, tuple[str, ...]]:
    """``"Fe=Mn,Co"`` (several joined by ``;``), a list of such, or ``{"Fe": ["Mn", "Co"]}`` as ``{"Fe": ("Co",
    "Mn")}``. ``ValueError`` names an element the parent lacks, one the model cannot make, or a malformed rule."""
    rules: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        rules = dict(spec)
    else:
        parts = spec.split(";") if isinstance(spec, str) else list(spec) if isinstance(spec, Sequence) else None
        if parts is None:
            raise ValueError(f"substitute={spec!r} must look like 'Fe=Mn,Co'")
        for part in (p.strip() for p in parts if isinstance(p, str) and p.strip()):
            old, eq, new = part.partition("=")
            if not eq or not old.strip() or not new.strip():
                raise ValueError(f"substitute {part!r} must look like 'Fe=Mn,Co' (an element of the parent = the "
                                 "elements its sites may become)")
            if old.strip() in rules:
                raise ValueError(f"substitute names {old.strip()} twice; give one rule per element")
            rules[old.strip()] = new
    if not rules:
        raise ValueError(f"substitute={spec!r} names no substitution; write it like 'Fe=Mn,Co'")
    out: dict[str, tuple[str, ...]] = {}
    for old, new in rules.items():
        z = atomic_number_of(str(old))
        if z not in parent.atomic_numbers:
            raise ValueError(f"substitute {old}=...: the parent {parent.formula} has no {symbol_of(z)}")
        try:
            targets = ChemicalSystem.parse(new)
        except ValueError as exc:
            raise ValueError(f"substitute {old}={new}: {exc}") from None
        try:
            targets.require_generatable()
        except ValueError:
            bad = [s for s in targets.symbols if atomic_number_of(s) not in _generatable()]
            raise ValueError(f"substitute {symbol_of(z)}={new}: the model cannot make {', '.join(bad)} (noble gases, "
                             "Tc, Pm and Z >= 84 are outside its 76 elements)") from None
        out[symbol_of(z)] = tuple(sorted(targets.symbols))
    return dict(sorted(out.items()))


def _generatable() -> set[int]:
    from mattergen_lab.constants import SELECTED_ATOMIC_NUMBERS

    return set(SELECTED_ATOMIC_NUMBERS)


# ------------------------------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class Variation:
    """A parent and what to do with it (see the module docstring); :meth:`build` checks it, :meth:`start` makes
    the sampler's :class:`~mattergen_lab.sampling.start.StartFrom`."""

    parent: ParentCrystal
    strength: float
    fix_sites: tuple[int, ...] = ()
    substitute: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: a symmetric variation: the parent's Wyckoff template, and the parent written in it (see :func:`symmetric_parent`)
    template: WyckoffTemplate | None = None
    symmetric: CrystalBatch | None = field(default=None, compare=False, repr=False)
    #: inpainting with another number of generated atoms than the parent's unfixed sites (``None``: as many)
    free_atoms: int | None = None

    @classmethod
    def build(cls, parent: Any, strength: Any = None, fix_sites: Any = None, substitute: Any = None,
              mask: ChemicalSystem | None = None, symmetric: bool = False, num_atoms: Any = None) -> Variation:
        """Everything checked (``ValueError`` naming the value); ``strength=None`` takes the kind's default;
        ``symmetric``: keep the parent's own space group (:func:`symmetric_parent`); ``num_atoms``: with
        ``fix_sites``, the atoms of every crystal, the fixed sites plus that many minus them generated from the
        prior (``None`` or the parent's count: the parent's other sites)."""
        parent = ParentCrystal.parse(parent)
        if symmetric and fix_sites is not None:
            raise ValueError(f"fix_sites={fix_sites!r} does not combine with a symmetric variation yet (the parent's "
                             "sites are renumbered orbit by orbit); pass one of them")
        fixed = select_sites(parent, fix_sites) if fix_sites is not None else ()
        subst = parse_substitution(substitute, parent) if substitute is not None else {}
        if strength is None:
            strength = 1.0 if fixed else DEFAULT_SUBSTITUTION_STRENGTH if subst else DEFAULT_STRENGTH
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
                or not 0 < strength <= 1:
            raise ValueError(f"strength={strength!r} must be a number in (0, 1] (the start time t0: near 0 keeps "
                             "the parent, 1 samples from scratch)")
        both = sorted(i for i in fixed if symbol_of(parent.atomic_numbers[i]) in subst)
        if both:
            raise ValueError(f"site {both[0]} ({symbol_of(parent.atomic_numbers[both[0]])}) is both fixed "
                             "(fix_sites) and substituted (substitute); pass it to one of them")
        if mask is not None:
            for old, new in subst.items():
                if not set(new) & set(mask.symbols):
                    raise ValueError(f"substitute {old}={','.join(new)}: none of them is in the element mask {mask}")
            kept = sorted({symbol_of(z) for z in parent.atomic_numbers} - set(subst) - set(mask.symbols))
            if subst and kept:
                raise ValueError(f"substitute keeps the parent's {', '.join(kept)}, outside the element mask {mask}; "
                                 "add it to the mask or substitute it too")
        if symmetric:
            template, crystal = symmetric_parent(parent)
            return cls(parent, float(strength), fixed, subst, template, crystal)
        free = _free_atoms(parent, fixed, subst, float(strength), num_atoms)
        return cls(parent, float(strength), fixed, subst, free_atoms=free)

    @property
    def num_atoms(self) -> int:
        """Atoms of every crystal of the run (a symmetric variation's: the primitive cell of the parent's template)."""
        if self.free_atoms is not None:
            return len(self.fix_sites) + self.free_atoms
        return self.parent.num_atoms if self.symmetric is None else int(self.symmetric.num_atoms[0])

    def start(self, *, keep_own: bool = True) -> StartFrom:
        """The single-crystal start (repeat it per chunk): substituted sites allowed their targets only, other sites
        of a substitution their own element only, fixed sites (and the lattice) known. ``keep_own``: every site but a
        substituted one may stay its own element whatever the run's mask (``False`` under an explicit element mask,
        which then re-samples the parent's elements outside it)."""
        if self.free_atoms is not None:
            return self._start_with_free_atoms()
        batch = self.parent.batch() if self.symmetric is None else self.symmetric
        z = batch.atom_types
        allowed, keep = None, torch.full((len(z),), keep_own)
        for old in self.substitute:
            keep &= z != atomic_number_of(old)
        if self.substitute:
            allowed = torch.zeros(len(z), NUM_CLASSES, dtype=torch.bool)
            allowed[torch.arange(len(z)), z - 1] = True
            for old, new in self.substitute.items():
                rows = z == atomic_number_of(old)
                allowed[rows] = False
                for target in new:
                    allowed[rows, atomic_number_of(target) - 1] = True
        known = None
        if self.fix_sites:
            known = torch.zeros(len(z), dtype=torch.bool)
            known[list(self.fix_sites)] = True
        return StartFrom(batch=batch, strength=self.strength, allowed=allowed, known_sites=known,
                         known_lattice=bool(self.fix_sites), keep_own=keep if bool(keep.any()) else None)

    def _start_with_free_atoms(self) -> StartFrom:
        """Inpainting with :attr:`free_atoms` new atoms: the fixed sites (first, in the parent's order) and the
        parent's cell known, the new atoms masked and placed by the prior (t0 = 1), any element the run allows."""
        parent = self.parent.batch()
        keep = torch.tensor(self.fix_sites, dtype=torch.long)
        k, n = len(keep), len(self.fix_sites) + int(self.free_atoms or 0)
        z = torch.cat([parent.atom_types[keep], torch.full((n - k,), PLACEHOLDER_Z, dtype=torch.long)])
        frac = torch.cat([parent.frac_coords[keep], torch.zeros(n - k, 3, dtype=parent.frac_coords.dtype)])
        batch = CrystalBatch(atom_types=z, frac_coords=frac, lattice=parent.lattice, num_atoms=torch.tensor([n]))
        allowed = torch.ones(n, NUM_CLASSES, dtype=torch.bool)
        allowed[k:, PLACEHOLDER_Z - 1] = False  # never their placeholder: they start masked
        known = torch.arange(n) < k
        return StartFrom(batch=batch, strength=self.strength, allowed=allowed, known_sites=known, known_lattice=True)

    def record(self) -> dict[str, Any]:
        """What ``sampling.json`` records (a folder refuses crystals of another parent or settings)."""
        out: dict[str, Any] = {**self.parent.record(), "strength": self.strength}
        if self.fix_sites:
            out["fix_sites"] = list(self.fix_sites)
        if self.substitute:
            out["substitute"] = {k: list(v) for k, v in self.substitute.items()}
        if self.template is not None:
            out["template"] = str(self.template)
        if self.free_atoms is not None:
            out["generated_atoms"] = self.free_atoms
        return out


def _free_atoms(parent: ParentCrystal, fixed: tuple[int, ...], subst: Mapping[str, Any], strength: float,
                num_atoms: Any) -> int | None:
    """How many atoms an inpainting with ``num_atoms`` in all generates, when that is not the parent's unfixed sites
    (``None`` then); ``ValueError`` naming the value when it cannot be done."""
    if num_atoms is None or num_atoms == parent.num_atoms or not fixed:
        return None
    if isinstance(num_atoms, bool) or not isinstance(num_atoms, int):
        raise ValueError(f"num_atoms={num_atoms!r}: inpainting with another number of atoms takes one count for "
                         "every crystal")
    if num_atoms <= len(fixed):
        raise ValueError(f"num_atoms={num_atoms} must be more than the {len(fixed)} fixed sites of {parent.formula}")
    if num_atoms > MAX_ATOMS_PER_CRYSTAL:
        raise ValueError(f"num_atoms={num_atoms} is more than MAX_ATOMS_PER_CRYSTAL={MAX_ATOMS_PER_CRYSTAL}")
    if subst:
        raise ValueError(f"num_atoms={num_atoms} (another number of generated atoms) does not combine with substitute; "
                         "pass one of them")
    if strength != 1.0:
        raise ValueError(f"strength={strength:g}: with num_atoms={num_atoms} the {num_atoms - len(fixed)} generated "
                         "atoms start from the prior, so the strength must be 1 (leave it out)")
    return num_atoms - len(fixed)


def symmetric_parent(parent: ParentCrystal) -> tuple[WyckoffTemplate, CrystalBatch]:
    """The parent's Wyckoff template and the parent written in it, exactly symmetric (float64): the primitive cell of
    its standard setting, atoms orbit after orbit, as the symmetric mode samples
    (:func:`~mattergen_lab.symmetry.dataset.symmetrize`, pyxtal/spglib at 0.1 Å). ``ValueError`` naming the parent when
    its symmetry cannot be read or its primitive cell exceeds the templates' atom limit."""
    from mattergen_lab.symmetry.dataset import TOLERANCE, symmetrize
    from mattergen_lab.symmetry.templates import MAX_TEMPLATE_ATOMS

    s = parent.structure.get_primitive_structure(tolerance=TOLERANCE)  # a supercell parent: its primitive cell
    found = symmetrize(s.lattice.matrix, s.frac_coords, s.atomic_numbers)
    if found is None:
        raise ValueError(f"parent {parent.name}: its space group could not be read at {TOLERANCE} Å (pyxtal/spglib); "
                         "vary it without symmetry")
    template, lattice, frac, z = found
    if template.primitive_atoms > MAX_TEMPLATE_ATOMS:
        raise ValueError(f"parent {parent.name}: its primitive cell holds {template.primitive_atoms} atoms, more than "
                         f"the symmetric mode's {MAX_TEMPLATE_ATOMS}")
    batch = CrystalBatch(atom_types=torch.as_tensor(z, dtype=torch.long),
                         frac_coords=torch.as_tensor(frac, dtype=torch.float64),
                         lattice=torch.as_tensor(lattice, dtype=torch.float64)[None],
                         num_atoms=torch.tensor([len(z)], dtype=torch.long))
    return template, batch


def vary_checkpoint(checkpoint: Any, keep_symmetry: bool) -> str:
    """The checkpoint a variation runs on: ``checkpoint``, or without one the bundled base (its symmetric fine-tune
    with ``keep_symmetry``)."""
    if checkpoint:
        return str(checkpoint)
    return SYMMETRIC_FINE_TUNES[BASE_CHECKPOINT] if keep_symmetry else BASE_CHECKPOINT
