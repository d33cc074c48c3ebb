"""Laws of the GGUF reader, writer and dequantisation (tinytransformer.gguf)."""
from __future__ import annotations

import struct
import time
import tracemalloc

import numpy as np
import pytest
from conftest import require
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (apply_gguf_mutation, gguf_metadata, gguf_mutations, gguf_python_value, gguf_values,
                        seeds)

from tinytransformer import gguf
from tinytransformer.gguf import GGUFError, GGUFFile, dequantize, quantize, write_gguf
from tinytransformer.testing import write_random_llama
from tinytransformer.testing import assert_close

QUANTISED = [gguf.Q4_0, gguf.Q4_1, gguf.Q8_0]
ALL_TYPES = [gguf.F32, gguf.F16, gguf.BF16] + QUANTISED


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", n_layers=1, dim=32,
                              n_heads=2, n_kv_heads=1, hidden_dim=32)


# --- reading what we wrote ------------------------------------------------------------

@given(metadata=gguf_metadata(), version=st.sampled_from([2, 3]))
def test_written_metadata_reads_back_equal(tmp_path_factory, metadata, version):
    path = tmp_path_factory.mktemp("meta") / "m.gguf"
    write_gguf(path, metadata, {}, version=version)
    with GGUFFile(path) as f:
        assert f.version == version
        assert f.metadata == {k: gguf_python_value(v) for k, v in metadata.items()}
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
    assert_close(dequantize(raw, kind), np.asarray(theirs, np.float32).reshape(-1), rtol=0, atol=0)


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

def _header(version=3, n_tensors=0, n_kv=0, magic=b"GGUF"):
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


@pytest.mark.parametrize("data, problem", [
    (b"", "empty file"),
    (b"GGU", "truncated"),
    (_header(magic=b"GGML"), "not a GGUF file"),
    (_header(version=1), "unsupported GGUF version 1"),
    (_header(version=4), "unsupported GGUF version 4"),
    (_header(n_tensors=2**63), "tensor_count"),
    (_header(n_kv=2**64 - 1), "metadata_kv_count"),
    (_header(n_kv=1) + struct.pack("<Q", 2**62) + b"\0" * 16, "length of metadata key 0"),
    (_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99) + b"\0" * 8, "unknown value type 99"),
    (_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2**61), "length of metadata 'k'"),
    (_header(n_kv=1) + struct.pack("<Q", 1) + b"\xff" + struct.pack("<I", 0) + b"\0", "not valid UTF-8"),
    (_header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 7) + b"\x05", "bool stored as 5"),
    (_header(n_kv=1) + struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, 3), "power of two"),
])
def test_malformed_headers_raise_gguf_error_naming_the_problem(tmp_path, data, problem):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=problem) as info:
        GGUFFile(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_gguf_error(tmp_path):
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "nope.gguf")


def _tensor_file(tmp_path, dims, kind, offset, data_bytes=64):
    name = b"w"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims)) + struct.pack(
        f"<{len(dims)}Q", *dims) + struct.pack("<IQ", kind, offset)
    head = _header(n_tensors=1) + info
    path = tmp_path / "t.gguf"
    path.write_bytes(head + b"\0" * (-len(head) % 32) + b"\0" * data_bytes)
    return path


@pytest.mark.parametrize("dims, kind, offset, problem", [
    ((2**62, 2**62), gguf.F32, 0, "runs past the end"),
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


@settings(max_examples=60)
@given(data=st.data(), header_only=st.booleans())
def test_mutated_file_loads_or_raises_gguf_error_quickly_and_within_memory(tiny_file, tmp_path_factory, data,
                                                                           header_only):
    original = tiny_file.read_bytes()
    with GGUFFile(tiny_file) as f:
        header_size = f.data_offset  # most bytes are tensor data; aim half the cases at the header
    mutated = apply_gguf_mutation(original, data.draw(gguf_mutations(header_size if header_only else len(original))))
    path = tmp_path_factory.mktemp("fuzz") / "m.gguf"
    path.write_bytes(mutated)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with GGUFFile(path) as f:
            for name in f.tensors:
                f.tensor(name)
    except GGUFError:
        pass
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < 5.0
    assert peak < 16 * len(original) + 2**20  # never more than a small multiple of the file


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
