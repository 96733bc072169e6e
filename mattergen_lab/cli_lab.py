"""``mattergen-lab lab``: JupyterLab on the notebooks, without the "Build Recommended" dialog, and its URL printed.

Crystal Toolkit brings Dash's JupyterLab extension, a source extension, so a plain ``jupyter lab`` greets a local user
with a dialog whose default button rebuilds JupyterLab (minutes, and it needs Node.js). Nothing needs building: the
extensions the notebooks use (ipywidgets, nglview, plotly, the server proxy) are prebuilt. So the server is started
with the page settings Binder's ``postBuild`` writes (``buildCheck`` and ``buildAvailable`` off), passed on the
command line rather than written into the user's Jupyter configuration.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
#: The page settings JupyterLab's front end reads (``page_config_data``): no build check, no build button.
PAGE_CONFIG = {"buildCheck": False, "buildAvailable": False}
URL_RE = re.compile(r"https?://(?:127\.0\.0\.1|localhost|\[::1\]|[\w.-]+):\d+/lab\S*")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="open JupyterLab on the notebooks (no build prompt) and print its URL")
    p.add_argument("--dir", default=None, help=f"folder to open (default: the repository's notebooks/, {NOTEBOOKS})")
    p.add_argument("--port", type=int, default=8888, help="port (JupyterLab takes the next free one if it is busy)")
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL; do not open a browser")


def lab_command(folder: str | Path, *, port: int = 8888, ip: str = "127.0.0.1", browser: bool = True) -> list[str]:
    """The ``python -m jupyterlab`` command line that ``mattergen-lab lab`` runs."""
    return [
        sys.executable, "-m", "jupyterlab",
        f"--ServerApp.root_dir={Path(folder).resolve()}",
        f"--ServerApp.ip={ip}",
        f"--ServerApp.port={int(port)}",
        f"--ServerApp.open_browser={browser}",
        f"--ServerApp.tornado_settings={{'page_config_data': {PAGE_CONFIG!r}}}",
    ] + (["--ServerApp.allow_root=True"] if _is_root() else [])  # containers run as root; Jupyter refuses it


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def cmd_lab(args: argparse.Namespace) -> int:
    folder = Path(args.dir) if args.dir else NOTEBOOKS
    if not folder.is_dir():
        raise FileNotFoundError(f"no notebooks folder at {folder}; pass --dir FOLDER (a clone of the repository has "
                                "notebooks/)")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} must be 1-65535")
    if importlib.util.find_spec("jupyterlab") is None:
        raise ValueError('JupyterLab is not installed here; install the app\'s extra: pip install -e ".[ui]"')
    cmd = lab_command(folder, port=args.port, ip=args.ip, browser=not args.no_browser)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1)
    shown = False
    try:
        for line in proc.stderr or ():  # the server's log goes on to stderr; the URL also to stdout, once
            sys.stderr.write(line)
            match = URL_RE.search(line)
            if match and not shown and _listening(match.group(0)):  # logged a moment before it accepts connections
                print(f"JupyterLab on {folder}: {match.group(0)}", flush=True)
                print("  (Ctrl-C stops it)", flush=True)
                shown = True
        return proc.wait()
    except KeyboardInterrupt:  # one Ctrl-C stops the server (JupyterLab alone would ask to confirm)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0


def _listening(url: str, timeout: float = 30.0) -> bool:
    """Whether the server at ``url`` accepts connections within ``timeout`` seconds."""
    parts = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False
