"""The small decoder: cached decode equals full recompute, for every architecture choice."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import model_configs, seeds
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.testing import assert_close


@given(model_configs(), seeds(), st.data())
def test_cached_decode_equals_full_recompute_at_every_step(config, seed, data):
    model = TinyTransformer(config, seed=seed % 1000)
    rng = np.random.default_rng(seed)
    T = data.draw(st.integers(2, 12))
    ids = rng.integers(0, config.vocab_size, size=(2, T))
    full = model.forward(ids)
    prefill = data.draw(st.integers(1, T - 1))
    cache = model.new_cache(batch=2)
    steps = [model.forward(ids[:, :prefill], cache)]
    for t in range(prefill, T):
        steps.append(model.forward(ids[:, t:t + 1], cache))
        assert cache.length == t + 1
    assert_close(np.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-5)


@given(model_configs(), seeds())
def test_forward_on_a_prefix_equals_the_first_rows(config, seed):
    model = TinyTransformer(config, seed=1)
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=(1, 10))
    assert_close(model.forward(ids[:, :4]), model.forward(ids)[:, :4], rtol=1e-4, atol=1e-5)


@given(model_configs(), seeds(), st.sampled_from([0.0, 0.7, 1.5]))
def test_cached_generation_equals_uncached_generation(config, seed, temperature):
    model = TinyTransformer(config, seed=2)
    prompt = np.random.default_rng(seed).integers(0, config.vocab_size, size=3).tolist()
    kwargs = dict(temperature=temperature, top_k=5, top_p=0.9, seed=seed)
    cached = model.generate(prompt, 6, **kwargs)
    assert len(cached) == 6
    assert cached == model.generate(prompt, 6, use_cache=False, **kwargs)


def test_gqa_model_with_repeated_kv_weights_equals_the_mha_model():
    gqa_config = TransformerConfig(vocab_size=13, d_model=12, n_layers=2, n_heads=6, n_kv_heads=2)
    mha_config = TransformerConfig(vocab_size=13, d_model=12, n_layers=2, n_heads=6, n_kv_heads=6)
    gqa = TinyTransformer(gqa_config, seed=3)
    params = {**gqa.params, "layers": []}
    for layer in gqa.params["layers"]:  # repeat each KV head's columns for the 3 query heads of its group
        wk, wv = (layer[w].reshape(12, 2, 1, 2).repeat(3, axis=2).reshape(12, 12) for w in ("wk", "wv"))
        params["layers"].append({**layer, "wk": wk, "wv": wv})
    ids = np.arange(10).reshape(1, 10) % 13
    assert_close(TinyTransformer(mha_config, params).forward(ids), gqa.forward(ids))


def test_same_seed_same_model_and_different_seed_different_model():
    config = TransformerConfig(vocab_size=7, d_model=8, n_layers=1, n_heads=2)
    ids = np.array([[1, 2, 3]])
    assert np.array_equal(TinyTransformer(config, seed=5).forward(ids), TinyTransformer(config, seed=5).forward(ids))
    assert not np.array_equal(TinyTransformer(config, seed=5).forward(ids), TinyTransformer(config, seed=6).forward(ids))


@pytest.mark.parametrize("call, message", [
    (lambda: TransformerConfig(vocab_size=5, d_model=8, n_layers=1, n_heads=4, n_kv_heads=3), "n_kv_heads: expected a divisor"),
    (lambda: TransformerConfig(vocab_size=5, d_model=10, n_layers=1, n_heads=4), "d_model: expected a multiple"),
    (lambda: TransformerConfig(vocab_size=5, d_model=8, n_layers=1, n_heads=2, norm="batch"), "norm: expected one of"),
    (lambda: TinyTransformer(TransformerConfig(5, 8, 1, 2)).forward(np.array([[5]])), r"ids: expected values in \[0, vocab_size=5\)"),
    (lambda: TinyTransformer(TransformerConfig(5, 8, 1, 2, max_seq_len=4)).forward(np.zeros((1, 5), int)), "exceed max_seq_len=4"),
    (lambda: TinyTransformer(TransformerConfig(5, 8, 1, 2)).forward(np.array([1, 2])), r"ids: expected a non-empty integer array \[B, T\]"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cache_overflow_during_decode_raises():
    model = TinyTransformer(TransformerConfig(5, 8, 1, 2, max_seq_len=16))
    cache = model.new_cache(1, max_seq_len=3)
    model.forward(np.array([[1, 2, 3]]), cache)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model.forward(np.array([[4]]), cache)
