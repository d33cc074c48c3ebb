"""BLAS threads: how many cores NumPy's matrix products may use, set on purpose.

NumPy hands every matrix product to a BLAS library (OpenBLAS, MKL, ...), which
starts one thread per core by default. For a large product that is a win. For
decoding it often is not: one token is a chain of small matrix-vector products,
and on a busy machine each product pays to wake threads that then wait for
cores, so one thread can be several times faster than the default. Timings in
this project therefore say how many BLAS threads they ran with, and set it.

    >>> with blas_threads(1):
    ...     pass        # matrix products in here use one thread

threadpoolctl (a small, well-kept library from the scikit-learn developers)
does the work: it finds the BLAS libraries loaded in this process and calls
each one's own set-threads function.
"""
from __future__ import annotations

import contextlib
import os

from tinytransformer._validate import positive_int

__all__ = ["blas_threads", "blas_description", "default_threads", "max_threads", "check_threads"]

THREADS_PER_CORE = 4  # the most BLAS threads asked for per core: beyond it, a typo rather than a choice


def max_threads() -> int:
    """The most BLAS threads accepted: THREADS_PER_CORE per core of the machine (os.cpu_count())."""
    return THREADS_PER_CORE * max(1, os.cpu_count() or 1)


def check_threads(n, name: str = "threads") -> int:
    """n as an int, or ValueError unless it is an integer in [1, max_threads()].

    >>> check_threads(100000, "--threads")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --threads: expected at most ... threads (4 per core of this machine's ... cores), got 100000
    """
    n = positive_int(n, name)
    cores = max(1, os.cpu_count() or 1)
    if n > max_threads():
        raise ValueError(f"{name}: expected at most {max_threads()} threads ({THREADS_PER_CORE} per core of "
                         f"this machine's {cores} cores), got {n}")
    return n


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Run the body with at most n BLAS threads (None: leave the library's default; n above max_threads() is
    refused)."""
    if n is None:
        yield
        return
    n = check_threads(n, "threads")
    import numpy  # noqa: F401  (load the BLAS library first, so that threadpoolctl can find it)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield


def blas_description() -> str:
    """The BLAS library NumPy uses and its current thread count, e.g. 'openblas 0.3.27, 2 threads'."""
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    found = [f"{i.get('internal_api', '?')} {i.get('version') or ''}".strip() + f", {i['num_threads']} "
             f"thread{'s' if i['num_threads'] != 1 else ''}" for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(found) or "no BLAS library found"


def default_threads() -> int:
    """Cores this process may run on (the CPU affinity where the platform has it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
