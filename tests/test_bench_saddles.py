"""The pure summary of benchmarks/bench_saddles.py (rattled relaxations: minima against saddles)."""

import math

import pytest

from benchmark_modules import load_benchmark

bs = load_benchmark("bench_saddles")


def _row(de, e_hull, before=225, after=225):
    return {"de": de, "e_above_hull": e_hull, "group_before": before, "group_after": after}


def test_saddle_summary_counts_falls_by_stability_and_what_they_would_make_stable():
    rows = [_row(0.0001, 0.05), _row(-0.02, 0.02, 194, 194),  # two stable, one a shallow saddle
            _row(-0.08, 0.15, 139, 1), _row(-0.3, 0.9, 62, 14), _row(-0.004, 0.4), _row(math.nan, 0.3)]
    s = bs.saddle_summary(rows)
    assert (s["n"], s["n_stable"], s["n_unstable"]) == (5, 2, 3)  # the NaN row (a failed relaxation) is left out
    assert s["falls_over_10meV_pct"] == 60.0 and s["falls_over_50meV_pct"] == 40.0
    assert s["stable_falls_over_10meV_pct"] == 50.0 and s["unstable_falls_over_10meV_pct"] == pytest.approx(66.7)
    assert s["unstable_made_stable"] == 1  # 0.15 - 0.08 <= 0.1; 0.9 - 0.3 is not
    assert s["fallen_keep_group_pct"] == pytest.approx(33.3) and s["fallen_p1_pct"] == pytest.approx(33.3)
    assert s["median_de_mev"] == -20.0
    table = bs.markdown("run", s)
    assert "| run | 5 | 60.0 % | 40.0 % | 50.0 % of 2 | 66.7 % of 3 | 1 | 33.3 % / 33.3 % |" in table


def test_the_cli_refuses_a_folder_without_a_quality_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bs.main([str(tmp_path), "--out", str(tmp_path / "o")])
    assert "per_structure.csv does not exist" in capsys.readouterr().err
