"""Laws of the quantisation methods that look at activations: LLM.int8, GPTQ and AWQ."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import require
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies.basics import seeds
from strategies.quant import calibration_layers, quant_values

from tinytransformer.quant.awq import awq_search, fake_quantize
from tinytransformer.quant.gptq import gptq_quantize, hessian, output_error
from tinytransformer.quant.int8_matmul import Int8Linear, int8_matmul, outlier_columns
from tinytransformer.quant.uniform import quantize_zero_point, round_to_nearest
from tinytransformer.testing import assert_close


def _activations_with_outliers(seed, tokens, features, n_outliers=2, size=20.0):
    """Activations [T, C], float16-representable, with a few whole feature columns far past 6."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, features))
    x[:, rng.choice(features, size=min(n_outliers, features), replace=False)] *= size
    return x.astype(np.float16).astype(np.float32)


# --- LLM.int8 -----------------------------------------------------------------------------

@given(seed=seeds(), tokens=st.integers(1, 12), features=st.integers(2, 80), out=st.integers(1, 40))
def test_int8_linear_equals_bitsandbytes_linear8bitlt(seed, tokens, features, out):
    require("torch", "bitsandbytes runs on torch")
    bnb = require("bitsandbytes", "the LLM.int8 reference (Linear8bitLt on the CPU)")
    import torch

    w = np.random.default_rng(seed + 1).standard_normal((out, features)).astype(np.float16).astype(np.float32)
    x = _activations_with_outliers(seed, tokens, features)
    theirs = bnb.nn.Linear8bitLt(features, out, bias=False, has_fp16_weights=False, threshold=6.0)
    theirs.weight = bnb.nn.Int8Params(torch.from_numpy(w.copy()), requires_grad=False, has_fp16_weights=False)
    theirs = theirs.to("cpu").eval()
    with torch.inference_mode():
        y_theirs = theirs(torch.from_numpy(x.copy())).numpy()
    ours = Int8Linear(w, threshold=6.0)
    np.testing.assert_array_equal(ours.q, theirs.state.CB.numpy())  # the same int8 weight codes
    assert_close(ours.scale[:, 0] * 127, theirs.state.SCB.numpy(), rtol=1e-6, atol=0)
    # float32 sums in another order, and bitsandbytes' constant 6.200124e-05 for 1/127^2 (1.8e-5 off):
    # both errors scale with the sum of the terms' sizes, sum_c |x_c w_c|, not with the result, which
    # can cancel to almost nothing (seed 1, one token, 42 features, one output: 0.129 from terms of ~60).
    terms = np.abs(x) @ np.abs(w).T  # [T, out]
    assert_close((ours.linear(x) - y_theirs) / terms, np.zeros_like(terms), rtol=0, atol=1e-4)


@given(seed=seeds(), tokens=st.integers(1, 8), features=st.integers(4, 64), factor=st.floats(1.0, 50.0))
def test_int8_outliers_pass_through_in_float(seed, tokens, features, factor):
    w = np.random.default_rng(seed).standard_normal((8, features)).astype(np.float32)
    x = _activations_with_outliers(seed, tokens, features)
    layer = Int8Linear(w)
    big = np.abs(x) >= 6.0
    x2 = np.where(big, x * np.float32(factor), x)  # the same outlier entries, larger: scales and codes unchanged
    # so the output changes by exactly (x2 - x) @ W_hat^T, the float product of the outlier columns
    assert_close(layer.linear(x2) - layer.linear(x), (x2 - x) @ layer.dequantize().T,
                 rtol=1e-5, atol=1e-5 * np.abs(x2 @ w.T).max())
    assert set(outlier_columns(x, 6.0).tolist()) == set(np.flatnonzero(big.any(axis=0)).tolist())


def test_int8_without_outliers_is_vector_wise_absmax():
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((5, 16)).astype(np.float32), rng.standard_normal((3, 16)).astype(np.float32)
    layer = Int8Linear(w)
    x_scale = np.abs(x).max(axis=1, keepdims=True) / 127
    x_q = np.rint(x / x_scale)
    expected = (x_q @ layer.q.astype(np.float64).T) * x_scale * layer.scale.T
    assert_close(layer.linear(x, threshold=0), expected, rtol=1e-5, atol=1e-6)
    assert outlier_columns(x, 6.0).size == 0 and np.array_equal(layer.linear(x), layer.linear(x, threshold=0))


# --- GPTQ -----------------------------------------------------------------------------------

@settings(max_examples=settings.default.max_examples // 2)  # each example quantises many blocks
@given(seed=seeds(), n_out=st.integers(1, 8), groups=st.integers(1, 3), group=st.sampled_from([32, 64, 128]),
       tail=st.sampled_from([0, 0, 16, 40]), bits=st.sampled_from([2, 3, 4, 8]), act_order=st.booleans(),
       static=st.booleans(), kind=st.sampled_from(["normal", "heavy-tailed", "outliers", "ties", "constant"]))
def test_gptq_with_an_identity_hessian_is_round_to_nearest(seed, n_out, groups, group, tail, bits, act_order, static,
                                                           kind):
    w = quant_values(kind, (n_out, groups * group + tail), seed)  # a tail: each row's last group is shorter
    q = gptq_quantize(w, np.eye(w.shape[1]), bits=bits, group_size=group, act_order=act_order, static_groups=static)
    rtn, rtn_bits = round_to_nearest(w, bits=bits, group_size=group)
    np.testing.assert_array_equal(q.weight, rtn)
    assert q.bits_per_weight == rtn_bits
    if not tail:
        codes = quantize_zero_point(w, bits=bits, group=group).q
        np.testing.assert_array_equal(q.codes.reshape(codes.shape), codes)


@settings(max_examples=settings.default.max_examples // 2)  # each example quantises many blocks
@given(layer=calibration_layers(), bits=st.sampled_from([2, 3, 4]), act_order=st.booleans(), static=st.booleans())
def test_gptq_output_error_on_the_calibration_set_is_never_above_round_to_nearest(layer, bits, act_order, static):
    w, x, group = layer
    static = static or bits == 2  # at 2 bits, grids from the updated weights can lose (see gptq's docstring)
    q = gptq_quantize(w, hessian(x), bits=bits, group_size=group, act_order=act_order, static_groups=static)
    rtn, _ = round_to_nearest(w, bits=bits, group_size=group)
    assert output_error(x, w, q.weight) <= output_error(x, w, rtn)


@settings(max_examples=settings.default.max_examples // 2)  # each example quantises many blocks
@given(layer=calibration_layers(), static=st.booleans())
def test_gptq_weights_lie_on_their_group_grids(layer, static):
    w, x, group = layer
    q = gptq_quantize(w, hessian(x), bits=4, group_size=group, act_order=True, static_groups=static)
    scale, zero = q.scale[:, q.group_index], q.zero[:, q.group_index].astype(np.float32)  # [C_out, C_in]
    np.testing.assert_array_equal(q.weight, scale * (q.codes.astype(np.float32) - zero))
    assert q.codes.max() <= 15 and q.bits_per_weight == 4 + 36 / group


def test_gptq_refuses_bad_shapes_and_non_finite_input():
    w = np.ones((4, 64), np.float32)
    with pytest.raises(ValueError, match="hessian_matrix: expected shape"):
        gptq_quantize(w, np.eye(32))
    with pytest.raises(ValueError, match="group_size: expected an integer >= 1"):
        gptq_quantize(w, np.eye(64), group_size=0)
    with pytest.raises(ValueError, match="weight: expected finite values"):
        gptq_quantize(np.full((4, 64), np.nan, np.float32), np.eye(64))
    with pytest.raises(ValueError, match="x: expected finite values"):
        hessian(np.array([[1.0, np.inf]]))


# --- AWQ ------------------------------------------------------------------------------------

@given(layer=calibration_layers(), bits=st.sampled_from([3, 4]))
def test_awq_with_exponent_zero_is_round_to_nearest(layer, bits):
    w, x, group = layer
    search = awq_search([w], x, bits=bits, group_size=group, n_grid=1)  # the grid is {0}
    assert search.alpha == 0.0 and np.all(search.scales == 1.0)
    rtn, _ = round_to_nearest(w, bits=bits, group_size=group)
    np.testing.assert_array_equal(search.effective_weights([w])[0], rtn)
    np.testing.assert_array_equal(search.scaled_weights([w])[0], fake_quantize(w, bits, group))


@settings(max_examples=settings.default.max_examples // 2)  # each example quantises many blocks
@given(layer=calibration_layers())
def test_awq_search_is_never_worse_than_round_to_nearest_and_reports_its_choice(layer):
    w, x, group = layer
    w2 = w[::-1].copy()  # two layers reading the same input share one scale
    search = awq_search([w, w2], x, bits=4, group_size=group)
    rtn = [round_to_nearest(v, bits=4, group_size=group)[0] for v in (w, w2)]
    chosen = sum(output_error(x, v, e) for v, e in zip((w, w2), search.effective_weights([w, w2])))
    assert_close(chosen, search.errors.min(), rtol=1e-6)
    assert chosen <= sum(output_error(x, v, r) for v, r in zip((w, w2), rtn)) * (1 + 1e-6)
    assert search.alphas[0] == 0 and search.alpha == search.alphas[np.argmin(search.errors)]


def test_awq_scaling_is_exact_before_rounding():
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((6, 32)).astype(np.float64), rng.standard_normal((5, 32)) * 3
    s = rng.uniform(0.5, 2.0, 32)
    assert_close((x / s) @ (w * s).T, x @ w.T)  # y = (x / s)(W diag(s))^T: folding 1/s into the norm is free
