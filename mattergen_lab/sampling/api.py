"""High-level sampling: checkpoint (name or path) -> sampler -> structures / files.

This is the one public function set that the CLI, notebooks and widgets call::

    from mattergen_lab.sampling.api import load_sampler
    sampler, info = load_sampler("runs/tiny/best", num_steps=200)
    for frame in sampler.iter_steps([8, 8], generator=torch.Generator().manual_seed(0), every=10): ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mattergen_lab.checkpoints import load_checkpoint
from mattergen_lab.data.num_atoms import NumAtomsDistribution
from mattergen_lab.model.io import Checkpoint
from mattergen_lab.noise.joint import DiffusionConfig, JointDiffusion
from mattergen_lab.sampling.frames import sampler_variant
from mattergen_lab.sampling.guidance import ClassifierFreeGuidance
from mattergen_lab.sampling.sampler import PredictorCorrectorSampler, SamplerConfig


@dataclass(frozen=True)
class SamplerInfo:
    """What a sampler was built from (for reports and exports)."""

    checkpoint: str
    num_atoms: NumAtomsDistribution
    properties: tuple[str, ...]
    guidance_scale: float
    sampler_config: SamplerConfig
    #: a crystal-structure-prediction model (``diffusion.fixed_atom_types``): it samples given compositions only
    csp: bool = False


#: Predictor-corrector steps when neither the caller nor the checkpoint says otherwise (the official value).
DEFAULT_NUM_STEPS = 1000


def recommended_num_steps(ckpt: Checkpoint) -> int:
    """The step count a checkpoint recommends (``config["sampling"]["num_steps"]``), else 1000 (official).

    The bundled CPU models set a smaller value, measured to keep 16 crystals under a minute on 2 cores; their
    model cards give the quality at that value.
    """
    steps = (ckpt.config.get("sampling") or {}).get("num_steps", DEFAULT_NUM_STEPS)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{ckpt.path}: config sampling.num_steps={steps!r} must be a positive integer")
    return steps


def build_sampler(
    ckpt: Checkpoint,
    *,
    num_steps: int | None = None,
    guidance_scale: float = 0.0,
    device: torch.device | str = "cpu",
    sampler_config: SamplerConfig | None = None,
    sampler_settings: Mapping[str, Any] | None = None,
) -> tuple[PredictorCorrectorSampler, SamplerInfo]:
    """A predictor-corrector sampler over a loaded checkpoint (model in eval mode, on ``device``).

    ``num_steps=None`` uses the checkpoint's :func:`recommended_num_steps`. ``sampler_settings``: a sampler variant
    (:attr:`SamplingRequest.sampler <mattergen_lab.sampling.request.SamplingRequest>`, e.g.
    ``{"n_corrector_steps": 0}``), validated here (``ValueError`` names the key); not together with ``sampler_config``.
    """
    variant = sampler_variant(sampler_settings)
    if variant and sampler_config is not None:
        raise ValueError(f"sampler_settings={variant} and sampler_config= both set the sampler; pass one")
    g = guidance_scale
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
        raise ValueError(f"guidance_scale={g!r} must be a finite number >= 0")
    model = ckpt.model.to(device).eval()
    diffusion = JointDiffusion(DiffusionConfig.from_dict(ckpt.config.get("diffusion", {})))
    # num_steps=0 is an error (SamplerConfig names it), not "the recommended count"
    config = sampler_config or SamplerConfig(num_steps=recommended_num_steps(ckpt) if num_steps is None else num_steps,
                                             **variant)
    if guidance_scale and not model.conditions:
        raise ValueError(
            f"guidance_scale={guidance_scale!r} needs a conditional checkpoint; {ckpt.path or 'this model'} is "
            "unconditional (use guidance_scale=0, or an adapter checkpoint)"
        )
    score_fn = ClassifierFreeGuidance(model, guidance_scale) if model.conditions else model
    table = ckpt.config.get("num_atoms_distribution") or None
    dist = NumAtomsDistribution.from_dict(table) if table else NumAtomsDistribution.from_table("ALEX_MP_20")
    info = SamplerInfo(
        checkpoint=str(ckpt.path or ""),
        num_atoms=dist,
        properties=tuple(model.conditions),
        guidance_scale=float(guidance_scale),
        sampler_config=config,
        csp=diffusion.config.fixed_atom_types,
    )
    return PredictorCorrectorSampler(score_fn, diffusion, config), info


def load_sampler(checkpoint: str | os.PathLike, **kwargs: Any) -> tuple[PredictorCorrectorSampler, SamplerInfo]:
    """:func:`build_sampler` on :func:`~mattergen_lab.checkpoints.load_checkpoint` (name or path)."""
    return build_sampler(load_checkpoint(checkpoint), **kwargs)


def validated_conditions(conditions: Mapping[str, Any] | None, info: SamplerInfo) -> dict[str, Any] | None:
    """Check condition names and values at the boundary; ``ValueError`` names the bad one."""
    from mattergen_lab.model.property_embeddings import check_scalar_target, parse_chemical_system

    if not conditions:
        return None
    out: dict[str, Any] = {}
    for name, value in conditions.items():
        if name not in info.properties:
            supported = list(info.properties) or "nothing (an unconditional model)"
            raise ValueError(f"condition {name!r} is not supported by checkpoint {info.checkpoint!r}; it conditions on {supported}")
        if name == "chemical_system":
            out[name] = "-".join(parse_chemical_system(str(value)))
        elif name == "space_group":
            try:
                x = float(value) if not isinstance(value, bool) else math.nan
            except (TypeError, ValueError):
                x = math.nan
            if not math.isfinite(x) or x != int(x) or not 1 <= x <= 230:
                raise ValueError(f"space_group={value!r} must be an integer in 1-230")
            out[name] = int(x)
        else:
            out[name] = check_scalar_target(name, value)
    return out


def sampling_kwargs(
    info: SamplerInfo,
    *,
    num_atoms: int | None,
    seed: int,
    conditions: Mapping[str, Any] | None,
    elements: str | None,
    device: torch.device | str,
    composition: str | None = None,
    formula_units: int = 1,
) -> dict[str, Any]:
    """Keyword arguments shared by ``sample`` and ``sample_to_dir``.

    With a ``chemical_system`` condition (or ``elements``), atoms outside that system are masked out at
    every step: a hard constraint, whatever the guidance factor. A ``composition`` (CSP) needs a CSP checkpoint,
    and a CSP checkpoint needs one; ``ValueError`` names the checkpoint otherwise.
    """
    from mattergen_lab.sampling.request import SamplingRequest

    props = validated_conditions(conditions, info)
    # the request validates the mask (elements that exist, not empty, not in conflict with the target system) and
    # the composition (a formula of real, generatable elements, whole amounts, <= 20 atoms, agreeing with num_atoms)
    request = SamplingRequest(conditions=props or {}, elements=elements, composition=composition,
                              formula_units=formula_units, num_atoms=num_atoms if composition is not None else None)
    if request.composition is not None and not info.csp:
        raise ValueError(
            f"composition={request.composition.formula!r} needs a crystal-structure-prediction checkpoint (one trained "
            f"with the atom types given, e.g. mgl_mp20_small_csp); {info.checkpoint or 'this checkpoint'} generates its own atom types"
        )
    if info.csp and request.composition is None:
        raise ValueError(f"{info.checkpoint or 'this checkpoint'} is a crystal-structure-prediction (CSP) model: it samples "
                         "structures for a given composition only; pass composition= (CLI: --composition Li2MnO3)")
    system = request.mask
    if request.composition is not None:
        return {"num_atoms": None, "seed": seed, "device": device, "properties": props, "allowed_elements": None,
                "composition": request.composition}
    return {
        "num_atoms": num_atoms if num_atoms is not None else info.num_atoms,
        "seed": seed,
        "device": device,
        "properties": props,
        "allowed_elements": list(system.symbols) if system else None,
    }


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
) -> list:
    """Sample ``num_samples`` crystals and return pymatgen structures.

    Args:
        conditions: target values, e.g. ``{"chemical_system": "Li-Fe-O", "hhi_score": 1250}``.
        guidance_scale: classifier-free guidance factor γ (0 = unconditional, the official default).
        elements: restrict the sampled elements, e.g. ``"Li-Fe-O"`` (any checkpoint).
        composition, formula_units: crystal-structure prediction with a CSP checkpoint (``mgl_mp20_small_csp``):
            every crystal holds exactly ``formula × formula_units`` atoms, e.g. ``composition="Li2MnO3"``.
        sampler_settings: a sampler variant, e.g. ``{"n_corrector_steps": 0}`` (see :func:`build_sampler`).
    """
    sampler, info = load_sampler(checkpoint, num_steps=num_steps, guidance_scale=guidance_scale, device=device,
                                 sampler_settings=sampler_settings)
    kwargs = sampling_kwargs(info, num_atoms=num_atoms, seed=seed, conditions=conditions, elements=elements, device=device,
                             composition=composition, formula_units=formula_units)
    return sampler.sample(num_samples, batch_size=batch_size, **kwargs)


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
) -> list[Path]:
    """Like :func:`sample`, writing ``cifs/gen_*.cif`` + ``generated_crystals.extxyz`` as it goes (resumable).

    A composition and the sampler variant are part of the run's settings (``sampling.json``): a restart with
    another one is refused."""
    sampler, info = load_sampler(checkpoint, num_steps=num_steps, guidance_scale=guidance_scale, device=device,
                                 sampler_settings=sampler_settings)
    kwargs = sampling_kwargs(info, num_atoms=num_atoms, seed=seed, conditions=conditions, elements=elements, device=device,
                             composition=composition, formula_units=formula_units)
    settings = {"checkpoint": str(checkpoint), "weights": weights_identity(info.checkpoint),
                "guidance_scale": info.guidance_scale, "device_type": torch.device(device).type}
    return sampler.sample_to_dir(out_dir, num_samples, batch_size=batch_size, on_batch=on_batch, settings=settings, **kwargs)


def weights_identity(path: str) -> str:
    """What identifies a checkpoint's weights in a run record: the sha256 of ``model.safetensors`` (ours, a few
    MB), else the file's path, size and modification time (official files of 500 MB are not hashed each run)."""
    from mattergen_lab.checkpoints import sha256_of

    p = Path(path)
    weights = p / "model.safetensors" if p.is_dir() else p
    if weights.is_file() and weights.stat().st_size < 64 << 20:
        return f"sha256:{sha256_of(weights)}"
    if weights.is_file():
        st = weights.stat()
        return f"{weights}|{st.st_size}|{int(st.st_mtime)}"
    return str(path)


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
