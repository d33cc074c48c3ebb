"""Quantised weights in the one model: kept-quantised weights, writing them back to GGUF, quantising a
whole model by every method, and the measurement (tinytransformer.quant.weights, model_quantization, metrics)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import require
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies.basics import seeds
from strategies.quant import quant_values

from tinytransformer import gguf
from tinytransformer.generation import generate
from tinytransformer.llama import load_model, save_model
from tinytransformer.metrics import compare, reference_log_probs
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.model_quantization import (METHODS, awq_fold_scales, calibration_statistics, projection_names,
                                                quantize_model)
from tinytransformer.quant.weights import QuantizedWeight
from tinytransformer.random_llama import write_random_llama
from tinytransformer.testing import assert_close

BLOCK_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
CHAIN = dict(rtol=1e-4, atol=1e-4)  # a few layers of float32: looser than one operation


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("q") / "tiny.gguf", n_layers=2, dim=64, n_heads=4,
                              n_kv_heads=2, hidden_dim=256, weight_type=gguf.Q4_1, embedding_type=gguf.Q8_0)


@settings(max_examples=settings.default.max_examples // 2)  # each example quantises many blocks
@given(name=st.sampled_from(BLOCK_TYPES), rows=st.integers(1, 9), blocks=st.integers(1, 2), seed=seeds(),
       chunk_bytes=st.sampled_from([1, 1000, 1 << 21]), batch=st.sampled_from([(), (3,), (2, 2)]))
def test_kept_quantised_weight_multiplies_as_its_dequantised_matrix(name, rows, blocks, seed, chunk_bytes, batch):
    kind = getattr(gguf, name)
    width = gguf.GGML_TYPES[kind].block_size * blocks
    w = quant_values("normal", (rows, width), seed)
    q = QuantizedWeight.from_float(w, kind, chunk_bytes=chunk_bytes)
    dense = gguf.dequantize(gguf.quantize(w, kind), kind, w.shape)
    np.testing.assert_array_equal(q.dequantize(), dense)
    x = quant_values("normal", batch + (width,), seed + 1)
    assert_close(q.linear(x), x @ dense.T, atol=1e-6 * (np.abs(x) @ np.abs(dense).T).max())  # sums that cancel
    ids = np.random.default_rng(seed).integers(0, rows, (2, 3))
    np.testing.assert_array_equal(q.rows(ids), dense[ids])
    assert q.bits_per_weight == 8 * gguf.GGML_TYPES[kind].type_size / gguf.GGML_TYPES[kind].block_size


def test_kept_quantised_model_gives_the_logits_of_the_dequantised_model(tiny_file):
    dense, kept = load_model(tiny_file).model, load_model(tiny_file, keep_quantized=True).model
    quantised = [n for n, p in kept.params.items() if isinstance(p, QuantizedWeight)]
    assert len(quantised) == len(projection_names(kept.config)) + 2  # + the embedding and the output head
    ids = [5, 6, 7, 100, 3, 9]
    assert_close(kept.forward(ids), dense.forward(ids), **CHAIN)
    assert generate(kept, ids, 6, stop_at_eos=False) == generate(dense, ids, 6, stop_at_eos=False)


def test_kept_quantised_model_writes_back_byte_for_byte(tiny_file, tmp_path):
    kept_file = load_model(tiny_file, keep_quantized=True)
    kept = kept_file.model
    path = save_model(kept, tmp_path / "again.gguf", metadata={k: v for k, v in kept_file.metadata.items()
                                                                if k.startswith("tokenizer.")})
    with gguf.GGUFFile(tiny_file) as before, gguf.GGUFFile(path) as after:
        for name in projection_names(kept.config):
            assert after.tensors[name].type == before.tensors[name].type
            np.testing.assert_array_equal(after.raw_tensor(name), before.raw_tensor(name))
    again = load_model(path, keep_quantized=True).model
    assert_close(again.forward([1, 2, 3]), kept.forward([1, 2, 3]), rtol=0, atol=0)


def test_requantised_model_reads_back_with_our_reader_and_the_gguf_package(tiny_file, tmp_path):
    package = require("gguf", "an independent GGUF reader")
    model = load_model(tiny_file).model
    types = {n: (gguf.Q4_K if model.params[n].shape[1] % 256 == 0 else gguf.Q5_0) for n in projection_names(model.config)}
    path = save_model(model, tmp_path / "k.gguf", types=types)
    reader = package.GGUFReader(str(path))
    theirs = {t.name: t for t in reader.tensors}
    with gguf.GGUFFile(path) as f:
        for name, kind in types.items():
            assert int(theirs[name].tensor_type) == kind == f.tensors[name].type
            np.testing.assert_array_equal(np.asarray(theirs[name].data).reshape(-1).view(np.uint8), f.raw_tensor(name))
            expected = package.quants.dequantize(np.asarray(theirs[name].data), theirs[name].tensor_type)
            np.testing.assert_array_equal(f.tensor(name), np.asarray(expected).reshape(f.tensors[name].shape))
    kept = load_model(path, keep_quantized=True).model
    assert {kept.params[n].type_name for n in types} == {"Q4_K", "Q5_0"}
    assert_close(kept.forward([4, 5, 6]), load_model(path).model.forward([4, 5, 6]), **CHAIN)


@pytest.mark.slow
@pytest.mark.model
def test_smollm2_kept_quantised_gives_the_logits_of_the_float32_model(smollm2_path):
    kept_file = load_model(smollm2_path, keep_quantized=True)
    kept = kept_file.model
    assert {kept.params[n].type_name for n in projection_names(kept.config)} == {"Q4_1"}
    assert sum(p.nbytes for p in kept.params.values()) < 110e6  # the blocks, not 540 MB of float32
    ids = kept_file.tokenizer.encode("The capital city of Korea is")
    dense = load_model(smollm2_path).model
    assert_close(kept.forward(ids), dense.forward(ids), **CHAIN)


# --- quantising a whole model, and the measurement --------------------------------------------

@pytest.fixture(scope="module")
def small_model():
    config = TransformerConfig(vocab_size=48, d_model=128, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=256,
                               max_seq_len=32)
    return TinyTransformer(config, seed=3)


def test_every_method_quantises_every_projection_and_counts_its_bits(small_model):
    windows = np.random.default_rng(0).integers(0, 48, (2, 16))
    stats = calibration_statistics(small_model, windows)
    reference = reference_log_probs(small_model, windows)
    expected_bits = {"Q8_0": 8.5, "nf4": 4.5, "fp4": 4.5, "rtn-g128": 4.28125,
                     "gptq-g128": 4.28125, "awq-g128": 4.28125}
    for method in METHODS:
        model, bits = quantize_model(small_model, method, stats, n_grid=4)
        assert 3.9 < bits < 9, method
        if method in expected_bits:
            assert bits == pytest.approx(expected_bits[method]), method
        for name in projection_names(model.config):
            assert model.params[name] is not small_model.params[name]
        r = compare(model, windows, reference)
        assert r.kl >= -1e-6 and 0 <= r.same_top <= 1 and r.perplexity > 1, method
    with pytest.raises(ValueError, match="statistics: gptq-g128 needs"):
        quantize_model(small_model, "gptq-g128")
    with pytest.raises(ValueError, match="method: expected one of"):
        quantize_model(small_model, "Q3_K")


def test_awq_folding_leaves_the_float_model_unchanged(small_model):
    windows = np.random.default_rng(1).integers(0, 48, (2, 16))
    folded = awq_fold_scales(small_model.params, small_model.config, calibration_statistics(small_model, windows),
                             n_grid=4)
    assert any(not np.array_equal(folded[n], small_model.params[n]) for n in folded)  # something was scaled
    model = TinyTransformer(small_model.config, folded)
    assert_close(model.forward(windows[0]), small_model.forward(windows[0]), **CHAIN)


def test_comparison_of_a_model_with_itself_is_perfect_agreement(small_model):
    windows = np.random.default_rng(2).integers(0, 48, (1, 12))
    r = compare(small_model, windows, reference_log_probs(small_model, windows))
    assert abs(r.kl) < 1e-6 and r.same_top == 1.0 and r.n_tokens == 11
