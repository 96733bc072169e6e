"""Sampler variants (issue #17.2): the probability-flow (ODE) predictor against known answers, the variant settings
validated at every boundary (request, ``build_sampler``, campaign spec) and recorded so a resume with others is
refused, and ``n_corrector_steps: 0`` really skipping the corrector's model evaluations."""

from __future__ import annotations

import math

import pytest
import torch

from mattergen_lab.noise import JointDiffusion
from mattergen_lab.sampling import PredictorCorrectorSampler, SamplerConfig
from mattergen_lab.sampling.frames import sampler_variant
from mattergen_lab.sampling.request import SamplingRequest
from mattergen_lab.sampling.steps import (
    LatticeAncestralPredictor,
    LatticeODEPredictor,
    WrappedAncestralPredictor,
    WrappedODEPredictor,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


def _integrate(predictor, x, score_fn, ts, num_atoms):
    """Run ``predictor`` over the times ``ts`` (decreasing; the last one is reached, not 0)."""
    b = len(num_atoms)
    for t_now, s_now in zip(ts[:-1], ts[1:]):
        t, s = torch.full((b,), t_now, dtype=F64), torch.full((b,), s_now, dtype=F64)
        x = predictor.step(x, score_fn(x, t), t=t, s=s, num_atoms=num_atoms, last=False, generator=None).sample
    return x


# ---------------------------------------------------------------------------------------- the ODE step, known answers
def test_coordinate_ode_step_follows_the_exact_probability_flow_of_a_gaussian():
    """Data N(m, a²) per coordinate (far from the cell's edges, so wrapping plays no part): the noised marginal is
    N(m, a² + σ_t²), and the probability-flow ODE moves each point along x_s − m = (x_t − m)·√((a² + σ_s²)/(a² + σ_t²))
    (the monotone map between the two Gaussians). The DDIM step converges to it (first order); for a point mass
    (a = 0) one step is exact."""
    d = JointDiffusion()
    ode = WrappedODEPredictor(d.coords)
    m, a = 0.5, 0.01
    num_atoms = torch.ones(400, dtype=torch.long)  # std_t = σ(t)
    sigma = lambda t: float(d.coords.sigma(torch.tensor(t, dtype=F64)))  # noqa: E731
    t0, t1 = math.log(5) / math.log(500), 0.05  # σ from 0.05 to 0.0136
    x0 = m + math.sqrt(a**2 + sigma(t0) ** 2) * torch.randn(400, 3, generator=torch.Generator().manual_seed(0), dtype=F64)

    def score(x, t):
        s2 = d.coords.marginal_std_per_atom(t, num_atoms).unsqueeze(-1) ** 2
        return -(x - m) / (a**2 + s2)

    exact = m + (x0 - m) * math.sqrt((a**2 + sigma(t1) ** 2) / (a**2 + sigma(t0) ** 2))
    coarse = _integrate(ode, x0, score, torch.linspace(t0, t1, 11, dtype=F64).tolist(), num_atoms)
    fine = _integrate(ode, x0, score, torch.linspace(t0, t1, 1001, dtype=F64).tolist(), num_atoms)
    err_coarse, err_fine = float((coarse - exact).abs().max()), float((fine - exact).abs().max())
    assert err_fine < 2e-5 and err_fine < err_coarse / 50  # first-order convergence to the exact flow
    # the marginal stays N(m, a² + σ_s²): the ensemble std follows
    assert float((fine - m).std() / math.sqrt(a**2 + sigma(t1) ** 2)) == pytest.approx(float((x0 - m).std()) / math.sqrt(a**2 + sigma(t0) ** 2), rel=1e-3)

    # a point mass: the score is exactly −(x − m)/σ_t², and one step lands on m + (x − m)·σ_s/σ_t
    one = _integrate(ode, x0, lambda x, t: -(x - m) / d.coords.marginal_std_per_atom(t, num_atoms).unsqueeze(-1) ** 2,
                     [t0, t1], num_atoms)
    torch.testing.assert_close(one, m + (x0 - m) * sigma(t1) / sigma(t0))
    # the last step (σ_s = 0) is the ancestral predictor's mean (the Tweedie estimate)
    t = torch.full((400,), t1, dtype=F64)
    kw = {"t": t, "s": torch.zeros_like(t), "num_atoms": num_atoms, "last": True}
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(ode.step(fine, score(fine, t), **kw).sample,
                               WrappedAncestralPredictor(d.coords).step(fine, score(fine, t), generator=g, **kw).mean)


def test_lattice_ode_step_follows_the_exact_probability_flow_of_a_gaussian():
    """Lattice data N(m, a²) per entry under the VP process around μ: x_t − μ − α_t(m − μ) ~ N(0, α_t² a² + σ_t²),
    and the flow scales that deviation by the ratio of the stds; from the prior (t = 1) to t = 0.02."""
    d = JointDiffusion()
    ode = LatticeODEPredictor(d.lattice)
    b = 300
    num_atoms = torch.randint(1, 21, (b,), generator=torch.Generator().manual_seed(0))
    mu = d.lattice.limit_mean(num_atoms, dtype=F64)
    m = mu + torch.tensor([[1.0, 0.3, -0.2], [0.3, 2.0, 0.1], [-0.2, 0.1, 0.5]], dtype=F64)
    a = 0.3

    def var(t):
        alpha = d.lattice.mean_coeff(t)[:, None, None]
        return alpha, alpha**2 * a**2 + d.lattice.marginal_std(t, num_atoms)[:, None, None] ** 2

    def score(x, t):
        alpha, v = var(t)
        return -(x - mu - alpha * (m - mu)) / v

    t0, t1 = 1.0, 0.02
    a0, v0 = var(torch.full((b,), t0, dtype=F64))
    a1, v1 = var(torch.full((b,), t1, dtype=F64))
    x0 = mu + a0 * (m - mu) + v0.sqrt() * torch.randn(b, 3, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = mu + a1 * (m - mu) + (x0 - mu - a0 * (m - mu)) * (v1 / v0).sqrt()
    coarse = _integrate(ode, x0, score, torch.linspace(t0, t1, 21, dtype=F64).tolist(), num_atoms)
    fine = _integrate(ode, x0, score, torch.linspace(t0, t1, 2001, dtype=F64).tolist(), num_atoms)
    scale = float((exact - mu).abs().max())
    err_coarse, err_fine = float((coarse - exact).abs().max()), float((fine - exact).abs().max())
    assert err_fine / scale < 1e-3 and err_fine < err_coarse / 20
    # a point mass (a = 0): exact in one step
    point = lambda x, t: -(x - mu - d.lattice.mean_coeff(t)[:, None, None] * (m - mu)) / d.lattice.marginal_std(t, num_atoms)[:, None, None] ** 2  # noqa: E731
    s0 = d.lattice.marginal_std(torch.full((b,), t0, dtype=F64), num_atoms)[:, None, None]
    s1 = d.lattice.marginal_std(torch.full((b,), t1, dtype=F64), num_atoms)[:, None, None]
    one = _integrate(ode, x0, point, [t0, t1], num_atoms)
    torch.testing.assert_close(one, mu + a1 * (m - mu) + (x0 - mu - a0 * (m - mu)) * s1 / s0)
    # the last step is the ancestral mean
    t = torch.full((b,), t1, dtype=F64)
    kw = {"t": t, "s": torch.zeros_like(t), "num_atoms": num_atoms, "last": True}
    torch.testing.assert_close(ode.step(fine, score(fine, t), **kw).sample,
                               LatticeAncestralPredictor(d.lattice).step(fine, score(fine, t), generator=torch.Generator(), **kw).mean)


def test_the_ode_sampler_is_deterministic_and_recovers_the_data_from_the_prior():
    """The whole sampler with ``predictor="ode"`` and no corrector on test_sampler's analytic scores (exact wrapped
    normal coordinates, Gaussian lattice): the prior's noise is the only randomness in coordinates and lattice (the
    same prior gives the same crystals bit for bit; every frame's sample is its mean), and the flow carries the prior
    to the data distribution (lattice mean and spread, coordinate spread).

    Measured (seed 0, 400 crystals, 100 steps): lattice mean err 0.026 (standard error ≈ 0.3/√400 = 0.015), std
    ratio 0.96; coord mean err 0.0013, std ratio 1.04 (the first-order flow at 100 steps)."""
    from test_sampler import AnalyticModel, coord_stats, lattice_stats

    d = JointDiffusion()
    model = AnalyticModel(d)
    sampler = PredictorCorrectorSampler(model, d, SamplerConfig(num_steps=100, n_corrector_steps=0, predictor="ode"))
    num_atoms = torch.randint(2, 7, (400,), generator=torch.Generator().manual_seed(0))
    frames = list(sampler.iter_steps(num_atoms, generator=torch.Generator().manual_seed(0), every=25, dtype=F64))
    assert model.calls == 100
    for f in frames[1:-1]:
        torch.testing.assert_close(f.batch.frac_coords, f.mean.frac_coords, rtol=0, atol=0)
        torch.testing.assert_close(f.batch.lattice, f.mean.lattice, rtol=0, atol=0)
    final = frames[-1].batch
    *_, again = sampler.iter_steps(num_atoms, generator=torch.Generator().manual_seed(0), every=0, dtype=F64)
    assert torch.equal(again.batch.frac_coords, final.frac_coords) and torch.equal(again.batch.lattice, final.lattice)
    lat_mean_err, lat_std_ratio = lattice_stats(final)
    coord_mean_err, coord_std_ratio = coord_stats(final)
    assert lat_mean_err < 0.06 and 0.9 < lat_std_ratio < 1.05
    assert coord_mean_err < 0.006 and 0.95 < coord_std_ratio < 1.1


# ---------------------------------------------------------------------------------------- the settings, at the boundary
@pytest.mark.parametrize("settings, message", [
    ({"n_corrector_steps": -1}, "sampler.n_corrector_steps=-1"),
    ({"n_corrector_steps": 0.5}, "sampler.n_corrector_steps=0.5"),
    ({"coord_snr": -0.2}, "sampler.coord_snr=-0.2"),
    ({"lattice_snr": "high"}, "sampler.lattice_snr='high'"),
    ({"coord_snr": float("nan")}, "sampler.coord_snr=nan"),
    ({"max_step_size": 0}, "sampler.max_step_size=0"),
    ({"predictor": "euler"}, "sampler.predictor='euler'"),
    ({"num_steps": 50}, "unknown sampler key(s) ['num_steps']"),
    ({"snr": 0.2}, "unknown sampler key(s) ['snr']"),
    ("predictor-only", "sampler='predictor-only' must be a mapping"),
])
def test_bad_sampler_settings_are_named_at_every_boundary(settings, message):
    from mattergen_lab.campaign import CampaignSpec
    from mattergen_lab.sampling.api import load_sampler

    with pytest.raises(ValueError) as info:
        SamplingRequest(sampler=settings)
    assert message in str(info.value)
    with pytest.raises(ValueError) as info:
        CampaignSpec.from_dict({"checkpoint": "mgl_mp20_small", "sampler": settings})
    assert message in str(info.value)
    with pytest.raises(ValueError) as info:
        load_sampler("mgl_mp20_small", num_steps=2, sampler_settings=settings)
    assert message in str(info.value)


def test_sampler_settings_have_one_canonical_form():
    assert sampler_variant(None) == sampler_variant({}) == sampler_variant({"n_corrector_steps": 1, "coord_snr": 0.4}) == {}
    assert sampler_variant({"coord_snr": 0, "n_corrector_steps": 0}) == {"coord_snr": 0.0, "n_corrector_steps": 0}
    assert list(sampler_variant({"predictor": "ode", "coord_snr": 0.2})) == ["coord_snr", "predictor"]
    assert SamplerConfig(num_steps=50, predictor="ode", lattice_snr=0.1).variant() == {"lattice_snr": 0.1, "predictor": "ode"}
    # the default sampler's records are unchanged: no sampler key in a campaign, no predictor in sampling.json
    from mattergen_lab.campaign import CampaignSpec

    assert "sampler" not in CampaignSpec.from_dict({"checkpoint": "mgl_mp20_small"}).to_dict()
    assert CampaignSpec.from_dict({"checkpoint": "mgl_mp20_small", "sampler": {"n_corrector_steps": 1}}).fingerprint() == \
        CampaignSpec.from_dict({"checkpoint": "mgl_mp20_small"}).fingerprint()


class _Counting:
    """Wraps a model and counts its evaluations."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, batch, t):
        self.calls += 1
        return self.model(batch, t)

    def parameters(self):
        return self.model.parameters()


@pytest.mark.parametrize("settings, per_step", [({}, 2), ({"n_corrector_steps": 0}, 1), ({"n_corrector_steps": 2}, 3),
                                                ({"predictor": "ode", "n_corrector_steps": 0}, 1)])
def test_the_request_s_sampler_runs_that_many_model_evaluations_per_step(settings, per_step):
    from mattergen_lab.sampling.api import load_sampler

    sampler, info = load_sampler("mgl_mp20_small", num_steps=3, sampler_settings=settings)
    assert info.sampler_config.variant() == sampler_variant(settings)
    sampler.model = counting = _Counting(sampler.model)
    request = SamplingRequest(num_samples=2, batch_size=2, num_steps=3, seed=0, sampler=settings, num_atoms=4)
    frames = list(sampler.iter_chunks(request))
    assert frames[-1].frame.final and counting.calls == 3 * per_step
    # a request for another variant than the sampler's is refused, as another step count is
    other = {"n_corrector_steps": 5}
    with pytest.raises(ValueError, match=r"request.sampler=\{'n_corrector_steps': 5\} but this sampler runs"):
        list(sampler.iter_chunks(SamplingRequest(num_samples=2, batch_size=2, sampler=other, num_atoms=4)))


def test_a_campaign_and_a_sample_folder_refuse_another_sampler_on_resume(tmp_path):
    from mattergen_lab.campaign import CampaignFolder, CampaignSpec
    from mattergen_lab.campaign.tasks import sample_task
    from mattergen_lab.sampling.api import sample, sample_to_dir

    base = {"checkpoint": "mgl_mp20_small", "num_samples": 2, "batch_size": 2, "num_steps": 3, "seed": 4,
            "evaluate": False}
    folder = CampaignFolder(tmp_path / "c")
    folder.prepare(CampaignSpec.from_dict({**base, "sampler": {"n_corrector_steps": 0}}))
    folder.prepare(CampaignSpec.from_dict({**base, "sampler": {"n_corrector_steps": 0}}))  # the same resumes
    with pytest.raises(ValueError, match=r"holds another campaign \(sampler: \{'n_corrector_steps': 0\} -> None\)"):
        folder.prepare(CampaignSpec.from_dict(base))
    with pytest.raises(ValueError, match=r"sampler: .* -> \{'coord_snr': 0.2\}"):
        folder.prepare(CampaignSpec.from_dict({**base, "sampler": {"coord_snr": 0.2}}))

    # the campaign's sampling task runs the variant: the crystals of the plain API with the same settings
    spec = CampaignSpec.from_dict({**base, "sampler": {"n_corrector_steps": 0}})
    got = sample_task(spec.to_dict(), 0, 0)
    want = sample("mgl_mp20_small", 2, batch_size=2, num_steps=3, seed=4, sampler_settings={"n_corrector_steps": 0})
    default = sample("mgl_mp20_small", 2, batch_size=2, num_steps=3, seed=4)
    from pymatgen.core import Structure

    got0 = Structure.from_dict(got["structures"][0])
    assert abs(got0.frac_coords - want[0].frac_coords).max() < 1e-6
    assert len(default[0]) != len(got0) or abs(default[0].frac_coords - got0.frac_coords).max() > 1e-4

    sample_to_dir("mgl_mp20_small", tmp_path / "s", num_samples=1, batch_size=1, num_steps=2, num_atoms=4,
                  sampler_settings={"predictor": "ode"})
    with pytest.raises(ValueError, match="other settings.*predictor"):
        sample_to_dir("mgl_mp20_small", tmp_path / "s", num_samples=2, batch_size=1, num_steps=2, num_atoms=4)
