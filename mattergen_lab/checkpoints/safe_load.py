"""Safe loading of torch files: :func:`safe_torch_load` never executes pickled code.

A file is read with ``torch.load(weights_only=True)``; one that holds objects beyond that allow-list is read
again with a restricted unpickler that rebuilds only tensors and plain containers and records every other
object as an inert :class:`ForeignObject` (see :mod:`mattergen_lab.checkpoints`).
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("mattergen_lab.checkpoints")  # the logger these messages had before the module was split


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
