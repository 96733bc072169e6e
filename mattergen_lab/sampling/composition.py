"""``FixedComposition``: the atoms of a crystal-structure-prediction (CSP) run, parsed once at the boundary.

A CSP checkpoint (``config.json`` ``diffusion.fixed_atom_types: true``) samples only coordinates and lattice; the
atom types are given and held fixed at every step. The cell holds ``formula × formula_units`` atoms::

    >>> c = FixedComposition.parse("Li2MnO3", formula_units=2)
    >>> c.num_atoms, c.cell_formula
    (12, 'Li4Mn2O6')

``ValueError`` names the value for an unparsable formula, an element that is not one (``Xx``) or that MatterGen
never generates (noble gases, Tc, Pm, Z >= 84), a fractional amount, ``formula_units <= 0`` and a cell of more than
:data:`~mattergen_lab.constants.MAX_TRAINING_ATOMS` atoms (the largest cell in the training data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mattergen_lab.chemistry import atomic_number_of, symbol_of
from mattergen_lab.constants import MAX_TRAINING_ATOMS, SELECTED_ATOMIC_NUMBERS


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class FixedComposition:
    """The atoms of one CSP cell: ``amounts`` per formula unit (``((Z, count), ...)`` in the formula's order)."""

    formula: str
    amounts: tuple[tuple[int, int], ...]
    formula_units: int = 1

    @classmethod
    def parse(cls, formula: Any, formula_units: Any = 1, *, max_atoms: int = MAX_TRAINING_ATOMS) -> "FixedComposition":
        """From a formula like ``"Li2MnO3"`` or ``"Ca(OH)2"`` (pymatgen's syntax) and a number of formula units."""
        if isinstance(formula, FixedComposition):
            formula = formula.formula
        if not isinstance(formula, str) or not formula.strip():
            raise ValueError(f"composition={formula!r} must be a chemical formula like 'Li2MnO3'")
        if not _is_int(formula_units) or formula_units < 1:
            raise ValueError(f"formula_units={formula_units!r} must be a positive integer")
        from pymatgen.core import Composition

        text = formula.strip()
        try:
            parsed = Composition(text).get_el_amt_dict()  # {symbol: amount}, in the formula's order
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"composition={text!r} is not a formula pymatgen can parse ({exc}); write it like 'Li2MnO3'") from None
        amounts: list[tuple[int, int]] = []
        for symbol, amount in parsed.items():
            try:
                z = atomic_number_of(symbol)
            except ValueError:
                raise ValueError(f"composition={text!r}: {symbol!r} is not an element symbol") from None
            if z not in SELECTED_ATOMIC_NUMBERS:
                raise ValueError(f"composition={text!r}: {symbol} is an element MatterGen cannot generate "
                                 "(noble gases, Tc, Pm and Z >= 84 are excluded from its training data)")
            if not math.isclose(amount, round(amount), abs_tol=1e-8) or round(amount) < 1:
                raise ValueError(f"composition={text!r}: {symbol}{amount:g} is not a whole number of atoms per formula "
                                 "unit; write the integer formula (e.g. Li2O4 for Li0.5O)")
            amounts.append((z, int(round(amount))))
        if not amounts:
            raise ValueError(f"composition={text!r} has no atoms")
        out = cls(formula=text, amounts=tuple(amounts), formula_units=formula_units)
        if out.num_atoms > max_atoms:
            raise ValueError(
                f"composition={text!r} with formula_units={formula_units} has {out.num_atoms} atoms per cell; "
                f"the model was trained on cells of at most {max_atoms} atoms (MP-20), so it cannot make this one"
            )
        return out

    @property
    def num_atoms(self) -> int:
        """Atoms in the cell: the formula's atom count × formula units."""
        return self.formula_units * sum(n for _, n in self.amounts)

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        """Z of every atom of the cell, element by element in the formula's order (``(num_atoms,)``)."""
        return tuple(z for z, n in self.amounts for _ in range(n * self.formula_units))

    @property
    def cell_amounts(self) -> tuple[tuple[int, int], ...]:
        """``((Z, atoms in the cell), ...)``: the formula's amounts × formula units."""
        return tuple((z, n * self.formula_units) for z, n in self.amounts)

    @property
    def cell_formula(self) -> str:
        """The cell's formula, e.g. ``"Li4Mn2O6"`` for Li2MnO3 × 2."""
        return "".join(f"{symbol_of(z)}{n * self.formula_units if n * self.formula_units > 1 else ''}" for z, n in self.amounts)

    @property
    def counts(self) -> dict[str, int]:
        """``{symbol: atoms in the cell}``."""
        return {symbol_of(z): n * self.formula_units for z, n in self.amounts}

    def to_dict(self) -> dict[str, Any]:
        """What a run record stores (``sampling.json``): the formula as given, formula units and the cell."""
        return {"formula": self.formula, "formula_units": self.formula_units, "cell": self.cell_formula}

    def __str__(self) -> str:
        return self.cell_formula
