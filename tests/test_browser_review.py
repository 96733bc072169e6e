"""The candidate detail view in a real browser (issue #18): Crystal Toolkit through jupyter-server-proxy.

Same set-up as :mod:`tests.test_browser` (its JupyterLab server, Chromium and page helpers): a notebook builds
:class:`mattergen_lab.widgets.DesignApp` on the random ``tiny`` checkpoint and adds three known crystals as
candidates (a random model's cells are too large for a powder pattern, so no generation here), with a small
known-materials set, so the review has an XRD pattern and a nearest known material to show. The server runs in
Binder's layout: under a user prefix (``/user/mgl-test/``, also in ``JUPYTERHUB_SERVICE_PREFIX``), where only the
proxy can reach the kernel's Dash server from a remote browser. Through the page:

* the JupyterLab server the test launches has ``jupyter-server-proxy`` enabled: the kernel asked it for
  ``/proxy/<port>/_dash-layout`` (the view says "through jupyter-server-proxy", not "not checked"), and the
  test's own ``GET`` there answers with the kernel's Dash layout;
* a click on the first row's *review* button opens the detail view; its Crystal Toolkit iframe points at
  ``/user/mgl-test/proxy/<port>/?s=<token>`` (the server proxy, as on Binder and JupyterHub), the Dash app in it loads, the
  Crystal Toolkit scene draws a WebGL canvas that is not blank, and the symmetry panel shows the candidate's
  space group (so the structure reached the scene);
* the XRD plot (an image) and the nearest-known tables (the known rock salt first) are in the page;
* a test button then makes the Crystal Toolkit server fail to start and opens the second candidate: the
  view falls back to nglview (its canvas is drawn) and shows the reason in one line.

It writes ``tests/artifacts/review_app.png`` (and ``docs/review_app.png`` with ``MATTERGEN_LAB_UPDATE_SCREENSHOT=1``)
and ``review_scene.png``; on failure ``review_failure.png/.log``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import textwrap
import time
import urllib.request
from pathlib import Path

from test_browser import (  # noqa: F401 - chromium and tiny_checkpoint are fixtures
    ARTIFACTS,
    REPO,
    LabServer,
    _alive,
    _assert_healthy,
    _save_screenshot,
    chromium,
    chromium_page,
    open_and_run,
    tiny_checkpoint,
    wait_echo,
    write_notebook,
)

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REVIEW_S = 180  # Crystal Toolkit's first import (~10 s idle), XRD and the matcher on 2 shared cores
SCENE_S = 90
FAKE_REASON = "no free port (simulated by the test)"
BASE_URL = "/user/mgl-test/"


def review_notebook(checkpoint: Path) -> list[str]:
    setup = f"""\
        import numpy as np
        from pymatgen.core import Lattice, Structure
        from mattergen_lab import design
        from mattergen_lab.widgets import DesignApp

        rocksalt = [[0, 0, 0], [0.5, 0.5, 0.5]]
        def nacl(a):
            return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], rocksalt)
        si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]])
        known = design.KnownMaterials.from_structures(
            [nacl(5.69), Structure(Lattice.cubic(3.3), ["Na", "Cl"], rocksalt), si], ["k-NaCl", "k-NaCl-B2", "k-Si"],
            name="browser test", e_above_hull={{"k-NaCl": 0.0, "k-NaCl-B2": 0.3, "k-Si": 0.0}})
        app = DesignApp(checkpoint={str(checkpoint)!r}, online=False, known=known)
        req = design.DesignRequest(checkpoint={str(checkpoint)!r}, num_samples=3, num_steps=10)
        def candidate(cid, s):
            snap = design.CrystalSnapshot(10, 0.0, np.array(s.lattice.matrix), np.array(s.frac_coords), np.array(s.atomic_numbers))
            return design.Candidate(cid, s, [snap], req, design.candidate_oracles(s))
        app.add_candidates([candidate("1-0", nacl(5.60)), candidate("1-1", si),
                            candidate("1-2", Structure(Lattice.cubic(4.2), ["Li", "F"], rocksalt))])
        app"""
    echo = """\
        import html, json
        import ipywidgets as W
        from mattergen_lab.widgets import review as review_widgets

        echo = W.HTML().add_class('mgl-test-echo')
        def refresh(_=None):
            r, p = app.reviewer, app.reviewer.panel
            echo.value = html.escape(json.dumps({
                'shown': r.shown, 'mode': p.mode, 'src': p.iframe_src, 'review': p.review.id if p.review else None,
                'error': repr(r.error) if r.error else None,
                'port': review_widgets.CrystalToolkitServer._instance.port if review_widgets.CrystalToolkitServer._instance else None}))
        for wid in (app.reviewer.panel.title, app.reviewer.panel.viewer_note):
            wid.observe(refresh, names='value')

        def break_crystal_toolkit(_):
            def fail(cls):
                raise RuntimeError(%r)
            review_widgets.CrystalToolkitServer.get = classmethod(fail)
            app.open_review('1-1')
        breaker = W.Button(description='break Crystal Toolkit').add_class('mgl-test-break-ctk')
        breaker.on_click(break_crystal_toolkit)
        refresh()
        W.VBox([echo, breaker])""" % FAKE_REASON
    return [textwrap.dedent(setup), textwrap.dedent(echo)]


def _distinct_colours(png: bytes) -> int:
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    return len(im.resize((96, 96)).getcolors(maxcolors=96 * 96))


def _frames_text(page) -> str:
    out = []
    for f in page.frames[1:]:
        with contextlib.suppress(Exception):
            out.append(f"-- {f.url}\n{f.locator('body').inner_text(timeout=2000)[:3000]}\n{f.content()[:6000]}")
    return "\n".join(out)


def test_review_in_jupyterlab(chromium, tiny_checkpoint, tmp_path):
    # Binder's layout: the server under a user prefix, which JupyterHub also puts in JUPYTERHUB_SERVICE_PREFIX
    server = LabServer(tmp_path / "lab", base_url=BASE_URL, extra_env={"JUPYTERHUB_SERVICE_PREFIX": BASE_URL})
    timings: dict[str, float] = {}
    console: list[str] = []
    try:
        server.start()
        write_notebook(server.root / "review.ipynb", review_notebook(tiny_checkpoint))
        with chromium_page(chromium) as page:
            try:
                console = page.console_log  # type: ignore[attr-defined]
                _drive_review(page, server, timings)
            except BaseException:
                with contextlib.suppress(Exception):
                    _save_screenshot(page, ARTIFACTS / "review_failure.png", None)
                    (ARTIFACTS / "review_failure.log").write_text(
                        f"timings: {timings}\n== browser console ==\n" + "\n".join(page.console_log[-200:])  # type: ignore[attr-defined]
                        + "\n== iframes ==\n" + _frames_text(page) + "\n== jupyter server ==\n" + server.log_tail(20000))
                raise
    finally:
        server.stop()
    print("review browser test timings (s):", {k: round(v, 1) for k, v in timings.items()})
    print("browser console errors:", *[m for m in console if m.startswith(("error", "pageerror"))][-20:], sep="\n  ")
    survivors = [p for p in server.kernel_pids if _alive(p)]
    assert not survivors, f"processes outlived the server: {survivors}"


def _drive_review(page, server: LabServer, timings: dict[str, float]) -> None:
    t0 = time.monotonic()
    open_and_run(page, server, "review.ipynb")
    page.wait_for_selector(".mgl-design-app", state="visible")
    page.wait_for_selector(".mgl-test-echo", state="attached")
    _assert_healthy(page)
    timings["notebook"] = time.monotonic() - t0
    assert page.locator(".mgl-review").first.is_hidden(), "the review is open before anyone asked for it"

    # 1. the first row's review button opens the detail view in Crystal Toolkit, through the server proxy
    rows = page.locator(".mgl-candidate-table .mgl-candidate-row")
    page.wait_for_function("() => document.querySelectorAll('.mgl-candidate-table .mgl-candidate-row').length === 3")
    assert "NaCl" in rows.first.inner_text()
    t1 = time.monotonic()
    rows.first.locator(".mgl-review-button").click()
    state = wait_echo(page, lambda s: (s["review"] == "1-0" and s["mode"]) or s["error"], "the review of 1-0", timeout_s=REVIEW_S)
    assert state["error"] is None and state["mode"] == "crystal-toolkit", state
    timings["review_opened"] = time.monotonic() - t1
    port = state["port"]
    assert state["src"].startswith(f"{BASE_URL}proxy/{port}/?s="), f"the iframe does not go through the server proxy: {state}"
    note = page.locator(".mgl-review-viewer-note").first.inner_text()
    # the kernel asked the Jupyter server for /proxy/<port>/ and got the Dash layout back (not merely "installed")
    assert note.strip() == "Crystal Toolkit (Dash server in this kernel, through jupyter-server-proxy)", note
    # the JupyterLab server this test launched proxies to the kernel's Dash server (the extension is enabled)
    with urllib.request.urlopen(f"{server.url}/proxy/{port}/_dash-layout", timeout=20) as r:
        assert r.status == 200 and b"mgl_structure" in r.read()

    # 2. the Dash app loads in the iframe and Crystal Toolkit's scene draws a WebGL canvas with the crystal
    frame_el = page.wait_for_selector(".mgl-review iframe.mgl-ctk-frame", state="attached")
    assert frame_el.get_attribute("src") == state["src"]
    frame = frame_el.content_frame()
    assert frame is not None
    frame.wait_for_load_state("load", timeout=60_000)
    assert frame.url.startswith(f"{server.url}/proxy/{port}/"), frame.url
    t2 = time.monotonic()
    frame.wait_for_selector(".mgl-ctk-root", state="attached", timeout=SCENE_S * 1000)
    canvas = frame.wait_for_selector(".mgl-ctk-root canvas", state="visible", timeout=SCENE_S * 1000)
    box = canvas.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 100, f"Crystal Toolkit canvas too small: {box}"
    # the symmetry panel analysed the structure the scene shows (the candidate's data reached the Dash app)
    # (International Number 225, Fm-3m, which Crystal Toolkit writes with a combining overline)
    frame.wait_for_function("() => /International Number\\s*225\\b/.test(document.body.innerText)",
                            timeout=SCENE_S * 1000, polling=500)
    # and the scene is drawn: wait until the canvas is no longer one flat colour (atoms, bonds, cell)
    colours = 0
    deadline = time.monotonic() + SCENE_S
    while time.monotonic() < deadline:
        colours = _distinct_colours(canvas.screenshot())
        if colours >= 8:
            break
        page.wait_for_timeout(500)
    assert colours >= 8, f"the Crystal Toolkit canvas is blank ({colours} colours)"
    timings["scene_drawn"] = time.monotonic() - t2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    canvas.screenshot(path=str(ARTIFACTS / "review_scene.png"))

    # 3. XRD plot against the nearest known material, and the nearest-known tables
    xrd = page.wait_for_selector(".mgl-review-xrd img", state="visible")
    assert page.evaluate("(img) => img.naturalWidth", xrd) > 200, "the XRD image did not load"
    known = page.locator(".mgl-review-known").first
    assert "Nearest known by structure" in known.inner_text() and "Nearest known by composition" in known.inner_text()
    first_row = known.locator("table").first.locator("tr").nth(1).inner_text()
    assert "k-NaCl" in first_row and "k-NaCl-B2" not in first_row, first_row
    facts = page.locator(".mgl-review-facts").first.inner_text()
    assert "Fm-3m" in facts and re.search(r"\d\.\d{3} g/cm³", facts), facts
    _assert_healthy(page)
    _save_screenshot(page, ARTIFACTS / "review_app.png", ".mgl-review")
    if os.environ.get("MATTERGEN_LAB_UPDATE_SCREENSHOT") == "1":  # the README's picture
        shutil.copyfile(ARTIFACTS / "review_app.png", REPO / "docs" / "review_app.png")

    # 4. where Crystal Toolkit cannot start, nglview shows the candidate and the view says why, in one line
    page.locator(".mgl-test-break-ctk").first.click()
    state = wait_echo(page, lambda s: (s["review"] == "1-1" and s["mode"] == "nglview") or s["error"], "the review of 1-1", timeout_s=REVIEW_S)
    assert state["error"] is None and state["mode"] == "nglview" and state["src"] is None, state
    page.wait_for_selector(".mgl-review .mgl-review-ngl canvas", state="attached", timeout=30_000)
    assert not page.locator(".mgl-review iframe.mgl-ctk-frame").count(), "the Crystal Toolkit iframe stayed"
    note_el = page.locator(".mgl-review-viewer-note").first
    note = note_el.inner_text().strip()
    assert "\n" not in note, f"the reason takes more than one line: {note!r}"
    assert note == f"nglview: Crystal Toolkit could not start (RuntimeError: {FAKE_REASON})", note
    _assert_healthy(page)
