"""CrystalBatch: conversions, slicing, concatenation, polar lattice, bad input."""

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from mattergen_lab.crystal import CrystalBatch, lattice_to_params, polar_symmetric, warn_if_too_large
from mattergen_lab.structure_io import standardize_structure, structure_from_cif


@pytest.fixture
def structures():
    nacl = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                     [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]])
    tri = Structure(Lattice.from_parameters(3.1, 4.2, 5.3, 81, 97, 104), ["Li", "Fe", "O"], [[0, 0, 0], [.3, .5, .2], [.7, .1, .9]])
    return [nacl, tri]


def test_pymatgen_round_trip_preserves_crystals(structures):
    batch = CrystalBatch.from_structures(structures, dtype=torch.float64)
    assert batch.num_atoms.tolist() == [8, 3] and batch.atom_types.tolist()[:2] == [11, 11]
    for orig, back in zip(structures, batch.to_structures()):
        assert np.allclose(orig.lattice.matrix, back.lattice.matrix)
        assert np.allclose(orig.frac_coords % 1, back.frac_coords)
    for orig, back in zip(structures, batch.to_structures(standard_orientation=True)):
        assert np.allclose(orig.lattice.abc, back.lattice.abc) and np.allclose(orig.lattice.angles, back.lattice.angles)


def test_ase_round_trip(structures):
    batch = CrystalBatch.from_structures(structures, dtype=torch.float64)
    atoms = batch.to_atoms()
    assert atoms[1].get_chemical_symbols() == ["Li", "Fe", "O"]
    again = CrystalBatch.from_atoms(atoms, dtype=torch.float64)
    assert torch.allclose(again.lattice, batch.lattice) and torch.allclose(again.frac_coords, batch.frac_coords)


def test_primitive_niggli_then_polar_lattice(structures):
    prim = standardize_structure(structures[0])
    assert len(prim) == 2  # rock salt: 8-atom conventional cell -> 2-atom primitive
    batch = CrystalBatch.from_structures([prim, structures[1]], dtype=torch.float64).symmetrize_lattice()
    assert torch.allclose(batch.lattice, batch.lattice.transpose(1, 2), atol=1e-12)
    # The polar factor keeps the metric: L Lᵀ is unchanged, so does every distance.
    orig = torch.as_tensor(np.stack([prim.lattice.matrix, structures[1].lattice.matrix]))
    assert torch.allclose(polar_symmetric(orig) @ polar_symmetric(orig).transpose(1, 2), orig @ orig.transpose(1, 2))
    assert np.isclose(batch.to_structures()[0].volume, prim.volume)
    params = lattice_to_params(batch.lattice)
    assert torch.allclose(params[1], torch.tensor([3.1, 4.2, 5.3, 81, 97, 104], dtype=torch.float64), atol=1e-9)


def test_slicing_concatenation_and_properties(structures):
    batch = CrystalBatch.from_structures(
        structures, properties={"dft_band_gap": torch.tensor([5.0, float("nan")]), "chemical_system": ["Cl-Na", "Fe-Li-O"]}
    )
    one = batch[1]
    assert one.num_atoms.tolist() == [3] and one.properties["chemical_system"] == ["Fe-Li-O"]
    flipped = batch[[1, 0]]
    assert flipped.atom_types.tolist() == [3, 26, 8] + [11] * 4 + [17] * 4
    both = CrystalBatch.cat([batch, CrystalBatch.from_structures(structures[:1])])
    assert both.num_atoms.tolist() == [8, 3, 8]
    assert torch.isnan(both.properties["dft_band_gap"][2]) and both.properties["chemical_system"][2] is None
    assert batch[torch.tensor([False, True])].num_atoms.tolist() == [3]
    assert batch.to(torch.float64).frac_coords.dtype == torch.float64 and batch.to(torch.float64).atom_types.dtype == torch.long
    assert torch.equal(CrystalBatch.cat(batch.split()).frac_coords, batch.frac_coords)
    with pytest.raises(IndexError, match="index 5"):
        batch[5]


def test_bad_input_names_the_value(structures):
    with pytest.raises(ValueError, match="could not parse CIF row 7"):
        structure_from_cif("data_x\n_cell_length_a  oops\n", name="row 7")
    with pytest.raises(ValueError, match="num_atoms sums to 5 but there are 3 atoms"):
        CrystalBatch(torch.tensor([1, 1, 1]), torch.zeros(3, 3), torch.eye(3)[None], torch.tensor([5]))
    masked = CrystalBatch(torch.tensor([101]), torch.zeros(1, 3), torch.eye(3)[None], torch.tensor([1]))
    with pytest.raises(ValueError, match="masked"):
        masked.to_structures()
    with pytest.warns(UserWarning, match="num_atoms=24 exceeds the 20 atoms"):
        warn_if_too_large([8, 24])


def test_public_api_imports_lazily():
    import subprocess
    import sys

    code = "import sys, mattergen_lab as m; assert 'pymatgen' not in sys.modules and 'pandas' not in sys.modules; [getattr(m, n) for n in m.__all__]"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
