"""A campaign spec: what to sample (a grid of conditions and guidance) and how to evaluate it, validated once.

A spec is a YAML file or a mapping::

    checkpoint: mgl_chemical_system     # registry name or checkpoint folder
    num_samples: 64                     # crystals per arm (grid point)
    batch_size: 16                      # crystals per sampling task (one chunk of the arm's request)
    num_steps: 200                      # optional: the checkpoint's recommendation
    sampler: {n_corrector_steps: 0}     # optional sampler variant (n_corrector_steps, coord_snr, lattice_snr,
                                        #   max_step_size, predictor: ancestral | ode); omitted = the official one
    seed: 0
    conditions:                         # a list of values makes a grid axis
      chemical_system: [Li-Fe-O, Na-Mn-O]
    guidance_scale: [0, 2]              # a number or a list (another axis)
    elements: null                      # optional hard element mask for every arm
    num_atoms: null                     # optional: atoms per crystal
    symmetry: [null, mp20, 225]         # optional symmetric mode (a space group, crystal system, mp20 or a
                                        #   template such as 225:ab); a list is another grid axis, null = off
    parent: LiMn2O4.cif                 # optional: start every arm from this crystal (CIF/POSCAR/extxyz path
                                        #   the workers can read; its sha256 is part of the campaign)
    strength: [0.1, 0.3, 0.6]           # with parent: the start time t0, a number or a list (another axis)
    fix_sites: null                     # with parent: inpainting (indices, elements or "anions")
    substitute: null                    # with parent: e.g. "Mn=Co,Ni"
    evaluate:                           # false: sample only
      relaxer: chgnet                   # auto | chgnet | mattersim
      batch_size: 8                     # structures per evaluation task
      fmax: 0.05
      max_steps: 500
      max_seconds: 120
      reference: mp20
      novelty_reference: mp20           # or null
      stability_threshold: 0.1
      matcher: disordered
    resources:
      sample_gpus: auto                 # GPUs per sampling task: auto = 1 where the cluster has GPUs
      threads: 1                        # torch threads in every task

The arms are the product of the condition lists, the guidance list, the symmetry list and the strength list, in the
order written. Arm ``k`` is one
:class:`~mattergen_lab.sampling.request.SamplingRequest` seeded with ``seed + k`` (so two arms never draw the
same noise), and its chunk ``j`` is one sampling task. Every error names the bad key and value. The sampler
variant is part of the campaign (its fingerprint), so a resume with another one is refused; it is recorded only
when set, so folders made before it existed still resume.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mattergen_lab.config import load_yaml_without_aliases
from mattergen_lab.evaluation.evaluate import STABILITY_THRESHOLD
from mattergen_lab.evaluation.matching import MATCHERS
from mattergen_lab.evaluation.relax import RELAXERS, RelaxConfig
from mattergen_lab.limits import MAX_CAMPAIGN_ARMS
from mattergen_lab.sampling.frames import sampler_variant
from mattergen_lab.sampling.guidance import check_guidance_scale
from mattergen_lab.sampling.request import SamplingRequest

_TOP_KEYS = {"checkpoint", "num_samples", "batch_size", "num_steps", "seed", "conditions", "guidance_scale",
             "elements", "num_atoms", "evaluate", "resources", "name", "sampler", "symmetry", "parent", "strength",
             "fix_sites", "substitute"}
#: Keys left out of ``to_dict`` when unset, so folders made before they existed still resume.
_OPTIONAL_KEYS = ("symmetry", "parent", "strength", "fix_sites", "substitute")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class EvaluationSpec:
    """How each sampled crystal is relaxed and scored (the evaluation's protocol, per task)."""

    relaxer: str = "chgnet"
    batch_size: int = 8
    fmax: float = 0.05
    max_steps: int = 500
    max_seconds: float = 120.0
    reference: str = "mp20"
    novelty_reference: str | None = "mp20"
    stability_threshold: float = STABILITY_THRESHOLD
    matcher: str = "disordered"

    def __post_init__(self) -> None:
        if self.relaxer not in RELAXERS:
            raise ValueError(f"evaluate.relaxer={self.relaxer!r}; expected one of {list(RELAXERS)}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"evaluate.batch_size={self.batch_size!r} must be a positive integer")
        if self.matcher not in MATCHERS:
            raise ValueError(f"evaluate.matcher={self.matcher!r}; expected one of {list(MATCHERS)}")
        if not _is_num(self.stability_threshold):
            raise ValueError(f"evaluate.stability_threshold={self.stability_threshold!r} must be a finite number (eV/atom)")
        if self.novelty_reference not in (None, "mp20"):
            raise ValueError(f"evaluate.novelty_reference={self.novelty_reference!r}; expected 'mp20' or null")
        if not isinstance(self.reference, str) or not self.reference:
            raise ValueError(f"evaluate.reference={self.reference!r} must be 'mp20', 'mp-api' or a file path")
        try:
            self.relax_config()
        except ValueError as exc:
            raise ValueError(f"evaluate: {exc}") from None

    def relax_config(self) -> RelaxConfig:
        return RelaxConfig(fmax=self.fmax, max_steps=self.max_steps, max_seconds=self.max_seconds)


@dataclass(frozen=True)
class Arm:
    """One grid point: its index, conditions and guidance (and the request it samples)."""

    index: int
    conditions: dict[str, Any]
    guidance_scale: float
    symmetry: Any = None
    strength: float | None = None

    @property
    def name(self) -> str:
        return f"a{self.index}"

    @property
    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.conditions.items()] + [f"γ={self.guidance_scale:g}"]
        parts += [f"symmetry={self.symmetry}"] if self.symmetry is not None else []
        return ", ".join(parts + ([f"t0={self.strength:g}"] if self.strength is not None else []))


@dataclass(frozen=True)
class CampaignSpec:
    """A validated campaign (see the module docstring for the YAML form)."""

    checkpoint: str
    num_samples: int = 16
    batch_size: int = 16
    num_steps: int | None = None
    seed: int = 0
    conditions: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    guidance_scale: Any = 0.0
    elements: str | None = None
    num_atoms: int | None = None
    evaluate: EvaluationSpec | None = field(default_factory=EvaluationSpec)
    sample_gpus: Any = "auto"
    threads: int = 1
    name: str = ""
    symmetry: Any = None
    parent: str | None = None
    strength: Any = None
    fix_sites: Any = None
    substitute: Any = None
    #: the parent's content hash, read once when the spec is made (``None`` without a parent)
    parent_sha256: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ValueError(f"checkpoint={self.checkpoint!r} must be a registry name or a checkpoint folder")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an integer >= 0")
        object.__setattr__(self, "sampler", sampler_variant(self.sampler, where="sampler"))
        if not isinstance(self.conditions, dict):
            raise ValueError(f"conditions={self.conditions!r} must be a mapping of property -> value or list of values")
        for key, value in self.conditions.items():
            if isinstance(value, list) and not value:
                raise ValueError(f"conditions.{key}=[] is an empty grid axis; give at least one value")
        guidance = self.guidance_scale if isinstance(self.guidance_scale, list) else [self.guidance_scale]
        if not guidance:
            raise ValueError("guidance_scale=[] is an empty grid axis; give at least one value")
        if not _is_int(self.threads) or self.threads < 1:
            raise ValueError(f"resources.threads={self.threads!r} must be a positive integer")
        gpus = self.sample_gpus
        if gpus != "auto" and not (_is_num(gpus) and gpus >= 0):
            raise ValueError(f"resources.sample_gpus={gpus!r} must be 'auto' or a number >= 0")
        if self.symmetry == []:
            raise ValueError("symmetry=[] is an empty grid axis; give at least one value (null: the plain sampler)")
        if self.strength == []:
            raise ValueError("strength=[] is an empty grid axis; give at least one start time t0 in (0, 1]")
        if self.parent is not None and not isinstance(self.parent, str):
            raise ValueError(f"parent={self.parent!r} must be the path of a CIF, POSCAR or extxyz file")
        num_arms = math.prod(len(v) if isinstance(v, list) else 1 for v in self.conditions.values()) * len(guidance)
        num_arms *= len(self.symmetry) if isinstance(self.symmetry, list) else 1
        num_arms *= len(self.strength) if isinstance(self.strength, list) else 1
        if num_arms > MAX_CAMPAIGN_ARMS:  # before any arm is built
            raise ValueError(f"conditions x guidance_scale x symmetry x strength make a grid of {num_arms:,} arms, more than "
                             f"MAX_CAMPAIGN_ARMS={MAX_CAMPAIGN_ARMS:,} (mattergen_lab.limits); split it into campaigns")
        for arm in self.arms():  # every arm is a valid request (ValueError names the value)
            request = self.request(arm)
        if self.parent is not None:
            object.__setattr__(self, "parent_sha256", request.parent.sha256)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ grid
    def arms(self) -> list[Arm]:
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in self.conditions.items()}
        guidance = self.guidance_scale if isinstance(self.guidance_scale, list) else [self.guidance_scale]
        symmetry = self.symmetry if isinstance(self.symmetry, list) else [self.symmetry]
        strength = self.strength if isinstance(self.strength, list) else [self.strength]
        out = []
        for values in itertools.product(*axes.values(), guidance, symmetry, strength):
            conditions = dict(zip(axes, values[:-3]))
            out.append(Arm(len(out), conditions, check_guidance_scale(values[-3]), values[-2], values[-1]))
        return out

    def request(self, arm: Arm, *, device: str | None = None) -> SamplingRequest:
        try:
            return SamplingRequest(
                checkpoint=self.checkpoint, num_samples=self.num_samples, batch_size=self.batch_size,
                num_steps=self.num_steps, conditions=arm.conditions, guidance_scale=arm.guidance_scale,
                elements=self.elements, num_atoms=self.num_atoms, seed=self.seed + arm.index, device=device,
                sampler=self.sampler, symmetry=arm.symmetry, parent=self.parent, strength=arm.strength,
                fix_sites=self.fix_sites, substitute=self.substitute,
            )
        except ValueError as exc:
            raise ValueError(f"arm {arm.name} ({arm.label}): {exc}") from None

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["parent_sha256"]  # in the fingerprint, not in the spec a user writes
        d["evaluate"] = asdict(self.evaluate) if self.evaluate is not None else False
        d["resources"] = {"sample_gpus": d.pop("sample_gpus"), "threads": d.pop("threads")}
        if not d["sampler"]:  # the official sampler: no key, as in the folders made before variants existed
            del d["sampler"]
        for key in _OPTIONAL_KEYS:  # likewise the plain (non-symmetric) sampler, and no parent
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> CampaignSpec:
        if not isinstance(d, dict):
            raise ValueError(f"a campaign spec must be a mapping, got {type(d).__name__}")
        unknown = set(d) - _TOP_KEYS
        if unknown:
            raise ValueError(f"unknown campaign key(s) {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}")
        d = dict(d)
        ev = d.pop("evaluate", {})
        if ev is False or ev is None:
            evaluation = None
        elif isinstance(ev, dict):
            fields = set(EvaluationSpec.__dataclass_fields__)
            if set(ev) - fields:
                raise ValueError(f"unknown evaluate key(s) {sorted(set(ev) - fields)}; expected some of {sorted(fields)}")
            evaluation = EvaluationSpec(**ev)
        else:
            raise ValueError(f"evaluate={ev!r} must be a mapping or false")
        res = d.pop("resources", None) or {}
        if not isinstance(res, dict) or set(res) - {"sample_gpus", "threads"}:
            raise ValueError(f"resources={res!r} may only set sample_gpus and threads")
        if "checkpoint" not in d:
            raise ValueError("a campaign spec needs a checkpoint (registry name or folder)")
        d["checkpoint"] = str(d["checkpoint"])
        d["conditions"] = d.get("conditions") or {}
        d["sampler"] = d.get("sampler") or {}
        return cls(**d, evaluate=evaluation, **res)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CampaignSpec:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"campaign spec {p} does not exist")
        try:
            data = load_yaml_without_aliases(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"campaign spec {p} is not readable YAML: {exc}") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"campaign spec {p}: {exc}") from None

    def fingerprint(self) -> str:
        """A canonical JSON string: two specs run the same campaign iff their fingerprints are equal (a parent
        counts by its content, so an edited parent file is another campaign)."""
        d = self.to_dict()
        if self.parent_sha256 is not None:
            d["parent_sha256"] = self.parent_sha256
        return json.dumps(d, sort_keys=True)
