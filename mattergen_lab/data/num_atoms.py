"""Distribution of the number of atoms per cell, used to pick ``n`` before sampling (spec §1.5)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mattergen_lab.constants import ALEX_MP_20_NUM_ATOMS

#: Named tables; the official sampler uses ``ALEX_MP_20`` for every checkpoint.
NUM_ATOMS_TABLES: dict[str, Mapping[int, float]] = {"ALEX_MP_20": ALEX_MP_20_NUM_ATOMS}


@dataclass(frozen=True)
class NumAtomsDistribution:
    """A categorical distribution over atoms per cell.

    Attributes:
        probs: ``{n: p}`` with positive integer ``n`` sorted ascending and ``p`` summing to 1. The constructor
            normalises whatever non-negative weights it is given.
    """

    probs: dict[int, float]

    def __post_init__(self) -> None:
        if not self.probs:
            raise ValueError("NumAtomsDistribution needs at least one entry")
        clean: dict[int, float] = {}
        for n, p in self.probs.items():
            if isinstance(n, bool) or int(n) != n or int(n) < 1:
                raise ValueError(f"number of atoms {n!r} must be a positive integer")
            p = float(p)
            if not math.isfinite(p) or p < 0:
                raise ValueError(f"probability {p!r} for n={n} must be finite and >= 0")
            clean[int(n)] = clean.get(int(n), 0.0) + p
        total = sum(clean.values())
        if total <= 0:
            raise ValueError("NumAtomsDistribution weights sum to 0")
        object.__setattr__(self, "probs", {n: clean[n] / total for n in sorted(clean)})

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_table(cls, name: str) -> "NumAtomsDistribution":
        """A named table, e.g. ``"ALEX_MP_20"`` (normalised)."""
        if name not in NUM_ATOMS_TABLES:
            raise ValueError(f"unknown num-atoms table {name!r}; known: {sorted(NUM_ATOMS_TABLES)}")
        return cls(dict(NUM_ATOMS_TABLES[name]))

    @classmethod
    def from_counts(cls, num_atoms: Any) -> "NumAtomsDistribution":
        """The empirical distribution of an array of per-crystal atom counts, shape ``(B,)``."""
        if isinstance(num_atoms, torch.Tensor):
            num_atoms = num_atoms.detach().cpu().numpy()
        counts = np.asarray(num_atoms).astype(np.int64).ravel()  # (B,)
        if counts.size == 0:
            raise ValueError("cannot build a NumAtomsDistribution from an empty array")
        if (counts < 1).any():
            raise ValueError(f"atom counts must be >= 1, got minimum {int(counts.min())}")
        values, freq = np.unique(counts, return_counts=True)
        return cls({int(n): float(c) for n, c in zip(values, freq)})

    @classmethod
    def from_dict(cls, data: Mapping[Any, float]) -> "NumAtomsDistribution":
        """Inverse of :meth:`to_dict`; keys may be ints or strings of ints (JSON)."""
        try:
            return cls({int(k): float(v) for k, v in data.items()})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a num-atoms table {{n: p}}: {dict(data)!r} ({exc})") from exc

    # ------------------------------------------------------------------ use
    def to_dict(self) -> dict[str, float]:
        """``{str(n): p}``: JSON-ready, as stored in checkpoint ``config.json``."""
        return {str(n): p for n, p in self.probs.items()}

    @property
    def support(self) -> list[int]:
        return list(self.probs)

    @property
    def mean(self) -> float:
        return float(sum(n * p for n, p in self.probs.items()))

    def sample(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``k`` i.i.d. atom counts: ``(k,)`` int64 on CPU, reproducible with ``generator``.

        The draw uses ``torch.multinomial`` on the generator's device (CPU when ``generator`` is ``None``).
        """
        if k < 0:
            raise ValueError(f"number of draws k={k} must be >= 0")
        values = torch.tensor(list(self.probs), dtype=torch.long)  # (M,)
        if k == 0:
            return values.new_zeros(0)
        device = generator.device if generator is not None else torch.device("cpu")
        weights = torch.tensor(list(self.probs.values()), dtype=torch.float64, device=device)  # (M,)
        idx = torch.multinomial(weights, k, replacement=True, generator=generator)  # (k,)
        return values[idx.cpu()]
