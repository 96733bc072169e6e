"""One switch for "this test must run": ``MATTERGEN_LAB_CI=1`` (``.ci/run`` sets it).

Under it, every skip for something missing (a package behind :func:`importorskip`, the shared data directory,
Chromium, MatterSim) is a failure instead, so CI cannot pass by skipping what it was meant to run. Without it
(a laptop without the extras) those tests skip, saying why.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

import pytest

SWITCH = "MATTERGEN_LAB_CI"


def must_run() -> bool:
    """True under ``MATTERGEN_LAB_CI`` set to anything but ``""``, ``0``, ``false`` or ``no``."""
    return os.environ.get(SWITCH, "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip (locally) or fail (under the switch), naming ``reason``; usable at module level too."""
    if must_run():
        pytest.fail(f"{reason} ({SWITCH}=1: this test must run in CI)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def importorskip(modname: str, minversion: str | None = None) -> Any:
    """:func:`pytest.importorskip`, failing instead under the switch."""
    try:
        return pytest.importorskip(modname, minversion=minversion)
    except pytest.skip.Exception as exc:
        reason = str(exc.msg)
    skip_or_fail(reason)  # outside the except: the report shows the reason, not a chained traceback
