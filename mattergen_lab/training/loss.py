"""The MatterGen training loss (spec §2.5).

Per crystal i, with t_i ~ U[1e-5, 1] and the noisy batch from :meth:`JointDiffusion.corrupt`:

    L_pos(i)  = Σ_{atoms a ∈ i} mean_xyz (target_a − out_a)²           target = std·s_WN(f_t | f_0)
    L_cell(i) = mean_{9 entries} (out_i − target_i)²                     target = −ε_sym
    L_type(i) = Σ_{atoms a ∈ i} [KL_a (or CE_a at τ = 0) + 0.01·CE(logits_a, x0_a)]
    L         = mean_i [0.1·L_pos(i) + 1.0·L_cell(i) + 1.0·L_type(i)]

The 101 logits are used without any element mask during training. With fixed atom types (CSP,
``DiffusionConfig.fixed_atom_types``) the types are never noised and L_type is 0 (it is not computed).
A batch that names its Wyckoff templates (``properties["wyckoff_template"]``) is noised inside them
(:func:`~mattergen_lab.symmetry.noising.symmetric_corrupt`, DiffCSP++-style training of the symmetric model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from mattergen_lab.crystal import CrystalBatch
from mattergen_lab.model.output import ScoreOutput
from mattergen_lab.noise.joint import JointDiffusion

#: Official field weights (``lightning_module/diffusion_module/default.yaml``).
LOSS_WEIGHTS: dict[str, float] = {"pos": 0.1, "cell": 1.0, "atomic_numbers": 1.0}


def _sum_per_crystal(values: torch.Tensor, batch_idx: torch.Tensor, num_crystals: int) -> torch.Tensor:
    """``(N,) -> (B,)`` sum of per-atom values over each crystal."""
    return torch.zeros(num_crystals, dtype=values.dtype, device=values.device).index_add_(0, batch_idx, values)


def diffusion_loss(
    model: Callable[[CrystalBatch, torch.Tensor], ScoreOutput],
    batch: CrystalBatch,
    diffusion: JointDiffusion,
    *,
    generator: torch.Generator,
    t: torch.Tensor | None = None,
    weights: Mapping[str, float] = LOSS_WEIGHTS,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Corrupt ``batch``, run ``model`` on it and return ``(loss, metrics)``.

    Args:
        model: ``model(noisy_batch, t) -> ScoreOutput``.
        batch: clean crystals (atomic numbers 1..100, symmetric lattices).
        generator: all noise (t, coordinates, lattice, masking) is drawn from it; it must live on
            ``batch.device``.
        t: ``(B,)`` fixed times instead of t ~ U[1e-5, 1] (for evaluation and tests).
        weights: per-field weights with keys ``pos``, ``cell``, ``atomic_numbers``.

    Returns:
        The scalar loss (differentiable) and float metrics ``loss``, ``pos``, ``cell``,
        ``atomic_numbers`` (the per-field terms are unweighted means over crystals).
    """
    terms = loss_per_crystal(model, batch, diffusion, generator=generator, t=t, weights=weights)
    loss = terms["loss"].mean()
    metrics = {name: float(value.detach().mean()) for name, value in terms.items() if name != "t"}
    return loss, metrics


def loss_per_crystal(
    model: Callable[[CrystalBatch, torch.Tensor], ScoreOutput],
    batch: CrystalBatch,
    diffusion: JointDiffusion,
    *,
    generator: torch.Generator,
    t: torch.Tensor | None = None,
    weights: Mapping[str, float] = LOSS_WEIGHTS,
) -> dict[str, torch.Tensor]:
    """The loss terms of each crystal: ``{loss, pos, cell, atomic_numbers, t}``, each ``(B,)``.

    ``loss`` is the weighted sum (differentiable); the field terms are unweighted; ``t`` is the time used.
    Arguments as in :func:`diffusion_loss`.
    """
    missing = sorted(set(LOSS_WEIGHTS) - set(weights))
    if missing:
        raise ValueError(f"weights={dict(weights)!r} lacks key(s) {missing}")
    b = batch.num_crystals
    if t is None:
        t = diffusion.sample_time(b, generator=generator, dtype=batch.lattice.dtype, device=batch.device)
    if "wyckoff_template" in batch.properties:  # a SymmetricDataset's batch: noise it inside its templates
        from mattergen_lab.symmetry.noising import symmetric_corrupt

        noisy, target = symmetric_corrupt(diffusion, batch, t, generator=generator)
    else:
        noisy, target = diffusion.corrupt(batch, t, generator=generator)
    out = model(noisy, t)
    batch_idx = batch.batch_idx  # (N,)

    pos_atom = ((target.frac_coords - out.frac_coords) ** 2).mean(-1)  # (N,)
    pos = _sum_per_crystal(pos_atom, batch_idx, b)  # (B,)
    cell = ((out.lattice - target.lattice) ** 2).reshape(b, 9).mean(-1)  # (B,)
    if diffusion.config.fixed_atom_types:  # CSP: no type loss (the logits get no gradient)
        types = torch.zeros(b, dtype=pos.dtype, device=pos.device)  # (B,)
    else:
        type_atom = diffusion.types.loss_per_atom(
            out.atom_logits, target.atom_classes, target.noisy_classes, target.type_step
        )  # (N,)
        types = _sum_per_crystal(type_atom, batch_idx, b)  # (B,)
    per_crystal = weights["pos"] * pos + weights["cell"] * cell + weights["atomic_numbers"] * types  # (B,)
    return {"loss": per_crystal, "pos": pos, "cell": cell, "atomic_numbers": types, "t": t}
