"""The sampling speed-ups change no bit: each fast path against the code it replaced, and whole sampling runs.

Sampling amplifies any rounding difference into different crystals within a few dozen steps (1 and 2 torch threads
already give different crystals), so "the same crystals" needs the same bits, not a tolerance.
"""

import pytest
import torch

from mattergen_lab.model import graph as graph_mod
from mattergen_lab.model.gemnet import GemNetT
from mattergen_lab.model.layers import (
    Dense,
    EfficientInteractionBilinear,
    EfficientInteractionDownProjection,
    ResidualLayer,
)
from mattergen_lab.model.score_model import ScoreModel
from mattergen_lab.testing import random_crystal_batch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch(sizes=(2, 5, 9, 13, 20), seed=0, dtype=torch.float32):
    return random_crystal_batch(sizes, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_in_place_layers_without_gradients_give_the_out_of_place_bits():
    torch.manual_seed(0)
    x = torch.randn(3000, 64) * 3
    for layer in (Dense(64, 64, activation=True), Dense(64, 32), ResidualLayer(64)):
        with torch.no_grad():
            fast = layer(x)
        slow = layer(x).detach()  # gradients on: out of place, as before
        assert torch.equal(fast, slow)
        assert not torch.equal(fast, torch.zeros_like(fast))


def test_the_old_candidate_loop_and_the_new_one_find_the_same_bits():
    for seed in range(4):
        batch = _batch(seed=seed)
        batch.lattice[1] *= 0.6  # a dense crystal: many images
        cart = torch.einsum("ni,nij->nj", batch.frac_coords, batch.lattice[batch.batch_idx])
        new = graph_mod._candidates_per_crystal(cart, batch.lattice, batch.num_atoms, cutoff=6.0, max_images=5)
        old = _old_candidates(cart, batch.lattice, batch.num_atoms, cutoff=6.0, max_images=5)
        assert old[0].shape[0] > 500
        for a, b in zip(new, old):
            assert a.dtype == b.dtype and torch.equal(a, b)


def _old_candidates(cart, lattice, num_atoms, *, cutoff, max_images):
    """The candidate loop as it was (three-index gathers, grids rebuilt per call)."""
    ptr = torch.cat([num_atoms.new_zeros(1), torch.cumsum(num_atoms, 0)]).tolist()
    parts = []
    for i, rep in enumerate(graph_mod.image_reps(lattice, cutoff, max_images).tolist()):
        lo, hi = ptr[i], ptr[i + 1]
        offsets = torch.cartesian_prod(*[torch.arange(-r, r + 1, dtype=lattice.dtype) for r in rep]).reshape(-1, 3)
        shifts = offsets @ lattice[i]
        x = cart[lo:hi]
        d_vec = x[None, :, None, :] + shifts[None, None] - x[:, None, None, :]
        d2 = (d_vec * d_vec).sum(-1)
        t_idx, s_idx, k_idx = ((d2 <= cutoff * cutoff) & (d2 > 1e-4)).nonzero(as_tuple=True)
        parts.append((t_idx + lo, s_idx + lo, offsets[k_idx], d_vec[t_idx, s_idx, k_idx], d2[t_idx, s_idx, k_idx]))
    return tuple(torch.cat(col) for col in zip(*parts))


def test_one_int64_sort_orders_like_the_two_stable_sorts_ties_included():
    g = torch.Generator().manual_seed(0)
    tgt = torch.sort(torch.randint(0, 50, (4000,), generator=g)).values
    d2 = (torch.randint(1, 40, (4000,), generator=g).float() / 7.0)  # few distinct values: many ties
    d2[::7] = 36.0
    two = torch.argsort(d2, stable=True)
    two = two[torch.argsort(tgt[two], stable=True)]
    assert torch.equal(graph_mod._order_by_target_then_distance(tgt, d2), two)
    shuffled = tgt[torch.randperm(4000, generator=g)]  # targets in any order
    two = torch.argsort(d2, stable=True)
    two = two[torch.argsort(shuffled[two], stable=True)]
    assert torch.equal(graph_mod._order_by_target_then_distance(shuffled, d2), two)


def test_padded_triplet_slots_lay_out_what_the_scatter_did():
    batch = _batch()
    g = graph_mod.build_graph(batch.frac_coords, batch.lattice, batch.num_atoms, cutoff=6.0, max_neighbors=16,
                              max_images=5)
    e, t = g.num_edges, g.id3_ba.shape[0]
    assert t > 1000 and g.kmax == int(g.id3_ragged_idx.max()) + 1
    torch.manual_seed(0)
    rbf, sph, m = torch.randn(e, 32), torch.randn(t, 7), torch.randn(e, 16)
    down = EfficientInteractionDownProjection(7, 32, 8)
    bilinear = EfficientInteractionBilinear(16, 8, 16)
    with torch.no_grad():
        old_basis = down(rbf, sph, g.id3_ca, g.id3_ragged_idx)
        new_basis = down(rbf, sph, g.id3_ca, g.id3_ragged_idx, kmax=g.kmax, trip_slots=g.trip_slots)
        assert all(torch.equal(a, b) for a, b in zip(old_basis, new_basis))
        old = bilinear(old_basis, m[g.id3_ba], g.id3_ca, g.id3_ragged_idx)
        new = bilinear.contract(new_basis, graph_mod.pad_rows(m, g.ba_slots, g.kmax))
    assert torch.equal(old, new)


def test_the_shared_radial_basis_is_used_only_when_it_is_the_same():
    torch.manual_seed(0)
    model = ScoreModel.from_preset("tiny").eval()
    gem: GemNetT = model.gemnet
    assert gem.radial_basis.same_as(gem.cbf_basis3.radial_basis)
    batch, t = _batch(seed=1), torch.full((5,), 0.4)
    with torch.no_grad():
        before = model(batch, t).frac_coords
        gem.cbf_basis3.radial_basis.rbf.offset.mul_(0.9)  # a checkpoint whose triplet basis differs
        assert not gem.radial_basis.same_as(gem.cbf_basis3.radial_basis)
        after = model(batch, t).frac_coords
    assert not torch.equal(before, after)


def test_sampling_with_the_fast_path_gives_the_reference_paths_crystals():
    """The bundled base samples the same bits without gradients (in place, index_select) as with them (the
    out-of-place ops and advanced indexing that ran before), at every step."""
    from mattergen_lab.sampling.api import load_sampler

    sampler, info = load_sampler("mgl_mp20_small", num_steps=12)
    model = sampler.model

    def reference(batch, t):
        with torch.enable_grad():
            out = model(batch, t)
        return type(out)(**{k: v.detach() for k, v in vars(out).items()})

    counts = [4, 8, 12, 20, 6]
    runs = []
    for fn in (model, reference):
        sampler.model = fn
        frames = sampler.iter_steps(counts, generator=torch.Generator().manual_seed(3), every=1)
        runs.append([(f.batch.frac_coords, f.batch.lattice, f.batch.atom_types) for f in frames])
    sampler.model = model
    assert len(runs[0]) == 14
    for fast, slow in zip(*runs):
        assert all(torch.equal(a, b) for a, b in zip(fast, slow))


def test_the_lattice_heads_shared_per_graph_terms_are_what_each_head_computed():
    batch = _batch(seed=2)
    g = graph_mod.build_graph(batch.frac_coords, batch.lattice, batch.num_atoms, cutoff=6.0, max_neighbors=16,
                              max_images=5)
    assert torch.equal(g.edge_outer, g.vec.unsqueeze(-1) * g.vec.unsqueeze(-2))
    assert torch.equal(g.edges_of_crystal, g.edge_counts.to(g.vec.dtype)[g.edge_batch])
    assert g.edge_outer is g.edge_outer  # made once per graph
