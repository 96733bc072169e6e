"""``clear_caches()``: free the models, hulls and datasets that mattergen-lab keeps loaded.

Loading a checkpoint, CHGNet, the MP-20 hull or the novelty reference takes seconds, so they are cached for the
kernel's life. On Binder (1-2 GB) switching checkpoints or finishing an evaluation should give that memory back:
call :func:`mattergen_lab.clear_caches` (the design app does when its checkpoint changes). Only modules that are
already imported are touched, so calling it never loads anything.

A cache registers itself where it is defined (:func:`register_cache`, at import: the sampling pipelines do);
:data:`HEAVY_CACHES` names the older ones.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

#: name -> a function that empties the cache and returns whether it held anything (see :func:`register_cache`).
_REGISTERED: dict[str, Callable[[], bool]] = {}


def register_cache(name: str, clear: Callable[[], bool]) -> None:
    """Let :func:`clear_caches` empty a cache: ``clear()`` empties it and returns whether it held anything.
    Called by the module that defines the cache, when it is imported (registering a name again replaces it)."""
    _REGISTERED[name] = clear

#: (module, function) of every cache that holds a model, a hull, a reference set or a data table.
HEAVY_CACHES = (
    ("mattergen_lab.design.runs", "_cached_checkpoint"),
    ("mattergen_lab.forcefields", "load_chgnet"),
    ("mattergen_lab.evaluation.reference", "_mp20_hull"),
    ("mattergen_lab.evaluation.reference", "_elemental_references"),
    ("mattergen_lab.evaluation.matching", "_mp20_novelty_reference"),
    ("mattergen_lab.design.requests", "_ranges_from_data"),
)


def clear_caches() -> list[str]:
    """Empty every heavy cache of the imported modules and run the garbage collector; returns what was cleared."""
    cleared = []
    for module_name, attr in HEAVY_CACHES:
        module = sys.modules.get(module_name)
        fn = getattr(module, attr, None) if module is not None else None
        if fn is not None and hasattr(fn, "cache_clear"):
            if fn.cache_info().currsize:
                cleared.append(f"{module_name}.{attr}")
            fn.cache_clear()
    for name, clear in list(_REGISTERED.items()):
        if clear():
            cleared.append(name)
    gc.collect()
    return cleared
