"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data directory (``$MATTERGEN_LAB_DATA`` or the default locations).

    Skips the data tests when it is absent, except under ``MATTERGEN_LAB_CI=1`` (``tests/must_run.py``), where
    that is a failure.
    """
    from must_run import skip_or_fail as give_up

    from mattergen_lab.data.paths import DataNotFoundError, default_data_dir

    try:
        path = default_data_dir()
    except DataNotFoundError as exc:
        give_up(f"shared data not available: {exc}")
    if not (path / "mp_20").is_dir():
        give_up(f"no mp_20/ under the data directory {path}")
    return path


@pytest.fixture(scope="session")
def trained_tiny(data_dir, tmp_path_factory):
    """A tiny model trained once per session on 1,900 MP-20 crystals (about 4 min on 2 idle cores).

    Returns ``(checkpoint_dir, TrainResult, initial_val_loss)``.
    """
    import torch

    from mattergen_lab.data import load_mp20
    from mattergen_lab.model.score_model import ScoreModel
    from mattergen_lab.noise.joint import JointDiffusion
    from mattergen_lab.training.trainer import TrainConfig, evaluate_loss, train

    train_data, val_data = load_mp20("val", data_dir=data_dir).subset(range(2000)).split_validation(0.05, seed=0)
    cfg = TrainConfig(preset="tiny", max_steps=2000, batch_size=32, val_every=500, lr=3e-3, seed=0)
    torch.manual_seed(cfg.seed)
    untrained = ScoreModel.from_preset("tiny")
    initial = evaluate_loss(
        untrained, val_data, JointDiffusion(), batch_size=32, max_batches=20, seed=0,
        dtype=torch.float32, device=torch.device("cpu"),
    )["loss"]
    out = tmp_path_factory.mktemp("tiny_run")
    result = train(cfg, train_data, val_data, out)
    return result.checkpoint_dir, result, initial


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: loops of many small ops are ~20x slower with OpenMP spinning on a loaded 2-core box."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
