"""Issue 12, the cases an audit found uncovered: each mistake is one line at the boundary, before any work.

* ``evaluate``/``train``/``finetune --device tpu`` or ``cuda`` on a CPU box, ``evaluate --out`` on a file,
  ``/dev/null`` or a read-only place, and a ``.zip`` that is not a zip were internal errors (exit 1) or came
  after the reference hull had been loaded (25 s);
* ``sample --num-atoms 5000`` asked for 8 GB (exit 1), a batch of 100,000 crystals for ~130 GB: both are now
  refused with the cap's name (``MAX_ATOMS_PER_CRYSTAL``, ``MAX_ATOMS_PER_BATCH``);
* a 500-atom cell in ``evaluate`` is refused before the force field sees it, and ``--max-atoms`` overrides;
* resuming ``evaluate`` with a changed structure under the same id is refused, and a torn ``results.jsonl``
  line is neither glued to the next record nor counted;
* the ASE relaxer works on the Niggli-reduced cell of a 160°/160 Å cell.

CLI cases run in-process through :func:`mattergen_lab.cli.main` (fast); the force field and the hull loader are
replaced by stubs that fail the test if a case gets that far.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.core import Lattice, Structure

from mattergen_lab import cli
from mattergen_lab.evaluation import relax as relax_module
from mattergen_lab.evaluation.evaluate import evaluate_structures
from mattergen_lab.evaluation.relax import NO_CORRECTION, RelaxConfig, Relaxer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NACL = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


class FlatCalculator(Calculator):
    """Zero forces and stress, energy -3.4 eV/atom: every relaxation converges at once. Records the cells seen."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[np.ndarray] = []

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.cells.append(atoms.cell.cellpar())
        self.results = {"energy": -3.4 * len(atoms), "forces": np.zeros((len(atoms), 3)), "stress": np.zeros(6)}


def stub_relaxer(config: RelaxConfig | None = None) -> Relaxer:
    return Relaxer("stub", FlatCalculator(), NO_CORRECTION, "x", config=config or RelaxConfig())


@pytest.fixture
def ref(tmp_path) -> Path:
    path = tmp_path / "ref.csv"
    path.write_text("composition,energy_per_atom\nNa,-1.3\nCl,-1.8\nNaCl,-3.4\n")
    return path


@pytest.fixture
def nacl_cif(tmp_path) -> Path:
    path = tmp_path / "nacl.cif"
    path.write_text(NACL.to(fmt="cif"))
    return path


@pytest.fixture
def no_work(monkeypatch):
    """A case that reaches the force field or the reference hull fails (exit 1: an 'internal error')."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the mistake was named")

    monkeypatch.setattr(relax_module, "get_relaxer", refuse)
    monkeypatch.setattr("mattergen_lab.evaluation.evaluate.load_reference", refuse)
    monkeypatch.setattr("mattergen_lab.data.load_mp20", refuse)


def read_only_place(tmp_path: Path) -> Path | None:
    """A folder path that cannot be created or written: a chmod-ed folder, or /sys for root (who ignores modes)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked / "out"
    return Path("/sys/mattergen-lab-test") if Path("/sys").is_dir() else None


def one_line_error(capsys, argv: list[str]) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err, err
    return err


@pytest.mark.parametrize("case, message", [
    ("evaluate_tpu", "device='tpu' is not a torch device"),
    ("evaluate_cuda", "device='cuda"),
    ("evaluate_out_file", "exists and is not a folder"),
    ("evaluate_out_dev_null", "--out='/dev/null' exists and is not a folder"),
    ("evaluate_out_read_only", "cannot be written"),
    ("evaluate_not_a_zip", "is not a readable zip archive"),
    ("evaluate_max_atoms_0", "max_atoms=0 must be an integer >= 1"),
    ("train_tpu", "device='tpu' is not a torch device"),
    ("finetune_cuda", "device='cuda"),
    ("sample_out_read_only", "cannot be created ("),  # the output lock is taken first (issue 26)
    ("sample_bad_official_yaml", "is not valid YAML at line 2"),
    ("sample_meta_device", "device='meta' is not one this program runs on"),
    ("sample_5000_atoms", "num_atoms=5000 is more than MAX_ATOMS_PER_CRYSTAL=200"),
    ("sample_batch_of_100000", "batch_size=100000 x 20 atoms = 2,000,000 atoms in one batch is more than "
                               "MAX_ATOMS_PER_BATCH=20,000; use batch_size <= 1000"),
])
def test_cli_mistakes_are_named_before_any_work(case, message, tmp_path, nacl_cif, no_work, capsys):
    import torch

    cuda = "cuda" if not torch.cuda.is_available() else "cuda:99"
    out = str(tmp_path / "out")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "fake.zip").write_text("this is not a zip archive")
    read_only = read_only_place(tmp_path)
    (tmp_path / "official" / "checkpoints").mkdir(parents=True)
    (tmp_path / "official" / "checkpoints" / "last.ckpt").write_bytes(b"never read")
    (tmp_path / "official" / "config.yaml").write_text("a: [1, 2\n  b: {\n")
    if "read_only" in case and read_only is None:
        pytest.skip("no read-only place on this machine")
    evaluate = ["evaluate", "--structures", str(nacl_cif), "--out", out, "--relaxer", "chgnet"]
    argv = {
        "evaluate_tpu": evaluate + ["--device", "tpu"],
        "evaluate_cuda": evaluate + ["--device", cuda],
        "evaluate_out_file": evaluate[:3] + ["--out", str(tmp_path / "a_file")],
        "evaluate_out_dev_null": evaluate[:3] + ["--out", "/dev/null"],
        "evaluate_out_read_only": evaluate[:3] + ["--out", str(read_only)],
        "evaluate_not_a_zip": ["evaluate", "--structures", str(tmp_path / "fake.zip"), "--out", out],
        "evaluate_max_atoms_0": evaluate + ["--max-atoms", "0"],
        "train_tpu": ["train", "--device", "tpu", "--out", out, "--max-steps", "1"],
        "finetune_cuda": ["finetune", "--base", "mgl_mp20_small", "--property", "hhi_score", "--device", cuda, "--out", out],
        "sample_out_read_only": ["sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "1", "--steps", "1",
                                 "--out", str(read_only)],
        "sample_bad_official_yaml": ["sample", "--checkpoint", str(tmp_path / "official"), "--num-samples", "1",
                                     "--out", out],
        "sample_meta_device": ["sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "1", "--device", "meta",
                               "--out", out],
        "sample_5000_atoms": ["sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "1", "--num-atoms", "5000",
                              "--steps", "1", "--out", out],
        "sample_batch_of_100000": ["sample", "--checkpoint", "mgl_mp20_small", "--num-samples", "100000", "--batch-size",
                                   "100000", "--steps", "1", "--out", out],
    }[case]
    assert message in one_line_error(capsys, argv)


def test_evaluate_api_names_a_bad_device_or_out_dir_before_loading_the_hull(tmp_path, no_work):
    with pytest.raises(ValueError, match="device='tpu'"):
        evaluate_structures([NACL], relaxer=stub_relaxer(), device="tpu")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="out_dir=.* exists and is not a folder"):
        evaluate_structures([NACL], relaxer=stub_relaxer(), out_dir=tmp_path / "f")


def test_a_500_atom_cell_is_refused_before_the_force_field_and_max_atoms_overrides(tmp_path, ref, monkeypatch, capsys):
    big = NACL.copy()
    big.make_supercell([4, 4, 4])
    assert len(big) == 512
    (tmp_path / "big.cif").write_text(big.to(fmt="cif"))
    made: list[Relaxer] = []

    def fake_get_relaxer(name, *, device="cpu", load_path=None, config=None):
        made.append(stub_relaxer(config))
        return made[-1]

    monkeypatch.setattr(relax_module, "get_relaxer", fake_get_relaxer)
    base = ["evaluate", "--structures", str(tmp_path / "big.cif"), "--reference", str(ref), "--novelty-reference", "none",
            "--relax-engine", "ase", "--relaxer", "chgnet"]
    assert cli.main(base + ["--out", str(tmp_path / "capped")]) == 0
    row = json.loads((tmp_path / "capped" / "results.jsonl").read_text())
    assert row["relax_status"] == "failed" and "512 atoms is above the 200-atom cap" in row["error"] and "--max-atoms" in row["error"], row
    assert made[0].calculator.cells == []  # the force field never saw it
    assert cli.main(base + ["--out", str(tmp_path / "raised"), "--max-atoms", "600"]) == 0
    row = json.loads((tmp_path / "raised" / "results.jsonl").read_text())
    assert row["relax_status"] == "converged" and len(made[1].calculator.cells) >= 1, row
    capsys.readouterr()


def test_evaluate_refuses_a_changed_structure_and_a_torn_line_is_redone_once(tmp_path, ref):
    moved = NACL.copy()
    moved.translate_sites([0], [0.01, 0, 0])
    kw = dict(reference=ref, novelty_reference=None, relax_engine="ase", out_dir=tmp_path / "e")
    evaluate_structures([NACL, NACL.copy()], ids=["a", "b"], relaxer=stub_relaxer(), **kw)
    with pytest.raises(ValueError, match="the finished result for 'a' belongs to a different structure"):
        evaluate_structures([moved, NACL.copy()], ids=["a", "b"], relaxer=stub_relaxer(), **kw)
    results = tmp_path / "e" / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed in the middle of b's line
    again = stub_relaxer()
    table = evaluate_structures([NACL, NACL.copy()], ids=["a", "b"], relaxer=again, **kw).table
    assert list(table["id"]) == ["a", "b"] and len(again.calculator.cells) >= 1  # b was redone
    lines = results.read_text().splitlines()
    assert len(lines) == 3  # a, the torn half of b, b
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line)["id"])
        except json.JSONDecodeError:
            assert line.startswith('{"') and '}{"' not in line  # the torn half, alone on its line
    assert parsed == ["a", "b"]
    third = stub_relaxer()
    evaluate_structures([NACL, NACL.copy()], ids=["a", "b"], relaxer=third, **kw)
    assert third.calculator.cells == []  # nothing left to redo


def test_the_ase_relaxer_works_on_the_niggli_reduced_cell_of_a_160_degree_cell():
    oblique = Structure(Lattice.from_parameters(4.0, 5.0, 160.0, 100.0, 95.0, 160.0), ["Na", "Cl"],
                        [[0, 0, 0], [0.5, 0.5, 0.5]])
    relaxer = stub_relaxer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = relaxer.relax(oblique)
    assert result.status == "converged", result.message
    a, b, c, alpha, beta, gamma = relaxer.calculator.cells[0]
    reduced = oblique.get_reduced_structure("niggli").lattice
    assert sorted((a, b, c)) == pytest.approx(sorted(reduced.abc), rel=1e-6)
    assert max(a, b, c) < 160 * 0.9 and max(alpha, beta, gamma) < 150  # not the cell it was given
    assert result.structure.volume == pytest.approx(oblique.volume, rel=1e-6)


# ------------------------------------------------------------------- issue 26: bounds and leftovers at the CLI
@pytest.mark.parametrize("argv, message", [
    (["sample", "--steps", "1000000000"], "num_steps=1000000000 is more than MAX_NUM_STEPS=10,000"),
    (["sample", "--sampler", "n_corrector_steps=1000000000"], "n_corrector_steps=1000000000 is more than MAX_CORRECTOR"),
    (["sample", "--seed", str(2**63)], "seed=9223372036854775808 must be an integer from 0 to MAX_SEED=2**63-1"),
    (["sample", "--condition", "hhi_score=1000", "--condition", "hhi_score=2000"],
     "--condition hhi_score is given twice ('1000' and '2000'); give each property once"),
    (["sample", "--elements", "-"], "chemical system '-' names no element; write it like 'Li-Fe-O'"),
    (["sample", "--out", ""], "--out '' is empty; give an output folder"),
    (["evaluate", "--max-atoms", "100000"], "--max-atoms=100000 is more than MAX_RELAX_ATOMS=2,000"),
    (["evaluate", "--out", " "], "--out=' ' is empty; give an output folder"),
    (["campaign", "run", "SPEC", "--out", ""], "out='' is empty; give a campaign folder"),
])
def test_issue_26_cli_mistakes_are_one_line_before_any_work(argv, message, tmp_path, nacl_cif, no_work, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text("checkpoint: mgl_mp20_small\nnum_samples: 1\nevaluate: false\n")
    if argv[0] == "sample":
        argv = ["sample", "--checkpoint", "mgl_mp20_small_hhi_score", "--num-samples", "1", "--steps", "1",
                "--out", "out"] + argv[1:]
    elif argv[0] == "evaluate":
        argv = ["evaluate", "--structures", str(nacl_cif), "--out", "out"] + argv[1:]
    else:
        argv = [str(spec) if a == "SPEC" else a for a in argv]
    assert message in one_line_error(capsys, argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nacl.cif", "spec.yaml"]  # nothing written
