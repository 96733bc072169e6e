"""Where the data lives and where processed caches go.

* Data (read-only): ``$MATTERGEN_LAB_DATA``, else the first existing of ``<repo>/../shared/data`` and
  ``~/.cache/mattergen-lab/data``. Data is never copied into the repository.
* Processed caches (parsed CSVs): ``$MATTERGEN_LAB_CACHE``, else ``~/.cache/mattergen-lab/processed``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "MATTERGEN_LAB_DATA"
CACHE_ENV_VAR = "MATTERGEN_LAB_CACHE"

#: The repository root: the parent of the ``mattergen_lab`` package directory.
REPO_ROOT = Path(__file__).resolve().parents[2]


class DataNotFoundError(FileNotFoundError):
    """No data directory could be found (or the one named by ``$MATTERGEN_LAB_DATA`` does not exist)."""


def candidate_data_dirs() -> list[Path]:
    """The fallback data directories, in the order they are tried (``$MATTERGEN_LAB_DATA`` not included)."""
    return [REPO_ROOT.parent / "shared" / "data", Path.home() / ".cache" / "mattergen-lab" / "data"]


def default_data_dir() -> Path:
    """The data directory: ``$MATTERGEN_LAB_DATA`` if set, else the first existing candidate.

    Raises:
        DataNotFoundError: ``$MATTERGEN_LAB_DATA`` names a missing directory, or no candidate exists.
            The message lists the paths looked at and how to set the variable.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(f"${DATA_ENV_VAR}={env!r} is not an existing directory")
        return path
    candidates = candidate_data_dirs()
    for path in candidates:
        if path.is_dir():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise DataNotFoundError(
        f"no data directory found; looked at ${DATA_ENV_VAR} (unset), {looked}. "
        f"Set {DATA_ENV_VAR}=/path/to/data (the folder holding mp_20/) or pass data_dir=..."
    )


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` as a ``Path`` (must exist), or :func:`default_data_dir` when ``None``."""
    if data_dir is None:
        return default_data_dir()
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(f"data_dir {str(path)!r} is not an existing directory")
    return path


def default_cache_dir() -> Path:
    """Directory for processed caches: ``$MATTERGEN_LAB_CACHE`` or ``~/.cache/mattergen-lab/processed``.

    The directory is not created here; writers create it when needed.
    """
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mattergen-lab" / "processed"
