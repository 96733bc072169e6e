"""Validation loss with fixed noise, per field and per noise level.

The times are *stratified*: crystal ``i`` of a validation batch gets ``t`` drawn uniformly inside bin
``i mod num_bins`` of ``[T_MIN, 1]``. The overall mean is then an unbiased, lower-variance estimate of the
training objective (t ~ U), and each bin's mean tells where the model has learned: e.g. ``val_pos_t0``
(t in the lowest fifth) is the coordinate loss near the data, ``val_atomic_numbers_t4`` the type loss with
(almost) everything masked.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist

from mattergen_lab.noise.joint import JointDiffusion
from mattergen_lab.training.config import Dataset
from mattergen_lab.training.loss import loss_per_crystal
from mattergen_lab.training.recipe import condition_keep, seeded

#: Number of noise-level bins reported by :func:`evaluate_loss`.
NUM_T_BINS = 5
T_MIN = 1e-5
FIELDS = ("loss", "pos", "cell", "atomic_numbers")


def stratified_times(n: int, generator: torch.Generator, num_bins: int = NUM_T_BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, bin)`` for ``n`` crystals: crystal i in bin ``i mod num_bins``, t uniform inside it."""
    bins = torch.arange(n) % num_bins
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    t = T_MIN + (1 - T_MIN) * (bins + u) / num_bins
    return t, bins


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum of ``values`` over the processes of a DDP run (the values themselves on one process)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def evaluate_loss(
    model: torch.nn.Module,
    data: Dataset,
    diffusion: JointDiffusion,
    *,
    batch_size: int,
    max_batches: int,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """Mean loss terms over (a deterministic part of) ``data`` with fixed noise; averaged over processes.

    Keys: ``loss, pos, cell, atomic_numbers`` (all crystals) and ``<field>_t<k>`` for bin k of
    :data:`NUM_T_BINS` (bin 0: the lowest noise).
    """
    was_training = model.training
    model.train()  # the loss is defined on the training-mode network (no element mask)
    keys = list(FIELDS) + [f"{f}_t{k}" for k in range(NUM_T_BINS) for f in FIELDS]
    sums = dict.fromkeys(keys, 0.0)
    counts = dict.fromkeys(keys, 0.0)
    idx = torch.arange(len(data))[rank::world]
    with torch.no_grad():
        for k in range(min(max_batches, math.ceil(len(idx) / batch_size))):
            chunk = idx[k * batch_size : (k + 1) * batch_size]
            if len(chunk) == 0:
                break
            batch = data.get_batch(chunk, dtype=dtype).to(device)
            keep = condition_keep(batch, getattr(model, "conditions", ()), 0.0, generator=seeded(seed, 8, k))  # labelled: conditional
            fn = functools.partial(model, cond_keep=keep) if keep else model
            t, bins = stratified_times(len(chunk), seeded(seed, 9, k))
            terms = loss_per_crystal(fn, batch, diffusion, generator=seeded(seed, 7, k), t=t.to(device=device, dtype=dtype))
            for field in FIELDS:
                values = terms[field].detach().double().cpu()
                sums[field] += float(values.sum())
                counts[field] += len(values)
                for b in range(NUM_T_BINS):
                    sel = values[bins == b]
                    sums[f"{field}_t{b}"] += float(sel.sum())
                    counts[f"{field}_t{b}"] += len(sel)
    model.train(was_training)
    totals = all_sum([sums[k] for k in keys] + [counts[k] for k in keys], device)
    n = len(keys)
    return {key: totals[i] / max(totals[n + i], 1.0) for i, key in enumerate(keys)}
