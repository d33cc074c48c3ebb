"""Laws of the KV cache: byte count, append semantics, overflow."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinytransformer.kv_cache import KVCache, kv_cache_bytes

small = st.integers(1, 5)


@given(small, small, small, small, st.integers(1, 40), st.sampled_from([np.float16, np.float32, np.float64]))
def test_kv_cache_bytes_matches_an_actual_cache(n_layers, batch, n_kv_heads, head_dim, max_seq_len, dtype):
    cache = KVCache(n_layers, batch, n_kv_heads, head_dim, max_seq_len, dtype=dtype)
    expected = kv_cache_bytes(n_layers, n_kv_heads, head_dim, max_seq_len, batch=batch,
                              bytes_per_elem=np.dtype(dtype).itemsize)
    assert cache.nbytes == expected


def test_gqa_shrinks_smollm2s_cache_by_the_group_size():
    mha = kv_cache_bytes(30, 9, 64, 8192)
    gqa = kv_cache_bytes(30, 3, 64, 8192)
    assert mha == 3 * gqa and gqa == 2 * 30 * 3 * 64 * 8192 * 2


@given(st.lists(st.integers(1, 4), min_size=1, max_size=6), st.integers(0, 2**31))
def test_appended_steps_read_back_in_order(steps, seed):
    rng = np.random.default_rng(seed)
    cache = KVCache(2, 1, 2, 3, sum(steps))
    chunks = []
    for t in steps:
        k = rng.standard_normal((1, 2, t, 3)).astype(np.float32)
        chunks.append(k)
        for layer in range(2):
            k_all, v_all = cache.append(layer, k, -k)
        assert np.shares_memory(k_all, cache.k)  # views, not copies
    expected = np.concatenate(chunks, axis=2)
    assert cache.length == sum(steps)
    assert np.array_equal(cache.keys(0), expected) and np.array_equal(cache.values(1), -expected)


def test_overflow_raises_and_leaves_the_cache_unchanged():
    cache = KVCache(1, 1, 1, 2, max_seq_len=4)
    cache.append(0, np.ones((1, 1, 3, 2)), np.ones((1, 1, 3, 2)))
    with pytest.raises(ValueError, match="KV cache overflow: layer 0 holds 3 of max_seq_len=4"):
        cache.append(0, np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))
    assert cache.length == 3


def test_truncate_and_reset_rewind_the_length():
    cache = KVCache(1, 1, 1, 2, max_seq_len=4)
    cache.append(0, np.ones((1, 1, 3, 2)), np.ones((1, 1, 3, 2)))
    cache.truncate(1)
    assert cache.length == 1 and cache.keys(0).shape == (1, 1, 1, 2)
    cache.reset()
    assert cache.length == 0


@pytest.mark.parametrize("call, message", [
    (lambda c: c.append(0, np.ones((1, 2, 1, 2)), np.ones((1, 2, 1, 2))), r"k_new: expected shape \[B=1, Hkv=1"),
    (lambda c: c.append(3, np.ones((1, 1, 1, 2)), np.ones((1, 1, 1, 2))), r"layer: expected an integer in \[0, 1\)"),
    (lambda c: c.append(0, np.ones((1, 1, 1, 2)), np.ones((1, 1, 2, 2))), "same shape"),
    (lambda c: c.truncate(5), "length: expected an integer in"),
    (lambda c: KVCache(1, 1, 0, 2, 4), "n_kv_heads: expected an integer >= 1"),
    (lambda c: kv_cache_bytes(1, 1, 1, 0), "seq_len: expected an integer >= 1"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(KVCache(1, 1, 1, 2, 4))


@pytest.mark.parametrize("layer", [5, -1, True, 1.0])
def test_a_layer_outside_the_cache_is_refused_not_wrapped_around(layer):
    cache = KVCache(n_layers=2, batch=1, n_kv_heads=1, head_dim=2, max_seq_len=4)
    for read in (cache.keys, cache.values, cache.layer_length):
        with pytest.raises(ValueError, match=r"layer: expected an integer in \[0, 2\)"):
            read(layer)


def test_the_repr_shows_per_layer_lengths_while_a_step_is_half_done():
    cache = KVCache(n_layers=2, batch=1, n_kv_heads=1, head_dim=2, max_seq_len=6)
    cache.append(0, np.ones((1, 1, 3, 2)), np.ones((1, 1, 3, 2)))
    assert "length=0 (per layer [3, 0])/6" in repr(cache)
    cache.append(1, np.ones((1, 1, 3, 2)), np.ones((1, 1, 3, 2)))
    assert "length=3/6" in repr(cache)
