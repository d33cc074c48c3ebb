"""Benchmarks: `python -m tinytransformer.bench NAME [options]`.

Each benchmark is a module here with a `main(argv)` function. Benchmarks are
not tests: they measure, side by side in one run, our code and the competitor
it is compared with, and print (or write as JSON) what they measured.
"""

import time


def best_time(fn, repeats: int, clock=time.process_time) -> float:
    """The shortest of `repeats` runs of fn(), in seconds of `clock` (CPU time by default,
    which a busy shared machine disturbs less than wall time)."""
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best
