"""Campaigns: a grid of sampling requests and their evaluation, scheduled as tasks on Ray (layer 8).

``run_campaign(spec, out)`` runs or resumes a campaign into one folder; ``CampaignFolder(out).status()`` and
``.table()`` read one, also while it runs (see ``store.py`` for the layout).
"""

from mattergen_lab.campaign.runner import CampaignResult, run_campaign
from mattergen_lab.campaign.spec import Arm, CampaignSpec, EvaluationSpec
from mattergen_lab.campaign.store import CampaignFolder, plan

__all__ = ["Arm", "CampaignFolder", "CampaignResult", "CampaignSpec", "EvaluationSpec", "plan", "run_campaign"]
