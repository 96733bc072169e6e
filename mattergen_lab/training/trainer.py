"""Training loop: Adam, gradient clipping by value, warm-up/decay or reduce-on-plateau, EMA, validation,
resumable checkpoints. :class:`TrainConfig` lives in :mod:`~mattergen_lab.training.config`, the recipe's parts
in :mod:`~mattergen_lab.training.recipe`, validation in :mod:`~mattergen_lab.training.validation`.

A fresh model first has its scale factors fitted on noised training crystals (``fit_scale_factors``). With
``ema_decay > 0`` the checkpoints' ``model.safetensors`` holds the EMA weights (used for validation, "best" and
sampling); the raw weights travel in ``trainer_state.pt``.

Runs on one process, or data-parallel under ``torchrun`` (PyTorch DDP; gloo on CPU, nccl on CUDA):

    torchrun --nproc_per_node 2 -m mattergen_lab.cli train --data-dir ... --out runs/x

Determinism: the model is initialised from ``seed``; the epoch order comes from a generator seeded with
``(seed, epoch)``; the noise of step ``k`` on rank ``r`` from a generator seeded with ``(seed, r, k)``. A run
resumed from its checkpoint therefore continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mattergen_lab.model.io import Checkpoint, load_local_checkpoint, save_checkpoint
from mattergen_lab.model.score_model import ScoreModel, preset_config
from mattergen_lab.noise.joint import DiffusionConfig, JointDiffusion
from mattergen_lab.training.config import DTYPES, Dataset, TrainConfig
from mattergen_lab.training.loss import diffusion_loss
from mattergen_lab.training.recipe import condition_keep, fit_scales_on_data, learning_rate, make_ema, seeded
from mattergen_lab.training.validation import all_sum, evaluate_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_val_loss: float
    checkpoint_dir: Path


def _distributed() -> tuple[int, int]:
    """(rank, world_size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world


def _all_mean(values: list[float], device: torch.device) -> list[float]:
    world = dist.get_world_size() if dist.is_initialized() else 1
    return [v / world for v in all_sum(values, device)]


def train(
    config: TrainConfig,
    train_data: Dataset,
    val_data: Dataset | None,
    out_dir: str | os.PathLike,
    *,
    init_from: Checkpoint | None = None,
    resume: bool = True,
    diffusion_config: DiffusionConfig | None = None,
    extra_config: dict[str, Any] | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a score model and write checkpoints to ``out_dir/last`` and ``out_dir/best``.

    Args:
        init_from: start from these weights (fine-tuning) instead of a fresh ``config.preset``.
        resume: continue from ``out_dir/last`` when it holds a trainer state.
        extra_config: plain data stored in each checkpoint's config (e.g. the data description).
        callback: called on rank 0 with the metrics of every step (progress bars, notebooks).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)
    try:
        return _train(config, train_data, val_data, Path(out_dir), init_from, resume, diffusion_config, extra_config, callback)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(
    config: TrainConfig,
    train_data: Dataset,
    val_data: Dataset | None,
    out_dir: Path,
    init_from: Checkpoint | None,
    resume: bool,
    diffusion_config: DiffusionConfig | None,
    extra_config: dict[str, Any] | None,
    callback: Callable[[dict[str, float]], None] | None,
) -> TrainResult:
    rank, world = _distributed()
    device = torch.device(config.device)
    if device.type == "cuda" and world > 1 and device.index is None:  # one GPU per torchrun process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dtype = DTYPES[config.dtype]
    if len(train_data) < config.batch_size * world:
        raise ValueError(
            f"training set has {len(train_data)} crystals, fewer than batch_size={config.batch_size} x {world} process(es)"
        )

    torch.manual_seed(config.seed)
    model = init_from.model if init_from is not None else ScoreModel(preset_config(config.preset, **config.model_overrides))
    model = model.to(device=device, dtype=dtype)
    diffusion = JointDiffusion(diffusion_config or DiffusionConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_lr
    )
    step, epoch, best_val, history, epoch_loss_sum = 0, 0, float("inf"), [], 0.0
    scale_factors: dict[str, float] = {}
    last_dir, best_dir = out_dir / "last", out_dir / "best"
    resuming = resume and (last_dir / "trainer_state.pt").exists()
    if resuming:
        ckpt = load_local_checkpoint(last_dir, map_location=device, with_trainer_state=True)
        state = ckpt.trainer_state or {}
        model.load_state_dict(state.get("raw_model", ckpt.model.state_dict()))  # older states: no EMA
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, best_val = int(state["step"]), int(state["epoch"]), float(state["best_val"])
        epoch_loss_sum = float(state["epoch_loss_sum"])
        history = list(ckpt.config.get("training", {}).get("history", []))
        scale_factors = dict(ckpt.config.get("training", {}).get("fitted_scale_factors", {}))
        log.info("resumed from %s at step %d", last_dir, step)
    elif init_from is None and config.fit_scale_factors:
        scale_factors = fit_scales_on_data(
            model, train_data, diffusion, num_batches=config.scale_fit_batches, batch_size=config.batch_size,
            seed=config.seed, dtype=dtype, device=device,
        )
    ema = make_ema(model, config.ema_decay) if config.ema_decay > 0 else None
    if ema is not None and resuming and "ema" in state:
        ema.load_state_dict(state["ema"])
    eval_model = ema.module if ema is not None else model

    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(model.config.condition_on_adapt),
        )

    base_config = {
        "diffusion": diffusion.config.to_dict(),
        "num_atoms_distribution": train_data.num_atoms_distribution().to_dict(),
        **(extra_config or {}),
    }

    def checkpoint(directory: Path, val: float) -> None:
        if rank != 0:
            return
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "epoch": epoch,
            "best_val": best_val,
            "epoch_loss_sum": epoch_loss_sum,
        }
        if ema is not None:
            trainer_state.update(raw_model=model.state_dict(), ema=ema.state_dict())
        training = {
            "config": config.to_dict(), "step": step, "epoch": epoch, "val_loss": val, "history": history,
            "weights": "ema" if ema is not None else "raw", "fitted_scale_factors": scale_factors,
        }
        save_checkpoint(directory, eval_model, {**base_config, "training": training}, trainer_state=trainer_state)

    per_rank = len(train_data) // world
    steps_per_epoch = per_rank // config.batch_size
    t_start = time.perf_counter()
    ddp_model.train()
    while step < config.max_steps:
        order = torch.randperm(len(train_data), generator=seeded(config.seed, 1, epoch))
        shard = order[rank::world][:per_rank]
        for k in range(step - epoch * steps_per_epoch, steps_per_epoch):
            if step >= config.max_steps:
                break
            idx = shard[k * config.batch_size : (k + 1) * config.batch_size]
            batch = train_data.get_batch(idx, dtype=dtype).to(device)
            keep = condition_keep(batch, model.conditions, config.p_unconditional, generator=seeded(config.seed, 3, rank, step))
            fn = functools.partial(ddp_model, cond_keep=keep) if keep else ddp_model
            loss, metrics = diffusion_loss(fn, batch, diffusion, generator=seeded(config.seed, 2, rank, step))
            if config.lr_schedule == "wsd":
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), config.grad_clip_value)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            names = sorted(metrics)
            row = {"step": float(step), "epoch": float(epoch), "lr": optimizer.param_groups[0]["lr"]}
            row.update({f"train_{n}": v for n, v in zip(names, _all_mean([metrics[n] for n in names], device))})
            epoch_loss_sum += row["train_loss"]
            if step == epoch * steps_per_epoch + steps_per_epoch:  # the epoch is complete
                if config.lr_schedule == "plateau":
                    scheduler.step(epoch_loss_sum / steps_per_epoch)
                epoch, epoch_loss_sum = epoch + 1, 0.0
            if step % config.val_every == 0 or step == config.max_steps:
                if val_data is not None and len(val_data):
                    val = evaluate_loss(
                        eval_model, val_data, diffusion, batch_size=config.batch_size, max_batches=config.max_val_batches,
                        seed=config.seed, dtype=dtype, device=device, rank=rank, world=world,
                    )
                    row.update({f"val_{n}": v for n, v in val.items()})
                val_loss = row.get("val_loss", row["train_loss"])
                row["wall_s"] = time.perf_counter() - t_start
                row["crystals_seen"] = float(step * config.batch_size * world)
                history.append(row)
                if val_loss < best_val:
                    best_val = val_loss
                    checkpoint(best_dir, val_loss)
                checkpoint(last_dir, val_loss)
                log.info("step %d: %s", step, {n: round(v, 4) for n, v in row.items()})
            if rank == 0 and callback is not None:
                callback(row)
    if world > 1:
        dist.barrier()
    return TrainResult(history=history, best_val_loss=best_val, checkpoint_dir=best_dir if best_dir.exists() else last_dir)

