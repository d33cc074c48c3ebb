"""Every hand-written backward equals PyTorch autograd and a central finite difference.

Each case below is one layer: it draws shapes, builds float64 inputs, and names
our forward (imported from the chapter modules), our backward, and the same
forward written in torch. Two laws run over every case:

    test_backward_equals_torch_autograd                 relative error below 1e-10 (the float64 table)
    test_backward_equals_central_finite_difference      on three coordinates of every input

The loss for both is L = sum(forward(inputs) * dy) for a random dy, so dL/dy = dy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import require
from strategies.attention import attention_shapes, random_qkv
from strategies.basics import seeds
from strategies.training import activation_shapes, coordinates
from tinytransformer.attention import (
    causal_mask,
    masked_softmax,
    merge_heads,
    scaled_dot_product_attention,
    sliding_window_mask,
    split_heads,
)
from tinytransformer.layers import ffn, gelu, layer_norm, linear, post_ln_block, pre_ln_block, rms_norm, silu, swiglu
from tinytransformer.positional import alibi_bias, alibi_slopes, apply_rope, rope_frequencies
from tinytransformer.testing import assert_close, numerical_gradient
from tinytransformer.training.backward import (
    attention_backward,
    embedding_backward,
    ffn_backward,
    gelu_backward,
    layer_norm_backward,
    linear_backward,
    post_ln_block_backward,
    pre_ln_block_backward,
    rms_norm_backward,
    rope_backward,
    silu_backward,
    softmax_backward,
    swiglu_backward,
)
from tinytransformer.training.objectives import cross_entropy

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@dataclass
class Case:
    arrays: list  # the differentiable inputs, float64
    forward: Callable  # ours: (*arrays) -> output
    backward: Callable  # ours: (dy, *arrays) -> one gradient per array
    torch_forward: Callable  # (torch, *tensors) -> output


def _tanh_gelu(a):
    return gelu(a, approximate="tanh")


def _tanh_gelu_backward(dy, a):
    return gelu_backward(dy, a, approximate="tanh")


def _torch_rope(torch, x, positions, interleaved):
    D = x.shape[-1]
    angles = positions[:, None] * rope_frequencies(D)[None, :]  # [T, D/2]
    cos, sin = torch.from_numpy(np.cos(angles)), torch.from_numpy(np.sin(angles))
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., :D // 2], x[..., D // 2:])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    return torch.stack([ra, rb], -1).flatten(-2) if interleaved else torch.cat([ra, rb], -1)


def _torch_attention(torch, q, k, v, allowed, bias=None, scale=None):
    """softmax(q k^T * scale + bias, masked) v with GQA by repeating heads; a row with no key gives 0."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # head h reads KV head h // G
    scores = q @ k.transpose(-1, -2) * (1 / np.sqrt(q.shape[-1]) if scale is None else scale)
    if bias is not None:
        scores = scores + torch.from_numpy(bias)
    allowed = torch.from_numpy(np.broadcast_to(allowed, scores.shape).copy())
    p = torch.softmax(scores.masked_fill(~allowed, torch.finfo(torch.float64).min), dim=-1)
    return (p * allowed.any(-1, keepdim=True)) @ v


# --- the cases: each draws its shapes and returns a Case ------------------------------


def case_embedding(draw, rng):
    B, T, C = draw(activation_shapes())
    V = draw(st.integers(1, 6))  # few rows, so ids repeat
    ids = rng.integers(0, V, size=(B, T))
    return Case([rng.standard_normal((V, C))], lambda table: table[ids],
                lambda dy, table: (embedding_backward(dy, ids, V),),
                lambda torch, table: torch.nn.functional.embedding(torch.from_numpy(ids), table))


def case_linear(draw, rng):
    B, T, C = draw(activation_shapes())
    F = draw(st.integers(1, 7))
    return Case([rng.standard_normal((B, T, C)), rng.standard_normal((F, C))], lambda x, w: x @ w.T,
                linear_backward, lambda torch, x, w: torch.nn.functional.linear(x, w))


def case_tied_head(draw, rng):
    """logits = Embed(ids) @ E^T: one table used twice, so its gradient is the sum of both uses."""
    B, T, C = draw(activation_shapes())
    V = draw(st.integers(1, 6))
    ids = rng.integers(0, V, size=(B, T))

    def backward(dy, table):
        dh, dhead = linear_backward(dy, table[ids], table)
        return (dhead + embedding_backward(dh, ids, V),)

    return Case([rng.standard_normal((V, C))], lambda table: table[ids] @ table.T, backward,
                lambda torch, table: torch.nn.functional.embedding(torch.from_numpy(ids), table) @ table.T)


def case_layer_norm(draw, rng):
    B, T, C = draw(activation_shapes())
    eps = draw(st.sampled_from([1e-5, 1e-2]))
    arrays = [rng.standard_normal((B, T, C)) * 3 + 1, rng.standard_normal(C), rng.standard_normal(C)]
    return Case(arrays, lambda x, w, b: layer_norm(x, w, b, eps),
                lambda dy, x, w, b: layer_norm_backward(dy, x, w, eps),
                lambda torch, x, w, b: torch.nn.functional.layer_norm(x, (C,), w, b, eps))


def case_rms_norm(draw, rng):
    B, T, C = draw(activation_shapes())
    eps = draw(st.sampled_from([1e-6, 1e-2]))
    arrays = [rng.standard_normal((B, T, C)) * 3, rng.standard_normal(C)]
    return Case(arrays, lambda x, w: rms_norm(x, w, eps), lambda dy, x, w: rms_norm_backward(dy, x, w, eps),
                lambda torch, x, w: torch.nn.functional.rms_norm(x, (C,), w, eps))


def case_gelu(draw, rng):
    approximate = draw(st.sampled_from(["none", "tanh"]))
    x = rng.standard_normal(draw(activation_shapes())) * 3
    return Case([x], lambda x: gelu(x, approximate), lambda dy, x: (gelu_backward(dy, x, approximate),),
                lambda torch, x: torch.nn.functional.gelu(x, approximate=approximate))


def case_silu(draw, rng):
    x = rng.standard_normal(draw(activation_shapes())) * 4
    return Case([x], silu, lambda dy, x: (silu_backward(dy, x),), lambda torch, x: torch.nn.functional.silu(x))


def case_ffn(draw, rng):
    B, T, C = draw(activation_shapes())
    F = draw(st.integers(1, 9))
    kind = draw(st.sampled_from(["gelu", "gelu_tanh", "silu"]))
    act, act_backward = {"gelu": (gelu, gelu_backward), "gelu_tanh": (_tanh_gelu, _tanh_gelu_backward),
                         "silu": (silu, silu_backward)}[kind]
    arrays = [rng.standard_normal((B, T, C)), rng.standard_normal((F, C)), rng.standard_normal(F),
              rng.standard_normal((C, F)), rng.standard_normal(C)]

    def torch_forward(torch, x, w1, b1, w2, b2):
        F_ = torch.nn.functional
        a = F_.linear(x, w1, b1)
        h = F_.silu(a) if kind == "silu" else F_.gelu(a, approximate="tanh" if kind == "gelu_tanh" else "none")
        return F_.linear(h, w2, b2)

    return Case(arrays, lambda x, w1, b1, w2, b2: ffn(x, w1, b1, w2, b2, activation=act),
                lambda dy, x, w1, b1, w2, b2: ffn_backward(dy, x, w1, b1, w2, act, act_backward), torch_forward)


def case_swiglu(draw, rng):
    B, T, C = draw(activation_shapes())
    F = draw(st.integers(1, 9))
    arrays = [rng.standard_normal((B, T, C)), rng.standard_normal((F, C)), rng.standard_normal((F, C)),
              rng.standard_normal((C, F))]
    return Case(arrays, swiglu, swiglu_backward,
                lambda torch, x, wg, wu, wd: (torch.nn.functional.silu(x @ wg.T) * (x @ wu.T)) @ wd.T)


def case_softmax(draw, rng):
    B, T, C = draw(activation_shapes())
    allowed = rng.random((B, T, C)) < 0.7
    allowed[..., 0] = True  # every row sees at least one entry (torch gives NaN otherwise)
    return Case([rng.standard_normal((B, T, C)) * 3], lambda x: masked_softmax(x, mask=allowed),
                lambda dy, x: (softmax_backward(dy, masked_softmax(x, mask=allowed)),),
                lambda torch, x: torch.softmax(x.masked_fill(~torch.from_numpy(allowed), -np.inf), dim=-1))


def case_attention(draw, rng):
    """Causal (end-aligned, so T > S leaves rows with no key), a sliding window or a boolean mask (rows
    with no key too); ALiBi and an additive bias; any scale; GQA/MQA, T != S, odd lengths."""
    shape = draw(attention_shapes(max_len=13, head_dims=(1, 2, 3, 4, 8)))
    structure, alibi, with_bias = draw(st.sampled_from(["none", "causal", "window", "mask"])), draw(st.booleans()), \
        draw(st.booleans())
    scale = draw(st.sampled_from([None, 0.3, 1.7]))
    q, k, v = random_qkv(shape, int(rng.integers(2**32)))
    T, S, Hq = shape.q_len, shape.kv_len, shape.n_heads
    kwargs = dict(scale=scale, alibi_slopes=alibi_slopes(Hq) if alibi else None)
    allowed = np.ones((T, S), bool)
    if structure == "causal":
        kwargs["causal"], allowed = True, causal_mask(T, S)
    elif structure == "window":
        window = draw(st.integers(1, S))
        kwargs["window"], allowed = window, sliding_window_mask(T, S, window)
    elif structure == "mask":
        kwargs["mask"] = allowed = rng.random((shape.batch, Hq, T, S)) < 0.6  # [B, Hq, T, S]
    bias = np.zeros((Hq, T, S))
    if with_bias:
        kwargs["bias"] = rng.standard_normal((Hq, T, S))  # a constant: no gradient
        bias = bias + kwargs["bias"]
    if alibi:
        bias = bias + alibi_bias(Hq, T, S)
    return Case([q, k, v], lambda q, k, v: scaled_dot_product_attention(q, k, v, **kwargs),
                lambda dy, q, k, v: attention_backward(dy, q, k, v, **kwargs),
                lambda torch, q, k, v: _torch_attention(torch, q, k, v, allowed, bias, scale))


def case_rope(draw, rng):
    B, T, _ = draw(activation_shapes())
    H, D = draw(st.integers(1, 3)), 2 * draw(st.integers(1, 5))
    interleaved = draw(st.booleans())
    positions = rng.integers(0, 50, size=T)  # absolute positions, as in cached decoding
    return Case([rng.standard_normal((B, H, T, D))], lambda x: apply_rope(x, positions, interleaved=interleaved),
                lambda dy, x: (rope_backward(dy, positions, interleaved=interleaved),),
                lambda torch, x: _torch_rope(torch, x, positions, interleaved))


def case_cross_entropy(draw, rng):
    """The loss itself (a scalar; dy is its upstream gradient), with ignored targets."""
    B, T, V = draw(activation_shapes())
    targets = rng.integers(0, V, size=(B, T))
    targets[rng.random((B, T)) < 0.3] = -100

    def forward(logits):
        return np.array(cross_entropy(logits, targets)[0])

    def torch_forward(torch, logits):
        t = torch.from_numpy(targets)
        if not (t != -100).any():
            return logits.sum() * 0.0  # torch gives NaN for a mean over nothing; we define 0
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), t.reshape(-1), ignore_index=-100)

    return Case([rng.standard_normal((B, T, V)) * 2], forward,
                lambda dy, logits: (cross_entropy(logits, targets)[1] * dy,), torch_forward)


def case_block(draw, rng):
    """A whole residual block: causal GQA self-attention with RoPE and SwiGLU, pre- or post-LN, either norm."""
    B, T = draw(st.integers(1, 2)), draw(st.integers(1, 7))
    Hkv, G, D = draw(st.integers(1, 2)), draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2))
    Hq, C, F = Hkv * G, 4, draw(st.integers(1, 6))
    post, layer = draw(st.booleans()), draw(st.booleans())
    positions = np.arange(T)
    shapes = [(B, T, C), (Hq * D, C), (Hkv * D, C), (Hkv * D, C), (C, Hq * D), (F, C), (F, C), (C, F), (C,), (C,),
              (C,), (C,)]
    arrays = [rng.standard_normal(s) for s in shapes]  # x, wq, wk, wv, wo, wg, wu, wd, g1, b1, g2, b2

    def norm(h, g, b):
        return layer_norm(h, g, b) if layer else rms_norm(h, g, 1e-5)

    def attention(h, wq, wk, wv, wo):
        q = apply_rope(split_heads(linear(h, wq), Hq), positions)
        k = apply_rope(split_heads(linear(h, wk), Hkv), positions)
        return linear(merge_heads(scaled_dot_product_attention(q, k, split_heads(linear(h, wv), Hkv), causal=True)), wo)

    def forward(x, wq, wk, wv, wo, wg, wu, wd, g1, b1, g2, b2):
        block = post_ln_block if post else pre_ln_block
        return block(x, lambda h: attention(h, wq, wk, wv, wo), lambda h: swiglu(h, wg, wu, wd),
                     lambda h: norm(h, g1, b1), lambda h: norm(h, g2, b2))

    def backward(dy, x, wq, wk, wv, wo, wg, wu, wd, g1, b1, g2, b2):
        grads = {}
        # the forward once more, keeping the input of each sublayer (what a trainer saves)
        if post:
            a_in = x
            m = norm(x + attention(x, wq, wk, wv, wo), g1, b1)
            f_in = m
            n1_in, n2_in = x + attention(x, wq, wk, wv, wo), m + swiglu(m, wg, wu, wd)
        else:
            n1_in, a_in = x, norm(x, g1, b1)
            m = x + attention(a_in, wq, wk, wv, wo)
            n2_in, f_in = m, norm(m, g2, b2)

        def norm_vjp(which, h, g):
            def vjp(d):
                if layer:
                    dh, grads[f"g{which}"], grads[f"b{which}"] = layer_norm_backward(d, h, g)
                else:
                    (dh, grads[f"g{which}"]), grads[f"b{which}"] = rms_norm_backward(d, h, g, 1e-5), 0 * g
                return dh
            return vjp

        def attention_vjp(d):
            q = apply_rope(split_heads(linear(a_in, wq), Hq), positions)
            k = apply_rope(split_heads(linear(a_in, wk), Hkv), positions)
            v = split_heads(linear(a_in, wv), Hkv)
            merged = merge_heads(scaled_dot_product_attention(q, k, v, causal=True))
            dmerged, grads["wo"] = linear_backward(d, merged, wo)
            dq, dk, dv = attention_backward(split_heads(dmerged, Hq), q, k, v, causal=True)
            dh = 0
            for name, dhead, w in (("wq", rope_backward(dq, positions), wq), ("wk", rope_backward(dk, positions), wk),
                                   ("wv", dv, wv)):
                dx_part, grads[name] = linear_backward(merge_heads(dhead), a_in, w)
                dh = dh + dx_part
            return dh

        def ffn_vjp(d):
            dh, grads["wg"], grads["wu"], grads["wd"] = swiglu_backward(d, f_in, wg, wu, wd)
            return dh

        block_backward = post_ln_block_backward if post else pre_ln_block_backward
        dx = block_backward(dy, attention_vjp, ffn_vjp, norm_vjp(1, n1_in, g1), norm_vjp(2, n2_in, g2))
        return (dx,) + tuple(grads[n] for n in ("wq", "wk", "wv", "wo", "wg", "wu", "wd", "g1", "b1", "g2", "b2"))

    def torch_forward(torch, x, wq, wk, wv, wo, wg, wu, wd, g1, b1, g2, b2):
        F_ = torch.nn.functional

        def tnorm(h, g, b):
            return F_.layer_norm(h, (C,), g, b) if layer else F_.rms_norm(h, (C,), g, 1e-5)

        def tattention(h):
            def heads(y, n):
                return y.reshape(B, T, n, -1).transpose(1, 2)
            q = _torch_rope(torch, heads(h @ wq.T, Hq), positions, False)
            k = _torch_rope(torch, heads(h @ wk.T, Hkv), positions, False)
            out = _torch_attention(torch, q, k, heads(h @ wv.T, Hkv), causal_mask(T, T))
            return out.transpose(1, 2).reshape(B, T, Hq * D) @ wo.T

        def tffn(h):
            return (F_.silu(h @ wg.T) * (h @ wu.T)) @ wd.T

        if post:
            m = tnorm(x + tattention(x), g1, b1)
            return tnorm(m + tffn(m), g2, b2)
        m = x + tattention(tnorm(x, g1, b1))
        return m + tffn(tnorm(m, g2, b2))

    return Case(arrays, forward, backward, torch_forward)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def _draw(data, name, seed):
    rng = np.random.default_rng(seed)
    return CASES[name](data.draw, rng), rng


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data(), seed=seeds())
def test_backward_equals_torch_autograd(name, data, seed):
    torch = require("torch", "autograd is the oracle for the hand-written backward passes")
    case, rng = _draw(data, name, seed)
    out = case.forward(*case.arrays)
    dy = rng.standard_normal(np.shape(out))
    grads = case.backward(dy, *case.arrays)
    tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in case.arrays]
    expected = case.torch_forward(torch, *tensors)
    assert_close(out, expected.detach().numpy(), err_msg="forwards differ")
    expected.backward(torch.from_numpy(np.asarray(dy, dtype=np.float64)))
    assert len(grads) == len(tensors)
    for i, (got, tensor) in enumerate(zip(grads, tensors)):
        want = np.zeros(tensor.shape) if tensor.grad is None else tensor.grad.numpy()
        assert got.shape == want.shape, f"gradient {i}: shape {got.shape}, expected {want.shape}"
        assert_close(got, want, err_msg=f"gradient of input {i}")


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data(), seed=seeds())
def test_backward_equals_central_finite_difference(name, data, seed):
    case, rng = _draw(data, name, seed)
    dy = rng.standard_normal(np.shape(case.forward(*case.arrays)))
    grads = case.backward(dy, *case.arrays)

    def loss(arrays):
        return float(np.sum(case.forward(*arrays) * dy))

    for which, array in enumerate(case.arrays):
        for index in coordinates(rng, array.shape):
            numeric = numerical_gradient(loss, case.arrays, which, index)
            assert_close(grads[which][index], numeric, rtol=1e-6, atol=1e-6,  # h = 1e-6: O(h^2) + rounding / h
                         err_msg=f"input {which} at {index}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_attention_backward_keeps_low_precision_inputs_finite_and_close(dtype):
    q, k, v = (np.random.default_rng(1).standard_normal((3, 1, 2, 5, 4)) * 0.5)
    dy = np.ones((1, 2, 5, 4))
    want = attention_backward(dy, q, k, v, causal=True)
    got = attention_backward(dy.astype(dtype), q.astype(dtype), k.astype(dtype), v.astype(dtype), causal=True)
    for g, w in zip(got, want):
        assert g.dtype == (np.float32 if dtype == np.float16 else dtype)
        assert_close(g, w, dtype=dtype, rtol=1e-2 if dtype == np.float16 else 1e-4, atol=1e-2)


@pytest.mark.parametrize("call, message", [
    (lambda: embedding_backward(np.ones((2, 3)), np.array([0, 1.0]), 4), "ids: expected an integer array"),
    (lambda: embedding_backward(np.ones((2, 3)), np.array([0, 1, 2]), 4), r"ids: expected .* shape \(2,\)"),
    (lambda: embedding_backward(np.ones((2, 3)), np.array([0, -1]), 4), r"ids: expected values in \[0, num_embed"),
    (lambda: embedding_backward(np.ones((2, 3)), np.array([0, 4]), 4), r"ids: expected values in \[0, num_embed"),
    (lambda: embedding_backward(np.ones((2, 3)), np.array([0, 1]), 0), "num_embeddings: expected an integer >= 1"),
    (lambda: gelu_backward(np.ones(2), np.ones(2), approximate="fast"), "approximate: expected 'none' or 'tanh'"),
    (lambda: attention_backward(np.ones((1, 2, 3, 5)), *np.ones((3, 1, 2, 3, 4))), r"dout: expected shape"),
    (lambda: attention_backward(np.ones((1, 3, 3, 4)), np.ones((1, 3, 3, 4)), np.ones((1, 2, 3, 4)),
                                np.ones((1, 2, 3, 4))), "k: expected a number of KV heads"),
])
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
