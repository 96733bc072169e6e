"""Time from Generate to the design app's first live frame (issue #29: at most 1 s), and to the last.

Builds the app on ``--checkpoint`` (as a notebook does; the model is loaded then), presses Generate ``--repeats``
times with ``--num-samples`` crystals in one batch, and records for each press the seconds until the first frame
reaches the app's live view (``DesignApp._on_frame``: the prior, step 0) and until the run ends::

    OMP_NUM_THREADS=1 python benchmarks/bench_first_frame.py --num-samples 16 --repeats 3

This is the Python side: the frame handed to the widgets. The browser's drawing of it is not timed here.
Prints one JSON line per press; with ``--out DIR`` the record also goes to ``OUT/first_frame.json``. The shared flags
(``--out``, ``--num-samples``, ``--steps``, ``--threads``) are those of ``benchmarks/_common.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import add_common_arguments, machine_info, set_threads, write_json


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, out=None, num_samples=16, steps=None, threads=None,
                         help={"out": "folder for first_frame.json (default: print only)",
                               "steps": "sampler steps (default: the checkpoint's)"})
    ap.add_argument("--checkpoint", default="mgl_mp20_small")
    ap.add_argument("--repeats", type=int, default=3)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "widgets"))
    from app import DesignApp

    start = time.perf_counter()
    app = DesignApp(args.checkpoint, online=False)
    built = time.perf_counter() - start
    app.targets.num_samples.value = app.targets.batch_size.value = args.num_samples
    if args.steps is not None:
        app.targets.steps.value = args.steps
    seen: list[float] = []
    show = app._on_frame

    def timed(frame) -> None:  # the app's own handler, timed at entry
        seen.append(time.perf_counter())
        show(frame)

    app._on_frame = timed
    presses = []
    for k in range(args.repeats):
        seen.clear()
        pressed = time.perf_counter()
        app.generate(wait=True)
        if app.error is not None:
            raise SystemExit(f"Generate failed: {app.status.value}")
        row = {"press": k + 1, "first_frame_s": round(seen[0] - pressed, 3), "done_s": round(time.perf_counter() - pressed, 2),
               "frames": len(seen)}
        presses.append(row)
        print(json.dumps(row), flush=True)
    record = {"checkpoint": args.checkpoint, "num_samples": args.num_samples, "app_built_s": round(built, 2),
              "presses": presses, "machine": machine_info()}
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}))
    if args.out:
        write_json(args.out, "first_frame", record)


if __name__ == "__main__":
    main()
