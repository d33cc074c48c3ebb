"""The GGUF file layout: its constants, metadata value types, ggml tensor types and tensor entries.

GGUF is the single-file format of llama.cpp (spec: ggml/docs/gguf.md in the ggml
repository). A file is four parts, all little-endian:

    header    magic b"GGUF", version (uint32: 2 or 3), tensor_count (uint64),
              metadata_kv_count (uint64)
    metadata  metadata_kv_count x (key: string, value_type: uint32, value)
    infos     tensor_count x (name: string, n_dims: uint32, dims: uint64[n_dims],
              ggml_type: uint32, offset: uint64)
    data      starts at the first multiple of general.alignment (default 32) after
              the infos; each tensor's offset counts from this start

A string is a uint64 byte length and UTF-8 bytes (no terminator); an array is
(element_type: uint32, count: uint64, elements). Dims are listed fastest-varying
first (ggml's ne[0], ne[1], ...), the reverse of NumPy's C order:

    TensorInfo.shape = tuple(reversed(TensorInfo.dims))
    TensorInfo.nbytes = n_elements / block_size * type_size      (GGML_TYPES[type])

    >>> info = TensorInfo("w", dims=(64, 3), type=Q8_0, offset=0)
    >>> info.shape, info.type_name, info.nbytes                  # 3 rows of 2 blocks of 34 bytes
    ((3, 64), 'Q8_0', 204)

The reader is `tinytransformer.gguf.reader`, the writer `tinytransformer.gguf.writer`;
the bytes of each tensor type are `tinytransformer.gguf.codecs`.

Does not handle: GGUF version 1 (pre-2023 files with 32-bit counts), big-endian
files, split (multi-file) models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytransformer._validate import is_integer

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # arrays of arrays are legal; deeper nesting is refused
MAX_ELEMENTS = 2**63 - 1  # ggml's int64 element count
MAX_NESTED_ARRAYS = 2**16  # arrays inside arrays, per file (real files have none; each costs ~100 bytes)


class GGUFError(ValueError):
    """A GGUF file is malformed, truncated, or uses something we do not support."""


# --- metadata value types ------------------------------------------------------------
# value_type id -> (name, struct format or None for the variable-length ones)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    UINT8: ("uint8", "<B"), INT8: ("int8", "<b"), UINT16: ("uint16", "<H"),
    INT16: ("int16", "<h"), UINT32: ("uint32", "<I"), INT32: ("int32", "<i"),
    FLOAT32: ("float32", "<f"), BOOL: ("bool", "<?"), STRING: ("string", None),
    ARRAY: ("array", None), UINT64: ("uint64", "<Q"), INT64: ("int64", "<q"),
    FLOAT64: ("float64", "<d"),
}
# numeric value types as NumPy dtypes, for reading and writing whole arrays at once
VALUE_DTYPES = {t: np.dtype(fmt) for t, (_, fmt) in VALUE_TYPES.items() if fmt and t != BOOL}

# --- tensor (ggml) types ---------------------------------------------------------------
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30


@dataclass(frozen=True)
class GGMLType:
    name: str
    block_size: int  # values per block
    type_size: int  # bytes per block


GGML_TYPES: dict[int, GGMLType] = {
    F32: GGMLType("F32", 1, 4),
    F16: GGMLType("F16", 1, 2),
    Q4_0: GGMLType("Q4_0", 32, 18),
    Q4_1: GGMLType("Q4_1", 32, 20),
    Q5_0: GGMLType("Q5_0", 32, 22),
    Q5_1: GGMLType("Q5_1", 32, 24),
    Q8_0: GGMLType("Q8_0", 32, 34),
    Q4_K: GGMLType("Q4_K", 256, 144),
    Q5_K: GGMLType("Q5_K", 256, 176),
    Q6_K: GGMLType("Q6_K", 256, 210),
    BF16: GGMLType("BF16", 1, 2),
}
BLOCK_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)  # quantised in blocks: legacy_quants, kquants
# Types we recognise by id but cannot dequantise (named in the reader's error message).
UNSUPPORTED_TYPES = {9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 15: "Q8_K", 24: "I8", 25: "I16", 26: "I32",
                     27: "I64", 28: "F64"}


def ggml_type(kind, what: str, error=ValueError) -> int:
    """kind as an int, or `error` unless it is the id of a type we can read and write (a bool is not)."""
    if not is_integer(kind) or int(kind) not in GGML_TYPES:
        raise error(f"{what}: expected a ggml type id, one of "
                    f"{', '.join(f'{k} ({t.name})' for k, t in GGML_TYPES.items())}; got {kind!r}")
    return int(kind)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the file: name, dims (file order), type, data offset."""

    name: str
    dims: tuple[int, ...]  # ggml order: dims[0] varies fastest
    type: int  # ggml type id (F32, F16, Q4_0, ...)
    offset: int  # bytes from the start of the data section

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy (C-order) shape: the file's dims reversed."""
        return tuple(reversed(self.dims))

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type].name

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        kind = GGML_TYPES[self.type]
        return self.n_elements // kind.block_size * kind.type_size
