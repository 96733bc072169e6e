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

This package was one module; its parts now live in

* :mod:`~mattergen_lab.checkpoints.catalog`: the registry (:class:`CheckpointRecord`, :func:`parse_registry`,
  :func:`registry`) and resolution (:func:`cache_root`, :func:`sha256_of`, :func:`hub_reachable`, :func:`resolve_official`),
* :mod:`~mattergen_lab.checkpoints.safe_load`: :func:`safe_torch_load`, :class:`ForeignObject`,
* :mod:`~mattergen_lab.checkpoints.official`: official ``config.yaml``/key mapping and :func:`load_official`,
* :mod:`~mattergen_lab.checkpoints.bundle`: :func:`bundle_checkpoint` and its model card,

and this file keeps the front door (:func:`load_checkpoint`, :func:`checkpoint_properties`). The names above are
importable from ``mattergen_lab.checkpoints`` too; the modules' other names (official key mapping, the model
card's helpers) from their own module.
"""

from __future__ import annotations

import os
from pathlib import Path

# the package's names (what the front door below uses, and what callers import from here)
from mattergen_lab.checkpoints.bundle import bundle_checkpoint  # noqa: F401
from mattergen_lab.checkpoints.catalog import (  # noqa: F401
    CheckpointRecord,
    CheckpointUnavailableError,
    cache_root,
    hub_reachable,
    official_files_cached,
    parse_registry,
    registry,
    resolve_official,
    sha256_of,
    verify_sha256,
)
from mattergen_lab.checkpoints.official import (  # noqa: F401
    find_official_files,
    load_official,
    official_gemnet_config,
    read_official_config,
)
from mattergen_lab.checkpoints.safe_load import ForeignObject, safe_torch_load  # noqa: F401
from mattergen_lab.model.io import CONFIG_FILE, WEIGHTS_FILE, Checkpoint, load_local_checkpoint


def looks_like_path(name_or_path: str | os.PathLike) -> bool:
    """Whether a checkpoint argument names a path rather than a registry entry: a ``Path`` object, or text that is
    absolute, starts with ``.`` or ``~``, or holds a separator (``./mgl_mp20_small``, ``runs/x/best``).

    A bare word is a registry name even when a folder of that name is in the working directory: a folder called
    ``mgl_mp20_small`` there must not stand in for the bundled model unchecked.
    """
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return text.startswith((".", "~")) or Path(text).is_absolute() or any(sep in text for sep in seps)


def _path_or_name(name_or_path: str | os.PathLike, records: dict[str, CheckpointRecord]) -> Path | None:
    """The path meant by ``name_or_path``, or ``None`` for a registry name (``ValueError`` for neither)."""
    if looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"checkpoint path {str(name_or_path)!r} does not exist")
        return path
    name = str(name_or_path)
    if name not in records:
        hint = f" (for the folder in the working directory, write ./{name})" if Path(name).exists() else ""
        raise ValueError(f"checkpoint {name!r} is not a registry name and does not look like a path{hint}; "
                         f"known names: {sorted(records)}")
    return None


def load_checkpoint(name_or_path: str | os.PathLike, *, download: bool = True, registry_path: str | os.PathLike | None = None) -> Checkpoint:
    """Load a checkpoint by registry name or path (see the module docstring and :func:`looks_like_path`)."""
    records = registry(registry_path) if not looks_like_path(name_or_path) else {}
    path = _path_or_name(name_or_path, records)
    if path is not None:
        if path.is_dir() and (path / CONFIG_FILE).exists():
            return load_local_checkpoint(path)
        if path.is_file() and path.suffix == ".safetensors":
            return load_local_checkpoint(path.parent)
        return load_official(path)
    name = str(name_or_path)
    record = records[name]
    if record.kind == "bundled":
        assert record.path is not None
        if not (record.path / WEIGHTS_FILE).exists():
            raise CheckpointUnavailableError(f"bundled checkpoint {name!r}: {record.path / WEIGHTS_FILE} is missing from this checkout")
        verify_sha256(record.path / WEIGHTS_FILE, record.sha256)
        return load_local_checkpoint(record.path)
    folder = resolve_official(record, download=download)
    return load_official(folder, expected_sha256=record.sha256)


def checkpoint_properties(name_or_path: str | os.PathLike, *, registry_path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Properties a checkpoint conditions on, read from its config (no weights are loaded).

    Works for registry names, our folders (``config.json``) and official folders/``.ckpt`` files
    (``config.yaml``). Raises ``ValueError`` for something that is neither.
    """
    from mattergen_lab.model.gemnet import GemNetConfig
    from mattergen_lab.model.io import CONFIG_FILE, read_config

    records = registry(registry_path) if not looks_like_path(name_or_path) else {}
    path = _path_or_name(name_or_path, records)
    if path is not None:
        if path.is_file() and path.suffix == ".safetensors":
            path = path.parent
        if path.is_dir() and (path / CONFIG_FILE).exists():
            try:
                return GemNetConfig.from_dict(read_config(path)["model"]).condition_on_adapt
            except ValueError as exc:
                raise ValueError(f"{path / CONFIG_FILE}: {exc}") from None
        _, cfg = find_official_files(path)
        return tuple(official_gemnet_config(read_official_config(cfg)).condition_on_adapt)
    record = records[str(name_or_path)]
    local = record.path if record.kind == "bundled" else cache_root() / record.name if official_files_cached(record.name) else None
    if local is None or not (local / CONFIG_FILE).exists() and not (local / "config.yaml").exists():
        return record.properties  # files not here (an official checkpoint not downloaded yet): the registry is all we have
    actual = checkpoint_properties(local)
    if set(actual) != set(record.properties):
        raise ValueError(f"checkpoints.yaml says {record.name!r} conditions on {list(record.properties)}, but its model config "
                         f"({local}) conditions on {list(actual)}: the registry entry is wrong")
    return actual
