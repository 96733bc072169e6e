"""Training data for the symmetric model: each crystal as its Wyckoff template, atoms orbit after orbit.

DiffCSP++ (Jiao et al., ICLR 2024) trains its network on crystals written as a space group, Wyckoff positions and
their free parameters, noised only along those parameters. :func:`symmetrize_dataset` writes every training crystal
that way, in the frame :class:`~mattergen_lab.symmetry.constraint.SymmetryConstraint` samples in: the primitive cell of
the standard conventional cell (pyxtal's settings, the ones :mod:`~mattergen_lab.symmetry.groups` builds its orbits
from), its lattice in MatterGen's symmetric polar form and projected onto its crystal system, and its atoms orbit
after orbit, member 0 of each orbit the representative. The crystal is found by pyxtal (``from_seed``, which calls
spglib) at 0.1 Å, the tolerance of our symmetry metrics, and then made exactly symmetric (``snap``): a training crystal
moves by at most about that tolerance. A crystal pyxtal cannot read keeps its own cell as a P1 template, so the
dataset keeps every crystal in its place (the validation split drawn from it is the base model's).

The result is cached in one ``.npz`` (about 30 ms per crystal to build, 12 minutes for MP-20 on one core).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mattergen_lab.crystal import CrystalBatch, polar_symmetric
from mattergen_lab.data import CrystalDataset
from mattergen_lab.symmetry.constraint import SymmetryConstraint
from mattergen_lab.symmetry.groups import centring_matrix
from mattergen_lab.symmetry.templates import WyckoffTemplate

log = logging.getLogger(__name__)

#: Tolerance (Å) at which a training crystal's symmetry is found (spglib through pyxtal).
TOLERANCE = 0.1
#: Closest two atoms of a rebuilt crystal may come (Å); a closer pair means the orbits were misread.
MIN_DISTANCE = 0.5
_FORMAT = 1


def symmetrize(lattice: np.ndarray, frac_coords: np.ndarray, atomic_numbers: np.ndarray, tol: float = TOLERANCE
               ) -> tuple[WyckoffTemplate, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(template, lattice (3, 3), frac_coords (n, 3), atomic_numbers (n,))`` of one crystal in the constraint's frame
    (see the module docstring), or ``None`` when pyxtal cannot read it or the rebuilt crystal has clashing atoms."""
    from pymatgen.core import Element, Lattice, Structure
    from pyxtal import pyxtal

    structure = Structure(Lattice(lattice), [int(z) for z in atomic_numbers], frac_coords)
    xtal = pyxtal()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xtal.from_seed(structure, tol=tol)
    except Exception as exc:  # pyxtal raises many kinds on a crystal it cannot standardise
        log.debug("pyxtal could not read the crystal: %r", exc)
        return None
    sg = int(xtal.group.number)
    sites = sorted(xtal.atom_sites, key=lambda s: (s.wp.letter, str(s.specie)))
    try:
        template = WyckoffTemplate(sg, tuple(s.wp.letter for s in sites))
    except ValueError:
        return None
    p = centring_matrix(sg)
    conv = polar_symmetric(torch.as_tensor(np.asarray(xtal.lattice.matrix, dtype=np.float64)))
    prim = torch.as_tensor(p.T) @ conv  # L_prim = Pᵀ L_conv
    constraint = SymmetryConstraint([template])
    lat = constraint.lattice(polar_symmetric(prim)[None])  # (1, 3, 3) on the crystal system
    # each orbit's representative: the member of pyxtal's orbit that lies on the site (member 0's form)
    reps = []
    for o, site in enumerate(sites):
        members = np.linalg.solve(p, np.asarray(site.coords, dtype=np.float64).T).T  # (m, 3) primitive fractional
        reps.append(members[int(constraint.site_distance(o, torch.as_tensor(members)).argmin())])
    r = torch.as_tensor(np.stack(reps))
    x = constraint.snap(constraint.expand(r)).numpy()  # exactly symmetric
    z = np.repeat([Element(str(s.specie)).Z for s in sites], template.primitive_multiplicities)
    if len(z) != template.primitive_atoms or sorted(z.tolist()) != sorted(int(a) for a in atomic_numbers):
        return None
    rebuilt = Structure(Lattice(lat[0].numpy()), z.tolist(), x)
    if len(rebuilt) > 1 and rebuilt.distance_matrix[np.triu_indices(len(rebuilt), 1)].min() < MIN_DISTANCE:
        return None
    return template, lat[0].numpy(), x, z


class SymmetricDataset:
    """A :class:`~mattergen_lab.data.CrystalDataset` in template order plus one template per crystal; its batches
    carry ``properties["wyckoff_template"]`` (strings), which makes the training loss noise them symmetrically."""

    def __init__(self, crystals: CrystalDataset, templates: list[str], *, start: float = 1.0) -> None:
        from mattergen_lab.symmetry.templates import check_start

        if len(crystals) != len(templates):
            raise ValueError(f"{len(templates)} templates for {len(crystals)} crystals")
        self.crystals = crystals
        self.templates = np.asarray(templates, dtype=str)
        self.start = check_start(start)  # the diffusion time from which batches are noised symmetrically

    def __len__(self) -> int:
        return len(self.crystals)

    def __repr__(self) -> str:
        p1 = float(np.mean([t.startswith("1:") for t in self.templates])) if len(self) else 0.0
        return f"SymmetricDataset({len(self)} crystals, {p1:.1%} P1, source={self.crystals.source!r})"

    def get_batch(self, indices: Any, dtype: torch.dtype = torch.float32) -> CrystalBatch:
        idx = self.crystals._as_index_array(indices)
        batch = self.crystals.get_batch(idx, dtype=dtype)
        # the stored lattices are already symmetric and on their crystal systems; polar_symmetric keeps them
        return batch.replace(properties={**batch.properties, "wyckoff_template": [str(t) for t in self.templates[idx]],
                                         "symmetry_start": torch.full((len(idx),), self.start, dtype=dtype)})

    def with_template_groups(self) -> "SymmetricDataset":
        """The same crystals labelled ``properties["space_group"]`` with their templates' groups: what a space-group
        adapter is fine-tuned on with symmetric noise, so each crystal is conditioned on the group it is noised in
        (the sampler's ``space_group="template"``)."""
        c = self.crystals
        groups = np.array([WyckoffTemplate.parse(t).space_group for t in self.templates], dtype=np.float64)
        labelled = CrystalDataset(c.atom_types, c.frac_coords, c.lattice, c.num_atoms, c.ids,
                                  {**c.properties, "space_group": groups}, failures=c.failures, source=c.source)
        return SymmetricDataset(labelled, list(self.templates), start=self.start)

    def subset(self, indices: Any) -> "SymmetricDataset":
        idx = self.crystals._as_index_array(indices)
        return SymmetricDataset(self.crystals.subset(idx), list(self.templates[idx]), start=self.start)

    def split_validation(self, fraction: float, seed: int = 0) -> tuple["SymmetricDataset", "SymmetricDataset"]:
        """The same split as ``CrystalDataset.split_validation`` of the source (crystals stay in their places)."""
        train, val = self.crystals.validation_indices(fraction, seed)
        return self.subset(train), self.subset(val)

    def num_atoms_distribution(self):
        return self.crystals.num_atoms_distribution()


def symmetrize_dataset(data: CrystalDataset, cache: str | Path | None = None, *, progress=None,
                       start: float = 1.0) -> SymmetricDataset:
    """Every crystal of ``data`` through :func:`symmetrize` (P1 and its own cell where that fails), in order; read
    from ``cache`` when it holds the same crystals (ids), written there otherwise. ``progress(i, n)`` is called
    every 500 crystals; ``start``: the diffusion time from which its batches are noised symmetrically."""
    if cache is not None and Path(cache).exists():
        with np.load(cache, allow_pickle=False) as f:
            if int(f["format"]) == _FORMAT and f["ids"].tolist() == data.ids.tolist():
                crystals = CrystalDataset(f["atom_types"], f["frac_coords"], f["lattice"], f["num_atoms"], ids=f["ids"],
                                          properties={k: data.properties[k] for k in data.properties},
                                          source=f"{data.source} (symmetrised)")
                return SymmetricDataset(crystals, f["templates"].tolist(), start=start)
            log.warning("%s holds other crystals; rebuilding it", cache)
    types, frac, lattices, counts, templates = [], [], [], [], []
    for i in range(len(data)):
        a, b = data.ptr[i], data.ptr[i + 1]
        found = symmetrize(data.lattice[i], data.frac_coords[a:b], data.atom_types[a:b])
        if found is None:
            n = int(b - a)
            found = (WyckoffTemplate(1, ("a",) * n), polar_symmetric(torch.as_tensor(data.lattice[i])).numpy(),
                     np.mod(data.frac_coords[a:b], 1.0), data.atom_types[a:b])
        t, lat, x, z = found
        templates.append(str(t))
        lattices.append(lat)
        frac.append(x)
        types.append(z)
        counts.append(len(z))
        if progress is not None and (i + 1) % 500 == 0:
            progress(i + 1, len(data))
    arrays = {"atom_types": np.concatenate(types).astype(np.int64), "frac_coords": np.concatenate(frac),
              "lattice": np.stack(lattices), "num_atoms": np.asarray(counts, dtype=np.int64)}
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, format=_FORMAT, ids=data.ids, templates=np.asarray(templates, dtype=str), **arrays)
    crystals = CrystalDataset(**arrays, ids=data.ids, properties=dict(data.properties),
                              source=f"{data.source} (symmetrised)")
    return SymmetricDataset(crystals, templates, start=start)
