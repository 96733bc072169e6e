"""Measurements of a rendered JupyterLab page for the browser tests (``tests/test_browser.py``).

How much of a canvas a drawing fills (from a screenshot of the element), where plotly put a figure's mode bar and
title, and what the notebook printed outside its widgets: under its cells, and in JupyterLab's log console, where
the output of widget callbacks and of the threads they start (the app's Generate worker) goes. Each returns plain
numbers or strings for the test to assert on and to show in its failure messages.
"""

from __future__ import annotations

import io

import numpy as np

#: A pixel belongs to the drawing when one of its channels differs from the background by more than this.
BACKGROUND_TOLERANCE = 24


def drawn_extent(png: bytes, tolerance: int = BACKGROUND_TOLERANCE) -> dict[str, float]:
    """Where an element's screenshot differs from its background (the median colour of its four corners).

    Returns the image ``width`` and ``height`` (px), the ``left``/``right``/``top``/``bottom`` of the drawn pixels,
    their ``width_fraction`` and ``height_fraction`` of the image, and ``drawn_fraction``, the share of pixels
    drawn. Stray pixels do not count: the span runs between the 1st and 99th percentile of the drawn columns
    (rows). An image without a drawn pixel gives zeros.
    """
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)  # (h, w, 3)
    h, w = rgb.shape[:2]
    background = np.median(np.stack([rgb[0, 0], rgb[0, -1], rgb[-1, 0], rgb[-1, -1]]), axis=0)
    drawn = np.abs(rgb - background).max(axis=2) > tolerance
    out = {"width": float(w), "height": float(h), "drawn_fraction": float(drawn.mean())}
    ys, xs = np.nonzero(drawn)
    if not len(xs):
        return {**out, **dict.fromkeys(("left", "right", "top", "bottom", "width_fraction", "height_fraction"), 0.0)}
    left, right = np.percentile(xs, [1, 99])
    top, bottom = np.percentile(ys, [1, 99])
    return {**out, "left": float(left), "right": float(right), "top": float(top), "bottom": float(bottom),
            "width_fraction": float((right - left) / w), "height_fraction": float((bottom - top) / h)}


# the page rectangles of a plotly figure's parts: mode bar, title, plot area (the drag layer), annotations
JS_PLOTLY_PARTS = """(sel) => {
  const root = document.querySelector(sel);
  const rect = (e) => { const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; };
  const one = (q) => { const e = root && root.querySelector(q); return e ? rect(e) : null; };
  return {
    modebar: one('.modebar'), title: one('.gtitle'), plot: one('.nsewdrag'),
    annotations: root ? [...root.querySelectorAll('.annotation')].map(a => a.textContent) : [],
    modebar_buttons: root ? [...root.querySelectorAll('.modebar-btn')].map(b => b.getAttribute('data-title')) : [],
  };
}"""


def plotly_parts(page, selector: str) -> dict:
    """The mode bar's, title's and plot area's page rectangles (``None`` when absent), the annotation texts and
    the mode bar buttons' titles of the plotly figure at ``selector``."""
    return page.evaluate(JS_PLOTLY_PARTS, selector)


def overlap_px(a: dict | None, b: dict | None) -> float:
    """Area (px²) shared by two page rectangles; 0 when either is missing."""
    if not a or not b:
        return 0.0
    dx = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    dy = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    return max(dx, 0.0) * max(dy, 0.0)


# text of every notebook output that is not a widget view: streams (stdout, stderr, warnings) and reprs
JS_PRINTED = """() => [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]
  .filter(e => e.getAttribute('data-mime-type') !== 'application/vnd.jupyter.widget-view+json'
               && !e.querySelector('.jupyter-widgets, .widget-box, .lm-Widget.jupyter-widgets'))
  .map(e => e.innerText)"""


def printed_outputs(page) -> list[str]:
    """What the notebook's cells printed outside their widgets (one string per output)."""
    return page.evaluate(JS_PRINTED)


def log_console_text(page) -> str:
    """The text of JupyterLab's log console for the open notebook (opened in the main area; no messages: "")."""
    page.evaluate("() => window.jupyterapp.commands.execute('logconsole:open')")
    panel = page.locator(".jp-LogConsolePanel").first
    panel.wait_for(state="attached", timeout=15_000)
    return panel.inner_text()
