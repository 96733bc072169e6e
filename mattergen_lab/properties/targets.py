"""Interval targets: condition on several values across a range, then keep what lands inside it.

MatterGen conditions on one value per property. Users ask for ranges ("bulk modulus between 150 and
250 GPa"). :func:`sweep_interval` does the simple, honest thing: sample at several target values spread over
``[low, high]``, measure every sample with an oracle (HHI, spglib, an ML bulk modulus, ...), and keep the
samples whose measured value falls inside the interval. The per-structure table is the primary result, so
the hit rate per target is visible, not only the survivors::

    from mattergen_lab.properties import checkpoint_sample_fn, hhi_score, sweep_interval

    fn = checkpoint_sample_fn("runs/hhi/best", "hhi_score", guidance_scale=2.0)
    result = sweep_interval(fn, hhi_score, low=1000, high=1500, n_targets=3, samples_per_target=16)
    result.summary()        # per target: samples, inside, hit rate, median value
    result.structures       # the kept crystals
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

#: ``sample_fn(target_value, n) -> n structures`` generated conditioned on ``target_value``.
SampleFn = Callable[[float, int], Sequence["Structure"]]
#: ``oracle(structure) -> measured property value``.
Oracle = Callable[["Structure"], float]

TABLE_COLUMNS = ("index", "target", "sample", "value", "inside", "formula", "error")


@dataclass(frozen=True)
class IntervalResult:
    """Outcome of :func:`sweep_interval`.

    Attributes:
        low, high: the interval (inclusive), in the oracle's units.
        targets: the target values that were sampled.
        table: one row per generated structure: ``index`` (position in ``all_structures``), ``target``,
            ``sample`` (position within that target's batch), ``value`` (oracle; NaN if it failed),
            ``inside`` (``low <= value <= high``), ``formula`` (reduced), ``error`` (oracle error or ``None``).
        structures: the kept structures (``inside``), in table order.
        all_structures: every generated structure.
    """

    low: float
    high: float
    targets: tuple[float, ...]
    table: pd.DataFrame
    structures: list
    all_structures: list

    @property
    def kept(self) -> pd.DataFrame:
        """The rows of :attr:`table` that fell inside the interval."""
        return self.table[self.table["inside"]]

    @property
    def hit_rate(self) -> float:
        """Fraction of all generated structures inside the interval (NaN if none were generated)."""
        return float(self.table["inside"].mean()) if len(self.table) else float("nan")

    def summary(self) -> pd.DataFrame:
        """Per target: ``n`` samples, ``n_inside``, ``hit_rate``, ``n_failed`` (oracle errors), ``median`` value."""
        grouped = self.table.groupby("target", sort=True)
        return pd.DataFrame(
            {
                "n": grouped.size(),
                "n_inside": grouped["inside"].sum().astype(int),
                "hit_rate": grouped["inside"].mean(),
                "n_failed": grouped["error"].apply(lambda e: int(e.notna().sum())),
                "median": grouped["value"].median(),
            }
        )


def _finite_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}={value!r} must be a number")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}={value!r} must be finite")
    return float(value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


def _formula(structure: Any) -> str | None:
    composition = getattr(structure, "composition", None)
    return composition.reduced_formula if composition is not None else None


def sweep_interval(
    sample_fn: SampleFn,
    oracle: Oracle,
    *,
    low: float,
    high: float,
    targets: Sequence[float] | None = None,
    n_targets: int = 3,
    samples_per_target: int = 8,
    on_error: str = "record",
) -> IntervalResult:
    """Sample at several targets over ``[low, high]`` and keep the samples the oracle places inside.

    Args:
        sample_fn: ``sample_fn(target, n)`` returns ``n`` structures conditioned on ``target``
            (e.g. :func:`checkpoint_sample_fn`).
        oracle: ``oracle(structure)`` returns the measured value, in the same units as ``low``/``high``.
        low, high: the interval, inclusive; finite with ``low < high``.
        targets: the target values; default ``linspace(low, high, n_targets)`` (the midpoint if
            ``n_targets == 1``). Targets outside the interval are allowed (e.g. to push a skewed model).
        n_targets: number of default targets.
        samples_per_target: structures requested per target.
        on_error: ``"record"`` stores an oracle failure in the ``error`` column (value NaN, not inside) and
            goes on; ``"raise"`` re-raises it.

    Raises:
        ValueError: a bad argument (the message names it).
    """
    low = _finite_number("low", low)
    high = _finite_number("high", high)
    if not low < high:
        raise ValueError(f"low={low!r} must be smaller than high={high!r}")
    samples_per_target = _positive_int("samples_per_target", samples_per_target)
    if on_error not in ("record", "raise"):
        raise ValueError(f"on_error={on_error!r} must be 'record' or 'raise'")
    if not callable(sample_fn):
        raise ValueError(f"sample_fn={sample_fn!r} must be callable as sample_fn(target, n)")
    if not callable(oracle):
        raise ValueError(f"oracle={oracle!r} must be callable as oracle(structure)")
    if targets is None:
        n_targets = _positive_int("n_targets", n_targets)
        values = [(low + high) / 2] if n_targets == 1 else np.linspace(low, high, n_targets).tolist()
    else:
        if isinstance(targets, (str, bytes)) or not isinstance(targets, (Sequence, np.ndarray)):
            raise ValueError(f"targets={targets!r} must be a sequence of numbers")
        values = [_finite_number(f"targets[{i}]", t) for i, t in enumerate(targets)]
        if not values:
            raise ValueError("targets=[] is empty; give at least one target value")

    rows: list[dict[str, Any]] = []
    generated: list = []
    for target in values:
        structures = list(sample_fn(target, samples_per_target))
        if len(structures) != samples_per_target:
            log.warning(
                "sample_fn returned %d structures for target %g (asked for %d)", len(structures), target, samples_per_target
            )
        for j, structure in enumerate(structures):
            value, error = float("nan"), None
            try:
                value = float(oracle(structure))
            except Exception as exc:
                if on_error == "raise":
                    raise
                error = f"{type(exc).__name__}: {exc}"
                log.warning("oracle failed on sample %d of target %g: %s", j, target, error)
            rows.append(
                {
                    "index": len(generated),
                    "target": target,
                    "sample": j,
                    "value": value,
                    "inside": bool(math.isfinite(value) and low <= value <= high),
                    "formula": _formula(structure),
                    "error": error,
                }
            )
            generated.append(structure)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table["inside"] = table["inside"].astype(bool)
    kept = [generated[i] for i in table.loc[table["inside"], "index"]]
    log.info(
        "interval [%g, %g]: %d of %d samples inside over %d targets", low, high, len(kept), len(generated), len(values)
    )
    return IntervalResult(low, high, tuple(values), table, kept, generated)


def checkpoint_sample_fn(
    checkpoint: str | os.PathLike,
    property_name: str,
    *,
    guidance_scale: float = 2.0,
    num_steps: int | None = None,
    seed: int = 0,
    conditions: Mapping[str, Any] | None = None,
    **sample_kwargs: Any,
) -> SampleFn:
    """A ``sample_fn(target, n)`` for :func:`sweep_interval` that samples a conditioned checkpoint.

    Each call runs :func:`mattergen_lab.sampling.api.sample` with ``conditions={**conditions, property_name:
    target}``. Call ``k`` (0, 1, ...) uses ``seed + k``, so the batches for different targets are independent
    and the whole sweep is reproducible. The checkpoint is loaded on every call.

    Args:
        checkpoint: registry name or path of a checkpoint conditioned on ``property_name``.
        property_name: the swept property, e.g. ``"hhi_score"``.
        guidance_scale: classifier-free guidance γ (2.0 as in MatterGen's README examples; 0 = unconditional).
        num_steps: sampler steps (default: the checkpoint's recommended count; 1000 for official checkpoints).
        seed: base seed.
        conditions: other conditions held fixed, e.g. ``{"dft_mag_density": 0.2}``.
        **sample_kwargs: passed to ``sample`` (``batch_size``, ``num_atoms``, ``elements``, ``device``).
    """
    if not isinstance(property_name, str) or not property_name:
        raise ValueError(f"property_name={property_name!r} must be a property name such as 'hhi_score'")
    guidance_scale = _finite_number("guidance_scale", guidance_scale)
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale={guidance_scale!r} must be >= 0")
    num_steps = None if num_steps is None else _positive_int("num_steps", num_steps)
    fixed = dict(conditions or {})
    if property_name in fixed:
        raise ValueError(f"{property_name!r} is the swept property; remove it from conditions={fixed!r}")
    calls = itertools.count()

    def sample_fn(target: float, n: int) -> list:
        from mattergen_lab.sampling import api

        return api.sample(
            checkpoint,
            n,
            conditions={**fixed, property_name: target},
            guidance_scale=guidance_scale,
            num_steps=num_steps,
            seed=seed + next(calls),
            **sample_kwargs,
        )

    return sample_fn
