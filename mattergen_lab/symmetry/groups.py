"""Space groups, crystal systems, Wyckoff orbits and the two linear projections of the symmetric sampling mode.

Everything group-theoretical comes from pyxtal's tables (``pyxtal.symmetry.Group``: the 230 groups in their
standard settings, the general position's operations with centring, and every Wyckoff position's site form such as
``x, 2x, 1/4``); nothing here hand-writes a group. Conventions: fractional coordinates of the **conventional**
standard cell (trigonal R groups in hexagonal axes, monoclinic groups with unique axis b), row-vector lattices
(``cart = frac @ L``), and lattices in MatterGen's symmetric polar form ``L = (L Lᵀ)^{1/2}``.

Two projections, both orthogonal and idempotent:

* :func:`lattice_basis`: a symmetric lattice ``L`` has the metric ``G = L Lᵀ = L²``, and ``L = G^{1/2}``. For each
  crystal system the allowed metrics of the conventional cell form a linear family (cubic ``a²I``; tetragonal
  ``diag(a², a², c²)``; hexagonal/trigonal ``a²H ⊕ c²`` with ``H = [[1, −½], [−½, 1]]``; monoclinic ``G₁₂ = G₂₃ = 0``),
  and so do their square roots: cubic ``aI``, tetragonal ``diag(a, a, c)``, orthorhombic ``diag(a, b, c)``,
  hexagonal ``a H^{1/2} ⊕ c`` (``H^{1/2}`` = [[cos 15°, −sin 15°], [−sin 15°, cos 15°]]), monoclinic ``L₁₂ = L₂₃ = 0``.
  The projection onto that subspace (Frobenius-orthonormal basis) keeps a lattice in its crystal system.
* :class:`OrbitGeometry`: the atoms of one Wyckoff orbit are ``x_i = R_i r + t_i`` for a representative ``r`` on the
  site. A displacement field ``d_i`` on the orbit is projected onto the symmetric ones by pulling every member back
  to the representative (``R_i⁻¹ d_i``), averaging, and applying the site-symmetry projector ``Π`` (the mean linear
  part of the operations that fix ``r``); the result is pushed forward as ``R_i d``. Group averaging is idempotent.

Method: the symmetric subspaces follow DiffCSP++ (Jiao et al., *Space Group Constrained Crystal Generation*,
ICLR 2024: lattice in a crystal-system basis, coordinates through Wyckoff free parameters) and SymmCD (Levy et al.
2024: an asymmetric unit expanded by the group's operations).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

#: The seven crystal systems and the space-group numbers they span (International Tables, Vol. A).
CRYSTAL_SYSTEMS: dict[str, range] = {
    "triclinic": range(1, 3),
    "monoclinic": range(3, 16),
    "orthorhombic": range(16, 75),
    "tetragonal": range(75, 143),
    "trigonal": range(143, 168),
    "hexagonal": range(168, 195),
    "cubic": range(195, 231),
}

#: Tolerance (fractional) for telling two orbit members apart when an orbit is built.
_SAME_SITE = 1e-6


def check_space_group(space_group: object) -> int:
    """``space_group`` as an int in 1–230; ``ValueError`` naming it otherwise."""
    try:
        ok = not isinstance(space_group, bool) and float(space_group) == int(space_group)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not 1 <= int(space_group) <= 230:  # type: ignore[arg-type]
        raise ValueError(f"space_group={space_group!r} must be an integer in 1-230 (International Tables number)")
    return int(space_group)  # type: ignore[arg-type]


def crystal_system(space_group: int) -> str:
    """The crystal system of space group ``space_group`` (1–230)."""
    sg = check_space_group(space_group)
    return next(name for name, numbers in CRYSTAL_SYSTEMS.items() if sg in numbers)


def check_crystal_system(name: object) -> str:
    """A crystal system name, lower-cased; ``ValueError`` listing the seven otherwise."""
    key = str(name).strip().lower()
    if key not in CRYSTAL_SYSTEMS:
        raise ValueError(f"crystal_system={name!r} is not one of {list(CRYSTAL_SYSTEMS)}")
    return key


@functools.lru_cache(maxsize=None)
def lattice_basis(system: str) -> np.ndarray:
    """``(K, 3, 3)`` Frobenius-orthonormal basis of the symmetric lattices of a crystal system (see module doc)."""
    system = check_crystal_system(system)

    def e(i: int, j: int) -> np.ndarray:
        m = np.zeros((3, 3))
        m[i, j] = m[j, i] = 1.0
        return m / np.linalg.norm(m)

    if system == "cubic":
        basis = [np.eye(3)]
    elif system == "tetragonal":
        basis = [np.diag([1.0, 1.0, 0.0]), e(2, 2)]
    elif system == "orthorhombic":
        basis = [e(0, 0), e(1, 1), e(2, 2)]
    elif system in ("hexagonal", "trigonal"):
        c, s = math.cos(math.radians(15)), math.sin(math.radians(15))
        hex_ab = np.zeros((3, 3))
        hex_ab[:2, :2] = [[c, -s], [-s, c]]  # (H^{1/2}: rows at 120°, unit length)
        basis = [hex_ab, e(2, 2)]
    elif system == "monoclinic":  # unique axis b: L12 = L23 = 0
        basis = [e(0, 0), e(1, 1), e(2, 2), e(0, 2)]
    else:  # triclinic: every symmetric matrix
        basis = [e(0, 0), e(1, 1), e(2, 2), e(0, 1), e(0, 2), e(1, 2)]
    out = np.stack([b / np.linalg.norm(b) for b in basis])  # (K, 3, 3)
    return out


def project_lattice(lattice: np.ndarray, system: str) -> np.ndarray:
    """Orthogonal projection of ``(..., 3, 3)`` symmetric lattices onto ``system``'s subspace (idempotent)."""
    basis = lattice_basis(system)  # (K, 3, 3)
    coeff = np.einsum("...ij,kij->...k", lattice, basis)  # (..., K)
    return np.einsum("...k,kij->...ij", coeff, basis)


@dataclass(frozen=True)
class OrbitGeometry:
    """One Wyckoff position of one group: how its orbit is built and projected.

    Attributes:
        space_group, letter, multiplicity: e.g. 225, ``"a"``, 4 (in the conventional cell).
        site_linear, site_offset: the site form as an affine map ``u ↦ A u + b`` (e.g. ``x, 2x, 1/4``); any ``u``
            gives a point on the site.
        rotations, translations: ``(m, 3, 3)`` and ``(m, 3)``: member ``i`` of the orbit of ``r`` is
            ``R_i r + t_i`` (mod 1), member 0 being ``r`` itself.
        site_projector: ``(3, 3)`` ``Π``: the mean linear part of the operations that fix ``r`` (the directions in
            which the site may move; zero for a fixed point such as ``0, 0, 0``).
        dof: free parameters of the site (rank of ``Π``).
    """

    space_group: int
    letter: str
    multiplicity: int
    site_linear: np.ndarray
    site_offset: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray
    site_projector: np.ndarray
    dof: int

    def site_point(self, u: np.ndarray) -> np.ndarray:
        """The point of the site with parameters ``u`` (3,), wrapped into [0, 1)."""
        return np.mod(self.site_linear @ u + self.site_offset, 1.0)

    def members(self, r: np.ndarray) -> np.ndarray:
        """``(m, 3)`` the orbit of the representative ``r`` (3,), wrapped into [0, 1)."""
        return np.mod(np.einsum("mij,j->mi", self.rotations, r) + self.translations, 1.0)


def _wrap_diff(a: np.ndarray) -> np.ndarray:
    return a - np.round(a)


@functools.lru_cache(maxsize=None)
def _group(space_group: int):
    from pyxtal.symmetry import Group

    return Group(check_space_group(space_group))


def space_group_symbol(space_group: int) -> str:
    """The Hermann–Mauguin symbol of the group, e.g. ``"Fm-3m"`` for 225 (pyxtal's table)."""
    return str(_group(space_group).symbol)


@functools.lru_cache(maxsize=None)
def subgroup_types(space_group: int) -> frozenset[int]:
    """Every space-group type that occurs as a subgroup of ``space_group`` (itself included): the closure of the
    maximal translationengleiche and klassengleiche subgroups of the International Tables (pyxtal's tables), so
    ``subgroup_types(225)`` holds 221 and 1. A crystal relaxed from a template of group G into a group H with G in
    ``subgroup_types(H)`` has kept (at least) G's kind of symmetry."""
    seen, todo = {check_space_group(space_group)}, [check_space_group(space_group)]
    while todo:
        for h in _group(todo.pop()).get_max_subgroup_numbers():
            if int(h) not in seen:
                seen.add(int(h))
                todo.append(int(h))
    return frozenset(seen)


@functools.lru_cache(maxsize=None)
def wyckoff_letters(space_group: int) -> dict[str, int]:
    """``{letter: multiplicity}`` of every Wyckoff position of the group (conventional cell)."""
    g = _group(space_group)
    return {wp.letter: int(wp.multiplicity) for wp in g.Wyckoff_positions}


@functools.lru_cache(maxsize=None)
def general_operations(space_group: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 3, 3)`` rotations and ``(n, 3)`` translations of the group's general position (with centring)."""
    g = _group(space_group)
    affine = np.stack([op.affine_matrix for op in g.Wyckoff_positions[0].ops])  # (n, 4, 4)
    return affine[:, :3, :3].copy(), affine[:, :3, 3].copy()


#: Primitive cell vectors (columns) in conventional fractional coordinates, per lattice centring (International
#: Tables; R groups in the obverse setting of their hexagonal axes). ``x_conv = P x_prim``, ``L_prim = Pᵀ L_conv``.
_CENTRING_VECTORS = {
    "P": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "A": ((1, 0, 0), (0, 0.5, 0.5), (0, -0.5, 0.5)),
    "B": ((0.5, 0, 0.5), (0, 1, 0), (-0.5, 0, 0.5)),
    "C": ((0.5, 0.5, 0), (-0.5, 0.5, 0), (0, 0, 1)),
    "I": ((-0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.5, 0.5, -0.5)),
    "F": ((0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)),
    "R": ((2 / 3, 1 / 3, 1 / 3), (-1 / 3, 1 / 3, 1 / 3), (-1 / 3, -2 / 3, 1 / 3)),
}


@functools.lru_cache(maxsize=None)
def centring_matrix(space_group: int) -> np.ndarray:
    """``P`` (3, 3): the primitive cell's vectors as columns, in the conventional cell's fractional coordinates
    (identity for a primitive lattice; ``det P`` = 1 / lattice points per conventional cell)."""
    return np.array(_CENTRING_VECTORS[space_group_symbol(space_group)[0]], dtype=np.float64).T


def centring(space_group: int) -> int:
    """Lattice points per conventional cell: 1 (P), 2 (A, B, C, I), 3 (R in hexagonal axes), 4 (F)."""
    return int(round(1.0 / np.linalg.det(centring_matrix(space_group))))


@functools.lru_cache(maxsize=None)
def primitive_operations(space_group: int) -> tuple[np.ndarray, np.ndarray]:
    """The general position's operations in the primitive cell's fractional coordinates (``P⁻¹ R P``, ``P⁻¹ t``),
    one per coset of the primitive lattice (the centring translations become lattice vectors and drop out)."""
    p = centring_matrix(space_group)
    p_inv = np.linalg.inv(p)
    rots, trans = general_operations(space_group)
    rp = np.einsum("ij,njk,kl->nil", p_inv, rots, p)
    tp = np.einsum("ij,nj->ni", p_inv, trans)
    keep: list[int] = []
    for k in range(len(rp)):
        if not any(np.abs(rp[k] - rp[j]).max() < 1e-9 and np.abs(_wrap_diff(tp[k] - tp[j])).max() < _SAME_SITE
                   for j in keep):
            keep.append(k)
    return np.round(rp[keep], 12), tp[keep]


@functools.lru_cache(maxsize=None)
def orbit_geometry(space_group: int, letter: str, primitive: bool = False) -> OrbitGeometry:
    """The :class:`OrbitGeometry` of Wyckoff position ``letter`` of ``space_group``, in the conventional cell, or
    with ``primitive`` in the primitive cell (``multiplicity`` / lattice points members, every map in the primitive
    cell's fractional coordinates); ``ValueError`` naming both when the group has no such position."""
    sg = check_space_group(space_group)
    letters = wyckoff_letters(sg)
    if letter not in letters:
        raise ValueError(f"Wyckoff letter {letter!r} does not exist in space group {sg}; it has {''.join(sorted(letters))}")
    g = _group(sg)
    wp = next(w for w in g.Wyckoff_positions if w.letter == letter)
    site = np.asarray(wp.ops[0].affine_matrix)
    a, b = site[:3, :3].copy(), site[:3, 3].copy()
    expected = int(wp.multiplicity)
    if primitive:
        p_inv = np.linalg.inv(centring_matrix(sg))
        a, b, expected = p_inv @ a, p_inv @ b, expected // centring(sg)
        rots, trans = primitive_operations(sg)
    else:
        rots, trans = general_operations(sg)
    # a generic point of the site (irrational parameters: no accidental extra symmetry)
    r = np.mod(a @ np.array([0.1234567, 0.3456789, 0.5678912]) + b, 1.0)
    images = np.mod(np.einsum("nij,j->ni", rots, r) + trans, 1.0)  # (n, 3)
    keep: list[int] = []
    fixes: list[int] = []
    for k, x in enumerate(images):
        if np.abs(_wrap_diff(x - r)).max() < _SAME_SITE:
            fixes.append(k)
        if not any(np.abs(_wrap_diff(x - images[j])).max() < _SAME_SITE for j in keep):
            keep.append(k)
    # member 0 must be r itself: the identity is the general position's first operation
    if len(keep) != expected or keep[0] not in fixes:
        raise RuntimeError(f"space group {sg} position {letter}: built {len(keep)} members, expected {expected}")
    projector = rots[fixes].mean(axis=0)  # (3, 3)
    projector[np.abs(projector) < 1e-12] = 0.0
    return OrbitGeometry(
        space_group=sg, letter=letter, multiplicity=expected, site_linear=a, site_offset=b,
        rotations=rots[keep].copy(), translations=trans[keep].copy(), site_projector=projector,
        dof=int(round(np.trace(projector))),
    )
