"""The symmetric sampling mode's batched constraint: every crystal of a batch keeps its Wyckoff template.

:class:`SymmetryConstraint` is built from one :class:`~mattergen_lab.symmetry.templates.WyckoffTemplate` per crystal
and applied by the sampler to the prior and after every predictor and corrector step, with no retraining:

* **lattice**: the new lattice (sample and mean) is projected onto its crystal system's subspace of symmetric
  matrices (:func:`~mattergen_lab.symmetry.groups.lattice_basis`), a linear orthogonal projection, so projected
  Gaussian noise stays Gaussian in the subspace;
* **coordinates**: the state is one representative ``r`` per orbit; atoms are ``R_i r + t_i``. A step's drift
  (``mean − x``, wrapped) is pulled back to the representative, averaged over the orbit and projected onto the site
  (:class:`~mattergen_lab.symmetry.groups.OrbitGeometry`): the orbit-average of the score. Its noise is the
  representative atom's own noise, projected onto the site, so a free parameter keeps the noise scale of an atom
  (averaging ``m`` independent noises would shrink it by ``√m``). Then every atom is rebuilt from ``r``, so the
  crystal is exactly symmetric at every step;
* **atom types**: the D3PM logits of an orbit are averaged over its atoms before the type step, and the orbit's
  representative draws the type that all its atoms take.

Method: DiffCSP++ (Jiao et al., ICLR 2024) diffuses Wyckoff free parameters and a crystal-system lattice basis;
SymmCD (Levy et al., 2024) expands an asymmetric unit. Here the trained MatterGen network is used as it is and its
update is projected onto the same subspaces (a projected predictor-corrector step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mattergen_lab.constants import MASK_Z
from mattergen_lab.symmetry.groups import centring_matrix, lattice_basis, orbit_geometry
from mattergen_lab.symmetry.templates import ASSIGNMENTS, WyckoffTemplate


def _sym_sqrt(g: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` symmetric square roots of symmetric positive semi-definite ``g`` (negative rounding clipped)."""
    w, v = torch.linalg.eigh((g + g.transpose(1, 2)) / 2)
    return (v * w.clamp(min=0).sqrt()[:, None, :]) @ v.transpose(1, 2)


def _wrap(x: torch.Tensor) -> torch.Tensor:
    """Differences of fractional coordinates into [−0.5, 0.5)."""
    return x - torch.floor(x + 0.5)


class SymmetryConstraint:
    """Projections for one batch of crystals, crystal ``b`` following ``templates[b]`` in its **primitive** cell
    (atoms crystal after crystal, orbit after orbit, member 0 of each orbit its representative; fractional
    coordinates of the primitive cell, :func:`~mattergen_lab.symmetry.groups.centring_matrix`), so a centred
    template is sampled with the atoms the network was trained on, not two to four times as many.

    Attributes:
        num_atoms: ``(B,)`` primitive-cell atom counts (``template.primitive_atoms``).
        orbit: ``(N,)`` global orbit index of each atom; ``rep``: ``(O,)`` atom index of each orbit's representative.
    """

    def __init__(self, templates: Sequence[WyckoffTemplate], *, device: torch.device | str = "cpu",
                 start: float = 1.0, assign: str = "nearest", settle: int = 0) -> None:
        if not templates:
            raise ValueError("SymmetryConstraint needs one template per crystal")
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0.0 < start <= 1.0:
            raise ValueError(f"start={start!r} must be in (0, 1]: the diffusion time from which the constraint holds")
        if assign not in ASSIGNMENTS:
            raise ValueError(f"assign={assign!r} must be one of {ASSIGNMENTS}")
        self.start = float(start)
        if isinstance(settle, bool) or not isinstance(settle, int) or settle < 0:
            raise ValueError(f"settle={settle!r} must be an integer >= 0")
        self.assign = assign  # how free atoms are numbered into the slots when the constraint starts (the sampler)
        self.settle = settle  # corrector steps the sampler runs inside the templates right after the snap
        self.templates = [t if isinstance(t, WyckoffTemplate) else WyckoffTemplate.parse(t) for t in templates]
        self.device = torch.device(device)
        self.dtype = torch.float32 if self.device.type == "mps" else torch.float64
        rots, trans, orbit, rep, proj, lin, off = [], [], [], [], [], [], []
        n = 0
        ties, tie_rep = [], []  # per atom its element class (its orbit unless the template has an element pattern)
        self._crystal_ties: list[range] = []  # each crystal's element classes
        for t in self.templates:
            labels = t.elements if t.elements is not None else tuple(range(len(t.letters)))
            first = len(tie_rep)
            self._crystal_ties.append(range(first, first + max(labels) + 1))
            for letter, label in zip(t.letters, labels):
                g = orbit_geometry(t.space_group, letter, primitive=True)
                rots.append(torch.as_tensor(g.rotations))
                trans.append(torch.as_tensor(g.translations))
                if first + label == len(tie_rep):  # the class's first orbit: its representative stands for it
                    tie_rep.append(n)
                ties += [first + label] * g.multiplicity
                orbit += [len(rep)] * g.multiplicity
                rep.append(n)
                proj.append(torch.as_tensor(g.site_projector))
                lin.append(torch.as_tensor(g.site_linear))
                off.append(torch.as_tensor(g.site_offset))
                n += g.multiplicity
        kw = {"dtype": self.dtype, "device": self.device}
        self.rotations = torch.cat(rots).to(**kw)  # (N, 3, 3)
        self.inverse_rotations = torch.linalg.inv(torch.cat(rots)).to(**kw)  # (N, 3, 3)
        self.translations = torch.cat(trans).to(**kw)  # (N, 3)
        self.orbit = torch.tensor(orbit, dtype=torch.long, device=self.device)  # (N,)
        self.rep = torch.tensor(rep, dtype=torch.long, device=self.device)  # (O,)
        self.site_projectors = torch.stack(proj).to(**kw)  # (O, 3, 3)
        self._site_linear = torch.stack(lin).to(**kw)  # (O, 3, 3)
        self._site_offset = torch.stack(off).to(**kw)  # (O, 3)
        self.orbit_sizes = torch.bincount(self.orbit).to(self.dtype)  # (O,)
        self.tie = torch.tensor(ties, dtype=torch.long, device=self.device)  # (N,) element class of each atom
        self.tie_rep = torch.tensor(tie_rep, dtype=torch.long, device=self.device)  # (T,) its first atom
        self._tie_sizes = torch.bincount(self.tie)  # (T,)
        # element classes that must take different elements (templates with an element pattern), per crystal
        self._distinct = [t.elements is not None for t in self.templates]
        self.num_atoms = torch.tensor([t.primitive_atoms for t in self.templates], dtype=torch.long)  # (B,)
        bases = []
        for t in self.templates:
            basis = torch.as_tensor(lattice_basis(t.crystal_system)).reshape(-1, 9)  # (K, 9)
            bases.append(basis.T @ basis)  # (9, 9) projector on vec(L)
        self._lattice_projectors = torch.stack(bases).to(**kw)  # (B, 9, 9)
        self._centring = torch.stack([torch.as_tensor(centring_matrix(t.space_group)) for t in self.templates]).to(**kw)
        self._centred = torch.tensor([t.centring > 1 for t in self.templates], device=self.device)  # (B,)
        self._any_centred = bool(self._centred.any())  # known here: no device sync on every step
        self.representatives: torch.Tensor | None = None  # (O, 3), set by init_coords
        grid = torch.tensor([-1.0, 0.0, 1.0])
        self._shifts = torch.cartesian_prod(grid, grid, grid).to(**kw)  # (27, 3) lattice translations

    # ------------------------------------------------------------------ building blocks
    def expand(self, r: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` atoms of every orbit from the representatives ``r`` (O, 3), wrapped into [0, 1)."""
        x = torch.einsum("nij,nj->ni", self.rotations, r[self.orbit]) + self.translations
        return torch.remainder(x, 1.0)

    def project_displacement(self, d: torch.Tensor) -> torch.Tensor:
        """``(O, 3)``: the orbit-average of the per-atom displacements ``d`` (N, 3), on each site."""
        pulled = torch.einsum("nij,nj->ni", self.inverse_rotations, d.to(self.dtype))  # (N, 3)
        mean = torch.zeros_like(self.site_projectors[:, 0]).index_add_(0, self.orbit, pulled)  # (O, 3)
        mean = mean / self.orbit_sizes[:, None]
        return torch.einsum("oij,oj->oi", self.site_projectors, mean)

    def _on_site(self, points: torch.Tensor, offsets: torch.Tensor, projectors: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d, Π d)`` for ``d`` = every lattice translate of ``points`` minus its site's offset, ``(..., 27, 3)``."""
        d = points - offsets - self._shifts
        return d, torch.einsum("...ij,...kj->...ki", projectors, d)

    def site_distance(self, orbit: int, points: torch.Tensor) -> torch.Tensor:
        """``(m,)``: how far each of ``points`` (m, 3; primitive-cell fractional) lies from orbit ``orbit``'s site, over
        its lattice translates (0 for a point of the site form, such as member 0 of the orbit)."""
        d, on_site = self._on_site(points.to(self.dtype)[:, None, :], self._site_offset[orbit],
                                   self.site_projectors[orbit][None])
        return (d - on_site).norm(dim=-1).amin(dim=1)

    def onto_site(self, orbits: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``(k, 3)``: each of ``points`` (k, 3; primitive-cell fractional) moved onto the site of its orbit ``orbits``
        (k,): the site's plane through a point of it (its offset), among the lattice translates of the point the one
        nearest to that plane (a site such as x, 2x, z is not closed under wrapping each coordinate)."""
        offset = self._site_offset[orbits][:, None, :]  # (k, 1, 3)
        d, on_site = self._on_site(points.to(self.dtype)[:, None, :], offset, self.site_projectors[orbits])  # (k, 27, 3)
        best = (d - on_site).norm(dim=-1).argmin(dim=1)  # (k,)
        return offset[:, 0] + on_site[torch.arange(len(best), device=best.device), best]

    def push(self, d_r: torch.Tensor) -> torch.Tensor:
        """``(N, 3)``: a representative displacement (O, 3) carried to every atom of its orbit."""
        return torch.einsum("nij,nj->ni", self.rotations, d_r[self.orbit])

    # ------------------------------------------------------------------ what the sampler calls
    def init_coords(self, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """Uniform random points of every site (the coordinate prior restricted to the template), ``(N, 3)``."""
        u = torch.rand(len(self.rep), 3, generator=generator, device=generator.device, dtype=torch.float32)
        u = u.to(device=self.device, dtype=self.dtype)
        self.representatives = torch.remainder(torch.einsum("oij,oj->oi", self._site_linear, u) + self._site_offset, 1.0)
        return self.expand(self.representatives).to(dtype)

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3)``: the symmetric configuration nearest to arbitrary positions ``x`` (N, 3), and the
        representatives set to it. Each orbit's representative is the average of its atoms pulled back by their
        operations (around the representative atom's own position), moved onto its site. Idempotent: a symmetric
        ``x`` is returned as it is."""
        x = x.to(self.dtype)
        pulled = torch.einsum("nij,nj->ni", self.inverse_rotations, x - self.translations)  # (N, 3)
        anchor = pulled[self.rep][self.orbit]  # (N, 3)
        offsets = torch.zeros_like(self._site_offset).index_add_(0, self.orbit, _wrap(pulled - anchor))
        r = pulled[self.rep] + offsets / self.orbit_sizes[:, None]  # (O, 3)
        r = self.onto_site(torch.arange(len(r), device=r.device), r)
        self.representatives = torch.remainder(r, 1.0)
        return self.expand(self.representatives)

    def coords(self, x: torch.Tensor, sample: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A coordinate step ``x → (sample, mean)`` made symmetric (see the module docstring); returns the new
        ``(sample, mean)`` and moves the representatives to the sample."""
        if self.representatives is None:
            raise RuntimeError("init_coords must run before the first step")
        drift = self.project_displacement(_wrap(mean - x))  # (O, 3)
        noise = _wrap(sample - mean)[self.rep].to(self.dtype)  # (O, 3): each representative's own noise
        noise = torch.einsum("oij,oj->oi", self.site_projectors, noise)
        r_mean = torch.remainder(self.representatives + drift, 1.0)
        r_sample = torch.remainder(r_mean + noise, 1.0)
        self.representatives = r_sample
        return self.expand(r_sample).to(x.dtype), self.expand(r_mean).to(x.dtype)

    def lattice(self, lattice: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 3)`` primitive lattices whose conventional cells are projected onto each crystal's crystal-system
        subspace. A primitive lattice's cell is its own conventional one: the linear projection. A centred one
        (``L_conv = P⁻ᵀ L``, ``P`` the centring matrix) is taken to its conventional cell's symmetric polar form
        ``(L_conv L_convᵀ)^{1/2}``, projected there, and brought back as the symmetric polar form of ``Pᵀ`` times it:
        the same cell up to a rotation, which leaves fractional coordinates as they are. Idempotent either way."""
        x = lattice.to(self.dtype)
        if self._any_centred:
            conv = torch.linalg.solve(self._centring.transpose(1, 2), x)  # P⁻ᵀ L
            conv = torch.where(self._centred[:, None, None], _sym_sqrt(conv @ conv.transpose(1, 2)), x)
        else:
            conv = x
        flat = torch.einsum("bij,bj->bi", self._lattice_projectors, conv.reshape(-1, 9)).reshape(-1, 3, 3)
        if self._any_centred:
            prim = self._centring.transpose(1, 2) @ flat
            flat = torch.where(self._centred[:, None, None], _sym_sqrt(prim @ prim.transpose(1, 2)), flat)
        return flat.to(lattice.dtype)

    def pool_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` type logits averaged over each orbit (over each element class, for a template with an element
        pattern)."""
        total = torch.zeros(len(self.tie_rep), logits.shape[1], dtype=logits.dtype, device=logits.device)
        total.index_add_(0, self.tie, logits)
        return (total / self._tie_sizes.to(logits)[:, None])[self.tie]

    def taken(self, types: torch.Tensor, num_classes: int) -> torch.Tensor | None:
        """``(N, num_classes)`` True where an atom may not draw a type class: in a crystal whose template has an element
        pattern, an element class still masked in ``types`` (N,) may not take an element another class of the
        crystal already holds (the sampler penalises those x₀ logits; if every allowed element is taken, the least
        bad one wins). ``None`` when no template has a pattern (orbits may share an element)."""
        if not any(self._distinct):
            return None
        rep_types = types[self.tie_rep].tolist()
        out = torch.zeros(len(self.tie_rep), num_classes, dtype=torch.bool, device=types.device)
        for distinct, ties in zip(self._distinct, self._crystal_ties):
            taken = [rep_types[k] for k in ties if rep_types[k] != MASK_Z] if distinct else []
            for k in ties if taken else ():
                if rep_types[k] == MASK_Z:
                    out[k, [z - 1 for z in taken]] = True
        return out[self.tie]

    def distinct_types(self, new: torch.Tensor, old: torch.Tensor, logits: torch.Tensor, *, last: bool) -> torch.Tensor:
        """``(N,)`` types after a type step (``new``, from ``old``) with, in a crystal whose template has an element
        pattern, no two classes on one element: a class that drew in this step an element another class holds (one
        that held it before, or came first) goes back to MASK, to draw again at the next step; at the last step it
        takes instead the best element of its pooled ``logits`` (N, C) that is still free."""
        if not any(self._distinct):
            return new
        reps_new, reps_old = new[self.tie_rep].tolist(), old[self.tie_rep].tolist()
        fixed = list(reps_new)
        for distinct, ties in zip(self._distinct, self._crystal_ties):
            if not distinct:
                continue
            taken = {reps_old[k] for k in ties if reps_old[k] != MASK_Z}
            for k in ties:
                z = reps_new[k]
                if reps_old[k] != MASK_Z or z == MASK_Z:
                    continue
                if z in taken:
                    if last:
                        order = torch.argsort(logits[self.tie_rep[k]], descending=True).tolist()
                        free = [c + 1 for c in order if c + 1 != MASK_Z and c + 1 not in taken]
                        z = free[0] if free else z
                    else:
                        z = MASK_Z
                    fixed[k] = z
                if z != MASK_Z:
                    taken.add(z)
        out = torch.as_tensor(fixed, dtype=new.dtype, device=new.device)
        return out[self.tie]

    def share_types(self, types: torch.Tensor) -> torch.Tensor:
        """``(N,)`` every atom takes its orbit representative's type (its element class's, with a pattern)."""
        return types[self.tie_rep][self.tie]
