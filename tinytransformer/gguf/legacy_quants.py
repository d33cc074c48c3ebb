"""GGUF's original block formats: Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1, byte for byte as llama.cpp writes them.

ggml (the tensor library under llama.cpp) quantises a weight row in blocks of
32 consecutive values. Each block stores one float16 scale `d` (and for the
"_1" types an offset `m`) followed by the packed integers, so a block is
self-contained and a matrix row can be dequantised one block at a time:

    Q8_0   x = d * q            q in -127..127   d = max|x| / 127          8.5 bits per weight
    Q4_0   x = d * (q - 8)      q in 0..15       d = x_maxabs / -8         4.5
    Q4_1   x = d * q + m        q in 0..15       d = (max - min) / 15,     5.0
                                                 m = min
    Q5_0   x = d * (q - 16)     q in 0..31       d = x_maxabs / -16        5.5
    Q5_1   x = d * q + m        q in 0..31       d = (max - min) / 31,     6.0
                                                 m = min

(`x_maxabs` is the value of largest magnitude with its sign: Q4_0 and Q5_0 map
it exactly onto q = 0, the end of the range that has one more step.)

Block layouts, byte offsets on top, one block of 32 weights x_0 .. x_31:

    Q8_0 (34 bytes)   0     2                                         34
                      | d   | q_0 q_1 ... q_31  (int8 each)           |

    Q4_0 (18 bytes)   0     2                          18
                      | d   | qs[16]                   |
    Q4_1 (20 bytes)   0     2     4                          20
                      | d   | m   | qs[16]                   |
        qs[j] = q_j | q_{j+16} << 4: byte j holds value j in its low nibble
        and value j+16 in its high nibble (not neighbours!).

    Q5_0 (22 bytes)   0     2          6                          22
                      | d   | qh (u32) | qs[16]  (low 4 bits, as Q4_0)  |
    Q5_1 (24 bytes)   0     2     4          8                          24
                      | d   | m   | qh (u32) | qs[16]                   |
        bit i of the little-endian uint32 qh is bit 4 (the fifth bit) of q_i.

Rounding, which decides whether two implementations agree byte for byte:
Q8_0 rounds x/d half away from zero (C `roundf`); Q4_0, Q4_1, Q5_0 and Q5_1
truncate x/d + 0.5 (+ the offset), so ties round up; the reciprocal 1/d is
taken in float32 before d is rounded to float16, and dequantisation uses the
float16 d. These match the reference quantisers of ggml (`quantize_row_q8_0_ref`
and friends in ggml-quants.c) and the `gguf` Python package.

    >>> import numpy as np
    >>> x = np.linspace(-1, 1, 32, dtype=np.float32)
    >>> raw = quantize_q4_0(x)
    >>> raw.size, raw.size * 8 / x.size                 # bytes, bits per weight
    (18, 4.5)
    >>> bool(np.abs(dequantize_q4_0(raw) - x).max() <= 1 / 8)   # within one step d = 1/8
    True

The k-quants (Q4_K, Q5_K, Q6_K: super-blocks of 256 with quantised scales)
are in `tinytransformer.gguf.kquants`; `tinytransformer.gguf.codecs` maps ggml type ids to both.

Does not handle: Q8_1 (an internal type for activations), the i-quants,
importance-weighted quantisation (llama.cpp's imatrix), or rows whose length
is not a multiple of 32.
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import finite_array

__all__ = ["BLOCK", "quantize_q8_0", "dequantize_q8_0", "quantize_q4_0", "dequantize_q4_0",
           "quantize_q4_1", "dequantize_q4_1", "quantize_q5_0", "dequantize_q5_0", "quantize_q5_1",
           "dequantize_q5_1",
           "TYPE_SIZES", "QUANTIZERS", "DEQUANTIZERS"]

BLOCK = 32  # values per block
TYPE_SIZES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24}  # bytes per block


# --- shared pieces: blocks, float16 fields, nibbles ------------------------------------

def as_blocks(x, block: int, name: str = "x") -> np.ndarray:
    """Finite float32 values -> [n_blocks, block]; the last axis must be a whole number of blocks."""
    x = finite_array(x, name)
    if x.ndim == 0 or x.shape[-1] % block:
        raise ValueError(f"{name}: expected a last axis that is a multiple of {block}, got shape {x.shape}")
    return x.reshape(-1, block)


def raw_blocks(raw, type_size: int, name: str) -> np.ndarray:
    """Bytes -> [n_blocks, type_size] uint8 (a view when it can be)."""
    raw = np.ascontiguousarray(np.asarray(raw, dtype=np.uint8)).reshape(-1)
    if raw.size % type_size:
        raise ValueError(f"{name} data: expected a whole number of {type_size}-byte blocks, got {raw.size} bytes")
    return raw.reshape(-1, type_size)


def f16_field(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 stored at byte `start` of every block, as float32 [n_blocks, 1]."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view("<f2").astype(np.float32)


def f16_bytes(values: np.ndarray) -> np.ndarray:
    """float32 [n, 1] -> its float16 (round to nearest even) as bytes [n, 2]."""
    return np.ascontiguousarray(values.astype("<f2")).view(np.uint8)


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., k] bytes -> [..., 2k] 4-bit values: the k low nibbles first, then the k high ones."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """[..., 2k] values 0..15 -> [..., k] bytes, value j low and value j+k high (inverse of unpack)."""
    half = q.shape[-1] // 2
    return (q[..., :half] | (q[..., half:] << 4)).astype(np.uint8)


def reciprocal(d: np.ndarray) -> np.ndarray:
    """1/d in float32, and 0 where d is 0 or 1/d overflows (an all-zero block stores zeros).

    Blocks with max|x| below ~1e-36 overflow 1/d; their float16 scale is 0 anyway, and ggml's C
    code leaves their q undefined (it converts infinity to an integer), so we store q = 0 there.
    """
    safe = np.where(d == 0, np.float32(1), d)
    with np.errstate(over="ignore"):
        inverse = np.float32(1) / safe
    return np.where((d == 0) | ~np.isfinite(inverse), np.float32(0), inverse).astype(np.float32)


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf: to the nearest integer, ties away from zero (np.rint would round ties to even).

    floor(|v| + 0.5) would be wrong just below one half: 0.49999997 + 0.5 rounds up to 1.0 in
    float32. Splitting |v| into whole and fraction parts is exact.
    """
    a = np.abs(v)
    whole = np.floor(a)
    return np.sign(v) * (whole + np.floor(2 * (a - whole)))


def signed_absmax(blocks: np.ndarray) -> np.ndarray:
    """The value of largest magnitude in each block, sign kept (the first one on ties): [n, 1]."""
    index = np.abs(blocks).argmax(axis=1)[:, None]
    return np.take_along_axis(blocks, index, axis=1)


# --- Q8_0 --------------------------------------------------------------------------------

def quantize_q8_0(x) -> np.ndarray:
    """float values (last axis a multiple of 32) -> Q8_0 bytes: d = max|x|/127, q = roundf(x/d)."""
    blocks = as_blocks(x, BLOCK)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)  # [n, 1]
    q = round_half_away(blocks * reciprocal(d)).astype(np.int8)  # [n, 32] in -127..127
    return np.concatenate([f16_bytes(d), q.view(np.uint8)], axis=1).reshape(-1)


def dequantize_q8_0(raw) -> np.ndarray:
    """Q8_0 bytes -> float32 values: x = d * q."""
    blocks = raw_blocks(raw, TYPE_SIZES["Q8_0"], "Q8_0")
    d = f16_field(blocks, 0)  # [n, 1]
    q = blocks[:, 2:].view(np.int8).astype(np.float32)  # [n, 32]
    return (q * d).reshape(-1)


# --- Q4_0 and Q5_0: a signed scale, an offset of half the range --------------------------

def _quantize_offset_binary(blocks: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """d = x_maxabs / -2^(bits-1) and q = trunc(x/d + 2^(bits-1) + 0.5) clipped to 0..2^bits - 1."""
    half = 1 << (bits - 1)
    d = signed_absmax(blocks) / np.float32(-half)  # [n, 1]: x_maxabs lands on q = 0
    q = np.trunc(blocks * reciprocal(d) + np.float32(half + 0.5))  # [n, 32]
    return d, np.clip(q, 0, 2 * half - 1).astype(np.uint8)


def quantize_q4_0(x) -> np.ndarray:
    """float values -> Q4_0 bytes: d = x_maxabs / -8, q = trunc(x/d + 8.5) in 0..15."""
    d, q = _quantize_offset_binary(as_blocks(x, BLOCK), 4)
    return np.concatenate([f16_bytes(d), pack_nibbles(q)], axis=1).reshape(-1)


def _offset_binary_values(blocks: np.ndarray, q: np.ndarray, half: int) -> np.ndarray:
    """x = d * (q - half) for codes q [n, 32] (uint8) and the float16 d at the start of each block."""
    signed = q.astype(np.int8) - np.int8(half)  # [n, 32] in -half..half-1
    return (f16_field(blocks, 0) * signed.astype(np.float32)).reshape(-1)


def dequantize_q4_0(raw) -> np.ndarray:
    """Q4_0 bytes -> float32 values: x = d * (q - 8)."""
    blocks = raw_blocks(raw, TYPE_SIZES["Q4_0"], "Q4_0")
    return _offset_binary_values(blocks, unpack_nibbles(blocks[:, 2:]), 8)


def _pack_fifth_bits(q: np.ndarray) -> np.ndarray:
    """[n, 32] 5-bit values -> [n, 4] bytes of the uint32 qh (bit i = q_i's fifth bit) and [n, 16] nibbles."""
    high = ((q >> 4) & 1).astype(np.uint32)  # [n, 32]
    qh = (high << np.arange(BLOCK, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return np.concatenate([qh.astype("<u4")[:, None].view(np.uint8), pack_nibbles(q & 0x0F)], axis=1)


def _unpack_fifth_bits(qh_and_qs: np.ndarray) -> np.ndarray:
    """[n, 4 + 16] bytes (qh, qs) -> [n, 32] 5-bit values q = low nibble | fifth bit << 4 (uint8)."""
    qh = np.ascontiguousarray(qh_and_qs[:, :4]).view("<u4")  # [n, 1]
    high = ((qh >> np.arange(BLOCK, dtype=np.uint32)) & 1).astype(np.uint8)  # [n, 32]
    return unpack_nibbles(qh_and_qs[:, 4:]) | (high << 4)


def quantize_q5_0(x) -> np.ndarray:
    """float values -> Q5_0 bytes: d = x_maxabs / -16, q = trunc(x/d + 16.5) in 0..31."""
    d, q = _quantize_offset_binary(as_blocks(x, BLOCK), 5)
    return np.concatenate([f16_bytes(d), _pack_fifth_bits(q)], axis=1).reshape(-1)


def dequantize_q5_0(raw) -> np.ndarray:
    """Q5_0 bytes -> float32 values: x = d * (q - 16), q = low nibble | fifth bit << 4."""
    blocks = raw_blocks(raw, TYPE_SIZES["Q5_0"], "Q5_0")
    return _offset_binary_values(blocks, _unpack_fifth_bits(blocks[:, 2:]), 16)


# --- Q4_1 and Q5_1: scale and minimum ----------------------------------------------------

def _quantize_min_scale(blocks: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d = (max - min) / (2^bits - 1), m = min, q = trunc((x - min)/d + 0.5) clipped to 0..2^bits - 1."""
    top = (1 << bits) - 1
    lo = blocks.min(axis=1, keepdims=True)  # [n, 1]
    d = (blocks.max(axis=1, keepdims=True) - lo) / np.float32(top)
    q = np.clip(np.trunc((blocks - lo) * reciprocal(d) + np.float32(0.5)), 0, top).astype(np.uint8)
    return d, lo, q


def quantize_q4_1(x) -> np.ndarray:
    """float values -> Q4_1 bytes: d = (max - min)/15, m = min, q = trunc((x - min)/d + 0.5)."""
    d, lo, q = _quantize_min_scale(as_blocks(x, BLOCK), 4)
    return np.concatenate([f16_bytes(d), f16_bytes(lo), pack_nibbles(q)], axis=1).reshape(-1)


def quantize_q5_1(x) -> np.ndarray:
    """float values -> Q5_1 bytes: d = (max - min)/31, m = min, q = trunc((x - min)/d + 0.5)."""
    d, lo, q = _quantize_min_scale(as_blocks(x, BLOCK), 5)
    return np.concatenate([f16_bytes(d), f16_bytes(lo), _pack_fifth_bits(q)], axis=1).reshape(-1)


def dequantize_q5_1(raw) -> np.ndarray:
    """Q5_1 bytes -> float32 values: x = d * q + m."""
    blocks = raw_blocks(raw, TYPE_SIZES["Q5_1"], "Q5_1")
    d, m = f16_field(blocks, 0), f16_field(blocks, 2)  # [n, 1] each
    q = _unpack_fifth_bits(blocks[:, 4:]).astype(np.float32)  # [n, 32] in 0..31
    return (d * q + m).reshape(-1)


def dequantize_q4_1(raw) -> np.ndarray:
    """Q4_1 bytes -> float32 values: x = d * q + m."""
    blocks = raw_blocks(raw, TYPE_SIZES["Q4_1"], "Q4_1")
    d, m = f16_field(blocks, 0), f16_field(blocks, 2)  # [n, 1] each
    q = unpack_nibbles(blocks[:, 4:]).astype(np.float32)  # [n, 32] in 0..15
    return (d * q + m).reshape(-1)


QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1, "Q5_0": quantize_q5_0,
              "Q5_1": quantize_q5_1}
DEQUANTIZERS = {"Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1,
                "Q5_0": dequantize_q5_0, "Q5_1": dequantize_q5_1}
