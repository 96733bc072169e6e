"""Issue 12: the CLI fuzzed. Seeded random command lines for ``sample``, ``evaluate`` and ``vary`` (most of them with one to
three bad values) run in-process through :func:`mattergen_lab.cli.main`. Every outcome is classified:

* refused: exit code 2, and the last line of stderr is ``mattergen-lab <command>: error: ...`` (argparse adds its
  usage lines before it; our own errors are that one line alone);
* accepted: exit code 0, and what was written is sane (the CIFs parse, the elements stay inside the mask);
* anything else fails the test with the command line: an exception out of ``main`` (a traceback), exit code 1
  (an internal error), or an accepted command whose result is not sane.

The accepted sampling runs are cheap by construction (at most 2 crystals of at most 2 steps), and evaluate always
gets at least one bad value, so no force field is loaded (a stub refuses if one is).
"""

from __future__ import annotations

import random
import warnings

import pytest
from pymatgen.core import Lattice, Structure

from mattergen_lab import cli
from mattergen_lab.evaluation import relax as relax_module

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SAMPLE_POOLS = {
    "--checkpoint": (["mgl_mp20_small"] * 4 + ["mgl_mp20_small_chemical_system"] * 2,
                     ["nonexistent", "", "mgl_mp20_small_nope", "/dev/null"]),
    "--num-samples": (["1", "2"], ["0", "-1", "1e9", "x", "100001", "1000000000", ""]),
    "--batch-size": (["1", "2"], ["0", "-3", "x", "2.5"]),
    "--steps": (["1", "2"], ["0", "-1", "nan", "x", "1.5"]),
    "--seed": (["0", "7"], ["-1", "x", "1e3"]),
    "--num-atoms": (["3", "4"], ["0", "-2", "5000", "x", "201"]),
    "--guidance": (["0"], ["nan", "inf", "-5", "x", "-inf"]),
    "--elements": (["Li-Fe-O", "Na-Cl", "O"], ["", "Xx", "-", "Li,,Xx", "Og-He"]),
    "--condition": (["chemical_system=Li-Fe-O"], ["space_group=inf", "space_group=P1", "dft_band_gap=-5", "x",
                                                  "=3", "chemical_system=", "hhi_score=1e6", "chemical_system=Xx-O"]),
    "--device": (["cpu"], ["tpu", "cuda:99", "", "3", "meta"]),
}
NUM_CASES = 90


def _sample_case(rng: random.Random, out: str) -> tuple[list[str], dict[str, str]]:
    chosen = {"--checkpoint": rng.choice(SAMPLE_POOLS["--checkpoint"][0]), "--num-samples": "2", "--steps": "2"}
    for flag in rng.sample(sorted(SAMPLE_POOLS), rng.randint(0, 4)):
        good, bad = SAMPLE_POOLS[flag]
        chosen[flag] = rng.choice(bad if rng.random() < 0.6 else good)
    argv = ["sample", "--out", out]
    for flag, value in chosen.items():
        argv += [flag, value]
    return argv, chosen


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = cli.main(argv)
    except SystemExit as exc:  # argparse: a usage error
        rc = exc.code
    except BaseException as exc:  # noqa: BLE001 - a traceback the user would see
        pytest.fail(f"{argv} raised {type(exc).__name__}: {exc}")
    return rc, capsys.readouterr().err


def _assert_refused_or_sane(argv, rc, err, chosen, out) -> str:
    command = argv[0]
    if rc == 2:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert last.startswith(f"mattergen-lab {command}: error: ") and "Traceback" not in err, (argv, err)
        if not last.startswith("mattergen-lab " + command + ": error: argument") and "usage:" not in err:
            assert len(err.strip().splitlines()) == 1, (argv, err)
        return "refused"
    assert rc == 0, f"{argv}: exit code {rc}\n{err[-1500:]}"
    from pathlib import Path

    cifs = sorted(Path(out, "cifs").glob("*.cif"))
    assert len(cifs) == int(chosen["--num-samples"]), (argv, cifs)
    mask = chosen.get("--elements") or (chosen.get("--condition", "").partition("=")[2]
                                         if chosen.get("--condition", "").startswith("chemical_system=") else "")
    for path in cifs:
        s = Structure.from_file(path)
        if mask:
            assert {e.symbol for e in s.composition.elements} <= set(mask.split("-")), (argv, s.composition)
        if "--num-atoms" in chosen:
            assert len(s.get_primitive_structure()) <= int(chosen["--num-atoms"]), (argv, len(s))
    return "accepted"


def test_fuzz_sample_command_lines(tmp_path, capsys):
    rng = random.Random(2012)
    outcomes = {"refused": 0, "accepted": 0}
    for i in range(NUM_CASES):
        out = str(tmp_path / f"run{i}")
        argv, chosen = _sample_case(rng, out)
        rc, err = _run(argv, capsys)
        outcomes[_assert_refused_or_sane(argv, rc, err, chosen, out)] += 1
    print("sample command lines:", outcomes)
    assert outcomes["refused"] >= NUM_CASES // 2 and outcomes["accepted"] >= 5, outcomes


def test_fuzz_evaluate_command_lines(tmp_path, capsys, monkeypatch):
    def no_force_field(*args, **kwargs):
        raise AssertionError("a force field was loaded for a command with a bad value")

    monkeypatch.setattr(relax_module, "get_relaxer", no_force_field)
    monkeypatch.setattr("mattergen_lab.evaluation.evaluate.load_reference", no_force_field)
    good = tmp_path / "nacl.cif"
    good.write_text(Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif"))
    (tmp_path / "not_a.zip").write_text("no")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "nan.extxyz").write_text('1\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
                                         "Cl nan nan nan\n")
    pools = {
        "--structures": (str(good), [str(tmp_path / "not_a.zip"), str(tmp_path / "nope"), str(tmp_path / "empty"),
                                     str(tmp_path / "nan.extxyz"), str(tmp_path / "a_file"), ""]),
        "--out": (str(tmp_path / "out"), [str(tmp_path / "a_file"), "/dev/null", ""]),
        "--relaxer": ("chgnet", ["vasp", ""]),
        "--fmax": ("0.05", ["0", "-1", "nan", "x"]),
        "--max-steps": ("10", ["-1", "x", "1.5"]),
        "--max-seconds": ("10", ["0", "-5", "nan"]),
        "--max-atoms": ("200", ["0", "-1", "x"]),
        "--device": ("cpu", ["tpu", "cuda:99", ""]),
        "--matcher": ("disordered", ["fuzzy"]),
        "--stability-threshold": ("0.1", ["nan", "inf", "x"]),
        "--relax-engine": ("ase", ["gpu"]),
    }
    rng = random.Random(2013)
    for _ in range(40):
        chosen = {flag: good for flag, (good, _) in pools.items()}
        for flag in rng.sample(sorted(pools), rng.randint(1, 3)):  # at least one bad value
            chosen[flag] = rng.choice(pools[flag][1])
        argv = ["evaluate"] + [x for kv in chosen.items() for x in kv]
        rc, err = _run(argv, capsys)
        assert _assert_refused_or_sane(argv, rc, err, chosen, chosen["--out"]) == "refused", argv


def test_fuzz_vary_command_lines(tmp_path, capsys):
    """``vary`` (#28): a bad parent, strength, site selection or substitution is one line, refused before any work;
    an accepted line writes crystals with the parent's atom count, inside the element mask."""
    sto = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                    [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    good_cif, poscar = tmp_path / "sto.cif", tmp_path / "POSCAR"
    sto.to(filename=str(good_cif))
    sto.to(filename=str(poscar), fmt="poscar")
    partial = tmp_path / "partial.cif"
    text = sto.to(fmt="cif")
    row = next(line for line in text.splitlines() if line.strip().startswith("Sr "))
    partial.write_text(text.replace(row, row[:-1] + "0.5"))
    (tmp_path / "junk.cif").write_text("data_x\n_cell_length_a -3\n")
    (tmp_path / "two.extxyz").write_text(2 * ('1\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 '
                                              'pbc="T T T"\nNa 0 0 0\n'))
    pools = {
        "--structure": ([str(good_cif), str(poscar)], [str(partial), str(tmp_path / "junk.cif"), str(tmp_path / "nope"),
                                                       str(tmp_path / "two.extxyz"), str(tmp_path), ""]),
        "--strength": (["0.05", "0.5", "1"], ["0", "-1", "1.5", "nan", "inf", "x"]),
        "--fix-sites": (["O", "0,1", "anions", "2-4"], ["Xe", "99", "", "Sr,Ti,O", "0-99", "x y"]),
        "--substitute": (["Ti=Zr,Hf", "Sr=Ba"], ["Ti=Xe", "Fe=Mn", "Ti", "=", "Ti=Qq", "Ti=Og"]),
        "--elements": (["Sr-Ti-O-Zr-Hf-Ba"], ["Xx", "", "Sr-Ti"]),
        "--steps": (["2", "4"], ["0", "-1", "x"]),
        "--seed": (["0", "3"], ["-1", "x"]),
    }
    rng = random.Random(2028)
    outcomes = {"refused": 0, "accepted": 0}
    for i in range(40):
        out = str(tmp_path / f"vary{i}")
        chosen = {"--structure": str(good_cif), "--num-samples": "2", "--batch-size": "2", "--steps": "2"}
        for flag in rng.sample(sorted(pools), rng.randint(0, 3)):
            good, bad = pools[flag]
            chosen[flag] = rng.choice(bad if rng.random() < 0.6 else good)
        argv = ["vary", "--out", out] + [x for kv in chosen.items() for x in kv]
        rc, err = _run(argv, capsys)
        outcome = _assert_refused_or_sane(argv, rc, err, chosen, out)
        if outcome == "refused" and not err.strip().splitlines()[-1].startswith("mattergen-lab vary: error: argument"):
            from pathlib import Path

            assert not Path(out, "cifs").exists(), (argv, "refused after writing")
        elif outcome == "accepted":
            from pathlib import Path

            for path in sorted(Path(out, "cifs").glob("*.cif")):
                assert len(Structure.from_file(path)) == 5, (argv, path)
        outcomes[outcome] += 1
    print("vary command lines:", outcomes)
    assert outcomes["refused"] >= 15 and outcomes["accepted"] >= 5, outcomes
