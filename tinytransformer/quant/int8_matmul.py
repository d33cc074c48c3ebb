"""LLM.int8(): an int8 matrix multiply that keeps the outlier feature columns in float.

Dettmers et al., 2022, "LLM.int8(): 8-bit Matrix Multiplication for
Transformers at Scale". Past a few billion parameters, a handful of hidden
features take values 20x larger than the rest in almost every token. Absmax
int8 per row of activations then spends its 255 levels on the outliers and
rounds everything else to zero. The fix is a decomposition by columns of the
activations X [T, C_in] (and so by input columns of the weight W [C_out, C_in]):

    O    = { j : max_t |X[t, j]| >= threshold }               outlier features (threshold 6.0)
    Y    = X[:, O] @ W[:, O]^T                                  in float ("16-bit")
         + (c_x c_w^T / 127^2) * (Xq[:, ~O] @ Wq[:, ~O]^T)      int8 x int8 -> int32
    Xq   = round(127 X / c_x),  c_x[t] = max_j |X[t, j]|        vector-wise: one scale per token
    Wq   = round(127 W / c_w),  c_w[o] = max_j |W[o, j]|        and one per output feature

Only Wq and c_w are stored (8 bits per weight plus a float32 per row), so the
outlier columns of W in the float product are dequantised from int8, as in
bitsandbytes' `Linear8bitLt` at inference. As there, c_x is taken over the row
after zeroing its outlier entries (the other entries of an outlier column still
count). The int8 codes come from `uniform.quantize_absmax(bits=8, group="row")`.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((8, 64)).astype(np.float32)
    >>> x = rng.standard_normal((4, 64)).astype(np.float32)
    >>> x[:, 3] = 60.0                                   # one outlier feature in every token
    >>> layer = Int8Linear(w)
    >>> layer.shape, outlier_columns(x, 6.0).tolist()
    ((8, 64), [3])
    >>> exact = x @ w.T
    >>> rest = exact - np.outer(x[:, 3], w[:, 3])        # what the 63 ordinary features contribute
    >>> def error(y): return round(float(np.sqrt(np.mean((y - exact) ** 2) / np.mean(rest ** 2))), 3)
    >>> error(layer.linear(x)), error(layer.linear(x, threshold=0))   # with and without the decomposition
    (0.053, 0.191)

Shapes: x [..., C_in] (any leading axes), weight [C_out, C_in], output
[..., C_out]. Does not handle: 16-bit float arithmetic (the float part runs in
x's dtype), training (the backward pass), sparse outlier storage.
"""
from __future__ import annotations

import numpy as np

from tinytransformer._validate import float_array
from tinytransformer.quant.uniform import quantize_absmax

__all__ = ["Int8Linear", "outlier_columns", "int8_matmul"]


def outlier_columns(x, threshold: float) -> np.ndarray:
    """Indices of the feature columns j of x [T, C] with some |x[t, j]| >= threshold (none if threshold <= 0)."""
    x = np.asarray(x)
    if threshold <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero((np.abs(x.reshape(-1, x.shape[-1])) >= threshold).any(axis=0))


def int8_matmul(x, w_q: np.ndarray, w_scale: np.ndarray, *, threshold: float = 6.0) -> np.ndarray:
    """x [..., C_in] @ W^T for W stored as int8 codes w_q [C_out, C_in] with absmax scales w_scale [C_out, 1]."""
    x = float_array(x, "x")
    if x.shape[-1] != w_q.shape[1]:
        raise ValueError(f"x: expected a last axis of {w_q.shape[1]} (the weight's C_in), got shape {x.shape}")
    rows = x.reshape(-1, x.shape[-1]).astype(np.float32)  # [T, C_in]
    outliers = outlier_columns(rows, threshold)
    regular = np.where(np.abs(rows) >= threshold, 0, rows) if outliers.size else rows
    x_int8 = quantize_absmax(regular, bits=8, group="row")  # Xq [T, C_in], c_x / 127 [T, 1]
    x_q = x_int8.q.astype(np.int32)
    x_q[:, outliers] = 0  # the outlier columns go through the float product instead
    acc = x_q @ w_q.astype(np.int32).T  # int8 x int8 summed in int32: [T, C_in] @ [C_in, C_out] -> [T, C_out]
    y = acc.astype(np.float32) * (x_int8.scale * w_scale.T)  # * c_x c_w^T / 127^2
    if outliers.size:
        w_outliers = w_q[:, outliers].astype(np.float32) * w_scale  # dequantised columns [C_out, |O|]
        y += rows[:, outliers] @ w_outliers.T  # [T, |O|] @ [|O|, C_out]
    return y.astype(x.dtype).reshape(*x.shape[:-1], w_q.shape[0])


class Int8Linear:
    """A weight [C_out, C_in] stored as int8 per-row absmax; `.linear(x)` is x @ W^T by LLM.int8().

    It has `.shape` and `.linear`, so it can stand in for a float weight in the model's parameters.
    """

    def __init__(self, weight, *, threshold: float = 6.0):
        weight = float_array(weight, "weight")
        if weight.ndim != 2:
            raise ValueError(f"weight: expected a matrix [C_out, C_in], got shape {weight.shape}")
        q = quantize_absmax(weight, bits=8, group="row")
        self.q, self.scale = q.q, q.scale  # int8 [C_out, C_in], float32 [C_out, 1]
        self.threshold = float(threshold)

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    @property
    def bits_per_weight(self) -> float:
        return 8 + 32 / self.q.shape[1]

    def dequantize(self) -> np.ndarray:
        return self.q.astype(np.float32) * self.scale

    def linear(self, x, *, threshold: float | None = None) -> np.ndarray:
        """x [..., C_in] -> x @ W^T [..., C_out]."""
        return int8_matmul(x, self.q, self.scale, threshold=self.threshold if threshold is None else threshold)
