"""Peak memory (RSS) and wall time of the kernel that executes a notebook.

    python benchmarks/bench_notebook_memory.py                       # notebooks 01-04, normal mode
    python benchmarks/bench_notebook_memory.py notebooks/05_evaluate.ipynb --smoke

Each notebook runs top to bottom with nbclient in a fresh kernel, in a temporary working directory (so its
outputs/ land there, never in the repository). A thread polls the kernel process and its children in /proc every
0.2 s; the peak of their summed RSS is reported, together with the kernel process's own high-water mark
(``VmHWM`` in /proc/<pid>/status, the number ``ru_maxrss`` reports), the wall time and the slowest cells. Linux only.
With ``--out DIR`` (``benchmarks/_common.py``'s flag) the rows also go to ``OUT/notebook_memory.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from _common import add_common_arguments, machine_info, machine_line, write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT = [REPO / "notebooks" / name for name in (
    "01_quickstart.ipynb",
    "02_chemistry_guided.ipynb",
    "03_property_sliders.ipynb",
    "04_low_supply_chain_magnets.ipynb",
)]


def _rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one process in kB, (0, 0) when it is gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(c) for c in text)
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


class Poller(threading.Thread):
    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid: int | None = None
        self.peak_kb = 0
        self.hwm_kb = 0
        self.interval = interval
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.pid is not None:
                total = 0
                for p in _tree(self.pid):
                    rss, hwm = _rss_kb(p)
                    total += rss
                    if p == self.pid:
                        self.hwm_kb = max(self.hwm_kb, hwm)
                self.peak_kb = max(self.peak_kb, total)
            time.sleep(self.interval)


def run_notebook(path: Path, *, smoke: bool, timeout: int) -> dict:
    import nbformat
    from nbclient import NotebookClient

    env_smoke = os.environ.get("MATTERGEN_LAB_SMOKE")
    if smoke:
        os.environ["MATTERGEN_LAB_SMOKE"] = "1"
    else:
        os.environ.pop("MATTERGEN_LAB_SMOKE", None)
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="nbmem-") as tmp:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": tmp}})
        poller = Poller()
        poller.start()
        cell_times: list[tuple[float, int]] = []
        t0 = time.perf_counter()
        with client.setup_kernel():
            poller.pid = client.km.provisioner.process.pid
            for i, cell in enumerate(nb.cells):
                c0 = time.perf_counter()
                client.execute_cell(cell, i)
                cell_times.append((time.perf_counter() - c0, i))
        wall = time.perf_counter() - t0
        poller.stop.set()
        poller.join()
    if env_smoke is None:
        os.environ.pop("MATTERGEN_LAB_SMOKE", None)
    else:
        os.environ["MATTERGEN_LAB_SMOKE"] = env_smoke
    return {"notebook": path.name, "wall_s": wall, "peak_rss_gb": poller.peak_kb / 1e6,
            "kernel_hwm_gb": poller.hwm_kb / 1e6, "slowest_cells": sorted(cell_times, reverse=True)[:3]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks 01-04")
    add_common_arguments(parser, out=None, help={"out": "folder for notebook_memory.json (default: print only)"})
    parser.add_argument("--smoke", action="store_true", help="set MATTERGEN_LAB_SMOKE=1 (tiny sizes)")
    parser.add_argument("--timeout", type=int, default=3600, help="per-cell timeout, seconds")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    info = machine_info()
    print(machine_line(info))
    print(f"{'notebook':<34} {'mode':<6} {'wall s':>8} {'peak RSS GB':>12} {'kernel HWM GB':>14}  slowest cells (s, index)")
    rows = []
    for path in args.notebooks or DEFAULT:
        r = run_notebook(path.resolve(), smoke=args.smoke, timeout=args.timeout)
        rows.append(r)
        slow = ", ".join(f"{t:.0f}s#{i}" for t, i in r["slowest_cells"])
        print(f"{r['notebook']:<34} {'smoke' if args.smoke else 'normal':<6} {r['wall_s']:>8.1f} "
              f"{r['peak_rss_gb']:>12.2f} {r['kernel_hwm_gb']:>14.2f}  {slow}", flush=True)
    if args.out:
        record = {"benchmark": "bench_notebook_memory", "mode": "smoke" if args.smoke else "normal", "machine": info,
                  "rows": rows}
        print(f"wrote {write_json(args.out, 'notebook_memory', record)}")


if __name__ == "__main__":
    main()
