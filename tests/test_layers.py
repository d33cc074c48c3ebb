"""Normalisations, activations and feed-forward blocks: laws, and agreement with torch."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import require
from strategies import dtypes, seeds
from tinytransformer.layers import ffn, gelu, layer_norm, post_ln_block, pre_ln_block, rms_norm, silu, swiglu
from tinytransformer.testing import assert_close

widths = st.integers(2, 64)


@given(widths, seeds(), dtypes())
def test_layer_norm_output_has_zero_mean_and_unit_variance(C, seed, dtype):
    x = (np.random.default_rng(seed).standard_normal((3, C)) * 5 + 2).astype(dtype)
    y = layer_norm(x, np.ones(C, dtype), np.zeros(C, dtype), eps=0.0)
    assert_close(y.mean(-1), np.zeros(3), atol=1e-5)
    assert_close(y.var(-1), np.ones(3), rtol=1e-4)


@given(widths, seeds(), dtypes(), st.floats(0.01, 100))
def test_rms_norm_has_unit_rms_and_ignores_input_scale(C, seed, dtype, scale):
    x = np.random.default_rng(seed).standard_normal((3, C)).astype(dtype) + 0.1
    y = rms_norm(x, np.ones(C, dtype), eps=0.0)
    assert_close(np.sqrt(np.mean(y ** 2, -1)), np.ones(3), dtype=dtype, rtol=1e-4)
    assert_close(rms_norm(x * dtype(scale), np.ones(C, dtype), eps=0.0), y, dtype=dtype, rtol=1e-4)


@given(seeds(), dtypes())
def test_silu_is_x_times_sigmoid_and_never_overflows(seed, dtype):
    x = (np.random.default_rng(seed).standard_normal(50) * 300).astype(dtype)
    with np.errstate(over="raise"):
        y = silu(x)
    assert np.all(np.isfinite(y))
    small = np.abs(x) < 30
    xs = x[small].astype(np.float64)
    assert_close(y[small], xs / (1 + np.exp(-xs)), dtype=dtype)


def test_gelu_values_at_known_points():
    assert_close(gelu(np.array([0.0, 1.0, -1.0])), [0.0, 0.8413447460685429, -0.15865525393145707])
    assert_close(gelu(np.array([1.0]), approximate="tanh"), [0.8411919906082768])


@given(seeds())
def test_pre_and_post_ln_blocks_compose_as_written(seed):
    rng = np.random.default_rng(seed)
    x, a, f = rng.standard_normal((2, 4, 6)), rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    w, b = np.ones(6), np.zeros(6)

    def attn(h):
        return h @ a

    def feed_forward(h):
        return h @ f

    def norm(h):
        return layer_norm(h, w, b)

    h = x + attn(norm(x))
    assert_close(pre_ln_block(x, attn, feed_forward, norm, norm), h + feed_forward(norm(h)))
    h = norm(x + attn(x))
    assert_close(post_ln_block(x, attn, feed_forward, norm, norm), norm(h + feed_forward(h)))


@given(widths, seeds())
def test_swiglu_and_ffn_agree_with_torch(C, seed):
    torch = require("torch", "oracle for activations and FFNs")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, C)).astype(np.float32)
    wg, wu, wd = (rng.standard_normal(s).astype(np.float32) * 0.3 for s in ((8, C), (8, C), (C, 8)))  # [out, in]
    F = torch.nn.functional
    tx, twg, twu, twd = (torch.from_numpy(a) for a in (x, wg, wu, wd))
    expected = F.linear(F.silu(F.linear(tx, twg)) * F.linear(tx, twu), twd)
    assert_close(swiglu(x, wg, wu, wd), expected.numpy(), rtol=1e-4, atol=1e-5)
    b1, b2 = np.zeros(8, np.float32), np.ones(C, np.float32)
    expected = F.linear(F.gelu(F.linear(tx, twg, torch.from_numpy(b1))), twd, torch.from_numpy(b2))
    assert_close(ffn(x, wg, b1, wd, b2), expected.numpy(), rtol=1e-4, atol=1e-5)


@given(widths, seeds(), st.floats(1e-8, 1e-2))
def test_norms_and_activations_agree_with_torch(C, seed, eps):
    torch = require("torch", "oracle for normalisation layers")
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((4, C)) * 3).astype(np.float64)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    F, t = torch.nn.functional, torch.from_numpy
    assert_close(layer_norm(x, w, b, eps), F.layer_norm(t(x), (C,), t(w), t(b), eps).numpy())
    assert_close(rms_norm(x, w, eps), F.rms_norm(t(x), (C,), t(w), eps).numpy())
    assert_close(gelu(x), F.gelu(t(x)).numpy())
    assert_close(gelu(x, approximate="tanh"), F.gelu(t(x), approximate="tanh").numpy())
    assert_close(silu(x), F.silu(t(x)).numpy())


@pytest.mark.parametrize("call, message", [
    (lambda: rms_norm(np.ones((2, 3)), np.ones(4)), r"weight: expected shape \[3\]"),
    (lambda: layer_norm(np.ones((2, 3)), np.ones(3), np.ones(2)), r"bias: expected shape \[3\]"),
    (lambda: gelu(np.ones(2), approximate="fast"), "approximate: expected 'none' or 'tanh'"),
    (lambda: silu(np.ones(2, int)), "x: expected a floating-point array"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
