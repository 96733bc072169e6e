"""benchmarks/_common.py: one set of flags, one machine record and one way to write JSON for every benchmark, and
every script in benchmarks/ uses them (``--out DIR``, never a file or a flag of another name)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from benchmark_modules import benchmark_names, load_benchmark

common = load_benchmark("_common")

#: flag -> (dest, type) of the shared flags, as add_common_arguments makes them
SHARED = {"--out": ("out", str), "--num-samples": ("num_samples", int), "--batch-size": ("batch_size", int),
          "--steps": ("steps", int), "--threads": ("threads", int), "--device": ("device", str)}
#: (benchmark, flag) -> why its values are parsed differently (same flag, same dest)
OWN_TYPE = {("bench_steps", "--steps"): "a comma-separated list of step counts (the README's --steps 1000,400,200)"}


def test_only_the_flags_asked_for_are_added_with_their_defaults():
    parser = argparse.ArgumentParser()
    common.add_common_arguments(parser, out=common.REQUIRED, batch_size=8, steps=[1000, 200], threads=None,
                                aliases={"batch_size": ("--batch",)}, help={"steps": "step counts"})
    args = parser.parse_args(["--out", "x", "--batch", "4", "--steps", "5", "6"])
    assert vars(args) == {"out": "x", "batch_size": 4, "steps": [5, 6], "threads": None}
    assert parser.parse_args(["--out", "x"]).steps == [1000, 200]
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --out is required here
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--num-samples", "3"])  # not asked for
    assert "step counts (default: 1000 200)" in parser.format_help()
    with pytest.raises(ValueError, match=r"no shared flag \['seed'\]"):
        common.add_common_arguments(argparse.ArgumentParser(), help={"seed": "x"})


def test_results_are_written_to_out_name_json_with_numpy_values(tmp_path):
    record = {"n": np.int64(3), "x": np.float32(0.5), "ok": np.bool_(True), "a": np.arange(2), "path": tmp_path}
    path = common.write_json(tmp_path / "new", "bench", record)
    assert path == tmp_path / "new" / "bench.json"
    assert json.loads(path.read_text()) == {"n": 3, "x": 0.5, "ok": True, "a": [0, 1], "path": str(tmp_path)}
    assert common.read_json(path) == common.to_json(record)
    assert common.read_json(tmp_path / "absent.json") == {}


def test_the_machine_record_and_its_line():
    info = common.machine_info("cpu")
    assert {"machine", "processor", "cpu_count", "python", "torch", "torch_threads", "OMP_NUM_THREADS",
            "load_avg_1min", "device"} <= set(info) and info["device"] == "cpu"
    line = common.machine_line(info)
    assert line.startswith("# ") and f"torch {info['torch']}" in line and line.endswith("device cpu")
    assert "device" not in common.machine_info()


@pytest.mark.parametrize("name", benchmark_names())
def test_every_benchmark_builds_its_parser_with_the_shared_flags(name):
    module = load_benchmark(name)
    parser = module.build_parser()
    flags = {opt: action for action in parser._actions for opt in action.option_strings}
    assert "--out" in flags, f"{name} has no --out DIR"
    assert flags["--out"].metavar == "DIR"
    for flag, (dest, kind) in SHARED.items():
        if flag in flags:
            action = flags[flag]
            assert action.dest == dest, f"{name}: {flag} is not the shared flag"
            assert action.type is kind or (name, flag) in OWN_TYPE, f"{name}: {flag} takes another type"
    assert not {"--json-out", "--out-file", "--output"} & set(flags)


def _run_one_thread(name: str, argv: list[str]) -> None:
    """Run benchmark ``name``'s main with ``--threads 1``, giving torch its thread count back afterwards."""
    import torch

    threads = torch.get_num_threads()
    try:
        load_benchmark(name).main([*argv, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def test_a_smoke_run_writes_its_record_under_out(tmp_path, capsys):
    _run_one_thread("bench_symmetry_step", ["--batch-size", "2", "--steps", "2", "--repeats", "1", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "symmetry_step.json").read_text())
    assert record["benchmark"] == "bench_symmetry_step" and record["steps"] == 2 and record["batch_size"] == 2
    assert record["machine"]["torch_threads"] == 1 and record["s_per_step_plain"] > 0
    assert '"ratio"' in capsys.readouterr().out


def test_the_first_frame_benchmark_times_the_apps_live_view(tmp_path):
    _run_one_thread("bench_first_frame", ["--num-samples", "2", "--steps", "3", "--repeats", "2", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "first_frame.json").read_text())
    presses = record["presses"]
    assert [p["press"] for p in presses] == [1, 2] and all(p["frames"] >= 2 for p in presses)
    assert all(0 < p["first_frame_s"] < p["done_s"] for p in presses)


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, benchmark, argv)`` of every benchmark command line in the README and the ``docs/`` pages (inline
    code; the measurements and their commands live in ``docs/*.md``), in the scripts'
    docstrings (``python benchmarks/...`` lines, ``\\`` continuations joined, ``[--flag]`` as ``--flag``) and in
    ``benchmarks/device/run_sampling.sh``."""
    import re
    import shlex

    from benchmark_modules import BENCHMARKS

    command = re.compile(r"python\s+(?:benchmarks/)?([\w/]+)\.py(.*)", re.S)
    found = []
    root = BENCHMARKS.parent
    for doc in [root / "README.md"] + sorted((root / "docs").glob("*.md")):
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for span in re.findall(r"`([^`]+)`", text):
            m = command.search(span)
            if m and "benchmarks/" in span:
                found.append((str(doc.relative_to(root)), m.group(1), shlex.split(m.group(2).replace("\n", " "))))
    for path in sorted(BENCHMARKS.rglob("*.py")) + sorted(BENCHMARKS.rglob("*.sh")):
        text = path.read_text().replace("\\\\\n", " ").replace("\\\n", " ").replace("$B", "benchmarks/device/bench_sampling_gpu.py")
        for line in text.splitlines():
            m = command.search(line)
            if m and line.lstrip().startswith(("python ", "OMP_NUM_THREADS", "timeout ")):
                args = m.group(2).split("  #")[0].split(">")[0].replace("[", "").replace("]", "")
                found.append((path.name, m.group(1).removeprefix("benchmarks/"), shlex.split(args)))
    return found


def test_every_documented_command_line_parses():
    commands = _documented_commands()
    assert len(commands) >= 30 and {"bench_quality", "bench_csp", "device/bench_sampling_gpu"} <= {c[1] for c in commands}
    documented = {c[1] for c in commands if c[0].endswith(".md")}  # the measured figures' commands, in README or docs/
    assert {"bench_quality", "bench_steps", "bench_adapters", "bench_relax", "bench_sampling"} <= documented, documented
    for where, name, argv in commands:
        try:
            load_benchmark(name).build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: python benchmarks/{name}.py {' '.join(argv)} does not parse")


def test_the_old_spellings_still_parse():
    """Command lines of earlier runs: ``--batch`` where ``--batch-size`` is the shared name now."""
    assert load_benchmark("profile_sampling").build_parser().parse_args(["--batch", "4"]).batch_size == 4
    assert load_benchmark("device/profile_step").build_parser().parse_args(["--batch", "4"]).batch_size == 4
    assert load_benchmark("device/bench_sampling_gpu").build_parser().parse_args(["--batch", "2"]).batch_size == 2
