"""Tensor data by ggml type: raw bytes <-> float32 values, for every type the package reads and writes.

A GGUF tensor's bytes mean what its ggml type says. Three types are plain floats,
decoded here; the block types are taught in modules of their own, and this module
only maps type ids to them:

    F32    4-byte little-endian floats, as they are
    F16    2-byte IEEE half floats
    BF16   2-byte bfloat16, the top 16 bits of a float32: x = bits << 16
    Q8_0, Q4_0, Q4_1, Q5_0, Q5_1   blocks of 32 (tinytransformer.gguf.legacy_quants)
    Q4_K, Q5_K, Q6_K               super-blocks of 256 (tinytransformer.gguf.kquants)

    >>> import numpy as np
    >>> raw = quantize(np.array([[1.0, -2.5]], np.float32), F16)
    >>> raw.size, dequantize(raw, F16, (1, 2)).tolist()
    (4, [[1.0, -2.5]])

Shapes: `quantize` takes blocks along the last axis and returns flat bytes;
`dequantize` returns flat values, or the NumPy `shape` it is given.

Does not handle: the types in `format.UNSUPPORTED_TYPES` (Q8_1, Q2_K, Q3_K, the
integer and F64 tensors) and the i-quants.
"""
from __future__ import annotations

import numpy as np

from tinytransformer.bfloat16 import from_bfloat16_bits, to_bfloat16_bits
from tinytransformer.gguf import kquants, legacy_quants
from tinytransformer.gguf.format import BF16, BLOCK_TYPES, F16, F32, GGML_TYPES, GGUFError, ggml_type

BLOCK_QUANTIZERS = {**legacy_quants.QUANTIZERS, **kquants.QUANTIZERS}  # type name -> quantiser
BLOCK_DEQUANTIZERS = {**legacy_quants.DEQUANTIZERS, **kquants.DEQUANTIZERS}  # type name -> dequantiser


def dequantize_f32(raw: np.ndarray) -> np.ndarray:
    """F32: 4-byte little-endian floats, stored as they are."""
    return raw.view("<f4").astype(np.float32)


def dequantize_f16(raw: np.ndarray) -> np.ndarray:
    """F16: 2-byte IEEE half floats."""
    return raw.view("<f2").astype(np.float32)


def dequantize_bf16(raw: np.ndarray) -> np.ndarray:
    """BF16: 2-byte bfloat16, the top 16 bits of a float32; x = bits << 16."""
    return from_bfloat16_bits(raw.view("<u2"))


DEQUANTIZERS = {F32: dequantize_f32, F16: dequantize_f16, BF16: dequantize_bf16,
                **{kind: BLOCK_DEQUANTIZERS[GGML_TYPES[kind].name] for kind in BLOCK_TYPES}}


def dequantize(raw, kind: int, shape=None) -> np.ndarray:
    """Raw bytes (bytes, or a uint8 array) of ggml type `kind` -> float32 array (flat, or in NumPy `shape`)."""
    kind = ggml_type(kind, "kind", GGUFError)
    raw = np.frombuffer(raw, np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else np.asarray(raw)
    if raw.dtype != np.uint8:
        raise GGUFError(f"raw: expected bytes or a uint8 array, got dtype {raw.dtype}")
    raw = np.ascontiguousarray(raw).reshape(-1)
    if raw.size % GGML_TYPES[kind].type_size:
        raise GGUFError(f"{GGML_TYPES[kind].name} data of {raw.size} bytes is not a whole "
                        f"number of {GGML_TYPES[kind].type_size}-byte blocks")
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN scales give inf/NaN, as in ggml
        x = DEQUANTIZERS[kind](raw)
    if shape is None:
        return x
    try:
        return x.reshape(shape)
    except (TypeError, ValueError):
        raise GGUFError(f"shape: expected a shape of {x.size} values, got {shape!r}") from None


def quantize(x: np.ndarray, kind: int) -> np.ndarray:
    """float array -> raw bytes (uint8) of ggml type `kind`, blocks along the last axis.

    The block types give exactly the bytes of llama.cpp's reference quantisers
    (`tinytransformer.gguf.legacy_quants`, `tinytransformer.gguf.kquants`).
    """
    kind = ggml_type(kind, "kind")
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"x: expected a real-valued array, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if kind == F32:
        return x.astype("<f4").reshape(-1).view(np.uint8)
    if kind == F16:
        return x.astype("<f2").reshape(-1).view(np.uint8)
    if kind == BF16:  # round to nearest even on the dropped 16 bits
        return to_bfloat16_bits(x.reshape(-1)).astype("<u2").view(np.uint8)
    return BLOCK_QUANTIZERS[GGML_TYPES[kind].name](x)  # every other type is quantised in blocks
