"""Fit GemNet's scale factors to an architecture, the way GemNet does it (Gasteiger et al., "automatic fit").

Every :class:`~mattergen_lab.model.layers.ScaleFactor` multiplies a sum of many messages. Its right value depends
on the layer widths, the number of radial functions and the neighbour count, so the values fitted for the official
512-wide network over-amplify a small one (at initialisation the coordinate loss of the ``small`` preset was
hundreds to thousands per crystal, the official preset's 4-5).

:func:`fit_scale_factors` runs noisy training batches through the freshly initialised network and sets each factor,
in the order the forward pass reaches them, so that its output has unit second moment. Later factors are fitted
with the earlier ones already in place, since their inputs depend on them. The fitted values are ``scale_factor``
parameters, so they are saved with the weights; official checkpoints keep the values they store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mattergen_lab.model.layers import ScaleFactor

log = logging.getLogger(__name__)

#: ``run(model, item)``: one forward pass of the model on one item of the fitting inputs (e.g. a noisy batch and t).
ForwardFn = Callable[[nn.Module, Any], object]


def scale_factors_in_call_order(model: nn.Module, run: ForwardFn, batch: Any) -> list[tuple[str, ScaleFactor]]:
    """``[(name, module)]`` of the model's scale factors in the order one forward pass calls them."""
    modules = {m: name for name, m in model.named_modules() if isinstance(m, ScaleFactor)}
    order: list[ScaleFactor] = []
    handles = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod) if mod not in order else None) for m in modules]
    try:
        with torch.no_grad():
            run(model, batch)
    finally:
        for h in handles:
            h.remove()
    return [(modules[m], m) for m in order]


def fit_scale_factors(
    model: nn.Module, run: ForwardFn, batches: Sequence[Any], *, eps: float = 1e-12
) -> dict[str, float]:
    """Set every scale factor so that its output has unit second moment over ``batches``; returns the values.

    Args:
        run: ``run(model, item)`` runs the model on one item of ``batches``.
        batches: the fitting inputs, fixed so every factor sees the same ones (e.g. 8 noised training batches with
            their times); more give a steadier estimate.
    """
    if not batches:
        raise ValueError("fit_scale_factors needs at least one batch")
    ordered = scale_factors_in_call_order(model, run, batches[0])
    fitted: dict[str, float] = {}
    for name, module in ordered:
        module.scale_factor.data.fill_(1.0)
        sq_sum, count = 0.0, 0

        def observe(_mod: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            nonlocal sq_sum, count
            x = inputs[0].detach().double()
            sq_sum += float((x * x).sum())
            count += x.numel()

        handle = module.register_forward_hook(observe)
        try:
            with torch.no_grad():
                for batch in batches:
                    run(model, batch)
        finally:
            handle.remove()
        rms = (sq_sum / max(count, 1)) ** 0.5
        value = 1.0 / rms if rms > eps else 1.0
        module.scale_factor.data.fill_(value)
        fitted[name] = value
    log.info("fitted %d scale factors: %s", len(fitted), {k: round(v, 4) for k, v in fitted.items()})
    return fitted
