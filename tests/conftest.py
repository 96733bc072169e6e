"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data directory (``$MATTERGEN_LAB_DATA`` or the default locations); skips if absent."""
    from mattergen_lab.data.paths import DataNotFoundError, default_data_dir

    try:
        path = default_data_dir()
    except DataNotFoundError as exc:
        pytest.skip(f"shared data not available: {exc}")
    if not (path / "mp_20").is_dir():
        pytest.skip(f"no mp_20/ under the data directory {path}")
    return path
