"""The parts of the training recipe that are not the loop: learning-rate schedule, EMA, scale-factor fitting,
classifier-free-guidance dropout and the seeded generators.

* **Schedule** ``"wsd"`` (warm-up, stable, decay): linear warm-up over ``warmup_steps``, the constant peak rate,
  then a cosine decay to ``min_lr`` over the last ``decay_steps`` of ``max_steps``. A run in its stable phase can
  be extended (a larger ``max_steps``) without a jump in the rate, which is what an open-ended CPU run resumed
  session after session needs. ``"plateau"`` is the official recipe (reduce-on-plateau of the epoch's train loss).
* **EMA** of the weights (``torch.optim.swa_utils.AveragedModel``) with the usual warm-up of the decay,
  ``min(decay, (1 + n) / (10 + n))``; validation, checkpoints' ``model.safetensors`` and sampling use it.
* **Scale factors** fitted on real, noised training crystals before the first step (:mod:`~mattergen_lab.model.scaling`).
* **Guidance dropout** (:func:`condition_keep`): each condition of a labelled crystal dropped with ``p_unconditional``.
* **Seeds** (:func:`seeded`): every random draw of a run comes from a generator seeded with a tuple of integers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.model.scaling import fit_scale_factors
from mattergen_lab.noise.joint import JointDiffusion
from mattergen_lab.training.config import Dataset, TrainConfig


def seeded(*parts: int) -> torch.Generator:
    """A CPU generator seeded from ``parts`` (e.g. ``(seed, rank, step)``): the same parts, the same numbers."""
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % (2**62)
    return torch.Generator().manual_seed(seed)


def condition_keep(
    batch: CrystalBatch, names: tuple[str, ...], p_unconditional: float, *, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Classifier-free-guidance dropout for training (spec §4.3).

    A crystal may use its conditional embeddings only if it is labelled for *all* conditioned properties
    (missing labels: NaN or None); each property is then dropped independently with probability
    ``p_unconditional``. Returns ``{name: (B,) bool}``, True where the condition is used.
    """
    if not names:
        return {}
    b = len(batch)
    labelled = torch.ones(b, dtype=torch.bool)
    for name in names:
        value = batch.properties.get(name)
        if value is None:
            labelled[:] = False
        elif isinstance(value, torch.Tensor):
            labelled &= torch.isfinite(value.detach().double()).cpu()
        else:
            labelled &= torch.tensor([v is not None for v in value])
    return {name: (labelled & (torch.rand(b, generator=generator) >= p_unconditional)).to(batch.device) for name in names}


def learning_rate(config: TrainConfig, step: int) -> float:
    """The ``"wsd"`` learning rate for optimizer step ``step`` (0-based)."""
    peak = config.lr
    if config.warmup_steps and step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    decay_start = config.max_steps - config.decay_steps
    if config.decay_steps and step >= decay_start:
        progress = min(1.0, (step - decay_start + 1) / config.decay_steps)
        return config.min_lr + (peak - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return peak


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` whose decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates."""

    def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)  # averaged += (1 - d) (current - averaged), all at once

    return AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)


def fit_scales_on_data(
    model: nn.Module,
    data: Dataset,
    diffusion: JointDiffusion,
    *,
    num_batches: int,
    batch_size: int,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, float]:
    """Fit the model's scale factors on ``num_batches`` seeded random batches of noised training crystals."""
    gen = seeded(seed, 5)
    n = min(batch_size, len(data))
    inputs = []  # (noisy batch, t): corrupted once, then seen by every factor's fit
    for k in range(num_batches):
        batch = data.get_batch(torch.randperm(len(data), generator=gen)[:n], dtype=dtype).to(device)
        g = seeded(seed, 6, k)
        t = diffusion.sample_time(len(batch), generator=g, dtype=batch.lattice.dtype, device=batch.device)
        noisy, _ = diffusion.corrupt(batch, t, generator=g)
        inputs.append((noisy, t))

    def run(m: nn.Module, item: tuple) -> object:
        return m(*item)

    was_training = model.training
    model.train()  # the training-mode network (no element mask), as in the loss
    try:
        return fit_scale_factors(model, run, inputs)
    finally:
        model.train(was_training)
