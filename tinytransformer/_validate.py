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


def nonnegative_float(value, name: str) -> float:
    """value as a float, or ValueError unless it is a finite number >= 0 (not a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not value >= 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def seed_value(value, name: str = "seed"):
    """value unchanged if it is a numpy Generator, an integer seed >= 0 or None (fresh randomness),
    else ValueError (a bool, a float or a str is not a seed)."""
    if value is None or isinstance(value, np.random.Generator):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
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
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite real number (or None for 1/sqrt(D)), got {scale!r}")
    return float(scale)


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
