"""Benchmarks: `python -m tinytransformer.bench NAME [options]`.

Each benchmark is a module here with a `main(argv)` function. Benchmarks are
not tests: they measure, side by side in one run, our code and the competitor
it is compared with, and print (or write as JSON) what they measured.
"""

import json
import os
import time
from pathlib import Path


def best_time(fn, repeats: int, clock=time.process_time) -> float:
    """The shortest of `repeats` runs of fn(), in seconds of `clock` (CPU time by default,
    which a busy shared machine disturbs less than wall time)."""
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def write_json_atomic(path, data) -> None:
    """Write data as JSON to a temporary file in path's folder, then rename it into place,
    so that a reader never sees half a file and a failed write leaves the old file whole."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as out:  # "x": never reuse a stale temporary file
            json.dump(data, out, indent=1, default=float)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
