"""Hand-made GGUF files for the fuzz tests (tests/test_gguf_fuzz.py), each aimed at one thing a reader must refuse.

crafted_files: headers whose counts, lengths, value types, dims, tensor types, offsets
or alignments are impossible or huge (a reader that trusts them allocates, hangs or
crashes). crafted_memory_files: valid files with as many small Python objects per
byte as the format allows, each with the bound on allocations it must keep.
crafted_llama_files: a valid tiny Llama file with one metadata key changed or removed,
or a tensor missing or misshapen. Every case is a (name, bytes or path) pair.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from strategies.gguf import gguf_header, gguf_kv, gguf_string, gguf_tensor_info

from tinytransformer import gguf
from tinytransformer.gguf import GGUFFile, write_gguf
from tinytransformer.random_llama import write_random_llama

def _array(element_type: int, n: int, body: bytes = b"") -> bytes:
    return struct.pack("<IQ", element_type, n) + body


def _nested(depth: int) -> bytes:
    """An array holding an array holding ... (depth levels), the innermost empty."""
    return b"".join(struct.pack("<IQ", gguf.ARRAY, 1) for _ in range(depth - 1)) + _array(gguf.UINT8, 0)


def _one(value_type: int, body: bytes, key="k") -> bytes:
    return gguf_header(n_kv=1) + gguf_kv(key, value_type, body)


def _with_tensor(dims, kind=gguf.F32, offset=0, data=64, alignment=None) -> bytes:
    kv = [] if alignment is None else [alignment]
    head = gguf_header(n_tensors=1, n_kv=len(kv)) + b"".join(kv) + gguf_tensor_info("w", dims, kind, offset)
    return head + b"\0" * (-len(head) % 32 + data)


def crafted_files() -> dict[str, bytes]:
    """Hand-made files aimed at every count and length the format has."""
    A, S = gguf.ARRAY, gguf.STRING
    cases = {"empty file": b"", "magic only": b"GGUF", "bad magic": b"GGML" + bytes(20)}
    cases.update({f"header cut at {n}": gguf_header()[:n] for n in (5, 8, 12, 20, 23)})
    cases.update({f"version {v}": gguf_header(version=v) for v in (0, 1, 4, 2**32 - 1)})
    for count in (1, 2**32, 2**63, 2**64 - 1):
        cases[f"tensor_count {count}"] = gguf_header(n_tensors=count)
        cases[f"metadata_kv_count {count}"] = gguf_header(n_kv=count)
    cases["key length 2**64-1"] = gguf_header(n_kv=1) + struct.pack("<Q", 2**64 - 1) + b"k" * 16
    cases["key not UTF-8"] = _one(gguf.UINT8, b"\0", key=b"\xc3\x28")
    cases["duplicate key"] = gguf_header(n_kv=2) + gguf_kv("k", gguf.UINT8, b"\0") * 2
    for value_type in (13, 99, 2**32 - 1):
        cases[f"value type {value_type}"] = _one(value_type, bytes(16))
        cases[f"element type {value_type}"] = _one(A, _array(value_type, 1, bytes(16)))
    cases["string length 2**63"] = _one(S, struct.pack("<Q", 2**63) + b"abc")
    for element_type in (gguf.UINT8, gguf.FLOAT64, gguf.BOOL, S, A):
        for n in (2**32, 2**61, 2**64 - 1):
            cases[f"array of type {element_type}, length {n}"] = _one(A, _array(element_type, n, bytes(64)))
    for depth in (8, 9, 100, 100_000):
        cases[f"arrays nested {depth} deep"] = _one(A, _nested(depth))
    cases["65,537 nested empty arrays"] = _one(A, _array(A, 2**16 + 1, _array(gguf.UINT8, 0) * (2**16 + 1)))
    cases["bool array, 7 in the last byte"] = _one(A, _array(gguf.BOOL, 2**20, bytes(2**20 - 1) + b"\7"))
    cases["string array, bad UTF-8 at 5000"] = _one(A, _array(S, 10_000, b"".join(
        gguf_string(b"\xff" if i == 5000 else b"ab") for i in range(10_000))))
    cases["string array, length 2**64-1 at 3"] = _one(A, _array(S, 10, gguf_string("a") * 3 + struct.pack(
        "<Q", 2**64 - 1) + bytes(64)))
    for value in (0, 3, 48, 2**31, 2**32 - 1):
        cases[f"alignment {value}"] = _with_tensor((8,), alignment=gguf_kv("general.alignment", gguf.UINT32,
                                                                             struct.pack("<I", value)))
    for name, (value_type, body) in {"string": (S, gguf_string("32")), "bool": (gguf.BOOL, b"\1"),
                                     "float": (gguf.FLOAT32, struct.pack("<f", 32.0)),
                                     "negative": (gguf.INT32, struct.pack("<i", -32)),
                                     "uint64 2**63": (gguf.UINT64, struct.pack("<Q", 2**63))}.items():
        cases[f"alignment as {name}"] = _with_tensor((8,), alignment=gguf_kv("general.alignment", value_type, body))
    cases["tensor n_dims 0"] = gguf_header(n_tensors=1) + gguf_string("w") + struct.pack("<IIQ", 0, 0, 0)
    for n_dims in (5, 2**32 - 1):
        cases[f"tensor n_dims {n_dims}"] = gguf_header(n_tensors=1) + gguf_string("w") + struct.pack(
            "<I", n_dims) + bytes(64)
    for dims in ((0,), (0, 2**64 - 1), (2**64 - 1,), (2**32, 2**32), (2**62, 4), (3, 5, 7, 11)):
        cases[f"dims {dims}"] = _with_tensor(dims)
    for kind in (gguf.Q4_0, gguf.Q8_0):
        cases[f"type {kind}, dims[0] 16"] = _with_tensor((16,), kind)
    for kind in (12, 31, 2**32 - 1):
        cases[f"tensor type {kind}"] = _with_tensor((32,), kind)
    for offset in (1, 32, 2**63, 2**64 - 32):
        cases[f"tensor offset {offset}"] = _with_tensor((8,), offset=offset)
    cases["duplicate tensor"] = gguf_header(n_tensors=2) + gguf_tensor_info("w", (8,), 0, 0) * 2 + bytes(64)
    cases["tensor name not UTF-8"] = gguf_header(n_tensors=1) + gguf_tensor_info(b"\xff", (8,), 0, 0) + bytes(64)
    return cases


def crafted_memory_files() -> dict[str, tuple[bytes, float]]:
    """Valid files with as many small Python objects per byte as the format allows, and the bound
    on Python allocations per byte of file that each must keep (see gguf.reader.Cursor's docstring)."""
    n = 2000
    return {
        "2,000 keys": (gguf_header(n_kv=n) + b"".join(gguf_kv(f"{i:x}", gguf.UINT8, b"\0") for i in range(n)), 12),
        "2,000 tensors": (gguf_header(n_tensors=n) + b"".join(
            gguf_tensor_info(f"{i:x}", (1,), gguf.F32, 0) for i in range(n)) + bytes(64), 12),
        "2,000 two-character strings": (_one(gguf.ARRAY, _array(gguf.STRING, n, b"".join(
            gguf_string(f"{i % 100:02}") for i in range(n)))), 12),
        # a NumPy array costs ~20 times its 12 bytes when empty: hence the cap of 65,536 of them per file
        "2,000 nested empty arrays": (_one(gguf.ARRAY, _array(gguf.ARRAY, n, _array(gguf.UINT8, 0) * n)), 25),
        "a 4 MB int32 array": (_one(gguf.ARRAY, _array(gguf.INT32, 2**20, bytes(4 * 2**20))), 1.1),
        "a 4 MB bool array": (_one(gguf.ARRAY, _array(gguf.BOOL, 2**22, bytes(2**22))), 1.1),
    }


LLAMA_METADATA = {  # key -> values that make the file impossible (or just odd) as a Llama model
    "llama.block_count": [0, 2, 10**6, 2**32 - 1],
    "llama.attention.head_count": [0, 3, 2**32 - 1],
    "llama.attention.head_count_kv": [0, 3, 2**32 - 1],
    "llama.embedding_length": [0, 33, 2**32 - 1],
    "llama.feed_forward_length": [0, 31, 2**32 - 1],
    "llama.context_length": [0, 2**32 - 1],
    "llama.vocab_size": [0, 1, 2**32 - 1],
    "llama.rope.freq_base": [float("inf"), float("nan"), -1.0, 1e-45],
    "llama.attention.layer_norm_rms_epsilon": [float("inf"), float("nan"), -1.0],
    "llama.rope.dimension_count": [0, 2**32 - 1],
    "tokenizer.ggml.tokens": [5, "abc", ["a"] * 3],
    "tokenizer.ggml.token_type": [["x"], [1] * 3],
    "tokenizer.ggml.merges": [[1, 2], ["abc"], 7],
    "tokenizer.ggml.bos_token_id": [2**32 - 1, -1, "1"],
    "tokenizer.ggml.eos_token_id": [2**32 - 1, -1],
    "tokenizer.ggml.model": ["llama", 5],
    "tokenizer.ggml.pre": ["nope", 5],
    "general.architecture": ["gpt2", 5],
}


def crafted_llama_files(folder: Path, config: dict):
    """(name, path): a valid tiny Llama file (`write_random_llama(**config)`) with one metadata key changed or
    removed, a tensor missing, or a tensor of the wrong shape."""
    base = write_random_llama(folder / "base.gguf", **config)
    with GGUFFile(base) as f:
        metadata = dict(f.metadata)
        tensors = {name: (f.raw_tensor(name).copy(), info.type, info.shape) for name, info in f.tensors.items()}
    for key, values in LLAMA_METADATA.items():
        for i, value in enumerate(values + [None]):  # None: the key is missing
            changed = {k: v for k, v in metadata.items() if k != key}
            if value is not None:
                changed[key] = np.float32(value) if isinstance(value, float) else \
                    np.uint32(value) if isinstance(value, int) and 0 <= value < 2**32 else value
            path = folder / f"{key}_{i}.gguf"
            write_gguf(path, changed, tensors)
            yield f"{key} = {value!r}", path
    for name in ("blk.0.attn_q.weight", "output_norm.weight"):
        path = folder / f"without_{name}.gguf"
        write_gguf(path, metadata, {k: v for k, v in tensors.items() if k != name})
        yield f"no tensor {name}", path
    path = folder / "wrong_shape.gguf"
    write_gguf(path, metadata, {**tensors, "blk.0.attn_k.weight": tensors["blk.0.attn_q.weight"]})
    yield "attn_k with attn_q's shape", path
