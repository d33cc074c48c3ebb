"""GGUF values, headers and corruptions; tiny Llama configs and token ids for the pretrained-model chapter."""
from __future__ import annotations

import struct

import numpy as np
from hypothesis import strategies as st


_GGUF_SCALARS = {
    np.uint8: st.integers(0, 2**8 - 1), np.int8: st.integers(-2**7, 2**7 - 1),
    np.uint16: st.integers(0, 2**16 - 1), np.int16: st.integers(-2**15, 2**15 - 1),
    np.uint32: st.integers(0, 2**32 - 1), np.int32: st.integers(-2**31, 2**31 - 1),
    np.uint64: st.integers(0, 2**64 - 1), np.int64: st.integers(-2**63, 2**63 - 1),
    np.float32: st.floats(width=32, allow_nan=False), np.float64: st.floats(allow_nan=False),
}


def gguf_scalars(dtype=None):
    """One typed GGUF metadata value: a NumPy scalar of one of the 10 numeric types, a bool, or a str."""
    numeric = [st.builds(t, strat) for t, strat in _GGUF_SCALARS.items()] if dtype is None \
        else [st.builds(dtype, _GGUF_SCALARS[dtype])]
    return st.one_of(*numeric, st.booleans(), st.text(max_size=20)) if dtype is None else numeric[0]


@st.composite
def gguf_arrays(draw, depth: int = 0):
    """A GGUF array value: a list of one element type (numbers, bools, strings, or arrays)."""
    kind = draw(st.sampled_from(["number", "bool", "str"] + (["array"] if depth < 2 else [])))
    n = draw(st.integers(0, 6))
    if kind == "number":
        dtype = draw(st.sampled_from(list(_GGUF_SCALARS)))
        return np.array(draw(st.lists(_GGUF_SCALARS[dtype], min_size=n, max_size=n)), dtype=dtype)
    if kind == "bool":
        return draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if kind == "str":
        return draw(st.lists(st.text(max_size=10), min_size=n, max_size=n))
    return [draw(gguf_arrays(depth=depth + 1)) for _ in range(n)]


def gguf_values():
    return st.one_of(gguf_scalars(), gguf_arrays())


def gguf_metadata():
    """Metadata dicts key -> typed value, as `write_gguf` takes them. Not the key general.alignment:
    that one is the file's layout, which write_gguf checks against its alignment argument (hypothesis
    finds the key among the module's constants; its own tests cover it)."""
    keys = st.text(min_size=1, max_size=24).filter(lambda key: key != "general.alignment")
    return st.dictionaries(keys, gguf_values(), max_size=6)


def gguf_python_value(value):
    """What the reader should return for a value given to the writer: a Python scalar, a NumPy
    array for an array of numbers or bools (an empty list is written as an empty int32 array),
    a list of str, or a list of such values."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        if not value:
            return np.zeros(0, np.int32)
        if all(isinstance(v, bool) for v in value):
            return np.array(value, dtype=np.bool_)
        return [gguf_python_value(v) for v in value]
    return value


def gguf_same(a, b) -> bool:
    """Exact equality of two metadata values as the reader returns them, types and dtypes included."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype \
            and a.shape == b.shape and bool(np.all(a == b))
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(gguf_same, a, b))
    return type(a) is type(b) and a == b


def gguf_header(version: int = 3, n_tensors: int = 0, n_kv: int = 0, magic: bytes = b"GGUF") -> bytes:
    """The fixed GGUF header, for crafting files by hand (any counts, true or not)."""
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def gguf_string(text) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return struct.pack("<Q", len(data)) + data


def gguf_kv(key, value_type: int, body: bytes) -> bytes:
    """One metadata entry: key, value type, and the value's bytes as given."""
    return gguf_string(key) + struct.pack("<I", value_type) + body


def gguf_tensor_info(name, dims, kind: int, offset: int) -> bytes:
    return gguf_string(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims) + struct.pack("<IQ", kind, offset)


@st.composite
def gguf_mutations(draw, size: int):
    """Ways to corrupt a GGUF file of `size` bytes: flipped bytes, a truncation, a planted huge count."""
    kind = draw(st.sampled_from(["flip", "truncate", "huge"]))
    if kind == "truncate":
        return ("truncate", draw(st.integers(0, size - 1)))
    if kind == "flip":
        flips = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=8))
        return ("flip", flips)
    value = draw(st.sampled_from([2**63 - 1, 2**64 - 1, 2**40, 2**32 - 1, 10**12]))
    return ("huge", (draw(st.integers(0, size - 8)), value))


def apply_gguf_mutation(data: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind == "truncate":
        return data[:arg]
    out = bytearray(data)
    if kind == "flip":
        for position, xor in arg:
            out[position] ^= xor
    else:
        position, value = arg
        out[position:position + 8] = value.to_bytes(8, "little")
    return bytes(out)


@st.composite
def tiny_llama_configs(draw):
    """Keyword arguments for random_llama.write_random_llama: small, every GQA ratio, both head layouts."""
    n_kv_heads = draw(st.sampled_from([1, 2]))
    n_heads = n_kv_heads * draw(st.sampled_from([1, 2, 4]))
    return dict(n_layers=draw(st.integers(1, 2)), dim=32 * draw(st.integers(1, 2)),
                n_heads=n_heads, n_kv_heads=n_kv_heads, hidden_dim=32 * draw(st.integers(1, 3)),
                seed=draw(st.integers(0, 1000)), tied_embeddings=draw(st.booleans()),
                weight_type=draw(st.sampled_from([0, 1, 2, 3, 8, 30])))


def token_ids(vocab_size: int, min_size: int = 1, max_size: int = 24):
    return st.lists(st.integers(0, vocab_size - 1), min_size=min_size, max_size=max_size)
