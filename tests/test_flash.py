"""Flash attention equals the reference for every tile size, and its running state means what it says."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.attention import attention_shapes, random_qkv
from strategies.basics import dtypes, seeds
from tinytransformer.attention import scaled_dot_product_attention
from tinytransformer.flash import flash_attention, flash_attention_states, flash_attention_with_lse
from tinytransformer.positional import alibi_bias, alibi_slopes
from tinytransformer.testing import assert_close

tiles = st.integers(1, 40)


@given(attention_shapes(), seeds(), dtypes(), st.booleans(), tiles, tiles)
def test_flash_equals_reference_for_every_tile_size(shape, seed, dtype, causal, block_q, block_k):
    q, k, v = random_qkv(shape, seed, dtype)
    out = flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    assert out.dtype == dtype
    assert_close(out, scaled_dot_product_attention(q, k, v, causal=causal), dtype=dtype)


@given(attention_shapes(), seeds(), st.booleans(), tiles, tiles)
def test_flash_with_alibi_equals_reference_with_alibi_bias(shape, seed, causal, block_q, block_k):
    q, k, v = random_qkv(shape, seed)
    bias = alibi_bias(shape.n_heads, shape.q_len, shape.kv_len)
    out = flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k,
                          alibi_slopes=alibi_slopes(shape.n_heads))
    assert_close(out, scaled_dot_product_attention(q, k, v, causal=causal, bias=bias))


@given(attention_shapes(), seeds(), st.booleans(), tiles, tiles)
def test_flash_log_sum_exp_equals_the_direct_one(shape, seed, causal, block_q, block_k):
    q, k, v = random_qkv(shape, seed, scale=3.0)  # large scores: the online max matters
    _, lse = flash_attention_with_lse(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    scores = (q.reshape(shape.batch, shape.n_kv_heads, shape.group_size, shape.q_len, -1)
              @ k[:, :, None].swapaxes(-1, -2)).reshape(lse.shape + (shape.kv_len,)) / np.sqrt(shape.head_dim)
    if causal:
        allowed = np.arange(shape.kv_len)[None] <= np.arange(shape.kv_len - shape.q_len, shape.kv_len)[:, None]
        scores = np.where(allowed, scores, -np.inf)
    top = np.max(scores, -1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0)
    with np.errstate(divide="ignore"):
        expected = np.log(np.exp(scores - safe).sum(-1)) + safe[..., 0]
    assert_close(lse, expected)


@given(attention_shapes(q_le_kv=True), seeds(), tiles, tiles)
def test_final_tile_state_normalises_to_the_output(shape, seed, block_q, block_k):
    q, k, v = random_qkv(shape, seed)
    out = flash_attention(q, k, v, causal=True, block_q=block_q, block_k=block_k)
    states = list(flash_attention_states(q, k, v, causal=True, block_q=block_q, block_k=block_k))
    last = {}
    for s in states:  # the state after the last key tile of each query tile
        last[s.i] = s
    assert sorted(last) == list(range(len(range(0, shape.q_len, block_q))))
    for s in last.values():
        r0, r1 = s.rows
        assert_close(s.o / s.l[..., None], out[:, :, r0:r1])
        assert np.all(s.l >= 1 - 1e-12)  # the max term contributes exp(0) = 1


def test_causal_flash_skips_future_key_tiles():
    q = k = v = np.random.default_rng(0).standard_normal((1, 1, 64, 4))
    full = list(flash_attention_states(q, k, v, block_q=16, block_k=16))
    causal = list(flash_attention_states(q, k, v, causal=True, block_q=16, block_k=16))
    assert len(full) == 16 and len(causal) == 10  # 4 + 3 + 2 + 1 tiles on and below the diagonal


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_q=0), "block_q: expected an integer >= 1"),
    (dict(block_k=2.5), "block_k: expected an integer >= 1"),
    (dict(alibi_slopes=np.ones(3)), r"alibi_slopes: expected shape \[Hq\] = \[2\]"),
])
def test_bad_tile_arguments_raise_clear_errors(kwargs, message):
    q = k = v = np.ones((1, 2, 3, 4))
    with pytest.raises(ValueError, match=message):
        flash_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda q, k, v: flash_attention(q, k, v[0]), r"v: expected rank 4 \[B, Hkv, S, Dv\]"),
    (lambda q, k, v: flash_attention(q, k[:, :0], v[:, :0]), "k: expected a number of KV heads"),
    (lambda q, k, v: flash_attention(q, k, v, scale=float("inf")), "scale: expected a finite"),
    (lambda q, k, v: flash_attention(q, k, v, scale=True), "scale: expected a finite"),
])
def test_bad_inputs_get_the_same_clear_errors_as_sdpa(make, message):
    q = k = v = np.ones((1, 2, 3, 4))
    with pytest.raises(ValueError, match=message):
        make(q, k, v)


def test_no_keys_give_zeros_in_flash_and_in_sdpa_alike():
    q = np.ones((1, 2, 3, 4))
    k = v = np.ones((1, 2, 0, 4))
    for attend in (flash_attention, scaled_dot_product_attention):
        out = attend(q, k, v)
        assert out.shape == (1, 2, 3, 4) and not out.any()


def test_an_empty_batch_gives_empty_outputs():
    """B = 0 used to fail in a reshape with -1 (ambiguous when the batch is empty)."""
    q, k = np.zeros((0, 4, 3, 8)), np.zeros((0, 2, 5, 8))
    out, lse = flash_attention_with_lse(q, k, k, causal=True)
    assert out.shape == (0, 4, 3, 8) and lse.shape == (0, 4, 3)
