"""Progress bars of the command line's long commands (``sample``, ``quickstart``, ``train``, ``finetune``).

Bars come from :func:`mattergen_lab.console.progress_bar`: on stderr, with counts, rate and ETA, shown only when stderr
is a terminal and ``--quiet`` is not given. The sampling bars are fed by :class:`ProgressWriter`, a
:class:`~mattergen_lab.sampling.pipeline.SampleWriter` that counts every denoising step and every written crystal
and hands each frame on to the real writer, so the pipeline needs no knowledge of bars.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mattergen_lab.console import progress_bar


class ProgressWriter:
    """Counts steps and crystals on two bars, and hands every frame to ``inner`` (a ``SampleDirWriter``).

    It asks the chunk loop for every step's frame (``record_every = 1``) to count it; ``inner`` keeps its own
    ``record_every`` for trajectories and writes crystals only from final frames, so the files are the same as
    without bars."""

    def __init__(self, inner: Any, chunks: list[tuple[int, ...]], num_steps: int, *, quiet: bool = False) -> None:
        self.inner = inner
        self.out = inner.out
        self.skip: set[int] = inner.skip
        self.paths: list[Path] = inner.paths
        self.record_every = 1
        todo = [c for c in chunks if not all(i in self.skip for i in c)]
        done = sum(i in self.skip for c in chunks for i in c)  # a resumed run starts with these
        self.steps = progress_bar(len(todo) * num_steps, "denoising", "step", quiet=quiet)
        self.crystals = progress_bar(sum(map(len, chunks)), "crystals ", "crystal", quiet=quiet, initial=done)

    def on_frame(self, indices: list[int], frame: Any) -> int:
        if not frame.final and frame.step > 0:
            self.steps.update(1)
        written = self.inner.on_frame(indices, frame)
        if frame.final:
            self.crystals.update(len([i for i in indices if i not in self.skip]))
        return written

    def close(self) -> None:
        self.steps.close()
        self.crystals.close()


def sample_with_progress(request: Any, out_dir: str | os.PathLike, *, quiet: bool = False) -> list[Path]:
    """``SamplingPipeline.for_request(request).to_dir(request, out_dir)`` with a step bar and a crystal bar."""
    from mattergen_lab.sampling.pipeline import SamplingPipeline
    from mattergen_lab.sampling.writers import SampleDirWriter

    pipe = SamplingPipeline.for_request(request)
    settings = pipe.run_settings(request)  # checks the request before the folder is touched
    with SampleDirWriter(out_dir, request.num_samples, record_every=pipe.sampler.config.record_every,
                         settings=settings) as inner:
        writer = ProgressWriter(inner, [indices for _, indices, _ in request.chunks()], pipe.num_steps, quiet=quiet)
        try:
            return pipe.to_dir(request, writer=writer)
        finally:
            writer.close()


def training_callback(max_steps: int, desc: str, *, quiet: bool = False) -> tuple[Callable[[dict[str, float]], None], Any]:
    """``(callback, bar)`` for :func:`~mattergen_lab.training.trainer.train`'s ``callback``: a bar of optimizer steps
    with the training (and, when measured, validation) loss. A resumed run starts the bar at its step, so the rate
    and ETA count only this session's steps."""
    bar = progress_bar(max_steps, desc, "step", quiet=quiet)

    def on_step(row: dict[str, float]) -> None:
        step = int(row["step"])
        if bar.n == 0 and step > 1:  # resumed: start the count here
            bar.n = bar.initial = bar.last_print_n = step - 1
        bar.update(step - bar.n)
        post = {"loss": f"{row['train_loss']:.3f}"}
        if "val_loss" in row:
            post["val"] = f"{row['val_loss']:.3f}"
        bar.set_postfix(post, refresh=False)

    return on_step, bar


def add_quiet_flags(sub: argparse._SubParsersAction) -> None:
    """``-q/--quiet`` on every command (and every ``campaign`` command): no progress bars. Bars are shown only when
    stderr is a terminal anyway (:func:`mattergen_lab.console.progress_bar`)."""
    for p in sub.choices.values():
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            add_quiet_flags(nested[0])
        else:
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (they show only on a terminal)")
