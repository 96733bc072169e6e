"""GemNet building blocks (spec §3.4-3.5), with module names matching the official state dict."""

from __future__ import annotations

import math

import torch
from torch import nn

from mattergen_lab.model.graph import pad_rows


def he_orthogonal_(weight: torch.Tensor) -> torch.Tensor:
    """Orthogonal init, standardised, then scaled by ``1/sqrt(fan_in)``.

    For 2-D weights ``(out, in)`` fan_in is ``in``; for 3-D weights the last dim is the output dim.
    """
    with torch.no_grad():
        nn.init.orthogonal_(weight)
        if weight.dim() == 3:
            dims, fan_in = (0, 1), weight.shape[0] * weight.shape[1]
        else:
            dims, fan_in = (1,), weight.shape[1]
        var, mean = torch.var_mean(weight, dim=dims, unbiased=True, keepdim=True)
        weight.copy_((weight - mean) / (var + 1e-6).sqrt() / math.sqrt(fan_in))
    return weight


#: ScaledSiLU's factor and the residual layers' ``1/sqrt(2)``, as the float each multiplication uses.
SILU_SCALE = 1.0 / 0.6
INV_SQRT2 = 1 / math.sqrt(2.0)


def fresh(x: torch.Tensor) -> bool:
    """Whether an op may overwrite ``x``, a tensor its caller has just made: true when gradients are off. Then
    (sampling, scale fitting) the hot layers update their own fresh outputs in place (``silu_``, ``mul_``, ``add_``),
    which gives the same bits as the out-of-place ops (the same elementwise kernels; ``a + b`` and ``a * b`` commute
    exactly) and saves an allocation and a pass over memory each. With gradients on they stay out of place, even for
    frozen layers: an in-place product would overwrite what autograd saved for the other factor's gradient."""
    return not torch.is_grad_enabled()


class ScaledSiLU(nn.Module):
    """``silu(x) / 0.6`` ("swish" in GemNet), keeping activations at unit scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * SILU_SCALE


class Dense(nn.Module):
    """Linear layer without bias (He-orthogonal init), optionally followed by ScaledSiLU."""

    def __init__(self, in_features: int, out_features: int, *, activation: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        he_orthogonal_(self.linear.weight)
        self.act = ScaledSiLU() if activation else nn.Identity()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.linear directly: the same product as self.linear(x), without two module calls per layer
        y = nn.functional.linear(x, self.linear.weight)
        if not self.activation:
            return y
        if fresh(y):
            return nn.functional.silu(y, inplace=True).mul_(SILU_SCALE)
        return self.act(y)


class ResidualLayer(nn.Module):
    """``(x + Dense_act(Dense_act(x))) / sqrt(2)``."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.dense_mlp = nn.Sequential(Dense(units, units, activation=True), Dense(units, units, activation=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.dense_mlp
        y = second(first(x))
        if fresh(y):
            return y.add_(x).mul_(INV_SQRT2)
        return (x + y) * INV_SQRT2


class ScaleFactor(nn.Module):
    """A fixed scalar multiplier stored as a non-trainable parameter (``scale_factor``)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.tensor(float(value)), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class NoiseLevelEncoding(nn.Module):
    """Sinusoidal encoding of a scalar (raw diffusion time t in [0, 1], or a standardised property).

    ``z[2k] = sin(x·div_k)``, ``z[2k+1] = cos(x·div_k)``, ``div_k = 10000^(-2k/d)``.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if d_model % 2:
            raise ValueError(f"{d_model=} must be even")
        self.d_model = d_model
        div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        self.register_buffer("div_term", div)  # (d/2,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arg = x.reshape(-1, 1).to(self.div_term.dtype) * self.div_term  # (B, d/2)
        return torch.stack([arg.sin(), arg.cos()], dim=-1).reshape(x.numel(), self.d_model)  # (B, d)


class GaussianSmearing(nn.Module):
    """Gaussians on ``num`` centres ``linspace(start, stop)`` with width = centre spacing."""

    def __init__(self, start: float, stop: float, num: int) -> None:
        super().__init__()
        offset = torch.linspace(start, stop, num)
        self.coeff = -0.5 / float(offset[1] - offset[0]) ** 2
        self.register_buffer("offset", offset)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coeff * (d.unsqueeze(-1) - self.offset) ** 2)


class RadialBasis(nn.Module):
    """``env(d/c)·gauss(d/c)`` with the polynomial envelope of exponent p (p = 5)."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5) -> None:
        super().__init__()
        self.inv_cutoff = 1.0 / cutoff
        p = envelope_exponent
        self.p = p
        self.a, self.b, self.c = -(p + 1) * (p + 2) / 2, p * (p + 2), -p * (p + 1) / 2
        self.rbf = GaussianSmearing(0.0, 1.0, num_radial)

    def envelope(self, x: torch.Tensor) -> torch.Tensor:
        xp = x**self.p
        env = 1 + self.a * xp + self.b * xp * x + self.c * xp * x * x
        return torch.where(x < 1, env, torch.zeros_like(x))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        x = d * self.inv_cutoff
        return self.envelope(x).unsqueeze(-1) * self.rbf(x)  # (E, num_radial)

    def same_as(self, other: "RadialBasis") -> bool:
        """Whether ``other`` computes exactly this basis (same constants and Gaussian centres): GemNet-T's edge and
        triplet bases are two modules of one configuration, so the forward pass computes the basis once."""
        return (self.inv_cutoff, self.p, self.rbf.coeff) == (other.inv_cutoff, other.p, other.rbf.coeff) and (
            torch.equal(self.rbf.offset, other.rbf.offset))


def legendre_sph(cos: torch.Tensor, num_spherical: int) -> torch.Tensor:
    """Real spherical harmonics with m = 0: ``Y_l0(z) = sqrt((2l+1)/4π) P_l(z)``, l < num_spherical."""
    polys = [torch.ones_like(cos), cos]
    for ell in range(1, num_spherical - 1):  # Bonnet: (l+1) P_{l+1} = (2l+1) z P_l - l P_{l-1}
        polys.append(((2 * ell + 1) * cos * polys[ell] - ell * polys[ell - 1]) / (ell + 1))
    norms = [math.sqrt((2 * ell + 1) / (4 * math.pi)) for ell in range(num_spherical)]
    return torch.stack([n * p for n, p in zip(norms, polys[:num_spherical])], dim=-1)  # (T, L)


class CircularBasisLayer(nn.Module):
    """Radial basis of the c->a edge plus ``Y_l0`` of the triplet angle (GemNet "efficient" form)."""

    def __init__(self, num_spherical: int, radial_basis: RadialBasis) -> None:
        super().__init__()
        self.num_spherical = num_spherical
        self.radial_basis = radial_basis

    def forward(self, d: torch.Tensor, cos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.radial_basis(d), legendre_sph(cos, self.num_spherical)


class EfficientInteractionDownProjection(nn.Module):
    """Project the radial basis per spherical order, and scatter ``Y_l0`` to a padded ``[E, L, Kmax]``."""

    def __init__(self, num_spherical: int, num_radial: int, emb_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_spherical, num_radial, emb_size))
        he_orthogonal_(self.weight)

    def forward(
        self, rbf: torch.Tensor, sph: torch.Tensor, id_ca: torch.Tensor, ragged_idx: torch.Tensor,
        *, kmax: int | None = None, trip_slots: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``kmax``, ``trip_slots``: the graph's padded triplet layout (:class:`~mattergen_lab.model.graph.Graph`),
        when known: the same ``sph2`` by one gather and no host sync."""
        n_edges = rbf.shape[0]
        rbf_w1 = torch.matmul(rbf, self.weight).permute(1, 2, 0)  # (L, E, C) -> (E, C, L)
        if kmax is not None and trip_slots is not None:
            sph2 = pad_rows(sph, trip_slots, kmax) if kmax else sph.new_zeros(n_edges, 0, sph.shape[-1])
        else:
            kmax = int(ragged_idx.max()) + 1 if ragged_idx.numel() else 0
            sph2 = sph.new_zeros(n_edges, kmax, sph.shape[-1])  # (E, Kmax, L)
            sph2[id_ca, ragged_idx] = sph
        return rbf_w1, sph2.transpose(1, 2)  # (E, C, L), (E, L, Kmax)


class EfficientInteractionBilinear(nn.Module):
    """Bilinear triplet contraction: sum over neighbours k, spherical order and basis channel."""

    def __init__(self, emb_size: int, emb_size_interm: int, units_out: int) -> None:
        super().__init__()
        self.emb_size = emb_size
        self.weight = nn.Parameter(torch.empty(emb_size, emb_size_interm, units_out))
        he_orthogonal_(self.weight)

    def forward(
        self,
        basis: tuple[torch.Tensor, torch.Tensor],
        m: torch.Tensor,
        id_reduce: torch.Tensor,
        ragged_idx: torch.Tensor,
    ) -> torch.Tensor:
        rbf_w1, sph = basis  # (E, C, L), (E, L, Kmax)
        n_edges, kmax = rbf_w1.shape[0], sph.shape[-1]
        m2 = m.new_zeros(n_edges, kmax, self.emb_size)  # (E, Kmax, D)
        m2[id_reduce, ragged_idx] = m
        return self.contract(basis, m2)

    def contract(self, basis: tuple[torch.Tensor, torch.Tensor], m2: torch.Tensor) -> torch.Tensor:
        """The contraction of :meth:`forward` from the triplet messages already padded to ``(E, Kmax, D)``."""
        rbf_w1, sph = basis  # (E, C, L), (E, L, Kmax)
        sum_k = torch.matmul(sph, m2)  # (E, L, D)
        rbf_w1_sum_k = torch.matmul(rbf_w1, sum_k)  # (E, C, D)
        return torch.einsum("ecd,dco->eo", rbf_w1_sum_k, self.weight)  # (E, units_out)
