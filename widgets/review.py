"""Candidate detail view: Crystal Toolkit structure (polyhedra, bonds, unit cell, symmetry), XRD, nearest known.

Crystal Toolkit renders through a Dash server inside the kernel. :class:`CrystalToolkitServer` starts one per
kernel (a werkzeug thread on 127.0.0.1) holding one structure component and its symmetry panel; each candidate is
shown by loading ``?s=<token>`` in an iframe. The iframe's address is the server proxy's ``{base_url}proxy/{port}/``
(Binder, JupyterHub, and a local JupyterLab with ``jupyter-server-proxy``) when the Jupyter server that started
the kernel answers there (asked once, when the Dash server starts), else ``http://127.0.0.1:{port}{that path}``
(a browser on the same machine; the Dash server strips the prefix itself). Where the server cannot start
(Crystal Toolkit not installed, no port, on a hub without a working proxy) the view falls back to nglview and
says why in one line.

``crystal_toolkit`` is imported only when the first structure is shown: importing it patches how every pymatgen
object displays and takes seconds.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import os
import threading
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import nglview as nv
from nglview.adaptor import TextStructure

from mattergen_lab import design

log = logging.getLogger(__name__)


def _jupyter_server() -> dict[str, Any] | None:
    """The running Jupyter server that started this kernel (its ``list_running_servers`` entry), if known."""
    try:
        from jupyter_server.serverapp import list_running_servers

        servers = list(list_running_servers())
    except Exception:  # noqa: BLE001 - no server info (a kernel outside Jupyter, e.g. VS Code)
        return None
    mine = [s for s in servers if s.get("pid") == os.getppid()] or (servers if len(servers) == 1 else [])
    return mine[0] if mine else None


def _proxy_base_url(server: dict[str, Any] | None) -> str:
    """The Jupyter server's base URL as the browser sees it: the hub prefix, our server's base_url, or '/'."""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or (server or {}).get("base_url") or "/"
    return prefix if prefix.endswith("/") else prefix + "/"


def _check_proxy(server: dict[str, Any] | None, port: int) -> tuple[bool | None, str]:
    """Ask the Jupyter server for ``proxy/<port>/_dash-layout``: True (it proxies), False (404: the
    jupyter-server-proxy extension is not loaded there) or None (could not tell), with what was seen."""
    import urllib.error

    if server is None or not str(server.get("url", "")).startswith("http"):
        return None, "no Jupyter server found for this kernel"
    url = f"{server['url'].rstrip('/')}/proxy/{port}/_dash-layout"
    headers = {"Authorization": f"token {server['token']}"} if server.get("token") else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            # (a login page after a redirect is not an answer: the layout names our component)
            if r.status == 200 and b"mgl_structure" in r.read():
                return True, "ok"
            return None, f"{url} did not answer with the Dash layout (HTTP {r.status}, at {r.geturl()})"
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False, (f"the Jupyter server does not serve {url} (enable the extension: "
                           "jupyter server extension enable jupyter_server_proxy, then restart the server)")
        return None, f"HTTP {exc.code} from {url}"
    except OSError as exc:
        return None, f"{url}: {exc}"


class CrystalToolkitServer:
    """One Dash app per kernel with a Crystal Toolkit structure component; :meth:`url` addresses one structure.

    The app's pages live under ``{base_url}proxy/{port}/``. The server strips that prefix itself, so the same
    page works through the proxy and, where the Jupyter server does not proxy, at ``http://127.0.0.1:{port}``.
    """

    _instance: CrystalToolkitServer | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import socket

        import crystal_toolkit.components as ctc  # noqa: F401 - patches pymatgen display (only here, on purpose)
        from crystal_toolkit.components.structure import StructureMoleculeComponent
        from crystal_toolkit.components.symmetry import SymmetryPanel
        from crystal_toolkit.core.plugin import CrystalToolkitPlugin
        from dash import Dash, dcc, html as dhtml
        from dash.dependencies import Input, Output
        from werkzeug.serving import WSGIRequestHandler, make_server

        hub = bool(os.environ.get("JUPYTERHUB_SERVICE_PREFIX"))
        installed = importlib.util.find_spec("jupyter_server_proxy") is not None
        if not installed and hub:
            raise RuntimeError("on JupyterHub/Binder the Dash server needs jupyter-server-proxy (pip install jupyter-server-proxy)")
        jupyter = _jupyter_server()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.prefix = f"{_proxy_base_url(jupyter)}proxy/{self.port}/"
        self.structures: dict[str, Any] = {}
        self.component = StructureMoleculeComponent(id="mgl_structure", show_settings=True, show_controls=True)
        symmetry = SymmetryPanel(links={"default": self.component.id()})
        # the symmetry analysis is laid out directly: its panel_layout() fills its contents only after a click on
        # the panel's title (which also closes an open panel), so an open panel would show just its description
        layout = dhtml.Div([dcc.Location(id="mgl_location"), self.component.layout(size="420px"),
                            dhtml.Div([dhtml.H4(symmetry.title), symmetry.contents_layout()], className="mgl-ctk-symmetry")],
                           className="mgl-ctk-root")
        app = Dash(__name__, requests_pathname_prefix=self.prefix, routes_pathname_prefix="/",
                   plugins=[CrystalToolkitPlugin(layout=layout)])

        @app.callback(Output(self.component.id(), "data"), Input("mgl_location", "search"))
        def _show(search: str | None) -> Any:
            token = (search or "").removeprefix("?s=")
            s = self.structures.get(token)
            return s.as_dict() if s is not None else None

        prefix, flask_app = self.prefix, app.server

        def strip_prefix(environ: dict[str, Any], start_response: Any) -> Any:
            # the proxy strips /proxy/<port>; a browser on 127.0.0.1 sends the prefixed paths the pages name
            path = environ.get("PATH_INFO", "")
            if path.startswith(prefix):
                environ["PATH_INFO"] = "/" + path[len(prefix):]
            return flask_app(environ, start_response)

        class _Quiet(WSGIRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:  # no access log in the notebook
                pass

        self.server = make_server("127.0.0.1", self.port, strip_prefix, threaded=True, request_handler=_Quiet)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="mgl-crystal-toolkit").start()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_dash-layout", timeout=10) as r:
            if r.status != 200:
                raise RuntimeError(f"the Dash server answered {r.status}")
        # through the proxy where the Jupyter server proxies (checked), or could not be asked but has it installed
        works, seen = _check_proxy(jupyter, self.port) if installed else (False, "jupyter-server-proxy is not installed")
        self.proxied = bool(works) or (works is None and installed and (hub or jupyter is not None))
        self.how = ("through jupyter-server-proxy" + ("" if works else f", not checked: {seen}") if self.proxied
                    else f"directly on 127.0.0.1: {seen}")
        if not self.proxied and hub:
            self.server.shutdown()
            raise RuntimeError(f"on JupyterHub/Binder the Dash server is reachable only through jupyter-server-proxy: {seen}")

    @classmethod
    def get(cls) -> CrystalToolkitServer:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def url(self, structure: Any) -> str:
        token = uuid.uuid4().hex[:12]
        self.structures[token] = structure
        base = self.prefix if self.proxied else f"http://127.0.0.1:{self.port}{self.prefix}"
        return f"{base}?s={token}"


def _snapshot_pdb(structure: Any) -> str:
    import numpy as np

    from mattergen_lab.widgets.trajectory import snapshot_to_pdb

    snap = design.CrystalSnapshot(0, 0.0, np.asarray(structure.lattice.matrix), np.asarray(structure.frac_coords),
                                  np.array([site.specie.Z for site in structure]))
    return snapshot_to_pdb(snap)


class ReviewPanel(w.VBox):
    """The detail view of one candidate: structure, XRD against the nearest known material, nearest known tables.

    Args:
        viewer: ``"auto"`` (Crystal Toolkit, else nglview with the reason) or ``"nglview"``.
        on_close: called when the user closes the view.
    """

    def __init__(self, *, viewer: str = "auto", on_close: Callable[[], None] | None = None) -> None:
        if viewer not in ("auto", "nglview"):
            raise ValueError(f"viewer={viewer!r}; expected 'auto' or 'nglview'")
        self.viewer = viewer
        self.title = w.HTML("<b>Candidate review</b>")
        self.structure_box = w.Box(layout=w.Layout(width="460px", min_height="440px"))
        self.structure_box.add_class("mgl-review-structure")
        self.viewer_note = w.HTML()
        self.viewer_note.add_class("mgl-review-viewer-note")
        self.facts = w.HTML()
        self.facts.add_class("mgl-review-facts")
        # an Image widget, not an Output: the review is drawn from a worker thread, and an Output captures only
        # what is displayed while a cell (or a comm message) of the kernel's main thread runs
        self.xrd_image = w.Image(format="png", layout=w.Layout(width="540px", display="none"))
        self.xrd_note = w.HTML()
        self.xrd = w.VBox([self.xrd_image, self.xrd_note], layout=w.Layout(width="560px"))
        self.xrd.add_class("mgl-review-xrd")
        self.known = w.HTML()
        self.known.add_class("mgl-review-known")
        self.close_button = w.Button(description="Close review", icon="times", layout=w.Layout(width="130px"))
        self.close_button.on_click(lambda _: on_close() if on_close else setattr(self.layout, "display", "none"))
        self.review: design.CandidateReview | None = None
        self.mode: str | None = None  # "crystal-toolkit" or "nglview"
        self.iframe_src: str | None = None
        self._ngl: nv.NGLWidget | None = None
        super().__init__([
            w.HBox([self.title, self.close_button]),
            w.HBox([w.VBox([self.structure_box, self.viewer_note]), w.VBox([self.facts, self.xrd])]),
            self.known,
        ])
        self.add_class("mgl-review")
        self.layout.display = "none"

    def show_loading(self, candidate_id: str) -> None:
        self.layout.display = None
        self.title.value = f"<b>Candidate review: {html.escape(candidate_id)}</b> <i>computing XRD and nearest known materials…</i>"

    def show_error(self, candidate_id: str, message: str) -> None:
        self.layout.display = None
        self.title.value = (f"<b>Candidate review: {html.escape(candidate_id)}</b> "
                            f"<span style='color:#c0392b'>{html.escape(message)}</span>")

    def show(self, review: design.CandidateReview, structure: Any) -> None:
        """Draw ``review``; ``structure`` is the one it describes (relaxed when evaluated)."""
        self.review = review
        self.layout.display = None
        self.title.value = f"<b>Candidate review: {html.escape(review.id)} {html.escape(review.formula)}</b>"
        self._show_structure(structure)
        self.facts.value = _facts_html(review)
        self.known.value = _known_html(review)
        png = _xrd_png(review)
        if png:
            self.xrd_image.value, self.xrd_image.layout.display = png, None
            self.xrd_note.value = f"<small>{html.escape(review.xrd_note or '')}</small>"
        else:
            self.xrd_image.value, self.xrd_image.layout.display = b"", "none"
            self.xrd_note.value = f"<i>No XRD: {html.escape(review.xrd_note or '')}</i>"

    def _show_structure(self, structure: Any) -> None:
        reason = "nglview chosen (viewer='nglview')"
        if self.viewer == "auto":
            try:
                server = CrystalToolkitServer.get()
                self.iframe_src = server.url(structure)
                frame = w.HTML(f"<iframe class='mgl-ctk-frame' src='{html.escape(self.iframe_src)}' width='450' "
                               "height='600' style='border:1px solid #ddd'></iframe>")
                self.structure_box.children = [frame]
                self.mode = "crystal-toolkit"
                how = server.how
                self.viewer_note.value = f"<small>Crystal Toolkit (Dash server in this kernel, {html.escape(how)})</small>"
                return
            except Exception as exc:  # noqa: BLE001 - any failure to start means the fallback, with its reason
                log.warning("Crystal Toolkit unavailable: %s", exc)
                reason = f"Crystal Toolkit could not start ({type(exc).__name__}: {exc})"
        self.mode, self.iframe_src = "nglview", None
        self._ngl = nv.NGLWidget(width="440px", height="420px")  # a fresh view per candidate
        self._ngl.add_class("mgl-review-ngl")
        self._ngl.add_component(TextStructure(_snapshot_pdb(structure), ext="pdb"), default_representation=False)
        self._ngl.add_representation("ball+stick", aspectRatio=2.5)
        self._ngl.add_representation("unitcell")
        self.structure_box.children = [self._ngl]
        self.viewer_note.value = f"<small>nglview: {html.escape(reason)}</small>"


def _xrd_png(review: design.CandidateReview) -> bytes | None:
    from mattergen_lab.design.review_report import xrd_png

    return xrd_png(review)


def _facts_html(r: design.CandidateReview) -> str:
    oxi = ", ".join(f"{el} {v:+g}" for el, v in r.oxidation_states.items()) if r.oxidation_states else \
        f"– <small>({html.escape(r.oxidation_note)})</small>"
    dens = f"{r.density:.3f} g/cm³ generated" + (f", {r.density_relaxed:.3f} relaxed" if r.density_relaxed else "")
    sg = f"{html.escape(r.space_group_symbol or '')} ({r.space_group})" if r.space_group else "–"
    novelty = html.escape(r.nearest.note) if r.nearest else "no known-materials reference"
    return (f"<table><tr><th align=left>space group</th><td>{sg}</td></tr><tr><th align=left>density</th><td>{dens}</td></tr>"
            f"<tr><th align=left>oxidation states</th><td>{oxi}</td></tr>"
            f"<tr><th align=left>structure shown</th><td>{html.escape(r.structure_source)}</td></tr></table>"
            f"<p class='mgl-review-novelty'><b>Novelty:</b> {novelty}</p>")


def _known_html(r: design.CandidateReview) -> str:
    from mattergen_lab.design.review_report import known_table_html

    if r.nearest is None:
        return ""
    return ("<b>Nearest known by structure</b>" + known_table_html(r.nearest.by_structure, structure=True)
            + "<b>Nearest known by composition</b>" + known_table_html(r.nearest.by_composition, structure=False))


class ReviewController:
    """The app's side of the review: a worker thread and the panel; the reviews themselves (cached, with the relaxed
    structures from evaluations and the known materials) are the session's (:meth:`mattergen_lab.design.DesignSession.review`).
    """

    def __init__(self, session: design.DesignSession, *, viewer: str = "auto") -> None:
        self.session = session
        self.panel = ReviewPanel(viewer=viewer, on_close=self.close)
        self.shown: str | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def is_open(self) -> bool:
        return self.panel.layout.display != "none"

    @property
    def relaxed(self) -> dict[str, Any]:
        return self.session.relaxed

    @property
    def reviews(self) -> dict[str, design.CandidateReview]:
        return self.session.reviews

    def review(self, candidate_id: str) -> design.CandidateReview:
        """The (cached) review of one candidate; ``ValueError`` names an id not in the session."""
        return self.session.review(candidate_id)

    def open(self, candidate_id: str, wait: bool = False) -> None:
        """Show ``candidate_id`` in the review panel (computed on a worker thread unless ``wait``)."""
        self.session.candidate(candidate_id)  # ValueError names an id not in the session
        self.shown, self.error = candidate_id, None
        self.panel.show_loading(candidate_id)

        def work() -> None:
            try:
                review = self.review(candidate_id)
                if self.shown == candidate_id:  # the user may have moved on meanwhile
                    structure = self.relaxed.get(candidate_id) or self.session.candidate(candidate_id).structure
                    self.panel.show(review, structure)
            except Exception as exc:  # noqa: BLE001 - shown in the panel, never raised into the notebook
                log.exception("review of %s failed", candidate_id)
                self.error = exc
                self.panel.show_error(candidate_id, f"{type(exc).__name__}: {exc}")

        if wait:
            work()
            return
        self._thread = threading.Thread(target=work, daemon=True, name="mgl-review")
        self._thread.start()

    def follow(self, candidate_id: str) -> None:
        """Switch an open review to the newly selected candidate."""
        if self.is_open and candidate_id != self.shown:
            self.open(candidate_id)

    def wait(self, timeout: float | None = None) -> bool:
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def close(self) -> None:
        self.shown = None
        self.panel.layout.display = "none"
