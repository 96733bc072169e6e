"""GemNet-T score network for crystals, in pure PyTorch (spec §3).

Module and parameter names follow the official MatterGen state dict (spec §8.3), so official checkpoints
load by a key-for-key mapping. One deliberate difference: the output blocks' *energy* branches
(``dense_rbf``, ``scale_sum``, ``layers``/``seq_energy``, ``out_energy``) are computed by the official
model but never used, so they are left out here (see :data:`OFFICIAL_UNUSED_KEY_PATTERNS`).

Outputs per crystal batch:
* ``forces`` ``(N, 3)``: Cartesian vectors ``Σ_{edges s->t} F_st · V_st``;
* ``stress`` ``(B, 3, 3)``: symmetric ``Σ_blocks Σ_edges c_e û_e û_eᵀ`` with ``c_e`` divided by the
  crystal's edge count;
* ``node_embeddings`` ``(N, emb_size_atom)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mattergen_lab.limits import ARCHITECTURE_BOUNDS, MAX_CUTOFF, check_at_most
from mattergen_lab.model.graph import Graph, build_graph, pad_rows, take
from mattergen_lab.model.layers import (
    INV_SQRT2,
    CircularBasisLayer,
    Dense,
    EfficientInteractionBilinear,
    EfficientInteractionDownProjection,
    RadialBasis,
    ResidualLayer,
    ScaleFactor,
    fresh,
    legendre_sph,
)

#: Official state-dict keys (after the ``diffusion_module.model.`` prefix) that have no counterpart here:
#: the unused energy branch of each output block. The checkpoint loader skips exactly these.
OFFICIAL_UNUSED_KEY_PATTERNS = (
    r"gemnet\.out_blocks\.\d+\.(dense_rbf|scale_sum|layers|seq_energy|out_energy)\..*",
)

#: Initial scale factors (fitted for GemNet-dT in FAIR-Chem; official checkpoints store their own).
_TRIP_RBF = (18.873615264892578, 16.10817527770996, 15.01930046081543)
_TRIP_CBF = (7.996850490570068, 7.614634037017822, 7.025179862976074)
_ATOM_SUM = (1.220463752746582, 0.9690994620323181, 0.8903237581253052)
_OUT_RBF_F = (16.161039352416992, 13.54678726196289, 12.754337310791016, 13.484951972961426)


def _initial(values: tuple[float, ...], i: int) -> float:
    return values[i] if i < len(values) else 1.0


def _mul(new: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``new * other``, in place into ``new`` (a tensor the caller just made) when no gradient needs it."""
    return new.mul_(other) if fresh(new) else new * other


def _mean2(new: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``(new + other) / sqrt(2)``, in place into ``new`` (a tensor the caller just made) when no gradient needs it."""
    return new.add_(other).mul_(INV_SQRT2) if fresh(new) else (new + other) * INV_SQRT2


@dataclass(frozen=True)
class GemNetConfig:
    """Hyper-parameters of the GemNet-T score network (official values as defaults, spec §3.1)."""

    emb_size_atom: int = 512
    emb_size_edge: int = 512
    latent_dim: int = 512
    num_blocks: int = 4
    num_spherical: int = 7
    num_radial: int = 128
    emb_size_trip: int = 64
    emb_size_rbf: int = 16
    emb_size_cbf: int = 16
    emb_size_bil_trip: int = 64
    num_before_skip: int = 1
    num_after_skip: int = 2
    num_concat: int = 1
    num_atom: int = 3
    cutoff: float = 7.0
    max_neighbors: int = 50
    max_cell_images_per_dim: int = 5
    envelope_exponent: int = 5
    num_atom_classes: int = 101
    #: Official GemNet-T appends the cosines between each edge and the three lattice vectors to the edge
    #: features. They make the network depend on the choice of lattice basis (see ``testing``).
    lattice_cosine_features: bool = True
    #: Properties with adapter layers (spec §4.2); empty for base models.
    condition_on_adapt: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"GemNetConfig: {f.name}={value!r} must be a positive integer")
            if f.name in ARCHITECTURE_BOUNDS:  # before any layer is allocated (a 10**9 embedding asked for 4 TB)
                check_at_most(f"GemNetConfig: {f.name}", value, *ARCHITECTURE_BOUNDS[f.name])
        cutoff = self.cutoff
        if isinstance(cutoff, bool) or not (isinstance(cutoff, (int, float)) and math.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"GemNetConfig: cutoff={cutoff!r} must be a positive number (Å)")
        check_at_most("GemNetConfig: cutoff", cutoff, MAX_CUTOFF, "MAX_CUTOFF", "the official cutoff is 7 Å")
        if self.num_spherical < 2:
            raise ValueError(f"GemNetConfig: num_spherical={self.num_spherical} must be >= 2")
        for name in ("lattice_cosine_features",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GemNetConfig: {name}={getattr(self, name)!r} must be true or false")
        adapt = self.condition_on_adapt
        # a string is not a list of properties ("dft_band_gap" was read as 12 one-letter properties)
        if isinstance(adapt, (str, bytes)) or not isinstance(adapt, (list, tuple)) or not all(
                isinstance(p, str) and p for p in adapt) or len(set(adapt)) != len(adapt):
            raise ValueError(f"GemNetConfig: condition_on_adapt={adapt!r} must be a list of distinct property names, "
                             "e.g. ['dft_band_gap']")
        object.__setattr__(self, "condition_on_adapt", tuple(adapt))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["condition_on_adapt"] = list(self.condition_on_adapt)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GemNetConfig":
        if not isinstance(d, dict):
            raise ValueError(f"GemNetConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GemNetConfig: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**d)


class EdgeEmbedding(nn.Module):
    """``Dense_act([h_s, h_t, m])``."""

    def __init__(self, atom_features: int, edge_features: int, out_features: int) -> None:
        super().__init__()
        self.dense = Dense(2 * atom_features + edge_features, out_features, activation=True)

    def forward(self, h: torch.Tensor, m: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        return self.dense(torch.cat([take(h, src), take(h, dst), m], dim=-1))  # (E, out)


class AtomEmbedding(nn.Module):
    """Embedding of classes ``Z - 1`` (101 rows incl. the mask), initialised U(-√3, √3)."""

    def __init__(self, emb_size: int, num_classes: int) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(num_classes, emb_size)
        nn.init.uniform_(self.embeddings.weight, -math.sqrt(3), math.sqrt(3))

    def forward(self, atom_types: torch.Tensor) -> torch.Tensor:
        return self.embeddings(atom_types - 1)


class AtomUpdateBlock(nn.Module):
    """Aggregate messages into atoms: ``Σ_in (m ⊙ Dense(rbf))``, scaled, then an MLP."""

    def __init__(self, cfg: GemNetConfig, scale: float) -> None:
        super().__init__()
        self.dense_rbf = Dense(cfg.emb_size_rbf, cfg.emb_size_edge)
        self.scale_sum = ScaleFactor(scale)
        self.layers = nn.Sequential(
            Dense(cfg.emb_size_edge, cfg.emb_size_atom, activation=True),
            *[ResidualLayer(cfg.emb_size_atom) for _ in range(cfg.num_atom)],
        )

    def forward(self, h: torch.Tensor, m: torch.Tensor, rbf: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        x = _mul(self.dense_rbf(rbf), m)  # (E, D)
        x = h.new_zeros(h.shape[0], x.shape[1]).index_add_(0, dst, x)  # (N, D)
        return self.layers(self.scale_sum(x))


class TripletInteraction(nn.Module):
    """Two-hop message passing over triplets b->a<-c with the angle basis (GemNet-T)."""

    def __init__(self, cfg: GemNetConfig, scale_rbf: float, scale_cbf: float) -> None:
        super().__init__()
        e = cfg.emb_size_edge
        self.dense_ba = Dense(e, e, activation=True)
        self.mlp_rbf = Dense(cfg.emb_size_rbf, e)
        self.scale_rbf = ScaleFactor(scale_rbf)
        self.mlp_cbf = EfficientInteractionBilinear(cfg.emb_size_trip, cfg.emb_size_cbf, cfg.emb_size_bil_trip)
        self.scale_cbf_sum = ScaleFactor(scale_cbf)
        self.down_projection = Dense(e, cfg.emb_size_trip, activation=True)
        self.up_projection_ca = Dense(cfg.emb_size_bil_trip, e, activation=True)
        self.up_projection_ac = Dense(cfg.emb_size_bil_trip, e, activation=True)

    def forward(
        self, m: torch.Tensor, rbf3: torch.Tensor, cbf3: tuple[torch.Tensor, torch.Tensor], g: Graph
    ) -> torch.Tensor:
        x_ba = self.scale_rbf(_mul(self.dense_ba(m), self.mlp_rbf(rbf3)))  # (E, D)
        x_ba = self.down_projection(x_ba)  # (E, trip)
        if g.ba_slots is not None and g.kmax:  # one gather into the padded (E, Kmax, trip) layout
            x = self.mlp_cbf.contract(cbf3, pad_rows(x_ba, g.ba_slots, g.kmax))
        else:
            x = self.mlp_cbf(cbf3, x_ba[g.id3_ba], g.id3_ca, g.id3_ragged_idx)  # x_ba[id3_ba]: (T, trip)
        x = self.scale_cbf_sum(x)  # (E, bil)
        x_ca = self.up_projection_ca(x)
        x_ac = take(self.up_projection_ac(x), g.id_swap)  # message of the reverse edge
        return _mean2(x_ca, x_ac)


class InteractionBlock(nn.Module):
    """GemNet-T interaction block (triplets only)."""

    def __init__(self, cfg: GemNetConfig, index: int) -> None:
        super().__init__()
        e, a = cfg.emb_size_edge, cfg.emb_size_atom
        self.dense_ca = Dense(e, e, activation=True)
        self.trip_interaction = TripletInteraction(cfg, _initial(_TRIP_RBF, index), _initial(_TRIP_CBF, index))
        self.layers_before_skip = nn.Sequential(*[ResidualLayer(e) for _ in range(cfg.num_before_skip)])
        self.layers_after_skip = nn.Sequential(*[ResidualLayer(e) for _ in range(cfg.num_after_skip)])
        self.atom_update = AtomUpdateBlock(cfg, _initial(_ATOM_SUM, index))
        self.concat_layer = EdgeEmbedding(a, e, e)
        self.residual_m = nn.Sequential(*[ResidualLayer(e) for _ in range(cfg.num_concat)])

    def forward(
        self,
        h: torch.Tensor,
        m: torch.Tensor,
        rbf3: torch.Tensor,
        cbf3: tuple[torch.Tensor, torch.Tensor],
        rbf_h: torch.Tensor,
        g: Graph,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = _mean2(self.dense_ca(m), self.trip_interaction(m, rbf3, cbf3, g))
        x = self.layers_before_skip(x)
        m = self.layers_after_skip(_mean2(x, m))
        h = _mean2(self.atom_update(h, m, rbf_h, g.dst), h)
        m2 = self.residual_m(self.concat_layer(h, m, g.src, g.dst))
        return h, _mean2(m2, m)


class OutputBlock(nn.Module):
    """Direct-force head: one scalar ``F_st`` per edge (the unused energy branch is omitted)."""

    def __init__(self, cfg: GemNetConfig, scale_rbf_f: float) -> None:
        super().__init__()
        e = cfg.emb_size_edge
        self.scale_rbf_F = ScaleFactor(scale_rbf_f)
        self.seq_forces = nn.Sequential(Dense(e, e, activation=True), *[ResidualLayer(e) for _ in range(cfg.num_atom)])
        self.out_forces = Dense(e, 1)
        self.dense_rbf_F = Dense(cfg.emb_size_rbf, e)

    def forward(self, m: torch.Tensor, rbf: torch.Tensor) -> torch.Tensor:
        x = self.scale_rbf_F(_mul(self.seq_forces(m), self.dense_rbf_F(rbf)))  # (E, D)
        return self.out_forces(x).squeeze(-1)  # (E,)


class LatticeOutputBlock(nn.Module):
    """Symmetric lattice score ``Σ_e c_e û_e û_eᵀ`` with ``c_e`` normalised by the crystal's edge count."""

    def __init__(self, cfg: GemNetConfig) -> None:
        super().__init__()
        e = cfg.emb_size_edge
        self.mlp = nn.Sequential(Dense(e, e, activation=True), Dense(e, e))
        self.dense_rbf_F = Dense(cfg.emb_size_rbf, e)
        self.out_forces = Dense(e, 1)

    def forward(self, m: torch.Tensor, rbf: torch.Tensor, g: Graph, num_crystals: int) -> torch.Tensor:
        c = self.out_forces(_mul(self.mlp(m), self.dense_rbf_F(rbf))).squeeze(-1)  # (E,)
        if c.dtype == g.vec.dtype:  # the counts and û ûᵀ are made once per graph for the five heads
            c, outer = c / g.edges_of_crystal, g.edge_outer  # (E,), (E, 3, 3)
        else:
            counts = g.edge_counts if g.edge_counts is not None else torch.bincount(g.edge_batch, minlength=num_crystals)
            c = c / take(counts.to(c.dtype), g.edge_batch)
            outer = g.vec.unsqueeze(-1) * g.vec.unsqueeze(-2)  # (E, 3, 3) û ûᵀ
        out = c.new_zeros(num_crystals, 3, 3)
        return out.index_add_(0, g.edge_batch, c[:, None, None] * outer)  # (B, 3, 3)


@dataclass(frozen=True)
class GemNetOutput:
    forces: torch.Tensor  # (N, 3) Cartesian
    stress: torch.Tensor  # (B, 3, 3) symmetric
    node_embeddings: torch.Tensor  # (N, emb_size_atom)


class GemNetT(nn.Module):
    """The GemNet-T trunk: embeddings, 4 interaction blocks, 5 force and 5 lattice output blocks."""

    def __init__(self, cfg: GemNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        a, e = cfg.emb_size_atom, cfg.emb_size_edge
        self.radial_basis = RadialBasis(cfg.num_radial, cfg.cutoff, cfg.envelope_exponent)
        self.cbf_basis3 = CircularBasisLayer(
            cfg.num_spherical, RadialBasis(cfg.num_radial, cfg.cutoff, cfg.envelope_exponent)
        )
        self.mlp_rbf3 = Dense(cfg.num_radial, cfg.emb_size_rbf)
        self.mlp_cbf3 = EfficientInteractionDownProjection(cfg.num_spherical, cfg.num_radial, cfg.emb_size_cbf)
        self.mlp_rbf_h = Dense(cfg.num_radial, cfg.emb_size_rbf)
        self.mlp_rbf_out = Dense(cfg.num_radial, cfg.emb_size_rbf)
        self.mlp_rbf_lattice = Dense(cfg.num_radial, cfg.emb_size_rbf)
        self.atom_emb = AtomEmbedding(a, cfg.num_atom_classes)
        self.atom_latent_emb = nn.Linear(a + cfg.latent_dim, a)
        self.edge_emb = EdgeEmbedding(a, cfg.num_radial, e)
        if cfg.lattice_cosine_features:
            self.angle_edge_emb = nn.Sequential(nn.Linear(e + 3, e), nn.ReLU(), nn.Linear(e, e))
        self.int_blocks = nn.ModuleList([InteractionBlock(cfg, i) for i in range(cfg.num_blocks)])
        self.out_blocks = nn.ModuleList(
            [OutputBlock(cfg, _initial(_OUT_RBF_F, i)) for i in range(cfg.num_blocks + 1)]
        )
        self.lattice_out_blocks = nn.ModuleList([LatticeOutputBlock(cfg) for _ in range(cfg.num_blocks + 1)])
        if cfg.condition_on_adapt:
            self.cond_adapt_layers = nn.ModuleDict(
                {
                    p: nn.ModuleList(
                        [nn.Sequential(nn.Linear(2 * a, a), nn.ReLU(), nn.Linear(a, a)) for _ in range(cfg.num_blocks)]
                    )
                    for p in cfg.condition_on_adapt
                }
            )
            self.cond_mixin_layers = nn.ModuleDict(
                {p: nn.ModuleList([nn.Linear(a, a, bias=False) for _ in range(cfg.num_blocks)]) for p in cfg.condition_on_adapt}
            )
            for layers in self.cond_mixin_layers.values():
                for layer in layers:
                    nn.init.zeros_(layer.weight)

    def forward(
        self,
        *,
        z: torch.Tensor,
        frac_coords: torch.Tensor,
        atom_types: torch.Tensor,
        num_atoms: torch.Tensor,
        lattice: torch.Tensor,
        cond_embeddings: dict[str, torch.Tensor] | None = None,
        cond_keep: dict[str, torch.Tensor] | None = None,
    ) -> GemNetOutput:
        """
        Args:
            z: ``(B, latent_dim)`` per-crystal latent (the time encoding).
            frac_coords: ``(N, 3)``; atom_types: ``(N,)`` atomic numbers (101 = mask);
            num_atoms: ``(B,)``; lattice: ``(B, 3, 3)`` rows are lattice vectors.
            cond_embeddings: adapter property embeddings ``{name: (B, emb_size_atom)}``.
            cond_keep: ``{name: (B,)}`` 1 where the condition is used, 0 where it is dropped.
        """
        cfg = self.cfg
        b = lattice.shape[0]
        batch = torch.repeat_interleave(torch.arange(b, device=lattice.device), num_atoms, output_size=frac_coords.shape[0])  # (N,)
        g = build_graph(
            frac_coords,
            lattice,
            num_atoms,
            cutoff=cfg.cutoff,
            max_neighbors=cfg.max_neighbors,
            max_images=cfg.max_cell_images_per_dim,
        )
        cos_cab = (take(g.vec, g.id3_ca) * take(g.vec, g.id3_ba)).sum(-1).clamp(-1.0, 1.0)  # (T,)
        rbf = self.radial_basis(g.dist)  # (E, R)
        if self.radial_basis.same_as(self.cbf_basis3.radial_basis):  # the same basis of the same distances
            rad_cbf3, sph3 = rbf, legendre_sph(cos_cab, self.cbf_basis3.num_spherical)
        else:
            rad_cbf3, sph3 = self.cbf_basis3(g.dist, cos_cab)
        cbf3 = self.mlp_cbf3(rad_cbf3, sph3, g.id3_ca, g.id3_ragged_idx, kmax=g.kmax, trip_slots=g.trip_slots)
        rbf3 = self.mlp_rbf3(rbf)
        rbf_h = self.mlp_rbf_h(rbf)
        rbf_out = self.mlp_rbf_out(rbf)
        rbf_lat = self.mlp_rbf_lattice(rbf)

        h = self.atom_emb(atom_types)  # (N, A)
        h = self.atom_latent_emb(torch.cat([h, take(z, batch)], dim=-1))  # (N, A)
        m = self.edge_emb(h, rbf, g.src, g.dst)  # (E, D)
        if cfg.lattice_cosine_features:
            lat_rows = take(lattice, g.edge_batch)  # (E, 3, 3)
            cosines = torch.cosine_similarity(g.vec.unsqueeze(1), lat_rows, dim=-1)  # (E, 3)
            m = self.angle_edge_emb(torch.cat([m, cosines], dim=-1))

        f_st = self.out_blocks[0](m, rbf_out)  # (E,)
        stress = self.lattice_out_blocks[0](m, rbf_lat, g, b)  # (B, 3, 3)
        for i, block in enumerate(self.int_blocks):
            if cfg.condition_on_adapt and cond_embeddings:
                h = h + self._adapter_update(i, h, batch, cond_embeddings, cond_keep or {})
            h, m = block(h, m, rbf3, cbf3, rbf_h, g)
            f_st = f_st + self.out_blocks[i + 1](m, rbf_out)
            stress = stress + self.lattice_out_blocks[i + 1](m, rbf_lat, g, b)

        forces = h.new_zeros(h.shape[0], 3).index_add_(0, g.dst, f_st.unsqueeze(-1) * g.vec)  # (N, 3)
        return GemNetOutput(forces=forces, stress=stress, node_embeddings=h)

    def _adapter_update(
        self,
        block: int,
        h: torch.Tensor,
        batch: torch.Tensor,
        cond_embeddings: dict[str, torch.Tensor],
        cond_keep: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """``Σ_p keep_p · mixin_{p,i}(adapt_{p,i}([h, e_p[batch]]))`` (spec §4.2)."""
        update = torch.zeros_like(h)
        for name, emb in cond_embeddings.items():
            if name not in self.cond_adapt_layers:
                raise ValueError(f"no adapter for property {name!r}; this model adapts {list(self.cond_adapt_layers)}")
            keep = cond_keep.get(name, torch.ones(emb.shape[0], device=h.device)).to(h.dtype)[batch, None]
            x = self.cond_adapt_layers[name][block](torch.cat([h, emb[batch]], dim=-1))
            update = update + keep * self.cond_mixin_layers[name][block](x)
        return update
