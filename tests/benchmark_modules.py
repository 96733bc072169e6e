"""``load_benchmark(name)``: import ``benchmarks/<name>.py`` of this checkout, for the tests of the benchmarks' helpers.

It lives with the tests (not in the library: an installed package has no ``benchmarks/`` folder).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_names() -> list[str]:
    """Every benchmark script: ``bench_quality``, ``device/bench_relax_gpu``, ... (not ``_common``)."""
    return sorted(str(p.relative_to(BENCHMARKS).with_suffix("")) for p in BENCHMARKS.rglob("*.py")
                  if not p.name.startswith("_"))


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as module ``<name>``'s last part (once; the scripts import each other and
    ``_common`` by name, as they do when run from ``benchmarks/``)."""
    module_name = Path(name).name
    if module_name in sys.modules:
        return sys.modules[module_name]
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
