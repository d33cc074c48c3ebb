"""Argument checks shared by the public functions: each error names the argument,
what was expected and what was given."""
from __future__ import annotations

import math

import numpy as np


def positive_int(value, name: str) -> int:
    """value as an int, or ValueError unless it is an integer >= 1 (bools are not integers here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def positive_float(value, name: str) -> float:
    """value as a float, or ValueError unless it is a finite number > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not value > 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def float_array(x, name: str) -> np.ndarray:
    """x as a floating-point ndarray, or ValueError naming the dtype it had."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating-point array, got dtype {x.dtype}")
    return x
