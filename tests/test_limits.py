"""``mattergen_lab.limits``: every bound named in its message, with the way around it."""

from __future__ import annotations

import dataclasses
import math

import pytest

from mattergen_lab import limits
from mattergen_lab.limits import ARCHITECTURE_BOUNDS, check_at_most


def test_check_at_most_names_the_value_the_bound_and_the_way_around_it():
    check_at_most("n", 10, 10, "MAX_N")
    for ignored in ("10", None, True, math.nan):  # type and NaN checks are the caller's, with their own message
        check_at_most("n", ignored, 1, "MAX_N")
    with pytest.raises(ValueError, match=r"^n=11 is more than MAX_N=10 \(mattergen_lab.limits\); split it$"):
        check_at_most("n", 11, 10, "MAX_N", "split it")
    with pytest.raises(ValueError, match=r"cutoff=inf is more than MAX_CUTOFF=20 "):
        check_at_most("cutoff", math.inf, 20.0, "MAX_CUTOFF")


def test_every_integer_size_of_the_architecture_has_a_bound_the_official_model_meets():
    from mattergen_lab.model.gemnet import GemNetConfig

    official = GemNetConfig()
    ints = {f.name for f in dataclasses.fields(GemNetConfig) if f.type == "int"}
    assert ints == set(ARCHITECTURE_BOUNDS)
    for name, (limit, constant, _) in ARCHITECTURE_BOUNDS.items():
        assert getattr(official, name) <= limit and getattr(limits, constant) == limit


def test_the_bounds_leave_room_above_what_is_used():
    assert limits.MAX_NUM_STEPS >= 10 * 1000 and limits.MAX_CORRECTOR_STEPS >= 10
    assert limits.MAX_SEED == 2**63 - 1
    assert limits.MAX_CIF_BYTES >= 100 * 20_000  # 100 times a 200-atom P1 CIF
