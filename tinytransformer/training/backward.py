"""Backward passes, written by hand: the gradient of every layer of the decoder.

Training needs dL/dtheta for every parameter theta of the model, where L is one
number (the loss). Backpropagation (Rumelhart, Hinton & Williams, 1986) gets
them all in one sweep from the output back to the input: each layer receives
dL/d(its output) and returns dL/d(each of its inputs). For a layer y = f(x, w)
that is the vector-Jacobian product

    dx = J_x^T dy,   dw = J_w^T dy       (dy = dL/dy has y's shape, dx has x's)

and no Jacobian is ever formed: each function below computes J^T dy directly
from the equation of its forward. This is how Karpathy's llm.c (`train_gpt2.c`)
trains GPT-2 in plain C, and how autograd libraries work underneath.

Naming: `f_backward(dout, <the inputs of f>)` for the forward `f` in `layers`,
`attention` or `positional` (imported, never rewritten), returning the
gradients in the order of f's arguments. Shapes follow the forwards:
activations [..., C] (batch and positions in front), attention [B, H, T, D]
with S key positions, weights [out, in] applied as x @ W^T (`layers.linear`).

A gradient with respect to a parameter used at many positions (a weight, a norm
gain, an embedding row) is the sum over those positions: that is where the
`sum(axis=...)` and the transposed matrix products come from.

    >>> import numpy as np
    >>> x, w = np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])    # y = x @ w.T = [[11.0]]
    >>> dx, dw = linear_backward(np.array([[1.0]]), x, w)        # dL/dy = 1
    >>> dx.tolist(), dw.tolist()
    ([[3.0, 4.0]], [[1.0, 2.0]])

Every function here is checked against PyTorch autograd on float64 inputs and
against a central finite difference (tests/test_training_backward.py).

Does not handle: dropout, gradients of the attention bias/mask and of the ALiBi
slopes (they are constants), second derivatives.
"""
from __future__ import annotations

import math

import numpy as np

from tinytransformer._validate import (attention_scale, attention_shapes, float32_or_wider, float_array,
                                       leading_index_array, positive_int)
from tinytransformer.attention import attention_weights
from tinytransformer.layers import erf, gelu, linear, silu
from tinytransformer.positional import apply_rope

__all__ = [
    "embedding_backward",
    "linear_backward",
    "layer_norm_backward",
    "rms_norm_backward",
    "gelu_backward",
    "silu_backward",
    "ffn_backward",
    "swiglu_backward",
    "softmax_backward",
    "attention_backward",
    "rope_backward",
    "pre_ln_block_backward",
    "post_ln_block_backward",
]


def embedding_backward(dout, ids, num_embeddings: int):
    """Gradient of a table lookup y = table[ids]: scatter-add the rows back.

        dtable[v] = sum over positions p with ids[p] == v of dout[p]

    dout [..., C], ids int [...] (the same leading shape) -> dtable [num_embeddings, C].
    A token that appears twice receives both gradients; one never seen gets zeros.
    The same function serves a learned position table (ids = positions).
    """
    dout = float_array(dout, "dout")
    ids = leading_index_array(ids, dout, "ids", "dout")
    num_embeddings = positive_int(num_embeddings, "num_embeddings")
    if ids.size and (ids.min() < 0 or ids.max() >= num_embeddings):
        raise ValueError(f"ids: expected values in [0, num_embeddings={num_embeddings}), "
                         f"got [{ids.min()}, {ids.max()}]")  # a negative id would silently wrap around
    C = dout.shape[-1]
    dtable = np.zeros((num_embeddings, C), dtype=dout.dtype)
    np.add.at(dtable, ids.reshape(-1), dout.reshape(-1, C))  # [N, C] rows added into [V, C]; repeats add up
    return dtable


def linear_backward(dout, x, weight):
    """Gradient of y = x @ weight^T, weight [out, in] (the checkpoint layout, as in `nn.Linear`).

        dx = dy @ weight                 [..., out] @ [out, in] -> [..., in]
        dweight = dy^T x                 [out, N] @ [N, in] -> [out, in]

    An output head tied to the embedding (logits = h @ E^T) is this with weight = E:
    its dweight is added to the embedding's own gradient, since E is one parameter used twice.
    """
    x2 = x.reshape(-1, x.shape[-1])  # [N, in]
    dout2 = dout.reshape(-1, dout.shape[-1])  # [N, out]
    return dout @ weight, dout2.T @ x2  # dx [..., in], dweight [out, in]


def layer_norm_backward(dy, x, weight, eps: float = 1e-5):
    """Gradient of y = xhat * weight + bias, xhat = (x - mean) * rstd, rstd = 1/sqrt(var + eps).

    Over the last axis (C entries), with g = dy * weight (the gradient reaching xhat):

        dx      = rstd * (g - mean(g) - xhat * mean(g * xhat))
        dweight = sum over positions of dy * xhat          [C]
        dbias   = sum over positions of dy                 [C]

    mean(g) comes from the mean subtracted in the forward, mean(g * xhat) from the
    variance that depends on every entry. dy, x [..., C]; returns (dx, dweight, dbias).
    """
    x, dy = float32_or_wider(x, "x"), float32_or_wider(dy, "dy")
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    xc = x - mean
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)  # [..., 1]
    xhat = xc * rstd
    g = dy * weight
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, _sum_rows(dy * xhat), _sum_rows(dy)


def rms_norm_backward(dy, x, weight, eps: float = 1e-6):
    """Gradient of y = xhat * weight, xhat = x * r, r = 1/sqrt(mean(x^2) + eps).

    Over the last axis, with g = dy * weight:

        dx      = r * (g - xhat * mean(g * xhat))
        dweight = sum over positions of dy * xhat          [C]

    LayerNorm's formula without the mean terms. dy, x [..., C]; returns (dx, dweight).
    """
    x, dy = float32_or_wider(x, "x"), float32_or_wider(dy, "dy")
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)  # [..., 1]
    xhat = x * r
    g = dy * weight
    dx = r * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, _sum_rows(dy * xhat)


def gelu_backward(dy, x, approximate: str = "none"):
    """Gradient of GELU, elementwise: dx = dy * GELU'(x).   dy, x [...] -> dx [...] (the same shape)

        exact:  GELU(x) = x Phi(x)       GELU'(x) = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2)/sqrt(2 pi)
        tanh:   GELU(x) = x/2 (1 + t),  t = tanh(u),  u = sqrt(2/pi) (x + 0.044715 x^3)
                GELU'(x) = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    x = float_array(x, "x")
    if approximate == "none":
        cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))  # Phi(x)
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)  # phi(x)
        return (dy * (cdf + x * pdf)).astype(x.dtype, copy=False)
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        t = np.tanh(c * (x + 0.044715 * x ** 3))
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x))
    raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")


def silu_backward(dy, x):
    """Gradient of SiLU(x) = x s(x), s = sigmoid: dx = dy * s(x) (1 + x (1 - s(x))).

    Elementwise: dy, x [...] -> dx [...] (the same shape).

    s(x) is computed as (1 + tanh(x/2)) / 2, which never overflows (as in `layers.silu`).
    """
    x = float_array(x, "x")
    s = 0.5 + 0.5 * np.tanh(0.5 * x)  # sigmoid(x)
    return dy * s * (1.0 + x * (1.0 - s))


def ffn_backward(dy, x, w_up, b_up, w_down, activation=gelu, activation_backward=gelu_backward):
    """Gradient of FFN(x) = act(x Wu^T + bu) Wd^T + bd (`layers.ffn`), Wu [F, C], Wd [C, F].

    With a = x Wu^T + bu [..., F] and h = act(a):

        dWd = dy^T h,  dbd = sum dy,  dh = dy Wd
        da  = act'(a) * dh                 (activation_backward(dh, a))
        dWu = da^T x,  dbu = sum da,  dx = da Wu

    activation and activation_backward: the forward's activation and its backward
    (gelu and gelu_backward, silu and silu_backward, or GELU's tanh form as two lambdas).
    Returns (dx, dw_up, db_up, dw_down, db_down).
    """
    a = linear(x, w_up, b_up)  # [..., C] -> [..., F]; recomputed, not saved
    dh, dw_down = linear_backward(dy, activation(a), w_down)  # [..., F], [C, F]
    da = activation_backward(dh, a)
    dx, dw_up = linear_backward(da, x, w_up)  # [..., C], [F, C]
    return dx, dw_up, _sum_rows(da), dw_down, _sum_rows(dy)


def swiglu_backward(dy, x, w_gate, w_up, w_down):
    """Gradient of SwiGLU(x) = (SiLU(x Wg^T) * (x Wu^T)) Wd^T (`layers.swiglu`), Wg, Wu [F, C], Wd [C, F].

    With g = x Wg^T, u = x Wu^T and h = SiLU(g) * u, all [..., F]:

        dWd = dy^T h,   dh = dy Wd
        du  = dh * SiLU(g),   dg = SiLU'(g) * (dh * u)      (the product rule of the gate)
        dWg = dg^T x,   dWu = du^T x,   dx = dg Wg + du Wu

    Returns (dx, dw_gate, dw_up, dw_down).
    """
    g = linear(x, w_gate)  # [..., F]
    u = linear(x, w_up)  # [..., F]
    sg = silu(g)
    dh, dw_down = linear_backward(dy, sg * u, w_down)  # [..., F], [C, F]
    du = dh * sg
    dg = silu_backward(dh * u, g)
    dx_gate, dw_gate = linear_backward(dg, x, w_gate)
    dx_up, dw_up = linear_backward(du, x, w_up)
    return dx_gate + dx_up, dw_gate, dw_up, dw_down


def softmax_backward(dp, p, axis: int = -1):
    """Gradient of p = softmax(x) along `axis`, from the output p (not x):

        dx_i = p_i (dp_i - sum_j p_j dp_j)

    The Jacobian diag(p) - p p^T applied to dp without forming it. Entries with
    p = 0 (masked) get 0: no gradient flows to a score the softmax ignored.
    dp, p [...] (attention: [B, H, T, S], softmax over S) -> dx [...] (the same shape).
    """
    return p * (dp - np.sum(dp * p, axis=axis, keepdims=True))


def attention_backward(dout, q, k, v, *, causal=False, scale=None, alibi_slopes=None, mask=None, bias=None,
                       window=None):
    """Gradients (dq, dk, dv) of out = softmax(q k^T * scale + bias, masked) v.

    q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv], dout [B, Hq, T, Dv]; the keyword
    arguments are those of `scaled_dot_product_attention`. P is recomputed from q and k:

        P  = softmax(Z),  Z = q k^T * scale + bias          [B, Hq, T, S]
        dv = P^T dout                                       [S, T] @ [T, Dv]
        dP = dout v^T                                       [T, Dv] @ [Dv, S]
        dZ = P * (dP - rowsum(dP * P))                      (softmax_backward)
        dq = dZ k * scale,   dk = dZ^T q * scale

    With GQA, the G = Hq / Hkv query heads that share a KV head all contribute to
    its gradient: viewing the G heads' rows as one [G * T] block makes that sum a
    single matrix product. dk, dv have k's and v's shapes.
    """
    q, k, v, dout = (float32_or_wider(a, n) for a, n in ((q, "q"), (k, "k"), (v, "v"), (dout, "dout")))
    B, Hq, Hkv, T, S, D, Dv = attention_shapes(q, k, v)
    if dout.shape != (B, Hq, T, Dv):
        raise ValueError(f"dout: expected shape [B, Hq, T, Dv] = {[B, Hq, T, Dv]}, got {dout.shape}")
    scale = attention_scale(scale, D)
    p = attention_weights(q, k, causal=causal, scale=scale, alibi_slopes=alibi_slopes, mask=mask, bias=bias,
                          window=window)  # [B, Hq, T, S]
    G = Hq // Hkv
    p = p.reshape(B, Hkv, G * T, S)  # the G heads sharing a KV head, stacked: [B, Hkv, G*T, S]
    do = dout.reshape(B, Hkv, G * T, Dv)  # [B, Hkv, G*T, Dv]
    dv = p.swapaxes(-1, -2) @ do  # [B, Hkv, S, G*T] @ [B, Hkv, G*T, Dv] -> [B, Hkv, S, Dv]
    dp = do @ v.swapaxes(-1, -2)  # [B, Hkv, G*T, Dv] @ [B, Hkv, Dv, S] -> [B, Hkv, G*T, S]
    dz = softmax_backward(dp, p) * p.dtype.type(scale)  # dZ * scale, [B, Hkv, G*T, S]
    dq = (dz @ k).reshape(B, Hq, T, D)  # [B, Hkv, G*T, S] @ [B, Hkv, S, D] -> [B, Hq, T, D]
    dk = dz.swapaxes(-1, -2) @ q.reshape(B, Hkv, G * T, D)  # [B, Hkv, S, G*T] @ [.., G*T, D] -> [B, Hkv, S, D]
    return dq, dk, dv


def rope_backward(dy, positions, *, base: float = 10000.0, interleaved: bool = False):
    """Gradient of y = apply_rope(x, positions): rotate dy back by the same angles.

    RoPE multiplies each pair of coordinates by a rotation matrix R(phi), and the
    transpose of a rotation is its inverse: R(phi)^T = R(-phi). So

        dx = R(-phi) dy = apply_rope(dy, -positions)

    dy [..., T, D]; positions int [T]; base and interleaved as in the forward.
    """
    return apply_rope(dy, -np.asarray(positions), base=base, interleaved=interleaved)


def pre_ln_block_backward(dy, attention_vjp, feed_forward_vjp, norm1_vjp, norm2_vjp):
    """Gradient of the pre-LN block (`layers.pre_ln_block`) through its residual connections.

    Forward:  m = x + Attn(Norm1(x));   y = m + FFN(Norm2(m)).
    A sum sends its incoming gradient unchanged into both of its terms, so:

        dm = dy + Norm2'^T FFN'^T dy
        dx = dm + Norm1'^T Attn'^T dm

    The identity path is why deep pre-LN stacks train: dy reaches x undiminished.
    Each *_vjp(d_output) -> d_input is the backward of one sublayer at the point
    its forward ran (a closure over what it saved, which also collects its
    parameters' gradients). dy [B, T, C] -> dx [B, T, C]; every vjp maps [B, T, C] to [B, T, C].
    """
    dm = dy + norm2_vjp(feed_forward_vjp(dy))
    return dm + norm1_vjp(attention_vjp(dm))


def post_ln_block_backward(dy, attention_vjp, feed_forward_vjp, norm1_vjp, norm2_vjp):
    """Gradient of the post-LN block (`layers.post_ln_block`), as in the 2017 original.

    Forward:  m = Norm1(x + Attn(x));   y = Norm2(m + FFN(m)).

        dr = Norm2'^T dy;   dm = dr + FFN'^T dr
        ds = Norm1'^T dm;   dx = ds + Attn'^T ds

    Here every gradient passes through a norm on its way down, unlike pre-LN.
    The *_vjp callables as in pre_ln_block_backward. dy [B, T, C] -> dx [B, T, C].
    """
    dr = norm2_vjp(dy)
    dm = dr + feed_forward_vjp(dr)
    ds = norm1_vjp(dm)
    return ds + attention_vjp(ds)


# --- helpers --------------------------------------------------------------------------


def _sum_rows(x):
    """Sum over every axis but the last: the gradient of a parameter broadcast over positions."""
    return x.reshape(-1, x.shape[-1]).sum(axis=0)

