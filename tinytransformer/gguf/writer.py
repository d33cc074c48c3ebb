"""The GGUF writer: metadata typed and packed, tensors checked, the file written whole or not at all.

`write_gguf(path, metadata, tensors)` writes the four parts that
`tinytransformer.gguf.format` draws. Each Python value gets a GGUF value type
(`_value_type`: a str is STRING, a bool BOOL, an int the narrowest of INT32,
INT64, UINT64 that holds it, a float FLOAT32; NumPy scalars and 1-D arrays keep
their dtype; a list is an ARRAY of its elements' one type); each tensor is a
float32/float16 array (F32/F16) or the (raw bytes, ggml type, NumPy shape) that
`codecs.quantize` makes. NumPy shapes are written reversed, as GGUF wants:

    file dims = tuple(reversed(numpy shape))
    tensor data at offsets that are multiples of the alignment, each padded to the next one

    >>> import os, tempfile, numpy as np
    >>> from tinytransformer.gguf.reader import GGUFFile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.gguf")
    >>> write_gguf(path, {"general.name": "tiny", "n": np.uint32(3)},
    ...            {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    >>> f = GGUFFile(path)
    >>> f.metadata["general.name"], f.metadata["n"], f.tensors["w"].dims
    ('tiny', 3, (3, 2))
    >>> f.tensor("w").tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]

Does not handle: GGUF version 1, big-endian files, split (multi-file) models,
or streaming tensors larger than memory (every tensor is passed in whole).
"""
from __future__ import annotations

import math
import os
import struct
from typing import Any

import numpy as np

from tinytransformer._files import atomic_writer
from tinytransformer._validate import is_integer
from tinytransformer.gguf.codecs import quantize
from tinytransformer.gguf.format import (ARRAY, BOOL, DEFAULT_ALIGNMENT, F16, F32, FLOAT32, FLOAT64, GGML_TYPES,
                                         GGUF_MAGIC, INT8, INT16, INT32, INT64, MAX_ARRAY_DEPTH, MAX_DIMS, STRING,
                                         SUPPORTED_VERSIONS, UINT8, UINT16, UINT32, UINT64, VALUE_DTYPES,
                                         VALUE_TYPES, ggml_type)

_NUMPY_TO_VALUE_TYPE = {np.dtype(np.uint8): UINT8, np.dtype(np.int8): INT8,
                        np.dtype(np.uint16): UINT16, np.dtype(np.int16): INT16,
                        np.dtype(np.uint32): UINT32, np.dtype(np.int32): INT32,
                        np.dtype(np.float32): FLOAT32, np.dtype(np.bool_): BOOL,
                        np.dtype(np.uint64): UINT64, np.dtype(np.int64): INT64,
                        np.dtype(np.float64): FLOAT64}


_INTEGER_RANGES = {t: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
                   for t, dtype in VALUE_DTYPES.items() if dtype.kind in "iu"}
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
        kind = ggml_type(kind, what)
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
    if not isinstance(shape, (tuple, list)) or not all(is_integer(d) for d in shape):
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
    if not is_integer(alignment) or not 1 <= alignment <= MAX_WRITE_ALIGNMENT or alignment & (alignment - 1):
        raise ValueError(f"alignment: expected a power of two from 1 to {MAX_WRITE_ALIGNMENT}, got {alignment!r}")
    stated = metadata.get("general.alignment", alignment)
    if not is_integer(stated) or stated != alignment:
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
    if not is_integer(version) or version not in SUPPORTED_VERSIONS:
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
