"""High-level sampling: ``sample()``, ``sample_to_dir()``, ``vary()`` (from a known crystal) and ``read_samples()``.

``sample`` and ``sample_to_dir`` build a :class:`~mattergen_lab.sampling.request.SamplingRequest` from their keyword
arguments and call the cached :class:`~mattergen_lab.sampling.pipeline.SamplingPipeline` for it, so two calls with
one checkpoint load it once, and they give the crystals the CLI, the design app and a campaign give for that seed::

    from mattergen_lab.sampling.api import sample
    crystals = sample("mgl_mp20_small", 8, num_steps=50, seed=0)

The builders of a sampler (``build_sampler``, ``load_sampler``, ``SamplerInfo``, ``validated_conditions``...) live in
:mod:`~mattergen_lab.sampling.build` and are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mattergen_lab.sampling.build import (  # noqa: F401 (public names, importable from here as before)
    DEFAULT_NUM_STEPS,
    SamplerInfo,
    build_sampler,
    load_sampler,
    recommended_num_steps,
    validated_conditions,
)
from mattergen_lab.sampling.pipeline import SamplingPipeline
from mattergen_lab.sampling.request import SamplingRequest


def _request(checkpoint: str | os.PathLike, num_samples: int, *, batch_size: int, num_steps: int | None,
             num_atoms: int | None, seed: int, conditions: Mapping[str, Any] | None, guidance_scale: float,
             elements: str | None, device: torch.device | str, composition: str | None, formula_units: int,
             sampler_settings: Mapping[str, Any] | None, symmetry: Any = None) -> SamplingRequest:
    return SamplingRequest(
        checkpoint=str(checkpoint), num_samples=num_samples, batch_size=batch_size, num_steps=num_steps,
        conditions=conditions if conditions is not None else {}, guidance_scale=guidance_scale, elements=elements, num_atoms=num_atoms,
        seed=seed, device=str(device), composition=composition, formula_units=formula_units,
        sampler=dict(sampler_settings or {}), symmetry=symmetry,
    )


def sample(
    checkpoint: str | os.PathLike,
    num_samples: int,
    *,
    batch_size: int = 16,
    num_steps: int | None = None,
    num_atoms: int | None = None,
    seed: int = 0,
    conditions: Mapping[str, Any] | None = None,
    guidance_scale: float = 0.0,
    elements: str | None = None,
    device: torch.device | str = "cpu",
    composition: str | None = None,
    formula_units: int = 1,
    sampler_settings: Mapping[str, Any] | None = None,
    symmetry: Any = None,
) -> list:
    """Sample ``num_samples`` crystals and return pymatgen structures.

    Args:
        conditions: target values, e.g. ``{"chemical_system": "Li-Fe-O", "hhi_score": 1250}``; a chemical system is
            also a hard element mask at every step.
        guidance_scale: classifier-free guidance factor γ (0 = unconditional, the official default).
        elements: restrict the sampled elements, e.g. ``"Li-Fe-O"`` (any checkpoint).
        composition, formula_units: crystal-structure prediction with a CSP checkpoint (``mgl_mp20_small_csp``):
            every crystal holds exactly ``formula × formula_units`` atoms, e.g. ``composition="Li2MnO3"``.
        sampler_settings: a sampler variant, e.g. ``{"n_corrector_steps": 0}`` (see :func:`build_sampler`).
        symmetry: the symmetric mode: a space group (``225``), a crystal system (``"cubic"``), ``"mp20"`` (MP-20's
            templates) or a Wyckoff template (``"225:ab"``); every crystal is exactly symmetric
            (:class:`~mattergen_lab.symmetry.templates.SymmetrySpec`).

    The same as ``SamplingPipeline.for_request(r)(r)`` with ``r = SamplingRequest(checkpoint, num_samples, ...)``.
    """
    request = _request(checkpoint, num_samples, batch_size=batch_size, num_steps=num_steps, num_atoms=num_atoms,
                       seed=seed, conditions=conditions, guidance_scale=guidance_scale, elements=elements,
                       device=device, composition=composition, formula_units=formula_units,
                       sampler_settings=sampler_settings, symmetry=symmetry)
    return SamplingPipeline.for_request(request)(request)


def sample_to_dir(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_samples: int,
    batch_size: int = 16,
    num_steps: int | None = None,
    num_atoms: int | None = None,
    seed: int = 0,
    conditions: Mapping[str, Any] | None = None,
    guidance_scale: float = 0.0,
    elements: str | None = None,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    composition: str | None = None,
    formula_units: int = 1,
    sampler_settings: Mapping[str, Any] | None = None,
    symmetry: Any = None,
) -> list[Path]:
    """Like :func:`sample`, writing ``cifs/gen_*.cif`` + ``generated_crystals.extxyz`` as it goes (resumable).

    A composition and the sampler variant are part of the run's settings (``sampling.json``): a restart with
    another one is refused. The same as ``SamplingPipeline.for_request(r).to_dir(r, out_dir)``."""
    request = _request(checkpoint, num_samples, batch_size=batch_size, num_steps=num_steps, num_atoms=num_atoms,
                       seed=seed, conditions=conditions, guidance_scale=guidance_scale, elements=elements,
                       device=device, composition=composition, formula_units=formula_units,
                       sampler_settings=sampler_settings, symmetry=symmetry)
    return SamplingPipeline.for_request(request).to_dir(request, out_dir, on_batch=on_batch)


def vary(
    parent: Any,
    num_samples: int = 16,
    *,
    strength: float | None = None,
    fix_sites: Any = None,
    substitute: Any = None,
    keep_symmetry: bool = False,
    num_atoms: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    batch_size: int = 16,
    num_steps: int | None = None,
    seed: int = 0,
    conditions: Mapping[str, Any] | None = None,
    guidance_scale: float = 0.0,
    elements: str | None = None,
    device: torch.device | str = "cpu",
    sampler_settings: Mapping[str, Any] | None = None,
) -> list:
    """Crystals sampled from ``parent`` (a pymatgen ``Structure`` or a CIF/POSCAR/extxyz path) instead of from noise.

    ``strength`` t0 in (0, 1] noises the parent to t0 and denoises from there (SDEdit); ``fix_sites`` keeps those
    sites and the cell and generates the rest (RePaint-style inpainting); ``substitute="Fe=Mn,Co"`` re-samples the
    Fe sites among Mn and Co and keeps the others; ``keep_symmetry`` keeps the parent's space group and Wyckoff sites
    (the symmetric mode on the parent's own template); ``num_atoms`` with ``fix_sites`` sets each crystal's atoms (the
    fixed sites plus new ones from the prior). ``checkpoint``: ``None`` is the bundled base, or with
    ``keep_symmetry`` its fine-tune on symmetric noise. See :mod:`~mattergen_lab.sampling.variation`::

        from mattergen_lab import vary
        neighbours = vary("LiFePO4.cif", 16, strength=0.3, seed=0)

    The same as ``SamplingPipeline.for_request(r)(r)`` with ``r = SamplingRequest(checkpoint, parent=parent, ...)``
    (``pipe.to_dir(r, out)`` writes them, recording the parent's sha256 in ``sampling.json``).
    """
    from mattergen_lab.sampling.variation import vary_checkpoint

    request = SamplingRequest(
        checkpoint=vary_checkpoint(checkpoint, keep_symmetry), num_samples=num_samples, batch_size=batch_size, num_steps=num_steps, seed=seed,
        conditions=conditions if conditions is not None else {}, guidance_scale=guidance_scale, elements=elements, device=str(device),
        sampler=dict(sampler_settings or {}), parent=parent, strength=strength, fix_sites=fix_sites,
        substitute=substitute, symmetry="parent" if keep_symmetry else None, num_atoms=num_atoms,
    )
    return SamplingPipeline.for_request(request)(request)


def read_samples(out_dir: str | os.PathLike, num_samples: int | None = None) -> list:
    """The crystals a :func:`sample_to_dir` run wrote, as pymatgen structures in generation order.

    Reads ``generated_crystals.extxyz`` (full precision, the generated cells; the CIFs hold the Niggli-reduced
    cells). With ``num_samples``, ``gen_0 … gen_{n-1}`` must all be there;
    ``ValueError`` names the missing ones (rerun ``sample_to_dir`` to resume).
    """
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    path = Path(out_dir) / "generated_crystals.extxyz"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: no crystals were sampled into {out_dir}")
    frames = {int(a.info["gen_index"]): a for a in read(path, index=":", format="extxyz")}
    wanted = range(num_samples) if num_samples is not None else sorted(frames)
    missing = [i for i in wanted if i not in frames]
    if missing:
        raise ValueError(f"{path} lacks crystals {missing[:10]}{' …' if len(missing) > 10 else ''}; rerun sampling to resume")
    return [AseAtomsAdaptor.get_structure(frames[i]) for i in wanted]
