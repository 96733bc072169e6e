"""``ChemicalSystem``: a set of elements, parsed once and passed on as one value.

The element mask of the sampler, the chemical-system adapter's multi-hot embedding and the design app all take
this value, so ``"li, fe-O"`` means the same thing everywhere: ``str(ChemicalSystem.parse("li, fe-O")) ==
"Fe-Li-O"`` (sorted symbols, MatterGen's convention), and ``.atomic_numbers == (26, 3, 8)`` in that order.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mattergen_lab.constants import MAX_ATOMIC_NUM, SELECTED_ATOMIC_NUMBERS


@functools.lru_cache(maxsize=1)
def _symbols() -> tuple[str, ...]:
    """Element symbols indexed by Z (index 0 unused), up to Z = 100."""
    from pymatgen.core.periodic_table import Element

    return ("",) + tuple(Element.from_Z(z).symbol for z in range(1, MAX_ATOMIC_NUM + 1))


def symbol_of(z: int) -> str:
    return _symbols()[z]


def atomic_number_of(symbol: str) -> int:
    """Z of an element symbol (any case: ``"fe"`` is Fe); ``ValueError`` names an unknown symbol."""
    if not isinstance(symbol, str):
        raise ValueError(f"element {symbol!r} must be a symbol like 'Fe'")
    sym = symbol.strip()[:1].upper() + symbol.strip()[1:].lower()
    try:
        return _symbols().index(sym, 1)  # index 0 is the empty placeholder
    except ValueError:
        raise ValueError(f"{symbol!r} is not an element symbol (Z <= {MAX_ATOMIC_NUM})") from None


@dataclass(frozen=True)
class ChemicalSystem:
    """A non-empty set of elements, stored as atomic numbers in the order of their sorted symbols."""

    atomic_numbers: tuple[int, ...]

    def __post_init__(self) -> None:
        zs = self.atomic_numbers
        if not zs or any(isinstance(z, bool) or not isinstance(z, int) or not 1 <= z <= MAX_ATOMIC_NUM for z in zs):
            raise ValueError(f"ChemicalSystem: atomic_numbers={zs!r} must be a non-empty set of Z in 1-{MAX_ATOMIC_NUM}")
        object.__setattr__(self, "atomic_numbers", tuple(sorted(set(zs), key=symbol_of)))

    @classmethod
    def parse(cls, text: "str | ChemicalSystem | Iterable[str | int]") -> "ChemicalSystem":
        """From ``"Li-Fe-O"``, ``"Li, Fe, O"``, ``"li fe o"``, a list of symbols or atomic numbers, or a ChemicalSystem.

        ``ValueError`` names the empty text or the token that is not an element.
        """
        if isinstance(text, ChemicalSystem):
            return text
        if isinstance(text, str):
            if not text.strip():
                raise ValueError(f"chemical system {text!r} is empty; write it like 'Li-Fe-O'")
            tokens: list[str | int] = [t for t in re.split(r"[\s,;\-]+", text.strip()) if t]
            if not tokens:  # "-", ", ": separators only
                raise ValueError(f"chemical system {text!r} names no element; write it like 'Li-Fe-O'")
        else:
            try:
                tokens = list(text)
            except TypeError:
                raise ValueError(f"chemical system {text!r} must be text like 'Li-Fe-O' or a list of elements") from None
            if not tokens:
                raise ValueError("chemical system [] is empty; write it like 'Li-Fe-O'")
        zs = []
        for tok in tokens:
            if isinstance(tok, int) and not isinstance(tok, bool):
                if not 1 <= tok <= MAX_ATOMIC_NUM:
                    raise ValueError(f"chemical system {text!r}: Z={tok} is not an element (1-{MAX_ATOMIC_NUM})")
                zs.append(tok)
                continue
            try:
                if not isinstance(tok, str):
                    raise ValueError
                zs.append(atomic_number_of(tok))
            except ValueError:
                raise ValueError(f"chemical system {text!r}: {tok!r} is not an element symbol") from None
        return cls(tuple(zs))

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(symbol_of(z) for z in self.atomic_numbers)

    def require_generatable(self) -> "ChemicalSystem":
        """Itself, or ``ValueError`` naming an element MatterGen never generates (noble gases, Tc, Pm, Z >= 84)."""
        bad = [s for z, s in zip(self.atomic_numbers, self.symbols) if z not in SELECTED_ATOMIC_NUMBERS]
        if bad:
            raise ValueError(
                f"chemical system {str(self)!r}: {', '.join(bad)} is an element MatterGen cannot generate "
                "(noble gases, Tc, Pm and Z >= 84 are excluded)"
            )
        return self

    def __str__(self) -> str:
        return "-".join(self.symbols)

    def __iter__(self) -> Iterator[int]:
        return iter(self.atomic_numbers)

    def __len__(self) -> int:
        return len(self.atomic_numbers)
