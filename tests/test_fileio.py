"""``mattergen_lab.fileio``: one writer per output folder (issue 26), and YAML without aliases (``config``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from mattergen_lab.config import load_yaml_without_aliases
from mattergen_lab.fileio import LOCK_FILE, FolderBusyError, FolderLock


def _holder(folder, what="sample"):
    """A child process that holds ``folder``'s lock until killed."""
    code = (f"from mattergen_lab.fileio import FolderLock\nlock = FolderLock({str(folder)!r}, {what!r}).acquire()\n"
            "print('held', flush=True)\nimport time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_process_that_holds_the_folder(tmp_path):
    proc = _holder(tmp_path / "out")
    try:
        with pytest.raises(FolderBusyError, match=rf"out is being written by process {proc.pid} .*\(sample: -c\).*"
                                                  r"give this evaluate another output folder"):
            FolderLock(tmp_path / "out", "evaluate").acquire()
    finally:
        proc.kill()
        proc.wait()
    with FolderLock(tmp_path / "out", "evaluate"):  # its writer was killed: the lock is taken over
        record = json.loads((tmp_path / "out" / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["what"] == "evaluate"
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # released


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": "x", "what": "sample", "command": "c"}))
    with FolderLock(tmp_path, "sample"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_one_process_cannot_hold_a_folder_twice_and_a_file_is_not_a_folder(tmp_path):
    with FolderLock(tmp_path, "sample"):
        with pytest.raises(FolderBusyError, match=f"process {os.getpid()} "):
            FolderLock(tmp_path, "sample").acquire()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        FolderLock(tmp_path / "f", "sample").acquire()


def test_yaml_aliases_are_refused_and_plain_yaml_reads():
    assert load_yaml_without_aliases("a: &x [1, 2]\nb: 3\n") == {"a": [1, 2], "b": 3}
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    with pytest.raises(yaml.YAMLError, match=r"YAML aliases \(\*a\) are not allowed here \(line 2\)"):
        load_yaml_without_aliases(bomb)
