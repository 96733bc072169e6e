"""Distribution statistics against MP-20: the numbers that show a chemically drifting model at once."""

import pytest
from pymatgen.core import Lattice, Structure

from mattergen_lab.evaluation.distribution import distribution_stats, distribution_table, mp20_distribution_stats


def test_mp20_looks_like_mp20_and_a_drifting_set_does_not(data_dir):
    ref = mp20_distribution_stats("test", data_dir=data_dir, limit=300)
    assert ref["n"] == 300 and ref["elements_median"] == 3.0
    assert ref["share_above_100_A3"] < 0.01 and ref["share_implausible_density"] == 0.0
    assert ref["smact_valid"] > 0.8 and ref["share_p1"] < 0.1
    assert 15 < ref["volume_per_atom_median"] < 22
    assert sum(ref["elements_histogram"].values()) == pytest.approx(1.0)

    # a 7-element cell at 500 Å³/atom, and rock-salt NaCl
    seven = Structure(Lattice.cubic(15.18), ["Li", "Na", "K", "Rb", "Cs", "Sr", "O"],
                      [[i / 7, (2 * i % 7) / 7, (3 * i % 7) / 7] for i in range(7)])
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    stats = distribution_stats([seven, nacl])
    assert stats["elements_median"] == 4.5 and stats["elements_histogram"]["7"] == 0.5
    assert stats["share_above_100_A3"] == 0.5 and stats["share_implausible_density"] == 0.0  # 500 < 3 x 202
    assert stats["share_p1"] == 0.5 and stats["smact_valid"] == 0.5
    table = distribution_table({"two": stats, "MP-20": ref})
    assert "| median distinct elements | 4.5 | 3 |" in table
    with pytest.raises(ValueError, match="at least one structure"):
        distribution_stats([])
