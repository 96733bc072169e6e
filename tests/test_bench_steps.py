"""benchmarks/bench_steps.py (issue #17.2, quality vs steps): its pure helpers, and a tiny end-to-end run (the bundled
base model at 3 and 2 steps, the default sampler and the predictor-only variant, N = 2, CHGNet capped at 3 FIRE steps)
that writes its table, samples the same atom counts in every row, resumes without rerunning a task and refuses another
relaxation budget in the same folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_modules import load_benchmark


bs = load_benchmark("bench_steps")


def test_variants_are_parsed_validated_and_named():
    assert bs.parse_variant("n_corrector_steps=0") == {"n_corrector_steps": 0}
    assert bs.parse_variant(" lattice_snr=0.1, coord_snr=0.2 ") == {"coord_snr": 0.2, "lattice_snr": 0.1}
    assert bs.parse_variant("predictor=ode,n_corrector_steps=0") == {"n_corrector_steps": 0, "predictor": "ode"}
    for text, message in [("coord_snr=-1", "sampler.coord_snr=-1"), ("snr=0.2", "unknown sampler key(s) ['snr']"),
                          ("n_corrector_steps", "is not key=value"), ("n_corrector_steps=1", "is the default sampler"),
                          ("predictor=euler", "sampler.predictor='euler'")]:
        with pytest.raises(ValueError) as info:
            bs.parse_variant(text)
        assert message in str(info.value)
    assert bs.variant_label({}) == "default"
    v = {"coord_snr": 0.2, "n_corrector_steps": 0}
    assert bs.variant_label(v) == "coord_snr=0.2,n_corrector_steps=0"
    assert bs.row_folder(Path("o"), v, 100) == Path("o/coord_snr-0.2_n_corrector_steps-0/steps_100")
    assert bs.row_folder(Path("o"), {}, 1000) == Path("o/default/steps_1000")
    with pytest.raises(SystemExit):
        bs.main(["--steps", "100,0"])
    with pytest.raises(SystemExit):
        bs.main(["--variant", "coord_snr=0.2", "--variant", "coord_snr=0.20"])


def test_a_variant_can_run_at_some_of_the_step_counts_only():
    steps = [1000, 100, 50]
    assert bs.parse_variant_steps("predictor=ode", steps) == ({"predictor": "ode"}, [1000, 100, 50])
    assert bs.parse_variant_steps("predictor=ode,n_corrector_steps=0@100,50", steps) == (
        {"n_corrector_steps": 0, "predictor": "ode"}, [100, 50])
    for text, message in [("predictor=ode@200", "step count(s) [200] are not in --steps [1000, 100, 50]"),
                          ("predictor=ode@", "after '@' comes a comma-separated list of step counts"),
                          ("predictor=ode@ten", "after '@' comes"), ("n_corrector_steps=1@100", "is the default sampler")]:
        with pytest.raises(ValueError) as info:
            bs.parse_variant_steps(text, steps)
        assert message in str(info.value)
    with pytest.raises(SystemExit):  # refused by the parser before any row runs
        bs.main(["--steps", "100,50", "--variant", "predictor=ode@400"])


def _row(sampler: dict, steps: int, sun: float, rmsd: float) -> dict:
    metrics = {"structural_validity_pct": 100.0, "compositional_validity_pct": 80.0, "stable_pct": 50.0, "sun_pct": sun,
               "mean_rmsd_angstrom": rmsd, "relaxations": {"converged": 3, "max_steps": 1, "timeout": 0, "exploded": 0, "failed": 0}}
    protocol = {"relaxer": "chgnet", "fmax": 0.05, "max_steps": 200, "max_seconds": 60.0, "stability_threshold": 0.1}
    return bs.row_record(sampler, steps, 4, metrics, {"elements_median": 3.0, "volume_per_atom_median": 18.25},
                         {"task_seconds_sampling": 10.0}, protocol, [4, 5, 6, 7])


def test_the_table_states_the_budget_and_measures_against_the_default_at_most_steps():
    rows = [_row({}, 1000, 20.0, 0.10), _row({}, 100, 18.5, 0.13), _row({"n_corrector_steps": 0}, 100, 21.0, 0.09)]
    assert bs.reference_row(rows) is rows[0]
    table = bs.markdown_table(rows)
    assert "Relaxation budget per row: chgnet, FIRE fmax 0.05 eV/Å, ≤ 200 steps / 60 s per structure" in table
    lines = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(lines) == 3
    assert "| `default` | 100 | 4 | 100.0 % | 80.0 % | 3 | 18.2 | 50.0 % | 18.5 % | -1.5 | 0.130 Å | +0.030 Å | 2.50 |" in lines[1]
    assert lines[2].startswith("| `n_corrector_steps=0` | 100 |") and "| +1.0 |" in lines[2] and "| 3 / 1 / 0 / 0 |" in lines[2]


@pytest.mark.slow
def test_a_tiny_run_writes_its_table_resumes_and_refuses_another_budget(data_dir, tmp_path):
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "steps"
    argv = ["--steps", "3,2", "--variant", "n_corrector_steps=0", "--num-samples", "2", "--batch-size", "2",
            "--eval-batch-size", "2", "--relax-max-steps", "3", "--workers", "1", "--out", str(out)]
    record = bs.main(argv)
    rows = record["rows"]
    assert [(r["sampler"], r["num_steps"]) for r in rows] == [("default", 3), ("default", 2), ("n_corrector_steps=0", 3),
                                                              ("n_corrector_steps=0", 2)]
    assert len({tuple(r["num_atoms"]) for r in rows}) == 1  # the same seed: the same atom counts in every row
    for r in rows:
        assert r["num_samples"] == 2 and r["seconds_per_structure"] > 0 and sum(r["relaxations"].values()) == 2
        assert r["relax_budget"] == "chgnet, FIRE fmax 0.05 eV/Å, ≤ 3 steps / 60 s per structure"
        assert 0 <= r["sun_pct"] <= 100 and r["median_elements"] >= 1
    folder = out / "n_corrector_steps-0" / "steps_2" / "campaign"
    assert json.loads((folder / "campaign.json").read_text())["spec"]["sampler"] == {"n_corrector_steps": 0}
    assert "sampler" not in json.loads((out / "default" / "steps_2" / "campaign" / "campaign.json").read_text())["spec"]
    # the predictor-only rows are other crystals than the default ones at the same steps and seed
    default = (out / "default" / "steps_3" / "campaign" / "generated_crystals.extxyz").read_text()
    assert default != (out / "n_corrector_steps-0" / "steps_3" / "campaign" / "generated_crystals.extxyz").read_text()
    table = (out / "steps.md").read_text()
    assert table.count("| `default` |") == 2 and table.count("| `n_corrector_steps=0` |") == 2
    assert json.loads((out / "steps.json").read_text())["markdown"] == table.rstrip("\n")

    # rerun: every row resumes from its folder and no task runs again
    manifests = {p: p.read_text() for p in out.glob("*/steps_*/campaign/manifest.jsonl")}
    assert len(manifests) == 4
    again = bs.main(argv)
    assert {p: p.read_text() for p in manifests} == manifests
    assert [r["sun_pct"] for r in again["rows"]] == [r["sun_pct"] for r in rows]
    # another relaxation budget in the same folder is refused (the row's campaign holds the budget)
    with pytest.raises(ValueError, match="holds another campaign"):
        bs.main([*argv[:-2], "--relax-max-steps", "4", "--out", str(out)])
