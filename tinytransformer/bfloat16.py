"""bfloat16 as uint16 bit patterns (NumPy has no bfloat16 dtype).

bfloat16 is the top half of a float32: 1 sign bit, the same 8 exponent bits, and
7 of the 23 mantissa bits. So the range of float32 with about 3 significant
decimal digits, and the conversion is a shift:

    value = float32 whose bits are (bits << 16)
    bits  = the float32's bits >> 16, after rounding the low 16 bits to nearest, ties to even

GGUF files store BF16 tensors this way, and the CUDA kernels take bf16 tensors as
uint16 arrays of these patterns.

    >>> import numpy as np
    >>> to_bfloat16_bits(np.array([1.0, 3.0, 1 / 3])).tolist()
    [16256, 16448, 16043]
    >>> from_bfloat16_bits(to_bfloat16_bits(np.array([1.0, 3.0, 1 / 3]))).tolist()
    [1.0, 3.0, 0.333984375]

Does not handle: bfloat16 arithmetic (decode to float32 first), signalling NaN
payloads (every NaN becomes the quiet NaN 0x7FC0).
"""
from __future__ import annotations

import numpy as np

__all__ = ["to_bfloat16_bits", "from_bfloat16_bits"]


def to_bfloat16_bits(x) -> np.ndarray:
    """Round float values to bfloat16 (nearest, ties to even) and return the bits as uint16."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round the low 16 bits away, ties to even
    rounded = np.where(np.isnan(x), 0x7FC0, rounded)  # keep NaN a NaN
    return rounded.astype(np.uint16)


def from_bfloat16_bits(bits) -> np.ndarray:
    """uint16 bfloat16 bit patterns (either byte order) -> float32 values (exact)."""
    bits = np.asarray(bits)
    if bits.dtype.kind != "u" or bits.dtype.itemsize != 2:
        raise ValueError(f"bits: expected a uint16 array of bfloat16 bit patterns, got dtype {bits.dtype}")
    return (bits.astype(np.uint32) << 16).view(np.float32)
