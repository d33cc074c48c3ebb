"""The GGUF reader: a file's header, metadata and tensor infos parsed, its tensor data memory-mapped.

`GGUFFile(path)` reads the four parts that `tinytransformer.gguf.format` draws
(header, metadata, tensor infos, aligned data) and keeps the data on disk until
`tensor(name)` dequantises one tensor (`tinytransformer.gguf.codecs`):

    byte offset of a tensor = data start (a multiple of general.alignment) + its offset

    >>> import os, tempfile, numpy as np
    >>> from tinytransformer.gguf.writer import write_gguf
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.gguf")
    >>> write_gguf(path, {"n": np.uint32(3)}, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    >>> with GGUFFile(path) as f:
    ...     print(f.metadata["n"], f.tensors["w"].dims, f.tensors["w"].shape, f.data_offset % f.alignment)
    3 (3, 2) (2, 3) 0

Files are untrusted: every count, length and offset is checked by `Cursor`
against the bytes that remain before anything is allocated (see its docstring
and docs/08_pretrained_model.md).

Does not handle: GGUF version 1 (pre-2023 files with 32-bit counts), big-endian
files, split (multi-file) models.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from typing import Any

import numpy as np

from tinytransformer._files import open_regular_file
from tinytransformer._validate import is_integer
from tinytransformer.gguf.codecs import dequantize
from tinytransformer.gguf.format import (ARRAY, BOOL, DEFAULT_ALIGNMENT, GGML_TYPES, GGUF_MAGIC, MAX_ARRAY_DEPTH,
                                         MAX_DIMS, MAX_ELEMENTS, MAX_NESTED_ARRAYS, STRING, SUPPORTED_VERSIONS,
                                         UNSUPPORTED_TYPES, VALUE_DTYPES, VALUE_TYPES, GGUFError, TensorInfo)

_STRUCTS = {fmt: struct.Struct(fmt) for _, fmt in VALUE_TYPES.values() if fmt}
_U64 = _STRUCTS["<Q"]
_DIMS_TYPE_OFFSET = {n: struct.Struct(f"<{n}QIQ") for n in range(1, MAX_DIMS + 1)}  # after a tensor's n_dims


class Cursor:
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


def _read_value(cur: Cursor, value_type: int, what: str, depth: int = 0) -> Any:
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
    if element_type in VALUE_DTYPES:  # numbers: one NumPy array, copied out of the map
        dtype = VALUE_DTYPES[element_type]
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
        cur = Cursor(self._map, self.path)
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
        if not is_integer(alignment) or alignment <= 0 or alignment & (alignment - 1):
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
                known = UNSUPPORTED_TYPES.get(kind)
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

