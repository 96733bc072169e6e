"""The design app in a real browser (issue #6): JupyterLab on loopback, driven by headless Chromium.

The test starts its own JupyterLab server on ``127.0.0.1`` (a free port, no token, every Jupyter directory
and ``HOME`` in a temp dir), opens a notebook that builds :class:`mattergen_lab.widgets.DesignApp` on a
randomly initialised ``tiny`` checkpoint that conditions on the band gap, and then, through the page only:

* types the chemistry (``Li-O``), 10 steps and 3 samples into their boxes, switches the band-gap target on
  and moves its slider with the keyboard on the slider handle; a second cell echoes the Python-side values
  of those controls into a widget, so the test checks that the kernel holds what the page shows;
* clicks *Generate* and waits until the run is over (the status reports the candidates; progress at 100 %);
* before the run, both plots are empty frames saying what will appear there and when;
* asserts one table row per candidate showing its formula (the same formulas as ``app.table`` in the
  kernel, all Li-O compounds), no warning printed under a cell or in the log console (where the output of
  the Generate worker goes), the nglview canvas at its size
  with the final crystal filling a real share of it (measured on a screenshot of the canvas), the hull plot
  with the MP-20 reference markers (outside CI without the data: its "unavailable" note) and the Pareto plot
  saying it waits for Evaluate, then with one marker per candidate (after picking volume per atom on its x
  axis), each plot's mode bar clear of its title and plot area, and that no widget is stuck at "Loading
  widget..." and no cell raised.

It writes ``tests/artifacts/design_app.png`` (and ``docs/design_app.png`` with
``MATTERGEN_LAB_UPDATE_SCREENSHOT=1``). Chromium is Debian's (``/usr/bin/chromium``, or
``$MATTERGEN_LAB_CHROMIUM``); Playwright never downloads a browser. Without Chromium or Playwright the test
skips, except under ``MATTERGEN_LAB_CI=1`` where that is a failure. Every process it starts (the server,
its kernels, the browser) is stopped by PID in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from must_run import must_run, skip_or_fail
from page_checks import drawn_extent, log_console_text, overlap_px, plotly_parts, printed_outputs

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "design_app.png"
DOCS_SCREENSHOT = REPO / "docs" / "design_app.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    # software WebGL for nglview in headless mode (recent Chromium wants the opt-in for SwiftShader)
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]
VIEWPORT = {"width": 1440, "height": 2000}

PROPERTY = "dft_band_gap"  # the tiny checkpoint conditions on it, so its slider is a usable target
CHEMSYS = "Li-O"  # a hard element mask: every candidate must be a Li-O compound
STEPS = 200 if os.environ.get("MATTERGEN_LAB_UPDATE_SCREENSHOT") == "1" else 10  # the README picture uses the recommended count
NUM_SAMPLES = 3
SLIDER_KEYS = 25  # ArrowRight presses on the property slider's handle
WATCHED = ("steps", "num-samples", "chemsys", f"toggle-{PROPERTY}", f"slider-{PROPERTY}", "symmetry")
SYMMETRY = "221"  # the symmetric mode, typed into its control: every candidate is cubic (221 or a supergroup)
SERVER_START_S = 90
KERNEL_READY_S = 150  # torch + pymatgen imports on 2 shared cores
GENERATE_S = 150
VIEWER_MIN_PX = 250  # the nglview canvas is 420 x 360 px
CRYSTAL_MIN_FRACTION = 0.3  # the drawn crystal (atoms and cell) spans at least this share of the canvas each way
CRYSTAL_MIN_PIXELS = 0.02  # ... and covers at least this share of its pixels (a 30 px speck covers under 0.5 %)
# the viewer's resize grip lies over the canvas's corner: hidden while measuring what the canvas shows
VIEWER_OVERLAYS_HIDDEN = ".mgl-viewer .ui-resizable-handle { visibility: hidden !important; }"


# --------------------------------------------------------------------------------------------- availability
def _unavailable(reason: str):
    """Skip locally; fail under ``MATTERGEN_LAB_CI=1`` (``tests/must_run.py``), where the browser test must run in CI."""
    skip_or_fail(reason)


def _chromium() -> str:
    """Debian's Chromium: ``$MATTERGEN_LAB_CHROMIUM`` if set, else ``/usr/bin/chromium`` or ``chromium`` on PATH."""
    explicit = os.environ.get("MATTERGEN_LAB_CHROMIUM")
    for path in [explicit] if explicit else ["/usr/bin/chromium", shutil.which("chromium")]:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    _unavailable(
        f"no Chromium at {explicit or '/usr/bin/chromium'} (install Debian's: apt-get install -y "
        "--no-install-recommends chromium chromium-driver fonts-liberation; or set MATTERGEN_LAB_CHROMIUM)"
    )


def _require_modules() -> None:
    import importlib.util

    missing = [m for m in ("playwright", "jupyterlab", "ipywidgets", "nglview", "plotly", "anywidget", "nbformat")
               if importlib.util.find_spec(m) is None]
    if missing:
        _unavailable(f"missing Python packages for the browser test: {', '.join(missing)} "
                     "(pip install -c constraints.txt -e '.[dev,ui]')")


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser executable, after checking every Python package the test needs (skip or fail first)."""
    path = _chromium()
    _require_modules()
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised ``tiny`` ScoreModel in our checkpoint format (random weights suit a UI test).

    When refreshing the README's screenshot (``MATTERGEN_LAB_UPDATE_SCREENSHOT=1``) the bundled band-gap adapter
    is used instead, so the picture shows crystals from a trained model.
    """
    import torch

    if os.environ.get("MATTERGEN_LAB_UPDATE_SCREENSHOT") == "1":
        from mattergen_lab.checkpoints import registry

        return registry()[f"mgl_mp20_small_{PROPERTY}"].path

    from mattergen_lab.model.io import save_checkpoint
    from mattergen_lab.model.score_model import ScoreModel

    torch.manual_seed(0)
    model = ScoreModel.from_preset("tiny", condition_on_adapt=(PROPERTY,))
    config = {
        "diffusion": {},
        # small cells keep the 10-step run quick
        "num_atoms_distribution": {"4": 0.4, "6": 0.3, "8": 0.3},
        "note": f"random tiny model conditioned on {PROPERTY}, for tests/test_browser.py",
    }
    return save_checkpoint(tmp_path_factory.mktemp("browser_ckpt") / "tiny_random", model, config)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (kernels run in their own sessions, so a process-group kill
    of the server would miss them)."""
    try:
        import psutil
    except ImportError:  # ipykernel depends on psutil, so this is unusual; the kernels then go with the server
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_pids(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


class LabServer:
    """A JupyterLab server in temp dirs on 127.0.0.1; ``stop()`` ends it, its kernels and its group by PID.

    ``base_url`` (e.g. ``/user/test/``, Binder's layout) prefixes every path; ``url`` includes it.
    ``extra_env`` goes into the server's (and so its kernels') environment.
    """

    def __init__(self, base: Path, base_url: str = "/", extra_env: dict[str, str] | None = None) -> None:
        self.base = base
        self.root = base / "root"
        self.log_path = base / "jupyter.log"
        self.port = _free_port()
        self.base_url = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
        self.url = f"http://127.0.0.1:{self.port}{self.base_url.rstrip('/')}"
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.kernel_pids: set[int] = set()

    def env(self) -> dict[str, str]:
        b = self.base
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
        env.update(
            HOME=str(b / "home"),
            JUPYTER_CONFIG_DIR=str(b / "config"),
            JUPYTER_DATA_DIR=str(b / "data"),  # the venv's share/jupyter (labextensions, kernels) stays on the path
            JUPYTER_RUNTIME_DIR=str(b / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(b / "config" / "lab" / "user-settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(b / "config" / "lab" / "workspaces"),
            IPYTHONDIR=str(b / "ipython"),
            MPLCONFIGDIR=str(b / "mpl"),
            JUPYTER_PLATFORM_DIRS="0",
            PYTHONUNBUFFERED="1",
            HF_HUB_OFFLINE="1",  # the chooser never probes the Hub from this test
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        b = self.base
        for d in ("home", "config", "data", "runtime", "ipython", "mpl", "root", "app_settings"):
            (b / d).mkdir(parents=True, exist_ok=True)
        # No build / news / update dialogs over the screenshot; attach every cell (no windowing) so that
        # widgets below the fold are rendered too.
        page_config = {"buildCheck": False, "buildAvailable": False}
        _write_json(b / "config" / "labconfig" / "page_config.json", page_config)
        _write_json(b / "app_settings" / "page_config.json", page_config)
        _write_json(b / "app_settings" / "overrides.json", {
            "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
            "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
            "@jupyterlab/apputils-extension:themes": {"adaptive-theme": False, "theme": "JupyterLab Light"},
        })
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
            "--ServerApp.port_retries=0", "--ServerApp.token=", "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True", "--LabApp.expose_app_in_browser=True",
            f"--ServerApp.base_url={self.base_url}",
            f"--ServerApp.root_dir={self.root}", f"--LabApp.app_settings_dir={b / 'app_settings'}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env(), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer on {self.url} within {SERVER_START_S} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def remember_kernels(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kernel_pids.update(_descendants(self.proc.pid))

    def stop(self) -> None:
        if self.proc is None:
            return
        pid = self.proc.pid
        self.remember_kernels()
        if self.proc.poll() is None:
            # polite first: the server shuts its kernels down
            with contextlib.suppress(Exception):
                urllib.request.urlopen(urllib.request.Request(f"{self.url}/api/shutdown", method="POST"), timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)  # the server's own process group (start_new_session)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        _stop_pids(sorted(self.kernel_pids))
        self.proc = None


# --------------------------------------------------------------------------------------------- the notebook
def design_app_notebook(checkpoint: Path) -> list[str]:
    """Code cells of the notebook under test.

    The second cell finds the contract's controls *on the Python side* by their CSS class and writes their
    values (and the app's candidate formulas) as JSON into an ``mgl-test-echo`` widget whenever they change,
    so the browser can read back what the kernel received.
    """
    setup = f"""\
        from mattergen_lab.widgets import DesignApp
        app = DesignApp(checkpoint={str(checkpoint)!r}, online=False)
        app"""
    echo = f"""\
        import html, json
        import ipywidgets as W

        def by_class(root, cls):
            seen, todo = set(), [root]
            while todo:
                w = todo.pop()
                if id(w) in seen or not isinstance(w, W.Widget):
                    continue
                seen.add(id(w))
                if cls in getattr(w, '_dom_classes', ()):
                    return w
                kids = getattr(w, 'children', ())
                todo.extend(kids if isinstance(kids, (tuple, list)) else ())
            raise LookupError(cls)

        watched = {{name: by_class(app, 'mgl-' + name) for name in {list(WATCHED)!r}}}
        echo = W.HTML().add_class('mgl-test-echo')

        def refresh(_=None):
            table = getattr(app, 'table', None)
            formulas = [str(f) for f in table['formula']] if table is not None and len(table) else []
            groups = [int(g) if g == g else None for g in table['space_group']] if table is not None and len(table) else []
            state = {{name: w.value for name, w in watched.items()}}
            echo.value = html.escape(json.dumps({{**state, 'formulas': formulas, 'space_groups': groups}}))

        for w in (*watched.values(), by_class(app, 'mgl-status')):
            w.observe(refresh, names='value')
        refresh()
        echo"""
    return [textwrap.dedent(setup), textwrap.dedent(echo)]


def write_notebook(path: Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


# --------------------------------------------------------------------------------------------- page helpers
JS_KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle' && k.connectionStatus === 'connected';
}"""

# every code cell has run (prompt "[n]:"), or one raised (run-all stops there); none is queued or running ("[*]:")
JS_ALL_CELLS_DONE = """() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
  if (!prompts.length || prompts.some(p => p.textContent.includes('*'))) return false;
  const raised = document.querySelector('.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
  return prompts.every(p => /\\[\\d+\\]/.test(p.textContent)) || (!!raised && /Traceback|Error/.test(raised.textContent));
}"""

# the run is over: Generate is enabled again and the status reports the session's candidates (or an error)
JS_RUN_OVER = """() => {
  const status = document.querySelector('.mgl-status');
  const button = document.querySelector('.mgl-generate');
  if (!status || !button) return false;
  const text = status.textContent || '';
  if (status.querySelector('span[style*="color"]')) return 'error: ' + text;
  return !button.disabled && /\\d+\\s+candidates/.test(text) && !/so far/.test(text) ? 'done: ' + text : false;
}"""

WIDGET_FAILURES = ("Loading widget...", "Error displaying widget", "Failed to load model class", "model not found")


def _cell_errors(page) -> list[str]:
    texts = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    return [t for t in texts if "Traceback" in t or re.search(r"^\w*Error\b", t, re.MULTILINE)]


def _assert_healthy(page) -> None:
    """No cell raised, and every widget view rendered (its lab extension was found)."""
    errors = _cell_errors(page)
    assert not errors, "a notebook cell raised:\n" + "\n".join(errors)[-3000:]
    text = page.locator(".jp-Notebook").inner_text()
    for bad in WIDGET_FAILURES:
        assert bad not in text, f"{bad!r} in the notebook: a lab extension (ipywidgets / nglview / anywidget) is missing"


def read_echo(page) -> dict:
    """What the kernel last wrote into the ``mgl-test-echo`` widget (the Python-side values)."""
    return json.loads(page.locator(".mgl-test-echo").first.inner_text())


def wait_echo(page, check, what: str, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    state: dict = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(ValueError):
            state = read_echo(page)
            if check(state):
                return state
        page.wait_for_timeout(200)
    raise AssertionError(f"the kernel never reported {what}; last echo: {state}")


def type_into(page, cls: str, text: str) -> None:
    """Type into a Text / IntText control (``continuous_update=False``: Enter commits the value)."""
    box = page.locator(f".{cls} input").first
    box.click()
    box.fill(text)
    box.press("Enter")


def slider_readout(page, cls: str) -> float:
    return float(page.locator(f".{cls} .widget-readout").first.inner_text().strip())


def press_slider(page, cls: str, key: str, times: int) -> float:
    """Press ``key`` ``times`` on the slider handle (noUiSlider keyboard support); return the readout."""
    page.wait_for_function(
        "(sel) => { const s = document.querySelector(sel); return !!s && !!s.querySelector('.noUi-handle')"
        " && !s.querySelector('[disabled]'); }", arg=f".{cls}", timeout=20_000)
    handle = page.locator(f".{cls} .noUi-handle").first
    handle.focus()
    for _ in range(times):
        handle.press(key)
    return slider_readout(page, cls)


def _save_screenshot(page, path: Path, selector: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    target = page.locator(selector).first if selector else None
    if target is not None and target.count():
        target.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path))


@contextlib.contextmanager
def chromium_page(executable: str):
    """A headless Debian Chromium page (Playwright drives it; it never downloads a browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}\n{getattr(e, 'stack', '')}"))
            page.console_log = console  # type: ignore[attr-defined]
            yield page
        finally:
            browser.close()


def open_and_run(page, server: LabServer, notebook: str) -> None:
    """Open ``notebook`` in JupyterLab, wait for its kernel, run all cells, wait until none shows ``[*]``."""
    page.set_default_timeout(30_000)
    page.goto(f"{server.url}/lab/tree/{notebook}", wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=60_000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-CodeCell", timeout=60_000)
    page.wait_for_function(JS_KERNEL_IDLE, timeout=KERNEL_READY_S * 1000, polling=500)
    with contextlib.suppress(Exception):  # a cleaner screenshot: no file browser
        page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(JS_ALL_CELLS_DONE, timeout=KERNEL_READY_S * 1000, polling=500)
    server.remember_kernels()


# --------------------------------------------------------------------------------------------- the test
def test_design_app_in_jupyterlab(chromium, tiny_checkpoint, tmp_path):
    server = LabServer(tmp_path / "lab")
    try:
        server.start()
        write_notebook(server.root / "design_app.ipynb", design_app_notebook(tiny_checkpoint))
        with chromium_page(chromium) as page:
            try:
                _drive_design_app(page, server)
            except BaseException:
                with contextlib.suppress(Exception):
                    _save_screenshot(page, ARTIFACTS / "design_app_failure.png", None)
                    (ARTIFACTS / "design_app_failure.log").write_text(
                        "== browser console ==\n" + "\n".join(page.console_log[-200:])  # type: ignore[attr-defined]
                        + "\n== jupyter server ==\n" + server.log_tail(20000))
                raise
    finally:
        server.stop()
    survivors = [p for p in server.kernel_pids if _alive(p)]
    assert not survivors, f"processes outlived the server: {survivors}"


def _fills(extent: dict[str, float]) -> bool:
    """The drawing in the viewer spans a real share of the canvas both ways and covers a real share of its pixels."""
    return (min(extent["width_fraction"], extent["height_fraction"]) >= CRYSTAL_MIN_FRACTION
            and extent["drawn_fraction"] >= CRYSTAL_MIN_PIXELS)


def _plot(cls: str) -> str:
    """Selector of a plotly figure: the class sits on the FigureWidget's own element (or on a box around it)."""
    return f":is(.{cls}.js-plotly-plot, .{cls} .js-plotly-plot)"


def _drive_design_app(page, server: LabServer) -> None:
    open_and_run(page, server, "design_app.ipynb")
    page.wait_for_selector(".mgl-design-app", state="visible")
    page.wait_for_selector(".mgl-test-echo", state="attached")
    _assert_healthy(page)
    slider = f"mgl-slider-{PROPERTY}"
    start = read_echo(page)
    assert start[f"toggle-{PROPERTY}"] is False and start["formulas"] == [], start
    # before any run both plots are empty frames that say what will appear there, and when
    for cls, says in (("mgl-hull-plot", "appears after Generate"), ("mgl-pareto-plot", "appears after Generate and Evaluate")):
        page.wait_for_selector(f"{_plot(cls)} .main-svg", state="attached", timeout=30_000)
        notes = plotly_parts(page, _plot(cls))["annotations"]
        assert any(says in t for t in notes), f"{cls} before Generate says {notes}, not {says!r}"

    # 1. settings typed into their boxes; a property target switched on and its slider moved by keyboard
    type_into(page, "mgl-chemsys", CHEMSYS)
    type_into(page, "mgl-steps", str(STEPS))
    type_into(page, "mgl-num-samples", str(NUM_SAMPLES))
    type_into(page, "mgl-symmetry", SYMMETRY)
    page.locator(f".mgl-toggle-{PROPERTY} input[type=checkbox]").first.click()
    before = slider_readout(page, slider)
    after = press_slider(page, slider, "ArrowRight", SLIDER_KEYS)
    assert after > before, f"the {PROPERTY} slider did not move ({before} -> {after})"
    # ... and the kernel holds what the page shows (readout_format .4g: compare to 4 significant digits)
    state = wait_echo(
        page,
        lambda s: s["steps"] == STEPS and s["num-samples"] == NUM_SAMPLES and s[f"toggle-{PROPERTY}"] is True
        and abs(s[f"slider-{PROPERTY}"] - after) <= 5e-4 * max(1.0, abs(after)),
        f"steps={STEPS}, num-samples={NUM_SAMPLES}, {PROPERTY} on at {after}")
    assert state["chemsys"].replace(" ", "") == CHEMSYS and state["symmetry"] == SYMMETRY, state
    assert abs(state[f"slider-{PROPERTY}"] - start[f"slider-{PROPERTY}"]) > 0.01, (start, state)

    # 2. Generate, and wait until the run is over
    page.locator(".mgl-generate").first.click()
    outcome = page.wait_for_function(JS_RUN_OVER, timeout=GENERATE_S * 1000, polling=500).json_value()
    assert str(outcome).startswith("done:"), f"the run failed: {outcome}"
    status = page.locator(".mgl-status").first.inner_text()
    n = int(re.search(r"(\d+)\s+candidates", status).group(1))
    state = wait_echo(page, lambda s: len(s["formulas"]) == n, f"{n} candidate formulas")
    formulas = state["formulas"]
    assert n == NUM_SAMPLES, status
    bar = page.evaluate("() => (document.querySelector('.mgl-progress .progress-bar') || {style: {}}).style.width")
    assert bar == "100%", f"progress bar at {bar!r} after the run"
    assert all(re.fullmatch(r"(?:(?:Li|O)\d*)+", f) for f in formulas), f"outside {CHEMSYS}: {formulas}"
    assert set(state["space_groups"]) <= {221, 225, 229}, f"not cubic 221 or a supergroup: {state['space_groups']}"
    printed = [t for t in printed_outputs(page) if "Warning" in t]  # under the cells; the log console comes last
    assert not printed, "the notebook printed warnings during the run:\n" + "\n".join(printed)[-3000:]

    # 3. the table: one row per candidate, each showing its formula
    rows = page.locator(".mgl-candidate-table .mgl-candidate-row")
    page.wait_for_function(
        "(n) => document.querySelectorAll('.mgl-candidate-table .mgl-candidate-row').length === n", arg=n,
        timeout=30_000)
    texts = rows.all_inner_texts()
    unmatched = list(texts)
    for f in formulas:
        hit = next((t for t in unmatched if re.search(rf"(?<![A-Za-z0-9]){re.escape(f)}(?![a-z0-9])", t)), None)
        assert hit is not None, f"no table row shows {f!r}: {texts}"
        unmatched.remove(hit)

    # 4. the nglview canvas (WebGL in software) at its size, the final crystal re-zoomed to fill it
    page.wait_for_selector(".mgl-viewer canvas", state="attached", timeout=30_000)
    canvas = page.locator(".mgl-viewer canvas").first
    box = canvas.bounding_box()
    assert box and box["width"] >= VIEWER_MIN_PX and box["height"] >= VIEWER_MIN_PX, f"nglview canvas too small: {box}"
    deadline, extent = time.monotonic() + 20, {}
    while time.monotonic() < deadline:  # the camera fit follows the last frame's load
        png = canvas.screenshot(style=VIEWER_OVERLAYS_HIDDEN)
        extent = drawn_extent(png)
        if _fills(extent):
            break
        page.wait_for_timeout(500)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "design_app_viewer.png").write_bytes(png)
    assert _fills(extent), f"the crystal fills too little of the {box['width']:.0f} x {box['height']:.0f} px canvas: {extent}"

    # 5. both plotly figures
    for cls in ("mgl-hull-plot", "mgl-pareto-plot"):
        page.wait_for_selector(f"{_plot(cls)} .main-svg", state="attached", timeout=30_000)
    # not evaluated yet: the Pareto plot's default x axis (E_hull) says it waits for Evaluate
    page.wait_for_function(
        "(sel) => [...document.querySelectorAll(sel + ' .annotation')].some(a => /after Evaluate/.test(a.textContent))",
        arg=_plot("mgl-pareto-plot"), timeout=15_000)
    # Pareto: energy_above_hull needs an evaluation, so put volume per atom on x (a control of the panel)
    x_axis = page.locator(".mgl-pareto-x select")  # or the first dropdown of the Pareto panel
    if not x_axis.count():
        x_axis = page.locator(".mgl-pareto-plot").first.locator("xpath=..").locator("select").first
    x_axis.select_option("volume_per_atom")
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length >= n",
        arg=[f"{_plot('mgl-pareto-plot')} .scatterlayer .point", n], timeout=30_000)
    # hull: the MP-20 reference entries of the Li-O system as markers, or a message saying why there is no
    # hull (no reference data outside CI)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        hull = page.wait_for_function(
            """(sel) => {
          const points = document.querySelectorAll(sel + ' .scatterlayer .point').length;
          const fig = document.querySelector('.mgl-hull-plot');
          const note = ((fig && fig.parentElement && fig.parentElement.textContent) || '').match(/unavailable.*/);
          return points > 0 ? {points} : note ? {note: note[0]} : false;
        }""", arg=_plot("mgl-hull-plot"), timeout=15_000, polling=500).json_value()
    except PlaywrightTimeout:
        traces = page.evaluate(
            "(sel) => (document.querySelector(sel).data || []).map(t => [t.name, t.mode, (t.x || []).length])",
            _plot("mgl-hull-plot"))
        raise AssertionError(f"the hull plot drew no markers; its traces in the browser [name, mode, points]: {traces}") from None
    if "note" in hull:
        assert not must_run(), f"no convex hull in CI: {hull['note']}"
    assert not plotly_parts(page, _plot("mgl-pareto-plot"))["annotations"], "the Pareto plot still shows its placeholder"
    # the mode bars (shown on hover) cover neither the titles nor the plot areas
    for cls in ("mgl-hull-plot", "mgl-pareto-plot"):
        page.locator(_plot(cls)).first.hover()
        parts = plotly_parts(page, _plot(cls))
        assert parts["modebar"] and parts["title"] and len(parts["modebar_buttons"]) >= 4, parts
        assert overlap_px(parts["modebar"], parts["title"]) == 0, f"{cls}: the mode bar covers the title: {parts}"
        assert overlap_px(parts["modebar"], parts["plot"]) == 0, f"{cls}: the mode bar covers the plot: {parts}"
    page.wait_for_timeout(1500)  # let nglview and plotly finish drawing before the screenshot
    _assert_healthy(page)
    _save_screenshot(page, SCREENSHOT, ".mgl-design-app")
    if os.environ.get("MATTERGEN_LAB_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)
    # the output of widget callbacks and their threads (the Generate worker) goes to the log console, not a cell
    log = log_console_text(page)
    assert "Warning" not in log, f"warnings during the run, in the log console:\n{log[-3000:]}"
