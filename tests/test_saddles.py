"""Minimum or saddle (mattergen_lab.evaluation.saddles): a relaxation after small displacements finds the fall."""

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mattergen_lab.evaluation.saddles import rattled, saddle_check, saddle_summary

pytestmark = pytest.mark.usefixtures("single_thread")


def test_simple_cubic_copper_is_a_saddle_and_fcc_copper_a_minimum():
    from mattergen_lab.evaluation.relax import RelaxConfig, get_relaxer

    relaxer = get_relaxer("chgnet", config=RelaxConfig(max_seconds=3600.0))  # a busy machine must not cap it
    simple = Structure(Lattice.cubic(2.4), ["Cu"], [[0, 0, 0]]).make_supercell([2, 2, 2], in_place=False)
    check = saddle_check(simple, relaxer, seed=0)
    # kept in Pm-3m by its own symmetric forces; displaced, it falls by about 0.46 eV/atom into a close packing
    assert check.group_before == 221 and check.group_after != 221, check
    assert check.de_per_atom < -0.2 and check.at_saddle, check
    fcc = Structure(Lattice.cubic(3.61), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    check = saddle_check(fcc, relaxer, seed=0)
    assert check.group_before == check.group_after == 225, check
    assert abs(check.de_per_atom) < 0.002 and not check.at_saddle, check


def test_rattled_moves_every_site_by_the_amplitude_and_refuses_a_bad_one():
    s = Structure(Lattice.cubic(10.0), ["Cu"] * 200, np.random.default_rng(1).random((200, 3)))
    moved = rattled(s, 0.05, np.random.default_rng(0))
    d = np.array([moved[i].coords - s[i].coords for i in range(len(s))])
    d -= np.round(d / 10.0) * 10.0  # across the cell boundary
    assert abs(d.std() - 0.05) < 0.005 and np.allclose(s.lattice.matrix, moved.lattice.matrix)
    with pytest.raises(ValueError, match="amplitude=0.8 must be in"):
        rattled(s, 0.8, np.random.default_rng(0))


def _row(de, e_hull, before=225, after=225):
    return {"de": de, "e_above_hull": e_hull, "group_before": before, "group_after": after}


def test_saddle_summary_counts_falls_by_stability_and_what_they_would_make_stable():
    rows = [_row(0.0001, 0.05), _row(-0.02, 0.02, 194, 194),  # two stable, one a shallow saddle
            _row(-0.08, 0.15, 139, 1), _row(-0.3, 0.9, 62, 14), _row(-0.004, 0.4), _row(math.nan, 0.3)]
    s = saddle_summary(rows)
    assert (s["n"], s["n_stable"], s["n_unstable"]) == (5, 2, 3)  # the NaN row (not converged) is left out...
    assert s["not_converged"] == 1 and s["largest_fall_mev"] == 300.0  # ...and counted
    assert s["falls_over_10meV_pct"] == 60.0 and s["falls_over_50meV_pct"] == 40.0
    assert s["stable_falls_over_10meV_pct"] == 50.0 and s["unstable_falls_over_10meV_pct"] == pytest.approx(66.7)
    assert s["unstable_made_stable"] == 1  # 0.15 - 0.08 <= 0.1; 0.9 - 0.3 is not
    assert s["fallen_keep_group_pct"] == pytest.approx(33.3) and s["fallen_p1_pct"] == pytest.approx(33.3)
    assert s["median_de_mev"] == -20.0
