"""Checkpoints: the ``checkpoints.yaml`` registry, download, sha256, safe loading, official-key mapping.

One front door, :func:`load_checkpoint`, takes

* a registry name (``mattergen_base``, ``dft_mag_density``, … or one of our bundled models),
* a folder of ours (``config.json`` + ``model.safetensors``),
* an official folder (``config.yaml`` + ``checkpoints/last.ckpt``, as on Hugging Face), or an official
  ``.ckpt`` file (with ``config.yaml`` beside it or one level up).

**Safe loading.** Official Lightning ``.ckpt`` files are read with ``torch.load(weights_only=True)``. If a
file holds objects beyond that allow-list (e.g. OmegaConf configs in ``hyper_parameters``), it is read
again with a restricted unpickler that rebuilds only tensors and plain containers (dict, list, tuple, str,
numbers) and turns every other object into an inert :class:`ForeignObject` record *without importing or
calling anything*; a warning names what was skipped. Nothing in a checkpoint is ever executed.

Length: registry parsing, official-checkpoint download and conversion, and bundling share the registry format;
they are kept in one file so that format has one reader and one writer.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import pickle
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import yaml

from mattergen_lab.data.num_atoms import NumAtomsDistribution
from mattergen_lab.model.gemnet import OFFICIAL_UNUSED_KEY_PATTERNS, GemNetConfig
from mattergen_lab.model.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    load_local_checkpoint,
)
from mattergen_lab.model.score_model import ScoreModel

log = logging.getLogger(__name__)

REGISTRY_FILE = Path(__file__).resolve().parent.parent / "checkpoints.yaml"
OFFICIAL_PREFIX = "diffusion_module.model."
_KINDS = ("official", "bundled")


class CheckpointUnavailableError(FileNotFoundError):
    """A checkpoint could not be found locally nor downloaded; the message says what to do."""


# ----------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class CheckpointRecord:
    """One entry of ``checkpoints.yaml``."""

    name: str
    kind: str
    description: str
    properties: tuple[str, ...]
    training_data: str
    repo_id: str | None = None
    files: tuple[str, ...] = ()
    size_bytes: int | None = None
    sha256: str | None = None
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_official(self) -> bool:
        return self.kind == "official"


def _field(name: str, entry: dict, key: str, types: type | tuple[type, ...], required: bool = True) -> Any:
    if key not in entry or entry[key] is None:
        if required:
            raise ValueError(f"checkpoints.yaml: entry {name!r} is missing field {key!r}")
        return None
    value = entry[key]
    if not isinstance(value, types):
        raise ValueError(f"checkpoints.yaml: entry {name!r}, field {key!r}={value!r} has the wrong type")
    return value


def parse_registry(text: str, *, base_dir: Path) -> dict[str, CheckpointRecord]:
    """Parse registry YAML into typed records; a malformed entry names the entry and the field."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"checkpoints.yaml is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("checkpoints"), dict):
        raise ValueError("checkpoints.yaml: expected a top-level 'checkpoints:' mapping")
    records = {}
    for name, entry in doc["checkpoints"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"checkpoints.yaml: entry {name!r} must be a mapping")
        kind = _field(name, entry, "kind", str)
        if kind not in _KINDS:
            raise ValueError(f"checkpoints.yaml: entry {name!r}, field 'kind'={kind!r} must be one of {_KINDS}")
        props = _field(name, entry, "properties", list)
        sha = _field(name, entry, "sha256", str, required=kind == "bundled")
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ValueError(f"checkpoints.yaml: entry {name!r}, field 'sha256'={sha!r} is not 64 hex digits")
        common = dict(
            name=name,
            kind=kind,
            description=_field(name, entry, "description", str),
            properties=tuple(str(p) for p in props),
            training_data=_field(name, entry, "training_data", str),
            sha256=sha,
            size_bytes=_field(name, entry, "size_bytes", int, required=False),
        )
        if kind == "official":
            source = _field(name, entry, "source", dict)
            repo_id = _field(name, source, "repo_id", str)
            files = _field(name, source, "files", list)
            if not any(str(f).endswith(".ckpt") for f in files) or not any(str(f).endswith("config.yaml") for f in files):
                raise ValueError(f"checkpoints.yaml: entry {name!r}, field 'source.files' needs a .ckpt and a config.yaml")
            records[name] = CheckpointRecord(**common, repo_id=repo_id, files=tuple(files))
        else:
            path = base_dir / _field(name, entry, "path", str)
            records[name] = CheckpointRecord(**common, path=path, extra={k: v for k, v in entry.items() if k not in common})
    return records


@lru_cache(maxsize=4)
def _registry_cached(path: str, mtime: float) -> dict[str, CheckpointRecord]:
    return parse_registry(Path(path).read_text(), base_dir=Path(path).parent)


def registry(path: str | os.PathLike | None = None) -> dict[str, CheckpointRecord]:
    """All known checkpoints (parsed once per file version)."""
    p = Path(path) if path is not None else REGISTRY_FILE
    if not p.exists():
        raise FileNotFoundError(f"checkpoint registry {p} not found")
    return _registry_cached(str(p), p.stat().st_mtime)


# ---------------------------------------------------------------------------------------- resolution
def cache_root() -> Path:
    return Path(os.environ.get("MATTERGEN_LAB_CHECKPOINTS", Path.home() / ".cache" / "mattergen-lab" / "checkpoints"))


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual} does not match the registry's {expected}; the file is corrupt or a different version")


_PROBES: dict[float, tuple[float, bool]] = {}


def hub_reachable(timeout: float = 3.0, *, max_age_s: float = 0.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` s (False when ``HF_HUB_OFFLINE``).

    With ``max_age_s > 0`` an answer younger than that is reused (the design app asks on every target change).
    """
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    now = time.monotonic()
    hit = _PROBES.get(timeout)
    if max_age_s > 0 and hit is not None and now - hit[0] <= max_age_s:
        return hit[1]
    answer = _probe_hub(timeout)
    _PROBES[timeout] = (now, answer)
    return answer


def official_files_cached(name: str) -> bool:
    """Whether an official checkpoint's ``config.yaml`` and ``checkpoints/last.ckpt`` are in the local cache."""
    folder = cache_root() / name
    return (folder / "checkpoints" / "last.ckpt").exists() and (folder / "config.yaml").exists()


def _probe_hub(timeout: float) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(record: CheckpointRecord, folder: Path, reason: str) -> CheckpointUnavailableError:
    files = "\n".join(f"    {f}  ->  {folder / Path(f).name if f.endswith('.yaml') else folder / 'checkpoints' / Path(f).name}" for f in record.files)
    return CheckpointUnavailableError(
        f"checkpoint {record.name!r} is not available: {reason}.\n"
        f"  It needs these files from the Hugging Face repo {record.repo_id}:\n{files}\n"
        f"  Download them on a machine with internet (e.g. `huggingface-cli download {record.repo_id} "
        f"{' '.join(record.files)} --local-dir DIR`) and either copy them to the places above "
        f"(the cache is $MATTERGEN_LAB_CHECKPOINTS, default ~/.cache/mattergen-lab/checkpoints), "
        f"or pass `--checkpoint DIR/checkpoints/{record.name}` (Python: load_checkpoint('DIR/checkpoints/{record.name}'))."
    )


def resolve_official(record: CheckpointRecord, *, download: bool = True) -> Path:
    """Local folder with ``config.yaml`` and ``checkpoints/last.ckpt``; downloads when missing."""
    folder = cache_root() / record.name
    ckpt, cfg = folder / "checkpoints" / "last.ckpt", folder / "config.yaml"
    if official_files_cached(record.name):
        return folder
    if not download:
        raise _unavailable(record, folder, "it is not in the local cache")
    if not hub_reachable():
        raise _unavailable(record, folder, "Hugging Face cannot be reached from this machine (offline?)")
    from huggingface_hub import hf_hub_download

    try:
        for remote in record.files:
            local = Path(hf_hub_download(record.repo_id, remote))  # shows a tqdm progress bar
            target = ckpt if remote.endswith(".ckpt") else cfg
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.symlink(local, target)
    except Exception as exc:  # network errors, auth, missing files: all end in the same advice
        raise _unavailable(record, folder, f"the download failed ({type(exc).__name__}: {exc})") from exc
    return folder


# ------------------------------------------------------------------------------------------ safe load
class ForeignObject:
    """An object a checkpoint referenced that is not on the allow-list; recorded, never constructed.

    ``module``/``name`` say what the pickle asked for; ``args`` and ``state`` hold what it passed.
    """

    module = "?"
    name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "ForeignObject":
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:  # BUILD: keep the state as data
        self.state = state

    def __repr__(self) -> str:
        return f"ForeignObject({self.module}.{self.name})"


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
}
_ALLOWED_GLOBALS.update({("torch", n): getattr(torch, n) for n in ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")})


class _RestrictedUnpickler(pickle.Unpickler):
    foreign: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        type(self).foreign.append(f"{module}.{name}")
        return type("ForeignObject", (ForeignObject,), {"module": module, "name": name})


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


class _RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` that never imports or calls foreign code.

    Both entry points torch uses are restricted: ``Unpickler`` (the zip format's data.pkl) and ``load`` (the
    legacy format's header records, which for a plain pickle that is not a torch file is the whole payload).
    """

    Unpickler = _RestrictedUnpickler
    load = staticmethod(_restricted_load)
    __name__ = "mattergen_lab_restricted_pickle"


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load`` that never executes pickled code (see the module docstring)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        log.info("weights_only load of %s failed (%s); retrying with the restricted unpickler", path, exc)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {type(exc).__name__}: {exc}") from exc
    _RestrictedUnpickler.foreign = []
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {type(exc).__name__}: {exc}") from exc
    skipped = sorted(set(_RestrictedUnpickler.foreign))
    if skipped:
        warnings.warn(f"{path}: skipped non-tensor objects {skipped} (recorded, not executed)", stacklevel=2)
    return obj


# ------------------------------------------------------------------------------------- official mapping
def official_gemnet_config(cfg_yaml: dict[str, Any]) -> GemNetConfig:
    """The GemNet-T architecture (incl. its adapters) described by an official ``config.yaml`` (parsed)."""
    model: Any = cfg_yaml
    for key in ("lightning_module", "diffusion_module", "model"):
        model = model.get(key) if isinstance(model, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("gemnet"), dict):
        raise ValueError("config.yaml has no lightning_module.diffusion_module.model.gemnet section")
    g = model["gemnet"]
    for key in ("emb_size_atom", "emb_size_edge", "latent_dim", "num_blocks", "max_neighbors", "max_cell_images_per_dim"):
        if key in g and (isinstance(g[key], bool) or not isinstance(g[key], int) or g[key] <= 0):
            raise ValueError(f"config.yaml: gemnet.{key}={g[key]!r} is not a positive integer")
    if "cutoff" in g and (isinstance(g["cutoff"], bool) or not isinstance(g["cutoff"], (int, float)) or not 0 < g["cutoff"] < 100):
        raise ValueError(f"config.yaml: gemnet.cutoff={g['cutoff']!r} is not a distance in Å between 0 and 100")
    adapt = tuple(model.get("property_embeddings_adapt") or {}) or tuple(g.get("condition_on_adapt") or ())
    if model.get("property_embeddings"):
        raise ValueError("base-level property_embeddings are not supported (no released checkpoint uses them)")
    kw = {k: g[k] for k in ("emb_size_atom", "emb_size_edge", "latent_dim", "num_blocks", "cutoff", "max_neighbors", "max_cell_images_per_dim") if k in g}
    return GemNetConfig(**kw, condition_on_adapt=adapt)


def map_official_state_dict(state_dict: dict[str, torch.Tensor], model: ScoreModel) -> dict[str, torch.Tensor]:
    """Official ``diffusion_module.model.*`` keys -> our keys; strict, with a readable diff on mismatch."""
    unused = [re.compile(p) for p in OFFICIAL_UNUSED_KEY_PATTERNS]
    mapped = {}
    foreign_prefix = []
    for key, value in state_dict.items():
        if not key.startswith(OFFICIAL_PREFIX):
            foreign_prefix.append(key)
            continue
        short = key[len(OFFICIAL_PREFIX):]
        if any(p.fullmatch(short) for p in unused):
            continue
        mapped[short] = value
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected)) + sorted(foreign_prefix)
    wrong = sorted(f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(expected[k].shape)}" for k in set(mapped) & set(expected) if mapped[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        lines = ["the checkpoint does not match the official MatterGen layout:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrongly shaped", wrong)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    - {k}" for k in items[:20]] + ([f"    … and {len(items) - 20} more"] if len(items) > 20 else [])
        raise ValueError("\n".join(lines))
    return mapped


def find_official_files(path: Path) -> tuple[Path, Path]:
    """``(last.ckpt, config.yaml)`` for an official checkpoint given as its file or its folder."""
    if path.is_file():
        ckpt = path
        for cand in (path.parent / "config.yaml", path.parent.parent / "config.yaml"):
            if cand.exists():
                return ckpt, cand
        raise ValueError(f"{path}: no config.yaml beside it or one folder up")
    cfg = path / "config.yaml"
    ckpts = sorted(path.rglob("last.ckpt")) or sorted(path.rglob("*.ckpt"))
    if not cfg.exists() or not ckpts:
        raise ValueError(f"{path} is neither a mattergen-lab checkpoint ({CONFIG_FILE} + {WEIGHTS_FILE}) nor an official one (config.yaml + *.ckpt)")
    return ckpts[0], cfg


def read_official_config(cfg_path: Path) -> dict[str, Any]:
    """An official ``config.yaml`` parsed safely; a broken file is a ``ValueError`` naming the file and the line."""
    try:
        cfg_yaml = yaml.safe_load(cfg_path.read_text(encoding="utf-8", errors="replace"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{cfg_path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(cfg_yaml, dict):
        raise ValueError(f"{cfg_path} is not a YAML mapping")
    return cfg_yaml


def load_official(path: str | os.PathLike, *, expected_sha256: str | None = None) -> Checkpoint:
    """Load an official MatterGen checkpoint (folder or ``.ckpt``) into our model, safely."""
    ckpt_path, cfg_path = find_official_files(Path(path))
    verify_sha256(ckpt_path, expected_sha256)
    cfg_yaml = read_official_config(cfg_path)
    gemnet_config = official_gemnet_config(cfg_yaml)  # a broken config is named before any weights are read
    obj = safe_torch_load(ckpt_path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ValueError(f"{ckpt_path} has no 'state_dict' of tensors; it is not a MatterGen Lightning checkpoint")
    state = obj["state_dict"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{ckpt_path}: state_dict entries are not tensors: {bad[:5]}")
    model = ScoreModel(gemnet_config)
    model.load_state_dict(map_official_state_dict(state, model), strict=True)
    config = {
        "source": "official",
        "path": str(ckpt_path),
        "properties": list(model.conditions),
        "scalers": model.scaler_summary(),
        "num_atoms_distribution": NumAtomsDistribution.from_table("ALEX_MP_20").to_dict(),
        "model": model.config.to_dict(),
    }
    return Checkpoint(model=model, config=config, path=ckpt_path)


def load_checkpoint(name_or_path: str | os.PathLike, *, download: bool = True, registry_path: str | os.PathLike | None = None) -> Checkpoint:
    """Load a checkpoint by registry name or path (see the module docstring)."""
    path = Path(name_or_path)
    if path.exists():
        if path.is_dir() and (path / CONFIG_FILE).exists():
            return load_local_checkpoint(path)
        if path.is_file() and path.suffix == ".safetensors":
            return load_local_checkpoint(path.parent)
        return load_official(path)
    records = registry(registry_path)
    name = str(name_or_path)
    if name not in records:
        raise ValueError(f"checkpoint {name!r} is neither an existing path nor a registry name; known names: {sorted(records)}")
    record = records[name]
    if record.kind == "bundled":
        assert record.path is not None
        if not (record.path / WEIGHTS_FILE).exists():
            raise CheckpointUnavailableError(f"bundled checkpoint {name!r}: {record.path / WEIGHTS_FILE} is missing from this checkout")
        verify_sha256(record.path / WEIGHTS_FILE, record.sha256)
        return load_local_checkpoint(record.path)
    folder = resolve_official(record, download=download)
    return load_official(folder, expected_sha256=record.sha256)


# ------------------------------------------------------------------------------------------ bundling
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


def checkpoint_properties(name_or_path: str | os.PathLike, *, registry_path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Properties a checkpoint conditions on, read from its config (no weights are loaded).

    Works for registry names, our folders (``config.json``) and official folders/``.ckpt`` files
    (``config.yaml``). Raises ``ValueError`` for something that is neither.
    """
    from mattergen_lab.model.io import CONFIG_FILE, read_config

    path = Path(name_or_path)
    if path.exists():
        if path.is_file() and path.suffix == ".safetensors":
            path = path.parent
        if path.is_dir() and (path / CONFIG_FILE).exists():
            return tuple(read_config(path)["model"].get("condition_on_adapt") or ())
        _, cfg = find_official_files(path)
        return tuple(official_gemnet_config(read_official_config(cfg)).condition_on_adapt)
    records = registry(registry_path)
    if str(name_or_path) not in records:
        raise ValueError(f"checkpoint {str(name_or_path)!r} is neither an existing path nor a registry name; known: {sorted(records)}")
    record = records[str(name_or_path)]
    local = record.path if record.kind == "bundled" else cache_root() / record.name if official_files_cached(record.name) else None
    if local is None or not (local / CONFIG_FILE).exists() and not (local / "config.yaml").exists():
        return record.properties  # files not here (an official checkpoint not downloaded yet): the registry is all we have
    actual = checkpoint_properties(local)
    if set(actual) != set(record.properties):
        raise ValueError(f"checkpoints.yaml says {record.name!r} conditions on {list(record.properties)}, but its model config "
                         f"({local}) conditions on {list(actual)}: the registry entry is wrong")
    return actual
