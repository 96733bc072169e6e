"""Corruption processes (spec §2): marginal moments, scores, D3PM posteriors and configs."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from mattergen_lab.constants import AVERAGE_DENSITY, MASK_CLASS, MASK_Z, NUM_CLASSES
from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.noise import (
    DiffusionConfig,
    JointDiffusion,
    LatticeVPConfig,
    LatticeVPSDE,
    MaskedTypeConfig,
    MaskedTypeDiffusion,
    WrappedVEConfig,
    WrappedVESDE,
    make_noise_symmetric_preserve_variance,
    wrap,
    wrapped_normal_log_density,
    wrapped_normal_score,
)
from mattergen_lab.noise.masked_types import onehot_logits

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clean_batch(num_atoms=(2, 5, 3), *, seed: int = 0, dtype=F64) -> CrystalBatch:
    g = gen(seed)
    n = torch.tensor(num_atoms)
    side = (n.to(dtype) / AVERAGE_DENSITY) ** (1 / 3)
    lat = side[:, None, None] * torch.eye(3, dtype=dtype) + 0.3 * make_noise_symmetric_preserve_variance(
        torch.randn(len(n), 3, 3, generator=g, dtype=dtype)
    )
    return CrystalBatch(
        atom_types=torch.randint(1, 84, (int(n.sum()),), generator=g),
        frac_coords=torch.rand(int(n.sum()), 3, generator=g, dtype=dtype),
        lattice=lat,
        num_atoms=n,
    )


# ---------------------------------------------------------------------------------------- wrapped VE
def brute_force_score(x, mu, sigma, k_max=3):
    """The spec's 343-image formula, written naively: (N, 343, 3)."""
    r = range(-k_max, k_max + 1)
    k = torch.tensor(list(itertools.product(r, r, r)), dtype=x.dtype)  # (343, 3)
    d = (x - mu)[:, None, :] + k  # (N, 343, 3)
    w = torch.softmax(-(d**2).sum(-1) / (2 * sigma[:, None] ** 2), dim=-1)  # (N, 343)
    return -(w[..., None] * d).sum(1) / sigma[:, None] ** 2


def test_wrapped_score_equals_343_image_formula():
    g = gen(1)
    x, mu = torch.rand(50, 3, generator=g, dtype=F64), torch.rand(50, 3, generator=g, dtype=F64)
    sigma = torch.exp(torch.empty(50, dtype=F64).uniform_(math.log(0.005), math.log(3.0), generator=g))
    torch.testing.assert_close(wrapped_normal_score(x, mu, sigma), brute_force_score(x, mu, sigma), rtol=1e-10, atol=1e-10)


def test_wrapped_score_is_gradient_of_log_density():
    g = gen(2)
    x, mu = torch.rand(20, 3, generator=g, dtype=F64), torch.rand(20, 3, generator=g, dtype=F64)
    sigma = torch.tensor([0.05, 0.2, 0.7, 2.0] * 5, dtype=F64)
    h = 1e-6
    fd = torch.stack(
        [
            (
                wrapped_normal_log_density(x + h * torch.eye(3, dtype=F64)[j], mu, sigma[:, None])
                - wrapped_normal_log_density(x - h * torch.eye(3, dtype=F64)[j], mu, sigma[:, None])
            )
            / (2 * h)
            for j in range(3)
        ],
        -1,
    )  # (20, 3)
    torch.testing.assert_close(wrapped_normal_score(x, mu, sigma), fd, rtol=1e-5, atol=1e-5)


def test_wrapped_score_small_sigma_is_gaussian_score():
    g = gen(3)
    mu = torch.rand(30, 3, generator=g, dtype=F64)
    sigma = torch.full((30,), 0.01, dtype=F64)
    d = 0.02 * torch.randn(30, 3, generator=g, dtype=F64)
    x = wrap(mu + d)  # may cross the cell boundary
    torch.testing.assert_close(wrapped_normal_score(x, mu, sigma), -d / sigma[:, None] ** 2, rtol=1e-8, atol=1e-6)


def test_ve_schedule_and_marginal_moments():
    sde = WrappedVESDE()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    torch.testing.assert_close(sde.sigma(t), torch.tensor([0.01, 0.01 * 500**0.5, 5.0], dtype=F64))
    n = torch.tensor([1, 8, 27])
    torch.testing.assert_close(sde.marginal_std(t, n), sde.sigma(t) / torch.tensor([1.0, 2.0, 3.0], dtype=F64))

    # Small std: no wrapping, so the displacement has exactly the stated std, and target = std·s_WN -> −ε.
    m = 20000
    x0 = torch.rand(m, 3, generator=gen(4), dtype=F64)
    std = torch.full((m,), 0.03, dtype=F64)
    xt, eps = sde.sample_marginal(x0, std, generator=gen(5))
    assert bool(((xt >= 0) & (xt < 1)).all())
    d = torch.remainder(xt - x0 + 0.5, 1.0) - 0.5
    assert abs(float(d.std()) / 0.03 - 1) < 0.02  # 60k draws: SE of the std ratio ≈ 0.3 %
    assert abs(float(d.mean())) < 0.001
    torch.testing.assert_close(sde.loss_target(xt, x0, std), -eps, rtol=1e-6, atol=1e-6)


def test_ve_prior_is_wrapped_and_nearly_uniform():
    sde = WrappedVESDE()
    n = torch.tensor([1, 4, 20] * 300)
    x = sde.prior(n, generator=gen(6), dtype=F64, device="cpu")
    assert x.shape == (int(n.sum()), 3) and x.dtype == F64
    assert bool(((x >= 0) & (x < 1)).all())
    assert abs(float(x.mean()) - 0.5) < 0.01
    assert abs(float(x.var()) - 1 / 12) < 0.005


def test_wrap_never_returns_one():
    x = torch.tensor([-1e-9, -1e-20, 0.0, 1.0, 2.5], dtype=torch.float32)
    y = wrap(x)
    assert bool(((y >= 0) & (y < 1)).all())


# ---------------------------------------------------------------------------------------- lattice VP
def test_symmetric_noise_is_symmetric_with_unit_variance():
    z = make_noise_symmetric_preserve_variance(torch.randn(40000, 3, 3, generator=gen(7), dtype=F64))
    torch.testing.assert_close(z, z.transpose(1, 2))
    var = z.var(0)  # (3, 3)
    assert float((var - 1).abs().max()) < 0.04  # SE of a variance with 40k draws ≈ 0.7 %
    iu = torch.triu_indices(3, 3)
    entries = z[:, iu[0], iu[1]]  # (M, 6) independent entries
    corr = torch.corrcoef(entries.T)
    assert float((corr - torch.eye(6, dtype=F64)).abs().max()) < 0.03


def test_lattice_schedule():
    sde = LatticeVPSDE()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    expected = torch.exp(-0.25 * 19.9 * t**2 - 0.5 * 0.1 * t)
    torch.testing.assert_close(sde.mean_coeff(t), expected)
    torch.testing.assert_close(sde.beta(t), 0.1 + 19.9 * t)
    n = torch.tensor([1, 8])
    mu = sde.limit_mean(n, dtype=F64)
    torch.testing.assert_close(mu[1], (8 / AVERAGE_DENSITY) ** (1 / 3) * torch.eye(3, dtype=F64))
    torch.testing.assert_close(sde.limit_var(n, dtype=F64), torch.tensor([0.25, 1.0], dtype=F64))


def test_lattice_marginal_moments_at_half():
    sde = LatticeVPSDE()
    m, n_atoms = 20000, 8
    l0 = torch.tensor([[3.0, 0.4, -0.2], [0.4, 4.0, 0.1], [-0.2, 0.1, 5.0]], dtype=F64).expand(m, 3, 3)
    n = torch.full((m,), n_atoms)
    t = torch.full((m,), 0.5, dtype=F64)
    lt, eps = sde.sample_marginal(l0, t, n, generator=gen(8))
    torch.testing.assert_close(lt, lt.transpose(1, 2))
    alpha = math.exp(-0.25 * 19.9 * 0.25 - 0.05 * 0.5)
    mu = (n_atoms / AVERAGE_DENSITY) ** (1 / 3)
    v = 0.25 * n_atoms ** (2 / 3)
    exp_mean = alpha * l0[0] + (1 - alpha) * mu * torch.eye(3, dtype=F64)
    exp_var = (1 - alpha**2) * v
    se_mean = math.sqrt(exp_var / m)
    assert float((lt.mean(0) - exp_mean).abs().max()) < 5 * se_mean
    assert float((lt.var(0) / exp_var - 1).abs().max()) < 0.05  # SE ≈ 1 % per entry
    torch.testing.assert_close(sde.loss_target(lt, l0, t, n), -eps)


def test_lattice_prior_moments():
    sde = LatticeVPSDE()
    n = torch.full((20000,), 4)
    lat = sde.prior(n, generator=gen(9), dtype=F64, device="cpu")
    mu = (4 / AVERAGE_DENSITY) ** (1 / 3)
    assert float((lat.mean(0) - mu * torch.eye(3, dtype=F64)).abs().max()) < 0.03
    assert float((lat.var(0) / (0.25 * 4 ** (2 / 3)) - 1).abs().max()) < 0.05


# ---------------------------------------------------------------------------------------- D3PM
def test_d3pm_marginal_masks_fraction_t():
    proc = MaskedTypeDiffusion()
    x0 = torch.randint(0, 83, (50000,), generator=gen(10))
    for step in (0, 1, 250, 700, 1000):
        xs = proc.sample_marginal(x0, torch.full_like(x0, step), generator=gen(step))
        masked = xs == MASK_CLASS
        assert abs(float(masked.double().mean()) - step / 1000) < 0.01
        assert bool((xs[~masked] == x0[~masked]).all())

    # Through the joint corruption: atoms of a crystal at time t are masked with prob (floor(999 t) + 1)/1000.
    d = JointDiffusion()
    batch = clean_batch((400,) * 4, seed=11)
    t = torch.tensor([0.0, 0.3, 0.6, 0.95], dtype=F64)
    noisy, target = d.corrupt(batch, t, generator=gen(12))
    frac = (noisy.atom_types == MASK_Z).double().reshape(4, 400).mean(1)
    expected = (torch.floor(t * 999) + 1) / 1000
    assert float((frac - expected).abs().max()) < 0.08  # binomial SE ≤ 2.5 % with 400 atoms
    assert bool((target.type_step.reshape(4, 400) == torch.floor(t * 999).long()[:, None]).all())


def test_d3pm_posterior_matches_closed_form_and_sums_to_one():
    proc = MaskedTypeDiffusion()
    x0 = torch.tensor([5, 7, 12, 30])
    tau = torch.tensor([0, 1, 10, 999])
    hard = onehot_logits(x0, dtype=F64)

    # x_{τ+1} masked: x_τ = x0 with prob 1/(τ + 1), MASK with prob τ/(τ + 1).
    x_next = torch.full_like(x0, MASK_CLASS)
    probs = torch.softmax(proc.posterior_logits(hard, x_next, step=tau + 1, prev_step=tau), -1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, dtype=F64))
    torch.testing.assert_close(probs[torch.arange(4), x0], 1 / (tau.to(F64) + 1))
    torch.testing.assert_close(probs[:, MASK_CLASS], tau.to(F64) / (tau.to(F64) + 1))

    # x_{τ+1} unmasked (possible for τ + 1 < 1000): the posterior is a point mass on it.
    probs = torch.softmax(proc.posterior_logits(hard[:3], x0[:3], step=tau[:3] + 1, prev_step=tau[:3]), -1)
    torch.testing.assert_close(probs, torch.nn.functional.one_hot(x0[:3], NUM_CLASSES).to(F64))

    # Multi-step jump u -> u' (fewer sampling steps): a masked atom unmasks with prob (u − u')/u.
    u, u_prev = torch.tensor([1000, 500, 20]), torch.tensor([0, 250, 19])
    probs = torch.softmax(proc.posterior_logits(hard[:3], x_next[:3], step=u, prev_step=u_prev), -1)
    torch.testing.assert_close(probs[:, MASK_CLASS], u_prev.to(F64) / u.to(F64))

    # With soft x̂0 the posterior still sums to one and stays finite in float32.
    logits = 30 * torch.randn(4, NUM_CLASSES, generator=gen(13))
    post = proc.posterior_logits(logits, x_next, step=tau + 1, prev_step=tau)
    assert bool(torch.isfinite(post).all())
    torch.testing.assert_close(torch.softmax(post, -1).sum(-1), torch.ones(4))


def test_d3pm_loss_kl_nonnegative_and_zero_for_perfect_logits():
    proc = MaskedTypeDiffusion()
    g = gen(14)
    n = 2000
    x0 = torch.randint(0, 100, (n,), generator=g)
    tau = torch.randint(1, 1000, (n,), generator=g)
    x_next = proc.sample_marginal(x0, tau + 1, generator=g)
    no_hybrid = MaskedTypeDiffusion(MaskedTypeConfig(hybrid_lambda=0.0))

    kl = no_hybrid.loss_per_atom(torch.randn(n, NUM_CLASSES, generator=g, dtype=F64), x0, x_next, tau)
    assert bool((kl >= -1e-12).all()) and float(kl.max()) > 0.1
    assert bool((kl[x_next != MASK_CLASS].abs() < 1e-12).all())  # unmasked atoms carry no information

    perfect = 50.0 * torch.nn.functional.one_hot(x0, NUM_CLASSES).to(F64)
    assert float(no_hybrid.loss_per_atom(perfect, x0, x_next, tau).abs().max()) < 1e-12
    full = proc.loss_per_atom(perfect, x0, x_next, tau)
    assert float(full.max()) < 1e-12  # the hybrid CE is ~0 too

    # τ = 0 uses the cross-entropy of the posterior instead of the KL: finite and positive for bad logits.
    tau0 = torch.zeros(n, dtype=torch.long)
    x1 = proc.sample_marginal(x0, tau0 + 1, generator=g)
    bad = -perfect
    ce = no_hybrid.loss_per_atom(bad, x0, x1, tau0)
    masked = x1 == MASK_CLASS
    assert bool(masked.any()) and bool((ce[masked] > 10).all()) and bool((ce[~masked].abs() < 1e-9).all())


def test_d3pm_loss_is_finite_with_extreme_logits_float32():
    proc = MaskedTypeDiffusion()
    g = gen(15)
    x0 = torch.randint(0, 100, (500,), generator=g)
    tau = torch.randint(0, 1000, (500,), generator=g)
    x_next = proc.sample_marginal(x0, tau + 1, generator=g)
    logits = (1e4 * torch.randn(500, NUM_CLASSES, generator=g)).requires_grad_()
    loss = proc.loss_per_atom(logits, x0, x_next, tau)
    loss.sum().backward()
    assert bool(torch.isfinite(loss).all()) and bool(torch.isfinite(logits.grad).all())


# ---------------------------------------------------------------------------------------- joint
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_joint_corrupt_and_prior_shapes(dtype):
    d = JointDiffusion()
    batch = clean_batch(seed=16, dtype=dtype)
    t = d.sample_time(batch.num_crystals, generator=gen(17), dtype=dtype)
    assert t.dtype == dtype and bool(((t >= 1e-5) & (t <= 1)).all())
    before = (batch.atom_types.clone(), batch.frac_coords.clone(), batch.lattice.clone())
    noisy, target = d.corrupt(batch, t, generator=gen(18))
    assert noisy.frac_coords.dtype == dtype and noisy.lattice.dtype == dtype
    assert target.frac_coords.shape == batch.frac_coords.shape and target.lattice.shape == batch.lattice.shape
    assert bool(((noisy.frac_coords >= 0) & (noisy.frac_coords < 1)).all())
    torch.testing.assert_close(noisy.lattice, noisy.lattice.transpose(1, 2))
    after = (batch.atom_types, batch.frac_coords, batch.lattice)
    assert all(torch.equal(x, y) for x, y in zip(before, after))  # the input is not mutated

    prior = d.prior(torch.tensor([3, 1, 20]), generator=gen(19), dtype=dtype)
    assert prior.frac_coords.shape == (24, 3) and prior.lattice.shape == (3, 3, 3)
    assert bool((prior.atom_types == MASK_Z).all()) and prior.frac_coords.dtype == dtype


def test_corrupt_is_reproducible_with_generator():
    d = JointDiffusion()
    batch = clean_batch(seed=20)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    a, _ = d.corrupt(batch, t, generator=gen(21))
    b, _ = d.corrupt(batch, t, generator=gen(21))
    assert torch.equal(a.frac_coords, b.frac_coords) and torch.equal(a.lattice, b.lattice)
    assert torch.equal(a.atom_types, b.atom_types)


def test_corrupt_rejects_bad_input():
    d = JointDiffusion()
    batch = clean_batch(seed=22)
    with pytest.raises(ValueError, match="t has shape"):
        d.corrupt(batch, torch.ones(2, dtype=F64), generator=gen())
    masked = batch.replace(atom_types=torch.full_like(batch.atom_types, MASK_Z))
    with pytest.raises(ValueError, match="atom_types"):
        d.corrupt(masked, torch.ones(3, dtype=F64), generator=gen())
    with pytest.raises(ValueError, match="num_atoms"):
        d.prior(torch.tensor([3, 0]), generator=gen())


# ---------------------------------------------------------------------------------------- configs
def test_config_round_trip():
    cfg = DiffusionConfig(coords=WrappedVEConfig(sigma_max=3.0), lattice=LatticeVPConfig(beta_max=10.0))
    restored = DiffusionConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    assert DiffusionConfig.from_dict({}) == DiffusionConfig()
    assert DiffusionConfig().to_dict()["atom_types"] == {"num_steps": 1000, "num_classes": 101, "hybrid_lambda": 0.01}


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"coordz": {}}, "coordz"),
        ({"coords": {"sigma_min": -1.0}}, "sigma_min=-1.0"),
        ({"coords": {"sigma_min": 6.0}}, "sigma_max"),
        ({"coords": {"simga_max": 1.0}}, "simga_max"),
        ({"lattice": {"beta_min": float("nan")}}, "beta_min=nan"),
        ({"lattice": "fast"}, "lattice='fast'"),
        ({"atom_types": {"num_steps": 0}}, "num_steps=0"),
        ({"atom_types": {"num_classes": 100}}, "num_classes=100"),
        ({"t_min": 1.5}, "t_min=1.5"),
    ],
)
def test_bad_config_raises_naming_the_value(bad, match):
    with pytest.raises(ValueError, match=match):
        DiffusionConfig.from_dict(bad)


@pytest.mark.parametrize("section, match", [
    ({"lattice": {"beta_max": 1e308}}, r"beta_max=1e\+308 is more than MAX_BETA=1000 .*the official value is 20"),
    ({"coords": {"sigma_max": 1e9}}, r"sigma_max=1000000000.0 is more than MAX_SIGMA=1000"),
    ({"coords": {"num_images": 10**6}}, r"num_images=1000000 is more than MAX_WRAP_IMAGES=10"),
    ({"atom_types": {"num_steps": 10**8}}, r"MaskedTypeConfig: num_steps=100000000 is more than MAX_NUM_STEPS"),
])
def test_schedules_are_finite_and_sane(section, match):
    """Issue 26: beta_max 1e308 is finite, but alpha(t) underflowed to 0 and sampling ended in a singular matrix."""
    from mattergen_lab.noise.joint import DiffusionConfig

    with pytest.raises(ValueError, match=match):
        DiffusionConfig.from_dict(section)
