"""The symmetric sampling mode's geometry: groups, Wyckoff orbits, projections and exact symmetry of sampled crystals."""

import numpy as np
import pytest
import spglib
import torch

from mattergen_lab.symmetry.constraint import SymmetryConstraint
from mattergen_lab.symmetry.groups import (
    CRYSTAL_SYSTEMS,
    centring,
    centring_matrix,
    crystal_system,
    lattice_basis,
    orbit_geometry,
    primitive_operations,
    project_lattice,
    wyckoff_letters,
)
from mattergen_lab.symmetry.templates import SymmetrySpec, WyckoffTemplate, random_template

#: ten groups covering the seven crystal systems, with templates of several orbits (special and general positions)
TEMPLATES = ["2:ai", "14:ee", "12:aii", "62:ccd", "139:ade", "129:acc", "166:abc", "194:bc", "225:ab", "227:ac"]


def _lattice(system: str, rng: np.random.Generator) -> np.ndarray:
    """A generic symmetric lattice of ``system`` (positive definite, lengths 4–7 Å)."""
    basis = lattice_basis(system)
    for _ in range(100):
        coeff = rng.uniform(3.0, 7.0, len(basis))
        if system in ("monoclinic", "triclinic"):
            coeff[3:] = rng.uniform(-1.0, 1.0, len(basis) - 3)
        lat = np.einsum("k,kij->ij", coeff, basis)
        if np.linalg.eigvalsh(lat).min() > 1.0:
            return lat
    raise AssertionError(system)


def _is_symmetric(template: WyckoffTemplate, lattice: np.ndarray, frac: np.ndarray, types: np.ndarray) -> bool:
    """Every operation of the template's group (in the primitive cell's coordinates, as the sampler's crystals are)
    maps the crystal onto itself (same types), to 1e-6."""
    rots, trans = primitive_operations(template.space_group)
    for r, t in zip(rots, trans):
        image = np.mod(frac @ r.T + t, 1.0)
        diff = image[:, None, :] - frac[None, :, :]
        diff -= np.round(diff)
        cart = np.linalg.norm(diff @ lattice, axis=-1)  # (N, N)
        match = (cart < 1e-6) & (types[:, None] == types[None, :])
        if not match.any(axis=1).all():
            return False
    return True


def test_every_wyckoff_position_of_every_group_builds_its_orbit():
    count = 0
    for sg in range(1, 231, 7):  # every seventh group: all systems, centrings and both hexagonal settings
        for letter, mult in wyckoff_letters(sg).items():
            g = orbit_geometry(sg, letter)
            p = g.site_projector
            assert g.multiplicity == mult == len(g.rotations)
            prim = orbit_geometry(sg, letter, primitive=True)  # the sampled cell: once per lattice point
            assert prim.multiplicity * centring(sg) == mult and prim.dof == g.dof
            np.testing.assert_allclose(p @ p, p, atol=1e-12)  # a projector
            assert np.linalg.matrix_rank(g.site_linear) == g.dof == round(np.trace(p))
            members = g.members(g.site_point(np.array([0.31, 0.17, 0.73])))
            d = members[:, None] - members[None]
            d -= np.round(d)
            assert (np.abs(d).max(-1) + np.eye(mult) > 1e-6).all()  # m distinct points
            count += 1
    assert count > 200


@pytest.mark.parametrize("system", list(CRYSTAL_SYSTEMS))
def test_lattice_projection_is_idempotent_and_keeps_the_crystal_system(system):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    lat = project_lattice(a + a.T + 6 * np.eye(3), system)
    np.testing.assert_allclose(project_lattice(lat, system), lat, atol=1e-12)
    np.testing.assert_allclose(lat, lat.T)
    g = lat @ lat.T
    lengths = np.sqrt(np.diag(g))
    cos = g / np.outer(lengths, lengths)
    if system in ("cubic", "tetragonal", "hexagonal", "trigonal"):
        assert lengths[0] == pytest.approx(lengths[1])
    if system == "cubic":
        assert lengths[0] == pytest.approx(lengths[2])
    if system in ("hexagonal", "trigonal"):
        assert cos[0, 1] == pytest.approx(-0.5)  # γ = 120°
        assert cos[0, 2] == pytest.approx(0.0, abs=1e-12) and cos[1, 2] == pytest.approx(0.0, abs=1e-12)
    if system in ("cubic", "tetragonal", "orthorhombic"):
        np.testing.assert_allclose(cos - np.diag(np.diag(cos)), 0.0, atol=1e-12)
    if system == "monoclinic":  # unique axis b: α = γ = 90°, β free
        assert cos[0, 1] == pytest.approx(0.0, abs=1e-12) and cos[1, 2] == pytest.approx(0.0, abs=1e-12)
        assert abs(cos[0, 2]) > 1e-3


def test_templates_refuse_impossible_requests_naming_the_value():
    with pytest.raises(ValueError, match="space_group=231"):
        WyckoffTemplate(231, ("a",))
    with pytest.raises(ValueError, match="space_group=0"):
        SymmetrySpec(space_group=0)
    with pytest.raises(ValueError, match="'z' does not exist in space group 225"):
        WyckoffTemplate(225, ("a", "z"))
    with pytest.raises(ValueError, match=r"\['a'\] of space group 225 have no free parameter"):
        WyckoffTemplate(225, ("a", "a"))
    with pytest.raises(ValueError, match="crystal_system='cubical'"):
        SymmetrySpec(crystal_system="cubical")
    with pytest.raises(ValueError, match="max_atoms=500"):
        SymmetrySpec(source="mp20", max_atoms=500)
    with pytest.raises(ValueError, match="holds 5 atoms"):
        random_template(225, 5, torch.Generator().manual_seed(0))  # 20 in the F cell: no sum of 4, 4, 8, 24...
    with pytest.raises(ValueError, match="symmetry='P1x'"):
        SymmetrySpec.parse("P1x")


def test_symmetry_spec_parses_every_form():
    assert SymmetrySpec.parse(225) == SymmetrySpec(space_group=225)
    assert SymmetrySpec.parse("cubic").crystal_system == "cubic"
    assert SymmetrySpec.parse("mp20").source == "mp20"
    assert SymmetrySpec.parse("225:ab").templates == (WyckoffTemplate(225, ("a", "b")),)
    heusler = WyckoffTemplate.parse("225:abc")
    assert (heusler.num_atoms, heusler.centring, heusler.primitive_atoms) == (16, 4, 4)  # conventional, F, primitive


def test_mp20_templates_follow_mp20():
    spec = SymmetrySpec.parse("mp20")
    drawn = spec.draw(2000, torch.Generator().manual_seed(0))
    p1 = np.mean([t.space_group == 1 for t in drawn])
    fm3m = np.mean([t.space_group == 225 for t in drawn])
    assert p1 < 0.03  # MP-20: 1.4 % of the table
    assert 0.10 < fm3m < 0.25  # MP-20's most common group
    assert max(t.primitive_atoms for t in drawn) <= spec.max_atoms == 20
    cubic = SymmetrySpec.parse("cubic").draw(50, torch.Generator().manual_seed(0))
    assert {crystal_system(t.space_group) for t in cubic} == {"cubic"}
    one = SymmetrySpec.parse(229).draw(20, torch.Generator().manual_seed(0))
    assert {t.space_group for t in one} == {229}


@pytest.mark.parametrize("text", TEMPLATES)
def test_constraint_builds_exactly_symmetric_crystals_and_its_projection_is_idempotent(text):
    template = WyckoffTemplate.parse(text)
    c = SymmetryConstraint([template, template])
    rng = np.random.default_rng(1)
    x = c.init_coords(torch.Generator().manual_seed(2), torch.float64)
    np.testing.assert_allclose(c.snap(x), x, atol=1e-12)  # a symmetric configuration is its own projection
    # a symmetric step stays symmetric: random per-atom drift and noise, projected
    drift, noise = torch.randn_like(x) * 0.05, torch.randn_like(x) * 0.02
    sample, mean = c.coords(x, x + drift + noise, x + drift)
    lat = centring_matrix(template.space_group).T @ _lattice(template.crystal_system, rng)  # its primitive cell
    types = np.repeat(np.arange(len(template.letters)) + 3, template.primitive_multiplicities)
    n = template.primitive_atoms
    for frac in (x, sample, mean):
        assert _is_symmetric(template, lat, frac[:n].numpy(), types)
    # a wrong step is not symmetric until projected, and projecting twice changes nothing
    broken = x + torch.randn_like(x) * 0.05
    assert not _is_symmetric(template, lat, torch.remainder(broken, 1.0)[:n].numpy(), types)
    snapped = c.snap(broken)
    assert _is_symmetric(template, lat, snapped[:n].numpy(), types)
    again = c.snap(snapped)
    assert torch.allclose(torch.remainder(again - snapped + 0.5, 1.0) - 0.5, torch.zeros_like(again), atol=1e-12)
    # spglib finds the template's group at symprec 1e-3 (distinct elements per orbit, a generic lattice)
    found = spglib.get_symmetry_dataset((lat, sample[:n].numpy(), types), symprec=1e-3)
    assert found.number == template.space_group


def test_lattice_and_type_projections():
    templates = [WyckoffTemplate.parse(t) for t in TEMPLATES]
    c = SymmetryConstraint(templates)
    lat = torch.randn(len(templates), 3, 3, dtype=torch.float64)
    lat = lat + lat.transpose(1, 2)
    lat = lat + 6 * torch.eye(3, dtype=torch.float64)  # positive definite, as lattices are
    once = c.lattice(lat)
    assert torch.allclose(c.lattice(once), once)
    for b, t in enumerate(templates):
        if t.centring == 1:  # a primitive lattice's cell is its conventional one: the linear projection
            np.testing.assert_allclose(once[b].numpy(), project_lattice(lat[b].numpy(), t.crystal_system), atol=1e-12)
        np.testing.assert_allclose(once[b].numpy(), once[b].numpy().T, atol=1e-12)  # symmetric polar form
        conv = np.linalg.solve(centring_matrix(t.space_group).T, once[b].numpy())  # its conventional cell
        w, v = np.linalg.eigh(conv @ conv.T)
        polar = (v * np.sqrt(w)) @ v.T
        np.testing.assert_allclose(project_lattice(polar, t.crystal_system), polar, atol=1e-9)  # in its system
    logits = torch.randn(int(c.num_atoms.sum()), 101, dtype=torch.float64)
    pooled = c.pool_logits(logits)
    for o in range(len(c.rep)):
        members = (c.orbit == o).nonzero().squeeze(1)
        assert torch.allclose(pooled[members], logits[members].mean(0).expand(len(members), -1))
    types = torch.randint(1, 90, (int(c.num_atoms.sum()),))
    shared = c.share_types(types)
    assert all(len(set(shared[c.orbit == o].tolist())) == 1 for o in range(len(c.rep)))


def test_subgroup_types_follow_the_international_tables():
    from mattergen_lab.symmetry.groups import subgroup_types

    cubic = subgroup_types(225)  # Fm-3m: P4/mmm via I4/mmm, Pm-3m by a klassengleiche step, P1 at the bottom
    assert {225, 221, 139, 123, 166, 1} <= cubic and 194 not in cubic and 191 not in cubic
    assert subgroup_types(1) == {1} and subgroup_types(2) == {1, 2}
    assert 14 in subgroup_types(62) and 62 not in subgroup_types(14)
