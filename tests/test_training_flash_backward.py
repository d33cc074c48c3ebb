"""Flash attention's tiled backward equals the plain backward, without the T x S matrix."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.attention import attention_shapes, random_qkv
from strategies.basics import seeds
from tinytransformer.flash import flash_attention_with_lse
from tinytransformer.positional import alibi_slopes
from tinytransformer.testing import assert_close
from tinytransformer.training.backward import attention_backward
from tinytransformer.training.flash_backward import flash_attention_backward

tiles = st.integers(1, 40)


@given(attention_shapes(), seeds(), st.booleans(), st.booleans(), st.sampled_from([None, 0.3, 1.7]), tiles, tiles)
def test_flash_backward_equals_plain_backward_for_every_tile_size(shape, seed, causal, alibi, scale, block_q, block_k):
    """Ragged T and S (any lengths, T > S too, where causal rows see no key), every tile size, GQA/MQA."""
    q, k, v = random_qkv(shape, seed, scale=2.0)  # large scores: P must come back exactly from lse
    dout = np.random.default_rng(seed + 1).standard_normal((shape.batch, shape.n_heads, shape.q_len, shape.head_dim))
    kwargs = dict(causal=causal, scale=scale, alibi_slopes=alibi_slopes(shape.n_heads) if alibi else None)
    out, lse = flash_attention_with_lse(q, k, v, **kwargs)
    tiled = flash_attention_backward(q, k, v, out, lse, dout, block_q=block_q, block_k=block_k, **kwargs)
    plain = attention_backward(dout, q, k, v, **kwargs)
    for name, got, want in zip("qkv", tiled, plain):
        assert got.shape == want.shape
        assert_close(got, want, err_msg=f"d{name}")


@given(attention_shapes(max_len=20), seeds(), st.booleans(), tiles, tiles)
def test_flash_backward_in_float32_stays_float32_and_close(shape, seed, causal, block_q, block_k):
    q, k, v = random_qkv(shape, seed, np.float32)
    dout = np.ones((shape.batch, shape.n_heads, shape.q_len, shape.head_dim), np.float32)
    out, lse = flash_attention_with_lse(q, k, v, causal=causal)
    tiled = flash_attention_backward(q, k, v, out, lse, dout, causal=causal, block_q=block_q, block_k=block_k)
    plain = attention_backward(dout.astype(np.float64), q.astype(np.float64), k.astype(np.float64),
                               v.astype(np.float64), causal=causal)
    for got, want in zip(tiled, plain):
        assert got.dtype == np.float32
        assert_close(got, want, rtol=1e-4, atol=1e-4)  # float32 through exp and two products


def test_flash_backward_memory_grows_with_the_tiles_not_with_t_times_s():
    rng = np.random.default_rng(0)
    T = S = 512
    q, k, v, dout = (rng.standard_normal((1, 1, T, 8)) for _ in range(4))
    out, lse = flash_attention_with_lse(q, k, v, causal=True, block_q=64, block_k=64)

    def peak(fn):
        tracemalloc.start()
        fn()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    tiled = peak(lambda: flash_attention_backward(q, k, v, out, lse, dout, causal=True, block_q=32, block_k=32))
    plain = peak(lambda: attention_backward(dout, q, k, v, causal=True))
    one_matrix = T * S * 8  # a float64 [T, S] matrix: 2 MiB
    assert plain > one_matrix  # the plain backward holds P (and dP)
    assert tiled < one_matrix / 4, f"tiled backward peaked at {tiled} bytes"


@pytest.mark.parametrize("kwargs, message", [
    (dict(out=np.ones((1, 2, 3, 5))), r"out: expected shape \[B, Hq, T, Dv\]"),
    (dict(lse=np.ones((1, 2, 4))), r"lse: expected shape \[B, Hq, T\]"),
    (dict(block_q=0), "block_q: expected an integer >= 1"),
    (dict(alibi_slopes=np.ones(3)), r"alibi_slopes: expected shape \[Hq\] = \[2\]"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    q = k = v = dout = out = np.ones((1, 2, 3, 4))
    args = dict(out=out, lse=np.zeros((1, 2, 3)))
    args.update({key: kwargs.pop(key) for key in ("out", "lse") if key in kwargs})
    with pytest.raises(ValueError, match=message):
        flash_attention_backward(q, k, v, args["out"], args["lse"], dout, **kwargs)
