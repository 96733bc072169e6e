"""Training: determinism, exact resume, config errors, and DDP through torchrun (gloo, 2 processes)."""

import os
import subprocess
import sys

import pytest
import torch

from mattergen_lab.data import load_mp20
from mattergen_lab.model.io import load_local_checkpoint
from mattergen_lab.model.score_model import ScoreModel, preset_config
from mattergen_lab.noise.joint import JointDiffusion
from mattergen_lab.training.loss import diffusion_loss
from mattergen_lab.training.recipe import seeded
from mattergen_lab.training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def small_split(data_dir):
    data = load_mp20("val", data_dir=data_dir).subset(range(64))
    return data.split_validation(0.125, seed=0)


def _cfg(**kw):
    base = dict(preset="tiny", max_steps=6, batch_size=4, val_every=3, lr=1e-3, seed=11)
    base.update(kw)
    return TrainConfig(**base)


def test_training_is_deterministic_and_resumes_exactly(small_split, tmp_path):
    train_data, val_data = small_split
    full = train(_cfg(), train_data, val_data, tmp_path / "full")
    again = train(_cfg(), train_data, val_data, tmp_path / "again")
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in again.history]
    # Stop after 3 steps, then resume to 6: the weights equal the uninterrupted run's.
    train(_cfg(max_steps=3), train_data, val_data, tmp_path / "resumed")
    resumed = train(_cfg(), train_data, val_data, tmp_path / "resumed")
    assert resumed.history[-1]["step"] == 6
    a = load_local_checkpoint(tmp_path / "full" / "last").model.state_dict()
    b = load_local_checkpoint(tmp_path / "resumed" / "last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg = load_local_checkpoint(tmp_path / "full" / "last").config
    assert cfg["training"]["step"] == 6 and "diffusion" in cfg and cfg["num_atoms_distribution"]


def test_bad_training_config_names_the_value(small_split, tmp_path):
    with pytest.raises(ValueError, match="batch_size=0"):
        _cfg(batch_size=0)
    with pytest.raises(ValueError, match="unknown preset 'gigantic'"):
        _cfg(preset="gigantic")
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    train_data, val_data = small_split
    with pytest.raises(ValueError, match="fewer than batch_size=512"):
        train(_cfg(batch_size=512), train_data, val_data, tmp_path / "x")


def test_ddp_two_processes_match_averaged_gradients(data_dir, tmp_path):
    """torchrun with 2 gloo processes equals a manual replay that averages the two ranks' gradients."""
    out = tmp_path / "ddp"
    env = dict(os.environ, MATTERGEN_LAB_DATA=str(data_dir), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "mattergen_lab.cli", "train", "--preset", "tiny", "--splits", "val", "--limit", "64",
        "--val-fraction", "0.125", "--max-steps", "3", "--batch-size", "4", "--val-every", "3",
        "--lr", "1e-3", "--seed", "5", "--out", str(out),
        "--ema-decay", "0", "--no-fit-scales",  # the replay below is plain Adam on the raw weights
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = load_local_checkpoint(out / "last")
    assert ddp.config["training"]["step"] == 3

    # Replay: same init, same shards, same noise, gradients averaged over the two ranks.
    train_data, _ = load_mp20("val", data_dir=data_dir).subset(range(64)).split_validation(0.125, seed=5)
    torch.manual_seed(5)
    model = ScoreModel(preset_config("tiny"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    diffusion = JointDiffusion()
    per_rank = len(train_data) // 2
    order = torch.randperm(len(train_data), generator=seeded(5, 1, 0))
    for step in range(3):
        grads = None
        for rank in range(2):
            idx = order[rank::2][:per_rank][step * 4 : (step + 1) * 4]
            loss, _ = diffusion_loss(model, train_data.get_batch(idx), diffusion, generator=seeded(5, 2, rank, step))
            model.zero_grad()
            loss.backward()
            g = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
            grads = g if grads is None else [x + y for x, y in zip(grads, g)]
        for p, g in zip(model.parameters(), grads):
            p.grad = g / 2
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
        opt.step()
    ours = ddp.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.allclose(ours[key], value, atol=1e-5), key
