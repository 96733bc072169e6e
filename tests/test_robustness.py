"""Issue 12: bad input gets a clear error at the boundary; no guidance factor breaks the hard element mask."""

from __future__ import annotations

import math

import pytest
import torch

from mattergen_lab.chemistry import ChemicalSystem
from mattergen_lab.sampling.api import load_sampler, sample
from mattergen_lab.sampling.steps import mask_logits


def test_mask_holds_for_logits_that_guidance_blew_up():
    allowed = torch.zeros(101, dtype=torch.bool)
    allowed[[2, 25, 7]] = True  # classes of Li, Fe, O
    logits = torch.randn(6, 101) * 1e9
    logits[0] = math.inf
    logits[1] = -math.inf
    logits[2] = math.nan
    logits[3, 50] = math.inf  # one disallowed class at +inf
    logits[4, 2] = -math.inf  # an allowed class at -inf, the others huge
    masked = mask_logits(logits, allowed)
    assert torch.isfinite(masked).all()
    best = masked.argmax(-1)
    assert allowed[best].all(), best.tolist()


@pytest.mark.parametrize("gamma", [1e9, 1e12, 1e30])
def test_the_chemical_system_mask_holds_at_any_guidance(gamma):
    torch.set_num_threads(1)
    crystals = sample("mgl_mp20_small_chemical_system", 4, batch_size=4, num_steps=10, seed=1,
                      conditions={"chemical_system": "Li-Fe-O"}, guidance_scale=gamma)
    for s in crystals:
        assert {e.symbol for e in s.composition.elements} <= {"Li", "Fe", "O"}, s.composition


@pytest.mark.parametrize("gamma", [math.nan, math.inf, -5, "2", True])
def test_bad_guidance_is_named_for_any_model(gamma):
    for checkpoint in ("mgl_mp20_small", "mgl_mp20_small_chemical_system"):
        with pytest.raises(ValueError, match="guidance_scale="):
            load_sampler(checkpoint, guidance_scale=gamma)


def test_guidance_on_an_unconditional_model_is_refused():
    with pytest.raises(ValueError, match="needs a conditional checkpoint"):
        load_sampler("mgl_mp20_small", guidance_scale=2.0)


def test_zero_steps_is_an_error_not_the_default():
    with pytest.raises(ValueError, match="num_steps=0"):
        load_sampler("mgl_mp20_small", num_steps=0)


@pytest.mark.parametrize("elements, conditions, message", [
    ("", None, "is empty"),
    ("Na-Cl", {"chemical_system": "Li-Fe-O"}, r"elements='Cl-Na' conflicts with the target chemical_system='Fe-Li-O'"),
    ("Li-Xx", None, "Xx"),
])
def test_element_masks_that_mean_nothing_or_conflict_are_errors(elements, conditions, message):
    checkpoint = "mgl_mp20_small_chemical_system" if conditions else "mgl_mp20_small"
    with pytest.raises(ValueError, match=message):
        sample(checkpoint, 2, num_steps=2, elements=elements, conditions=conditions, guidance_scale=1.0 if conditions else 0.0)


def test_a_mask_that_contains_the_target_is_accepted():
    crystals = sample("mgl_mp20_small_chemical_system", 2, num_steps=3, elements="Li-Fe-O-Mn",
                      conditions={"chemical_system": "Li-Fe-O"}, guidance_scale=1.0)
    assert all(set(ChemicalSystem.parse([e.symbol for e in s.composition.elements]).symbols) <= {"Li", "Fe", "O", "Mn"}
               for s in crystals)
