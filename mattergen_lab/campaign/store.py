"""The campaign folder: one place where results land as tasks finish, and from which a run resumes.

Layout::

    FOLDER/campaign.json           the spec (a rerun must give the same one) and the arms
    FOLDER/manifest.jsonl          one line per finished (or failed) task, appended after its files are written
    FOLDER/samples/<task>.json     a sampling task's structures (pymatgen dicts, full precision)
    FOLDER/cifs/<id>.cif           each sampled crystal (id = ``<arm>-<index>``, e.g. ``a1-17``), Niggli-reduced
    FOLDER/evaluation/<task>.json  an evaluation task's rows, relaxed structures and protocol
    FOLDER/relaxed/<id>.cif        each relaxed crystal
    FOLDER/per_structure.csv       the whole campaign's table (uniqueness over all of it), rewritten by finalize
    FOLDER/metrics.json            aggregates over all arms and per arm
    FOLDER/generated_crystals.extxyz  every sampled crystal, in arm and index order

A task counts as done only when its manifest line exists; its files were written (atomically) before that
line, so a kill at any moment loses at most the tasks that were running.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mattergen_lab.campaign.spec import Arm, CampaignSpec
from mattergen_lab.campaign.tasks import task_file_name
from mattergen_lab.structure_io import structure_to_cif
from mattergen_lab.fileio import append_jsonl, atomic_write_text, read_jsonl


@dataclass(frozen=True)
class PlannedTask:
    kind: str  # "sample" | "evaluate"
    key: str
    arm: Arm
    chunk: int
    ids: tuple[str, ...]
    parent: str | None = None  # the sampling task an evaluation task reads


def plan(spec: CampaignSpec) -> list[PlannedTask]:
    """Every task of the campaign, in submission order (arm, chunk, then its evaluation batches)."""
    tasks = []
    for arm in spec.arms():
        for j, indices, _seed in spec.request(arm).chunks():
            ids = tuple(f"{arm.name}-{i}" for i in indices)
            skey = f"sample/{arm.name}/c{j}"
            tasks.append(PlannedTask("sample", skey, arm, j, ids))
            if spec.evaluate is not None:
                b = spec.evaluate.batch_size
                for m in range(math.ceil(len(ids) / b)):
                    tasks.append(PlannedTask("evaluate", f"evaluate/{arm.name}/c{j}/b{m}", arm, j, ids[m * b:(m + 1) * b], skey))
    return tasks


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return str(obj)


def _dump(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, allow_nan=True)


def _sort_key(sid: str) -> tuple[int, int]:
    arm, _, index = sid.partition("-")
    return int(arm[1:]), int(index)


class CampaignFolder:
    """Reads and writes one campaign folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ spec
    def prepare(self, spec: CampaignSpec) -> None:
        """Create the folder for ``spec``, or check that an existing one holds the same campaign."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"campaign folder {self.path} exists and is not a folder")
        meta = self.path / "campaign.json"
        if meta.is_file():
            old = self.spec()
            if old.fingerprint() != spec.fingerprint():
                a, b = old.to_dict(), spec.to_dict()
                diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
                raise ValueError(f"{self.path} holds another campaign ({'; '.join(diff)}); use a new folder to run this spec")
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(meta, json.dumps({
                "spec": spec.to_dict(),
                "arms": [{"name": a.name, "label": a.label, "conditions": a.conditions, "guidance_scale": a.guidance_scale,
                          **({"symmetry": str(a.symmetry)} if a.symmetry is not None else {})} for a in spec.arms()],
                "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }, indent=1, default=_json_default))
        except OSError as exc:
            raise ValueError(f"cannot write the campaign folder {self.path}: {exc.strerror or exc}") from None

    def spec(self) -> CampaignSpec:
        meta = self.path / "campaign.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{self.path} is not a campaign folder (no campaign.json)")
        return CampaignSpec.from_dict(json.loads(meta.read_text(encoding="utf-8"))["spec"])

    # ------------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, dict[str, Any]]:
        """The last record of every task in the manifest (``status`` ``"done"`` or ``"failed"``)."""
        out: dict[str, dict[str, Any]] = {}
        for rec in read_jsonl(self.path / "manifest.jsonl"):
            if isinstance(rec, dict) and "task" in rec:
                out[rec["task"]] = rec
        return out

    def done(self) -> set[str]:
        return {k for k, r in self.manifest().items() if r.get("status") == "done"}

    def _finish(self, key: str, status: str, **extra: Any) -> None:
        rec = {"task": key, "status": status, "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **extra}
        append_jsonl(self.path / "manifest.jsonl", json.loads(_dump(rec)))

    def record_failure(self, key: str, error: str) -> None:
        self._finish(key, "failed", error=error[-2000:])

    # ------------------------------------------------------------------ results
    def write_sample(self, result: dict[str, Any]) -> None:
        from pymatgen.core import Structure

        for sid, d in zip(result["ids"], result["structures"]):
            atomic_write_text(self.path / "cifs" / f"{sid}.cif", structure_to_cif(Structure.from_dict(d)))
        atomic_write_text(self.path / "samples" / f"{task_file_name(result['key'])}.json",
                          _dump({"ids": result["ids"], "structures": result["structures"]}))
        self._finish(result["key"], "done", seconds=round(result["seconds"], 3), worker=result["worker"], n=len(result["ids"]))

    def read_sample(self, key: str) -> tuple[list[str], list[dict[str, Any]]]:
        d = json.loads((self.path / "samples" / f"{task_file_name(key)}.json").read_text(encoding="utf-8"))
        return d["ids"], d["structures"]

    def write_evaluation(self, result: dict[str, Any]) -> None:
        from pymatgen.core import Structure

        for row, d in zip(result["rows"], result["relaxed"]):
            if d is not None:
                atomic_write_text(self.path / "relaxed" / f"{row['id']}.cif", structure_to_cif(Structure.from_dict(d)))
        atomic_write_text(self.path / "evaluation" / f"{task_file_name(result['key'])}.json",
                          _dump({"rows": result["rows"], "relaxed": result["relaxed"], "protocol": result["protocol"]}))
        self._finish(result["key"], "done", seconds=round(result["seconds"], 3), worker=result["worker"], n=len(result["rows"]))

    def _evaluations(self) -> Iterator[dict[str, Any]]:
        for key in sorted(self.done()):
            if key.startswith("evaluate/"):
                yield json.loads((self.path / "evaluation" / f"{task_file_name(key)}.json").read_text(encoding="utf-8"))

    def samples(self) -> list[tuple[str, Any]]:
        """``(id, Structure)`` of every sampled crystal so far, in arm and index order."""
        from pymatgen.core import Structure

        out = []
        for key in self.done():
            if key.startswith("sample/"):
                ids, dicts = self.read_sample(key)
                out += [(sid, Structure.from_dict(d)) for sid, d in zip(ids, dicts)]
        return sorted(out, key=lambda x: _sort_key(x[0]))

    def table(self) -> Any:
        """The per-structure table of every evaluated crystal so far (pandas), uniqueness over all of them.

        Extra columns: ``arm``, ``guidance_scale``, ``symmetry`` (when an arm sets it), ``target_<property>`` for each
        condition of the arm, and
        ``relaxer`` (from each task's protocol, so a cluster that mixed relaxers shows it).
        """
        import pandas as pd
        from pymatgen.core import Structure

        from mattergen_lab.evaluation.results import finalize_table

        spec = self.spec()
        arms = {a.name: a for a in spec.arms()}
        items = []
        for ev in self._evaluations():
            for row, d in zip(ev["rows"], ev["relaxed"]):
                items.append((row, d, ev["protocol"].get("relaxer", "")))
        if not items:
            return pd.DataFrame()
        items.sort(key=lambda x: _sort_key(x[0]["id"]))
        matcher = spec.evaluate.matcher if spec.evaluate is not None else "disordered"
        table = finalize_table([r for r, _, _ in items], [Structure.from_dict(d) if d else None for _, d, _ in items], matcher)
        table["arm"] = [str(i).partition("-")[0] for i in table["id"]]
        table["guidance_scale"] = [arms[a].guidance_scale for a in table["arm"]]
        if any(a.symmetry is not None for a in arms.values()):
            table["symmetry"] = [None if arms[a].symmetry is None else str(arms[a].symmetry) for a in table["arm"]]
        for name in sorted({k for a in arms.values() for k in a.conditions}):
            table[f"target_{name}"] = [arms[a].conditions.get(name) for a in table["arm"]]
        table["relaxer"] = [p for _, _, p in items]
        return table

    # ------------------------------------------------------------------ summaries
    def status(self) -> dict[str, Any]:
        """Counts of planned, finished and failed tasks and crystals; S.U.N. so far when evaluated."""
        spec = self.spec()
        tasks = plan(spec)
        manifest = self.manifest()
        done = {k for k, r in manifest.items() if r.get("status") == "done"}
        failed = {k: r.get("error", "") for k, r in manifest.items() if r.get("status") == "failed"}
        out: dict[str, Any] = {"folder": str(self.path), "arms": len(spec.arms())}
        for kind in ("sample", "evaluate"):
            mine = [t for t in tasks if t.kind == kind]
            out[f"{kind}_tasks"] = len(mine)
            out[f"{kind}_tasks_done"] = sum(t.key in done for t in mine)
            out[f"{kind}d_crystals"] = sum(len(t.ids) for t in mine if t.key in done)
        out["planned_crystals"] = spec.num_samples * len(spec.arms())
        out["failed_tasks"] = failed
        out["finished"] = all(t.key in done for t in tasks)
        return out

    def finalize(self) -> Any:
        """Write ``per_structure.csv``, ``metrics.json`` and ``generated_crystals.extxyz``; return the table."""
        from ase.io import write as ase_write
        from pymatgen.io.ase import AseAtomsAdaptor

        from mattergen_lab.evaluation.results import compute_metrics

        samples = self.samples()
        if samples:
            frames = []
            for sid, s in samples:
                atoms = AseAtomsAdaptor.get_atoms(s)
                atoms.info["gen_id"] = sid
                frames.append(atoms)
            tmp = self.path / ".generated_crystals.extxyz.tmp"
            ase_write(tmp, frames, format="extxyz")
            os.replace(tmp, self.path / "generated_crystals.extxyz")
        table = self.table()
        if len(table):
            atomic_write_text(self.path / "per_structure.csv", table.to_csv(index=False))
            metrics = {"all": compute_metrics(table)}
            for arm, sub in table.groupby("arm", sort=False):
                metrics[str(arm)] = compute_metrics(sub)
            atomic_write_text(self.path / "metrics.json", json.dumps(metrics, indent=1, default=_json_default))
        return table
