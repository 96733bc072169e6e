"""Wyckoff templates (a space group and one Wyckoff letter per orbit) and how a request asks for them.

A :class:`WyckoffTemplate` fixes everything symmetric about a crystal except its free parameters and its elements:
``WyckoffTemplate(225, ("a", "b"))`` is rock salt's frame (4a + 4b, 8 atoms in the conventional cell). A
:class:`SymmetrySpec` is what the user asks for, parsed once at the boundary:

* a space group (``--space-group 225``): templates of that group as MP-20 has them, or, for a group MP-20 lacks
  within the atom limit, random Wyckoff combinations of it (:func:`random_template`);
* a crystal system (``--crystal-system cubic``): MP-20's templates of the groups of that system;
* ``"mp20"`` (``--symmetry mp20``): MP-20's joint distribution of space group, Wyckoff letters and atom count.

The MP-20 table (``mp20_templates.json`` beside this file) counts the templates of the MP-20 train structures with
coordinates and of the val split (spglib, symprec 0.1 Å; built by :mod:`~mattergen_lab.symmetry.mp20_table`), and
keeps the test split's space-group histogram as the reference for the χ² of generated crystals.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mattergen_lab.symmetry.groups import (
    CRYSTAL_SYSTEMS,
    centring,
    check_crystal_system,
    check_space_group,
    crystal_system,
    orbit_geometry,
    wyckoff_letters,
)

TABLE_PATH = Path(__file__).with_name("mp20_templates.json")
#: Most atoms in a template's primitive cell (the cell that is sampled) when none is given: MP-20's largest, and
#: what the models were trained on (its conventional cell may hold up to four times as many).
DEFAULT_MAX_ATOMS = 20
MAX_TEMPLATE_ATOMS = 200  # the sampler's atom limit per crystal
#: Diffusion time from which the constraint holds (see ``SymmetrySpec.start``). Measured on the bundled base, 200
#: steps, 32 MP-20 templates (seed 7), CHGNet-relaxed: from t = 1, mean RMSD 0.50 Å, 66 % keep their group after
#: relaxation, 9 % relax to P1; from t = 0.4, 0.35 Å, 72 % and 0 % (stable 34 % against 25 %: within noise at N = 32).
DEFAULT_START = 0.4
#: Langevin corrector steps run inside the templates right after the snap (see ``SymmetrySpec.settle``): none by
#: default. Measured on ``mgl_mp20_small_symmetric``, 256 mp20 templates, CHGNet: S.U.N. 30.1 / 35.5 / 29.7 % with
#: 0 / 20 / 50 steps (seed 0) and 32.0 / 30.9 % with 0 / 20 (seed 1): no effect beyond the run-to-run spread
#: (docs/quality.md, *What moves S.U.N. in the symmetric mode*).
DEFAULT_SETTLE = 0
#: The most settle steps a request may ask for (each is one network evaluation per crystal).
MAX_SETTLE = 1000
#: How the sampler numbers freely diffused atoms into the templates' slots when the constraint starts after t = 1:
#: ``"nearest"`` (:func:`~mattergen_lab.symmetry.assign.nearest_assignment`), ``"origin"`` (the same after moving each
#: crystal's origin to where its template fits it best: ``nearest_assignment(..., origin=True)``) or ``"index"`` (as
#: numbered).
ASSIGNMENTS = ("nearest", "origin", "index")


@dataclass(frozen=True)
class WyckoffTemplate:
    """A space group and one Wyckoff letter per orbit (``ValueError`` names a letter the group lacks), and optionally
    which orbits share an element (``elements``: one class label per orbit, ``0, 1, …`` in order of first use).

    Written ``"225:ab"`` (each orbit takes its own element, which may happen to be another orbit's) or, with an
    element pattern, ``"225:ab|c"``: the orbits before a ``|`` share one element, so ``a`` and ``b`` take one and
    ``c`` another (classes sorted, letters sorted within a class; the orbits are numbered in that order)."""

    space_group: int
    letters: tuple[str, ...]
    elements: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "space_group", check_space_group(self.space_group))
        letters = tuple(self.letters) if not isinstance(self.letters, str) else tuple(self.letters)
        if not letters:
            raise ValueError(f"a Wyckoff template needs at least one orbit (space group {self.space_group})")
        if self.elements is not None:
            labels = tuple(int(x) for x in self.elements)
            first_use = [x for i, x in enumerate(labels) if x not in labels[:i]]
            if len(labels) != len(letters) or first_use != list(range(len(first_use))):
                raise ValueError(f"elements={self.elements!r} must give each of the {len(letters)} orbits a class "
                                 "label 0, 1, … in order of first use")
            object.__setattr__(self, "elements", labels)
        known = wyckoff_letters(self.space_group)
        for letter in letters:
            if letter not in known:
                raise ValueError(f"Wyckoff letter {letter!r} does not exist in space group {self.space_group}; "
                                 f"it has {''.join(sorted(known))}")
        fixed = [x for x in letters if orbit_geometry(self.space_group, x).dof == 0]
        twice = sorted({x for x in fixed if fixed.count(x) > 1})
        if twice:
            raise ValueError(f"Wyckoff position(s) {twice} of space group {self.space_group} have no free parameter: "
                             "each can hold one orbit only")
        object.__setattr__(self, "letters", letters)

    @property
    def multiplicities(self) -> tuple[int, ...]:
        table = wyckoff_letters(self.space_group)
        return tuple(table[x] for x in self.letters)

    @property
    def num_atoms(self) -> int:
        """Atoms in the conventional cell."""
        return sum(self.multiplicities)

    @property
    def centring(self) -> int:
        """Lattice points per conventional cell (1 for P, 2 for A/B/C/I, 3 for R, 4 for F)."""
        return centring(self.space_group)

    @property
    def primitive_multiplicities(self) -> tuple[int, ...]:
        """Atoms of each orbit in the primitive cell, the cell that is sampled."""
        return tuple(m // self.centring for m in self.multiplicities)

    @property
    def primitive_atoms(self) -> int:
        """Atoms in the primitive cell: what the sampler denoises (``num_atoms`` / lattice points)."""
        return self.num_atoms // self.centring

    @property
    def crystal_system(self) -> str:
        return crystal_system(self.space_group)

    @property
    def letters_only(self) -> "WyckoffTemplate":
        """The same orbits without an element pattern (letters sorted, as a template without one is written)."""
        return WyckoffTemplate(self.space_group, tuple(sorted(self.letters)))

    def __str__(self) -> str:  # e.g. "225:ab"  (one character per orbit), "225:ab|c" with an element pattern
        if self.elements is None:
            return f"{self.space_group}:{''.join(self.letters)}"
        classes = ["".join(x for x, c in zip(self.letters, self.elements) if c == k)
                   for k in range(max(self.elements) + 1)]
        return f"{self.space_group}:{'|'.join(classes)}"

    @classmethod
    def parse(cls, text: str) -> "WyckoffTemplate":
        """``"225:ab"`` → ``WyckoffTemplate(225, ("a", "b"))``; ``"225:ab|c"`` → the same group with letters
        ``a, b, c`` and elements ``0, 0, 1`` (classes and their letters put in canonical order)."""
        sg, _, letters = str(text).partition(":")
        if not letters or any(not part for part in letters.split("|")):
            raise ValueError(f"template {text!r} must look like '225:ab' or '225:ab|c' (space group, ':', one letter "
                             "per orbit; '|' between orbits of different elements)")
        try:
            number = int(sg)
        except ValueError:
            raise ValueError(f"template {text!r}: {sg!r} is not a space-group number") from None
        if "|" not in letters:
            return cls(number, tuple(letters))
        classes = sorted("".join(sorted(part)) for part in letters.split("|"))
        return cls(number, tuple("".join(classes)), tuple(k for k, part in enumerate(classes) for _ in part))


@functools.lru_cache(maxsize=1)
def mp20_table() -> dict:
    """The packaged MP-20 template table (see the module docstring)."""
    return json.loads(TABLE_PATH.read_text())


@functools.lru_cache(maxsize=None)
def _mp20_templates(max_atoms: int, patterns: bool = False) -> tuple[tuple[WyckoffTemplate, ...], np.ndarray]:
    rows = [(WyckoffTemplate.parse(t), c) for t, c in mp20_table()["patterns" if patterns else "templates"].items()]
    rows = [(t, c) for t, c in rows if t.primitive_atoms <= max_atoms]
    return tuple(t for t, _ in rows), np.array([c for _, c in rows], dtype=np.float64)


def reference_space_groups() -> dict[int, int]:
    """MP-20 test split: ``{space group: count}`` (spglib, symprec 0.1 Å), the χ² reference."""
    return {int(k): int(v) for k, v in mp20_table()["test_space_groups"].items()}


def random_template(space_group: int, num_atoms: int, generator: torch.Generator, *, tries: int = 200) -> WyckoffTemplate:
    """A random Wyckoff combination of ``space_group`` with exactly ``num_atoms`` atoms in the primitive cell.

    Orbits are drawn one by one, more often from positions with more freedom; a position without free parameters is
    used once at most. ``ValueError`` when no combination reaches ``num_atoms`` (e.g. 3 atoms in Fm-3m, whose
    smallest orbits hold 4).
    """
    sg = check_space_group(space_group)
    table = wyckoff_letters(sg)
    letters = sorted(table)
    for _ in range(tries):
        chosen: list[str] = []
        left = num_atoms * centring(sg)  # the conventional cell's atoms
        while left > 0:
            options = [x for x in letters if table[x] <= left
                       and not (orbit_geometry(sg, x).dof == 0 and x in chosen)]
            if not options:
                break
            weights = torch.tensor([1.0 + orbit_geometry(sg, x).dof for x in options], dtype=torch.float64)
            pick = options[int(torch.multinomial(weights, 1, generator=generator))]
            chosen.append(pick)
            left -= table[pick]
        if left == 0:
            return WyckoffTemplate(sg, tuple(chosen))
    sizes = sorted({m // centring(sg) for m in table.values()})
    raise ValueError(f"no Wyckoff combination of space group {sg} holds {num_atoms} atoms (its orbits hold {sizes} "
                     "atoms in the primitive cell); choose another atom count or group")


@functools.lru_cache(maxsize=None)
def reachable_counts(space_group: int, max_atoms: int = MAX_TEMPLATE_ATOMS) -> frozenset[int]:
    """Every primitive-cell atom count ≤ ``max_atoms`` that some Wyckoff combination of ``space_group`` holds (a
    position without free parameters at most once, the others any number of times: a knapsack over the orbits)."""
    sg = check_space_group(space_group)
    k = centring(sg)
    max_atoms = max_atoms * k  # in the conventional cell
    reach = np.zeros(max_atoms + 1, dtype=bool)
    reach[0] = True
    for letter, mult in wyckoff_letters(sg).items():
        if orbit_geometry(sg, letter).dof == 0:  # 0/1 item
            reach[mult:] |= reach[:-mult].copy() if mult <= max_atoms else False
        else:  # unbounded item
            for n in range(mult, max_atoms + 1):
                reach[n] |= reach[n - mult]
    return frozenset(int(n) // k for n in np.flatnonzero(reach) if n > 0)


def check_start(start: object) -> float:
    """A symmetric run's start time as a float in (0, 1]; ``ValueError`` naming it otherwise."""
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0.0 < start <= 1.0:
        raise ValueError(f"start={start!r} must be a diffusion time in (0, 1]")
    return float(start)


@dataclass(frozen=True)
class SymmetrySpec:
    """What a request asks for: exactly one of ``space_group``, ``crystal_system``, ``source="mp20"`` or fixed
    ``templates`` (one per crystal, or one for all). ``max_atoms`` bounds the primitive cells drawn (the cells that
    are sampled; a template's conventional cell holds its primitive cell once per lattice point)."""

    space_group: int | None = None
    crystal_system: str | None = None
    source: str | None = None
    templates: tuple[WyckoffTemplate, ...] = ()
    max_atoms: int = DEFAULT_MAX_ATOMS
    #: the diffusion time from which the constraint holds (1 = the whole run; the crystal is exactly symmetric
    #: either way, since the last steps are constrained); before it, the types are already pooled per orbit.
    #: ``None``: the checkpoint's recommendation (``config.json`` ``sampling.symmetry_start``: 1.0 for a model trained
    #: on symmetric noise), else :data:`DEFAULT_START`
    start: float | None = None
    #: how the freely diffused atoms are numbered into the slots when the constraint starts (``"nearest"``,
    #: ``"origin"`` or ``"index"``; :data:`ASSIGNMENTS`)
    assign: str = "nearest"
    #: Langevin corrector steps, inside the templates, at the start time right after the freely diffused crystal is
    #: snapped onto them (0: none). The snap moves atoms 1.4-1.9 Å, more than the coordinate noise at t = 0.4
    #: (about 0.5 Å); the extra corrector steps at that one noise level (annealed Langevin dynamics, Song & Ermon,
    #: NeurIPS 2019, run at one level; RePaint's resampling, Lugmayr et al., CVPR 2022, serves the same purpose by
    #: re-noising) are meant to bring the snapped crystal back to the noised distribution before the predictor goes
    #: on; measured, they did not raise S.U.N. (see DEFAULT_SETTLE). Costs ``settle`` network evaluations per crystal
    #: (against the 400 of 200 steps); nothing with ``start=1``.
    settle: int = DEFAULT_SETTLE
    #: templates drawn from MP-20 carry their crystal's element pattern (``"225:ab|c"``: the orbits that shared an
    #: element in the MP-20 crystal draw one type together), so a crystal has at most as many elements as its MP-20
    #: source had; ``False``: each orbit draws its own (the network may repeat one)
    element_patterns: bool = False

    def __post_init__(self) -> None:
        given = [self.space_group is not None, self.crystal_system is not None, self.source is not None, bool(self.templates)]
        if sum(given) != 1:
            raise ValueError("a symmetry request names exactly one of space_group, crystal_system, source='mp20' or "
                             "templates")
        m = self.max_atoms
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_TEMPLATE_ATOMS:
            raise ValueError(f"max_atoms={m!r} must be an integer in 1-{MAX_TEMPLATE_ATOMS}")
        if self.start is not None:
            object.__setattr__(self, "start", check_start(self.start))
        if isinstance(self.settle, bool) or not isinstance(self.settle, int) or not 0 <= self.settle <= MAX_SETTLE:
            raise ValueError(f"settle={self.settle!r} must be an integer in 0-{MAX_SETTLE} (corrector steps after the snap)")
        if not isinstance(self.element_patterns, bool):
            raise ValueError(f"element_patterns={self.element_patterns!r} must be True or False")
        if self.assign not in ASSIGNMENTS:
            raise ValueError(f"assign={self.assign!r} must be 'nearest', 'origin' or 'index'")
        if self.space_group is not None:
            object.__setattr__(self, "space_group", check_space_group(self.space_group))
        if self.crystal_system is not None:
            object.__setattr__(self, "crystal_system", check_crystal_system(self.crystal_system))
        if self.source is not None and self.source != "mp20":
            raise ValueError(f"symmetry={self.source!r}: the only template source is 'mp20'")
        if self.templates:
            tpl = tuple(t if isinstance(t, WyckoffTemplate) else WyckoffTemplate.parse(t) for t in self.templates)
            big = [str(t) for t in tpl if t.primitive_atoms > MAX_TEMPLATE_ATOMS]
            if big:
                raise ValueError(f"template(s) {big} hold more than {MAX_TEMPLATE_ATOMS} atoms per crystal")
            object.__setattr__(self, "templates", tpl)

    @classmethod
    def parse(cls, value: "SymmetrySpec | str | int | None", *, max_atoms: int | None = None) -> "SymmetrySpec | None":
        """``None``; a space group (``225``, ``"225"``); a crystal system (``"cubic"``); ``"mp20"``; a template
        (``"225:ab"``); a spec; or a spec's fields as a mapping (what :meth:`to_dict` writes, e.g. ``{"source":
        "mp20", "assign": "origin"}``: how a campaign spec or a benchmark names the sampler's options)."""
        if value is None or isinstance(value, SymmetrySpec):
            return value
        extra = {} if max_atoms is None else {"max_atoms": max_atoms}
        if isinstance(value, Mapping):
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(str(k) for k in value if k not in fields)
            if unknown:
                raise ValueError(f"symmetry={dict(value)!r}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
            given = {**extra, **value}
            if "templates" in given:
                if isinstance(given["templates"], (str, bytes)) or not isinstance(given["templates"], Sequence):
                    raise ValueError(f"symmetry templates={given['templates']!r} must be a list such as ['225:ab']")
                given["templates"] = tuple(given["templates"])
            return cls(**given)
        text = str(value).strip()
        if isinstance(value, int) and not isinstance(value, bool) or text.isdigit():
            return cls(space_group=int(text), **extra)
        if ":" in text:
            return cls(templates=(WyckoffTemplate.parse(text),), **extra)
        if text.lower() == "mp20":
            return cls(source="mp20", **extra)
        if text.lower() in CRYSTAL_SYSTEMS:
            return cls(crystal_system=text, **extra)
        raise ValueError(f"symmetry={value!r} must be a space group (1-230), a crystal system {list(CRYSTAL_SYSTEMS)}, "
                         "'mp20', or a template such as '225:ab'")

    @property
    def effective_start(self) -> float:
        """``start``, or :data:`DEFAULT_START` when it is left to the checkpoint and none resolved it."""
        return DEFAULT_START if self.start is None else self.start

    def to_dict(self) -> dict:
        out: dict = {"max_atoms": self.max_atoms, "start": self.start, "assign": self.assign, "settle": self.settle,
                     "element_patterns": self.element_patterns}
        for key in ("space_group", "crystal_system", "source"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.templates:
            out["templates"] = [str(t) for t in self.templates]
        return out

    def __str__(self) -> str:
        if self.templates:
            return ",".join(str(t) for t in self.templates)
        return str(self.space_group or self.crystal_system or self.source)

    def candidates(self, patterns: bool | None = None) -> tuple[tuple[WyckoffTemplate, ...], np.ndarray]:
        """MP-20 templates this spec draws from and their weights (empty for a group MP-20 lacks); with element
        patterns when ``patterns`` (default: ``element_patterns``) is true. A composition (CSP) asks without."""
        patterns = self.element_patterns if patterns is None else patterns
        templates, counts = _mp20_templates(self.max_atoms, patterns)
        if self.source == "mp20":
            keep = np.ones(len(templates), dtype=bool)
        elif self.crystal_system is not None:
            numbers = CRYSTAL_SYSTEMS[self.crystal_system]
            keep = np.array([t.space_group in numbers for t in templates])
        elif self.space_group is not None:
            keep = np.array([t.space_group == self.space_group for t in templates])
        else:
            return self.templates, np.ones(len(self.templates))
        return tuple(t for t, k in zip(templates, keep) if k), counts[keep]

    def check_num_atoms(self, num_atoms: int) -> None:
        """``ValueError`` naming ``num_atoms`` when no template of this spec holds that many atoms (before any work)."""
        templates, _ = self.candidates()
        if any(t.primitive_atoms == num_atoms for t in templates):
            return
        if self.space_group is not None and num_atoms in reachable_counts(self.space_group):
            return
        if self.space_group is not None:
            sizes = sorted(reachable_counts(self.space_group, min(self.max_atoms, 24)))
            raise ValueError(f"num_atoms={num_atoms}: no Wyckoff combination of space group {self.space_group} holds "
                             f"{num_atoms} atoms in its primitive cell (it holds {sizes[:12]}...); choose one of those")
        counts = sorted({t.primitive_atoms for t in templates})
        raise ValueError(f"num_atoms={num_atoms}: no MP-20 template of {self} holds {num_atoms} atoms in its "
                         f"primitive cell (they hold {counts[:16]}); choose one of those or leave num_atoms out")

    def draw(self, k: int, generator: torch.Generator, *, num_atoms: Sequence[int] | None = None) -> list[WyckoffTemplate]:
        """``k`` templates drawn with ``generator`` (CPU), from MP-20's for this spec by their frequency, or (a group
        MP-20 lacks) random Wyckoff combinations of an atom count drawn among those the group can hold.
        ``num_atoms``: one primitive-cell atom count per crystal that each template must hold."""
        if num_atoms is not None and len(num_atoms) != k:
            raise ValueError(f"num_atoms has {len(num_atoms)} entries for {k} crystals")
        if self.templates:
            if len(self.templates) not in (1, k):
                raise ValueError(f"{len(self.templates)} templates for {k} crystals: give one, or one per crystal")
            out = list(self.templates) * k if len(self.templates) == 1 else list(self.templates)
            if num_atoms is not None and [t.primitive_atoms for t in out] != [int(n) for n in num_atoms]:
                raise ValueError(f"num_atoms={list(num_atoms)} but the templates hold {[t.primitive_atoms for t in out]}")
            return out
        templates, weights = self.candidates()
        if num_atoms is None:
            if templates:
                idx = torch.multinomial(torch.as_tensor(weights), k, replacement=True, generator=generator)
                return [templates[int(i)] for i in idx]
            if self.space_group is None:
                raise ValueError(f"MP-20 has no template of {self} within max_atoms={self.max_atoms}")
            sizes = sorted(reachable_counts(self.space_group, self.max_atoms))
            if not sizes:
                raise ValueError(f"space group {self.space_group} has no Wyckoff combination of at most "
                                 f"max_atoms={self.max_atoms} atoms")
            num_atoms = [sizes[int(i)] for i in torch.randint(len(sizes), (k,), generator=generator)]
        out = []
        for n in num_atoms:
            keep = [i for i, t in enumerate(templates) if t.primitive_atoms == int(n)]
            if keep:
                pick = torch.multinomial(torch.as_tensor(weights[keep]), 1, generator=generator)
                out.append(templates[keep[int(pick)]])
            elif self.space_group is not None:
                out.append(random_template(self.space_group, int(n), generator))
            else:
                self.check_num_atoms(int(n))
        return out
