"""What every benchmark shares: a best-of timer, a wall-and-CPU timer, writing reports and figures whole.

A benchmark measures our code and its competitor side by side in one run, then
writes what it measured. The pieces here do that the same way everywhere:

    best_time(fn, repeats)     the shortest of `repeats` calls, in seconds of a clock
    timed(fn)                  (fn's result, wall seconds, CPU seconds) of one call
    write_report(report, path) the measurements as JSON, encoded first, then renamed into place
    save_figure(fig, path)     a matplotlib figure as PNG, renamed into place the same way

    >>> result, wall, cpu = timed(lambda: sum(range(1000)))
    >>> result, wall >= 0, cpu >= 0
    (499500, True, True)
    >>> json_number(np.float32(0.5)), json_number(np.int64(3))
    (0.5, 3)

Wall time (time.perf_counter) is the primary figure. Beside it, the CPU time of this
process (time.process_time): on a machine shared with other work, wall time also counts
the moments the process waited for a core, CPU time does not.

Does not handle: GPU timing (CUDA events live in the attention benchmark), statistics
beyond the minimum.
"""
from __future__ import annotations

import json
import time

import numpy as np

from tinytransformer._files import atomic_writer

__all__ = ["CLOCK", "CPU_CLOCK", "best_time", "timed", "json_number", "write_report", "save_figure"]

CLOCK = time.perf_counter  # wall time: the primary figure
CPU_CLOCK = time.process_time  # CPU time of this process, reported beside it


def best_time(fn, repeats: int, clock=time.perf_counter) -> float:
    """The shortest of `repeats` runs of fn(), in seconds of `clock`: wall time by default;
    time.process_time (CPU time of this process) is less disturbed by a busy shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def timed(fn):
    """(fn's result, wall seconds, CPU seconds) of one call."""
    wall, cpu = CLOCK(), CPU_CLOCK()
    result = fn()
    return result, CLOCK() - wall, CPU_CLOCK() - cpu


def json_number(value):
    """json.dumps' fallback: NumPy scalars become Python numbers; anything else is refused."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"report: a value of type {type(value).__name__} is not a number or a JSON type")


def write_report(report: dict, path, *, default=json_number) -> None:
    """Write the measurements as JSON: encoded first, then written next to `path` and renamed
    over it, so that a failure (a value JSON cannot hold, a full disk) leaves the old file whole."""
    data = (json.dumps(report, indent=1, default=default) + "\n").encode("utf-8")
    with atomic_writer(path, f"report file {str(path)!r}") as handle:
        handle.write(data)


def save_figure(fig, path, *, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG the same way: beside `path`, then renamed over it."""
    with atomic_writer(path, f"figure {str(path)!r}") as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
