"""Which checkpoints can serve a set of targets, and why the others cannot."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING



from mattergen_lab.checkpoints import checkpoint_properties
from mattergen_lab.design.requests import property_for

if TYPE_CHECKING:  # pragma: no cover

    pass

log = logging.getLogger(__name__)
# ------------------------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class CheckpointOption:
    """A checkpoint the chooser can offer: usable for the current targets or not, and why."""

    value: str
    label: str
    properties: tuple[str, ...]
    available: bool
    reason: str = ""
    note: str = ""


def hub_reachable(max_age_s: float = 300.0) -> bool:
    """Whether Hugging Face can be reached: :func:`mattergen_lab.checkpoints.hub_reachable`, answered at most
    every ``max_age_s`` (honours ``HF_HUB_OFFLINE``)."""
    from mattergen_lab.checkpoints import hub_reachable as probe

    return probe(timeout=1.5, max_age_s=max_age_s)


def _missing_targets(targets: Sequence[str], props: Sequence[str]) -> str:
    missing = [t for t in targets if property_for(t, props) is None]
    if not missing:
        return ""
    have = ", ".join(props) if props else "nothing (unconditional)"
    return "; ".join(f"{t}: not a conditioning property of this checkpoint" for t in missing) + f" (it conditions on {have})"


def checkpoint_options(
    targets: Sequence[str] = (),
    *,
    paths: Sequence[str | os.PathLike] = (),
    registry_path: str | os.PathLike | None = None,
    online: bool | None = None,
) -> list[CheckpointOption]:
    """Every registry checkpoint plus ``paths``, each marked usable for ``targets`` or not, with the reason.

    A checkpoint is unavailable when a target is not one of its conditioning properties, when its weights
    are not local and there is no internet (official ones), or when a local path cannot be read. A chemical
    system never makes a checkpoint unavailable: any checkpoint applies it as a hard element mask.

    Args:
        online: whether Hugging Face is reachable; ``None`` asks :func:`hub_reachable` (only if needed).
    """
    from mattergen_lab.checkpoints import official_files_cached, registry
    from mattergen_lab.model.io import WEIGHTS_FILE

    out: list[CheckpointOption] = []
    for p in paths:
        value = str(p)
        try:
            props = checkpoint_properties(value)
        except (ValueError, OSError) as exc:
            out.append(CheckpointOption(value, f"{Path(value).name} (local)", (), False, f"cannot read checkpoint: {exc}"))
            continue
        reason = _missing_targets(targets, props)
        out.append(CheckpointOption(value, f"{Path(value).name} (local)", props, not reason, reason))
    for name, rec in registry(registry_path).items():
        try:  # the model's own config where its files are here (a wrong registry entry is named), else the registry's
            props = checkpoint_properties(name, registry_path=registry_path)
        except (ValueError, OSError) as exc:
            out.append(CheckpointOption(name, name, rec.properties, False, f"cannot read checkpoint: {exc}"))
            continue
        reason = _missing_targets(targets, props)
        note = ""
        if not reason and rec.kind == "bundled":
            if rec.path is None or not (rec.path / WEIGHTS_FILE).exists():
                reason = "bundled weights are missing from this checkout"
        elif not reason:
            if not official_files_cached(name):
                if online is None:
                    online = hub_reachable()
                if not online:
                    reason = "official weights not downloaded and no internet"
                else:
                    size = f"{rec.size_bytes / 1e6:.0f} MB" if rec.size_bytes else "the weights"
                    note = f"downloads {size} on first use"
        out.append(CheckpointOption(name, name, props, not reason, reason, note))
    return out
