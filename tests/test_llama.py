"""Loading GGUF files into the one decoder (tinytransformer.llama), on small random files the tests write."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies.basics import seeds
from strategies.gguf import tiny_llama_configs, token_ids

from strategies.models import model_configs
from tinytransformer.generation import generate, stream
from tinytransformer.gguf import GGUFError, GGUFFile, write_gguf
from tinytransformer.llama import load_model, save_model
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.positional import apply_rope, rope_half_permutation
from tinytransformer.random_llama import write_random_llama
from tinytransformer.testing import assert_close

# A chain of layers in float32: looser than one attention call (see testing.py).
CHAIN = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("llama") / "tiny.gguf", seed=0)


@pytest.fixture(scope="module")
def tiny_file(tiny_path):
    return load_model(tiny_path)  # a LoadedModel: the model, and the file's tokenizer, metadata, types, path


@pytest.fixture(scope="module")
def tiny(tiny_file):
    return tiny_file.model


def _random_model(tmp_path_factory, config) -> TinyTransformer:
    return load_model(write_random_llama(tmp_path_factory.mktemp("rand") / "m.gguf", **config)).model


def test_config_comes_from_the_metadata(tiny):
    c = tiny.config
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.head_dim) == (2, 64, 4, 2, 96, 16)
    assert c.vocab_size == 265 and c.eos_id == 2 and c.max_seq_len == 128 and not c.tie_embeddings
    assert (c.norm, c.ffn, c.position, c.block, c.rope_interleaved) == ("rms", "swiglu", "rope", "pre", True)


def test_forward_returns_float32_logits_per_position(tiny):
    logits = tiny.forward([5, 6, 7])
    assert logits.shape == (3, 265) and logits.dtype == np.float32 and np.isfinite(logits).all()


@given(config=tiny_llama_configs(), data=st.data())
@settings(max_examples=10)
def test_forward_on_a_prefix_equals_the_first_rows_of_forward_on_the_whole(tmp_path_factory, config, data):
    model = _random_model(tmp_path_factory, config)
    ids = data.draw(token_ids(model.config.vocab_size, min_size=2, max_size=40))
    cut = data.draw(st.integers(1, len(ids) - 1))
    assert_close(model.forward(ids[:cut]), model.forward(ids)[:cut], **CHAIN)


@given(config=tiny_llama_configs(), data=st.data())
@settings(max_examples=10)
def test_cached_decode_logits_equal_full_recompute(tmp_path_factory, config, data):
    model = _random_model(tmp_path_factory, config)
    ids = data.draw(token_ids(model.config.vocab_size, min_size=2, max_size=40))
    split = data.draw(st.integers(1, len(ids) - 1))
    cache = model.new_cache(1, len(ids))
    rows = [model.logits(model.hidden_states(ids[:split], cache))]
    for i in ids[split:]:  # then one token at a time
        rows.append(model.logits(model.hidden_states([i], cache)))
    assert cache.length == len(ids)
    assert_close(np.concatenate(rows), model.forward(ids), **CHAIN)


@given(seed=seeds(), prompt=token_ids(265, max_size=12), temperature=st.sampled_from([0.0, 0.7, 1.5]),
       top_k=st.sampled_from([None, 5]), top_p=st.sampled_from([None, 0.9]))
def test_cached_generation_equals_uncached_generation_token_for_token(tiny, seed, prompt, temperature, top_k, top_p):
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    assert generate(tiny, prompt, 10, use_cache=True, **kwargs) == generate(tiny, prompt, 10, use_cache=False, **kwargs)


def test_sampling_with_the_same_seed_repeats_and_other_seeds_differ(tiny):
    runs = [generate(tiny, [10, 20], 12, temperature=1.0, seed=s) for s in (1, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert any(r != runs[0] for r in runs[2:])


def test_greedy_generation_takes_the_argmax_each_step(tiny):
    ids = [40, 41, 42]
    new = generate(tiny, ids, 6, stop_at_eos=False)
    for token in new:
        assert token == int(np.argmax(tiny.forward(ids)[-1]))
        ids = ids + [token]


def test_generation_stops_at_the_end_of_sequence_token(tiny):
    free = generate(tiny, [7, 8, 9], 8, stop_at_eos=False)
    stopper = TinyTransformer(dataclasses.replace(tiny.config, eos_id=free[2]), tiny.params)
    assert generate(stopper, [7, 8, 9], 8) == free[:3]
    assert generate(stopper, [7, 8, 9], 8, stop_at_eos=False) == free


def test_streaming_yields_the_same_tokens_as_generate(tiny):
    seen = []
    new = generate(tiny, [1, 2, 3], 7, temperature=0.9, seed=4, on_token=seen.append)
    assert seen == new == list(stream(tiny, [1, 2, 3], 7, temperature=0.9, seed=4))


def test_tied_output_head_uses_the_embedding_matrix(tmp_path):
    model = load_model(write_random_llama(tmp_path / "tied.gguf", tied_embeddings=True, n_layers=1)).model
    assert model.config.tie_embeddings and "output.weight" not in model.params
    assert_close(model.forward([3])[0], model.hidden_states([3])[0] @ model.params["token_embd.weight"].T)


@given(seed=seeds(), positions=st.lists(st.integers(0, 500), min_size=1, max_size=6))
def test_interleaved_rope_on_gguf_rows_equals_rotate_half_on_the_original_rows(seed, positions):
    # The HF -> GGUF conversion permutes the rows of Wq and Wk inside each head so that
    # rotate-half pairs (i, i + D/2) become adjacent pairs (2i, 2i+1). Attention scores agree.
    rng = np.random.default_rng(seed)
    D, T = 8, len(positions)
    q_hf, k_hf = rng.standard_normal((2, 1, 1, T, D))
    p = rope_half_permutation(D)  # x_half = x_interleaved[..., p]
    to_gguf = np.argsort(p)  # x_interleaved = x_half[..., argsort(p)]
    scores_hf = apply_rope(q_hf, positions) @ apply_rope(k_hf, positions).swapaxes(-1, -2)
    q_gg, k_gg = q_hf[..., to_gguf], k_hf[..., to_gguf]
    scores_gguf = apply_rope(q_gg, positions, interleaved=True) @ apply_rope(k_gg, positions, interleaved=True).swapaxes(-1, -2)
    assert_close(scores_gguf, scores_hf)


def test_tokenizer_round_trips_text(tiny_file):
    text = "the cat in the hat, then <|im_end|>"
    ids = tiny_file.tokenizer.encode(text)
    assert tiny_file.tokenizer.decode(ids) == text and 2 in ids


def test_print_shows_the_structure_and_the_storage_types(tiny_file):
    tiny = tiny_file.model
    text = repr(tiny_file)
    assert f"{tiny.config.n_layers} x pre-norm block" in text and "RoPE interleaved" in text
    assert "Linear(64 -> 32)  [Q4_1]" in text and "kv_heads 2" in text and "RMSNorm(64" in text


@pytest.mark.parametrize("ids, problem", [([], "non-empty"), ([[[1, 2]]], r"\[B, T\] or \[T\]"), ([1.5], "integer"),
                                          ([265], r"\[0, vocab_size=265\)"), ([-1], r"\[0, vocab_size=265\)")])
def test_bad_ids_raise_value_error_naming_ids(tiny, ids, problem):
    with pytest.raises(ValueError, match=problem):
        tiny.forward(ids)


def test_too_many_new_tokens_for_the_context_raise(tiny):
    with pytest.raises(ValueError, match="context length max_seq_len=128"):
        generate(tiny, [1] * 100, 29)
    with pytest.raises(ValueError, match="exceed max_seq_len=128"):
        tiny.forward([1] * 129)
    assert tiny.forward([1] * 128).shape == (128, 265)


def test_missing_tensor_or_wrong_architecture_raise_gguf_error(tmp_path, tiny_path):
    with GGUFFile(tiny_path) as f:
        metadata = dict(f.metadata)
        tensors = {name: (f.raw_tensor(name).copy(), info.type, info.shape) for name, info in f.tensors.items()}
    del tensors["blk.1.ffn_up.weight"]
    write_gguf(tmp_path / "a.gguf", {**metadata, "tokenizer.ggml.token_type": metadata["tokenizer.ggml.token_type"]},
               tensors)
    with pytest.raises(GGUFError, match="blk.1.ffn_up.weight"):
        load_model(tmp_path / "a.gguf")
    write_gguf(tmp_path / "b.gguf", {**metadata, "general.architecture": "gpt2"}, {})
    with pytest.raises(GGUFError, match="expected 'llama' or 'tinytransformer'"):
        load_model(tmp_path / "b.gguf")


def test_rope_pairing_matters_except_at_position_zero(tmp_path):
    model = load_model(write_random_llama(tmp_path / "m.gguf", n_layers=1, seed=5)).model
    right = model.forward([10, 20, 30, 40])
    wrong = TinyTransformer(dataclasses.replace(model.config, rope_interleaved=False), model.params).forward(
        [10, 20, 30, 40])
    assert_close(wrong[0], right[0], **CHAIN)  # rotation by angle 0 is the identity for any pairing
    assert np.abs(wrong[1:] - right[1:]).max() > 1e-2


@given(model_configs(), st.integers(0, 10**6))
@settings(max_examples=15)
def test_a_saved_model_loads_back_to_the_same_logits(tmp_path_factory, config, seed):
    # Llama-shaped configs go out as "llama" files (rotate-half Q/K rows permuted to GGUF's interleaved
    # pairing), the others as our own architecture; either way the same forward pass reads them back.
    model = TinyTransformer(config, seed=seed)
    path = save_model(model, tmp_path_factory.mktemp("save") / "m.gguf")
    loaded = load_model(path).model
    with GGUFFile(path) as f:
        arch = f.metadata["general.architecture"]
    llama_shaped = (config.norm, config.ffn, config.position, config.block) == ("rms", "swiglu", "rope", "pre")
    assert arch == ("llama" if llama_shaped else "tinytransformer")
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=(2, 9))
    assert_close(loaded.forward(ids), model.forward(ids), rtol=1e-4, atol=1e-5)


def test_a_chapter_5_model_and_smollm2_share_the_loader_and_the_forward_pass(tmp_path):
    config = TransformerConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    model = TinyTransformer(config, seed=7)  # chapter 5's default: rotate-half RoPE
    loaded = load_model(save_model(model, tmp_path / "small.gguf")).model
    assert type(loaded) is TinyTransformer and loaded.config.rope_interleaved
    assert generate(loaded, [1, 2, 3], 10) == generate(model, [1, 2, 3], 10)


def _rewrite(src, dst, tensors=None, **metadata_changes):
    with GGUFFile(src) as f:
        metadata = {**f.metadata, **metadata_changes}
        tensors = {**{name: (f.raw_tensor(name).copy(), info.type, info.shape) for name, info in f.tensors.items()},
                   **(tensors or {})}
    write_gguf(dst, metadata, tensors)
    return dst


def test_a_huge_block_count_is_refused_before_any_work(tmp_path, tiny_path):
    import time

    path = _rewrite(tiny_path, tmp_path / "huge.gguf", **{"llama.block_count": np.uint32(2**32 - 1)})
    start = time.perf_counter()
    with pytest.raises(GGUFError, match="block_count is 4294967295 but the file holds only"):
        load_model(path)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("key, value, message", [
    ("llama.rope.freq_base", np.float32(np.inf), "rope.freq_base is inf; expected a finite positive number"),
    ("llama.attention.layer_norm_rms_epsilon", np.float32(np.nan), "epsilon is nan"),
    ("llama.attention.layer_norm_rms_epsilon", np.float32(np.inf), "epsilon is inf; expected a finite positive"),
    ("llama.attention.head_count_kv", np.uint32(3), "no valid model: n_kv_heads: expected a divisor"),
])
def test_bad_hyperparameters_are_refused_at_load(tmp_path, tiny_path, key, value, message):
    with pytest.raises(GGUFError, match=message):
        load_model(_rewrite(tiny_path, tmp_path / "bad.gguf", **{key: value}))


def test_a_tensor_with_nan_is_refused_at_load(tmp_path):
    config = TransformerConfig(vocab_size=20, d_model=8, n_layers=1, n_heads=2)
    model = TinyTransformer(config, seed=1)
    model.params["blk.0.ffn_up.weight"][0, 0] = np.nan
    with pytest.raises(GGUFError, match="'blk.0.ffn_up.weight' holds NaN"):
        load_model(save_model(model, tmp_path / "nan.gguf"))


@pytest.mark.parametrize("keep_quantized", [False, True])
def test_a_quantised_tensor_with_a_nan_scale_is_refused_at_load(tmp_path, keep_quantized):
    from tinytransformer import gguf

    path = write_random_llama(tmp_path / "q8.gguf", n_layers=1, dim=32, n_heads=2, n_kv_heads=1, hidden_dim=32,
                              weight_type=gguf.Q8_0)
    raw, kind, shape = _raw_tensors(path)["blk.0.ffn_up.weight"]
    raw = raw.copy()
    raw[:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)  # block 0's float16 scale d = NaN
    _rewrite(path, tmp_path / "nan.gguf", tensors={"blk.0.ffn_up.weight": (raw, kind, shape)})
    with pytest.raises(GGUFError, match="'blk.0.ffn_up.weight' holds NaN or infinite values"):
        load_model(tmp_path / "nan.gguf", keep_quantized=keep_quantized)


def _raw_tensors(path) -> dict:
    with GGUFFile(path) as f:
        return {name: (np.array(f.raw_tensor(name)), info.type, info.shape) for name, info in f.tensors.items()}
