"""Uniform (integer) quantisation: absmax and zero-point, per tensor, per row, and in blocks.

The simplest quantiser maps a group of floats onto evenly spaced integers with
one scale s per group (Jacob et al., 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference"):

    absmax (symmetric)      s = max|x| / (2^(b-1) - 1)       q = round(x / s)      x ~ s q
                            q in -(2^(b-1) - 1) .. 2^(b-1) - 1   (int8: -127..127, int4: -7..7)
    zero-point (asymmetric) s = (max - min) / (2^b - 1)      q = round(x / s) + z  x ~ s (q - z)
                            z = round(-min / s), q in 0 .. 2^b - 1; min <= 0 <= max is
                            enforced so that 0.0 is exactly representable (as q = z)

Rounding is to nearest, ties to even (np.rint). Every weight is then within
half a step, |x - x_hat| <= s / 2, so the error is set by the scale, which is
set by the largest magnitude in the group: one outlier in a group of a million
weights makes every step large. Smaller groups keep outliers local:

    group         one scale per ...                    overhead (float32 s, b-bit z)
    "tensor"      the whole tensor                     ~ 0 bits per weight
    "row"         output row W[i, :]                   (32 [+ b]) / in_features
    g (an int)    g consecutive weights along a row    (32 [+ b]) / g, e.g. 0.25 + 0.03 for g = 128

    >>> import numpy as np
    >>> w = np.array([[0.1, -0.2, 0.3, 8.0], [0.1, -0.2, 0.3, 0.4]], dtype=np.float32)
    >>> t = quantize_absmax(w, bits=4, group="tensor")       # one scale: 8 / 7
    >>> t.dequantize()[1].astype(float).round(3).tolist()     # the outlier in row 0 flattens row 1
    [0.0, 0.0, 0.0, 0.0]
    >>> r = quantize_absmax(w, bits=4, group="row")          # row 1 gets its own scale 0.4 / 7
    >>> r.dequantize()[1].astype(float).round(3).tolist()     # -3.5 rounds to -4 (ties to even)
    [0.114, -0.229, 0.286, 0.4]
    >>> t.bits_per_weight, r.bits_per_weight, quantize_zero_point(w, bits=4, group=4).bits_per_weight
    (8.0, 12.0, 13.0)

(On 8 weights the scales dominate; on a real 576 x 1536 matrix per-row int4
costs 4.02 bits per weight and g128 with zero points 4.28.)

Shapes: any x; "row" groups the last axis (rows of a weight [out, in]); an
integer group size must divide the last axis. Does not handle: per-column
(per-input-channel) scales, stochastic rounding, non-power-of-two grids,
integer matrix multiplication (see `int8_matmul`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import finite_array, positive_int

__all__ = ["UniformQuantized", "quantize_absmax", "quantize_zero_point", "groups",
           "zero_point_params", "round_to_grid", "round_to_nearest"]

SCALE_BITS = 32  # scales are stored as float32


def groups(x: np.ndarray, group) -> np.ndarray:
    """x viewed as [n_groups, group_len] for group = "tensor", "row" or an integer block size."""
    if isinstance(group, str):
        if group == "tensor":
            return x.reshape(1, -1)
        if group == "row":
            return x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
        raise ValueError(f"group: expected 'tensor', 'row' or a positive integer, got {group!r}")
    size = positive_int(group, "group")
    if x.ndim == 0 or x.shape[-1] % size:
        raise ValueError(f"group: expected a size that divides the last axis of x {x.shape}, got {size}")
    return x.reshape(-1, size)


def zero_point_params(blocks: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale [n, 1], zero point [n, 1]) of every row of blocks [n, g], with min <= 0 <= max."""
    lo = np.minimum(blocks.min(axis=1, keepdims=True), 0)
    hi = np.maximum(blocks.max(axis=1, keepdims=True), 0)
    scale = (hi - lo) / blocks.dtype.type((1 << bits) - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        zero = np.where(scale > 0, np.rint(-lo / scale), 0)
    return scale, zero


def round_to_grid(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """Zero-point codes round(x / s) + z clipped to 0 .. 2^b - 1, as float (0 where s is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, np.rint(x / scale), 0)
    return np.clip(q + zero, 0, (1 << bits) - 1)


@dataclass(frozen=True)
class UniformQuantized:
    """Integer codes with one float32 scale (and zero point) per group; `.dequantize()` gives x_hat."""

    q: np.ndarray  # int codes [n_groups, group_len] (int8 for absmax, uint8 for zero-point)
    scale: np.ndarray  # float32 [n_groups, 1]
    zero_point: np.ndarray | None  # uint8 [n_groups, 1], or None (symmetric)
    bits: int
    shape: tuple

    def dequantize(self) -> np.ndarray:
        q = self.q.astype(np.float32)
        if self.zero_point is not None:
            q = q - self.zero_point.astype(np.float32)
        return (self.scale * q).reshape(self.shape)  # x_hat = s (q - z)

    @property
    def bits_per_weight(self) -> float:
        per_group = SCALE_BITS + (self.bits if self.zero_point is not None else 0)
        return self.bits + per_group * self.scale.size / self.q.size


def _check_bits(bits) -> int:
    bits = positive_int(bits, "bits")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits: expected 2..8, got {bits}")
    return bits


def quantize_absmax(x, *, bits: int = 8, group="row") -> UniformQuantized:
    """Symmetric quantisation: s = max|x| / (2^(b-1) - 1) per group, q = round(x / s)."""
    bits = _check_bits(bits)
    x = finite_array(x, "x")
    blocks = groups(x, group)  # [n_groups, group_len]
    qmax = blocks.dtype.type((1 << (bits - 1)) - 1)
    amax = np.abs(blocks).max(axis=1, keepdims=True)  # [n_groups, 1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inverse_scale = (blocks.dtype.type(1) / amax) * qmax  # qmax / max|x|, in bitsandbytes' float order
        scaled = np.where(np.isfinite(inverse_scale), blocks * inverse_scale, blocks / (amax / qmax))  # 1/max|x|
        q = np.where(amax > 0, np.rint(scaled), 0)  # overflows for a subnormal max|x|: divide instead
    return UniformQuantized(np.clip(q, -qmax, qmax).astype(np.int8), amax / qmax, None, bits, x.shape)


def quantize_zero_point(x, *, bits: int = 8, group="row") -> UniformQuantized:
    """Asymmetric quantisation: s = (max - min) / (2^b - 1), z = round(-min / s), q = round(x / s) + z."""
    bits = _check_bits(bits)
    x = finite_array(x, "x")
    blocks = groups(x, group)  # [n_groups, group_len]
    scale, zero = zero_point_params(blocks, bits)
    q = round_to_grid(blocks, scale, zero, bits)
    return UniformQuantized(q.astype(np.uint8), scale.astype(np.float32), zero.astype(np.uint8), bits, x.shape)


def round_to_nearest(weight, *, bits: int = 4, group_size: int = 128) -> tuple[np.ndarray, float]:
    """Zero-point round-to-nearest of a matrix [out, in] in groups of `group_size` along each row, the
    last group of a row shorter when group_size does not divide `in` (as GPTQ's and AWQ's groups are):
    (dequantised values, bits per weight). The baseline that GPTQ and AWQ are measured against."""
    weight = finite_array(weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"weight: expected a matrix [out, in], got shape {weight.shape}")
    group_size = positive_int(group_size, "group_size")
    full = weight.shape[1] - weight.shape[1] % group_size
    parts = [quantize_zero_point(weight[:, :full], bits=bits, group=group_size)] if full else []
    if full < weight.shape[1]:
        parts.append(quantize_zero_point(weight[:, full:], bits=bits, group="row"))
    n_groups = sum(p.scale.size for p in parts)
    bits_per_weight = bits + (SCALE_BITS + bits) * n_groups / weight.size
    return np.concatenate([p.dequantize() for p in parts], axis=1), bits_per_weight
