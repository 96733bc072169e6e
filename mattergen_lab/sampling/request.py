"""``SamplingRequest``: everything one sampling run needs, validated once at the boundary.

The CLI, :func:`~mattergen_lab.sampling.api.sample`, the design runs, campaign tasks, the benchmarks and the app
all build one and hand it to a :class:`~mattergen_lab.sampling.pipeline.SamplingPipeline`, which checks it against
its checkpoint; the sampler's single chunk loop (:meth:`PredictorCorrectorSampler.iter_chunks`) reads nothing else. It owns the only seed-to-chunk
formula (:func:`chunk_seed`), so the same seed gives the same crystals, atom for atom, from every entry point:
crystal ``i`` belongs to chunk ``i // batch_size``, and chunk ``j`` draws its atom counts (on the CPU) and its
sampling noise (on the sampling device) from generators seeded with ``chunk_seed(seed, j)``.

"Same crystals" means on the same device with the same number of torch threads: a different thread count changes
the last bits of the matrix products, and the stochastic sampler can amplify them (measured: one coordinate off by
0.39 after 4 steps between 1 and 2 threads).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mattergen_lab.chemistry import ChemicalSystem
from mattergen_lab.limits import MAX_ATOMS_PER_BATCH, MAX_ATOMS_PER_CRYSTAL, MAX_NUM_STEPS, MAX_SEED, check_at_most
from mattergen_lab.sampling.composition import FixedComposition
from mattergen_lab.sampling.frames import sampler_variant
from mattergen_lab.sampling.guidance import check_guidance_scale
from mattergen_lab.symmetry.templates import SymmetrySpec


#: Most crystals one request may ask for: beyond it, split the work into a campaign (``mattergen-lab campaign``),
#: whose tasks are requests of this size or less. (A billion would allocate gigabytes before the first crystal.)
MAX_NUM_SAMPLES = 100_000
DRAWN_ATOMS_MAX = 20  # the largest cell in the atom-count tables of MP-20 and Alex-MP-20


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk`` of a run seeded with ``seed`` (the one formula)."""
    return (seed * 1_000_003 + 7919 * (chunk + 1)) % (2**63 - 1)


def validate_device(device: Any) -> str:
    """``str(device)`` when torch understands it and this machine has it; ``ValueError`` naming it otherwise."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device ({exc})") from None
    if dev.type not in ("cpu", "cuda", "mps"):  # meta, xla, ipu...: torch names them, nothing here runs on them
        raise ValueError(f"device={str(device)!r} is not one this program runs on; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r}: no CUDA GPU is available here (torch {torch.__version__}); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r}: MPS is not available here; use 'cpu'")
    return str(device)


def largest_cell(num_atoms: Any) -> int | None:
    """The most atoms any crystal can get from ``num_atoms`` (an int, one int per crystal, or a distribution with a
    ``to_dict`` of counts); ``None`` when it cannot be told."""
    if _is_int(num_atoms):
        return num_atoms
    if isinstance(num_atoms, (list, tuple)) and num_atoms and all(_is_int(v) for v in num_atoms):
        return max(num_atoms)
    to_dict = getattr(num_atoms, "to_dict", None)
    if callable(to_dict):
        try:
            return max(int(k) for k in to_dict())
        except (TypeError, ValueError):
            return None
    return None


def check_size(num_samples: int, batch_size: int, per_crystal: int | None) -> None:
    """``ValueError`` naming the cap when a crystal or a batch is bigger than the machine should be asked for
    (:data:`~mattergen_lab.limits.MAX_ATOMS_PER_CRYSTAL`, :data:`~mattergen_lab.limits.MAX_ATOMS_PER_BATCH`); ``per_crystal=None``: drawn, at most 20."""
    per_crystal = DRAWN_ATOMS_MAX if per_crystal is None else per_crystal
    if per_crystal > MAX_ATOMS_PER_CRYSTAL:
        raise ValueError(f"num_atoms={per_crystal} is more than MAX_ATOMS_PER_CRYSTAL={MAX_ATOMS_PER_CRYSTAL} atoms "
                         "per crystal (the model's memory grows with its square; it was trained on at most 20)")
    per_batch = min(batch_size, num_samples) * per_crystal
    if per_batch > MAX_ATOMS_PER_BATCH:
        most = max(1, MAX_ATOMS_PER_BATCH // per_crystal)
        raise ValueError(f"batch_size={batch_size} x {per_crystal} atoms = {per_batch:,} atoms in one batch is more "
                         f"than MAX_ATOMS_PER_BATCH={MAX_ATOMS_PER_BATCH:,}; use batch_size <= {most}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingRequest:
    """One sampling run (``ValueError`` on construction names the bad value).

    Attributes:
        checkpoint: registry name or checkpoint folder (for reports; the sampler is built from it by the caller).
        num_samples, batch_size: how many crystals, and how many are denoised together.
        num_steps: predictor-corrector steps; ``None`` is the checkpoint's recommendation.
        sampler: a sampler variant, e.g. ``{"n_corrector_steps": 0}`` (predictor only), ``{"coord_snr": 0.2}`` or
            ``{"predictor": "ode"}``; keys in :data:`~mattergen_lab.sampling.frames.SAMPLER_VARIANT_KEYS`, kept in the
            canonical form of :func:`~mattergen_lab.sampling.frames.sampler_variant` (``{}``: the official sampler).
        conditions: adapter targets, e.g. ``{"dft_band_gap": 2.0}`` or ``{"chemical_system": "Li-Fe-O"}``.
        guidance_scale: classifier-free guidance γ (0 = unconditional; the library's and the CLI's default).
        elements: a hard element mask at every step (any checkpoint); a ``chemical_system`` condition implies it.
        use_element_mask: ``False``: a ``chemical_system`` condition only guides, no element is masked out (what a
            benchmark of the guidance alone measures); not together with ``elements``.
        num_atoms: atoms per crystal (one int for all, or one per crystal); ``None`` draws from the checkpoint's table.
        composition: crystal-structure prediction (a CSP checkpoint only): a formula such as ``"Li2MnO3"``, parsed
            into a :class:`~mattergen_lab.sampling.composition.FixedComposition`. Every crystal gets exactly
            ``formula × formula_units`` atoms, whose types are fixed at every step; ``num_atoms`` follows from it.
        formula_units: formula units per cell with ``composition`` (default 1).
        compositions: CSP with one composition per crystal (``num_samples`` cell formulas, e.g. a benchmark's
            targets, crystals of a chunk side by side); not together with ``composition``. :meth:`composition_of`
            gives crystal ``i``'s.
        seed: the run's seed; chunk ``j`` uses :func:`chunk_seed(seed, j) <chunk_seed>`.
        device: ``"cpu"``, ``"cuda"``...; ``None`` is the model's device.
        parent: start from this crystal (a pymatgen ``Structure`` or a CIF/POSCAR/extxyz path, kept as a
            :class:`~mattergen_lab.sampling.variation.ParentCrystal`) instead of the prior; every crystal has its atom
            count. ``sampling.json`` records its sha256 and formula. See :mod:`~mattergen_lab.sampling.variation`.
        strength: with ``parent``: the start time t0 in (0, 1] (``None``: 0.3; 1.0 with ``fix_sites``; 0.2 with
            ``substitute``), stored resolved.
        fix_sites: with ``parent``: sites whose types and coordinates are kept (inpainting): indices, elements or
            ``"anions"``; stored as sorted indices. With ``num_atoms`` (one count) other than the parent's, each
            crystal is the fixed sites plus ``num_atoms`` minus them generated from the prior (strength 1).
        substitute: with ``parent``: ``"Fe=Mn,Co"`` or ``{"Fe": ["Mn", "Co"]}``: those sites re-sampled among those
            elements, all others keep theirs; stored as ``{"Fe": ("Co", "Mn")}``.
        symmetry: the symmetric mode (:class:`~mattergen_lab.symmetry.templates.SymmetrySpec`, or what
            :meth:`SymmetrySpec.parse` reads: a space group ``225``, a crystal system ``"cubic"``, ``"mp20"``, a
            template ``"225:ab"``). Each crystal draws a Wyckoff template (with its chunk's CPU generator) and keeps
            it exactly; its atom count is the template's conventional cell (``num_atoms``, if given, picks templates
            of that size). With ``parent``: ``"parent"`` keeps the parent's own space group and Wyckoff template (the
            parent symmetrised at 0.1 Å, in its primitive cell; stored as that template).
    """

    checkpoint: str = ""
    num_samples: int = 16
    batch_size: int = 16
    num_steps: int | None = None
    conditions: Mapping[str, Any] = field(default_factory=dict)
    guidance_scale: float = 0.0
    elements: ChemicalSystem | None = None
    num_atoms: int | tuple[int, ...] | None = None
    seed: int = 0
    device: str | None = None
    composition: FixedComposition | str | None = None
    formula_units: int = 1
    sampler: Mapping[str, Any] = field(default_factory=dict)
    use_element_mask: bool = True
    compositions: Sequence[FixedComposition | str] | None = None
    symmetry: SymmetrySpec | str | int | None = None
    parent: Any = None
    strength: float | None = None
    fix_sites: Any = None
    substitute: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", str(self.checkpoint))
        object.__setattr__(self, "sampler", sampler_variant(self.sampler))
        for name in ("num_samples", "batch_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
            if v > MAX_NUM_SAMPLES:
                raise ValueError(f"{name}={v!r} is more than MAX_NUM_SAMPLES={MAX_NUM_SAMPLES:,} for one request; "
                                 "run a campaign (mattergen-lab campaign) to make more")
        if self.num_steps is not None and (not _is_int(self.num_steps) or self.num_steps < 1):
            raise ValueError(f"num_steps={self.num_steps!r} must be None or a positive integer")
        check_at_most("num_steps", self.num_steps, MAX_NUM_STEPS, "MAX_NUM_STEPS", "the official sampler takes 1,000")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed={self.seed!r} must be an integer from 0 to MAX_SEED=2**63-1")
        object.__setattr__(self, "guidance_scale", check_guidance_scale(self.guidance_scale))
        if not isinstance(self.use_element_mask, bool):
            raise ValueError(f"use_element_mask={self.use_element_mask!r} must be True or False")
        if self.conditions is not None and not isinstance(self.conditions, Mapping):  # a list was a dict error
            raise ValueError(f"conditions={self.conditions!r:.120} must be a mapping of property to target value, "
                             "e.g. {'dft_band_gap': 2.0}")
        conditions = dict(self.conditions or {})
        if "chemical_system" in conditions:
            system = ChemicalSystem.parse(conditions["chemical_system"]).require_generatable()
            conditions["chemical_system"] = str(system)
        object.__setattr__(self, "conditions", conditions)
        if self.elements is not None:
            object.__setattr__(self, "elements", ChemicalSystem.parse(self.elements).require_generatable())
            if not self.use_element_mask:
                raise ValueError(f"elements={str(self.elements)!r} is an element mask and use_element_mask=False "
                                 "switches the mask off; pass one of them")
            target = conditions.get("chemical_system")
            if target is not None:
                outside = set(ChemicalSystem.parse(target).symbols) - set(self.elements.symbols)
                if outside:
                    raise ValueError(
                        f"elements={str(self.elements)!r} conflicts with the target chemical_system={target!r}: "
                        f"{sorted(outside)} would be masked out; drop --elements or make it include the target"
                    )
        n = self.num_atoms
        if n is not None:
            if _is_int(n):
                if n < 1:
                    raise ValueError(f"num_atoms={n!r} must be a positive integer")
            elif isinstance(n, (list, tuple)) and len(n) == self.num_samples and all(_is_int(v) and v >= 1 for v in n):
                object.__setattr__(self, "num_atoms", tuple(n))
            else:
                raise ValueError(f"num_atoms={n!r} must be None, a positive int or one positive int per sample ({self.num_samples})")
        if self.device is not None:
            object.__setattr__(self, "device", validate_device(self.device))
        self._check_composition()
        self._check_symmetry()
        self._check_parent()
        self._check_size()

    def _check_size(self) -> None:
        n = self.num_atoms
        if n is None and self.symmetry is not None:  # the templates' conventional cells: at most max_atoms
            n = self.symmetry.max_atoms if not self.symmetry.templates else max(t.primitive_atoms for t in self.symmetry.templates)
        check_size(self.num_samples, self.batch_size, None if n is None else max((n,) if _is_int(n) else n))

    def _check_symmetry(self) -> None:
        if self.symmetry is None or self.parent is not None:  # with a parent: the parent's own group (_check_parent)
            return
        spec = SymmetrySpec.parse(self.symmetry)
        object.__setattr__(self, "symmetry", spec)
        if self.fixes_atoms:  # CSP on templates the composition fits (centring x the cell's atoms)
            from mattergen_lab.symmetry.fit import check_fit

            comps = self.compositions if self.compositions is not None else (self.composition,)
            for c in {c.formula: c for c in comps}.values():  # type: ignore[union-attr]
                check_fit(spec, c.cell_amounts, c.cell_formula)  # type: ignore[arg-type]
            return
        n = self.num_atoms
        if n is not None:
            for v in sorted(set((n,) if _is_int(n) else n)):
                spec.check_num_atoms(v)
        if spec.templates and len(spec.templates) not in (1, self.num_samples):
            raise ValueError(f"symmetry gives {len(spec.templates)} templates for num_samples={self.num_samples}: "
                             "give one, or one per crystal")


    def _check_parent(self) -> None:
        if self.parent is None:
            given = {k: getattr(self, k) for k in ("strength", "fix_sites", "substitute") if getattr(self, k) is not None}
            if given:
                name, value = next(iter(given.items()))
                raise ValueError(f"{name}={value!r} needs a crystal to start from (parent=..., CLI: mattergen-lab vary)")
            return
        from mattergen_lab.sampling.variation import Variation

        if self.fixes_atoms:
            raise ValueError("parent= starts from a crystal with its own atoms; composition= is not used with it")
        n = self.num_atoms
        total = n[0] if isinstance(n, tuple) and len(set(n)) == 1 else n  # the same count for every crystal
        v = Variation.build(self.parent, self.strength, self.fix_sites, self.substitute, self.mask,
                            symmetric=self.symmetry is not None, num_atoms=total if self.fix_sites is not None else None)
        if n is not None and any(k != v.num_atoms for k in ((n,) if _is_int(n) else n)):
            raise ValueError(f"num_atoms={n!r} conflicts with the parent {v.parent.formula} ({v.num_atoms} "
                             f"atoms{' in its primitive cell' if v.template else ''}); drop num_atoms, or with "
                             "fix_sites it sets how many atoms each crystal has")
        if v.template is not None:
            object.__setattr__(self, "symmetry", _parent_symmetry(self.symmetry, v))
        for name, value in (("parent", v.parent), ("strength", v.strength), ("fix_sites", v.fix_sites or None),
                            ("substitute", dict(v.substitute) or None), ("num_atoms", v.num_atoms)):
            object.__setattr__(self, name, value)
        self.__dict__["variation"] = v  # what `variation` gives (the symmetrised parent is not built twice)

    @functools.cached_property
    def variation(self) -> Any:
        """The :class:`~mattergen_lab.sampling.variation.Variation` of a request with ``parent``, else ``None``."""
        return None  # set by the check of a request with a parent

    def _check_composition(self) -> None:
        c, units = self.composition, self.formula_units
        if self.compositions is not None:
            self._check_compositions()
            return
        if c is None:
            if units != 1:
                raise ValueError(f"formula_units={units!r} needs a composition (e.g. composition='Li2MnO3')")
            return
        if isinstance(c, FixedComposition) and units == 1:
            units = c.formula_units
        comp = FixedComposition.parse(c, units)
        object.__setattr__(self, "composition", comp)
        object.__setattr__(self, "formula_units", comp.formula_units)
        n = self.num_atoms
        if n is not None and any(v != comp.num_atoms for v in ((n,) if _is_int(n) else n)):
            raise ValueError(f"num_atoms={n!r} conflicts with composition={comp.formula!r} x {comp.formula_units} "
                             f"({comp.num_atoms} atoms); drop num_atoms")
        self._refuse_a_mask(comp.formula)

    def _check_compositions(self) -> None:
        given = self.compositions
        if self.composition is not None or self.formula_units != 1:
            raise ValueError("compositions= (one cell formula per crystal) is not used with composition= or formula_units=; "
                             "pass one of them")
        if isinstance(given, (str, FixedComposition)) or not isinstance(given, Sequence) or len(given) != self.num_samples:
            raise ValueError(f"compositions={given!r:.120} must be one cell formula per sample ({self.num_samples})")
        parsed: dict[str, FixedComposition] = {}  # a benchmark repeats each target k times: parse each formula once
        comps = []
        for c in given:
            if isinstance(c, str):
                c = parsed[c] if c in parsed else parsed.setdefault(c, FixedComposition.parse(c))
            elif not isinstance(c, FixedComposition):
                c = FixedComposition.parse(c)  # ValueError naming it
            comps.append(c)
        object.__setattr__(self, "compositions", tuple(comps))
        n = self.num_atoms
        if n is not None and any(v != c.num_atoms for v, c in zip((n,) * len(comps) if _is_int(n) else n, comps)):
            raise ValueError(f"num_atoms={n!r} conflicts with the atoms of compositions=; drop num_atoms")
        self._refuse_a_mask(comps[0].formula)

    def _refuse_a_mask(self, formula: str) -> None:
        system = self.elements if self.elements is not None else self.conditions.get("chemical_system")
        if system is not None:
            raise ValueError(f"composition={formula!r} fixes every atom; drop the element mask / chemical_system "
                             f"({str(system)!r})")

    @property
    def fixes_atoms(self) -> bool:
        """Crystal-structure prediction: ``composition`` or ``compositions`` gives every crystal's atoms."""
        return self.composition is not None or self.compositions is not None

    def composition_of(self, i: int) -> FixedComposition | None:
        """The atoms of crystal ``i`` (``compositions[i]``, else ``composition``); ``None`` when the model draws them."""
        return self.compositions[i] if self.compositions is not None else self.composition  # type: ignore[return-value]

    @property
    def mask(self) -> ChemicalSystem | None:
        """The element mask: ``elements``, else the ``chemical_system`` condition (unless ``use_element_mask`` is
        ``False``), else ``None`` (all elements)."""
        if not self.use_element_mask:
            return None
        if self.elements is not None:
            return self.elements
        system = self.conditions.get("chemical_system")
        return ChemicalSystem.parse(system) if system else None

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def chunks(self) -> Iterator[tuple[int, tuple[int, ...], int]]:
        """``(j, sample indices, seed)`` of every chunk."""
        for j in range(self.num_chunks):
            yield j, tuple(range(j * self.batch_size, min((j + 1) * self.batch_size, self.num_samples))), chunk_seed(self.seed, j)


def _parent_symmetry(asked: Any, variation: Any) -> SymmetrySpec:
    """A symmetric variation's spec: the parent's own template. ``asked`` is ``"parent"``, or the parent's group or
    template as a spec (a request checked again); ``ValueError`` naming both when it asks for another group."""
    template = variation.template
    own = SymmetrySpec(templates=(template,))
    if isinstance(asked, str) and asked.strip().lower() == "parent":
        return own
    spec = SymmetrySpec.parse(asked)
    groups = {t.space_group for t in spec.templates} if spec.templates else {spec.space_group}  # type: ignore[union-attr]
    if groups != {template.space_group} or spec.templates and set(spec.templates) != {template}:  # type: ignore[union-attr]
        raise ValueError(f"symmetry={str(asked)!r} with parent {variation.parent.name}: a variation keeps the parent's "
                         f"own symmetry, {template} (space group {template.space_group}); pass symmetry='parent'")
    return SymmetrySpec(templates=(template,), start=spec.start)  # type: ignore[union-attr]
