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
    if not str(path).strip():  # Path('') is the working directory: never what an empty --out meant
        raise ValueError(f"{what}={str(path)!r} is empty; give an output folder")
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


# ------------------------------------------------------------------------------------------ one writer per folder
LOCK_FILE = ".mattergen-lab.lock"


class FolderBusyError(ValueError):
    """Another live process is writing into the folder; the message names it."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # 0 and negative numbers name process groups, not a process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OverflowError:
        return False
    return True


def _holder_pid(text: str) -> int | None:
    try:
        pid = json.loads(text).get("pid")
    except (json.JSONDecodeError, AttributeError):
        return None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


class FolderLock:
    """``with FolderLock(folder, "sample"):`` - this process is the folder's one writer until the block ends.

    The lock is ``folder/.mattergen-lab.lock``, holding the writer's PID, host and command. Where ``fcntl`` exists
    the file is also ``flock``-ed, so the kernel releases it when the process dies however it dies (SIGKILL
    included) and a stale file is simply taken over; elsewhere a file whose PID is no longer alive is taken over.
    A second writer (another process, or a second run in this one) gets :class:`FolderBusyError` naming the PID
    that holds the folder. Readers (``campaign status``) need no lock.
    """

    def __init__(self, folder: str | os.PathLike, what: str) -> None:
        if not str(folder).strip():
            raise ValueError(f"the {what} output folder {str(folder)!r} is empty; give an output folder")
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_FILE
        self._fh: IO[str] | None = None

    def _busy(self, text: str) -> FolderBusyError:
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = {}
        who = f"process {holder.get('pid', '?')}"
        if holder.get("host"):
            who += f" on {holder['host']}"
        if holder.get("command"):
            who += f" ({holder['what']}: {holder['command']})" if holder.get("what") else f" ({holder['command']})"
        return FolderBusyError(f"{self.folder} is being written by {who}, which holds {self.path}; wait for it to "
                               f"finish (or stop it), or give this {self.what} another output folder")

    def acquire(self) -> "FolderLock":
        import socket
        import sys

        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.what} output {str(self.folder)!r} exists and is not a folder; give a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{self.what} output {str(self.folder)!r} cannot be created ({exc.strerror or exc})") from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                             "command": " ".join(sys.argv)[:300]})
        try:
            import fcntl
        except ImportError:  # no flock (Windows): a PID file, taken over when its process is gone
            fcntl = None  # type: ignore[assignment]
        for _ in range(20):
            if fcntl is None:
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    text = self.path.read_text(errors="replace") if self.path.exists() else ""
                    pid = _holder_pid(text)
                    if pid is not None and _pid_alive(pid):
                        raise self._busy(text) from None
                    self.path.unlink(missing_ok=True)  # stale: its writer died
                    continue
                self._fh = os.fdopen(fd, "w")
            else:
                try:
                    fh = open(self.path, "a+")  # noqa: SIM115 - held open while the lock is
                except OSError as exc:
                    raise ValueError(f"{self.what} output {str(self.folder)!r} cannot be written: {self.path} "
                                     f"({exc.strerror or exc})") from None
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    fh.seek(0)
                    text = fh.read()
                    pid = _holder_pid(text)
                    # held (EWOULDBLOCK); or a file system without flock (NFS): then the PID decides
                    if isinstance(exc, BlockingIOError) or (pid not in (None, os.getpid()) and _pid_alive(pid)):
                        fh.close()
                        raise self._busy(text) from None
                try:  # the file we locked must still be the one at the path (a releasing writer unlinks it)
                    same = os.path.samestat(os.fstat(fh.fileno()), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    fh.close()
                    continue
                self._fh = fh
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.write(record + "\n")
            self._fh.flush()
            return self
        raise FolderBusyError(f"{self.folder}: could not take {self.path} (other writers keep replacing it)")

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: the next writer locks a fresh file
        finally:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
