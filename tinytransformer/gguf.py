"""The GGUF file format: a reader, dequantisation, and a small writer.

GGUF is the single-file format of llama.cpp (spec: ggml/docs/gguf.md in the
ggml repository). A file is four parts, all little-endian:

    header    magic b"GGUF", version (uint32: 2 or 3), tensor_count (uint64),
              metadata_kv_count (uint64)
    metadata  metadata_kv_count x (key: string, value_type: uint32, value)
    infos     tensor_count x (name: string, n_dims: uint32, dims: uint64[n_dims],
              ggml_type: uint32, offset: uint64)
    data      starts at the first multiple of `general.alignment` (default 32)
              after the infos; each tensor's offset is relative to this start.

A string is a uint64 byte length followed by UTF-8 bytes (no terminator). An
array value is (element_type: uint32, count: uint64, elements).

Shapes: GGUF lists dims fastest-varying first (ggml's ne[0], ne[1], ...), the
reverse of NumPy's C order. `TensorInfo.dims` keeps the file's order and
`TensorInfo.shape` is the NumPy shape, `tuple(reversed(dims))`. A Llama
projection stored with dims [in, out] is therefore the NumPy array [out, in].

Quantised tensors are stored in blocks of 32 consecutive values (along ne[0]),
or super-blocks of 256 for the k-quants; the block layouts, drawn byte by byte,
and the quantisers are in `tinytransformer.quant.ggml` (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)
and `tinytransformer.quant.kquants` (Q4_K, Q5_K, Q6_K).

    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.gguf")
    >>> write_gguf(path, {"general.name": "tiny", "n": np.uint32(3)},
    ...            {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    >>> f = GGUFFile(path)
    >>> f.metadata["general.name"], f.metadata["n"], f.tensors["w"].dims
    ('tiny', 3, (3, 2))
    >>> f.tensor("w").tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]

Untrusted input: every count, length and offset is checked against the bytes
that remain before anything is allocated, so a corrupt file raises GGUFError
(naming the file and the problem) rather than crashing, hanging or allocating
memory it does not contain. Tensor data is memory-mapped, not read.

Does not handle: GGUF version 1 (pre-2023 files with 32-bit counts), the
i-quants (IQ*), Q2_K, Q3_K, big-endian files, and split (multi-file) models.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytransformer.bfloat16 import from_bfloat16_bits
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


class _Cursor:
    """Reads little-endian values from a buffer, checking each read against its end."""

    def __init__(self, buffer, path: str):
        self.buffer = buffer
        self.size = len(buffer)
        self.pos = 0
        self.path = path

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
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buffer, start)[0]

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
            return bytes(self.buffer[start:start + n]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"{what} at offset {start} is not valid UTF-8 ({e.reason})") from None


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
    if element_type in _VALUE_DTYPES:  # numbers: read the whole block at once
        dtype = _VALUE_DTYPES[element_type]
        start = cur.take(n * dtype.itemsize, what)
        return np.frombuffer(cur.buffer, dtype=dtype, count=n, offset=start).tolist()
    return [_read_value(cur, element_type, f"{what}[{i}]", depth + 1) for i in range(n)]


class GGUFFile:
    """A GGUF file opened for reading: `.version`, `.metadata`, `.tensors`, `.tensor(name)`.

    metadata: dict key -> Python value (int, float, bool, str, or list of these).
    tensors: dict name -> TensorInfo, in file order.
    The tensor data stays on disk (memory-mapped) until `tensor()` or
    `raw_tensor()` asks for it.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise GGUFError(f"{self.path}: empty file; expected a GGUF header")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open ({e.strerror or e})") from None
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
            dims = tuple(cur.u64(f"dim {d} of tensor {name!r}") for d in range(n_dims))
            kind = cur.u32(f"type of tensor {name!r}")
            offset = cur.u64(f"offset of tensor {name!r}")
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


def dequantize(raw, kind: int, shape=None) -> np.ndarray:
    """Raw bytes of ggml type `kind` -> float32 array (flat, or in NumPy `shape`)."""
    if kind not in DEQUANTIZERS:
        raise GGUFError(f"ggml type {kind}: expected one of "
                        f"{', '.join(f'{k} ({t.name})' for k, t in GGML_TYPES.items())}")
    raw = np.ascontiguousarray(np.asarray(raw, dtype=np.uint8)).reshape(-1)
    if raw.size % GGML_TYPES[kind].type_size:
        raise GGUFError(f"{GGML_TYPES[kind].name} data of {raw.size} bytes is not a whole "
                        f"number of {GGML_TYPES[kind].type_size}-byte blocks")
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN scales give inf/NaN, as in ggml
        x = DEQUANTIZERS[kind](raw)
    return x if shape is None else x.reshape(shape)


# --- quantisation ------------------------------------------------------------------------

def quantize(x: np.ndarray, kind: int) -> np.ndarray:
    """float array -> raw bytes (uint8) of ggml type `kind`, blocks along the last axis.

    The block types give exactly the bytes of llama.cpp's reference quantisers
    (`tinytransformer.quant.ggml`, `tinytransformer.quant.kquants`).
    """
    x = np.asarray(x, dtype=np.float32)
    if kind == F32:
        return x.astype("<f4").reshape(-1).view(np.uint8)
    if kind == F16:
        return x.astype("<f2").reshape(-1).view(np.uint8)
    if kind == BF16:  # round to nearest even on the dropped 16 bits
        bits = x.reshape(-1).view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits.astype("<u2").view(np.uint8)
    if kind in _BLOCK_TYPES:
        return _BLOCK_QUANTIZERS[GGML_TYPES[kind].name](x)
    raise ValueError(f"kind: expected a ggml type id in {sorted(GGML_TYPES)}, got {kind}")


# --- writer --------------------------------------------------------------------------

_NUMPY_TO_VALUE_TYPE = {np.dtype(np.uint8): UINT8, np.dtype(np.int8): INT8,
                        np.dtype(np.uint16): UINT16, np.dtype(np.int16): INT16,
                        np.dtype(np.uint32): UINT32, np.dtype(np.int32): INT32,
                        np.dtype(np.float32): FLOAT32, np.dtype(np.bool_): BOOL,
                        np.dtype(np.uint64): UINT64, np.dtype(np.int64): INT64,
                        np.dtype(np.float64): FLOAT64}


def _value_type(value, what: str) -> int:
    """The GGUF type to write a Python/NumPy value as (Python int -> INT32 or INT64,
    float -> FLOAT32; a NumPy scalar or array keeps its dtype)."""
    if isinstance(value, (np.generic, np.ndarray)):
        if value.dtype not in _NUMPY_TO_VALUE_TYPE:
            raise ValueError(f"{what}: unsupported dtype {value.dtype}")
        return ARRAY if isinstance(value, np.ndarray) else _NUMPY_TO_VALUE_TYPE[value.dtype]
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT32 if -2**31 <= value < 2**31 else INT64
    if isinstance(value, float):
        return FLOAT32
    if isinstance(value, str):
        return STRING
    if isinstance(value, (list, tuple)):
        return ARRAY
    raise ValueError(f"{what}: cannot write a value of type {type(value).__name__}")


def _pack_string(s: str) -> bytes:
    data = s.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _pack_value(value, value_type: int, what: str) -> bytes:
    if value_type == STRING:
        return _pack_string(value)
    if value_type != ARRAY:
        return struct.pack(VALUE_TYPES[value_type][1], value)
    if isinstance(value, np.ndarray):
        element_type = _NUMPY_TO_VALUE_TYPE[value.dtype]
        body = value.astype(value.dtype.newbyteorder("<")).tobytes()
        return struct.pack("<IQ", element_type, value.size) + body
    types = {_value_type(v, what) for v in value}
    if types == {INT32, INT64}:
        types = {INT64}
    if len(types) > 1:
        raise ValueError(f"{what}: array elements must share one type, got {sorted(types)}")
    element_type = types.pop() if types else INT32
    body = b"".join(_pack_value(v, element_type, what) for v in value)
    return struct.pack("<IQ", element_type, len(value)) + body


def write_gguf(path, metadata: dict, tensors: dict, *, version: int = 3,
               alignment: int = DEFAULT_ALIGNMENT) -> None:
    """Write a GGUF file.

    metadata: key -> value (see `_value_type` for how Python values are typed).
    tensors: name -> float32/float16 NumPy array (stored as F32/F16), or
    (raw uint8 bytes, ggml type, numpy_shape) for a quantised tensor made with
    `quantize(x, kind)`. NumPy shapes are written reversed, as GGUF wants.
    """
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"version: expected one of {SUPPORTED_VERSIONS}, got {version}")
    metadata = dict(metadata)
    if alignment != DEFAULT_ALIGNMENT:
        metadata["general.alignment"] = np.uint32(alignment)
    out = [GGUF_MAGIC, struct.pack("<IQQ", version, len(tensors), len(metadata))]
    for key, value in metadata.items():
        value_type = _value_type(value, key)
        out += [_pack_string(key), struct.pack("<I", value_type), _pack_value(value, value_type, key)]

    blobs, offset = [], 0
    for name, t in tensors.items():
        if isinstance(t, tuple):
            raw, kind, shape = t
            raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
        else:
            t = np.asarray(t)
            kind = {np.dtype(np.float32): F32, np.dtype(np.float16): F16}.get(t.dtype)
            if kind is None:
                raise ValueError(f"tensor {name!r}: expected float32 or float16, got {t.dtype}")
            raw, shape = quantize(t, kind), t.shape
        dims = tuple(int(d) for d in reversed(shape))
        out += [_pack_string(name), struct.pack("<I", len(dims)),
                struct.pack(f"<{len(dims)}Q", *dims), struct.pack("<IQ", kind, offset)]
        padded = raw.tobytes() + b"\0" * (-raw.size % alignment)
        blobs.append(padded)
        offset += len(padded)
    header = b"".join(out)
    with open(path, "wb") as f:
        f.write(header + b"\0" * (-len(header) % alignment))
        for blob in blobs:
            f.write(blob)
