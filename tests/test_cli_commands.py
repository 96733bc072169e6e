"""``mattergen-lab checkpoints`` (what each model conditions on, aligned) and ``mattergen-lab lab`` (JupyterLab on the
notebooks without the build prompt, its URL printed): a real server is started and its page read."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mattergen_lab.cli import main
from mattergen_lab.cli_lab import NOTEBOOKS, lab_command
from mattergen_lab.cli_progress import add_quiet_flags  # noqa: F401 (the flags are checked through main below)

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoints_says_what_each_model_conditions_on_in_aligned_columns(capsys):
    assert main(["checkpoints"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], {line.split()[0]: line for line in lines[1:-1]}
    assert len(rows) == 20  # 9 official + 11 bundled
    assert rows["mgl_mp20_small_csp"].endswith("a composition (CSP: atoms given, e.g. --composition Li2MnO3)")
    assert rows["mgl_mp20_small_space_group"].endswith("space group (1-230)")
    assert rows["mgl_mp20_small"].endswith("nothing (unconditional)")
    assert rows["dft_mag_density_hhi_score"].endswith("magnetic density (μB/Å³) + HHI score")
    # every column starts where the header's does, two spaces after the longest name
    longest = max(map(len, rows))
    assert longest == len("mgl_mp20_small_dft_mag_density_hhi_score")
    for title in ("kind", "local", "conditions on"):
        col = header.index(title)
        assert all(line[col - 2:col] == "  " and line[col] != " " for line in rows.values()), title
    assert header.index("kind") == longest + 2
    assert rows["mgl_mp20_small_csp"][header.index("local"):].startswith("yes")


def test_lab_command_line_opens_the_notebooks_with_the_build_check_off():
    cmd = lab_command(NOTEBOOKS, port=9999, browser=False)
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={NOTEBOOKS}" in cmd and (NOTEBOOKS / "01_quickstart.ipynb").is_file()
    assert "--ServerApp.port=9999" in cmd and "--ServerApp.open_browser=False" in cmd
    assert "--ServerApp.ip=127.0.0.1" in cmd
    settings = next(a for a in cmd if a.startswith("--ServerApp.tornado_settings="))
    from traitlets import Dict

    parsed = Dict().from_string_list([settings.partition("=")[2]])  # as JupyterLab's command line reads it
    assert parsed == {"page_config_data": {"buildCheck": False, "buildAvailable": False}}


def test_lab_refuses_a_missing_folder_in_one_line(tmp_path, capsys):
    assert main(["lab", "--no-browser", "--dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mattergen-lab lab: error: no notebooks folder at") and err.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lab_starts_a_server_prints_its_url_and_serves_a_page_without_the_build_prompt(tmp_path):
    pytest.importorskip("jupyterlab")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    proc = subprocess.Popen([sys.executable, "-m", "mattergen_lab.cli", "lab", "--no-browser", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        deadline, url = time.monotonic() + 240, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            m = re.match(rf"JupyterLab on {re.escape(str(NOTEBOOKS))}: (http://127\.0\.0\.1:{port}/lab\?token=\w+)$",
                         line.strip())
            url = m.group(1) if m else None
        assert url, "no URL line from `mattergen-lab lab`"
        page = urllib.request.urlopen(url, timeout=60).read().decode()
        config = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S)
        assert config and '"buildCheck": false' in config.group(1) and '"buildAvailable": false' in config.group(1)
        tree = urllib.request.urlopen(url.replace("/lab?", "/api/contents?"), timeout=60).read().decode()
        assert "01_quickstart.ipynb" in tree  # the server's root is the notebooks folder
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: the server stops without asking
        assert proc.wait(timeout=180) == 0  # a loaded 2-core box took over 60 s to shut the server down
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # the server, if it outlived us
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
