"""``clear_caches()``: free the models, hulls and datasets that mattergen-lab keeps loaded.

Loading a checkpoint, CHGNet, the MP-20 hull or the novelty reference takes seconds, so they are cached for the
kernel's life. On Binder (1-2 GB) switching checkpoints or finishing an evaluation should give that memory back:
call :func:`mattergen_lab.clear_caches` (the design app does when its checkpoint changes).

A cache registers itself where it is defined, when its module is imported: :func:`register_cache` for any
cache (the sampling pipelines), :func:`registered` on a ``functools.lru_cache``. Only imported modules have
registered anything, so calling :func:`clear_caches` never loads anything; this module names no other module
(``tests/test_caches.py`` fails when a heavy ``lru_cache`` of the package is not registered).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: name -> a function that empties the cache and returns whether it held anything (see :func:`register_cache`).
_REGISTERED: dict[str, Callable[[], bool]] = {}
#: name -> the ``lru_cache``-wrapped functions that entry empties (what the test of registration reads).
_FUNCTIONS: dict[str, tuple[Any, ...]] = {}


def register_cache(name: str, clear: Callable[[], bool], *, functions: Iterable[Any] = ()) -> None:
    """Let :func:`clear_caches` empty a cache: ``clear()`` empties it and returns whether it held anything.

    Called by the module that defines the cache, when it is imported (registering a name again replaces it).
    ``functions``: the ``lru_cache``-wrapped functions ``clear`` empties, if any.
    """
    _REGISTERED[name] = clear
    _FUNCTIONS[name] = tuple(functions)


def registered(fn: F) -> F:
    """Decorator over ``functools.lru_cache``: register the cache as ``"<module>.<name>"``::

        @registered
        @functools.lru_cache(maxsize=2)
        def _mp20_hull(path: str) -> ReferenceHull: ...
    """
    if not (hasattr(fn, "cache_clear") and hasattr(fn, "cache_info")):
        raise TypeError(f"@registered goes above @functools.lru_cache; {fn!r} has no cache_clear/cache_info")

    def clear() -> bool:
        held = fn.cache_info().currsize > 0
        fn.cache_clear()
        return held

    register_cache(f"{fn.__module__}.{fn.__qualname__}", clear, functions=(fn,))
    return fn


def registered_functions() -> set[Any]:
    """Every ``lru_cache``-wrapped function that :func:`clear_caches` empties (of the modules imported so far)."""
    return {fn for fns in _FUNCTIONS.values() for fn in fns}


def clear_caches() -> list[str]:
    """Empty every registered cache and run the garbage collector; returns the names of those that held anything."""
    cleared = [name for name, clear in list(_REGISTERED.items()) if clear()]
    gc.collect()
    return cleared
