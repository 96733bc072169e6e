"""What reaches a person's terminal or notebook: progress bars, and the library warnings kept from them.

The library itself does not print (house style); its boundaries do. The command line makes its bars with
:func:`progress_bar` (tqdm on stderr, with counts, rate and ETA; silent when stderr is not a terminal, so logs and CI
stay clean, or with ``--quiet``), and the command line and the design app call :func:`silence_library_warnings`, so
warnings that say nothing to a materials scientist (pymatgen's "No Pauling electronegativity for Ne", which it
raises whenever a formula with a noble gas is sorted; spglib's notices about its own deprecated API; CHGNet's tensor
conversion) are not printed into a notebook after every Generate. Every other warning still shows.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

#: ``(category, message regex)`` of warnings that are not the user's business (see the module docstring).
LIBRARY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (UserWarning, r"No Pauling electronegativity"),
    (DeprecationWarning, r"Set OLD_ERROR_HANDLING to false"),  # spglib 2.x, on every pymatgen symmetry call
    (DeprecationWarning, r"dict interface"),  # spglib 2.x datasets read as dicts
    (UserWarning, r"Converting a tensor with requires_grad"),  # CHGNet
)


def silence_library_warnings() -> None:
    """Ignore :data:`LIBRARY_WARNINGS` from here on, in every thread (the app samples off its UI thread).

    Idempotent: :func:`warnings.filterwarnings` replaces an identical filter rather than adding a second one."""
    for category, message in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def progress_bar(total: int | None, desc: str, unit: str, *, quiet: bool = False, **kwargs: Any):
    """A tqdm bar on stderr: ``desc: 40%|████      | 8/20 [00:12<00:18, 1.5 crystal/s]``.

    Shown only when stderr is a terminal (tqdm's ``disable=None``) and not ``quiet``; callers update it the same way
    either way (a disabled bar ignores updates)."""
    from tqdm import tqdm

    # a terminal that reports no size (a bare pseudo-terminal, some CI runners) would get no bar at all from tqdm
    sized = min(_terminal_size()) > 0
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=True if quiet else None,
                dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 20, **kwargs)


def _terminal_size() -> tuple[int, int]:
    try:
        return tuple(os.get_terminal_size(sys.stderr.fileno()))  # type: ignore[return-value]
    except (OSError, ValueError, AttributeError):  # not a terminal, or a stream without a file descriptor
        return (0, 0)
