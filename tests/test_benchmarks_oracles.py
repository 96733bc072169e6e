"""Pure helpers of benchmarks/bench_quality.py and benchmarks/bench_adapters.py (campaign merge, oracles, proxies; the
adapters' measurements live in benchmarks/_adapter_metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark_modules import load_benchmark


bq = load_benchmark("bench_quality")
ba = load_benchmark("bench_adapters")
am = load_benchmark("_adapter_metrics")


def _rocksalt(a: float = 5.64):
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _cscl():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _row(sid: str, structure, *, stable: bool, novel: bool) -> dict:
    comp = structure.composition
    return {
        "id": sid, "formula": comp.reduced_formula, "chemical_system": comp.chemical_system,
        "num_atoms": len(structure), "energy": -10.0, "energy_above_hull": 0.0 if stable else 0.5,
        "stable": stable, "is_novel": novel, "novel_system": False, "rmsd_from_relaxation": 0.1,
        "comp_valid": True, "structure_valid": True, "structure_comp_valid": True, "relax_status": "converged",
        "input_fingerprint": "x",
    }


def test_the_benchmark_is_a_one_arm_campaign_with_its_relaxation_caps():
    import argparse

    from mattergen_lab.campaign import CampaignSpec, plan

    args = argparse.Namespace(checkpoint="mgl_mp20_small", num_samples=10, batch_size=4, seed=3, relaxer="chgnet",
                              eval_batch_size=3, fmax=0.05, relax_max_steps=200, relax_max_seconds=60.0)
    spec = CampaignSpec.from_dict(bq.campaign_spec(args, 200))
    assert len(spec.arms()) == 1 and spec.request(spec.arms()[0]).seed == 3  # the crystals of `sample --seed 3`
    assert spec.evaluate.relax_config().max_steps == 200 and spec.evaluate.relax_config().max_seconds == 60.0
    kinds = [t.kind for t in plan(spec)]
    assert kinds.count("sample") == 3 and kinds.count("evaluate") == 5  # chunks of 4, 4, 2 -> batches 2, 2, 1


def test_the_symmetry_flags_become_the_spec_fields_of_every_arm():
    import argparse

    from mattergen_lab.campaign import CampaignSpec

    args = argparse.Namespace(checkpoint="mgl_mp20_small", num_samples=4, batch_size=4, seed=0, relaxer="chgnet",
                              eval_batch_size=4, fmax=0.05, relax_max_steps=200, relax_max_seconds=60.0,
                              symmetry="225,194", assign="origin", settle=5, symmetry_start=None, element_patterns="on")
    spec = CampaignSpec.from_dict(bq.campaign_spec(args, 200))
    requests = [spec.request(a).symmetry for a in spec.arms()]
    assert [r.space_group for r in requests] == [225, 194]
    assert all(r.assign == "origin" and r.settle == 5 and r.element_patterns for r in requests)
    args.assign = args.settle = args.element_patterns = None  # plain: the axis as written, no fields
    assert bq.campaign_spec(args, 200)["symmetry"] == [225, 194]
    args.element_patterns = "off"  # off is the behaviour before the field existed: left out of the fingerprint
    assert all("element_patterns" not in d for d in bq.campaign_spec(args, 200)["symmetry"])


def test_campaign_table_recomputes_uniqueness_over_all_tasks(tmp_path):
    from mattergen_lab.campaign import CampaignFolder, CampaignSpec
    from mattergen_lab.evaluation import compute_metrics, unique_flags

    nacl, nacl_strained, cscl = _rocksalt(), _rocksalt(5.70), _cscl()
    spec = CampaignSpec.from_dict({"checkpoint": "mgl_mp20_small", "num_samples": 4, "batch_size": 2,
                                   "evaluate": {"batch_size": 2}})
    folder = CampaignFolder(tmp_path / "c")
    folder.prepare(spec)
    # task c0: a0-0 (NaCl), a0-1 (CsCl); task c1: a0-2 (the same NaCl, 1 % larger), a0-3 (no relaxed structure)
    relaxed = {"a0-0": nacl, "a0-1": cscl, "a0-2": nacl_strained, "a0-3": None}
    rows = {"a0-0": _row("a0-0", nacl, stable=True, novel=True), "a0-1": _row("a0-1", cscl, stable=True, novel=False),
            "a0-2": _row("a0-2", nacl_strained, stable=True, novel=True), "a0-3": _row("a0-3", cscl, stable=False, novel=False)}
    for j, ids in enumerate([["a0-0", "a0-1"], ["a0-2", "a0-3"]]):
        folder.write_sample({"key": f"sample/a0/c{j}", "ids": ids, "structures": [(relaxed[i] or cscl).as_dict() for i in ids],
                             "seconds": 1.0, "worker": "test"})
        folder.write_evaluation({"key": f"evaluate/a0/c{j}/b0", "rows": [rows[i] for i in ids],
                                 "relaxed": [relaxed[i].as_dict() if relaxed[i] else None for i in ids],
                                 "protocol": {"relaxer": "chgnet"}, "seconds": 1.0, "worker": "test"})
    assert unique_flags([nacl_strained, None]) == [True, False]  # what task c1 alone would say about a0-2
    table = folder.table()
    assert table["id"].tolist() == ["a0-0", "a0-1", "a0-2", "a0-3"]
    assert table["is_unique"].tolist() == [True, True, False, False]
    assert table["novel_unique_stable"].tolist() == [True, False, False, False]  # S.U.N.
    metrics = compute_metrics(table)
    assert metrics["frac_unique_structures"]["value"] == pytest.approx(0.5)
    assert metrics["frac_novel_unique_stable_structures"]["value"] == pytest.approx(0.25)
    assert metrics["frac_stable_structures"]["value"] == pytest.approx(0.75)
    assert folder.status()["finished"] and folder.status()["evaluated_crystals"] == 4


def test_summary_metrics_and_relax_counts():
    from mattergen_lab.evaluation import compute_metrics

    rows = [_row("gen_0", _rocksalt(), stable=True, novel=True), _row("gen_1", _cscl(), stable=False, novel=True)]
    rows[1]["relax_status"] = "max_steps"
    rows[1]["comp_valid"] = rows[1]["structure_comp_valid"] = False
    from mattergen_lab.evaluation.evaluate import finalize_table

    table = finalize_table(rows, [_rocksalt(), _cscl()])
    s = bq.summary_metrics(compute_metrics(table), table)
    assert s["stable_pct"] == 50.0
    assert s["compositional_validity_pct"] == 50.0
    assert s["structural_validity_pct"] == 100.0
    assert s["unique_pct"] == 100.0
    assert s["sun_pct"] == 50.0
    assert s["mean_rmsd_angstrom"] == pytest.approx(0.1)
    assert s["relaxations"] == {"converged": 1, "max_steps": 1, "timeout": 0, "exploded": 0, "failed": 0}


def test_chemical_system_metrics():
    from pymatgen.core import Lattice, Structure

    lat = Lattice.cubic(4.0)
    li_mn_o = Structure(lat, ["Li", "Mn", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0]])
    mn_o = Structure(lat, ["Mn", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    li_fe_o = Structure(lat, ["Li", "Fe", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0]])
    m = am.chemical_system_metrics([li_mn_o, mn_o, li_fe_o], ["Li", "Mn", "O"])
    assert m["exact_pct"] == pytest.approx(100 / 3)
    assert m["subset_pct"] == pytest.approx(200 / 3)
    assert m["site_fraction_pct"] == pytest.approx(100 * (1 + 1 + 0.75) / 3)
    assert am.contains_any_pct([li_mn_o, mn_o, li_fe_o, _cscl()], am.MAGNETIC_3D) == 75.0
    assert am.contains_any_pct([li_mn_o, _cscl()], am.ANIONS) == 50.0


def test_stats():
    s = am.stats([1.0, 3.0, math.nan, 8.0])
    assert (s["mean"], s["median"], s["n"], s["failed"]) == (4.0, 3.0, 3, 1)
    assert math.isnan(am.stats([math.nan])["mean"])


def test_band_gap_lookup_takes_lowest_formation_energy_polymorph():
    import pandas as pd

    table = pd.DataFrame({
        "material_id": ["mp-a", "mp-b", "mp-c", "mp-d", "mp-e"],
        "formula": ["OMg", "MgO", "Mg2O2", "LiFeO2", "NaCl"],  # MP-20 CSV formulas are in site order
        "formation_energy_per_atom": [-2.5, -3.0, -2.0, -1.5, -2.0],
        "dft_band_gap": [3.0, 4.5, 1.0, 2.1, np.nan],  # a row without a gap is ignored
    })
    lookup = am.band_gap_lookup(table)
    assert lookup == {"MgO": (4.5, "mp-b"), "LiFeO2": (2.1, "mp-d")}


def test_band_gap_lookup_on_mp20(data_dir):
    lookup = am.load_band_gap_lookup(data_dir)
    assert len(lookup) == 37217  # distinct reduced formulas in MP-20 train + val + test
    gap, mid = lookup["MgO"]
    assert (round(gap, 3), mid) == (4.638, "mp-1265")
    gap, mid = lookup["Si"]
    assert (round(gap, 4), mid) == (0.8527, "mp-149")


def test_markdown_table_rows():
    rows = [{"adapter": "a", "target": "hhi_score=1250", "oracle": "exact", "metric": "HHI mean",
             "gamma_0": 3974.2, "gamma_g": 3705.0, "n": (32, 32)},
            {"adapter": "b", "target": "dft_bulk_modulus=200 GPa", "oracle": "ML (CHGNet)", "metric": "mean",
             "gamma_0": math.nan, "gamma_g": 151.234, "n": (5, 7)}]
    lines = am.markdown_table(rows, 2.0).splitlines()
    assert lines[0] == "| adapter | target | oracle | metric | γ=0 | γ=2 | N |"
    assert lines[2] == "| a | hhi_score=1250 | exact | HHI mean | 3974 | 3705 | 32 |"
    assert lines[3] == "| b | dft_bulk_modulus=200 GPa | ML (CHGNet) | mean | – | 151 | 5 / 7 |"
