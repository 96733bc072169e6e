"""mattergen-lab: a re-implementation of MatterGen with an interactive design environment.

The public API is importable from here; submodules load on first use, so ``import mattergen_lab`` stays
cheap (no pymatgen, no pandas until needed).

Layering (``docs/architecture.md``; ``tests/test_layering.py`` fails when a module imports from a layer above it
or two modules import each other, directly or round a cycle):

    9  widgets, cli                     (the app: ipywidgets, plotly, nglview; the command line)
    8  design, campaign, cli_lab, cli_train (user-facing runs, export; campaigns on Ray; lab, train/finetune/bundle)
    7  evaluation                       (relaxation, E_hull, S.U.N., RMSD)
    6  properties, cli_progress         (oracles: HHI, symmetry, bulk modulus, magnetism; the CLI's progress bars)
    5  sampling                         (SamplingRequest → SamplingPipeline; the predictor-corrector sampler, guidance)
    4  checkpoints, training, testing   (registry and loading; the training loop; test helpers)
    3  model, symmetry                  (GemNet-T score network, adapters, scale fitting; Wyckoff templates, constraint)
    2  noise, data, forcefields         (diffusion processes; datasets; CHGNet/MatterSim calculators)
    1  crystal, chemistry, structure_io (CrystalBatch; ChemicalSystem; input checks, CIF in/out)
    0  constants, config, fileio, caches, limits, console, threads
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# How long torch's OpenMP threads spin between parallel regions before they sleep (see mattergen_lab.threads): read
# once, when torch loads its OpenMP runtime, so it is set here, before anything imports torch; a value in the
# environment is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"

_EXPORTS = {
    "CrystalBatch": "mattergen_lab.crystal",
    "GemNetConfig": "mattergen_lab.model.gemnet",
    "ScoreModel": "mattergen_lab.model.score_model",
    "ScoreOutput": "mattergen_lab.model.output",
    "DiffusionConfig": "mattergen_lab.noise.joint",
    "JointDiffusion": "mattergen_lab.noise.joint",
    "PredictorCorrectorSampler": "mattergen_lab.sampling.sampler",
    "SamplerConfig": "mattergen_lab.sampling.sampler",
    "ClassifierFreeGuidance": "mattergen_lab.sampling.guidance",
    "load_sampler": "mattergen_lab.sampling.build",
    "SamplingPipeline": "mattergen_lab.sampling.pipeline",
    "sample": "mattergen_lab.sampling.api",
    "sample_to_dir": "mattergen_lab.sampling.api",
    "vary": "mattergen_lab.sampling.api",
    "load_checkpoint": "mattergen_lab.checkpoints",
    "registry": "mattergen_lab.checkpoints",
    "TrainConfig": "mattergen_lab.training.config",
    "train": "mattergen_lab.training.trainer",
    "finetune": "mattergen_lab.training.finetune",
    "load_mp20": "mattergen_lab.data",
    "load_csv": "mattergen_lab.data",
    "CrystalDataset": "mattergen_lab.data",
    "ChemicalSystem": "mattergen_lab.chemistry",
    "SamplingRequest": "mattergen_lab.sampling.request",
    "clear_caches": "mattergen_lab.caches",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mattergen_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
