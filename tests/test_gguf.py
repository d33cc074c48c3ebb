"""Laws of the GGUF reader, writer and dequantisation (tinytransformer.gguf)."""
from __future__ import annotations

import os
import struct
import tracemalloc

import numpy as np
import pytest
from conftest import require
from fuzzing import run_bounded
from hypothesis import given
from hypothesis import strategies as st
from strategies.basics import seeds
from strategies.gguf import (gguf_header, gguf_kv, gguf_metadata, gguf_python_value, gguf_same, gguf_tensor_info,
                             gguf_values)

from tinytransformer import gguf
from tinytransformer.gguf import GGUFError, GGUFFile, dequantize, quantize, write_gguf
from tinytransformer.random_llama import write_random_llama
from tinytransformer.testing import assert_close

QUANTISED = [gguf.Q4_0, gguf.Q4_1, gguf.Q8_0]
ALL_TYPES = [gguf.F32, gguf.F16, gguf.BF16] + QUANTISED


# --- reading what we wrote ------------------------------------------------------------

@given(metadata=gguf_metadata(), version=st.sampled_from([2, 3]))
def test_written_metadata_reads_back_equal(tmp_path_factory, metadata, version):
    path = tmp_path_factory.mktemp("meta") / "m.gguf"
    write_gguf(path, metadata, {}, version=version)
    with GGUFFile(path) as f:
        assert f.version == version
        assert f.metadata.keys() == metadata.keys()
        for key, value in metadata.items():
            assert gguf_same(f.metadata[key], gguf_python_value(value)), key
        assert f.tensors == {}


@given(seed=seeds(), kind=st.sampled_from(ALL_TYPES), rows=st.integers(1, 3), blocks=st.integers(1, 3),
       alignment=st.sampled_from([1, 8, 32, 64]))
def test_written_tensor_reads_back_as_its_dequantisation(tmp_path_factory, seed, kind, rows, blocks, alignment):
    x = np.random.default_rng(seed).standard_normal((rows, 32 * blocks)).astype(np.float32)
    raw = quantize(x, kind)
    path = tmp_path_factory.mktemp("t") / "t.gguf"
    write_gguf(path, {"a": "b"}, {"first": np.ones(3, np.float32), "w": (raw, kind, x.shape)}, alignment=alignment)
    with GGUFFile(path) as f:
        info = f.tensors["w"]
        assert info.shape == x.shape and info.dims == tuple(reversed(x.shape)) and info.type == kind
        assert info.offset % alignment == 0
        assert_close(f.tensor("w"), dequantize(raw, kind, x.shape), rtol=0, atol=0)
        assert_close(f.tensor("first"), np.ones(3, np.float32), rtol=0, atol=0)


@given(seed=seeds(), kind=st.sampled_from(ALL_TYPES))
def test_quantisation_error_is_within_half_a_step(seed, kind):
    x = np.random.default_rng(seed).standard_normal((2, 64)).astype(np.float32) * 3
    y = dequantize(quantize(x, kind), kind, x.shape)
    blocks = x.reshape(-1, 32)
    step = {gguf.F32: 0 * blocks, gguf.F16: np.abs(blocks) * 2.0**-10, gguf.BF16: np.abs(blocks) * 2.0**-7,
            gguf.Q8_0: np.abs(blocks).max(1, keepdims=True) / 127 + 0 * blocks,
            gguf.Q4_0: np.abs(blocks).max(1, keepdims=True) / 4 + 0 * blocks,  # -8d..7d: one side clips by d
            gguf.Q4_1: np.ptp(blocks, 1, keepdims=True) / 15 + 0 * blocks}[kind]
    # half a quantisation step, plus the float16 rounding of the scale (and offset)
    bound = step / 2 + 2.0**-10 * (np.abs(blocks).max(1, keepdims=True) + step) + 1e-6
    assert np.all(np.abs(y.reshape(-1, 32) - blocks) <= bound)


@pytest.mark.parametrize("kind", QUANTISED)
def test_infinite_and_nan_scales_dequantise_without_warnings(kind):
    blocks = []
    for d, m in [(np.inf, -np.inf), (np.nan, 0.0), (-np.inf, np.inf)]:
        head = np.float16(d).tobytes() + (np.float16(m).tobytes() if kind == gguf.Q4_1 else b"")
        blocks.append(head + b"\0" * (gguf.GGML_TYPES[kind].type_size - len(head)))
    x = dequantize(np.frombuffer(b"".join(blocks), np.uint8), kind)  # warnings are errors in this suite
    assert x.shape == (96,) and not np.isfinite(x).all()


def test_docstring_block_layouts_hold_on_a_hand_made_block():
    d = np.float16(0.5).tobytes()
    m = np.float16(-1.0).tobytes()
    qs = bytes([0x21] * 16)  # low nibble 1 (values 0..15), high nibble 2 (values 16..31)
    assert dequantize(np.frombuffer(d + qs, np.uint8), gguf.Q4_0).tolist() == [0.5 * (1 - 8)] * 16 + [0.5 * (2 - 8)] * 16
    assert dequantize(np.frombuffer(d + m + qs, np.uint8), gguf.Q4_1).tolist() == [0.5 * 1 - 1] * 16 + [0.5 * 2 - 1] * 16
    q8 = np.arange(-16, 16, dtype=np.int8)
    assert dequantize(np.frombuffer(d + q8.tobytes(), np.uint8), gguf.Q8_0).tolist() == (0.5 * q8).tolist()
    assert dequantize(np.frombuffer(np.float32(1.5).tobytes()[2:], np.uint8), gguf.BF16).tolist() == [1.5]


@pytest.mark.parametrize("call, problem", [
    (lambda: dequantize(np.zeros(4, np.float64), gguf.F32), "raw: expected bytes or a uint8 array, got dtype float64"),
    (lambda: dequantize("abcd", gguf.F32), "raw: expected bytes or a uint8 array"),
    (lambda: dequantize(np.zeros(34, np.uint8), gguf.Q8_0, (3,)), r"shape: expected a shape of 32 values, got \(3,\)"),
    (lambda: dequantize(np.zeros(2, np.uint8), True), "kind: expected a ggml type id"),
    (lambda: quantize(np.ones(32) * 1j, gguf.Q8_0), "x: expected a real-valued array, got dtype complex128"),
    (lambda: quantize("abc", gguf.F32), "x: expected a real-valued array"),
    (lambda: quantize(np.ones(32), True), "kind: expected a ggml type id"),
    (lambda: quantize(np.ones(32), 99), "kind: expected a ggml type id"),
])
def test_bad_dequantize_and_quantize_calls_raise_a_clear_value_error(call, problem):
    with pytest.raises(ValueError, match=problem):
        call()


def test_dequantize_takes_bytes():
    assert dequantize(np.float32(2.5).tobytes(), gguf.F32).tolist() == [2.5]


# --- the gguf package as the oracle --------------------------------------------------

@given(seed=seeds(), kind=st.sampled_from(ALL_TYPES), n_blocks=st.integers(1, 8))
def test_dequantisation_equals_gguf_package_on_any_bytes(seed, kind, n_blocks):
    ggml = require("gguf", "the reference dequantisation")
    size = gguf.GGML_TYPES[kind].type_size * n_blocks * (32 // gguf.GGML_TYPES[kind].block_size)
    raw = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    if kind in (gguf.F32, gguf.F16, gguf.BF16):  # keep floats finite so NaN payloads do not matter
        raw = quantize(np.random.default_rng(seed).standard_normal(size // {0: 4}.get(kind, 2)).astype(np.float32),
                       kind)
    with np.errstate(invalid="ignore", over="ignore"):  # random scales can be inf or NaN
        theirs = ggml.quants.dequantize(raw, ggml.GGMLQuantizationType(kind))
    assert_close(dequantize(raw, kind), np.asarray(theirs, np.float32).reshape(-1), rtol=0, atol=0,
                 equal_nan=True)  # random bytes make NaN scales: NaN in the same places


def test_we_read_files_that_the_gguf_package_writes(tmp_path):
    ggml = require("gguf", "an independent GGUF writer")
    path = tmp_path / "theirs.gguf"
    writer = ggml.GGUFWriter(str(path), arch="llama")
    writer.add_uint32("answer", 42)
    writer.add_float32("pi", 3.5)
    writer.add_string("name", "tiny")
    writer.add_array("list", ["a", "bc"])
    writer.add_bool("flag", True)
    w = np.arange(64, dtype=np.float32).reshape(2, 32)
    writer.add_tensor("w", w)
    writer.add_tensor("q", ggml.quants.quantize(w, ggml.GGMLQuantizationType.Q8_0),
                      raw_dtype=ggml.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFFile(path) as f:
        assert f.metadata["answer"] == 42 and f.metadata["pi"] == 3.5 and f.metadata["name"] == "tiny"
        assert f.metadata["list"] == ["a", "bc"] and f.metadata["flag"] is True
        assert f.metadata["general.architecture"] == "llama"
        assert_close(f.tensor("w"), w, rtol=0, atol=0)
        assert_close(f.tensor("q"), ggml.quants.dequantize(
            ggml.quants.quantize(w, ggml.GGMLQuantizationType.Q8_0), ggml.GGMLQuantizationType.Q8_0), rtol=0, atol=0)


@pytest.mark.model
def test_smollm2_tensors_dequantise_exactly_as_the_gguf_package_does(smollm2_path):
    ggml = require("gguf", "the reference dequantisation")
    with GGUFFile(smollm2_path) as f:
        assert f.version == 3 and len(f.tensors) == 272
        assert f.metadata["general.architecture"] == "llama" and len(f.metadata["tokenizer.ggml.tokens"]) == 49152
        by_type = {}
        for info in f.tensors.values():  # every type in the file, and the first few tensors of each
            by_type.setdefault(info.type, []).append(info)
        assert set(by_type) == {gguf.F32, gguf.Q4_1, gguf.Q8_0}
        for infos in by_type.values():
            for info in infos[:3]:
                theirs = ggml.quants.dequantize(f.raw_tensor(info.name), ggml.GGMLQuantizationType(info.type))
                assert_close(f.tensor(info.name), theirs.reshape(info.shape), rtol=0, atol=0, err_msg=info.name)


# --- untrusted input -----------------------------------------------------------------

@pytest.mark.parametrize("data, problem", [
    (b"", "empty file"),
    (b"GGU", "truncated"),
    (gguf_header(magic=b"GGML"), "not a GGUF file"),
    (gguf_header(version=1), "unsupported GGUF version 1"),
    (gguf_header(version=4), "unsupported GGUF version 4"),
    (gguf_header(n_tensors=2**63), "tensor_count"),
    (gguf_header(n_kv=2**64 - 1), "metadata_kv_count"),
    (gguf_header(n_kv=1) + struct.pack("<Q", 2**62) + b"\0" * 16, "length of metadata key 0"),
    (gguf_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99) + b"\0" * 8, "unknown value type 99"),
    (gguf_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2**61), "length of metadata 'k'"),
    (gguf_header(n_kv=1) + struct.pack("<Q", 1) + b"\xff" + struct.pack("<I", 0) + b"\0", "not valid UTF-8"),
    (gguf_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 7) + b"\x05", "bool stored as 5"),
    (gguf_header(n_kv=1) + struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, 3), "power of two"),
])
def test_malformed_headers_raise_gguf_error_naming_the_problem(tmp_path, data, problem):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=problem) as info:
        GGUFFile(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_gguf_error(tmp_path):
    with pytest.raises(GGUFError, match="nope.gguf cannot be opened: No such file"):
        GGUFFile(tmp_path / "nope.gguf")


def _tensor_file(tmp_path, dims, kind, offset, data_bytes=64):
    head = gguf_header(n_tensors=1) + gguf_tensor_info("w", dims, kind, offset)
    path = tmp_path / "t.gguf"
    path.write_bytes(head + b"\0" * (-len(head) % 32) + b"\0" * data_bytes)
    return path


@pytest.mark.parametrize("dims, kind, offset, problem", [
    ((2**31, 2**31), gguf.F32, 0, "runs past the end"),
    ((2**62, 2**62), gguf.F32, 0, "at most 9223372036854775807 elements"),
    ((2**64 - 1,), gguf.F32, 0, "at most 9223372036854775807 elements"),
    ((0, 2**64 - 1), gguf.F32, 0, "expected each >= 1"),
    ((32, 0), gguf.Q8_0, 0, "expected each >= 1"),
    ((16,), gguf.F32, 64, "runs past the end"),
    ((8,), gguf.F32, 3, "not a multiple of the alignment"),
    ((16,), gguf.Q4_0, 0, "not a multiple of its block size 32"),
    ((32,), 12, 0, "Q4_K"),
    ((32,), 1234, 0, "unknown"),
    ((1, 1, 1, 1, 1), gguf.F32, 0, "5 dims"),
])
def test_bad_tensor_infos_raise_gguf_error(tmp_path, dims, kind, offset, problem):
    with pytest.raises(GGUFError, match=problem):
        GGUFFile(_tensor_file(tmp_path, dims, kind, offset))


@given(value=gguf_values())
def test_truncating_any_metadata_value_raises_gguf_error(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("trunc") / "t.gguf"
    write_gguf(path, {"key": value}, {})
    data = path.read_bytes().rstrip(b"\0")
    for cut in sorted({len(data) - 1, len(data) // 2, 30}):
        if cut < len(data):
            path.write_bytes(data[:cut])
            with pytest.raises(GGUFError):
                GGUFFile(path)


# --- metadata arrays: NumPy arrays, read in bulk ----------------------------------------

def _one_key_file(tmp_path, value_type, body):
    """A GGUF file with one metadata key 'k' whose value (after its type) is `body`."""
    path = tmp_path / "one.gguf"
    path.write_bytes(gguf_header(n_kv=1) + gguf_kv("k", value_type, body))
    return path


def test_numeric_metadata_arrays_are_numpy_arrays_about_their_size_in_the_file(tmp_path):
    values = np.arange(1_000_000, dtype=np.int32) - 500_000
    path = tmp_path / "numbers.gguf"
    write_gguf(path, {"numbers": values, "flags": np.arange(10) % 3 == 0}, {})
    tracemalloc.start()
    try:
        with GGUFFile(path) as f:
            numbers, flags = f.metadata["numbers"], f.metadata["flags"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(numbers, np.ndarray) and numbers.dtype == np.int32 and np.array_equal(numbers, values)
    assert isinstance(flags, np.ndarray) and flags.dtype == np.bool_
    assert flags.tolist() == [True, False, False] * 3 + [True]
    assert peak < 1.5 * values.nbytes  # a Python list of the same ints takes about 9 times the file's bytes


def test_bool_and_number_arrays_are_read_in_one_step_not_element_by_element(tmp_path, monkeypatch):
    # a 20 MB bool array read one byte at a time took 19 s
    path = tmp_path / "arrays.gguf"
    write_gguf(path, {"flags": np.arange(2**20) % 3 == 0, "numbers": np.arange(2**20, dtype=np.float32)}, {})
    reads = []
    original = gguf.reader.Cursor.take
    monkeypatch.setattr(gguf.reader.Cursor, "take", lambda self, n, what: reads.append(what) or original(self, n, what))
    with GGUFFile(path) as f:
        assert f.metadata["flags"].sum() == (2**20 + 2) // 3 and f.metadata["numbers"][-1] == 2**20 - 1
    assert len(reads) < 30, f"{len(reads)} reads for two arrays"


def test_a_bool_array_with_a_byte_other_than_0_or_1_names_its_index(tmp_path):
    body = struct.pack("<IQ", gguf.BOOL, 5) + bytes([0, 1, 1, 7, 0])
    with pytest.raises(GGUFError, match=r"metadata 'k'\[3\] is a bool stored as 7"):
        GGUFFile(_one_key_file(tmp_path, gguf.ARRAY, body))


@pytest.mark.parametrize("strings, problem", [
    ([b"ab", b"\xff", b"c"], r"metadata 'k'\[1\] at offset \d+ is not valid UTF-8"),
    ([b"ab", b"c"], r"truncated file: length of metadata 'k'\[2\]"),  # the array says 3 strings
])
def test_a_bad_string_inside_a_string_array_names_its_index(tmp_path, strings, problem):
    body = struct.pack("<IQ", gguf.STRING, 3) + b"".join(struct.pack("<Q", len(s)) + s for s in strings)
    with pytest.raises(GGUFError, match=problem):
        GGUFFile(_one_key_file(tmp_path, gguf.ARRAY, body + b"\0" * 7))


def test_a_long_string_array_reads_back_in_order(tmp_path):
    tokens = [f"t{i}\u00e9" * (i % 4) for i in range(50_000)]
    path = tmp_path / "tokens.gguf"
    write_gguf(path, {"tokens": tokens}, {})
    with GGUFFile(path) as f:
        assert f.metadata["tokens"] == tokens


def test_every_user_of_metadata_arrays_reads_a_written_llama(tmp_path, capsys):
    from tinytransformer import cli
    from tinytransformer.llama import config_from_gguf
    from tinytransformer.tokenizers.byte_level import ByteLevelBPETokenizer

    path = write_random_llama(tmp_path / "tiny.gguf", n_layers=1, dim=32, n_heads=2, n_kv_heads=1, hidden_dim=32)
    with GGUFFile(path) as f:
        types = f.metadata["tokenizer.ggml.token_type"]
        assert isinstance(types, np.ndarray) and types.dtype == np.int32
        assert config_from_gguf(f).vocab_size == len(types)
    tokenizer = ByteLevelBPETokenizer.from_gguf(path)
    assert tokenizer.decode(tokenizer.encode("the cat")) == "the cat"
    assert cli.main(["info", str(path)]) == 0
    assert "tokenizer.ggml.token_type = [3, 3, 3, 1, 1, ...] (265 items)" in capsys.readouterr().out


def test_integer_tokens_without_a_vocab_size_raise_gguf_error(tmp_path):
    from tinytransformer.llama import config_from_gguf

    path = write_random_llama(tmp_path / "tiny.gguf", n_layers=1, dim=32, n_heads=2, n_kv_heads=1, hidden_dim=32)
    with GGUFFile(path) as f:
        metadata = {k: v for k, v in f.metadata.items() if k != "llama.vocab_size"}
        tensors = {name: (np.array(f.raw_tensor(name)), info.type, info.shape) for name, info in f.tensors.items()}
    for tokens in (5, np.arange(265, dtype=np.int32)):
        write_gguf(path, {**metadata, "tokenizer.ggml.tokens": tokens}, tensors)
        with GGUFFile(path) as f, pytest.raises(GGUFError, match="tokenizer.ggml.tokens: expected an array of strings"):
            config_from_gguf(f)


# --- what is not a regular file --------------------------------------------------------

def test_a_fifo_or_a_folder_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    outcome = run_bounded(lambda: GGUFFile(fifo), clean=(GGUFError,), seconds=5)
    assert outcome.kind == "clean error" and f"{fifo}: expected a regular file, got a FIFO" in outcome.detail
    with pytest.raises(GGUFError, match="expected a regular file, got a directory"):
        GGUFFile(tmp_path)


# --- the writer: check first, then write beside the target and rename --------------------

def _folder_listing(path):
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("call, problem", [
    (lambda p: write_gguf(p, {}, {}, alignment=0), "alignment: expected a power of two from 1 to 65536, got 0"),
    (lambda p: write_gguf(p, {}, {}, alignment=1.5), "alignment: expected a power of two"),
    (lambda p: write_gguf(p, {}, {}, alignment=3), "alignment: expected a power of two"),
    (lambda p: write_gguf(p, {}, {}, alignment=True), "alignment: expected a power of two"),
    (lambda p: write_gguf(p, {}, {}, alignment=2**40), "alignment: expected a power of two"),
    (lambda p: write_gguf(p, {"general.alignment": np.uint32(64)}, {}), r"write_gguf\(..., alignment=64\)"),
    (lambda p: write_gguf(p, {}, {}, version=2.0), "version: expected one of"),
    (lambda p: write_gguf(p, {"n": 2**70}, {}), r"metadata 'n': expected an integer in \[-2\*\*63, 2\*\*64\)"),
    (lambda p: write_gguf(p, {"n": [1, -2**70]}, {}), r"metadata 'n'\[1\]: expected an integer"),
    (lambda p: write_gguf(p, {"n": [-1, 2**63]}, {}), r"metadata 'n'\[0\]: -1 does not fit GGUF type uint64"),
    (lambda p: write_gguf(p, {"x": 1e300}, {}), "metadata 'x': 1e\\+300 does not fit GGUF type float32"),
    (lambda p: write_gguf(p, {5: "five"}, {}), "metadata key 5: expected a str, got int"),
    (lambda p: write_gguf(p, {"s": "\ud800"}, {}), "metadata 's': cannot be written as UTF-8"),
    (lambda p: write_gguf(p, {"a": np.ones((2, 2), np.int32)}, {}), "metadata 'a': expected a 1-D array"),
    (lambda p: write_gguf(p, {"a": np.ones(2, np.float16)}, {}), "metadata 'a': expected one of the GGUF dtypes"),
    (lambda p: write_gguf(p, {"a": [1, "x"]}, {}), "metadata 'a': expected array elements of one type"),
    (lambda p: write_gguf(p, {"a": [[[[[[[[[[1]]]]]]]]]]}, {}), "arrays nest more than 8 deep"),
    (lambda p: write_gguf(p, {"a": {1: 2}}, {}), "metadata 'a': expected a str, bool, int"),
    (lambda p: write_gguf(p, [], {}), "metadata: expected a dict, got list"),
    (lambda p: write_gguf(p, {}, {"w": np.ones(3)}), "tensor 'w': expected a float32 or float16 array"),
    (lambda p: write_gguf(p, {}, {"w": np.ones((3, 0), np.float32)}), r"tensor 'w': expected 1 to 4 dims, each >= 1"),
    (lambda p: write_gguf(p, {}, {"w": np.float32(1)}), r"tensor 'w': expected 1 to 4 dims"),
    (lambda p: write_gguf(p, {}, {"w": (np.zeros(33, np.uint8), gguf.Q8_0, (1, 32))}), "takes 34 bytes, got 33"),
    (lambda p: write_gguf(p, {}, {"w": (np.zeros(34, np.uint8), gguf.Q8_0, (2, 16))}), "multiple of 32"),
    (lambda p: write_gguf(p, {}, {"w": (np.zeros(34, np.int64), gguf.Q8_0, (1, 32))}), "uint8 array"),
    (lambda p: write_gguf(p, {}, {"w": (np.zeros(34, np.uint8), 99, (1, 32))}), "expected a ggml type id"),
    (lambda p: write_gguf(p, {}, {"w": (np.zeros(34, np.uint8), gguf.Q8_0)}), r"expected \(raw uint8 bytes"),
    (lambda p: write_gguf(p, {}, {7: np.ones(2, np.float32)}), "tensor name 7: expected a str"),
])
def test_write_gguf_refuses_bad_input_clearly_and_leaves_the_old_file_alone(tmp_path, call, problem):
    path = tmp_path / "model.gguf"
    write_gguf(path, {"old": "yes"}, {"w": np.ones(4, np.float32)})
    before = path.read_bytes()
    with pytest.raises(ValueError, match=problem):
        call(path)
    assert path.read_bytes() == before
    assert _folder_listing(path) == ["model.gguf"]  # no temporary file left behind


@pytest.mark.parametrize("value, value_type", [(2**31, gguf.INT64), (2**63, gguf.UINT64), (-2**63, gguf.INT64),
                                               ([1, 2**40], gguf.INT64), ([0, 2**64 - 1], gguf.UINT64)])
def test_python_ints_are_written_in_the_narrowest_type_that_holds_them(tmp_path, value, value_type):
    path = tmp_path / "ints.gguf"
    write_gguf(path, {"n": value}, {})
    with GGUFFile(path) as f:
        read = f.metadata["n"]
        if isinstance(value, list):
            assert read.dtype == gguf.VALUE_DTYPES[value_type] and read.tolist() == value
        else:
            assert f.metadata_types["n"] == value_type and read == value


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    write_gguf(path, {"old": "yes"}, {"w": np.ones(4, np.float32)})
    before = path.read_bytes()

    def broken_quantize(x, kind):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.writer, "quantize", broken_quantize)  # the name write_gguf calls
    with pytest.raises(OSError, match="disk full"):
        write_gguf(path, {"new": "yes"}, {"w": np.zeros(4, np.float32)})
    assert path.read_bytes() == before and _folder_listing(path) == ["model.gguf"]


def test_rewriting_a_file_that_a_reader_has_mapped_keeps_the_readers_bytes(tmp_path):
    path = tmp_path / "model.gguf"
    big = np.arange(1 << 18, dtype=np.float32)  # 1 MiB of tensor data, far past the new file's end

    def read_old_data_after_a_rewrite():
        write_gguf(path, {}, {"w": big})
        with GGUFFile(path) as f:
            old = f.raw_tensor("w")  # a view of the memory map
            write_gguf(path, {}, {"w": np.ones(1, np.float32)})
            assert old.view(np.float32)[-1] == big[-1]  # in-place truncation: SIGBUS here
            del old

    outcome = run_bounded(read_old_data_after_a_rewrite, clean=(), seconds=30)
    assert outcome.kind == "ok", outcome
    with GGUFFile(path) as f:
        assert f.tensor("w").tolist() == [1.0]


def test_rewriting_keeps_permissions_and_follows_symlinks(tmp_path):
    target = tmp_path / "model.gguf"
    write_gguf(target, {"v": 1}, {})
    target.chmod(0o640)
    link = tmp_path / "link.gguf"
    link.symlink_to(target)
    write_gguf(link, {"v": 2}, {})
    assert link.is_symlink() and (target.stat().st_mode & 0o777) == 0o640
    with GGUFFile(target) as f:
        assert f.metadata["v"] == 2
