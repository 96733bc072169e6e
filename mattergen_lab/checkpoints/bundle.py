"""Bundling: a trained folder of ours copied into ``checkpoints/<name>/`` with a model card, and registered.

:func:`bundle_checkpoint` is the one writer of ``checkpoints.yaml`` (whose reader is
:func:`mattergen_lab.checkpoints.catalog.parse_registry`, which checks the new text before it is written).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mattergen_lab.checkpoints.catalog import REGISTRY_FILE, CheckpointRecord, parse_registry, sha256_of
from mattergen_lab.model.io import CONFIG_FILE, WEIGHTS_FILE, load_local_checkpoint


def _thin(history: list[dict[str, Any]], max_rows: int = 30) -> list[dict[str, Any]]:
    """At most about ``max_rows`` evenly spaced rows of a long history, always with its last row."""
    if len(history) <= max_rows:
        return history
    every = -(-len(history) // max_rows)
    return [h for i, h in enumerate(history) if i % every == 0 or i == len(history) - 1]


def _loss_table(history: list[dict[str, Any]]) -> str:
    def fmt(h: dict[str, Any], key: str, scale: float = 1.0, digits: int = 3) -> str:
        v = h.get(key)
        return f"{v / scale:.{digits}f}" if isinstance(v, (int, float)) else "–"

    rows = ["| step | train loss | val loss | val coordinates | val lattice | val atom types | lr | wall (min) |",
            "|---|---|---|---|---|---|---|---|"]
    rows += [
        f"| {int(h.get('step', 0))} | {fmt(h, 'train_loss')} | {fmt(h, 'val_loss')} | {fmt(h, 'val_pos')} | "
        f"{fmt(h, 'val_cell')} | {fmt(h, 'val_atomic_numbers')} | {fmt(h, 'lr', digits=6)} | "
        f"{fmt(h, 'wall_s', 60.0, 0)} |"
        for h in _thin(history)
    ]
    if len(history) > len(_thin(history)):
        rows.append(f"\n({len(_thin(history))} of {len(history)} validation rows; all are in `config.json` → "
                    "`training.history`. The wall column restarts with each resumed segment.)")
    per_t = _per_t_table(history[-1]) if history else ""
    return "\n".join(rows) + (f"\n\n{per_t}" if per_t else "")


def _per_t_table(last: dict[str, Any]) -> str:
    """Validation loss per field and noise-level bin of the last row (``val_<field>_t<i>``), if recorded."""
    # bins are equal slices of [T_MIN, 1] with T_MIN = 1e-5 (training.validation, which this layer does not import)
    fields = [("val_loss", "total"), ("val_pos", "coordinates"), ("val_cell", "lattice"),
              ("val_atomic_numbers", "atom types")]
    if not all(f"{key}_t0" in last for key, _ in fields):
        return ""
    num_bins = next(i for i in range(1, 100) if f"val_loss_t{i}" not in last)
    edges = [i / num_bins for i in range(num_bins + 1)]
    head = " | ".join(f"t ∈ [{edges[i]:.2f}, {edges[i + 1]:.2f})" for i in range(num_bins))
    rows = [f"Validation loss by noise level at step {int(last.get('step', 0))}:", "",
            f"| field | {head} |", "|---|" + "---|" * num_bins]
    for key, label in fields:
        rows.append(f"| {label} | " + " | ".join(f"{float(last[f'{key}_t{i}']):.3f}" for i in range(num_bins)) + " |")
    return "\n".join(rows)


def _replace_registry_entry(text: str, name: str, block: str) -> str:
    """``text`` with the ``checkpoints:`` entry ``name`` replaced by ``block`` (appended when new)."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == f"  {name}:"), None)
    if start is None:
        return text.rstrip("\n") + "\n" + block
    end = start + 1
    while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
        end += 1
    return "".join(lines[:start]) + block + "".join(lines[end:])


def bundle_checkpoint(
    source: str | os.PathLike,
    name: str,
    *,
    description: str,
    training_data: str,
    num_steps: int,
    card: str = "",
    root: str | os.PathLike | None = None,
    registry_path: str | os.PathLike | None = None,
) -> CheckpointRecord:
    """Copy a trained folder of ours into ``checkpoints/<name>/`` and register it in ``checkpoints.yaml``.

    Writes ``model.safetensors`` (unchanged), ``config.json`` with ``sampling.num_steps`` set to the
    recommended step count, and ``MODEL_CARD.md`` (``card`` followed by the loss history from the config).
    The registry entry (kind ``bundled``, the weights' sha256, the conditioning properties read from the
    model) replaces an existing one of the same name, keeping the rest of the file and its comments.
    """
    import json
    import shutil

    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"bundle name {name!r}: use lower-case letters, digits and '_'")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be a positive integer")
    ckpt = load_local_checkpoint(source)  # strict: refuses a folder whose weights do not match its config
    reg = Path(registry_path) if registry_path else REGISTRY_FILE
    dest = (Path(root) if root else reg.parent / "checkpoints") / name
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(source) / WEIGHTS_FILE, dest / WEIGHTS_FILE)
    cfg = dict(ckpt.config)
    cfg["sampling"] = {**(cfg.get("sampling") or {}), "num_steps": num_steps}
    (dest / CONFIG_FILE).write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
    history = ((cfg.get("training") or {}).get("history")) or []
    (dest / "MODEL_CARD.md").write_text(
        f"# {name}: model card\n\n{card.strip()}\n\n## Losses (validation: at most 20 batches of the held-out split)\n\n"
        f"{_loss_table(history)}\n\nRecommended sampling steps: **{num_steps}** (`config.json` → `sampling.num_steps`).\n"
    )
    sha = sha256_of(dest / WEIGHTS_FILE)
    rel = os.path.relpath(dest, reg.parent)
    block = (
        f"  {name}:\n    kind: bundled\n    description: {json.dumps(description)}\n    path: {rel}\n    sha256: \"{sha}\"\n"
        f"    properties: [{', '.join(ckpt.model.conditions)}]\n    training_data: {json.dumps(training_data)}\n"
    )
    text = _replace_registry_entry(reg.read_text(), name, block)
    records = parse_registry(text, base_dir=reg.parent)  # refuse to write a registry that does not parse
    reg.write_text(text)
    return records[name]
