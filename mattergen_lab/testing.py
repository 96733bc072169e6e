"""Symmetry contracts for score networks, shipped with the library (used by our tests; usable by yours).

``assert_score_equivariant(model, batch)`` checks that a ``model(batch, t) -> ScoreOutput`` respects the
symmetries of periodic crystals:

* **rotation** ``L -> L Rᵀ``: logits unchanged, the Cartesian coordinate score ``Lᵀ s_frac`` rotates to
  ``R Lᵀ s_frac`` (so the fractional score is unchanged), the lattice score becomes ``R S Rᵀ``;
* **permutation** of the atoms inside each crystal: per-atom outputs are permuted the same way;
* **translation** of all fractional coordinates of a crystal by one vector: nothing changes;
* **supercell** (a diagonal supercell ``M L``): per-atom logits and Cartesian scores repeat, the lattice
  score is unchanged;
* **basis** change ``L -> M L``, ``f -> f M⁻¹`` with integer unimodular ``M``: logits, Cartesian score and
  lattice score unchanged. The official GemNet-T is *not* invariant to this (it feeds the cosines between
  edges and lattice vectors to the network), so this check runs only for models with
  ``config.lattice_cosine_features == False`` unless asked for explicitly.

Run in float64. The official 50-nearest-neighbour cap makes the graph discontinuous where it cuts through
a shell of equidistant neighbours; use a configuration whose cap does not bind (or generic structures) when
checking to tight tolerances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mattergen_lab.constants import AVERAGE_DENSITY
from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.model.output import ScoreOutput

ScoreFn = Callable[[CrystalBatch, torch.Tensor], ScoreOutput]
ALL_CHECKS = ("rotation", "permutation", "translation", "supercell", "basis")


def random_rotation(generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A uniformly random proper rotation ``(3, 3)``."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_crystal_batch(
    num_atoms: Sequence[int] = (3, 5),
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    elements: Sequence[int] = (3, 8, 14, 26, 29),
) -> CrystalBatch:
    """Generic (asymmetric) random crystals at the training density, for symmetry checks."""
    n = torch.as_tensor(list(num_atoms), dtype=torch.long)
    side = (n.to(dtype) / AVERAGE_DENSITY) ** (1 / 3)  # (B,)
    lattice = side[:, None, None] * (torch.eye(3, dtype=dtype) + 0.15 * torch.randn(len(n), 3, 3, generator=generator, dtype=dtype))
    choice = torch.randint(len(elements), (int(n.sum()),), generator=generator)
    return CrystalBatch(
        atom_types=torch.as_tensor(elements)[choice],
        frac_coords=torch.rand(int(n.sum()), 3, generator=generator, dtype=dtype),
        lattice=lattice,
        num_atoms=n,
    )


def cartesian_score(batch: CrystalBatch, out: ScoreOutput) -> torch.Tensor:
    """``(N, 3)`` Cartesian coordinate score ``Lᵀ s_frac`` (inverse of the head's ``L⁻ᵀ f``)."""
    lat_t = batch.lattice.transpose(1, 2)[batch.batch_idx]  # (N, 3, 3)
    return (lat_t @ out.frac_coords.unsqueeze(-1)).squeeze(-1)


def _close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    scale = want.abs().max().clamp(min=1e-12)
    err = float((got - want).abs().max() / scale)
    if not err <= rtol:  # also catches NaN
        raise AssertionError(f"{name}: relative error {err:.3e} exceeds {rtol:.1e}")


def supercell(batch: CrystalBatch, reps: Sequence[int]) -> tuple[CrystalBatch, torch.Tensor]:
    """Diagonal supercell of every crystal; also returns, per new atom, the index of its original atom."""
    m1, m2, m3 = (int(r) for r in reps)
    dtype = batch.frac_coords.dtype
    shifts = torch.cartesian_prod(*(torch.arange(r, dtype=dtype) for r in (m1, m2, m3))).reshape(-1, 3)  # (R, 3)
    scale = torch.tensor([m1, m2, m3], dtype=dtype)
    frac, types, origin = [], [], []
    for i, (lo, hi) in enumerate(zip(batch.ptr[:-1].tolist(), batch.ptr[1:].tolist())):
        f = batch.frac_coords[lo:hi]  # (n, 3)
        frac.append(((f.unsqueeze(0) + shifts.unsqueeze(1)) / scale).reshape(-1, 3))  # (R*n, 3)
        types.append(batch.atom_types[lo:hi].repeat(len(shifts)))
        origin.append(torch.arange(lo, hi).repeat(len(shifts)))
    big = CrystalBatch(
        atom_types=torch.cat(types),
        frac_coords=torch.cat(frac),
        lattice=scale[None, :, None] * batch.lattice,
        num_atoms=batch.num_atoms * len(shifts),
        properties=dict(batch.properties),
    )
    return big, torch.cat(origin)


def assert_score_equivariant(
    model: ScoreFn,
    batch: CrystalBatch,
    t: torch.Tensor | None = None,
    *,
    checks: Sequence[str] | None = None,
    rtol: float = 1e-6,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Check the symmetries listed in the module docstring; raise ``AssertionError`` naming a failure.

    Returns the names of the checks that ran. The input batch is not modified.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if checks is None:
        cfg = getattr(model, "config", None)
        basis_ok = cfg is not None and not getattr(cfg, "lattice_cosine_features", True)
        checks = [c for c in ALL_CHECKS if c != "basis" or basis_ok]
    unknown = sorted(set(checks) - set(ALL_CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {list(ALL_CHECKS)}")
    dtype = batch.frac_coords.dtype
    if t is None:
        t = torch.rand(len(batch), generator=gen, dtype=dtype) * 0.9 + 0.05
    with torch.no_grad():
        ref = model(batch, t)
        ref_cart = cartesian_score(batch, ref)

        if "rotation" in checks:
            rots = torch.stack([random_rotation(gen, dtype) for _ in range(len(batch))])  # (B, 3, 3)
            rotated = batch.replace(lattice=batch.lattice @ rots.transpose(1, 2))
            out = model(rotated, t)
            r_atom = rots[batch.batch_idx]  # (N, 3, 3)
            _close("rotation/logits", out.atom_logits, ref.atom_logits, rtol)
            _close("rotation/coord score", cartesian_score(rotated, out), (r_atom @ ref_cart.unsqueeze(-1)).squeeze(-1), rtol)
            _close("rotation/lattice score", out.lattice, rots @ ref.lattice @ rots.transpose(1, 2), rtol)

        if "permutation" in checks:
            perm = torch.cat(
                [lo + torch.randperm(hi - lo, generator=gen) for lo, hi in zip(batch.ptr[:-1].tolist(), batch.ptr[1:].tolist())]
            )
            permuted = batch.replace(atom_types=batch.atom_types[perm], frac_coords=batch.frac_coords[perm])
            out = model(permuted, t)
            _close("permutation/logits", out.atom_logits, ref.atom_logits[perm], rtol)
            _close("permutation/coord score", out.frac_coords, ref.frac_coords[perm], rtol)
            _close("permutation/lattice score", out.lattice, ref.lattice, rtol)

        if "translation" in checks:
            shift = torch.rand(len(batch), 3, generator=gen, dtype=dtype)[batch.batch_idx]
            moved = batch.replace(frac_coords=(batch.frac_coords + shift) % 1.0)
            out = model(moved, t)
            _close("translation/logits", out.atom_logits, ref.atom_logits, rtol)
            _close("translation/coord score", out.frac_coords, ref.frac_coords, rtol)
            _close("translation/lattice score", out.lattice, ref.lattice, rtol)

        if "supercell" in checks:
            big, origin = supercell(batch, (2, 1, 1))
            out = model(big, t)
            _close("supercell/logits", out.atom_logits, ref.atom_logits[origin], rtol)
            _close("supercell/coord score", cartesian_score(big, out), ref_cart[origin], rtol)
            _close("supercell/lattice score", out.lattice, ref.lattice, rtol)

        if "basis" in checks:
            m = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 1.0]], dtype=dtype)  # det 1
            m = m[[2, 0, 1]]  # also permute the lattice vectors
            new_lat = m @ batch.lattice  # (B, 3, 3)
            new_frac = (batch.frac_coords @ torch.linalg.inv(m)) % 1.0
            changed = batch.replace(lattice=new_lat, frac_coords=new_frac)
            out = model(changed, t)
            _close("basis/logits", out.atom_logits, ref.atom_logits, rtol)
            _close("basis/coord score", cartesian_score(changed, out), ref_cart, rtol)
            _close("basis/lattice score", out.lattice, ref.lattice, rtol)
    return list(checks)



def tiny_model(seed: int = 0):
    """A randomly initialised ``tiny``-preset :class:`~mattergen_lab.model.score_model.ScoreModel`, seeded, in eval
    mode: the stand-in checkpoint of sampler, fine-tuning and CLI tests."""
    from mattergen_lab.model.score_model import ScoreModel

    torch.manual_seed(seed)
    return ScoreModel.from_preset("tiny").eval()
