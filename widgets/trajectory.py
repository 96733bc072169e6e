"""Trajectory panel: a live nglview of the crystal being denoised, a scrubber and a gallery of finished samples.

Drawing: each frame is sent to NGL as a small PDB text with a ``CRYST1`` record, so NGL draws the unit cell
(``unitcell`` representation). Atoms still in the diffusion MASK state (Z = 101) are drawn as **grey,
translucent helium** spheres (:data:`mattergen_lab.design.MASK_PLACEHOLDER`; MatterGen never generates He),
so you see them turn into elements as the sampler unmasks them. Live updates replace the structure in place
(NGL ``replaceStructure``), keeping the representations and the orientation; after every frame the camera is
re-centred and re-zoomed on what is drawn (atoms and cell, :data:`FIT_VIEW_JS`), since a denoising cell changes size
by orders of magnitude and a camera fitted to the first, noisy frame shows the final crystal as a speck.
"""

from __future__ import annotations

import html
import math
import threading
from collections.abc import Callable, Sequence

import ipywidgets as w
import nglview as nv
import numpy as np
from nglview.adaptor import TextStructure

from mattergen_lab import design

#: PDB columns hold at most 8 characters per coordinate; larger values are clipped (only a broken model
#: makes such cells).
_PDB_MAX = 9999.999

#: The viewer's size, on the widget's layout as well as NGL's canvas, so the canvas fills its box in the page.
VIEW_WIDTH, VIEW_HEIGHT = "420px", "360px"

#: NGL stage parameters. ``clipDist`` (default 10 Å) keeps the near clipping plane at least that far from the
#: camera, which would cut into a 4 Å cell seen from close enough to fill the view.
VIEW_PARAMETERS = {"clip_dist": 0}

#: Run in the NGL view after a structure is drawn (nglview sends it once the load has finished): when NGL has built
#: the representations, centre the camera on everything drawn (atoms and unit cell: the viewer's bounding box) and
#: set its distance so that the box's bounding sphere, plus 0.5 Å for the balls around the atom centres, just fits
#: the field of view: nothing is cut off in any orientation, and a cubic cell fills about half the view's height
#: whatever its size. NGL's own ``autoView`` backs off by ``clipDist`` more (a 4 Å cell filled a third of the view)
#: and, without that, lets the front of a cube seen face-on overflow the view in perspective.
FIT_VIEW_JS = """this.stage.tasks.onZeroOnce(() => {
  const stage = this.stage, viewer = stage.viewer;
  const radius = 0.5 * viewer.boundingBoxLength + 0.5;
  const halfFov = viewer.perspectiveCamera.fov * Math.PI / 360;
  const narrow = Math.min(1, viewer.width / viewer.height);
  stage.animationControls.zoomMove(stage.getCenter(), -radius / Math.sin(halfFov) / narrow, 0);
});"""
#: The same after the first load, first sizing the canvas to the widget's box (``handleResize``).
FIRST_FIT_VIEW_JS = "this.handleResize(); " + FIT_VIEW_JS


def snapshot_to_pdb(snapshot: design.CrystalSnapshot, placeholder: str = design.MASK_PLACEHOLDER) -> str:
    """PDB text of one snapshot: ``CRYST1`` (a, b, c, α, β, γ) and one ``HETATM`` per atom.

    Coordinates are written in the PDB orientation of the cell (a along x, b in the xy plane), which is what
    NGL assumes when it draws the cell from ``CRYST1``.
    """
    from pymatgen.core.periodic_table import Element

    lat = np.asarray(snapshot.lattice, dtype=float)
    a, b, c = np.linalg.norm(lat, axis=1)
    alpha = math.degrees(math.acos(np.clip(lat[1] @ lat[2] / (b * c), -1, 1)))
    beta = math.degrees(math.acos(np.clip(lat[0] @ lat[2] / (a * c), -1, 1)))
    gamma = math.degrees(math.acos(np.clip(lat[0] @ lat[1] / (a * b), -1, 1)))
    ca, cb, cg = (math.cos(math.radians(x)) for x in (alpha, beta, gamma))
    sg = math.sin(math.radians(gamma))
    cy = c * (ca - cb * cg) / sg
    std = np.array([[a, 0, 0], [b * cg, b * sg, 0], [c * cb, cy, math.sqrt(max(c * c - (c * cb) ** 2 - cy**2, 0.0))]])
    cart = np.clip(np.asarray(snapshot.frac_coords) @ std, -_PDB_MAX, _PDB_MAX)  # (n, 3)
    cell = [min(x, _PDB_MAX) for x in (a, b, c)]
    lines = [f"CRYST1{cell[0]:9.3f}{cell[1]:9.3f}{cell[2]:9.3f}{alpha:7.2f}{beta:7.2f}{gamma:7.2f} P 1           1"]
    for i, (z, xyz) in enumerate(zip(snapshot.display_numbers(placeholder), cart), start=1):
        el = Element.from_Z(int(z)).symbol
        lines.append(
            f"HETATM{i:5d} {el.upper():<4} UNL A   1    {xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00          {el.upper():>2}"
        )
    lines.append("END")
    return "\n".join(lines) + "\n"


class TrajectoryPanel(w.VBox):
    """Live denoising view, trajectory scrubber and gallery.

    ``on_select(candidate_id)`` is called when the user picks a sample in the gallery.
    """

    def __init__(self, on_select: Callable[[str], None] | None = None) -> None:
        self.view = nv.NGLWidget(width=VIEW_WIDTH, height=VIEW_HEIGHT, parameters=VIEW_PARAMETERS,
                                 layout=w.Layout(width=VIEW_WIDTH, height=VIEW_HEIGHT, flex="0 0 auto"))
        self.view.add_class("mgl-viewer")
        self.info = w.HTML("No sample yet. Press Generate.")
        self.info.add_class("mgl-viewer-info")
        self.scrub = w.IntSlider(value=0, min=0, max=0, description="Step", disabled=True, continuous_update=True)
        self.scrub.add_class("mgl-scrub")
        self.gallery = w.ToggleButtons(options=[], value=None, style={"button_width": "auto"})
        self.gallery.add_class("mgl-gallery")
        self._on_select = on_select
        self._lock = threading.Lock()
        self._loaded = False
        self.trajectory: list[design.CrystalSnapshot] = []
        self.live_trajectory: list[design.CrystalSnapshot] = []
        self.frames_shown = 0
        self.shown: design.CrystalSnapshot | None = None
        self.last_pdb = ""
        self._candidates: dict[str, design.Candidate] = {}
        self.scrub.observe(self._on_scrub, "value")
        self.gallery.observe(self._on_gallery, "value")
        super().__init__([
            w.HTML("<b>Denoising</b> <small>(grey translucent He = atom still masked)</small>"),
            self.view, self.info, self.scrub, w.HTML("<b>Gallery</b>"), self.gallery,
        ])
        self.add_class("mgl-trajectory")

    # ------------------------------------------------------------------ drawing
    def show_snapshot(self, snapshot: design.CrystalSnapshot, label: str = "") -> None:
        """Draw one snapshot (first call: load + representations; later: replace in place), then fit the camera to it.

        nglview sends its messages in order and waits for each load to finish, so the fit sees the new structure.
        """
        pdb = snapshot_to_pdb(snapshot)
        with self._lock:
            if not self._loaded:
                self.view.add_component(TextStructure(pdb, ext="pdb"), default_representation=False)
                self.view.add_representation("ball+stick", selection="not _HE", aspectRatio=2.5)
                self.view.add_representation("spacefill", selection="_HE", color="grey", opacity=0.4, radiusScale=0.6)
                self.view.add_representation("unitcell")
                self.view._js(FIRST_FIT_VIEW_JS)  # kept in nglview's message archive: a re-displayed view fits too
                self._loaded = True
            else:
                self.view._remote_call("replaceStructure", target="Widget", args=[{"data": pdb, "ext": "pdb"}], fire_once=True)
                self.view._js(FIT_VIEW_JS, fire_once=True)
            self.shown, self.last_pdb = snapshot, pdb
            self.frames_shown += 1
        masked = f", {snapshot.num_masked} masked" if snapshot.num_masked else ""
        self.info.value = html.escape(f"{label}step {snapshot.step}, t = {snapshot.t:.3f}, {len(snapshot.atomic_numbers)} atoms{masked}")

    def live_frame(self, frame: design.DesignFrame) -> None:
        """Follow the first crystal of the batch being denoised (called from the sampling thread)."""
        if frame.step == 0 and not frame.final:
            self.live_trajectory = []
        snap = frame.snapshots[0]
        self.live_trajectory.append(snap)
        self.scrub.disabled = True
        self.show_snapshot(snap, label=f"live: sample {frame.indices[0]} — ")

    # ------------------------------------------------------------------ gallery and scrubbing
    def set_candidates(self, candidates: Sequence[design.Candidate]) -> None:
        self._candidates = {c.id: c for c in candidates}
        current = self.gallery.value
        self.gallery.options = [(f"{c.id}: {c.oracles.get('formula', c.structure.composition.reduced_formula)}", c.id) for c in candidates]
        if current in self._candidates:
            self.gallery.value = current

    def select(self, candidate_id: str) -> None:
        """Show ``candidate_id``'s whole trajectory on the scrubber, at its last frame."""
        cand = self._candidates[candidate_id]
        self.trajectory = list(cand.trajectory)
        if not self.trajectory:  # a crystal added from elsewhere (a campaign, a parent): itself, as one frame
            s = cand.structure
            self.trajectory = [design.CrystalSnapshot(0, 0.0, np.asarray(s.lattice.matrix), np.asarray(s.frac_coords),
                                                      np.array([site.specie.Z for site in s]))]
        if self.gallery.value != candidate_id:
            self.gallery.value = candidate_id
        self.scrub.disabled = False
        self.scrub.max = max(len(self.trajectory) - 1, 0)
        if self.scrub.value == self.scrub.max:
            self.show_snapshot(self.trajectory[-1], label=f"{candidate_id}: ")
        self.scrub.value = self.scrub.max

    def _on_scrub(self, change: dict) -> None:
        if self.trajectory and not self.scrub.disabled and 0 <= change["new"] < len(self.trajectory):
            cid = self.gallery.value or ""
            self.show_snapshot(self.trajectory[change["new"]], label=f"{cid}: ")

    def _on_gallery(self, change: dict) -> None:
        if change["new"] is None:
            return
        if self._on_select is not None:
            self._on_select(change["new"])
        else:
            self.select(change["new"])
