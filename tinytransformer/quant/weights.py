"""Weights kept quantised: a GGUF block tensor that dequantises a few rows at a time as it multiplies.

Dequantising a 4-bit model to float32 at load multiplies its memory by about
seven (98 MB of Q4_1/Q8_0 blocks become 540 MB for SmolLM2-135M). Kept in its
blocks, a weight W [out, in] is stored as raw bytes, row after row (a row is a
whole number of blocks), and x W^T is computed in chunks of rows:

    for rows r0..r1 (about `chunk_bytes` of float32 at a time):
        W_chunk = dequantize(bytes of rows r0..r1)        [r1 - r0, in]
        y[..., r0:r1] = x @ W_chunk^T

so the float32 copy never exists whole; the price is dequantising every weight
again at every forward pass (decoding gets slower; prefill amortises it over
the tokens of the prompt). `QuantizedWeight` has `.shape` and `.linear(x)` (and
`.rows(ids)` for an embedding table), which is all `layers.linear` and
`layers.embedding` ask of a weight, so it drops into the model's parameters.

    >>> import numpy as np
    >>> from tinytransformer import gguf
    >>> w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    >>> q = QuantizedWeight.from_float(w, gguf.Q8_0)
    >>> q.shape, q.nbytes, q.type_name                      # 8 rows x 2 blocks x 34 bytes
    ((8, 64), 544, 'Q8_0')
    >>> x = np.ones((3, 64), np.float32)
    >>> bool(np.allclose(q.linear(x), x @ q.dequantize().T, rtol=1e-5, atol=1e-5))
    True
    >>> q.rows(np.array([2, 0])).shape
    (2, 64)

Does not handle: multiplying in the integer domain (each chunk is dequantised
to float32 and multiplied by BLAS), tensors of more than two axes.
"""
from __future__ import annotations

import numpy as np

from tinytransformer import gguf

__all__ = ["QuantizedWeight", "CHUNK_BYTES"]

CHUNK_BYTES = 1 << 21  # float32 bytes dequantised at a time (2 MiB: stays in cache)


class QuantizedWeight:
    """A matrix [out, in] stored as the raw blocks of a ggml type (`gguf.GGML_TYPES`)."""

    def __init__(self, raw, kind: int, shape, *, chunk_bytes: int = CHUNK_BYTES):
        if kind not in gguf.GGML_TYPES or kind in (gguf.F32, gguf.F16, gguf.BF16):
            raise ValueError(f"kind: expected a quantised ggml type id, got {kind}")
        shape = tuple(int(s) for s in shape)
        block, size = gguf.GGML_TYPES[kind].block_size, gguf.GGML_TYPES[kind].type_size
        if len(shape) != 2 or shape[1] % block:
            raise ValueError(f"shape: expected [out, in] with in a multiple of {block}, got {shape}")
        raw = np.ascontiguousarray(np.asarray(raw, dtype=np.uint8)).reshape(-1)
        self.row_bytes = shape[1] // block * size
        if raw.size != shape[0] * self.row_bytes:
            raise ValueError(f"raw: expected {shape[0] * self.row_bytes} bytes for {gguf.GGML_TYPES[kind].name} "
                             f"{shape}, got {raw.size}")
        self.raw, self.kind, self.shape = raw.reshape(shape[0], self.row_bytes), kind, shape
        self.rows_per_chunk = max(1, chunk_bytes // (4 * shape[1]))

    @classmethod
    def from_float(cls, weight, kind: int, **options) -> "QuantizedWeight":
        """Quantise a float matrix [out, in] to ggml type `kind` (`gguf.quantize`, byte-exact with llama.cpp)."""
        weight = np.asarray(weight, dtype=np.float32)
        return cls(gguf.quantize(weight, kind), kind, weight.shape, **options)

    @property
    def type_name(self) -> str:
        return gguf.GGML_TYPES[self.kind].name

    @property
    def dtype(self) -> np.dtype:
        """What it computes in (float32), so code that asks a weight for its dtype gets an answer."""
        return np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.raw.nbytes / (self.shape[0] * self.shape[1])

    def dequantize(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start..stop (all by default) as float32 [stop - start, in]."""
        rows = self.raw[start:stop]
        return gguf.dequantize(rows, self.kind, (rows.shape[0], self.shape[1]))

    def linear(self, x) -> np.ndarray:
        """x [..., in] -> x W^T [..., out], one chunk of rows of W at a time."""
        x = np.asarray(x)
        if x.shape[-1] != self.shape[1]:
            raise ValueError(f"x: expected a last axis of {self.shape[1]}, got shape {x.shape}")
        out = np.empty(x.shape[:-1] + (self.shape[0],), dtype=np.result_type(x.dtype, np.float32))
        for start in range(0, self.shape[0], self.rows_per_chunk):
            stop = min(start + self.rows_per_chunk, self.shape[0])
            out[..., start:stop] = x @ self.dequantize(start, stop).T  # [..., in] @ [in, rows]
        return out

    def rows(self, ids) -> np.ndarray:
        """The rows `ids` (any shape) dequantised: [..., in], as an embedding lookup."""
        ids = np.asarray(ids)
        unique, inverse = np.unique(ids, return_inverse=True)
        table = gguf.dequantize(self.raw[unique], self.kind, (unique.size, self.shape[1]))
        return table[inverse.reshape(ids.shape)]

    def take_rows(self, index) -> "QuantizedWeight":
        """A new weight made of the rows `index` (rows are whole blocks, so bytes move, nothing is requantised)."""
        return QuantizedWeight(self.raw[np.asarray(index)], self.kind, (len(index), self.shape[1]))

    def all_finite(self) -> bool:
        """Whether every value dequantises to a finite float (checked chunk by chunk)."""
        return all(np.isfinite(self.dequantize(start, start + self.rows_per_chunk)).all()
                   for start in range(0, self.shape[0], self.rows_per_chunk))

    def __repr__(self) -> str:
        return f"QuantizedWeight({self.type_name}, shape={self.shape}, {self.nbytes} bytes)"
