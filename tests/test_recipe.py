"""The training recipe: fitted scale factors, the warm-up/stable/decay schedule, EMA weights in checkpoints."""

import math

import pytest
import torch

from mattergen_lab.data import load_mp20
from mattergen_lab.model.io import load_local_checkpoint
from mattergen_lab.model.layers import ScaleFactor
from mattergen_lab.model.score_model import ScoreModel
from mattergen_lab.noise.joint import JointDiffusion
from mattergen_lab.training.loss import diffusion_loss
from mattergen_lab.training.recipe import fit_scales_on_data, learning_rate, seeded
from mattergen_lab.training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def mp20_val(data_dir):
    return load_mp20("val", data_dir=data_dir).subset(range(400))


def _init_losses(model, data, diffusion, batches=4):
    """Mean per-field loss of ``model`` over fixed noised batches of 16 crystals."""
    out = {}
    with torch.no_grad():
        for k in range(batches):
            _, m = diffusion_loss(model, data.get_batch(range(100 + 16 * k, 116 + 16 * k)), diffusion, generator=seeded(3, k))
            for name, value in m.items():
                out[name] = out.get(name, 0.0) + value / batches
    return out


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_fitted_scale_factors_give_unit_outputs_and_sane_initial_losses(preset, mp20_val):
    torch.manual_seed(0)
    model = ScoreModel.from_preset(preset).train()
    diffusion = JointDiffusion()
    before = _init_losses(model, mp20_val, diffusion)
    fitted = fit_scales_on_data(model, mp20_val, diffusion, num_batches=4, batch_size=16, seed=0,
                                dtype=torch.float32, device=torch.device("cpu"))
    n_factors = sum(isinstance(m, ScaleFactor) for m in model.modules())
    assert len(fitted) == n_factors and all(math.isfinite(v) and v > 0 for v in fitted.values())

    # Every scale factor's output has unit second moment on the fitting batches' distribution (fresh noise here).
    rms = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out, n=n: rms.__setitem__(n, float(out.pow(2).mean().sqrt())))
             for n, m in model.named_modules() if isinstance(m, ScaleFactor)]
    after = _init_losses(model, mp20_val, diffusion)
    for h in hooks:
        h.remove()
    assert all(0.3 < v < 3.0 for v in rms.values()), rms
    # The outputs are O(1): every field's loss at initialisation is within a small multiple of its loss when the
    # model predicts zero (coordinates ~6.7, lattice ~1, types ~0.5 nats per atom summed), and coordinates no
    # longer explode as they did with the official network's factors.
    assert after["cell"] < 2.0 and after["atomic_numbers"] < 10.0
    assert after["pos"] < 250.0, after
    if preset == "small":
        assert before["pos"] > 3 * after["pos"], (before, after)


def test_wsd_schedule_warms_up_holds_and_decays():
    cfg = TrainConfig(preset="tiny", lr=1e-3, min_lr=1e-5, max_steps=1000, warmup_steps=100, decay_steps=200)
    assert learning_rate(cfg, 0) == pytest.approx(1e-5)
    assert learning_rate(cfg, 49) == pytest.approx(5e-4)
    assert learning_rate(cfg, 100) == learning_rate(cfg, 799) == pytest.approx(1e-3)
    assert learning_rate(cfg, 899) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(cfg, 999) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="lr_schedule='cosine'"):
        TrainConfig(preset="tiny", lr_schedule="cosine")
    with pytest.raises(ValueError, match="ema_decay=1.0"):
        TrainConfig(preset="tiny", ema_decay=1.0)


def test_checkpoints_hold_ema_weights_and_finetuning_keeps_scale_factors(mp20_val, tmp_path):
    train_data, val_data = mp20_val.subset(range(64)).split_validation(0.125, seed=0)
    cfg = TrainConfig(preset="tiny", max_steps=6, batch_size=4, val_every=3, lr=1e-3, seed=2, ema_decay=0.9, scale_fit_batches=2)
    train(cfg, train_data, val_data, tmp_path / "run")
    ckpt = load_local_checkpoint(tmp_path / "run" / "last", with_trainer_state=True)
    raw, ema = ckpt.trainer_state["raw_model"], ckpt.model.state_dict()
    trainable = [k for k in raw if not k.endswith("scale_factor") and raw[k].is_floating_point() and raw[k].dim() > 0]
    assert any(not torch.equal(raw[k], ema[k]) for k in trainable)  # the file holds the average, not the raw weights
    assert ckpt.config["training"]["weights"] == "ema"
    fitted = ckpt.config["training"]["fitted_scale_factors"]
    for name, value in fitted.items():
        assert float(ema[f"{name}.scale_factor"]) == pytest.approx(value)

    # Fine-tuning from a checkpoint does not refit: its stored scale factors are kept.
    base = load_local_checkpoint(tmp_path / "run" / "last")
    stored = {k: v.clone() for k, v in base.model.state_dict().items() if k.endswith("scale_factor")}
    train(TrainConfig(preset="tiny", max_steps=2, batch_size=4, val_every=2, seed=3), train_data, val_data,
          tmp_path / "ft", init_from=base)
    tuned = load_local_checkpoint(tmp_path / "ft" / "last").model.state_dict()
    assert all(torch.equal(tuned[k], v) for k, v in stored.items())
