"""benchmarks/bench_saddles.py: its table and its refusal (the check and summary: tests/test_saddles.py)."""

import pytest

from benchmark_modules import load_benchmark
from mattergen_lab.evaluation.saddles import saddle_summary

bs = load_benchmark("bench_saddles")


def test_the_markdown_row_carries_the_summary():
    rows = [{"de": d, "e_above_hull": e, "group_before": 225, "group_after": a}
            for d, e, a in [(0.0, 0.05, 225), (-0.02, 0.02, 225), (-0.08, 0.15, 1), (-0.3, 0.9, 14), (-0.004, 0.4, 225)]]
    table = bs.markdown("run", saddle_summary(rows))
    assert "| run | 5 (0) | 60.0 % | 40.0 % | 50.0 % of 2 | 66.7 % of 3 | 1 | 33.3 % / 33.3 % |" in table


def test_the_cli_refuses_a_folder_without_a_quality_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bs.main([str(tmp_path), "--out", str(tmp_path / "o")])
    assert "per_structure.csv does not exist" in capsys.readouterr().err
