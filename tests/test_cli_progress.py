"""Progress on the command line: bars on a terminal (a real pseudo-terminal), silence in pipes and with ``--quiet``,
resumed runs counted from where they stand, and the library warnings kept out of a user's output."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SAMPLE = ["sample", "--checkpoint", "mgl_mp20_small", "--steps", "4", "--batch-size", "2", "--seed", "3"]


def _in_pty(args: list[str]) -> tuple[int, str]:
    """Run ``mattergen-lab ARGS`` with stdin, stdout and stderr on a pseudo-terminal; return (code, what it showed)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mattergen_lab.cli", *args], stdin=follower, stdout=follower,
                            stderr=follower, env=ENV, cwd=ROOT, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


def test_sample_shows_step_and_crystal_bars_on_a_terminal(tmp_path):
    code, shown = _in_pty([*SAMPLE, "--num-samples", "4", "--out", str(tmp_path / "s")])
    assert code == 0, shown
    # two chunks of 4 denoising steps each: one bar over all 8 steps, one over the 4 crystals, with rate and ETA
    assert re.search(r"denoising: 100%\|[^|]*\| 8/8 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+step/s\]", shown), shown
    assert "crystals : 100%" in shown and "| 4/4 [" in shown
    assert "| 2/4 [" in shown  # the crystal bar moved after the first chunk, not only at the end
    assert "wrote 4 structures" in shown
    assert len(list((tmp_path / "s" / "cifs").glob("gen_*.cif"))) == 4

    # a resumed run that extends the folder counts what is there, and denoises only the new chunk
    code, shown = _in_pty([*SAMPLE, "--num-samples", "6", "--out", str(tmp_path / "s")])
    assert code == 0, shown
    assert "| 4/6 [" in shown and "| 6/6 [" in shown and "| 4/4 [" in shown and "8/8" not in shown


def test_no_bars_in_a_pipe_or_with_quiet(tmp_path):
    piped = subprocess.run([sys.executable, "-m", "mattergen_lab.cli", *SAMPLE, "--num-samples", "2", "--out",
                            str(tmp_path / "p")], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == "" and "wrote 2 structures" in piped.stdout
    code, shown = _in_pty([*SAMPLE, "--num-samples", "2", "--quiet", "--out", str(tmp_path / "q")])
    assert code == 0 and "wrote 2 structures" in shown and "denoising" not in shown and "%|" not in shown, shown


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_training_bar_counts_a_resumed_run_from_its_step(monkeypatch):
    from mattergen_lab.cli_progress import training_callback

    monkeypatch.setattr(sys, "stderr", _Terminal())
    on_step, bar = training_callback(200, "train")
    for step in range(101, 106):
        on_step({"step": step, "train_loss": 1.0 / step})
    on_step({"step": 106, "train_loss": 0.5, "val_loss": 0.75})
    assert (bar.n, bar.initial, bar.total) == (106, 100, 200)
    assert bar.postfix == "loss=0.500, val=0.750"
    bar.close()
    assert "train:  53%|" in sys.stderr.getvalue() and "106/200" in sys.stderr.getvalue()
    quiet_step, quiet_bar = training_callback(200, "train", quiet=True)
    quiet_step({"step": 5, "train_loss": 1.0})
    assert quiet_bar.disable


def test_library_warnings_are_kept_from_users_and_others_are_not():
    from pymatgen.core import Composition, Element

    from mattergen_lab.console import silence_library_warnings

    for element in (Element.Ne, Element.Ar):  # pymatgen caches X per element: another test may have read it already
        element.__dict__.pop("X", None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert Composition("NeO").reduced_formula  # pymatgen: "No Pauling electronegativity for Ne"
        assert any("No Pauling electronegativity" in str(w.message) for w in seen)
        seen.clear()
        silence_library_warnings()
        silence_library_warnings()  # twice: still one filter each
        assert Composition("ArO").reduced_formula
        warnings.warn("Set OLD_ERROR_HANDLING to false and catch the errors directly.", DeprecationWarning)
        warnings.warn("the user's own warning", UserWarning)
        assert [str(w.message) for w in seen] == ["the user's own warning"]
        assert sum("No Pauling" in str(f[1].pattern if f[1] else "") for f in warnings.filters) == 1
