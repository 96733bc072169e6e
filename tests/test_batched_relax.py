"""Batched relaxation (torch-sim FIRE, in-flight batching) against the ASE reference path (issue #15)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from must_run import importorskip

importorskip("torch_sim")

from pymatgen.core import Lattice, Structure  # noqa: E402

from mattergen_lab.evaluation.batched_relax import BatchedRelaxer, get_batched_relaxer, resolve_engine  # noqa: E402
from mattergen_lab.evaluation.relax import NO_CORRECTION, RelaxConfig, Relaxer, get_relaxer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def relaxers():
    torch.set_num_threads(2)
    ase = get_relaxer("chgnet", config=RelaxConfig(max_steps=150))
    return ase, get_batched_relaxer(ase)


@pytest.fixture(scope="module")
def rattled(data_dir) -> list[Structure]:
    """Six small MP-20 test crystals (≤ 8 atoms), every atom moved 0.1 Å and the cell strained up to 3 %."""
    from mattergen_lab.data import load_mp20

    ds = load_mp20("test", data_dir=data_dir)
    picks = [i for i in range(len(ds)) if ds.num_atoms[i] <= 8][:6]
    structures = ds.get_batch(picks, dtype=torch.float64).to_structures()
    rng = np.random.default_rng(0)
    for s in structures:
        s.perturb(0.1, seed=int(rng.integers(2**31)))  # pymatgen's perturb is unseeded by default
        s.apply_strain(rng.uniform(-0.03, 0.03, 3).tolist())
    return structures


def test_batched_and_ase_paths_agree_on_rattled_mp20_crystals(relaxers, rattled):
    ase, batched = relaxers
    finished = []
    out = batched.relax_many(rattled, on_result=lambda i, r: finished.append(i))
    ref = ase.relax_many(rattled)
    assert sorted(finished) == list(range(len(rattled)))  # each reported once, as it finished
    assert [r.status for r in out] == [r.status for r in ref]
    converged = [(s, a, b) for s, a, b in zip(rattled, ref, out) if a.status == "converged"]
    assert len(converged) >= 5, [r.status for r in ref]
    for s, a, b in converged:
        assert abs(a.energy - b.energy) / len(s) < 0.01, (s.composition, a.energy, b.energy)
        assert b.max_force < 0.05 and b.steps > 0
        assert len(b.structure) == len(s) and b.structure.composition == s.composition
    # same energy convention as the ASE relaxer: CHGNet's energies are used as they are, never corrected again
    entry = batched.to_entry(out[0].structure, out[0].energy)
    assert batched.correction_scheme == NO_CORRECTION and entry.correction == 0.0
    assert "torch-sim" in batched.protocol()["relax_engine"]


def test_atom_cap_is_a_clear_error_and_the_rest_still_relax(relaxers):
    _, batched = relaxers
    big = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])
    big.make_supercell([5, 6, 10])
    small = Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    big_result, small_result = batched.relax_many([big, small])
    assert len(big) == 300
    assert big_result.status == "failed" and big_result.steps == 0 and not big_result.ok
    assert "300 atoms is above the 200-atom cap" in big_result.message
    assert small_result.ok  # CsCl relaxes next to the refused one
    assert get_relaxer("chgnet").relax(big).status == "failed"  # the ASE path refuses it too



def test_a_gas_like_cell_is_refused_before_the_force_field_in_both_engines(relaxers):
    _, batched = relaxers
    gas = Structure(Lattice.cubic(150.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 1.7e6 Å³/atom
    small = Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    gas_result, small_result = batched.relax_many([gas, small])
    ase_result = get_relaxer("chgnet").relax(gas)
    for r in (gas_result, ase_result):
        assert r.status == "failed" and r.steps == 0 and not r.ok and math.isnan(r.energy)
        assert "1.69e+06 Å³/atom is beyond any physical density" in r.message, r.message
    assert small_result.ok
    # the densest end stays the collapse floor's
    dense = Structure(Lattice.cubic(1.0), ["Na"], [[0, 0, 0]])
    assert get_relaxer("chgnet").relax(dense).status == "exploded"

def test_niggli_reducible_oblique_cell_relaxes(relaxers):
    _, batched = relaxers
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    prim = nacl.get_primitive_structure()
    oblique = prim.copy()
    oblique.make_supercell([[1, 0, 0], [-3, 1, 0], [0, 0, 1]])  # the same crystal, angles far from the reduced ones
    assert max(oblique.lattice.angles) > 150
    plain, sheared = batched.relax_many([prim, oblique])
    assert sheared.status == "converged", sheared.message
    assert abs(plain.energy / len(prim) - sheared.energy / len(oblique)) < 0.01
    assert max(sheared.structure.lattice.angles) < 121  # relaxed in the reduced cell


class _Squeezing(torch.nn.Module):
    """A torch-sim model with positive pressure and no forces: every cell shrinks until the guard stops it."""

    def __init__(self) -> None:
        super().__init__()
        self.device, self.dtype = torch.device("cpu"), torch.float64
        self.compute_stress = self.compute_forces = True
        self.memory_scales_with = "n_atoms"

    def forward(self, state, **kwargs):
        volume = torch.linalg.det(state.row_vector_cell).abs()
        stress = 5.0 * torch.eye(3, dtype=torch.float64).expand(state.n_systems, 3, 3).clone()
        return {"energy": volume, "forces": torch.zeros_like(state.positions), "stress": stress}


def test_collapse_floor_and_volume_guard_stop_a_batched_relaxation():
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    base = dict(name="test", calculator=None, correction_scheme=NO_CORRECTION, version="x", model=_Squeezing())
    floor = BatchedRelaxer(**base, config=RelaxConfig(max_steps=500, max_volume_factor=50))
    r = floor.relax(nacl)
    assert r.status == "exploded" and "below the 3 Å³/atom floor" in r.message and math.isnan(r.energy)
    ratio = BatchedRelaxer(**base, config=RelaxConfig(max_steps=500, max_volume_factor=2))
    r = ratio.relax(nacl)
    assert r.status == "exploded" and "volume changed by a factor" in r.message
    capped = BatchedRelaxer(**base, config=RelaxConfig(max_steps=3))
    r = capped.relax(nacl)
    assert r.status == "max_steps" and r.steps == 3 and r.ok


def test_engine_choice():
    assert resolve_engine("auto", "chgnet") == "torchsim"
    assert resolve_engine("ase", "chgnet") == "ase"
    custom = type("Custom", (Relaxer,), {})("chgnet", None, NO_CORRECTION, "x")
    assert resolve_engine("auto", custom) == "ase"  # a subclass may override relax(): kept on the ASE path
    with pytest.raises(ValueError, match="unknown relax engine 'jax'"):
        resolve_engine("jax")


def test_evaluate_with_the_batched_engine_appends_as_it_goes_and_resumes_after_cancel(relaxers, rattled, data_dir,
                                                                                       tmp_path):
    import json
    import threading

    from mattergen_lab.evaluation import evaluate_structures

    ase, _ = relaxers
    structures, ids = rattled[:3], ["a", "b", "c"]
    cancel = threading.Event()
    kw = dict(ids=ids, relaxer=ase, novelty_reference=None, data_dir=data_dir, out_dir=tmp_path)
    partial = evaluate_structures(structures, relax_engine="torchsim", cancel=cancel,
                                  progress=lambda done, total: cancel.set(), **kw)
    assert 1 <= len(partial.table) < 3 and "torch-sim" in partial.protocol["relax_engine"]
    full = evaluate_structures(structures, relax_engine="torchsim", **kw)
    lines = [json.loads(x)["id"] for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(lines) == ids and list(full.table["id"]) == ids  # nothing finished was redone, order kept
    reference = evaluate_structures(structures, ids=ids, relaxer=ase, relax_engine="ase", novelty_reference=None,
                                    data_dir=data_dir)
    assert reference.protocol["relax_engine"].startswith("ASE")
    assert np.allclose(full.table["energy_above_hull"], reference.table["energy_above_hull"], atol=0.01)
    assert list(full.table["relax_status"]) == list(reference.table["relax_status"])
