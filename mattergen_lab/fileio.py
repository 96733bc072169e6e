"""Small file helpers shared by long-running jobs: atomic writes and append-only JSON lines."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(fh)`` into a temporary file beside it, then rename it into place.

    A reader (or a crash) never sees a half-written file, and an existing file is replaced only once the new
    one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "out") -> Path:
    """Make sure ``path`` is (or can become) a folder we can write to; ``ValueError`` naming it otherwise.

    Called at the boundary, before any work: a file, ``/dev/null``, a read-only folder or file system is named
    at once instead of after a model or a reference hull has been loaded. The folder is created.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what}={str(path)!r} exists and is not a folder; give a folder (new or existing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{what}={str(path)!r} cannot be written ({exc.strerror or exc}); give a writable folder") from None
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON record as a line and flush it to disk (a crash loses at most the line being written).

    When an earlier run was killed in the middle of a line, that partial line is first ended, so the new record
    stays a line of its own (and :func:`read_jsonl` skips the partial one) instead of being glued onto it.
    """
    path = Path(path)
    torn = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(("\n" if torn else "") + json.dumps(record, allow_nan=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; a truncated last line (a run killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
