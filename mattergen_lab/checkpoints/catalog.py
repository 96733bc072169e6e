"""The ``checkpoints.yaml`` registry and the resolution of a registry name to local files.

:class:`CheckpointRecord` and :func:`parse_registry`/:func:`registry` read the registry (its one reader;
:mod:`mattergen_lab.checkpoints.bundle` is its one writer); :func:`resolve_official` finds or downloads an official
checkpoint's files in the cache (:func:`cache_root`), checked with :func:`verify_sha256`, and explains what to do
(:class:`CheckpointUnavailableError`) when it cannot.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from mattergen_lab.config import load_yaml_without_aliases

REGISTRY_FILE = Path(__file__).resolve().parents[2] / "checkpoints.yaml"
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

    @property
    def is_csp(self) -> bool:
        """A crystal-structure-prediction model (atom types given): its ``config.json`` says
        ``diffusion.fixed_atom_types``. Official checkpoints are not CSP models."""
        config = self.path / "config.json" if self.path is not None else None
        if config is None or not config.is_file():
            return False
        try:
            return bool(json.loads(config.read_text()).get("diffusion", {}).get("fixed_atom_types", False))
        except (OSError, ValueError, AttributeError):
            return False

    def conditions(self) -> str:
        """What the model conditions on, in words: ``"a composition (CSP)"``, ``"space group (1-230)"``,
        ``"magnetic density (μB/Å³) + HHI score"``, or ``"nothing (unconditional)"``."""
        if self.is_csp:
            return "a composition (CSP: atoms given, e.g. --composition Li2MnO3)"
        if not self.properties:
            return "nothing (unconditional)"
        return " + ".join(CONDITION_LABELS.get(p, p) for p in self.properties)


#: How ``mattergen-lab checkpoints`` names each conditioning property.
CONDITION_LABELS = {
    "chemical_system": "chemical system (e.g. Li-Fe-O)",
    "space_group": "space group (1-230)",
    "dft_mag_density": "magnetic density (μB/Å³)",
    "dft_band_gap": "band gap (eV)",
    "dft_bulk_modulus": "bulk modulus (GPa)",
    "ml_bulk_modulus": "bulk modulus (GPa, ML)",
    "hhi_score": "HHI score",
    "energy_above_hull": "energy above hull (eV/atom)",
}


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
        doc = load_yaml_without_aliases(text)  # no alias bombs
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


_SHA256_SEEN: dict[tuple[str, int, int], str] = {}


def sha256_cached(path: str | os.PathLike) -> str:
    """:func:`sha256_of`, remembered per (path, size, modification time): a bundled model is checked on every load
    at the cost of a ``stat`` once its file has been hashed, and any change to the file is hashed again."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_SEEN:
        _SHA256_SEEN[key] = sha256_of(p)
    return _SHA256_SEEN[key]


def verify_sha256(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    actual = sha256_cached(path)
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
