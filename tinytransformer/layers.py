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

Two helpers change only the speed of x W^T on a CPU BLAS, never its value: the
model's opt-in fast path (`TinyTransformer(..., fast_linear=True)`) keeps every
matrix column-major (`column_major`) and pads a product's rows to a multiple of 4
(`linear_in_row_blocks`). The reference path calls plain `linear`.

    >>> import numpy as np
    >>> rms_norm(np.array([3.0, 4.0]), np.ones(2), eps=0.0).round(4).tolist()
    [0.8485, 1.1314]

Does not handle: dropout, biasless LayerNorm variants, mixture-of-experts FFNs,
float32 or float64 inputs so large that their squares overflow (|x| above ~1e19
or ~1e154; float16 is computed in float32, so it never does).
"""
from __future__ import annotations

import math

import numpy as np

from tinytransformer._validate import float_array, nonnegative_float

__all__ = ["layer_norm", "rms_norm", "gelu", "gelu_tanh", "erf", "silu", "linear", "linear_in_row_blocks",
           "column_major", "embedding", "ffn", "swiglu", "pre_ln_block", "post_ln_block"]

erf = np.vectorize(math.erf, otypes=[np.float64])  # the error function, elementwise (GELU's and its gradient's)


def layer_norm(x, weight, bias, eps: float = 1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance).

    eps: a finite number >= 0. Returns the common dtype of x, weight and bias;
    float16 is computed in float32 (its squares overflow above |x| ~ 256).
    """
    h, out_dtype = _norm_input(x, ("weight", weight), ("bias", bias))
    eps = nonnegative_float(eps, "eps")
    mean = h.mean(axis=-1, keepdims=True)  # [..., 1]
    var = ((h - mean) ** 2).mean(axis=-1, keepdims=True)  # E[(x - mean)^2], [..., 1]
    return ((h - mean) / np.sqrt(var + h.dtype.type(eps)) * weight + bias).astype(out_dtype, copy=False)


def rms_norm(x, weight, eps: float = 1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis; no centring, no bias.

    eps: a finite number >= 0. Returns the common dtype of x and weight;
    float16 is computed in float32 (its squares overflow above |x| ~ 256).
    """
    h, out_dtype = _norm_input(x, ("weight", weight))
    eps = nonnegative_float(eps, "eps")
    ms = np.mean(np.square(h), axis=-1, keepdims=True)  # mean(x^2), [..., 1]
    return (h / np.sqrt(ms + h.dtype.type(eps)) * weight).astype(out_dtype, copy=False)


def gelu(x, approximate: str = "none"):
    """GELU(x) = x * Phi(x). approximate="tanh" uses GPT-2's
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = float_array(x, "x")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    with np.errstate(over="ignore", invalid="ignore"):  # x^3 may overflow to inf; -inf gives NaN, fixed below
        if approximate == "none":
            y = (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(x.dtype)  # x/2 (1 + erf(x/sqrt 2))
        else:
            inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
            y = 0.5 * x * (1.0 + np.tanh(inner))
    return np.where(x == -np.inf, y.dtype.type(0), y)  # -inf * 0 is NaN; the limit is 0


def gelu_tanh(x):
    """gelu(x, approximate="tanh"): GPT-2's approximation, the GELU of the model's FFN."""
    return gelu(x, approximate="tanh")


def silu(x):
    """SiLU(x) = x * sigmoid(x) = x / (1 + exp(-x)).

    For very negative x, exp(-x) overflows to inf and x / inf is the right limit, -0.
    """
    x = float_array(x, "x")
    y = np.negative(x, out=np.empty_like(x))  # one new array, then in place: a model FFN calls this in every layer
    with np.errstate(over="ignore", invalid="ignore"):  # -inf / inf is NaN; the limit is 0, set below
        np.exp(y, out=y)
        y += 1
        np.divide(x, y, out=y)  # x / (1 + exp(-x))
    if y.size and np.fmin.reduce(x, axis=None) == -np.inf:  # (fmin skips NaN)
        y[x == -np.inf] = 0
    return y


def linear(x, weight, bias=None):
    """x W^T (+ b): [..., in] -> [..., out], with the weight W [out, in].

    A float weight is a NumPy array. Anything else (a quantised weight that keeps
    its packed blocks) must have .shape == (out, in) and a method .linear(x)
    that returns x W^T; the model calls this function for every projection, so
    such a weight can stand in for an array.
    """
    x = float_array(x, "x")
    out = _weight(weight, "weight", _last_axis(x), label="out")
    _vector(bias, "bias", out, optional=True)
    y = x @ weight.T if isinstance(weight, np.ndarray) else weight.linear(x)  # [..., in] @ [in, out]
    return y if bias is None else y + bias


def linear_in_row_blocks(x, weight, bias=None, *, multiple: int = 4):
    """linear(x, weight, bias), with zero rows added up to a whole number of blocks of `multiple` rows.

    The same product; only its speed differs. OpenBLAS computes x W^T a few rows of x
    at a time (4 for float32 on x86-64 with AVX2) and the rows left over by narrower,
    slower code. On one core, through SmolLM2's projections and head (weights stored
    column-major, as the model keeps them), 3 rows took 101 ms and 4 rows 77 ms,
    7 rows 117 ms and 8 rows 79 ms, 11 rows 138 ms and 12 rows 101 ms (one run, best
    of 7). So 2 or more rows are padded up to the next multiple; the zero rows are
    computed and dropped. One row (a matrix-vector product) is left alone, as are
    quantised weights.
    """
    x = float_array(x, "x")
    C = _last_axis(x)
    rows = x.size // C
    padded_rows = -(-rows // multiple) * multiple if multiple > 1 else rows
    if rows < 2 or padded_rows == rows or not isinstance(weight, np.ndarray):
        return linear(x, weight, bias)
    padded = np.zeros((padded_rows, C), dtype=x.dtype)  # [padded_rows, C]: zero rows at the end
    padded[:rows] = x.reshape(rows, C)
    y = linear(padded, weight, bias)[:rows]  # [padded_rows, C] @ [C, out] -> [rows, out]
    return y.reshape(*x.shape[:-1], y.shape[-1])  # [..., out]


def column_major(weight):
    """The same matrix W [out, in], its memory laid out column by column (W^T row-major).

    Only the speed of x W^T changes: the BLAS then reads W^T as it lies, where for a
    row-major W it must read it transposed. On one core, through SmolLM2's projections
    and head, a product with 1 row took 45 ms instead of 56 ms, with 4 rows 69 instead
    of 97 ms, with 12 rows 120 instead of 151 ms (one run, best of 5). Anything that
    is not a 2-D array (a norm's vector, a quantised weight) is returned as it is.
    """
    if isinstance(weight, np.ndarray) and weight.ndim == 2:
        return np.asfortranarray(weight)
    return weight


def embedding(ids, weight):
    """Rows of the embedding matrix: ids [...] -> [..., C] for weight [V, C].

    A quantised weight (anything that is not an array) provides .rows(ids).
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"ids: expected integer token ids, got dtype {ids.dtype}")
    if not isinstance(weight, np.ndarray) and not hasattr(weight, "rows"):
        raise ValueError(f"weight: expected an array [V, C] or a quantised weight with .rows, got "
                         f"{type(weight).__name__}")
    V = weight.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"ids: expected token ids in [0, {V}), got {ids.min()} .. {ids.max()}")
    return weight[ids] if isinstance(weight, np.ndarray) else weight.rows(ids)  # [...] -> [..., C]


def ffn(x, w_up, b_up, w_down, b_down, activation=gelu, *, linear=linear):
    """act(x Wu^T + bu) Wd^T + bd: [..., C] -> [..., F] -> [..., C]; Wu [F, C], Wd [C, F].

    linear: the product x W^T + b to use (e.g. linear_in_row_blocks)."""
    x = float_array(x, "x")
    C = _last_axis(x)
    F = _weight(w_up, "w_up", C)
    _vector(b_up, "b_up", F, optional=True)
    _weight(w_down, "w_down", F, C)
    _vector(b_down, "b_down", C, optional=True)
    if not callable(activation):
        raise ValueError(f"activation: expected a function of one array, got {activation!r}")
    h = activation(linear(x, w_up, b_up))  # [..., C] -> [..., F]
    return linear(h, w_down, b_down)  # [..., F] -> [..., C]


def swiglu(x, w_gate, w_up, w_down, *, linear=linear):
    """(SiLU(x Wg^T) * (x Wu^T)) Wd^T: the gated FFN of Llama; Wg, Wu [F, C], Wd [C, F].

    linear: the product x W^T to use (e.g. linear_in_row_blocks)."""
    x = float_array(x, "x")
    C = _last_axis(x)
    F = _weight(w_gate, "w_gate", C)
    _weight(w_up, "w_up", C, F)
    _weight(w_down, "w_down", F, C)
    return linear(silu(linear(x, w_gate)) * linear(x, w_up), w_down)  # [..., F] * [..., F] -> [..., C]


def pre_ln_block(x, attention, feed_forward, norm1, norm2):
    """x + Attn(Norm1(x)), then + FFN(Norm2(.)). The arguments are callables of one array."""
    x = x + attention(norm1(x))
    return x + feed_forward(norm2(x))


def post_ln_block(x, attention, feed_forward, norm1, norm2):
    """Norm1(x + Attn(x)), then Norm2(. + FFN(.)) as in the original transformer."""
    x = norm1(x + attention(x))
    return norm2(x + feed_forward(x))


# --- validation helpers (the public boundary) ---------------------------------------


def _last_axis(x) -> int:
    """C, the size of x's last axis, or ValueError unless x has one of size >= 1."""
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"x: expected an array [..., C] with C >= 1, got shape {x.shape}")
    return x.shape[-1]


def _real(param, name) -> np.ndarray:
    param = np.asarray(param)
    if param.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a real-valued array, got dtype {param.dtype}")
    return param


def _vector(param, name, size, optional=False):
    if param is None and optional:
        return
    if _real(param, name).shape != (size,):
        raise ValueError(f"{name}: expected shape [{size}], got {np.shape(param)}")


def _weight(w, name, inputs, outputs=None, label="F") -> int:
    """The outputs of a weight W [out, in] (applied as x W^T), or ValueError unless W is
    [outputs, inputs] (any outputs, called `label`, if None). A quantised weight needs
    .shape and .linear (see linear)."""
    if isinstance(w, np.ndarray) or not (hasattr(w, "shape") and hasattr(w, "linear")):
        w = _real(w, name)
    shape = tuple(w.shape)
    if len(shape) != 2 or shape[1] != inputs or (outputs is not None and shape[0] != outputs):
        expected = f"[{label if outputs is None else outputs}, {inputs}]"
        raise ValueError(f"{name}: expected shape {expected} ([out, in]; in is x's last axis {inputs}), "
                         f"got {shape}")
    return shape[0]


def _norm_input(x, *params):
    """(x to compute with, output dtype): float16 becomes float32; each (name, param) is [C]."""
    x = float_array(x, "x")
    C = _last_axis(x)
    for name, param in params:
        _vector(param, name, C)
    out_dtype = np.result_type(x, *(np.asarray(param) for _, param in params))
    return (x.astype(np.float32) if x.dtype == np.float16 else x), out_dtype
