"""Benchmarks: `python -m tinytransformer.bench NAME [options]`.

Each benchmark is a module here with a `main(argv)` function. Benchmarks are
not tests: they measure, side by side in one run, our code and the competitor
it is compared with, and print (or write as JSON) what they measured.
"""

import json
import time

import numpy as np

from tinytransformer._files import atomic_writer


def best_time(fn, repeats: int, clock=time.perf_counter) -> float:
    """The shortest of `repeats` runs of fn(), in seconds of `clock`: wall time by default;
    time.process_time (CPU time of this process) is less disturbed by a busy shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


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
