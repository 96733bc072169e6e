"""What every benchmark here shares: the flags, the machine record and how results are written.

Functions, not a framework: a benchmark builds its own ``argparse`` parser and calls

* :func:`add_common_arguments` for the flags every benchmark spells the same way, where they apply: ``--out DIR``
  (the folder its JSON goes to), ``--num-samples``, ``--batch-size``, ``--steps``, ``--threads`` (torch threads of
  this process) and ``--device``;
* :func:`set_threads` once the arguments are parsed, :func:`machine_info` for the record's ``"machine"`` and
  :func:`machine_line` for the ``# ...`` line it prints first;
* :func:`write_json` for ``OUT/<name>.json`` (written atomically; numpy numbers become plain JSON).

A script runs as ``python benchmarks/<name>.py`` (its folder is on ``sys.path``, so ``import _common`` works; the
scripts in ``benchmarks/device/`` put their parent folder there first), and the tests load it with
``tests/benchmark_modules.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The value of a keyword of :func:`add_common_arguments` that makes its flag required (no default).
REQUIRED = object()

_HELP = {
    "out": "folder the results are written to (created if needed)",
    "num_samples": "crystals to sample",
    "batch_size": "crystals per batch",
    "steps": "sampler steps",
    "threads": "torch threads of this process (default: torch's own choice)",
    "device": "torch device ('cpu', 'cuda', 'cuda:N')",
}
_TYPES = {"out": str, "num_samples": int, "batch_size": int, "steps": int, "threads": int, "device": str}
_ABSENT = object()


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    out: Any = _ABSENT,
    num_samples: Any = _ABSENT,
    batch_size: Any = _ABSENT,
    steps: Any = _ABSENT,
    threads: Any = _ABSENT,
    device: Any = _ABSENT,
    help: Mapping[str, str] | None = None,  # noqa: A002 - the argparse word
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Add the shared flags whose keyword is given, each with that default.

    A keyword left out adds no flag (the benchmark has no such setting); :data:`REQUIRED` makes the flag required;
    a list default takes one or more values (``--steps 1000 200``). ``help`` replaces the standard help of a flag
    (keyed by keyword, e.g. ``{"steps": "..."}``); ``aliases`` adds older spellings (``{"batch_size": ("--batch",)}``)
    that keep earlier command lines working.
    """
    given = {"out": out, "num_samples": num_samples, "batch_size": batch_size, "steps": steps, "threads": threads,
             "device": device}
    unknown = set(help or {}) | set(aliases or {})
    unknown -= set(given)
    if unknown:
        raise ValueError(f"add_common_arguments: no shared flag {sorted(unknown)}; the flags are {sorted(given)}")
    for key, default in given.items():
        if default is _ABSENT:
            continue
        text = (help or {}).get(key, _HELP[key])
        kwargs: dict[str, Any] = {"type": _TYPES[key], "dest": key}
        if key == "out":
            kwargs["metavar"] = "DIR"
        if default is REQUIRED:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            if default is not None:
                text += f" (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
            if isinstance(default, list):
                kwargs["nargs"] = "+"
        names = ["--" + key.replace("_", "-"), *(aliases or {}).get(key, ())]
        parser.add_argument(*names, help=text, **kwargs)


def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads(threads)`` unless ``threads`` is ``None`` or 0; returns the count torch uses."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine_info(device: str | None = None) -> dict[str, Any]:
    """The machine a result was measured on: CPU, cores, Python, torch, its threads, ``OMP_NUM_THREADS``, the
    1-minute load average (other jobs on the cores show up there) and, with ``device``, the device (a GPU's name)."""
    import torch

    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device is not None:
        info["device"] = str(device)
        if str(device).startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    """``# x86_64, 2 cores, torch 2.13.0+cpu, 1 thread(s), OMP_NUM_THREADS=1, load 1.7[, device cuda (H100)]``."""
    text = (f"# {info['processor']}, {info['cpu_count']} cores, torch {info['torch']}, {info['torch_threads']} "
            f"thread(s), OMP_NUM_THREADS={info['OMP_NUM_THREADS']}, load {info['load_avg_1min']}")
    if "device" in info:
        text += f", device {info['device']}" + (f" ({info['gpu']})" if "gpu" in info else "")
    return text


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for what results hold besides plain data: numpy numbers and arrays, paths."""
    import numpy as np

    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def to_json(obj: Any) -> Any:
    """``obj`` as the plain data :func:`write_json` writes (to compare a record with one read back)."""
    return json.loads(json.dumps(obj, default=json_default))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON at ``path``, or ``{}`` when there is no file."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_json(out: str | os.PathLike, name: str, record: Any, *, indent: int = 2) -> Path:
    """Write ``record`` to ``out/<name>.json`` atomically (a killed run leaves the old file or the new one); returns
    the path. NaN stays NaN (Python's JSON reads it back)."""
    from mattergen_lab.fileio import atomic_write_text

    path = Path(out) / (name if name.endswith(".json") else f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=indent, default=json_default) + "\n")
    return path

