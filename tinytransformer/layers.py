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

Does not handle: dropout, biasless LayerNorm variants, mixture-of-experts FFNs,
float32 or float64 inputs so large that their squares overflow (|x| above ~1e19
or ~1e154; float16 is computed in float32, so it never does).
"""
from __future__ import annotations

import math

import numpy as np

from tinytransformer._validate import float_array, nonnegative_float, positive_int

__all__ = ["layer_norm", "rms_norm", "gelu", "silu", "linear", "linear_in_row_blocks", "linear_in_weight_blocks", "embedding", "ffn", "swiglu", "pre_ln_block", "post_ln_block"]

_erf = np.vectorize(math.erf, otypes=[np.float64])


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
            y = (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)  # x/2 (1 + erf(x/sqrt 2))
        else:
            inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
            y = 0.5 * x * (1.0 + np.tanh(inner))
    return np.where(x == -np.inf, y.dtype.type(0), y)  # -inf * 0 is NaN; the limit is 0


def silu(x):
    """SiLU(x) = x * sigmoid(x), with sigmoid(x) = (1 + tanh(x/2)) / 2, which never overflows."""
    x = float_array(x, "x")
    half = x * x.dtype.type(0.5)
    with np.errstate(invalid="ignore"):  # -inf: -inf + inf is NaN; the limit is 0, set below
        y = half + half * np.tanh(half)  # x/2 (1 + tanh(x/2)) = x sigmoid(x)
    return np.where(x == -np.inf, x.dtype.type(0), y)


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


def linear_in_row_blocks(x, weight, bias=None, *, multiple: int = 4, linear=linear):
    """linear(x, weight, bias), with one zero row added when that completes a block of `multiple` rows.

    The same product; only its speed differs. OpenBLAS computes x W^T a few rows of x
    at a time (4 for float32 on x86-64 with AVX2) and the rows left over by narrower, slower
    code; a remainder of 3 rows is the worst case: on one core, 11 rows (a verification of
    10 drafted tokens) cost about a quarter more than 12, and 3 more than 4. So 3, 7, 11, ...
    rows get one zero row, computed and dropped; other counts (a single row is a
    matrix-vector product) are left alone, as are quantised weights.
    linear: the product to pad for (this module's linear, or e.g. linear_in_weight_blocks).
    """
    x = float_array(x, "x")
    C = _last_axis(x)
    rows = x.size // C
    if rows < 2 or multiple < 2 or (rows + 1) % multiple or not isinstance(weight, np.ndarray):
        return linear(x, weight, bias)
    padded = np.zeros((rows + 1, C), dtype=x.dtype)  # [rows + 1, C]: a zero row at the end
    padded[:rows] = x.reshape(rows, C)
    y = linear(padded, weight, bias)[:rows]  # [rows + 1, C] @ [C, out] -> [rows, out]
    return y.reshape(*x.shape[:-1], y.shape[-1])  # [..., out]


WEIGHT_BLOCK_BYTES = 256 * 1024  # a block of weight rows that fits a core's L2 cache, with room to spare
FEW_ROWS = 32  # up to this many rows of x, linear_in_weight_blocks takes the weight a block at a time


def linear_in_weight_blocks(x, weight, bias=None, *, block_bytes: int | None = None, max_rows: int | None = None):
    """linear(x, weight, bias), one block of the weight's output rows at a time when x has few rows.

    The same products; only their speed differs. For a matrix product the BLAS first
    copies the weight into its own tiled layout ("packing") and then multiplies the
    tiles. A decode step of a batch has a few rows of x (one per sequence) against
    a weight of megabytes: the packed copy of the whole weight spills out of the
    cache, and with so few rows to share its cost it is much of the time. Block
    by block (block_bytes each, output columns y[:, s:e] = x W[s:e]^T) it stays in
    the cache: in a micro-benchmark on one core, 8 rows through SmolLM2's projections
    took up to 12% less time (noisy; one run showed no gain) and its 49152-row output
    head about 20% less (`bench model` measures the whole decode step). One row is a matrix-vector product, which packs nothing, and
    many rows share the packing well: both are left to linear.
    block_bytes, max_rows: default to WEIGHT_BLOCK_BYTES and FEW_ROWS.
    """
    x = float_array(x, "x")
    block_bytes = positive_int(WEIGHT_BLOCK_BYTES if block_bytes is None else block_bytes, "block_bytes")
    max_rows = positive_int(FEW_ROWS if max_rows is None else max_rows, "max_rows")
    C = _last_axis(x)
    rows = x.size // C
    if rows < 2 or rows > max_rows or not isinstance(weight, np.ndarray):
        return linear(x, weight, bias)
    out = _weight(weight, "weight", C, label="out")
    _vector(bias, "bias", out, optional=True)
    step = max(1, block_bytes // (weight.itemsize * C))  # weight rows per block
    if step >= out:
        return linear(x, weight, bias)
    x2 = x.reshape(rows, C)
    y = np.empty((rows, out), dtype=np.result_type(x, weight))  # [rows, out]
    for s in range(0, out, step):
        np.matmul(x2, weight[s:s + step].T, out=y[:, s:s + step])  # [rows, C] @ [C, block] -> [rows, block]
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], out)  # [..., out]


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
