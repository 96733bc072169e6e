"""The GPU radius-graph search (one batched pass) finds exactly the CPU loop's pairs, in the same order."""

import pytest
import torch

from mattergen_lab.model import graph as graph_mod
from mattergen_lab.testing import random_crystal_batch


def _cart(batch):
    return torch.einsum("ni,nij->nj", batch.frac_coords, batch.lattice[batch.batch_idx])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_candidates_equal_the_per_crystal_loop(seed):
    g = torch.Generator().manual_seed(seed)
    # mixed sizes; one crystal squashed to a thin slab so its image range differs from the others'
    batch = random_crystal_batch((1, 4, 7, 12, 20), generator=g)
    batch.lattice[2, 2] *= 0.25
    cart = _cart(batch)
    kwargs = dict(cutoff=5.0, max_images=5)
    loop = graph_mod._candidates_per_crystal(cart, batch.lattice, batch.num_atoms, **kwargs)
    fused = graph_mod._candidates_batched(cart, batch.lattice, batch.num_atoms, **kwargs)
    reps = graph_mod.image_reps(batch.lattice, 5.0, 5)
    assert len(set(map(tuple, reps.tolist()))) > 1  # the crystals really have different image ranges
    assert loop[0].shape[0] > 100
    for a, b in zip(loop, fused):
        assert a.shape == b.shape
        assert torch.equal(a, b) if a.dtype == torch.long else torch.allclose(a, b, atol=1e-12)


def test_graph_is_the_same_whichever_search_builds_it(monkeypatch):
    g = torch.Generator().manual_seed(3)
    batch = random_crystal_batch((3, 9, 16), generator=g)
    args = (batch.frac_coords, batch.lattice, batch.num_atoms)
    kwargs = dict(cutoff=5.0, max_neighbors=12, max_images=5)
    cpu = graph_mod.build_graph(*args, **kwargs)
    monkeypatch.setattr(graph_mod, "_candidates_per_crystal", graph_mod._candidates_batched)
    fused = graph_mod.build_graph(*args, **kwargs)
    for name in ("src", "dst", "offsets", "id_swap", "edge_batch", "id3_ba", "id3_ca", "id3_ragged_idx", "edge_counts"):
        assert torch.equal(getattr(cpu, name), getattr(fused, name)), name
    assert torch.allclose(cpu.dist, fused.dist)
    # the per-crystal edge counts the lattice head divides by are the bincount of edge_batch
    assert torch.equal(cpu.edge_counts, torch.bincount(cpu.edge_batch, minlength=3))
    assert cpu.edge_counts.sum() == cpu.num_edges
