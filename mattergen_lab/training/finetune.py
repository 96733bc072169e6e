"""Fine-tuning a base model with property adapters (spec §4.2-4.3).

``finetune(base, properties, train_data, val_data, out_dir, config)``:

1. builds the adapter model: the base architecture plus, for each property, per-block adapter layers
   and zero-initialised mixin layers (so it starts out reproducing the base model exactly);
2. copies every base weight (all parameters stay trainable: the official ``full_finetuning``);
3. fits each scalar property's scaler (mean / population std, log10 first for bulk moduli) on the
   training labels; the scaler is saved with the checkpoint;
4. trains with classifier-free-guidance dropout (each condition dropped with p = 0.2; crystals with a
   missing label are always unconditional).

``finetune_csp(base, train_data, val_data, out_dir, config)`` turns a base model into a crystal-structure-
prediction (CSP) model: the same network and weights, trained with the atom types given at every t (no type
corruption, no type loss; :class:`~mattergen_lab.noise.joint.DiffusionConfig` ``fixed_atom_types=True``, which
the checkpoint's ``config.json`` records so the sampler knows to take compositions).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mattergen_lab.model.io import Checkpoint
from mattergen_lab.model.property_embeddings import SUPPORTED_PROPERTIES
from mattergen_lab.model.score_model import ScoreModel
from mattergen_lab.noise.joint import DiffusionConfig, is_csp_config
from mattergen_lab.training.trainer import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

#: Fewest labelled training crystals accepted for one property.
MIN_LABELS = 16


def adapter_model(base: ScoreModel, properties: Sequence[str]) -> ScoreModel:
    """The base model with adapters for ``properties`` added (existing adapters are kept)."""
    unknown = [p for p in properties if p not in SUPPORTED_PROPERTIES]
    if unknown:
        raise ValueError(f"unknown property {unknown[0]!r}; supported: {list(SUPPORTED_PROPERTIES)}")
    if not properties:
        raise ValueError("fine-tuning needs at least one property")
    if not isinstance(base, ScoreModel):
        raise ValueError(f"the base checkpoint holds a {type(base).__name__}, not a mattergen-lab ScoreModel")
    names = tuple(dict.fromkeys([*base.conditions, *properties]))
    model = ScoreModel(dataclasses.replace(base.config, condition_on_adapt=names))
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    new = {p for p in names if p not in base.conditions}
    foreign = [k for k in missing if not any(f".{p}." in k for p in new)]
    if unexpected or foreign:
        raise ValueError(
            f"the base checkpoint does not have the needed architecture: missing {foreign[:5]}, unexpected {unexpected[:5]}"
        )
    return model


def _labels(data: Any, name: str) -> np.ndarray | list:
    if name == "chemical_system":
        return data.chemical_systems()
    props = getattr(data, "properties", {})
    if name not in props:
        raise ValueError(
            f"property {name!r} is not in the training data (it has {sorted(props) + ['chemical_system']}); "
            "add the column to your CSV, or compute hhi_score / space_group with mattergen_lab.properties.add_derived_properties"
        )
    return np.asarray(props[name], dtype=float)


def finetune(
    base: Checkpoint,
    properties: Sequence[str],
    train_data: Any,
    val_data: Any,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    min_labels: int = MIN_LABELS,
    extra_config: dict[str, Any] | None = None,
    callback: Any = None,
) -> TrainResult:
    """Fine-tune ``base`` on ``properties`` (see the module docstring)."""
    model = adapter_model(base.model, list(properties))
    for name in properties:
        labels = _labels(train_data, name)
        count = sum(v is not None for v in labels) if isinstance(labels, list) else int(np.isfinite(labels).sum())
        if count < min_labels:
            raise ValueError(f"property {name!r} has {count} labelled training crystals; at least {min_labels} are needed")
        emb = model.property_embeddings_adapt[name]
        if emb.is_scalar:
            values = torch.as_tensor(labels)
            if emb.scaler.log10 and bool((values[torch.isfinite(values)] <= 0).any()):
                raise ValueError(f"property {name!r} is log10-scaled but has values <= 0")
            emb.scaler.fit(values)
            log.info("%s: %d labels, mean %.4g, std %.4g", name, count, float(emb.scaler.means), float(emb.scaler.stds))
    start = Checkpoint(model=model, config=base.config, path=base.path)
    info = {
        "properties": list(model.conditions),
        "base_checkpoint": str(base.path or ""),
        "scalers": model.scaler_summary(),
        **(extra_config or {}),
    }
    return train(config, train_data, val_data, out_dir, init_from=start, extra_config=info, callback=callback)


def _same_network(base: Checkpoint) -> Checkpoint:
    """A fresh copy of ``base``'s network and weights (its config and path kept), for the fine-tunings that train the
    whole model as it is (CSP, symmetric noise); ``ValueError`` when the checkpoint holds no ScoreModel."""
    if not isinstance(base.model, ScoreModel):
        raise ValueError(f"the base checkpoint holds a {type(base.model).__name__}, not a mattergen-lab ScoreModel")
    model = ScoreModel(base.model.config)
    model.load_state_dict(base.model.state_dict(), strict=True)
    return Checkpoint(model=model, config=base.config, path=base.path)


def finetune_csp(
    base: Checkpoint,
    train_data: Any,
    val_data: Any,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    extra_config: dict[str, Any] | None = None,
    callback: Any = None,
) -> TrainResult:
    """Fine-tune ``base`` into a CSP model (atom types held at their true values; see the module docstring).

    Resumes from ``out_dir/last`` like :func:`~mattergen_lab.training.trainer.train`. The base's diffusion
    settings are kept, with ``fixed_atom_types=True``.
    """
    start = _same_network(base)
    if base.model.conditions:
        raise ValueError(f"CSP fine-tuning starts from an unconditional model; {base.path} has adapters {list(base.model.conditions)}")
    settings = dict(base.config.get("diffusion") or {})
    diffusion = DiffusionConfig.from_dict({**settings, "fixed_atom_types": True})
    info = {"csp": True, "base_checkpoint": str(base.path or ""), "base_was_csp": is_csp_config(base.config),
            "base_step": (base.config.get("training") or {}).get("step"), **(extra_config or {})}
    return train(config, train_data, val_data, out_dir, init_from=start, diffusion_config=diffusion,
                 extra_config=info, callback=callback)


def finetune_symmetric(
    base: Checkpoint,
    train_data: Any,
    val_data: Any,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    extra_config: dict[str, Any] | None = None,
    callback: Any = None,
) -> TrainResult:
    """Fine-tune ``base`` on symmetric noise: the same network, weights and diffusion settings, trained on
    :class:`~mattergen_lab.symmetry.dataset.SymmetricDataset` batches, which the loss noises inside each crystal's
    Wyckoff template (DiffCSP++-style; :mod:`~mattergen_lab.symmetry.noising`). The model is meant for the symmetric
    sampling mode; resumes from ``out_dir/last``."""
    start = _same_network(base)
    for name, data in (("train_data", train_data), ("val_data", val_data)):
        if data is not None and not hasattr(data, "templates"):
            raise ValueError(f"{name} must be a SymmetricDataset (mattergen_lab.symmetry.dataset.symmetrize_dataset)")
    diffusion = DiffusionConfig.from_dict(dict(base.config.get("diffusion") or {}))
    # the symmetric mode samples as it was trained: constrained from the training data's start time down
    sampling = {**(base.config.get("sampling") or {}), "symmetry_start": float(getattr(train_data, "start", 1.0))}
    info = {"symmetric_training": True, "base_checkpoint": str(base.path or ""), "sampling": sampling,
            "base_step": (base.config.get("training") or {}).get("step"), **(extra_config or {})}
    if base.model.conditions:
        info["properties"] = list(base.model.conditions)
    return train(config, train_data, val_data, out_dir, init_from=start, diffusion_config=diffusion,
                 extra_config=info, callback=callback)
