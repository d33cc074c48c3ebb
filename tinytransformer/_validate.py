"""Argument checks shared by the public functions: each error names the argument,
what was expected and what was given.

The two predicates say what counts as a number here: bools are not (True is 1 to Python,
but `max_new_tokens=True` is a mistake, not a request for one token).

    >>> is_integer(3), is_integer(np.int64(3)), is_integer(True), is_integer(3.0)
    (True, True, False, False)
    >>> integer(5, "n", low=0, high=9)
    5
    >>> integer(-1, "max_new_tokens", low=0)
    Traceback (most recent call last):
    ...
    ValueError: max_new_tokens: expected an integer >= 0, got -1
"""
from __future__ import annotations

import math

import numpy as np


def is_integer(value) -> bool:
    """True for a Python or NumPy integer, False for anything else (a bool included)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """True for a Python or NumPy integer or float (finite or not), False for anything else (a bool included)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def integer(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """value as an int, or ValueError unless it is an integer (not a bool) in [low, high] (either bound optional)."""
    if not is_integer(value) or (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            wanted = f"an integer in [{low}, {high}]"
        elif low is not None:
            wanted = f"an integer >= {low}"
        elif high is not None:
            wanted = f"an integer <= {high}"
        else:
            wanted = "an integer"
        raise ValueError(f"{name}: expected {wanted}, got {value!r}")
    return int(value)


def positive_int(value, name: str) -> int:
    """value as an int, or ValueError unless it is an integer >= 1 (bools are not integers here)."""
    return integer(value, name, low=1)


def nonnegative_int(value, name: str) -> int:
    """value as an int, or ValueError unless it is an integer >= 0 (not a bool)."""
    return integer(value, name, low=0)


def positive_float(value, name: str) -> float:
    """value as a float, or ValueError unless it is a finite number > 0."""
    if not is_real(value) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def nonnegative_float(value, name: str) -> float:
    """value as a float, or ValueError unless it is a finite number >= 0 (not a bool)."""
    if not is_real(value) or not math.isfinite(value) or not value >= 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def seed_value(value, name: str = "seed"):
    """value unchanged if it is a numpy Generator, an integer seed >= 0 or None (fresh randomness),
    else ValueError (a bool, a float or a str is not a seed)."""
    if value is None or isinstance(value, np.random.Generator):
        return value
    if not is_integer(value) or value < 0:
        raise ValueError(f"{name}: expected a numpy Generator, an integer seed >= 0, or None, got {value!r}")
    return int(value)


def random_generator(value, name: str = "seed") -> np.random.Generator:
    """A numpy Generator from a seed_value (a Generator is returned as it is)."""
    return np.random.default_rng(seed_value(value, name))


def float_array(x, name: str) -> np.ndarray:
    """x as a floating-point ndarray, or ValueError naming the dtype it had."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating-point array, got dtype {x.dtype}")
    return x


def leading_index_array(ids, array: np.ndarray, name: str, array_name: str) -> np.ndarray:
    """ids as an integer ndarray of shape array.shape[:-1] (one index per row of `array`), or ValueError."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu" or ids.shape != array.shape[:-1]:
        raise ValueError(f"{name}: expected an integer array of shape {array.shape[:-1]} ({array_name}'s leading "
                         f"axes), got dtype {ids.dtype} shape {ids.shape}")
    return ids


# --- attention shapes: one checker for sdpa, flash, paged decode and the CUDA launchers ----


def rank4(x, name: str, layout: str) -> tuple:
    """x.shape, or ValueError unless x has rank 4 (layout names the axes, e.g. "[B, Hq, T, D]")."""
    shape = tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)
    if len(shape) != 4:
        raise ValueError(f"{name}: expected rank 4 {layout}, got shape {shape}")
    return shape


def query_key_heads(n_heads: int, n_kv_heads: int, kv_name: str) -> int:
    """The GQA group size G = Hq / Hkv, or ValueError unless Hkv >= 1 divides Hq."""
    if n_kv_heads < 1 or n_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"{kv_name}: expected a number of KV heads that divides q's {n_heads} heads "
                         f"(n_heads must be a multiple of n_kv_heads), got {n_kv_heads}")
    return n_heads // n_kv_heads


def attention_shapes(q, k, v, *, names: tuple[str, str, str] = ("q", "k", "v")) -> tuple:
    """Check q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv]; return (B, Hq, Hkv, T, S, D, Dv).

    Works on anything with a .shape (NumPy or CuPy arrays). Every message reads
    `name: expected X, got Y`. Empty B, T or S are allowed (empty or zero outputs);
    heads and head dims must be >= 1.
    """
    qn, kn, vn = names
    B, Hq, T, D = rank4(q, qn, "[B, Hq, T, D]")
    kB, Hkv, S, kD = rank4(k, kn, "[B, Hkv, S, D]")
    vB, vH, vS, Dv = rank4(v, vn, "[B, Hkv, S, Dv]")
    if D < 1 or Dv < 1:
        raise ValueError(f"{qn if D < 1 else vn}: expected a head dim >= 1, got shape "
                         f"{tuple(q.shape) if D < 1 else tuple(v.shape)}")
    if kB != B:
        raise ValueError(f"{kn}: expected batch size {B} (q's), got {kB}")
    if kD != D:
        raise ValueError(f"{kn}: expected head dim {D} (q's), got {kD}")
    query_key_heads(Hq, Hkv, kn)
    if (vB, vH, vS) != (kB, Hkv, S):
        raise ValueError(f"{vn}: expected [B, Hkv, S] = {[kB, Hkv, S]} (k's), got shape {tuple(v.shape)}")
    return B, Hq, Hkv, T, S, D, Dv


def attention_scale(scale, head_dim: int) -> float:
    """The score scale: 1 / sqrt(D) when None, else a finite real number (not a bool)."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if not is_real(scale) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite real number (or None for 1/sqrt(D)), got {scale!r}")
    return float(scale)


def float32_or_wider(x, name: str) -> np.ndarray:
    """x as a floating-point ndarray, float16 as float32 (half precision is computed in float32, as the GPU
    kernels accumulate), or ValueError naming the dtype it had."""
    x = float_array(x, name)
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    return x


def check_finite_scores(scores, q, k, allowed=None) -> None:
    """ValueError unless every allowed attention score q k^T * scale is finite: it names q or k if one holds
    a NaN or inf, else says the product overflowed. allowed: a bool mask broadcastable to scores, or None."""
    bad = ~np.isfinite(scores)
    if allowed is not None:
        bad &= allowed
    if not bad.any():
        return
    for x, name in ((q, "q"), (k, "k")):
        if not np.isfinite(x).all():
            raise ValueError(f"{name}: expected finite values, got NaN or inf; attention needs finite scores")
    raise ValueError(f"q, k: the scores q k^T * scale overflow {scores.dtype} (largest |q| {np.abs(q).max():.3g}, "
                     f"largest |k| {np.abs(k).max():.3g}); scale the inputs down or compute in float64")


def finite_array(x, name: str, dtype=np.float32) -> np.ndarray:
    """x as a float array of `dtype`, or ValueError naming the first NaN or infinity (and its index).

    Quantisers refuse non-finite input: a single inf in a block would make its scale inf and every
    other value in the block NaN after dequantisation.
    """
    x = float_array(x, name) if not isinstance(x, (list, tuple)) else np.asarray(x, dtype=dtype)
    x = np.asarray(x, dtype=dtype)
    bad = ~np.isfinite(x)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: expected finite values, got {x[index]} at index {index}")
    return x
