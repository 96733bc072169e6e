"""The predictor-corrector sampler (spec §5), driven by analytic scores.

Data distributions whose noised marginals are known in closed form:

* lattice: L0 = M + s·ε_sym, so L_t = α M + (1 − α) μ + sqrt(α² s² + σ_t²) ε_sym and the exact score is
  −(L − m_t) / (α² s² + σ_t²);
* coordinates: a wrapped normal around μ0 with std s0, so f_t is wrapped normal with variance s0² + std_t²;
* atom types: an x_0 predictor that always predicts one element.

The network contract is "output = score · std_t", so the analytic model returns exact score × std_t.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

from mattergen_lab.constants import (
    MASK_CLASS,
    MASK_Z,
    NUM_CLASSES,
    SELECTED_ATOMIC_NUMBERS,
)
from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.model.output import ScoreOutput
from mattergen_lab.noise import JointDiffusion, wrapped_normal_score
from mattergen_lab.sampling import (
    LatticeLangevinCorrector,
    PredictorCorrectorSampler,
    SamplerConfig,
    WrappedLangevinCorrector,
    allowed_classes,
    mask_logits,
)

F64 = torch.float64
M = torch.tensor([[3.0, 0.5, -0.4], [0.5, 5.0, 0.3], [-0.4, 0.3, 6.0]], dtype=F64)  # data lattice mean
S_LAT = 0.3  # data lattice std per entry
MU0 = torch.tensor([0.2, 0.5, 0.95], dtype=F64)  # data coordinate centre (0.95: mass across the boundary)
S0 = 0.05  # data coordinate std per axis (fractional)
FE = 26


pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class AnalyticModel:
    """Exact scores (× std_t) of the data distribution above; logits from ``logits_fn`` or always Fe."""

    def __init__(self, diffusion: JointDiffusion, *, element: int = FE, logits_fn=None) -> None:
        self.d, self.element, self.logits_fn = diffusion, element, logits_fn
        self.calls = 0

    def __call__(self, batch: CrystalBatch, t: torch.Tensor) -> ScoreOutput:
        self.calls += 1
        d, n, dtype = self.d, batch.num_atoms, batch.lattice.dtype
        alpha = d.lattice.mean_coeff(t)[:, None, None]  # (B, 1, 1)
        m_t = alpha * M.to(dtype) + (1 - alpha) * d.lattice.limit_mean(n, dtype=dtype)
        sigma = d.lattice.marginal_std(t, n)[:, None, None]
        lattice = -(batch.lattice - m_t) / (alpha**2 * S_LAT**2 + sigma**2) * sigma
        std = d.coords.marginal_std_per_atom(t, n)  # (N,)
        total = torch.sqrt(S0**2 + std**2)
        mu0 = MU0.to(dtype).expand_as(batch.frac_coords)
        # Enough images for the wrapped normal to be exact even at std_t = 5.
        frac = wrapped_normal_score(batch.frac_coords, mu0, total, num_images=20) * std[:, None]
        if self.logits_fn is not None:
            logits = self.logits_fn(batch)
        else:
            logits = torch.zeros(len(batch.atom_types), NUM_CLASSES, dtype=dtype)
            logits[:, self.element - 1] = 30.0
        return ScoreOutput(atom_logits=logits, frac_coords=frac, lattice=lattice)


def run_sampler(config: SamplerConfig, *, num_crystals: int, seed: int):
    d = JointDiffusion()
    model = AnalyticModel(d)
    sampler = PredictorCorrectorSampler(model, d, config)
    g = gen(seed)
    num_atoms = torch.randint(2, 7, (num_crystals,), generator=g)
    *_, final = sampler.iter_steps(num_atoms, generator=g, every=0, dtype=F64)
    assert final.final
    return final.batch, model


def lattice_stats(batch: CrystalBatch) -> tuple[float, float]:
    """(max |mean error| over the 6 free entries, pooled std / S_LAT)."""
    iu = torch.triu_indices(3, 3)
    entries = batch.lattice[:, iu[0], iu[1]]  # (B, 6)
    mean_err = float((entries.mean(0) - M[iu[0], iu[1]]).abs().max())
    return mean_err, float(entries.var(0).mean().sqrt()) / S_LAT


def coord_stats(batch: CrystalBatch) -> tuple[float, float]:
    """(max |circular mean − μ0| over x, y, z, pooled std of the wrapped deviation / S0)."""
    angle = 2 * math.pi * batch.frac_coords  # (N, 3)
    circ_mean = torch.atan2(torch.sin(angle).mean(0), torch.cos(angle).mean(0)) / (2 * math.pi)  # (3,)
    mean_err = float((torch.remainder(circ_mean - MU0 + 0.5, 1.0) - 0.5).abs().max())
    dev = torch.remainder(batch.frac_coords - MU0 + 0.5, 1.0) - 0.5  # (N, 3)
    return mean_err, float(dev.var(0).mean().sqrt()) / S0


# ---------------------------------------------------------------------------------------- moments
def test_pc_sampler_reproduces_analytic_moments():
    """Spec settings (snr 0.4 / 0.2, one corrector step) at 200 steps on 1000 crystals (~4000 atoms).

    Statistical noise: lattice mean SE ≈ 0.3/√1000 ≈ 0.01 per entry, pooled std SE ≈ 1 %; coordinate
    mean SE ≈ 0.05/√4000 ≈ 0.0008, pooled std SE ≈ 0.6 %.

    The corrector is unadjusted Langevin with step h = 2 snr² τ⁴/V, whose stationary variance for a
    Gaussian of variance τ² is V = τ²(1 + snr²). Near t = 0 the coordinate marginal barely changes between
    steps, so the coordinates settle at std ≈ √1.16 ≈ 1.077 s0 (minus ≈ 1 % from the final Tweedie mean).
    The test asserts that value, which a sampler without corrector (≈ 1.0) or with a wrong step size fails.
    For the lattice (snr 0.2, α < 1) the effect is ≤ 2 %.
    Measured (seed 0): lattice mean err 0.0055, std ratio 1.001; coord mean err 0.0017, std ratio 1.063.
    """
    batch, model = run_sampler(SamplerConfig(num_steps=200), num_crystals=1000, seed=0)
    assert model.calls == 400  # one corrector + one predictor evaluation per step

    lat_mean_err, lat_std_ratio = lattice_stats(batch)
    assert lat_mean_err < 0.04
    assert 0.95 < lat_std_ratio < 1.05
    torch.testing.assert_close(batch.lattice, batch.lattice.transpose(1, 2))

    coord_mean_err, coord_std_ratio = coord_stats(batch)
    assert coord_mean_err < 0.004
    assert 1.035 < coord_std_ratio < 1.10
    assert bool(((batch.frac_coords >= 0) & (batch.frac_coords < 1)).all())

    assert bool((batch.atom_types == FE).all())


def test_predictor_only_reproduces_data_moments():
    """Without the corrector the ancestral predictor alone recovers the data spread.

    Measured (seed 1): lattice mean err 0.012, std ratio 0.95 (discretisation of the steep VP schedule at
    200 steps shrinks it by ≈ 5 %); coord mean err 0.0016, std ratio 0.988.
    """
    batch, model = run_sampler(SamplerConfig(num_steps=200, n_corrector_steps=0), num_crystals=1000, seed=1)
    assert model.calls == 200
    lat_mean_err, lat_std_ratio = lattice_stats(batch)
    assert lat_mean_err < 0.04
    assert 0.90 < lat_std_ratio < 1.03
    coord_mean_err, coord_std_ratio = coord_stats(batch)
    assert coord_mean_err < 0.004
    assert 0.95 < coord_std_ratio < 1.025


def test_langevin_correctors_reach_the_ula_stationary_variance():
    """Many corrector steps at fixed t, started far from the target, with the exact Gaussian score.

    Expected stationary variance: τ²(1 + α snr²) (see the first test). The lattice uses t = 0.5,
    dt = −0.1, so α = ᾱ(0.5)/ᾱ(0.4) ≈ 0.40: with α = 1 the result would be 1.25 τ² instead of 1.10 τ².
    """
    d = JointDiffusion()
    g = gen(2)
    # Coordinates: τ = 0.02 (no wrapping effects), snr 0.4 -> V/τ² = 1.16.
    tau = 0.02
    num_atoms = torch.full((500,), 4)
    x = torch.remainder(MU0 + 3 * tau * torch.randn(2000, 3, generator=g, dtype=F64), 1.0)
    corrector = WrappedLangevinCorrector(d.coords, snr=0.4, max_step_size=1e6)
    samples = []
    for k in range(300):
        score = wrapped_normal_score(x, MU0.expand_as(x), torch.full((2000,), tau, dtype=F64))
        x = corrector.step(x, score, num_atoms=num_atoms, generator=g).sample
        if k >= 100:
            samples.append(torch.remainder(x - MU0 + 0.5, 1.0) - 0.5)
    dev = torch.stack(samples)
    assert abs(float(dev.mean())) < 0.002
    assert float(dev.var()) / tau**2 == pytest.approx(1.16, abs=0.04)

    # Lattice: mean m (positive definite: the polar re-projection is the identity), τ = 0.2, snr 0.5.
    t = torch.full((1000,), 0.5, dtype=F64)
    alpha = float((d.lattice.mean_coeff(t[:1]) / d.lattice.mean_coeff(t[:1] - 0.1)) ** 2)
    tau = 0.2
    lat = M + 3 * tau * torch.randn(1000, 3, 3, generator=g, dtype=F64)
    lat = (lat + lat.transpose(1, 2)) / 2
    corrector = LatticeLangevinCorrector(d.lattice, snr=0.5, max_step_size=1e6)
    iu = torch.triu_indices(3, 3)
    samples = []
    for k in range(300):
        lat = corrector.step(lat, -(lat - M) / tau**2, t=t, dt=-0.1, generator=g).sample
        if k >= 100:
            samples.append(lat[:, iu[0], iu[1]] - M[iu[0], iu[1]])
    dev = torch.stack(samples)
    expected = 1 + alpha * 0.25
    assert abs(alpha - 0.404) < 0.01
    assert abs(float(dev.mean())) < 0.01
    assert float(dev.var()) / tau**2 == pytest.approx(expected, abs=0.04)


def test_lattice_corrector_reprojects_to_the_symmetric_polar_factor():
    """A lattice with a negative eigenvalue comes back as its symmetric polar factor (|eigenvalues|)."""
    d = JointDiffusion()
    x = torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=F64)).expand(2, 3, 3)
    corrector = LatticeLangevinCorrector(d.lattice, snr=0.0, max_step_size=1e6)  # snr 0: step size 0
    out = corrector.step(x, torch.ones_like(x), t=torch.full((2,), 0.5, dtype=F64), dt=-0.01, generator=gen())
    expected = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=F64)).expand(2, 3, 3)
    torch.testing.assert_close(out.mean, expected)
    torch.testing.assert_close(out.sample, expected)

    corrector = LatticeLangevinCorrector(d.lattice, snr=0.2, max_step_size=1e6)
    out = corrector.step(x, -x, t=torch.full((2,), 0.5, dtype=F64), dt=-0.01, generator=gen())
    for value in (out.mean, out.sample):
        torch.testing.assert_close(value, value.transpose(1, 2))
        assert bool((torch.linalg.eigvalsh(value) > -1e-12).all())


@pytest.mark.parametrize(("n_corrector", "calls"), [(0, 5), (1, 10), (2, 15)])
def test_model_evaluations_per_step(n_corrector, calls):
    batch, model = run_sampler(SamplerConfig(num_steps=5, n_corrector_steps=n_corrector), num_crystals=2, seed=3)
    assert model.calls == calls


# ---------------------------------------------------------------------------------------- atom types
def test_mask_logits():
    logits = torch.zeros(4, NUM_CLASSES, dtype=F64)
    allowed = allowed_classes()
    masked = mask_logits(logits, allowed)
    ok = masked[0] == 0
    assert int(ok.sum()) == 76 and not bool(ok[MASK_CLASS])
    assert sorted((torch.nonzero(ok).flatten() + 1).tolist()) == list(SELECTED_ATOMIC_NUMBERS)

    per_crystal = torch.stack([allowed_classes(["Li", "O"]), allowed_classes([26])])  # (B, 101)
    masked = mask_logits(logits, per_crystal, batch_idx=torch.tensor([0, 0, 1, 1]))
    assert (torch.nonzero(masked[0] == 0).flatten() + 1).tolist() == [3, 8]
    assert (torch.nonzero(masked[3] == 0).flatten() + 1).tolist() == [26]
    with pytest.raises(ValueError, match="batch_idx"):
        mask_logits(logits[:3], per_crystal)
    with pytest.raises(ValueError, match="'Xe'"):
        allowed_classes(["Li", "Xe"])
    with pytest.raises(ValueError, match="'Qq'"):
        allowed_classes(["Qq"])


def test_forbidden_elements_and_mask_are_never_sampled():
    """Logits that prefer He, Tc, Th and MASK: only allowed elements ever appear, per crystal."""
    forbidden = torch.tensor([2, 43, 90, MASK_Z]) - 1

    def logits_fn(batch: CrystalBatch) -> torch.Tensor:
        g = gen(int(batch.frac_coords.sum() * 1e6) % 1000)
        logits = torch.randn(len(batch.atom_types), NUM_CLASSES, generator=g, dtype=batch.lattice.dtype)
        logits[:, forbidden] = 50.0
        return logits

    d = JointDiffusion()
    sampler = PredictorCorrectorSampler(AnalyticModel(d, logits_fn=logits_fn), d, SamplerConfig(num_steps=20))
    allowed = [["Li", "O"], None, [26]]
    num_atoms = torch.tensor([6, 8, 3])
    sets = [{3, 8}, set(SELECTED_ATOMIC_NUMBERS), {26}]
    batch_idx = torch.repeat_interleave(torch.arange(3), num_atoms)
    frames = list(sampler.iter_steps(num_atoms, generator=gen(4), every=1, dtype=F64, allowed_elements=allowed))
    for frame in frames:
        for z, i in zip(frame.batch.atom_types.tolist(), batch_idx.tolist()):
            assert z in sets[i] or (z == MASK_Z and not frame.final), (frame.step, z, i)
    final = frames[-1].batch
    assert not bool((final.atom_types == MASK_Z).any())
    assert set(final.atom_types[:6].tolist()) <= {3, 8} and set(final.atom_types[-3:].tolist()) == {26}


def test_types_unmask_at_the_schedule_rate():
    """At N = 1000 steps each step is the one-step posterior τ + 1 -> τ. Starting from all-MASK at step
    100 (t = 0.1), 50 steps bring the atoms to step 50, where q(masked | masked at 100) = 50/100."""
    d = JointDiffusion()
    sampler = PredictorCorrectorSampler(AnalyticModel(d), d, SamplerConfig(num_steps=1000, n_corrector_steps=0))
    n = 4000
    x = torch.full((n,), MASK_Z)
    g = gen(5)
    num_atoms = torch.tensor([n])
    logits = mask_logits(torch.zeros(n, NUM_CLASSES, dtype=F64), allowed_classes([FE]))
    ts = sampler.timesteps()
    assert d.types.discrete_time(torch.tensor(ts[900], dtype=F64)) == 99
    for i in range(900, 950):
        out = sampler.type_predictor.step(
            x, logits, t=torch.tensor([ts[i]], dtype=F64), s=torch.tensor([ts[i + 1]], dtype=F64),
            num_atoms=num_atoms, last=False, generator=g,
        )
        x = out.sample
    frac = float((x != MASK_Z).double().mean())
    assert frac == pytest.approx(0.5, abs=0.03)  # binomial SE ≈ 0.008
    assert set(x[x != MASK_Z].tolist()) == {FE}


# ---------------------------------------------------------------------------------------- streaming API
@pytest.mark.parametrize(("every", "steps"), [(1, [0, 1, 2, 3, 4, 5, 6, 7, 7]), (3, [0, 3, 6, 7]), (0, [7])])
def test_iter_steps_frames(every, steps):
    d = JointDiffusion()
    sampler = PredictorCorrectorSampler(AnalyticModel(d), d, SamplerConfig(num_steps=7))
    frames = list(sampler.iter_steps([3, 5], generator=gen(6), every=every, dtype=F64))
    assert [f.step for f in frames] == steps
    assert [f.final for f in frames] == [False] * (len(steps) - 1) + [True]
    ts = [f.t for f in frames]
    assert ts == sorted(ts, reverse=True) and ts[-1] == 0.0
    if every:
        assert frames[0].t == 1.0 and frames[0].mean is None and bool((frames[0].batch.atom_types == MASK_Z).all())
        assert all(f.mean is not None for f in frames[1:-1])
    final = frames[-1].batch
    assert final.num_atoms.tolist() == [3, 5] and final.frac_coords.dtype == F64
    assert bool((final.atom_types == FE).all())


def test_last_predictor_step_adds_no_noise():
    d = JointDiffusion()
    sampler = PredictorCorrectorSampler(AnalyticModel(d), d, SamplerConfig(num_steps=4))
    frames = list(sampler.iter_steps([4, 4], generator=gen(7), every=1, dtype=F64))
    last = frames[-2]
    assert last.step == 4 and last.t == 0.0
    assert torch.equal(last.batch.frac_coords, last.mean.frac_coords)
    assert torch.equal(last.batch.lattice, last.mean.lattice)
    assert torch.equal(frames[-1].batch.lattice, last.mean.lattice)


def test_float32_sampling_and_generator_checks():
    d = JointDiffusion()
    sampler = PredictorCorrectorSampler(AnalyticModel(d), d, SamplerConfig(num_steps=10))
    *_, final = sampler.iter_steps([2, 20], generator=gen(8), every=0, dtype=torch.float32)
    assert final.batch.lattice.dtype == torch.float32
    assert bool(torch.isfinite(final.batch.lattice).all()) and bool(torch.isfinite(final.batch.frac_coords).all())
    with pytest.raises(ValueError, match="every=-1"):
        sampler.iter_steps([2], generator=gen(), every=-1)  # raised eagerly, before iterating
    with pytest.raises(ValueError, match="num_atoms"):
        sampler.iter_steps([2, 0], generator=gen())
    with pytest.warns(UserWarning, match="num_atoms=25"):
        sampler.iter_steps([25], generator=gen())


def test_model_output_shapes_are_checked():
    d = JointDiffusion()

    def broken(batch, t):
        n = len(batch.atom_types)
        return ScoreOutput(torch.zeros(n, 100, dtype=F64), torch.zeros(n, 3, dtype=F64), torch.zeros(len(t), 3, 3, dtype=F64))

    sampler = PredictorCorrectorSampler(broken, d, SamplerConfig(num_steps=3))
    with pytest.raises(ValueError, match=r"atom_logits has shape \(4, 100\)"):
        list(sampler.iter_steps([4], generator=gen(), dtype=F64))


# ---------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_steps": 0}, "num_steps=0"),
        ({"num_steps": 2.5}, "num_steps=2.5"),
        ({"eps_t": 0.0}, "eps_t=0.0"),
        ({"eps_t": 1.0}, "eps_t=1.0"),
        ({"n_corrector_steps": -1}, "n_corrector_steps=-1"),
        ({"coord_snr": -0.1}, "coord_snr=-0.1"),
        ({"lattice_snr": float("inf")}, "lattice_snr=inf"),
        ({"max_step_size": 0}, "max_step_size=0"),
        ({"record_every": -2}, "record_every=-2"),
        # issue 26: bounded before anything is allocated (10**9 steps grew past 6 GB; 10**9 correctors hung)
        ({"num_steps": 10**9}, r"num_steps=1000000000 is more than MAX_NUM_STEPS=10,000 \(mattergen_lab.limits\)"),
        ({"n_corrector_steps": 10**9}, "n_corrector_steps=1000000000 is more than MAX_CORRECTOR_STEPS=10"),
    ],
)
def test_sampler_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs)


def test_sampler_config_round_trip_and_schedule():
    cfg = SamplerConfig(num_steps=50, lattice_snr=0.3)
    assert SamplerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="num_stepz"):
        SamplerConfig.from_dict({"num_stepz": 3})
    assert SamplerConfig().resolved_eps_t == 1e-3
    ts = PredictorCorrectorSampler(lambda b, t: None, JointDiffusion(), SamplerConfig()).timesteps()
    assert len(ts) == 1000 and ts[0] == 1.0 and ts[-1] == pytest.approx(1e-3)


# ---------------------------------------------------------------------------------------- sample / files
class FixedCounts:
    """A stand-in for ``NumAtomsDistribution``: anything with ``.sample(k, generator=)``."""

    def sample(self, k, *, generator):
        return torch.randint(2, 5, (k,), generator=generator)


def test_sample_num_atoms_options():
    d = JointDiffusion()
    sampler = PredictorCorrectorSampler(AnalyticModel(d), d, SamplerConfig(num_steps=3))
    structs = sampler.sample(3, batch_size=2, num_atoms=4, generator=gen(9), dtype=F64)
    assert [len(s) for s in structs] == [4, 4, 4]
    structs = sampler.sample(3, batch_size=2, num_atoms=[1, 2, 3], generator=gen(9), dtype=F64)
    assert [len(s) for s in structs] == [1, 2, 3]
    structs = sampler.sample(5, batch_size=2, num_atoms=FixedCounts(), generator=gen(9), dtype=F64)
    assert all(2 <= len(s) <= 4 for s in structs)
    structs = sampler.sample(4, batch_size=4, generator=gen(9), dtype=F64)  # the ALEX_MP_20 table
    assert len(structs) == 4 and all(1 <= len(s) <= 20 for s in structs)
    assert all(s.composition.reduced_formula == "Fe" for s in structs)
    with pytest.raises(ValueError, match="one positive int per sample"):
        sampler.sample(3, num_atoms=[1, 2], generator=gen())
    with pytest.raises(ValueError, match="batch_size=0"):
        sampler.sample(3, batch_size=0, generator=gen())
    with pytest.warns(UserWarning, match="num_atoms=21"):
        sampler.sample(1, num_atoms=21, generator=gen(), dtype=F64)


def test_sample_to_dir_writes_resumes_and_matches_sample(tmp_path):
    from ase.io import read
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    d = JointDiffusion()
    model = AnalyticModel(d)
    sampler = PredictorCorrectorSampler(model, d, SamplerConfig(num_steps=4, record_every=2))
    kw = {"batch_size": 2, "num_atoms": FixedCounts(), "dtype": F64}
    done = []
    paths = sampler.sample_to_dir(tmp_path, 4, generator=gen(10), on_batch=done.append, **kw)
    assert done == [2, 2] and [p.name for p in paths] == [f"gen_{i}.cif" for i in range(4)]
    stamps = {p: (p.stat().st_mtime_ns, p.read_text()) for p in paths}

    calls = model.calls
    done.clear()
    paths = sampler.sample_to_dir(tmp_path, 6, generator=gen(10), on_batch=done.append, **kw)
    assert done == [2] and model.calls - calls == 2 * 4  # only the chunk holding gen_4, gen_5 ran
    assert all((p.stat().st_mtime_ns, p.read_text()) == stamps[p] for p in stamps)  # nothing rewritten

    structures = [Structure.from_file(p) for p in paths]
    assert all(s.composition.reduced_formula == "Fe" for s in structures)
    frames = read(tmp_path / "generated_crystals.extxyz", index=":")
    assert sorted(a.info["gen_index"] for a in frames) == list(range(6))
    for a in frames:  # the extxyz holds the cell as sampled, the CIF its Niggli-reduced cell (the same crystal)
        s = structures[a.info["gen_index"]]
        assert len(a) == len(s) and a.get_volume() == pytest.approx(s.volume, rel=1e-6)
        assert AseAtomsAdaptor.get_structure(a).get_reduced_structure().lattice.abc == pytest.approx(s.lattice.abc, abs=1e-4)
    traj = read(tmp_path / "trajectories" / "gen_5.extxyz", index=":")
    assert [a.info["step"] for a in traj] == [0, 2, 4, 4] and traj[-1].info["final"]
    assert not [f for f in os.listdir(tmp_path / "trajectories") if f.endswith(".tmp")]

    # The same generator state gives the same crystals through sample() (CIFs: the Niggli-reduced cell).
    again = [s.get_reduced_structure() for s in sampler.sample(6, generator=gen(10), **kw)]
    for a, b in zip(again, structures):
        assert len(a) == len(b)
        assert a.lattice.abc == pytest.approx(b.lattice.abc, abs=1e-5)
        assert a.frac_coords == pytest.approx(b.frac_coords, abs=1e-5)

    # A crash while appending: a truncated extxyz and a missing CIF are repaired on restart.
    xyz = tmp_path / "generated_crystals.extxyz"
    xyz.write_text("\n".join(xyz.read_text().splitlines()[:-2]) + "\n")
    (tmp_path / "cifs" / "gen_5.cif").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler.sample_to_dir(tmp_path, 6, generator=gen(10), **kw)
    frames = read(xyz, index=":")
    assert sorted(a.info["gen_index"] for a in frames) == list(range(6))
    assert Structure.from_file(tmp_path / "cifs" / "gen_5.cif").lattice.abc == pytest.approx(
        structures[5].lattice.abc, abs=1e-5
    )


def test_the_cli_sampler_text_is_bounded_too():
    from mattergen_lab.sampling.frames import parse_sampler_text

    with pytest.raises(ValueError, match=r"sampler.n_corrector_steps=1000000000 is more than MAX_CORRECTOR_STEPS=10"):
        parse_sampler_text("n_corrector_steps=1000000000")
    assert parse_sampler_text("n_corrector_steps=10") == {"n_corrector_steps": 10}
