"""Normalisations, activations and feed-forward blocks: laws, and agreement with torch."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import require
from strategies.basics import dtypes, seeds
from tinytransformer.layers import (column_major, embedding, ffn, gelu, layer_norm, linear, linear_in_row_blocks,
                                    post_ln_block,
                                    pre_ln_block, rms_norm, silu, swiglu)
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


@pytest.mark.parametrize("activation", [silu, gelu, lambda x: gelu(x, approximate="tanh")],
                         ids=["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_activations_at_infinity_take_their_limits(activation, dtype):
    y = activation(np.array([-np.inf, np.inf, np.nan], dtype))  # runtime warnings are errors in this suite
    assert y.dtype == dtype and y[:2].tolist() == [0.0, np.inf] and np.isnan(y[2])


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


@given(widths, seeds(), st.floats(256, 60000))
def test_float16_norms_are_computed_in_float32_and_returned_in_float16(C, seed, magnitude):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, C)) * magnitude).clip(-65000, 65000).astype(np.float16)
    w, b = rng.standard_normal(C).astype(np.float16), rng.standard_normal(C).astype(np.float16)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    rms, layer = rms_norm(x, w), layer_norm(x, w, b)
    assert rms.dtype == layer.dtype == np.float16
    assert_close(rms, rms_norm(x64, w64))  # zeros before: x^2 overflowed float16 above |x| ~ 256
    assert_close(layer, layer_norm(x64, w64, b64))


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf"), None, True, "1e-5", 1j])
def test_norm_eps_must_be_a_finite_number_at_least_zero(eps):
    with pytest.raises(ValueError, match="eps: expected a finite number >= 0"):
        rms_norm(np.ones(3), np.ones(3), eps=eps)
    with pytest.raises(ValueError, match="eps: expected a finite number >= 0"):
        layer_norm(np.ones(3), np.ones(3), np.zeros(3), eps=eps)


@pytest.mark.parametrize("call, message", [
    (lambda: rms_norm(np.ones((2, 3)), np.ones(4)), r"weight: expected shape \[3\]"),
    (lambda: rms_norm(np.ones(3), np.ones(3) * 1j), "weight: expected a real-valued array, got dtype complex128"),
    (lambda: layer_norm(np.ones(3), np.ones(3), np.ones(3, bool)), "bias: expected a real-valued array"),
    (lambda: rms_norm(np.float64(2.0), np.ones(1)), r"x: expected an array \[..., C\] with C >= 1"),
    (lambda: rms_norm(np.ones((2, 0)), np.ones(0)), r"x: expected an array \[..., C\] with C >= 1"),
    (lambda: rms_norm(np.ones(3, complex), np.ones(3)), "x: expected a floating-point array"),
    # weights are [out, in]: w_up [F, C], w_down [C, F]
    (lambda: ffn(np.ones((2, 3)), np.ones((5, 4)), np.ones(5), np.ones((3, 5)), np.ones(3)),
     r"w_up: expected shape \[F, 3\] \(\[out, in\]; in is x's last axis 3\), got \(5, 4\)"),
    (lambda: ffn(np.ones((2, 3)), np.ones((5, 3)), np.ones(4), np.ones((3, 5)), np.ones(3)),
     r"b_up: expected shape \[5\]"),
    (lambda: ffn(np.ones((2, 3)), np.ones((5, 3)), np.ones(5), np.ones((2, 5)), np.ones(3)),
     r"w_down: expected shape \[3, 5\]"),
    (lambda: ffn(np.ones(3), np.ones((5, 3)), np.ones(5), np.ones((3, 5)), np.ones(3), activation="gelu"),
     "activation: expected a function"),
    (lambda: swiglu(np.ones((2, 3)), np.ones((4, 3)), np.ones((5, 3)), np.ones((3, 4))),
     r"w_up: expected shape \[4, 3\]"),
    (lambda: swiglu(np.ones((2, 3)), np.ones((4, 3)), np.ones((4, 3)), np.ones((3, 4, 1))),
     r"w_down: expected shape \[3, 4\]"),
    (lambda: swiglu(np.ones((2, 3)), np.ones((4, 3)) * 1j, np.ones((4, 3)), np.ones((3, 4))),
     "w_gate: expected a real-valued array"),
    (lambda: linear(np.ones((2, 3)), np.ones((3, 4))), r"weight: expected shape \[out, 3\]"),
    (lambda: linear(np.ones((2, 3)), np.ones((4, 3)), np.ones(3)), r"bias: expected shape \[4\]"),
    (lambda: linear(np.ones((2, 3)), np.ones((4, 3)) * 1j), "weight: expected a real-valued array"),
    (lambda: embedding(np.array([0, 4]), np.ones((4, 3))), r"ids: expected token ids in \[0, 4\), got 0 .. 4"),
    (lambda: embedding(np.array([-1]), np.ones((4, 3))), r"ids: expected token ids in \[0, 4\)"),
    (lambda: embedding(np.array([True]), np.ones((4, 3))), "ids: expected integer token ids, got dtype bool"),
    (lambda: embedding([0], [[1.0]]), "weight: expected an array"),
    (lambda: layer_norm(np.ones((2, 3)), np.ones(3), np.ones(2)), r"bias: expected shape \[3\]"),
    (lambda: gelu(np.ones(2), approximate="fast"), "approximate: expected 'none' or 'tanh'"),
    (lambda: silu(np.ones(2, int)), "x: expected a floating-point array"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@given(st.integers(1, 13), st.integers(1, 3), st.integers(1, 6), seeds(), dtypes(), st.booleans())
def test_linear_in_row_blocks_equals_linear(rows, batch, multiple, seed, dtype, with_bias):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, rows, 7)).astype(dtype)
    w = rng.standard_normal((5, 7)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype) if with_bias else None
    got = linear_in_row_blocks(x, w, b, multiple=multiple)
    assert got.shape == (batch, rows, 5) and got.dtype == linear(x, w, b).dtype
    assert_close(got, linear(x, w, b), dtype=dtype)


def test_linear_in_row_blocks_pads_two_or_more_rows_to_a_whole_number_of_blocks():
    seen = []

    class Weight(np.ndarray):  # an array that records the rows of x it is multiplied with
        def __rmatmul__(self, x):
            seen.append(x.shape[0])
            return np.asarray(x) @ np.asarray(self)

    w = np.ones((3, 5), dtype=np.float32)
    for rows in (1, 2, 3, 4, 5, 9):
        linear_in_row_blocks(np.ones((rows, 5), np.float32), w.view(Weight), multiple=4)
    assert seen == [1, 4, 4, 4, 8, 12]


@given(st.integers(1, 6), st.integers(1, 6), seeds(), dtypes())
def test_a_column_major_weight_is_the_same_matrix(out, inp, seed, dtype):
    w = np.random.default_rng(seed).standard_normal((out, inp)).astype(dtype)
    x = np.random.default_rng(seed + 1).standard_normal((3, inp)).astype(dtype)
    c = column_major(w)
    assert c.flags.f_contiguous and c.shape == w.shape and c.dtype == w.dtype
    np.testing.assert_array_equal(c, w)
    assert_close(linear(x, c), linear(x, w), dtype=dtype)
    assert column_major(c) is c  # already column-major: no copy
    vector = np.ones(3)
    assert column_major(vector) is vector  # not a matrix: as it is


def test_ffn_and_swiglu_use_the_product_they_are_given():
    calls = []

    def counting_linear(x, w, b=None):
        calls.append(w.shape)
        return linear(x, w, b)

    rng = np.random.default_rng(0)
    x, wg, wu, wd = rng.standard_normal((3, 4)), rng.standard_normal((6, 4)), rng.standard_normal((6, 4)), \
        rng.standard_normal((4, 6))
    assert_close(swiglu(x, wg, wu, wd, linear=counting_linear), swiglu(x, wg, wu, wd))
    assert_close(ffn(x, wu, None, wd, None, linear=counting_linear), ffn(x, wu, None, wd, None))
    assert calls == [(6, 4), (6, 4), (4, 6), (6, 4), (4, 6)]
