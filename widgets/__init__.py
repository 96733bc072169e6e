"""Interactive design panels for mattergen-lab (ipywidgets 8, nglview, plotly).

Installed as ``mattergen_lab.widgets``; the core library never imports this package. In a notebook::

    from mattergen_lab.widgets import DesignApp
    DesignApp(checkpoint="path/or/registry-name")

The panels only build requests, call :mod:`mattergen_lab.design`, and draw the results.
"""

from mattergen_lab.widgets.app import DesignApp
from mattergen_lab.widgets.campaign import CampaignPanel
from mattergen_lab.widgets.candidates import CandidateTable
from mattergen_lab.widgets.plots import HullPlot, ParetoPlot
from mattergen_lab.widgets.review import ReviewController, ReviewPanel
from mattergen_lab.widgets.targets import TargetPanel
from mattergen_lab.widgets.trajectory import TrajectoryPanel, snapshot_to_pdb

__all__ = ["CampaignPanel", "CandidateTable", "DesignApp", "HullPlot", "ParetoPlot", "ReviewController", "ReviewPanel", "TargetPanel", "TrajectoryPanel", "snapshot_to_pdb"]
