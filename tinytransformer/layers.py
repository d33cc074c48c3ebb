"""The building blocks around attention: normalisation, activations, feed-forward, residuals.

A transformer block is attention and a position-wise feed-forward network (FFN),
each wrapped in a residual connection and a normalisation:

    pre-LN  (GPT-2, Llama):       x = x + Attn(Norm(x));   x = x + FFN(Norm(x))
    post-LN (the 2017 original):  x = Norm(x + Attn(x));   x = Norm(x + FFN(x))

Pre-LN keeps an unnormalised residual stream from input to output, which makes
deep stacks train stably without warm-up (Xiong et al., 2020).

    LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta     (Ba et al., 2016)
    RMSNorm(x)   = x / sqrt(mean(x^2) + eps) * gamma                      (Zhang & Sennrich, 2019)
    GELU(x)      = x * Phi(x) = x/2 * (1 + erf(x / sqrt(2)))              (Hendrycks & Gimpel, 2016)
    SiLU(x)      = x * sigmoid(x)                                          (a.k.a. Swish)
    Linear(x)    = x W^T + b
    FFN(x)       = Linear_down(act(Linear_up(x)))
    SwiGLU(x)    = Linear_down(SiLU(Linear_gate(x)) * Linear_up(x))       (Shazeer, 2020; Llama)

Convention: activations are [..., C]; a weight W is [out, in], the layout of
PyTorch's nn.Linear and of GGUF files, applied as x @ W.T (a view, no copy).
Normalisations act on the last axis.

    >>> import numpy as np
    >>> rms_norm(np.array([3.0, 4.0]), np.ones(2), eps=0.0).round(4).tolist()
    [0.8485, 1.1314]

Does not handle: dropout, biasless LayerNorm variants, mixture-of-experts FFNs.
"""
from __future__ import annotations

import math

import numpy as np

from tinytransformer._validate import float_array

__all__ = ["layer_norm", "rms_norm", "gelu", "silu", "linear", "embedding", "ffn", "swiglu", "pre_ln_block", "post_ln_block"]

_erf = np.vectorize(math.erf, otypes=[np.float64])


def layer_norm(x, weight, bias, eps: float = 1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance)."""
    x = float_array(x, "x")
    _check_last_axis(x, weight, "weight")
    _check_last_axis(x, bias, "bias")
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # E[(x - mean)^2], [..., 1]
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def rms_norm(x, weight, eps: float = 1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis; no centring, no bias."""
    x = float_array(x, "x")
    _check_last_axis(x, weight, "weight")
    ms = np.mean(np.square(x), axis=-1, keepdims=True)  # mean(x^2), [..., 1]
    return x / np.sqrt(ms + np.asarray(eps, dtype=x.dtype)) * weight


def gelu(x, approximate: str = "none"):
    """GELU(x) = x * Phi(x). approximate="tanh" uses GPT-2's
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = float_array(x, "x")
    if approximate == "none":
        return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)  # x/2 (1 + erf(x/sqrt 2))
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
        return 0.5 * x * (1.0 + np.tanh(inner))
    raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")


def silu(x):
    """SiLU(x) = x * sigmoid(x), with sigmoid(x) = (1 + tanh(x/2)) / 2, which never overflows."""
    x = float_array(x, "x")
    half = x * x.dtype.type(0.5)
    return half + half * np.tanh(half)  # x/2 (1 + tanh(x/2)) = x sigmoid(x)


def linear(x, weight, bias=None):
    """x W^T (+ b): [..., in] -> [..., out], with the weight W [out, in].

    A float weight is a NumPy array. Anything else (a quantised weight that keeps
    its packed blocks) must have .shape == (out, in) and a method .linear(x)
    that returns x W^T; the model calls this function for every projection, so
    such a weight can stand in for an array.
    """
    y = x @ weight.T if isinstance(weight, np.ndarray) else weight.linear(x)  # [..., in] @ [in, out]
    return y if bias is None else y + bias


def embedding(ids, weight):
    """Rows of the embedding matrix: ids [...] -> [..., C] for weight [V, C].

    A quantised weight (anything that is not an array) provides .rows(ids).
    """
    return weight[ids] if isinstance(weight, np.ndarray) else weight.rows(ids)  # [...] -> [..., C]


def ffn(x, w_up, b_up, w_down, b_down, activation=gelu):
    """act(x Wu^T + bu) Wd^T + bd: [..., C] -> [..., F] -> [..., C]; Wu [F, C], Wd [C, F]."""
    h = activation(linear(x, w_up, b_up))  # [..., C] -> [..., F]
    return linear(h, w_down, b_down)  # [..., F] -> [..., C]


def swiglu(x, w_gate, w_up, w_down):
    """(SiLU(x Wg^T) * (x Wu^T)) Wd^T: the gated FFN of Llama; Wg, Wu [F, C], Wd [C, F]."""
    return linear(silu(linear(x, w_gate)) * linear(x, w_up), w_down)  # [..., F] * [..., F] -> [..., C]


def pre_ln_block(x, attention, feed_forward, norm1, norm2):
    """x + Attn(Norm1(x)), then + FFN(Norm2(.)). The arguments are callables of one array."""
    x = x + attention(norm1(x))
    return x + feed_forward(norm2(x))


def post_ln_block(x, attention, feed_forward, norm1, norm2):
    """Norm1(x + Attn(x)), then Norm2(. + FFN(.)) as in the original transformer."""
    x = norm1(x + attention(x))
    return norm2(x + feed_forward(x))


def _check_last_axis(x, param, name):
    param = np.asarray(param)
    if param.ndim != 1 or param.shape[0] != x.shape[-1]:
        raise ValueError(f"{name}: expected shape [{x.shape[-1]}] to match x's last axis, got {param.shape}")
