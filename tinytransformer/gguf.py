"""The GGUF file format: a reader, dequantisation, and a small writer.

GGUF is the single-file format of llama.cpp (spec: ggml/docs/gguf.md in the ggml
repository): a header, metadata as typed key-value pairs, one info entry per
tensor (name, dims, ggml type, offset), then the tensor data, aligned. Dims are
listed fastest-varying first (ggml's ne[0], ne[1], ...), the reverse of NumPy's
C order, so a Llama projection stored with dims [in, out] is the array [out, in]:

    TensorInfo.shape = tuple(reversed(TensorInfo.dims))
    byte offset of a tensor = data start (a multiple of general.alignment) + its offset

    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.gguf")
    >>> write_gguf(path, {"general.name": "tiny", "n": np.uint32(3)},
    ...            {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    >>> f = GGUFFile(path)
    >>> f.metadata["general.name"], f.metadata["n"], f.tensors["w"].dims
    ('tiny', 3, (3, 2))
    >>> f.tensor("w").tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]

The byte layout and how untrusted files are read: docs/08_pretrained_model.md and
`_Cursor`; block layouts: tinytransformer.quant.ggml and tinytransformer.quant.kquants.

Does not handle: GGUF version 1 (pre-2023 files with 32-bit counts), the
i-quants (IQ*), Q2_K, Q3_K, big-endian files, and split (multi-file) models.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytransformer._files import atomic_writer, open_regular_file
from tinytransformer.bfloat16 import from_bfloat16_bits, to_bfloat16_bits
from tinytransformer.quant.ggml import DEQUANTIZERS as _LEGACY_DEQUANTIZERS
from tinytransformer.quant.ggml import QUANTIZERS as _LEGACY_QUANTIZERS
from tinytransformer.quant.kquants import DEQUANTIZERS as _K_DEQUANTIZERS
from tinytransformer.quant.kquants import QUANTIZERS as _K_QUANTIZERS

_BLOCK_QUANTIZERS = {**_LEGACY_QUANTIZERS, **_K_QUANTIZERS}
_BLOCK_DEQUANTIZERS = {**_LEGACY_DEQUANTIZERS, **_K_DEQUANTIZERS}

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
# numeric value types as NumPy dtypes, for reading whole arrays at once
_VALUE_DTYPES = {t: np.dtype(fmt) for t, (_, fmt) in VALUE_TYPES.items() if fmt and t != BOOL}

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
_BLOCK_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)  # quantised in blocks by tinytransformer.quant
# Types we recognise by id but cannot dequantise (named in the error message).
_KNOWN_UNSUPPORTED = {9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 15: "Q8_K", 24: "I8", 25: "I16", 26: "I32",
                      27: "I64", 28: "F64"}


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


_STRUCTS = {fmt: struct.Struct(fmt) for _, fmt in VALUE_TYPES.values() if fmt}
_U64 = _STRUCTS["<Q"]
_DIMS_TYPE_OFFSET = {n: struct.Struct(f"<{n}QIQ") for n in range(1, MAX_DIMS + 1)}  # after a tensor's n_dims


class _Cursor:
    """Reads little-endian values from a buffer, checking each read against its end.

    Files are untrusted: every count, length and offset is checked against the bytes
    that remain before anything is allocated, so a corrupt file raises GGUFError
    (naming the file and the problem) rather than crashing, hanging or allocating
    memory it does not contain. Metadata arrays of numbers and bools become NumPy
    arrays (as large as in the file, not a Python list eight times larger), so
    metadata takes at most about ten times the file's bytes in Python objects, except
    arrays nested in arrays (~20 times), of which a file may hold at most
    MAX_NESTED_ARRAYS.
    """

    def __init__(self, buffer, path: str):
        self.buffer = buffer
        self.size = len(buffer)
        self.pos = 0
        self.path = path
        self.nested_arrays = 0  # arrays read as elements of arrays, in the whole file

    def error(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {problem}")

    def take(self, n: int, what: str) -> int:
        """Reserve n bytes at the cursor and return their start position."""
        if n < 0 or self.pos + n > self.size:
            raise self.error(f"truncated file: {what} needs {n} bytes at offset {self.pos}, "
                             f"but only {self.size - self.pos} remain")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str):
        unpacker = _STRUCTS[fmt]
        start = self.take(unpacker.size, what)
        return unpacker.unpack_from(self.buffer, start)[0]

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def count(self, what: str, min_item_bytes: int) -> int:
        """A uint64 count of items that must each fit in the bytes that remain."""
        n = self.u64(what)
        if n * min_item_bytes > self.size - self.pos:
            raise self.error(f"{what} is {n}, but only {self.size - self.pos} bytes remain "
                             f"(each item needs at least {min_item_bytes})")
        return n

    def string(self, what: str) -> str:
        n = self.count(f"length of {what}", 1)
        start = self.take(n, what)
        try:
            return str(self.buffer[start:start + n], "utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"{what} at offset {start} is not valid UTF-8 ({e.reason})") from None

    def strings(self, n: int, what: str) -> list[str]:
        """n strings in a row: `string` n times, unrolled (a vocabulary holds ~50k of them)."""
        buffer, pos, size, out = self.buffer, self.pos, self.size, []
        unpack_length = _U64.unpack_from
        try:
            for i in range(n):
                if pos + 8 > size:
                    break
                length, = unpack_length(buffer, pos)
                if length > size - pos - 8:
                    break
                pos += 8
                out.append(str(buffer[pos:pos + length], "utf-8"))
                pos += length
        except UnicodeDecodeError as e:
            raise self.error(f"{what}[{i}] at offset {pos} is not valid UTF-8 ({e.reason})") from None
        self.pos = pos
        if len(out) < n:  # the loop stopped early: let `string` say what ran past the end
            self.string(f"{what}[{len(out)}]")
        return out


def _min_value_bytes(value_type: int) -> int:
    """Fewest bytes one value of this type can take (to bound counts before allocating)."""
    if value_type == STRING:
        return 8
    if value_type == ARRAY:
        return 12
    return struct.calcsize(VALUE_TYPES[value_type][1])


def _read_value(cur: _Cursor, value_type: int, what: str, depth: int = 0) -> Any:
    if value_type not in VALUE_TYPES:
        raise cur.error(f"{what} has unknown value type {value_type} "
                        f"(expected 0..{len(VALUE_TYPES) - 1})")
    if value_type == STRING:
        return cur.string(what)
    if value_type == BOOL:
        byte = cur.scalar("<B", what)
        if byte > 1:
            raise cur.error(f"{what} is a bool stored as {byte}; expected 0 or 1")
        return bool(byte)
    if value_type != ARRAY:
        return cur.scalar(VALUE_TYPES[value_type][1], what)
    if depth >= MAX_ARRAY_DEPTH:
        raise cur.error(f"{what} nests arrays more than {MAX_ARRAY_DEPTH} deep")
    element_type = cur.u32(f"element type of {what}")
    if element_type not in VALUE_TYPES:
        raise cur.error(f"{what} has unknown element type {element_type} "
                        f"(expected 0..{len(VALUE_TYPES) - 1})")
    n = cur.count(f"length of {what}", _min_value_bytes(element_type))
    if element_type in _VALUE_DTYPES:  # numbers: one NumPy array, copied out of the map
        dtype = _VALUE_DTYPES[element_type]
        start = cur.take(n * dtype.itemsize, what)
        return np.frombuffer(cur.buffer, dtype=dtype, count=n, offset=start).astype(dtype.newbyteorder("="))
    if element_type == BOOL:  # one byte each, 0 or 1
        start = cur.take(n, what)
        raw = np.frombuffer(cur.buffer, dtype=np.uint8, count=n, offset=start)
        bad = np.flatnonzero(raw > 1)
        if bad.size:
            raise cur.error(f"{what}[{bad[0]}] is a bool stored as {raw[bad[0]]}; expected 0 or 1")
        return raw.astype(np.bool_)
    if element_type == STRING:
        return cur.strings(n, what)
    cur.nested_arrays += n  # each becomes a Python object of ~100 bytes from as few as 12 in the file
    if cur.nested_arrays > MAX_NESTED_ARRAYS:
        raise cur.error(f"{what} brings the arrays nested inside arrays to {cur.nested_arrays}; "
                        f"expected at most {MAX_NESTED_ARRAYS} in one file")
    return [_read_value(cur, element_type, f"{what}[{i}]", depth + 1) for i in range(n)]


class GGUFFile:
    """A GGUF file opened for reading: `.version`, `.metadata`, `.tensors`, `.tensor(name)`.

    metadata: dict key -> value. A scalar is a Python int, float, bool or str; an
    array of numbers or bools is a 1-D NumPy array of the file's element type
    (uint8 ... float64, bool); an array of strings is a list of str; an array of
    arrays is a list of such arrays.
    tensors: dict name -> TensorInfo, in file order.
    The tensor data stays on disk (memory-mapped) until `tensor()` or
    `raw_tensor()` asks for it.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open_regular_file(self.path, self.path) as f:  # a FIFO or a device is refused, not waited on
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise GGUFError(f"{self.path}: empty file; expected a GGUF header")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:  # missing, unreadable, not a regular file, or a failed map
            message = str(e) if self.path in str(e) else f"{self.path}: cannot open ({e.strerror or e})"
            raise GGUFError(message) from None
        try:
            self._parse()
        except Exception:
            self.close()
            raise

    def _parse(self) -> None:
        cur = _Cursor(self._map, self.path)
        magic = bytes(self._map[cur.take(4, "magic"):4])
        if magic != GGUF_MAGIC:
            raise cur.error(f"not a GGUF file: magic is {magic!r}, expected {GGUF_MAGIC!r}")
        self.version = cur.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            raise cur.error(f"unsupported GGUF version {self.version}; "
                            f"expected one of {SUPPORTED_VERSIONS}")
        n_tensors = cur.count("tensor_count", 8 + 4 + 4 + 8)  # empty name, 0 dims, type, offset
        n_kv = cur.count("metadata_kv_count", 8 + 4 + 1)  # empty key, type, 1-byte value

        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, int] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key {i}")
            if key in self.metadata:
                raise cur.error(f"metadata key {key!r} appears twice")
            value_type = cur.u32(f"value type of {key!r}")
            self.metadata[key] = _read_value(cur, value_type, f"metadata {key!r}")
            self.metadata_types[key] = value_type

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0
                or alignment & (alignment - 1)):
            raise cur.error(f"general.alignment is {alignment!r}; expected a power of two")
        self.alignment = alignment

        infos = []
        for i in range(n_tensors):
            name = cur.string(f"name of tensor {i}")
            n_dims = cur.u32(f"n_dims of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.error(f"tensor {name!r} has {n_dims} dims; expected 1..{MAX_DIMS}")
            layout = _DIMS_TYPE_OFFSET[n_dims]  # dims (uint64 x n_dims), type (uint32), offset (uint64)
            start = cur.take(layout.size, f"dims, type and offset of tensor {name!r}")
            *dims, kind, offset = layout.unpack_from(cur.buffer, start)
            dims = tuple(dims)
            if min(dims) < 1 or math.prod(dims) > MAX_ELEMENTS:
                raise cur.error(f"tensor {name!r} has dims {list(dims)}; expected each >= 1 and at most "
                                f"{MAX_ELEMENTS} elements in all (ggml counts elements in an int64)")
            infos.append((name, dims, kind, offset))
        self.data_offset = -(-cur.pos // alignment) * alignment  # round up to alignment
        data_size = cur.size - self.data_offset

        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, kind, offset in infos:
            if name in self.tensors:
                raise cur.error(f"tensor {name!r} appears twice")
            if kind not in GGML_TYPES:
                known = _KNOWN_UNSUPPORTED.get(kind)
                raise cur.error(f"tensor {name!r} has ggml type {kind}"
                                + (f" ({known}), which we do not support" if known else ", unknown")
                                + f"; supported: {', '.join(t.name for t in GGML_TYPES.values())}")
            block = GGML_TYPES[kind].block_size
            if dims[0] % block:
                raise cur.error(f"tensor {name!r} ({GGML_TYPES[kind].name}) has dims[0] = "
                                f"{dims[0]}, not a multiple of its block size {block}")
            info = TensorInfo(name, dims, kind, offset)
            if offset % alignment:
                raise cur.error(f"tensor {name!r} offset {offset} is not a multiple "
                                f"of the alignment {alignment}")
            if offset + info.nbytes > data_size:
                raise cur.error(f"tensor {name!r} data (offset {offset}, {info.nbytes} bytes) "
                                f"runs past the end of the file ({max(data_size, 0)} bytes of data)")
            self.tensors[name] = info

    # --- tensor data ---------------------------------------------------------------
    def raw_tensor(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the memory map (no copy)."""
        info = self._info(name)
        return np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes,
                             offset=self.data_offset + info.offset)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor dequantised to float32, in NumPy shape (`TensorInfo.shape`)."""
        info = self._info(name)
        return dequantize(self.raw_tensor(name), info.type, info.shape)

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        return self.tensors[name]

    def close(self) -> None:
        m = getattr(self, "_map", None)
        if m is not None:
            try:
                m.close()
            except BufferError:  # views of the map are still alive; the GC will close it
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, version={self.version}, "
                f"{len(self.metadata)} metadata keys, {len(self.tensors)} tensors)")


# --- dequantisation ------------------------------------------------------------------
# The block formats themselves (layouts, rounding, byte-exact quantisers) are taught in
# tinytransformer.quant.ggml and tinytransformer.quant.kquants; this module only maps type ids to them.

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
                **{kind: _BLOCK_DEQUANTIZERS[GGML_TYPES[kind].name] for kind in _BLOCK_TYPES}}


def _ggml_type(kind, what: str, error=ValueError) -> int:
    """kind as an int, or `error` unless it is the id of a type we can read and write."""
    if isinstance(kind, (bool, np.bool_)) or not isinstance(kind, (int, np.integer)) or int(kind) not in GGML_TYPES:
        raise error(f"{what}: expected a ggml type id, one of "
                    f"{', '.join(f'{k} ({t.name})' for k, t in GGML_TYPES.items())}; got {kind!r}")
    return int(kind)


def dequantize(raw, kind: int, shape=None) -> np.ndarray:
    """Raw bytes (bytes, or a uint8 array) of ggml type `kind` -> float32 array (flat, or in NumPy `shape`)."""
    kind = _ggml_type(kind, "kind", GGUFError)
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


# --- quantisation ------------------------------------------------------------------------

def quantize(x: np.ndarray, kind: int) -> np.ndarray:
    """float array -> raw bytes (uint8) of ggml type `kind`, blocks along the last axis.

    The block types give exactly the bytes of llama.cpp's reference quantisers
    (`tinytransformer.quant.ggml`, `tinytransformer.quant.kquants`).
    """
    kind = _ggml_type(kind, "kind")
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
    return _BLOCK_QUANTIZERS[GGML_TYPES[kind].name](x)  # every other type is quantised in blocks


# --- writer --------------------------------------------------------------------------

_NUMPY_TO_VALUE_TYPE = {np.dtype(np.uint8): UINT8, np.dtype(np.int8): INT8,
                        np.dtype(np.uint16): UINT16, np.dtype(np.int16): INT16,
                        np.dtype(np.uint32): UINT32, np.dtype(np.int32): INT32,
                        np.dtype(np.float32): FLOAT32, np.dtype(np.bool_): BOOL,
                        np.dtype(np.uint64): UINT64, np.dtype(np.int64): INT64,
                        np.dtype(np.float64): FLOAT64}


_INTEGER_RANGES = {t: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
                   for t, dtype in _VALUE_DTYPES.items() if dtype.kind in "iu"}
MAX_WRITE_ALIGNMENT = 2**16  # larger paddings would only waste disk


def _value_type(value, what: str) -> int:
    """The GGUF type to write a Python/NumPy value as: a Python int as INT32, else INT64,
    else UINT64 (whichever holds it); a float as FLOAT32; a NumPy scalar or array keeps its dtype."""
    if isinstance(value, str):
        return STRING
    if isinstance(value, (np.generic, np.ndarray)):
        if value.dtype not in _NUMPY_TO_VALUE_TYPE:
            raise ValueError(f"{what}: expected one of the GGUF dtypes "
                             f"({', '.join(sorted(d.name for d in _NUMPY_TO_VALUE_TYPE))}), got {value.dtype}")
        if isinstance(value, np.ndarray) and value.ndim != 1:
            raise ValueError(f"{what}: expected a 1-D array, got shape {value.shape}")
        return ARRAY if isinstance(value, np.ndarray) else _NUMPY_TO_VALUE_TYPE[value.dtype]
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        for value_type in (INT32, INT64, UINT64):
            low, high = _INTEGER_RANGES[value_type]
            if low <= value <= high:
                return value_type
        raise ValueError(f"{what}: expected an integer in [-2**63, 2**64), got {value}")
    if isinstance(value, float):
        return FLOAT32
    if isinstance(value, (list, tuple)):
        return ARRAY
    raise ValueError(f"{what}: expected a str, bool, int, float, NumPy scalar or array, or a list of one "
                     f"of these, got {type(value).__name__}")


def _pack_string(s: str, what: str) -> bytes:
    if not isinstance(s, str):
        raise ValueError(f"{what}: expected a str, got {type(s).__name__} {s!r}")
    try:
        data = s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what}: cannot be written as UTF-8 ({e.reason} at index {e.start})") from None
    return struct.pack("<Q", len(data)) + data


def _pack_value(value, value_type: int, what: str, depth: int = 0) -> bytes:
    """The bytes of one value of `value_type`, or ValueError if it does not fit that type."""
    if value_type == STRING:
        return _pack_string(value, what)
    if value_type != ARRAY:
        name, fmt = VALUE_TYPES[value_type]
        try:
            return struct.pack(fmt, value)
        except (struct.error, OverflowError):
            raise ValueError(f"{what}: {value!r} does not fit GGUF type {name}") from None
    if depth >= MAX_ARRAY_DEPTH:
        raise ValueError(f"{what}: arrays nest more than {MAX_ARRAY_DEPTH} deep (the reader's limit)")
    if isinstance(value, np.ndarray):
        element_type = _NUMPY_TO_VALUE_TYPE[value.dtype]
        body = value.astype(value.dtype.newbyteorder("<")).tobytes()
        return struct.pack("<IQ", element_type, value.size) + body
    element_type = _element_type(value, what)
    body = b"".join(_pack_value(v, element_type, f"{what}[{i}]", depth + 1) for i, v in enumerate(value))
    return struct.pack("<IQ", element_type, len(value)) + body


def _element_type(values, what: str) -> int:
    """The one GGUF type of all elements of a list (integers: the widest that any of them needs)."""
    types = {_value_type(v, f"{what}[{i}]") for i, v in enumerate(values)}
    widths = (INT32, INT64, UINT64)
    if types and types <= set(widths):
        return max(types, key=widths.index)
    if len(types) > 1:
        names = sorted(VALUE_TYPES[t][0] for t in types)
        raise ValueError(f"{what}: expected array elements of one type, got {', '.join(names)}")
    return types.pop() if types else INT32


def _tensor_entry(name, tensor) -> tuple[int, tuple[int, ...], Any]:
    """Check one `tensors` entry; return (ggml type, NumPy shape, array or raw bytes)."""
    what = f"tensor {name!r}"
    if isinstance(tensor, tuple):
        if len(tensor) != 3:
            raise ValueError(f"{what}: expected (raw uint8 bytes, ggml type, numpy_shape), got a tuple of "
                             f"{len(tensor)}")
        raw, kind, shape = tensor
        kind = _ggml_type(kind, what)
        raw = np.frombuffer(raw, np.uint8) if isinstance(raw, (bytes, bytearray)) else np.asarray(raw)
        if raw.dtype != np.uint8:
            raise ValueError(f"{what}: expected raw bytes as a uint8 array (from quantize), got dtype {raw.dtype}")
    else:
        raw = np.asarray(tensor)
        kind = {np.dtype(np.float32): F32, np.dtype(np.float16): F16}.get(raw.dtype)
        if kind is None:
            raise ValueError(f"{what}: expected a float32 or float16 array, or (raw, ggml type, shape), "
                             f"got dtype {raw.dtype}")
        shape = raw.shape
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
        raise ValueError(f"{what}: expected a shape of integers, got {shape!r}")
    shape = tuple(int(d) for d in shape)
    if not 1 <= len(shape) <= MAX_DIMS or min(shape) < 1:
        raise ValueError(f"{what}: expected 1 to {MAX_DIMS} dims, each >= 1, got shape {shape}")
    kind_info = GGML_TYPES[kind]
    if shape[-1] % kind_info.block_size:
        raise ValueError(f"{what}: {kind_info.name} needs a last axis that is a multiple of "
                         f"{kind_info.block_size}, got shape {shape}")
    if isinstance(tensor, tuple):
        expected = math.prod(shape) // kind_info.block_size * kind_info.type_size
        if raw.size != expected:
            raise ValueError(f"{what}: shape {shape} in {kind_info.name} takes {expected} bytes, got {raw.size}")
    return kind, shape, raw


def _alignment(alignment, metadata: dict) -> int:
    if isinstance(alignment, bool) or not isinstance(alignment, (int, np.integer)) \
            or not 1 <= alignment <= MAX_WRITE_ALIGNMENT or alignment & (alignment - 1):
        raise ValueError(f"alignment: expected a power of two from 1 to {MAX_WRITE_ALIGNMENT}, got {alignment!r}")
    stated = metadata.get("general.alignment", alignment)
    if isinstance(stated, bool) or not isinstance(stated, (int, np.integer)) or stated != alignment:
        shown = stated.item() if isinstance(stated, np.generic) else stated
        raise ValueError(f"metadata 'general.alignment' is {shown!r} but alignment is {alignment}; "
                         f"pass the alignment as write_gguf(..., alignment={shown!r})")
    return int(alignment)


def write_gguf(path, metadata: dict, tensors: dict, *, version: int = 3,
               alignment: int = DEFAULT_ALIGNMENT) -> None:
    """Write a GGUF file.

    metadata: key (str) -> value (see `_value_type` for how Python values are typed).
    tensors: name (str) -> float32/float16 NumPy array (stored as F32/F16), or
    (raw uint8 bytes, ggml type, numpy_shape) for a quantised tensor made with
    `quantize(x, kind)`. NumPy shapes are written reversed, as GGUF wants.
    alignment: a power of two; tensor data starts at multiples of it.

    Every argument is checked before anything is written (ValueError naming
    the key or tensor); then the file is written beside `path` under a
    temporary name and renamed over it, so an existing file is never left
    half-written, and a reader that has it memory-mapped keeps its old bytes.
    """
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version not in SUPPORTED_VERSIONS:
        raise ValueError(f"version: expected one of {SUPPORTED_VERSIONS}, got {version!r}")
    for argument, value in (("metadata", metadata), ("tensors", tensors)):
        if not isinstance(value, dict):
            raise ValueError(f"{argument}: expected a dict, got {type(value).__name__}")
    alignment = _alignment(alignment, metadata)
    metadata = dict(metadata)
    if alignment != DEFAULT_ALIGNMENT or "general.alignment" in metadata:
        metadata["general.alignment"] = np.uint32(alignment)  # uint32, the spec's type for it
    header = [GGUF_MAGIC, struct.pack("<IQQ", version, len(tensors), len(metadata))]
    for key, value in metadata.items():
        what = f"metadata {key!r}"
        value_type = _value_type(value, what)
        header += [_pack_string(key, f"metadata key {key!r}"), struct.pack("<I", value_type),
                   _pack_value(value, value_type, what)]

    entries, offset = [], 0
    for name, tensor in tensors.items():
        kind, shape, source = _tensor_entry(name, tensor)
        dims = tuple(reversed(shape))
        header += [_pack_string(name, f"tensor name {name!r}"), struct.pack("<I", len(dims)),
                   struct.pack(f"<{len(dims)}Q", *dims), struct.pack("<IQ", kind, offset)]
        nbytes = math.prod(shape) // GGML_TYPES[kind].block_size * GGML_TYPES[kind].type_size
        entries.append((kind, source, nbytes))
        offset += nbytes + (-nbytes % alignment)
    header = b"".join(header)

    with atomic_writer(path, f"GGUF file {os.fspath(path)!r}") as f:
        f.write(header + b"\0" * (-len(header) % alignment))
        for kind, source, nbytes in entries:
            raw = source if source.dtype == np.uint8 else quantize(source, kind)  # F32/F16 arrays: their bytes
            f.write(np.ascontiguousarray(raw).reshape(-1).data)
            f.write(b"\0" * (-nbytes % alignment))
